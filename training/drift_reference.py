"""The drift reference a policy carries: statistics of its training data as the policy routed it, thresholds
calibrated on held-out in-distribution data (the validation and test splits, 20 sequences the policy never
trained on, each split's sequences back to back as one stream, scene and regime changes included). Every
sequence of the generator has a scene of its own, and a 150-frame window of one scene sits far from the
pooled training distribution: the 6 validation sequences alone set thresholds that 14 other in-distribution
sequences crossed on nearly half their windows. Computed at export; `adaptive_perception.drift` explains the
statistics."""
from __future__ import annotations

import numpy as np

from adaptive_perception.audit import agreement
from adaptive_perception.detector import TIERS, Detections
from adaptive_perception.drift import WINDOW, DriftReference, build_reference, calibrate, calibrate_quality
from adaptive_perception.policy import Policy
from adaptive_perception.router import Router
from adaptive_perception.training.profile import PUBLISH_CONF
from adaptive_perception.training.simulate import Split, rollout

AUDIT_EVERY = 30  # the node's default audit.every


def _published(split: Split, tier: int) -> list[Detections]:
    out = []
    for rows in split.profile.tier_detections(tier, PUBLISH_CONF):
        out.append(Detections(rows[:, :4].astype(np.float32), rows[:, 4].astype(np.float32), rows[:, 5].astype(np.int64)))
    return out


def routed_stream(policy: Policy, split: Split, costs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per frame of `split`, in order: image features, the tier the policy chose (per-frame setting), and on
    every AUDIT_EVERY-th frame (NaN on the others, as the node audits) the agreement of that tier's published
    output with the reference (large) tier's."""
    router = Router("learned", policy)
    trace = rollout(split, costs, lambda _f, observation, context: router.decide(observation, context).tier,
                    streaming=False)
    order = np.asarray(trace.processed_frames)
    tiers = np.asarray(trace.processed_tiers)
    published = {t: _published(split, t) for t in range(len(TIERS))}
    reference = published[len(TIERS) - 1]
    agreements = np.full(len(order), np.nan)
    for i in range(0, len(order), AUDIT_EVERY):
        agreements[i] = agreement(published[tiers[i]][order[i]], reference[order[i]])
    return split.profile.features[order], tiers, agreements


def drift_reference(policy: Policy, training: Split, held_out: list[Split], costs) -> DriftReference | None:
    """Reference statistics from `training` (audits every AUDIT_EVERY-th frame, as the node samples them),
    thresholds calibrated on each `held_out` split as one stream; None (and said) when no held-out split
    fills one drift window: a policy without a reference runs with the drift monitor off."""
    longest = max(len(split.profile) for split in held_out)
    if longest < WINDOW:
        print(f"[export] no drift reference: the held-out splits have at most {longest} frames, fewer than one "
              f"drift window ({WINDOW})")
        return None
    features, tiers, agreements = routed_stream(policy, training, costs)
    reference = build_reference(features, tiers, agreements[::AUDIT_EVERY])
    streams = [routed_stream(policy, split, costs) for split in held_out]
    reference.quality_peak, reference.quality_peak_down = calibrate_quality(reference, [s[0] for s in streams])
    reference.thresholds = calibrate(reference, streams)
    return reference
