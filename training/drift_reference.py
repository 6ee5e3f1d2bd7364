"""The drift reference a policy carries: statistics of its training data as the policy routed it, thresholds
calibrated on held-out in-distribution data (the validation and test splits, 20 sequences the policy never
trained on, each split's sequences back to back as one stream, scene and regime changes included). Every
sequence of the generator has a scene of its own, and a 150-frame window of one scene sits far from the
pooled training distribution: the 6 validation sequences alone set thresholds that 14 other in-distribution
sequences crossed on nearly half their windows, and 20 held-out scenes still set a tier-mix threshold that one
of five new scenes crossed (drift report, 2026-12-03): `calibration_streams` adds newly rendered sequences run
through the node's per-frame path (`policy drift-reference --calibration-sequences N`; the embedded policy's
reference uses 40). Computed at export; `adaptive_perception.drift` explains the statistics."""
from __future__ import annotations

import numpy as np

from adaptive_perception.audit import agreement
from adaptive_perception.detector import TIERS, Detections
from adaptive_perception.drift import WINDOW, DriftReference, build_reference, calibrate, calibrate_quality, veil
from adaptive_perception.features import RoutingContext, next_context, routing_features
from adaptive_perception.policy import Policy
from adaptive_perception.progress import progress
from adaptive_perception.router import Router, RouterSettings
from adaptive_perception.training.profile import PUBLISH_CONF
from adaptive_perception.training.simulate import Split, rollout

AUDIT_EVERY = 30  # the node's default audit.every
CALIBRATION_SEED = 626262  # new in-distribution sequences for the thresholds: no split, report or experiment uses it


def _published(split: Split, tier: int) -> list[Detections]:
    out = []
    for rows in split.profile.tier_detections(tier, PUBLISH_CONF):
        out.append(Detections(rows[:, :4].astype(np.float32), rows[:, 4].astype(np.float32), rows[:, 5].astype(np.int64)))
    return out


def routed_stream(policy: Policy, split: Split, costs, settings: RouterSettings = RouterSettings()
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Per frame of `split`, in order: image features, the tier the policy chose (per-frame setting), the
    agreement of that tier's published output with the reference (large) tier's on every frame (the profile
    holds every tier's output, so calibration reads every phase of the node's audit sampling), and the frame's
    veil (None for a profile without veils). `settings`: the learned mode's (default: the policy's own cost
    weight, no hysteresis)."""
    router = Router("learned", policy, settings)
    trace = rollout(split, costs, lambda _f, observation, context: router.decide(observation, context).tier,
                    streaming=False)
    order = np.asarray(trace.processed_frames)
    tiers = np.asarray(trace.processed_tiers)
    published = {t: _published(split, t) for t in range(len(TIERS))}
    reference = published[len(TIERS) - 1]
    agreements = np.array([agreement(published[tier][frame], reference[frame]) for tier, frame in zip(tiers, order)])
    veils = split.profile.veil
    return split.profile.features[order], tiers, agreements, veils[order] if veils is not None else None


def node_stream(policy: Policy, frames, detectors: dict, audit_every: int = AUDIT_EVERY, desc: str = "frames",
                settings: RouterSettings = RouterSettings()) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The node's per-frame path over (rgb, ...) `frames` without ROS: routing features with the previous routed
    output's context, the policy's tier, that tier's detections, and on every `audit_every`-th frame (NaN on the
    others) their agreement with the `large` detector's. Returns (features, tiers, agreements, veils) per frame."""
    router = Router("learned", policy, settings)
    context = RoutingContext()
    features, tiers, agreements, veils = [], [], [], []
    for index, (rgb, *_rest) in enumerate(progress(frames, desc=desc, unit="frame")):
        vector = routing_features(rgb, context)
        tier = router.decide(vector, context).tier
        detections = detectors[TIERS[tier]].detect(rgb)
        context = next_context(detections.boxes, detections.scores, tier, rgb.shape[:2])
        audited = audit_every and index % audit_every == 0
        features.append(vector)
        veils.append(veil(rgb))
        tiers.append(tier)
        agreements.append(agreement(detections, detectors["large"].detect(rgb)) if audited else np.nan)
    return np.asarray(features), np.asarray(tiers), np.asarray(agreements), np.asarray(veils)


