"""Experiment (not part of the package; kept so the README's figures can be reproduced): would labels that value what
a frame's output finds, rather than its mAP50-95 proxy, give the demo's recall bar without costing mAP50-95?

`make demo`'s bar asks the learned mode for recall at least the heuristic's in every scene regime at the same node
time; the embedded policy buys its mAP50-95 on simple frames and gives up a little recall on busy ones
(`demo_recall_split.py`). Its labels value a frame's published detections as true positives - 0.3 x false positives
averaged over IoU 0.50:0.95. Candidates, each trained with the shipped BC recipe (context inputs, tier values),
its weight calibrated on validation to a budget (the cost of the heuristic's default rule (3, 8) there, and 40 % of
always-large's cost, the demo's per-frame weight), scored on test:
- the shipped labels (false positives weigh 0.3);
- false positives weigh 0 (true positives over IoU 0.50:0.95);
- recall labels: true positives at IoU 0.5 alone, false positives weigh 0.

Per variant, the mean over seeds of test mAP50-95, inference cost and recall@0.5 per regime (every frame routed,
published detections, as the demo counts; on all 14 test sequences and on the demo's), beside the heuristic (3, 8)
and the embedded policy calibrated to the same budget.

    python training/experiments/recall_labels.py [--work build/train-v3] [--seeds 3]   # ~2 min after `train labels`
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from adaptive_perception.config import NodeConfig, resolve_model
from adaptive_perception.detector import TIERS
from adaptive_perception.policy import Policy
from adaptive_perception.router import RouterSettings
from adaptive_perception.ros.demo import DEMO_SEQUENCE, recall_at_50
from adaptive_perception.scenes.sequence import Regime
from adaptive_perception.training.evaluate import Scorer
from adaptive_perception.training.labels import Costs, match_counts
from adaptive_perception.training.learn import calibrate_cost_weight, calibrate_weight, context_dataset, train_bc
from adaptive_perception.training.pipeline import Settings, load_split
from adaptive_perception.training.profile import PUBLISH_CONF
from adaptive_perception.training.report import heuristic_chooser, learned_chooser
from adaptive_perception.training.simulate import Split, rollout

ROOT = Path(__file__).resolve().parents[2]


def match_tables(split: Split) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, 3) per tier's published detections: true positives averaged over IoU 0.50:0.95, false positives
    likewise, and true positives at IoU 0.5."""
    truth = split.profile.frame_truth()
    tp, fp, tp50 = (np.zeros((len(truth), len(TIERS))) for _ in range(3))
    for tier in range(len(TIERS)):
        for f, dets in enumerate(split.profile.tier_detections(tier, PUBLISH_CONF)):
            t, p = match_counts(dets, truth[f])
            tp[f, tier], fp[f, tier], tp50[f, tier] = t.mean(), p.mean(), t[0]
    return tp, fp, tp50


def with_quality(split: Split, quality: np.ndarray) -> Split:
    """The split with its per-frame quality (what per-frame routing and BC read) replaced, scaled to the shipped
    labels' spread so the cost weight keeps its units."""
    import copy

    out = np.array(split.quality, copy=True)
    out[:, :, 0] = quality / quality.std() * split.quality[:, :, 0].std()
    clone = copy.copy(split)
    clone.quality = out
    return clone


def recall_by_regime(split: Split, tiers: np.ndarray, mask: np.ndarray | None = None) -> list[float]:
    profile = split.profile
    detections = [profile.tier_detections(t, NodeConfig().conf_threshold) for t in range(len(TIERS))]
    truth = profile.frame_truth()
    found = np.zeros((len(Regime), 2))
    for f in np.flatnonzero(np.ones(len(profile), bool) if mask is None else mask):
        boxes = detections[tiers[f]][f][:, :4].astype(np.float64)
        found[profile.regime[f]] += recall_at_50([tuple(g[:4]) for g in truth[f] if not g[5]], boxes)
    return [float(h / t) if t else float("nan") for h, t in found]


