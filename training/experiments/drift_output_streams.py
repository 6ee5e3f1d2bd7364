"""Experiment (not part of the package; kept so the README's figures can be reproduced): would a window
statistic of the *routed output* (what the detectors found, not what the image looks like) tell fog, a new ground
or small objects from a new in-distribution scene?

    python training/experiments/drift_output_streams.py [--work build/train-v3]   # ~13 min, then seconds (cached)
    python training/experiments/drift_output_streams.py --agreement                # ~1 min

`--agreement`: how far the audit's signal moves instead: nano's agreement with large (`audit.agreement`, F1 at IoU
0.5) on every 10th frame of 3 new sequences in distribution and of each preset (seed 777000).

Per stream, per processed frame: the tier the embedded policy chose and the routed output's log1p(count), mean
score and median relative box size (what the node puts into the next frame's context). Streams: the training
split as the policy routes it (reference), val and test and 40 new sequences (CALIBRATION_SEED: held out, as the
shipped reference calibrates), and the drift report's four preset streams (5 in-distribution sequences, then 2 of
the preset). Cached in build/drift-output/streams.npz. Candidates, calibrated as `drift.quality_shift` is
(window means in training window-mean stds, over the held-out peak per direction; 1.25 is the threshold):
- `per_tier`: each output statistic standardised with the reference mean and std of the tier that produced it
  (score and size over frames with detections only);
- `given_count`: mean score and log median size standardised per tier and per count bucket (1, 2, 3-4, 5-8,
  9-16, 17+): in the generator busy frames hold small objects, so size given count removes the scene's regime.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from adaptive_perception.config import resolve_model
from adaptive_perception.drift import MARGIN, WINDOW, _window_means
from adaptive_perception.features import IMAGE_FEATURES
from adaptive_perception.policy import Policy
from adaptive_perception.router import Router
from adaptive_perception.scenes.sequence import SequenceSpec, render_sequence
from adaptive_perception.training.drift_reference import CALIBRATION_SEED, cpu_detectors, node_stream
from adaptive_perception.training.drift_report import PRESETS, stream_specs
from adaptive_perception.training.labels import Costs
from adaptive_perception.training.pipeline import Settings, load_split
from adaptive_perception.training.simulate import rollout

OUT = Path("build/drift-output/streams.npz")


HELD_OUT = ("val", "test", "calibration")
PRESET_NAMES = [p.value for p in PRESETS]
COUNT_EDGES = np.array([1.5, 2.5, 4.5, 8.5, 16.5])  # count buckets 1, 2, 3-4, 5-8, 9-16, 17+ (0 is its own)


def profile_stream(policy, split, costs):
    router = Router("learned", policy)
    trace = rollout(split, costs, lambda _f, observation, context: router.decide(observation, context).tier,
                    streaming=False)
    order, tiers = np.asarray(trace.processed_frames), np.asarray(trace.processed_tiers)
    return tiers, np.stack([np.log1p(split.counts[order, tiers]), split.mean_scores[order, tiers],
                            split.median_sizes[order, tiers]], 1)


def node(policy, frames, detectors, desc):
    features, tiers, *_ = node_stream(policy, frames, detectors, 0, desc)
    context = features[:, IMAGE_FEATURES:]
    # frame i's output is frame i + 1's context; the last frame's is not there
    return tiers[:-1], context[1:, [0, 1, 3]].astype(np.float64)


def make_streams(work: Path) -> dict:
    settings = Settings(work=work)
    policy = Policy(resolve_model("embedded:policy"))
    costs = Costs.load(settings.work / "costs.json")
    arrays = {}
    for name in ("router", "val", "test"):
        arrays[f"{name}_tiers"], arrays[f"{name}_out"] = profile_stream(policy, load_split(settings, name), costs)
    detectors = cpu_detectors()
    specs = [SequenceSpec(CALIBRATION_SEED, i, WINDOW, version="2.0.0") for i in range(40)]
    arrays["calibration_tiers"], arrays["calibration_out"] = node(
        policy, ((f.rgb,) for s in specs for f in render_sequence(s)), detectors, "calibration")
    for preset in PRESETS:
        clean, drifted = stream_specs(preset, 5, 2, WINDOW, "2.0.0")
        arrays[f"{preset.value}_tiers"], arrays[f"{preset.value}_out"] = node(
            policy, ((f.rgb,) for s in clean + drifted for f in render_sequence(s)), detectors, preset.value)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **arrays)
    return arrays


def _masked_window_means(values, mask):
    return _window_means(values * mask, WINDOW) / np.maximum(_window_means(mask, WINDOW), 1e-9)


def standardised(streams: dict, given_count: bool):
    """Per window, each output statistic's signed distance from the training windows' mean in their stds; also the
    training windows' values."""
    ref_t, ref_out = streams["router_tiers"], streams["router_out"]
    columns = [1, 2] if given_count else [0, 1, 2]

    def transform(out):
        values = out.copy()
        if given_count:
            values[:, 2] = np.log(np.maximum(values[:, 2], 1e-3))
        return values[:, columns]

    def groups(tiers, out):
        buckets = np.searchsorted(COUNT_EDGES, np.expm1(out[:, 0])) if given_count else np.zeros(len(out), int)
        return tiers * (len(COUNT_EDGES) + 1) + buckets

    def mask(out):  # score and size mean something only where there are detections
        detected = (out[:, :1] > 0).astype(float)
        return np.hstack([np.ones_like(detected), detected, detected])[:, columns]

    reference, reference_groups, reference_mask = transform(ref_out), groups(ref_t, ref_out), mask(ref_out)
    detected = reference_mask[:, -1] > 0
    mean = np.tile(reference[detected].mean(0), (3 * (len(COUNT_EDGES) + 1), 1))
    std = np.tile(reference[detected].std(0), (len(mean), 1))
    for g in range(len(mean)):
        rows = (reference_groups == g) & detected
        if rows.sum() >= 10:  # else the pooled figures
            mean[g], std[g] = reference[rows].mean(0), np.maximum(reference[rows].std(0), 1e-6)

    def window_z(tiers, out):
        g = groups(tiers, out)
        return _masked_window_means((transform(out) - mean[g]) / std[g], mask(out))

    training = window_z(ref_t, ref_out)
    centre, spread = training.mean(0), np.maximum(training.std(0), 1e-6)
    return (lambda tiers, out: (window_z(tiers, out) - centre) / spread), (training - centre) / spread


