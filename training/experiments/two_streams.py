"""Experiment (not part of the package; kept so the README's figures can be reproduced): how many frames a second the
machine serves for two cameras, routed against always-large, with one worker or with two (the node's `workers`)?

    python training/experiments/two_streams.py [--sequences 8] [--rounds 2]   # ~10 min on 2 cores

`bench throughput` measures one stream through one worker (frames / the summed per-frame times). With two
cameras the node can run two frames side by side (`workers` 2, single-threaded tier sessions), and a small tier
splits over two cores worse than the large one does, so the routed path may gain more from a second worker than
always-large. Each configuration runs `bench throughput`'s per-frame path (`throughput.run_sequence`: bytes in to
serialized messages out, the drift monitor's update included) over the first `--sequences` frozen test sequences,
split into two streams (even and odd sequences, each its own routing context and drift monitor, as two cameras):
- 1 worker: the tier sessions with the node's default threads (one per core), the two streams one after the other;
- 2 workers: single-threaded sessions (the node's `intra_op_threads` 0 with `workers` 2), one thread per stream,
  both started together;
throughput = frames / wall time from the first frame to the last. Modes: `learned@90` (the cost weight
`training/reports/throughput.json` picked on validation: the cheapest keeping 90 % of always-large's mAP50-95) and
always-large, each configuration of each mode in turn, `--rounds` times with the order alternating.

The reading, fixed before the first run: the routed capacity ratio is learned@90's throughput with 2 workers over
the faster of always-large's two configurations in the same round (a buyer runs always-large its fastest way).
"""
from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import numpy as np

from adaptive_perception.config import NodeConfig, resolve_model
from adaptive_perception.detector import TIERS, DetectorTier
from adaptive_perception.drift import DriftMonitor
from adaptive_perception.policy import Policy
from adaptive_perception.training.throughput import ModeRun, Sequence, make_router, run_sequence, split_bags

ROOT = Path(__file__).resolve().parents[2]


def tiers(threads: int) -> dict[str, DetectorTier]:
    config = NodeConfig()
    out = {t: DetectorTier(resolve_model(f"embedded:{t}"), ("CPUExecutionProvider",), config.conf_threshold,
                           config.iou_threshold, config.max_detections, threads, t, spin_wait=config.spin_wait,
                           graph_cache_dir=config.graph_cache_dir) for t in TIERS}
    for detector in out.values():
        detector.warmup(2)
    return out


def serve(streams, mode: str, weight: float | None, policy: Policy, detectors, workers: int) -> float:
    """Frames per second of wall time for the streams through `workers` threads (1: one after the other)."""
    reference = policy.drift_reference

    def one(stream) -> None:
        run = ModeRun(mode, weight, monitor=DriftMonitor(reference, NodeConfig().drift_confirm))
        router = make_router(mode, policy, weight)
        for sequence in stream:
            run_sequence(run, router, detectors, sequence, 0)

    frames = sum(len(s.cdr) for stream in streams for s in stream)
    begin = time.perf_counter()
    if workers == 1:
        for stream in streams:
            one(stream)
    else:
        threads = [threading.Thread(target=one, args=(stream,)) for stream in streams]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return frames / (time.perf_counter() - begin)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=8, help="frozen test sequences (split into two streams)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--benchmark", type=Path, default=ROOT / "build/benchmark-v2")
    parser.add_argument("--report", type=Path, default=ROOT / "training/reports/two_streams.json")
    args = parser.parse_args()
    committed = json.loads((ROOT / "training/reports/throughput.json").read_text())
    weight = committed["modes"]["learned@90"]["cost_weight"]
    policy = Policy(resolve_model("embedded:policy"))
    if policy.policy_id != committed["policy_id"]:
        raise SystemExit(f"the embedded policy is {policy.policy_id}, throughput.json's {committed['policy_id']}")
    data, _ = split_bags(args.benchmark, args.sequences, None, ROOT / "build/bench/test-bags")
    streams = [data[0::2], data[1::2]]
    detectors = {1: tiers(0), 2: tiers(1)}  # workers -> tier sessions
    warm = [[Sequence(data[0].name, data[0].cdr[:3], data[0].records[:3])]]
    for workers in (1, 2):
        for mode, w in (("learned", weight), ("fixed:large", None)):
            serve(warm, mode, w, policy, detectors[workers], 1)
    rows = []
    for round_ in range(args.rounds):
        cases = [(mode, w, workers) for mode, w in (("learned", weight), ("fixed:large", None)) for workers in (1, 2)]
        for mode, w, workers in (cases if round_ % 2 == 0 else cases[::-1]):
            fps = serve(streams, mode, w, policy, detectors[workers], workers)
            rows.append({"round": round_, "mode": "learned@90" if mode == "learned" else mode, "workers": workers,
                         "fps": fps})
            print(f"round {round_}: {rows[-1]['mode']}, {workers} worker(s): {fps:.1f} frames/s", flush=True)
    print("\n| round | learned@90, 1 worker | learned@90, 2 workers | always-large, 1 worker | always-large, 2 workers "
          "| learned@90 (2 workers) over the faster always-large | the same, 1 worker each |")
    print("|---|---|---|---|---|---|---|")
    summary = []
    for round_ in range(args.rounds):
        fps = {(r["mode"], r["workers"]): r["fps"] for r in rows if r["round"] == round_}
        large = max(fps["fixed:large", 1], fps["fixed:large", 2])
        ratio, single = fps["learned@90", 2] / large, fps["learned@90", 1] / fps["fixed:large", 1]
        summary.append({"round": round_, "ratio_two_workers_vs_best_large": ratio, "ratio_one_worker": single})
        print(f"| {round_ + 1} | {fps['learned@90', 1]:.1f} | {fps['learned@90', 2]:.1f} | {fps['fixed:large', 1]:.1f} | "
              f"{fps['fixed:large', 2]:.1f} | {ratio:.2f}x | {single:.2f}x |")
    frames = sum(len(s.cdr) for s in data)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps({"frames": frames, "sequences": [s.name for s in data], "weight": weight,
                                       "policy_id": policy.policy_id, "rows": rows, "summary": summary,
                                       "mean_ratio": float(np.mean([s["ratio_two_workers_vs_best_large"]
                                                                    for s in summary]))}, indent=1) + "\n")
    print(f"wrote {args.report}")


if __name__ == "__main__":
    main()
