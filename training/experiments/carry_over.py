"""Experiment (not part of the package; kept so the README's figures can be reproduced): on a frame routed to
nano or small, would publishing what large found on a recent frame (and the current output does not already
hold) buy accuracy for nothing? Objects move, so a carried box may no longer fit.

    python training/experiments/carry_over.py [--work build/train-v3]   # ~2 min; after `train labels`

Per frame on the validation and test profiles, the routed output plus large's boxes from the latest frame routed
to large, at most `age` frames back, whose class has no box of IoU >= `iou` in the current output; a carried box's
score is multiplied by `decay` per frame of age (ranked below fresh boxes). Rows: the embedded policy at the cost
weight the routing report calibrates to 40 % of large's cost, and the count rule the report tunes there.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from adaptive_perception.detector import box_iou
from adaptive_perception.policy import Policy
from adaptive_perception.training.evaluate import Scorer
from adaptive_perception.training.labels import Costs
from adaptive_perception.training.pipeline import Settings, load_split
from adaptive_perception.training.report import heuristic_chooser, learned_chooser
from adaptive_perception.training.simulate import Trace, rollout

ROOT = Path(__file__).resolve().parents[2]
LARGE = 2
VARIANTS = ((1, 0.5, 0.3), (3, 0.7, 0.3), (5, 0.7, 0.3), (10, 0.8, 0.3), (3, 0.2, 0.1))  # (age, decay, iou)


def carried(scorer: Scorer, trace: Trace, age: int, decay: float, iou: float) -> list[np.ndarray]:
    """Each frame's published boxes (x0 y0 x1 y1 score class) with large's carried ones added."""
    out = [np.zeros((0, 6), np.float32)] * len(trace.shown)
    for frames in scorer.split.profile.sequences():
        memory, since = None, 0
        for frame in frames.tolist():
            tier = int(trace.shown[frame, 1])
            current = scorer.detections[tier][frame]
            if tier == LARGE:
                memory, since, out[frame] = current, 0, current
                continue
            since += 1
            if memory is None or since > age or not len(memory):
                out[frame] = current
                continue
            keep = np.ones(len(memory), bool)
            if len(current):
                same_class = memory[:, 5][:, None] == current[:, 5][None, :]
                keep = ~((box_iou(memory[:, :4], current[:, :4]) >= iou) & same_class).any(axis=1)
            extra = memory[keep].copy()
            extra[:, 4] *= decay ** since
            out[frame] = np.concatenate([current, extra])
    return out


def score_published(scorer: Scorer, trace: Trace, published: list[np.ndarray]) -> float:
    """mAP50-95 of `published` boxes per frame (a 4th 'tier' that the trace shows on every frame)."""
    tiers = scorer.detections
    scorer.detections = [*tiers, published]
    try:
        n = len(published)
        shown = np.stack([np.arange(n), np.full(n, len(tiers))], axis=1)
        return scorer.score(Trace(shown, trace.processed_tiers, trace.processed_frames, trace.switches,
                                  trace.quality, trace.busy_ms))["map50_95"]
    finally:
        scorer.detections = tiers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "build/train-v3")
    parser.add_argument("--latency", type=Path, default=ROOT / "training/latency/cpu-2core-family2-wide.json")
    args = parser.parse_args()
    costs = Costs.load(args.latency)
    policy = Policy(str(ROOT / "src/adaptive_perception/models/policy.onnx"))
    rows = {"embedded policy, weight 0.087 (40 % of large's cost)": learned_chooser(policy, 0.087),
            "count rule (2, 10)": heuristic_chooser((2, 10))}
    header = " | ".join(f"age {a}, decay {d}, IoU {i}" for a, d, i in VARIANTS)
    print(f"| split | row | cost (ms) | routed | {header} |\n|---|---|---|---|" + "---|" * len(VARIANTS))
    for name in ("val", "test"):
        split = load_split(Settings(work=args.work), name)
        scorer = Scorer(split)
        for row, chooser in rows.items():
            trace = rollout(split, costs, chooser, False)
            cells = [f"{score_published(scorer, trace, carried(scorer, trace, *v)):.2f}" for v in VARIANTS]
            print(f"| {name} | {row} | {trace.busy_ms / len(split.profile):.1f} | {scorer.score(trace)['map50_95']:.2f} | "
                  + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