def describe(r: dict) -> str:
    return (f"{r['map50_95']:.2f} | {r['cost_ms']:.1f} | {' / '.join(f'{x:.3f}' for x in r['recall'])} "
            f"({' / '.join(f'{x:.2f}' for x in r['demo_recall'])})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "build/train-v3")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--report", type=Path, default=ROOT / "training/reports/recall_labels.json")
    args = parser.parse_args()
    settings = Settings(work=args.work)
    costs = Costs.load(settings.work / "costs.json")
    splits = {name: load_split(settings, name) for name in ("router", "val", "test")}
    test = splits["test"]
    scorer = Scorer(test)
    rule = heuristic_chooser(RouterSettings().heuristic_thresholds)
    budgets = {"the heuristic's validation cost": rollout(splits["val"], costs, rule, False).busy_ms
               / len(splits["val"].profile), "40 % of large's cost": 0.4 * float(costs.ms[-1])}
    demo = test.profile.sequence == DEMO_SEQUENCE

    def row(chooser) -> dict:
        trace = rollout(test, costs, chooser, False)
        tiers = np.empty(len(test.profile), int)
        tiers[np.asarray(trace.processed_frames)] = np.asarray(trace.processed_tiers)
        return {"map50_95": scorer.score(trace)["map50_95"], "cost_ms": float(costs.ms[tiers].mean()),
                "recall": recall_by_regime(test, tiers), "demo_recall": recall_by_regime(test, tiers, demo)}

    def mean(seeds: list[dict]) -> dict:
        return {"map50_95": float(np.mean([s["map50_95"] for s in seeds])),
                "cost_ms": float(np.mean([s["cost_ms"] for s in seeds])),
                **{k: np.mean([s[k] for s in seeds], axis=0).tolist() for k in ("recall", "demo_recall")},
                "seeds": seeds}

    policy = Policy(resolve_model("embedded:policy"))
    tables = {name: match_tables(splits[name]) for name in ("router", "val")}
    labels = {"shipped (FP weight 0.3)": lambda tp, fp, tp50: tp - 0.3 * fp,
              "FP weight 0": lambda tp, fp, tp50: tp,
              "recall (TP at IoU 0.5)": lambda tp, fp, tp50: tp50}
    networks = {}
    for name, label in labels.items():
        data = {s: with_quality(splits[s], label(*tables[s])) for s in ("router", "val")}
        train, val = context_dataset(data["router"]), context_dataset(data["val"])
        networks[name] = [train_bc(train, val, seed=seed * 100, loss="values", inputs="context", progress=False)[0]
                          for seed in range(args.seeds)]
    report = {"what": __doc__.split("\n\n")[0], "heuristic": row(rule), "budgets": {}}
    print(f"heuristic {RouterSettings().heuristic_thresholds} on test: " + describe(report["heuristic"]))
    for title, budget in budgets.items():
        rows = {}
        weight = calibrate_weight(lambda w: learned_chooser(policy, w), splits["val"], costs, budget)
        rows[f"embedded policy at {weight:.4f}"] = row(learned_chooser(policy, weight))
        for name, seeds in networks.items():
            rows[f"BC, {name}"] = mean([row(calibrate_cost_weight(n, splits["val"], costs, budget).choose)
                                        for n in seeds])
        report["budgets"][title] = {"budget_ms": budget, "rows": rows}
        print(f"\nbudget on validation: {title}, {budget:.1f} ms a frame")
        print("| router (test split) | mAP50-95 | inference (ms) | recall@0.5 sparse / moderate / dense (all; "
              f"sequence {DEMO_SEQUENCE}) |\n|---|---|---|---|")
        for name, r in rows.items():
            print(f"| {name} | {describe(r)} |")
    args.report.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.report}")


if __name__ == "__main__":
    main()