def candidate(streams: dict, given_count: bool, joint: bool = False):
    """A per-window score over its held-out peak: the largest signed distance over the output statistics (a peak per
    direction), or (`joint`) their Mahalanobis distance with the training windows' correlation, which sees a change
    against the statistics' usual co-movement (fewer *and* smaller objects, where busy scenes hold small ones)."""
    distance, training = standardised(streams, given_count)
    held_out = [distance(streams[f"{n}_tiers"], streams[f"{n}_out"]) for n in HELD_OUT]
    if joint:
        inverse = np.linalg.inv(np.corrcoef(training, rowvar=False))

        def mahalanobis(z):
            return np.sqrt(np.einsum("wi,ij,wj->w", z, inverse, z))
        peak = max(float(mahalanobis(z).max()) for z in held_out)
        return lambda tiers, out: mahalanobis(distance(tiers, out)) / peak
    up = np.maximum(1.0, np.max([z.max(0) for z in held_out], 0))
    down = np.maximum(1.0, np.max([(-z).max(0) for z in held_out], 0))
    return lambda tiers, out: np.maximum(distance(tiers, out) / up, -distance(tiers, out) / down).max(1)


def nano_large_agreement() -> None:
    from adaptive_perception.audit import agreement
    from adaptive_perception.scenes.sequence import Drift

    detectors = cpu_detectors()
    print("| frames | nano-vs-large agreement mean | std of one audit | nano / large detections per frame |")
    print("|---|---|---|---|")
    for drift in Drift:
        scores, counts = [], []
        for i in range(3):
            for k, frame in enumerate(render_sequence(SequenceSpec(777000, i, WINDOW, drift=drift, version="2.0.0"))):
                if k % 10 == 0:
                    nano, large = detectors["nano"].detect(frame.rgb), detectors["large"].detect(frame.rgb)
                    scores.append(agreement(nano, large))
                    counts.append((len(nano), len(large)))
        mean_counts = np.mean(counts, 0)
        print(f"| {drift.value} | {np.mean(scores):.2f} | {np.std(scores):.2f} | {mean_counts[0]:.1f} / "
              f"{mean_counts[1]:.1f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("build/train-v3"))
    parser.add_argument("--agreement", action="store_true", help="nano's audit agreement with large per preset")
    args = parser.parse_args()
    if args.agreement:
        nano_large_agreement()
        return
    streams = dict(np.load(OUT)) if OUT.is_file() else make_streams(args.work)
    change = 5 * WINDOW  # the preset streams' first drifted frame
    print("| candidate | " + " | ".join(f"{p}: peak before / after" for p in PRESET_NAMES) + " |")
    print("|---|" + "---|" * len(PRESET_NAMES))
    for name, given_count, joint in (("per_tier", False, False), ("given_count", True, False),
                                     ("per_tier, joint", False, True), ("given_count, joint", True, True)):
        score = candidate(streams, given_count, joint)
        cells = []
        for preset in PRESET_NAMES:
            ratio = score(streams[f"{preset}_tiers"], streams[f"{preset}_out"])
            ends = np.arange(len(ratio)) + WINDOW - 1  # window i holds outputs i .. i + WINDOW - 1
            crossed = np.flatnonzero((ends >= change) & (ratio > MARGIN))
            cells.append(f"{ratio[ends < change].max():.2f} / {ratio[ends >= change].max():.2f}"
                         + (f" (crosses {MARGIN} {ends[crossed[0]] - change} frames after)" if len(crossed) else ""))
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"(in units of the held-out peak; the monitor's threshold is {MARGIN}; separating needs 'after' above "
          "both 1.25 and every 'before')")


if __name__ == "__main__":
    main()
