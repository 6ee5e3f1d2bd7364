"""Experiment (not part of the package; kept so the README's figures can be reproduced): would a router that sees
the frame it routes beat one that reads the previous routed output? An upper bound for a learned image encoder.

    python training/experiments/free_peek.py [--work build/train-v3]   # ~5 min; after `train labels`

The router issue's third lever is a small image encoder inside the policy: it would see the frame being routed,
which the 4 context values (the previous frame's routed output) do not. Its budget is the overhead bar's 0.5 ms, a
fifteenth of nano's inference, so it cannot see the frame better than nano's own detections on it do. This gives
the router nano's output on the frame it routes *for free* (no cost added, unlike `cascade.py`, which pays nano on
every frame), and small's as a stronger peek: if even that does not lift the router to the bar, no encoder inside
the overhead budget will.

Per frame at <= 40 % of always-large's cost (embedded tiers' costs), boosted trees on each tier's gain over nano
as in `router_ceiling.py` (trained on the router split under each tier's previous output, weight picked on
validation for the budget, scored once on test by pycocotools; beside it, each input set's ceiling at equal cost,
the weight read off the test split itself):
- previous output's 4 context values (the control: `router_ceiling.py`'s row);
- + nano's output on this frame (count, mean score, median box size and the low-confidence evidence of `EXTRA`);
- + small's output on this frame (the same values);
- nano's output on this frame alone.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from router_ceiling import EXTRA, WEIGHTS, context_table, fit_gains, pick, predicted_values, values_chooser

from adaptive_perception.training.evaluate import Scorer
from adaptive_perception.training.labels import Costs
from adaptive_perception.training.pipeline import Settings, load_split
from adaptive_perception.training.report import _fixed
from adaptive_perception.training.simulate import Split, rollout

ROOT = Path(__file__).resolve().parents[2]
NOW = [0, 1, 3, *range(4, 4 + len(EXTRA))]  # context_table's columns without the tier


def inputs(split: Split, table: np.ndarray, previous: bool, now: tuple[int, ...]) -> np.ndarray:
    """(N, 3, D) for frame f after the previous frame's output by tier t: that output's 4 context values (if
    `previous`), then the outputs of the tiers in `now` on frame f itself."""
    parts = []
    if previous:
        before = np.zeros((len(split.profile), 3, 4), np.float32)
        for frames in split.profile.sequences():
            before[frames[1:]] = table[frames[:-1], :, :4]
        parts.append(before)
    parts += [np.repeat(table[:, tier:tier + 1, NOW], 3, axis=1) for tier in now]
    return np.concatenate(parts, axis=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "build/train-v3")
    parser.add_argument("--report", type=Path, default=ROOT / "training/reports/free_peek.json")
    parser.add_argument("--latency", type=Path, default=ROOT / "training/latency/cpu-2core-family2-wide.json")
    args = parser.parse_args()
    splits = {s: load_split(Settings(work=args.work), s) for s in ("router", "val", "test")}
    tables = {s: context_table(split) for s, split in splits.items()}
    val, test = splits["val"], splits["test"]
    scorer = Scorer(test)
    costs = Costs.load(args.latency)
    budget, relative = 0.4 * costs.ms[2], costs.relative
    large = scorer.score(rollout(test, costs, _fixed(2), False))["map50_95"]
    rows = {"always-large": {"map50_95": large, "cost_ms": float(costs.ms[2])}}
    for name, previous, now in [("previous output's 4 context values", True, ()),
                                ("+ nano's output on this frame, free", True, (0,)),
                                ("+ small's output on this frame, free", True, (1,)),
                                ("nano's output on this frame alone, free", False, (0,))]:
        x = {s: inputs(splits[s], tables[s], previous, now) for s in splits}
        models = fit_gains(splits["router"], x["router"])
        values = {s: predicted_values(models, x[s]) for s in ("val", "test")}
        weight, *_ = pick(val, costs, budget,
                          [(w, lambda w=w: values_chooser(values["val"], relative, float(w))) for w in WEIGHTS])
        trace = rollout(test, costs, values_chooser(values["test"], relative, float(weight)), False)
        score = scorer.score(trace)["map50_95"]
        # the same inputs' ceiling at equal cost: the weight read off the test split itself (not a router)
        on_test, *_ = pick(test, costs, budget,
                           [(w, lambda w=w: values_chooser(values["test"], relative, float(w))) for w in WEIGHTS])
        ceiling = rollout(test, costs, values_chooser(values["test"], relative, float(on_test)), False)
        rows[name] = {"map50_95": score, "share_of_large": score / large, "cost_ms": trace.busy_ms / len(test.profile),
                      "mix": trace.mix().round(3).tolist(), "weight": float(weight),
                      "weight_on_test": {"weight": float(on_test), "map50_95": scorer.score(ceiling)["map50_95"],
                                         "cost_ms": ceiling.busy_ms / len(test.profile)}}
        print(f"{name:45s} {score:5.1f} ({score / large:5.1%} of large) at {rows[name]['cost_ms']:.1f} ms; weight on test "
              f"{rows[name]['weight_on_test']['map50_95']:.1f} at {rows[name]['weight_on_test']['cost_ms']:.1f} ms")
    report = {"what": __doc__.split("\n\n")[0], "command": "python training/experiments/free_peek.py",
              "costs": costs.device, "budget_ms": budget, "rows": rows}
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.report}")


if __name__ == "__main__":
    main()
