"""Experiment (not part of the package): what a candidate tier network does to routing, without profiling all tiers again.

    python training/experiments/swap_tier_probe.py --weights training/checkpoints/tiers-v2/wide/final.pt \\
        --from-work build/train-v2 --work build/train-wide --latency training/latency/cpu-2core-family2.json   # ~5 min
    adaptive-perception train labels --benchmark build/benchmark-v2 --work build/train-wide \\
        --latency build/train-wide/latency.json
    python training/experiments/router_ceiling.py --work build/train-wide --latency build/train-wide/latency.json \\
        --report build/train-wide/router_ceiling.json

It exports the candidate at `--tier`'s input (default large, 480x640; `--input HxW` another size) and runs it, as
`train profile` runs every tier, over each split's frames of `--from-work`'s profiles (router, validation, test;
generator 2.0.0's dataset frames), then writes those profiles to `--work` with that tier's detections and latency
replaced: the other tiers are the same networks, so their detections and the frames' features stay as they were. Its
latency file gives the other tiers `--latency`'s costs (default the embedded tiers',
`training/latency/cpu-2core-family2-wide.json`) and the swapped tier that file's cost scaled by the candidate's median
latency against the embedded tier's, both timed on 60 test frames, 3 times each, interleaved frame by frame
(`tiers.measure_latency`), so a busy host slows both alike.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from adaptive_perception.config import resolve_model
from adaptive_perception.detector import DetectorTier
from adaptive_perception.progress import progress
from adaptive_perception.training.pipeline import SPLITS, Settings, _profile_path
from adaptive_perception.training.profile import Profile, benchmark_frames, dataset_records, timed_detect
from adaptive_perception.training.tiers import TIER_INPUTS, export_tiers, measure_latency

ROOT = Path(__file__).resolve().parents[2]
EMBEDDED_LATENCY = ROOT / "training/latency/cpu-2core-family2-wide.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, required=True, help="the candidate network (Ultralytics .pt)")
    parser.add_argument("--tier", choices=list(TIER_INPUTS), default="large", help="the tier it replaces")
    parser.add_argument("--input", default=None, metavar="HxW",
                        help="the candidate's input size (default: the tier's, e.g. 320x416 for small)")
    parser.add_argument("--benchmark", type=Path, default=ROOT / "build/benchmark-v2")
    parser.add_argument("--from-work", type=Path, default=ROOT / "build/train-v2")
    parser.add_argument("--work", type=Path, default=ROOT / "build/train-wide")
    parser.add_argument("--latency", type=Path, default=EMBEDDED_LATENCY,
                        help="the costs of the tiers in --from-work's profiles (the swapped one is rescaled)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    tier, column = args.tier, list(TIER_INPUTS).index(args.tier)
    size = tuple(int(v) for v in args.input.split("x")) if args.input else TIER_INPUTS[tier]
    candidate = export_tiers({tier: args.weights}, args.work / "tiers", {tier: size})[tier]
    swapped = DetectorTier(str(candidate), ("CPUExecutionProvider",), name=f"candidate {tier}")
    swapped.warmup(2)
    frames = []
    for split in SPLITS:
        old = Profile.load(_profile_path(Settings(work=args.from_work), split))
        records = dataset_records(args.benchmark, split)
        if len(records) != len(old):
            raise SystemExit(f"{split}: {len(records)} frames in {args.benchmark}, {len(old)} in the profile")
        rows, latency = [], old.latency_ms.copy()
        for index, (rgb, _seq, _stamp, _objects) in enumerate(progress(
                benchmark_frames(args.benchmark, split, records), total=len(records), desc=f"{tier} on {split}",
                unit="frame")):
            if split == "test" and index % 35 == 0:
                frames.append(rgb)
            latency[index, column], _, found = timed_detect(swapped, rgb)
            rows += [[index, column, *b, s, c] for b, s, c in
                     zip(found.boxes.tolist(), found.scores.tolist(), found.class_ids.tolist())]
        kept = old.detections[old.detections[:, 1] != column]
        detections = np.concatenate([kept, np.asarray(rows, np.float32).reshape(-1, 8)])
        detections = detections[np.lexsort((detections[:, 1], detections[:, 0]))]
        meta = {**old.meta, "models": {**old.meta["models"], tier: str(candidate)}}
        Profile(features=old.features, latency_ms=latency, sequence=old.sequence, stamp_ns=old.stamp_ns,
                regime=old.regime, detections=detections, truth=old.truth, meta=meta, veil=old.veil
                ).save(_profile_path(Settings(work=args.work), split))
    family = json.loads(args.latency.read_text())
    times = measure_latency({"embedded": Path(resolve_model(f"embedded:{tier}")), "candidate": candidate}, frames)
    ratio = times["candidate"]["p50_ms"] / times["embedded"]["p50_ms"]
    tiers_ms = {**family["tiers_ms"], tier: round(family["tiers_ms"][tier] * ratio, 3)}
    (args.work / "latency.json").write_text(json.dumps({
        "device": family["device"], "tiers_ms": tiers_ms, "host_cores": family["host_cores"],
        "note": f"the other tiers from {args.latency.name}; {tier} = its {tier} x {ratio:.3f}, the candidate's median "
                f"latency against the embedded {tier} tier's (p50 {times['candidate']['p50_ms']:.1f} / "
                f"{times['embedded']['p50_ms']:.1f} ms), timed interleaved by swap_tier_probe.py"}, indent=2))
    print(f"candidate {tier} / embedded {tier} latency (median, interleaved): {ratio:.2f}; costs {tiers_ms}")
    print(f"profiles: {args.work}; next: adaptive-perception train labels --benchmark {args.benchmark} --work {args.work} "
          f"--latency {args.work / 'latency.json'}")


if __name__ == "__main__":
    main()
