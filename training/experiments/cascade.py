"""Experiment (not part of the package; kept so the README's figures can be reproduced): does a nano-first cascade
reach the bars that routing from the past cannot? Nothing here is shipped.

    python training/experiments/cascade.py [--work build/train-v3]   # ~5 min; after `train labels`

Routing from the past decides a frame's tier before any detector has seen it, from the previous routed output
(`router_ceiling.py`: a router that knew all three tiers' values on the previous frame keeps 91 % of always-large's
mAP50-95 at 40 % of its cost). A cascade runs nano on every frame first and then decides, from nano's output on
*this* frame, whether to run small or large on it too (publishing the escalated tier's output). It pays nano's cost
on every escalated frame, and in exchange it decides with this frame's evidence. In the simulator that is routing
with tier costs (nano, nano + small, nano + large) and a chooser that may read nano's output on the frame it routes.

Per frame, on the test split's profile, at the same two budgets as `router_ceiling.py` (<= 40 % of always-large's
cost with the embedded tiers; >= 3x with the real YOLOv8 costs plus the work outside inference, a projection).
Rows (everything but the oracle tuned on validation for the budget, scored once on test, mAP50-95 by pycocotools):

- **cascade oracle**: the budget oracle on this frame's values at the cascade's costs: the best any cascade can do;
- **cascade count rule**: nano's published count on this frame, < a keeps nano, < b escalates to small, else large
  (a, b from the heuristic's grid);
- **cascade, boosted trees**: two histogram gradient boosting regressors for small's and large's value gain over
  nano, on nano's output on this frame (its published count, mean score and median box size, and the
  low-confidence evidence of `router_ceiling.EXTRA`) and the 4 context values of the previous routed output,
  trained on the router split under each tier's previous output; escalate to argmax(gain - weight x extra cost).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from router_ceiling import (EXTRA, REAL_LATENCY, THROUGHPUT, WEIGHTS, context_table, fit_gains, pick,
                            predicted_values, summarise, values_chooser)

from adaptive_perception.training.evaluate import Scorer
from adaptive_perception.training.labels import Costs, budget_oracle
from adaptive_perception.training.pipeline import Settings, load_split
from adaptive_perception.training.report import HEURISTIC_GRID, _fixed, _table_chooser
from adaptive_perception.training.simulate import Split, rollout

ROOT = Path(__file__).resolve().parents[2]
NANO_NOW = [0, 1, 3, *range(4, 4 + len(EXTRA))]  # context_table's columns without the tier (always nano here)


def cascade_costs(costs: Costs) -> Costs:
    """Nano always runs first; escalating to small or large adds that tier's inference."""
    return Costs(f"{costs.device}, nano first", costs.ms + np.array([0.0, costs.ms[0], costs.ms[0]]))


def inputs(split: Split) -> np.ndarray:
    """(N, 3, D) for frame f after the previous frame's output by tier t: the previous output's 4 context values,
    then nano's output on frame f."""
    table = context_table(split)
    previous = np.zeros((len(split.profile), 3, 4), np.float32)
    for frames in split.profile.sequences():
        previous[frames[1:]] = table[frames[:-1], :, :4]
    now = np.repeat(table[:, 0:1, NANO_NOW], 3, axis=1)
    return np.concatenate([previous, now], axis=2)


def count_chooser(split: Split, rule: tuple[int, int]):
    counts = split.counts[:, 0]
    return lambda frame, *_: 0 if counts[frame] < rule[0] else (1 if counts[frame] < rule[1] else 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "build/train-v3")
    parser.add_argument("--report", type=Path, default=ROOT / "training/reports/cascade.json")
    parser.add_argument("--latency", type=Path, default=ROOT / "training/latency/cpu-2core-family2-wide.json")
    args = parser.parse_args()
    settings = Settings(work=args.work)
    splits = {s: load_split(settings, s) for s in ("router", "val", "test")}
    val, test = splits["val"], splits["test"]
    scorer = Scorer(test)
    models = fit_gains(splits["router"], inputs(splits["router"]))
    values = {s: predicted_values(models, inputs(splits[s])) for s in ("val", "test")}
    outside = json.loads(THROUGHPUT.read_text())["projection"]["outside_inference_ms"]
    real = Costs.load(REAL_LATENCY)
    report = {"what": __doc__.split("\n\n")[0], "command": "python training/experiments/cascade.py", "settings": {}}
    for title, costs, share in [
            ("embedded tiers, <= 40 % of large", Costs.load(args.latency), 0.40),
            ("real YOLOv8 n/s/l costs (projection), >= 3x",
             Costs(f"{real.device} + {outside:.2f} ms outside inference", real.ms + outside), 1 / 3)]:
        budget, chained = share * costs.ms[2], cascade_costs(costs)
        rows = {}

        def score(name: str, trace, **extra) -> None:
            rows[name] = {"map50_95": scorer.score(trace)["map50_95"], "cost_ms": trace.busy_ms / len(test.profile),
                          "mix": trace.mix().round(3).tolist(), **extra}

        score("always-large", rollout(test, costs, _fixed(2), False))
        tiers = budget_oracle(test.quality[:, :, 0], chained, budget)
        score("cascade oracle (this frame's values)", rollout(test, chained, _table_chooser(tiers), False))
        name, *_ = pick(val, chained, budget, [(r, lambda r=r: count_chooser(val, r)) for r in HEURISTIC_GRID])
        score("cascade count rule", rollout(test, chained, count_chooser(test, name), False), thresholds=list(name))
        extra = (chained.ms - chained.ms[0]) / costs.ms[2]  # what escalating adds, relative to large
        name, *_ = pick(val, chained, budget,
                        [(w, lambda w=w: values_chooser(values["val"], extra, float(w))) for w in WEIGHTS])
        score("cascade, boosted trees", rollout(test, chained, values_chooser(values["test"], extra, float(name)), False),
              weight=float(name))
        summarise(report, title, costs, budget, rows)
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.report}")


if __name__ == "__main__":
    main()
