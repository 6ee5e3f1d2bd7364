"""Experiment (not part of the package; kept so the README's figures can be reproduced): how far can a router that
sees only the past get, and do richer context values or the node's audits move a learned router off the count
rule? They do not; nothing here is shipped.

    python training/experiments/router_ceiling.py [--work build/train-v3] [--policy P]   # ~1 min; after `train labels`

Per frame, on the test split's profile (the simulator the report uses), at two budgets:

- the router issue's: mean inference cost <= 40 % of always-large's, the embedded tiers' costs
  (`training/latency/cpu-2core-family2-wide.json`);
- the throughput issue's projection: <= 1/3 of large's (3x), the real YOLOv8 n/s/l graphs' costs at 640 (the
  latency file `bench throughput` projects with, `training/latency/cpu-2core-yolov8-640.json`) plus the work outside
  inference that `bench throughput` measured (`training/reports/throughput.json`), the embedded tiers' accuracy.

Rows (mAP50-95 by pycocotools; everything but the oracles is tuned on the validation split for the budget and
scored once on test; label units are `labels.frame_value`):

- **oracle**: the labels' budget oracle, knowing every tier's value on the frame it routes (not causal);
- **previous-frame oracle**: the budget oracle on the previous frame's values of all three tiers: the best any
  router can do that knows everything about the previous frame, including the outputs of tiers it did not run;
- **count rule**: the heuristic (low, high) with the best validation quality within the budget;
- **shipped policy**: its cost weight the smallest whose validation cost fits (real costs: `policy_for_costs`);
- **boosted trees** (scikit-learn's histogram gradient boosting, two regressors for small's and large's value
  gain over nano, trained on the router split under each tier's previous output, as `learn.context_dataset`
  trains the MLP), on: the 4 context values; those plus low-confidence evidence from the previous output
  (counts at scores >= 0.05 / 0.10 / 0.15, the summed score of every detection >= 0.01, boxes scoring >= 0.10 under
  4 % of the frame's side, the smallest published box); those 4 plus the latest audit (the node runs the large
  tier on every 30th frame in the background: large's published count and median box size there, available 2
  frames later, and the audit's age; the audits' cost is added to the row's).

And how the ceiling depends on what large costs: at 40 % of large's cost, with large's cost multiplied by 1.5, 2
and 3 and every tier's accuracy as it is, the oracle, the previous-frame oracle and the count rule
(`large_cost_sensitivity` in the report; `--latency` sets the tiers' costs).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from adaptive_perception.training.evaluate import Scorer
from adaptive_perception.training.labels import Costs, budget_oracle
from adaptive_perception.training.pipeline import Settings, load_split
from adaptive_perception.training.profile import PUBLISH_CONF
from adaptive_perception.training.report import (
    HEURISTIC_GRID, _fixed, _table_chooser, heuristic_chooser, learned_chooser,
)
from adaptive_perception.training.simulate import Split, rollout
from adaptive_perception.training.throughput import policy_for_costs

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "src/adaptive_perception/models/policy.onnx"
REAL_LATENCY = ROOT / "training/latency/cpu-2core-yolov8-640.json"
THROUGHPUT = ROOT / "training/reports/throughput.json"
AUDIT_EVERY, AUDIT_LAG = 30, 2
WEIGHTS = np.round(np.linspace(0.0, 1.0, 51), 3)
EXTRA = ["count_0.05", "count_0.10", "count_0.15", "score_sum", "small_boxes", "smallest_box"]


def context_table(split: Split) -> np.ndarray:
    """(N, 3, 10) what tier t's output of frame f gives the next frame: the node's 4 context values, then EXTRA."""
    profile = split.profile
    hw = tuple(profile.meta["frame_hw"])
    out = np.zeros((len(profile), 3, 4 + len(EXTRA)), np.float32)
    for tier in range(3):
        for f, dets in enumerate(profile.tier_detections(tier, 0.01)):
            scores = dets[:, 4]
            published = dets[scores >= PUBLISH_CONF]
            side = np.sqrt(np.clip(dets[:, 2] - dets[:, 0], 0, None) * np.clip(dets[:, 3] - dets[:, 1], 0, None)
                           / (hw[0] * hw[1]))
            out[f, tier] = [*split.context_after(f, tier).vector(),
                            *(np.log1p((scores >= s).sum()) for s in (0.05, 0.10, 0.15)), scores.sum(),
                            np.log1p(((scores >= 0.10) & (side < 0.04)).sum()),
                            side[scores >= PUBLISH_CONF].min() if len(published) else 0.0]
    return out


def audit_table(split: Split) -> np.ndarray:
    """(N, 3) per frame: log1p(large's count), large's median box size on the latest audit whose output is out, and
    the audit's age in audit periods (1 and zeros before the first)."""
    out = np.zeros((len(split.profile), 3), np.float32)
    for frames in split.profile.sequences():
        for i, f in enumerate(frames):
            if i < AUDIT_LAG:
                out[f] = [0.0, 0.0, 1.0]
                continue
            audited = ((i - AUDIT_LAG) // AUDIT_EVERY) * AUDIT_EVERY
            g = frames[audited]
            out[f] = [np.log1p(split.counts[g, 2]), split.median_sizes[g, 2], (i - audited) / AUDIT_EVERY]
    return out


def inputs(split: Split, columns: list[int], audits: bool) -> np.ndarray:
    """(N, 3, D) the model's input for frame f after the previous frame's output by tier t (zeros on a first frame)."""
    table = context_table(split)[:, :, columns]
    out = np.zeros((len(split.profile), 3, len(columns)), np.float32)
    for frames in split.profile.sequences():
        out[frames[1:]] = table[frames[:-1]]
    if audits:
        out = np.concatenate([out, np.repeat(audit_table(split)[:, None, :], 3, axis=1)], axis=2)
    return out


def fit_gains(router: Split, x: np.ndarray):
    from sklearn.ensemble import HistGradientBoostingRegressor

    gains = router.quality[:, 1:, 0] - router.quality[:, :1, 0]  # (N, 2) small and large over nano
    flat = x.reshape(-1, x.shape[2])
    targets = np.repeat(gains, 3, axis=0)
    return [HistGradientBoostingRegressor(max_iter=200, learning_rate=0.05, max_leaf_nodes=15, random_state=0)
            .fit(flat, targets[:, k]) for k in range(2)]


def predicted_values(models, x: np.ndarray) -> np.ndarray:
    """(N, 3, 3) value over nano of each tier for frame f after the previous output of tier t."""
    flat = x.reshape(-1, x.shape[2])
    out = np.zeros((flat.shape[0], 3))
    out[:, 1], out[:, 2] = models[0].predict(flat), models[1].predict(flat)
    return out.reshape(x.shape[0], 3, 3)


def values_chooser(values: np.ndarray, relative: np.ndarray, weight: float):
    def choose(frame, _observation, context):
        return int(np.argmax(values[frame, max(context.prev_tier, 0)] - weight * relative))
    return choose


def cost_ms(split: Split, trace, costs: Costs, audits: bool) -> float:
    return trace.busy_ms / len(split.profile) + (costs.ms[2] / AUDIT_EVERY if audits else 0.0)


def label_quality(split: Split, trace) -> float:
    return float(split.quality[np.arange(len(split.profile)), trace.shown[:, 1], 0].mean())


def pick(val: Split, costs: Costs, budget: float, candidates, audits: bool = False):
    """The candidate chooser (name, factory) with the best validation quality among those whose cost fits."""
    best, cheapest = None, float("inf")
    for name, factory in candidates:
        trace = rollout(val, costs, factory(), False)
        cost, quality = cost_ms(val, trace, costs, audits), label_quality(val, trace)
        cheapest = min(cheapest, cost)
        if cost <= budget and (best is None or quality > best[2]):
            best = (name, factory, quality, cost)
    if best is None:
        raise SystemExit(f"no candidate fits the budget of {budget:.2f} ms per frame on validation (the cheapest "
                         f"costs {cheapest:.2f} ms, {costs.device}): raise the cost share or give cheaper tiers' costs")
    return best


RULES = [(rule, lambda rule=rule: heuristic_chooser(rule)) for rule in HEURISTIC_GRID]


def oracle_trace(split: Split, costs: Costs, budget: float, previous: bool):
    """The budget oracle on this frame's values of all three tiers, or (`previous`) on the frame before's."""
    values = split.quality[:, :, 0]
    if previous:
        values = np.empty_like(values)
        for frames in split.profile.sequences():
            values[frames] = split.quality[np.concatenate([frames[:1], frames[:-1]]), :, 0]
    return rollout(split, costs, _table_chooser(budget_oracle(values, costs, budget)), False)


def large_cost_sensitivity(val: Split, test: Split, scorer: Scorer, costs: Costs, scales=(1.0, 1.5, 2.0, 3.0)):
    """At 40 % of large's cost, with large's cost multiplied by each scale and every tier's accuracy as it is: the
    oracle, the previous-frame oracle and the count rule (picked on validation), as shares of always-large."""
    rows = []
    for scale in scales:
        scaled = Costs(f"{costs.device}, large x{scale:g}", costs.ms * np.array([1.0, 1.0, scale]))
        budget = 0.4 * scaled.ms[2]
        large = scorer.score(rollout(test, scaled, _fixed(2), False))["map50_95"]
        name, factory, *_ = pick(val, scaled, budget, RULES)
        shares = {row: scorer.score(trace)["map50_95"] / large for row, trace in (
            ("oracle", oracle_trace(test, scaled, budget, False)),
            ("previous-frame oracle", oracle_trace(test, scaled, budget, True)),
            ("count rule", rollout(test, scaled, factory(), False)))}
        rows.append({"large_cost_scale": scale, "costs_ms": scaled.ms.round(3).tolist(), "rule": list(name), **shares})
        print(f"large's cost x{scale:g} ({scaled.ms[2]:.0f} ms): oracle {shares['oracle']:.0%}, previous-frame oracle "
              f"{shares['previous-frame oracle']:.0%}, count rule {tuple(name)} {shares['count rule']:.0%} of large")
    return rows


def summarise(report: dict, title: str, costs: Costs, budget: float, rows: dict) -> None:
    """Each row's share of always-large's mAP50-95 and speed-up over it, into `report` and printed as a table."""
    large = rows["always-large"]
    for row in rows.values():
        row["map_share_of_large"] = row["map50_95"] / large["map50_95"]
        row["speedup"] = large["cost_ms"] / row["cost_ms"]
    report["settings"][title] = {"costs_ms": costs.ms.round(3).tolist(), "budget_ms": budget, "rows": rows}
    print(f"\n{title}: budget {budget:.1f} ms a frame (tiers {' / '.join(f'{m:.1f}' for m in costs.ms)} ms)")
    print("| row | mAP50-95 | share of large | cost (ms) | speed-up | mix nano / small / large |\n|---|---|---|---|---|---|")
    for name, row in rows.items():
        mix = " / ".join(f"{100 * m:.0f}" for m in row["mix"]) if "mix" in row else "-"
        print(f"| {name} | {row['map50_95']:.1f} | {row['map_share_of_large']:.0%} | {row['cost_ms']:.1f} | "
              f"{row['speedup']:.2f}x | {mix} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "build/train-v3")
    parser.add_argument("--report", type=Path, default=ROOT / "training/reports/router_ceiling.json")
    parser.add_argument("--policy", type=Path, default=POLICY, help="the policy row's file (default: the embedded one)")
    parser.add_argument("--latency", type=Path, default=ROOT / "training/latency/cpu-2core-family2-wide.json",
                        help="the tiers' costs for the 40 %% budget (default: the embedded tiers')")
    args = parser.parse_args()
    settings = Settings(work=args.work)
    splits = {s: load_split(settings, s) for s in ("router", "val", "test")}
    val, test = splits["val"], splits["test"]
    scorer = Scorer(test)
    variants = {"4 context values": ([0, 1, 2, 3], False),
                "4 context values + low-confidence evidence": (list(range(10)), False),
                "4 context values + the latest audit": ([0, 1, 2, 3], True)}
    models = {name: fit_gains(splits["router"], inputs(splits["router"], cols, audits))
              for name, (cols, audits) in variants.items()}
    outside = json.loads(THROUGHPUT.read_text())["projection"]["outside_inference_ms"]
    real = Costs.load(REAL_LATENCY)
    family = "embedded tiers" if args.latency == parser.get_default("latency") else f"tiers of {args.latency.name}"
    settings_list = [(f"{family}, <= 40 % of large", Costs.load(args.latency), 0.40),
                     ("real YOLOv8 n/s/l costs (projection), >= 3x",
                      Costs(f"{real.device} + {outside:.2f} ms outside inference", real.ms + outside), 1 / 3)]
    report = {"what": __doc__.split("\n\n")[0], "command": "python training/experiments/router_ceiling.py", "settings": {}}
    for title, costs, share in settings_list:
        budget = share * costs.ms[2]
        rows = {}

        def score(name: str, trace, audits: bool = False, **extra) -> None:
            rows[name] = {"map50_95": scorer.score(trace)["map50_95"], "cost_ms": cost_ms(test, trace, costs, audits),
                          "label_quality": label_quality(test, trace), **extra}

        score("always-large", rollout(test, costs, _fixed(2), False))
        score("oracle (this frame's values)", oracle_trace(test, costs, budget, False))
        score("previous-frame oracle (all tiers' values one frame back)", oracle_trace(test, costs, budget, True))
        name, factory, *_ = pick(val, costs, budget, RULES)
        score("count rule", rollout(test, costs, factory(), False), thresholds=list(name))
        policy = policy_for_costs(args.policy, costs)
        name, factory, *_ = pick(val, costs, budget, [(w, lambda w=w: learned_chooser(policy, float(w))) for w in WEIGHTS])
        score("shipped policy", rollout(test, costs, factory(), False), weight=float(name))
        for variant, (cols, audits) in variants.items():
            values = {s: predicted_values(models[variant], inputs(splits[s], cols, audits)) for s in ("val", "test")}
            picked = pick(val, costs, budget, [(w, lambda w=w: values_chooser(values["val"], costs.relative, float(w)))
                                               for w in WEIGHTS], audits)
            trace = rollout(test, costs, values_chooser(values["test"], costs.relative, float(picked[0])), False)
            score(f"boosted trees: {variant}", trace, audits, weight=float(picked[0]))
        summarise(report, title, costs, budget, rows)
    print(f"\nat 40 % of large's cost if large cost more, every tier as accurate as now ({family}):")
    report["large_cost_sensitivity"] = large_cost_sensitivity(val, test, scorer, settings_list[0][1])
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.report}")


if __name__ == "__main__":
    main()
