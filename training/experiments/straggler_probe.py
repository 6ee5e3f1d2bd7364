"""Experiment (not part of the package; kept so the README's figures can be reproduced): how much does one other busy
process slow the node's tier inference, with onnxruntime's intra-op threads at the default (one per core), spinning
or sleeping between work (`spin_wait`), and at 1?

    python training/experiments/straggler_probe.py [--tier small] [--frames 120]   # ~1 min; run on an idle machine

The soak's stalls fell where another process took a fraction of a core (README, Soak). An operator split over
both cores waits for its slower half, so a process that takes one core for a moment holds the whole inference
back, and threads that spin while they wait take the core from whoever else needs it; a single-threaded session
runs on the calling thread and only loses the share of the core it is on. The embedded tier runs on the soak
camera's rendered frames, first on an idle machine and then beside one process spinning in a Python loop, per
case; prints p50 / p95 in ms per case and a JSON line.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from adaptive_perception.detector import DetectorTier
from adaptive_perception.scenes.sequence import SequenceSpec, render_sequence
from adaptive_perception.training.soak import SEED  # the soak camera's sequence

MODELS = Path(__file__).resolve().parents[2] / "src" / "adaptive_perception" / "models"


def timed(tier: DetectorTier, frames: list[np.ndarray], count: int) -> tuple[float, float]:
    times = []
    for i in range(count):
        begin = time.perf_counter()
        tier.detect(frames[i % len(frames)])
        times.append((time.perf_counter() - begin) * 1e3)
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tier", choices=["nano", "small", "large"], default="small")
    parser.add_argument("--frames", type=int, default=120)
    args = parser.parse_args()
    frames = [f.rgb for f in render_sequence(SequenceSpec(SEED, 0, 20))]
    results = {}
    print("| intra-op threads | load | p50 (ms) | p95 (ms) |\n|---|---|---|---|")
    cases = {"default (one per core), spinning": (0, True), "default (one per core), sleeping (the node's)": (0, False),
             "1": (1, False)}
    for name, (threads, spin) in cases.items():
        tier = DetectorTier(MODELS / f"{args.tier}.onnx", intra_op_threads=threads, name=args.tier, spin_wait=spin)
        for frame in frames[:5]:  # warm-up
            tier.detect(frame)
        for load in ("idle", "one busy process"):
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load != "idle" else None
            try:
                time.sleep(0.5 if busy else 0.0)
                p50, p95 = timed(tier, frames, args.frames)
            finally:
                if busy:
                    busy.kill()
                    busy.wait()
            results[f"{name}, {load}"] = {"p50_ms": round(p50, 1), "p95_ms": round(p95, 1)}
            print(f"| {name} | {load} | {p50:.1f} | {p95:.1f} |", flush=True)
    print(json.dumps({"tier": args.tier, "frames": args.frames, "results": results}))


if __name__ == "__main__":
    main()
