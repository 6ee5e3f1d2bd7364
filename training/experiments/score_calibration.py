"""Experiment: do the tiers' confidences rank consistently when routing mixes them? mAP pools every frame's
detections of a class and ranks them by score, so a routed split interleaves nano's, small's and large's scores;
if a score of 0.6 means a likelier hit from large than from nano, the pooled ranking is worse than each tier's.

    python training/experiments/score_calibration.py [--work build/train-v3]   # ~2 min; after `train labels`

Per tier and class, an isotonic map from score to the detection's share of IoU thresholds (0.50:0.95) at which
COCOeval matches it, fitted on the router split with the tier on every frame; then routing traces on the test split
scored with raw and mapped scores.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.isotonic import IsotonicRegression

from adaptive_perception.detector import TIERS
from adaptive_perception.policy import Policy
from adaptive_perception.training.evaluate import Scorer, _per_image
from adaptive_perception.training.labels import Costs
from adaptive_perception.training.pipeline import Settings, load_split
from adaptive_perception.training.report import _fixed, heuristic_chooser, learned_chooser
from adaptive_perception.training.simulate import rollout

ROOT = Path(__file__).resolve().parents[2]


def fit_maps(split, costs) -> dict:
    scorer = Scorer(split)
    maps = {}
    for tier in range(len(TIERS)):
        table = _per_image(scorer._evaluator(rollout(split, costs, _fixed(tier), False)))
        for c, rows in table.items():
            chosen = [r for r in rows if r is not None and len(r[0])]
            if not chosen:
                continue
            scores = np.concatenate([r[0] for r in chosen])
            hit = np.concatenate([(r[1] & ~r[2]).mean(axis=0) for r in chosen])
            keep = np.concatenate([~r[2].all(axis=0) for r in chosen])
            maps[tier, c] = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(scores[keep], hit[keep])
    return maps


def mapped(scorer: Scorer, maps: dict) -> Scorer:
    out = Scorer.__new__(Scorer)
    out.split, out.gt = scorer.split, scorer.gt
    out.detections = []
    for tier, frames in enumerate(scorer.detections):
        tier_out = []
        for dets in frames:
            dets = dets.copy()
            for i in range(len(dets)):
                model = maps.get((tier, int(dets[i, 5])))
                if model is not None:
                    dets[i, 4] = float(model.predict([dets[i, 4]])[0]) + 1e-4 * dets[i, 4]
            tier_out.append(dets)
        out.detections.append(tier_out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "build/train-v3")
    parser.add_argument("--latency", type=Path, default=ROOT / "training/latency/cpu-2core-family2-wide.json")
    args = parser.parse_args()
    settings = Settings(work=args.work)
    costs = Costs.load(args.latency)
    router, test = load_split(settings, "router"), load_split(settings, "test")
    maps = fit_maps(router, costs)
    raw = Scorer(test)
    cal = mapped(raw, maps)
    policy = Policy(str(ROOT / "src/adaptive_perception/models/policy.onnx"))
    rows = {"always-nano": _fixed(0), "always-small": _fixed(1), "always-large": _fixed(2),
            "heuristic (2, 10), the routing report's at 40 %": heuristic_chooser((2, 10))}
    for weight in (0.05, 0.087, 0.15):  # 0.087: the embedded policy's weight at 40 % of large's cost
        rows[f"embedded policy w {weight}"] = learned_chooser(policy, weight)
    print("| row | cost (ms) | raw mAP50-95 | calibrated mAP50-95 |\n|---|---|---|---|")
    for name, chooser in rows.items():
        trace = rollout(test, costs, chooser, False)
        print(f"| {name} | {trace.busy_ms / len(test.profile):.1f} | {raw.score(trace)['map50_95']:.2f} | "
              f"{cal.score(trace)['map50_95']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