def cpu_detectors(models: dict | None = None) -> dict:
    """The three tiers on onnxruntime's CPU provider, by tier name; `models`: tier -> ONNX file or embedded:<tier>
    (default the embedded tiers)."""
    from adaptive_perception.config import resolve_model
    from adaptive_perception.detector import DetectorTier

    models = models or {t: f"embedded:{t}" for t in TIERS}
    return {t: DetectorTier(resolve_model(models[t]), ("CPUExecutionProvider",), name=t) for t in TIERS}


def calibration_streams(policy: Policy, models: dict, sequences: int, version: str, frames: int = WINDOW,
                        settings: RouterSettings = RouterSettings()
                        ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """`sequences` newly rendered in-distribution sequences (CALIBRATION_SEED), back to back as one stream
    through the node's per-frame path: more scenes for the thresholds than the held-out splits hold. Audited on
    every frame, so calibration reads every phase of the node's audit sampling."""
    from adaptive_perception.scenes.sequence import SequenceSpec, render_sequence

    detectors = cpu_detectors(models)
    specs = [SequenceSpec(CALIBRATION_SEED, i, frames, version=version) for i in range(sequences)]
    rendered = ((frame.rgb,) for spec in specs for frame in render_sequence(spec))
    return [node_stream(policy, rendered, detectors, audit_every=1,
                        desc=f"calibration stream ({sequences} new sequences)", settings=settings)]


def drift_reference(policy: Policy, training: Split, held_out: list[Split], costs, extra_streams=(),
                    settings: RouterSettings = RouterSettings()) -> DriftReference | None:
    """Reference statistics from `training` (the audit agreement's mean and spread over every frame), thresholds
    calibrated on each `held_out` split as one stream and on `extra_streams` (`calibration_streams`), the audit
    agreement at every phase of the node's 1-in-AUDIT_EVERY sampling;
    None (and said) when no held-out split fills one drift window: a policy without a reference runs with the
    drift monitor off. The policy routes with `settings` (default: its own cost weight, no hysteresis), which the
    reference records: the node compares the tier mix and audit agreement only while it routes the same way
    (`drift.routing_difference`); `extra_streams` must be routed with the same settings."""
    longest = max(len(split.profile) for split in held_out)
    if longest < WINDOW:
        print(f"[export] no drift reference: the held-out splits have at most {longest} frames, fewer than one "
              f"drift window ({WINDOW}): the policy runs with the drift monitor off; record val/test bags of at least "
              f"{WINDOW} frames per camera and export again")
        return None
    features, tiers, agreements, veils = routed_stream(policy, training, costs, settings)
    streams = [routed_stream(policy, split, costs, settings) for split in held_out]
    if veils is None or any(stream[3] is None for stream in streams):
        print("[export] no veil statistic in the drift reference: the profiles were written before profiles recorded "
              "each frame's veil (rerun `adaptive-perception train profile --force`)")
        veils = None
    streams += list(extra_streams)
    reference = build_reference(features, tiers, agreements, veils=veils)
    reference.cost_weight, reference.hysteresis = Router("learned", policy, settings).operating_point()[1:]
    reference.quality_peak, reference.quality_peak_down = calibrate_quality(reference, [s[0] for s in streams])
    reference.thresholds = calibrate(reference, streams, audit_every=AUDIT_EVERY)
    reference.calibration_frames = int(sum(len(stream[0]) for stream in streams))
    thin = reference.thin_calibration()
    if thin:
        print(f"[export] warning: {thin}", flush=True)
    return reference
