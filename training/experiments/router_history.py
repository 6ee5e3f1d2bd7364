"""Experiment (not part of the package; kept so the README's figures can be reproduced): does a longer history of
the routed outputs, not only the previous frame's, let a router keep more of large's accuracy at 40 % of its cost?

    python training/experiments/router_history.py [--work build/train-v3]   # ~10 min on 2 cores; after `train labels`

The node's context is what the previous routed frame's output said (4 values). A scene's density persists over
seconds while one frame's count under nano is noisy, so the frames before it might say more. Both rows are the
same model class (scikit-learn's histogram gradient boosting, two regressors for small's and large's value gain
over nano, as `router_ceiling.py`), trained on the same data: the router split rolled out under five behaviours
(always nano, small, large, the count rule (3, 8) and a seeded uniform random mix), so every frame is seen after
cheap and expensive histories. Inputs:

- **previous frame**: the 4 context values after frame f-1 (what the shipped policy reads);
- **history**: those, the 4 values after f-2 and after f-3 (each under the tier that ran there), an exponential
  average (0.3) of log1p(count) and median box size over the sequence's routed outputs, and the latest output of
  the large tier: its log1p(count), median box size and age in frames (capped at 30).

The router routes with its own choices (the history is its own), cost weight picked on validation for the budget
from a grid, scored once on test by pycocotools; the shipped policy and the count rule at the same budget beside.
"""
from __future__ import annotations

import argparse
import json
import math
from collections import deque
from pathlib import Path

import numpy as np

from adaptive_perception.features import RoutingContext
from adaptive_perception.policy import Policy
from adaptive_perception.training.evaluate import Scorer
from adaptive_perception.training.labels import Costs
from adaptive_perception.training.pipeline import Settings, load_split
from adaptive_perception.training.report import _fixed, heuristic_chooser, learned_chooser
from adaptive_perception.training.simulate import Split, rollout

from router_ceiling import POLICY, RULES, WEIGHTS, cost_ms, pick

ROOT = Path(__file__).resolve().parents[2]
EMA, LARGE_AGE_CAP = 0.3, 30


class History:
    """What a router that remembers the sequence's routed outputs knows before frame f."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.recent: deque[np.ndarray] = deque(maxlen=3)
        self.ema: np.ndarray | None = None
        self.large = np.zeros(2, np.float32)
        self.large_age = LARGE_AGE_CAP

    def push(self, context: RoutingContext) -> None:
        """The context after the previous frame's output (its tier included)."""
        v = context.vector()
        self.recent.appendleft(v)
        pair = v[[0, 3]]
        self.ema = pair.copy() if self.ema is None else EMA * pair + (1 - EMA) * self.ema
        self.large_age = min(self.large_age + 1, LARGE_AGE_CAP)
        if context.prev_tier == 2:
            self.large, self.large_age = pair.copy(), 1

    def features(self, full: bool) -> np.ndarray:
        lags = [self.recent[i] if i < len(self.recent) else np.zeros(4, np.float32) for i in range(3 if full else 1)]
        if not full:
            return lags[0]
        ema = self.ema if self.ema is not None else np.zeros(2, np.float32)
        return np.concatenate([*lags, ema, self.large, [self.large_age / LARGE_AGE_CAP]]).astype(np.float32)


def behaviour_rows(split: Split, full: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(X, gains) along the router split's sequences under each behaviour's own routed history."""
    rng = np.random.default_rng(seed)
    count_rule = heuristic_chooser((3, 8))
    behaviours = [_fixed(0), _fixed(1), _fixed(2), lambda *_: int(rng.integers(3)), count_rule]
    gains = split.quality[:, 1:, 0] - split.quality[:, :1, 0]
    xs, ys = [], []
    for choose in behaviours:
        for frames in split.profile.sequences():
            history, context = History(), RoutingContext()
            for f in frames:
                if context.prev_tier >= 0:
                    history.push(context)
                xs.append(history.features(full))
                ys.append(gains[f])
                tier = int(choose(f, None, context))
                context = split.context_after(f, tier)
    return np.asarray(xs), np.asarray(ys)


def fit(x: np.ndarray, y: np.ndarray):
    from sklearn.ensemble import HistGradientBoostingRegressor

    return [HistGradientBoostingRegressor(max_iter=200, learning_rate=0.05, max_leaf_nodes=15, random_state=0)
            .fit(x, y[:, k]) for k in range(2)]


def history_chooser(models, full: bool, relative: np.ndarray, weight: float):
    """Route on the predicted gains from the router's own history: argmax(value - weight x relative cost)."""
    history = History()

    def choose(_frame, _observation, context: RoutingContext) -> int:
        if context.prev_tier < 0:
            history.reset()
        else:
            history.push(context)
        x = history.features(full)[None]
        values = np.array([0.0, models[0].predict(x)[0], models[1].predict(x)[0]])
        return int(np.argmax(values - weight * relative))
    return choose


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "build/train-v3")
    parser.add_argument("--latency", type=Path, default=ROOT / "training/latency/cpu-2core-family2-wide.json")
    parser.add_argument("--report", type=Path, default=ROOT / "training/reports/router_history.json")
    args = parser.parse_args()
    splits = {s: load_split(Settings(work=args.work), s) for s in ("router", "val", "test")}
    val, test = splits["val"], splits["test"]
    costs = Costs.load(args.latency)
    budget = 0.4 * costs.ms[2]
    scorer = Scorer(test)
    large = scorer.score(rollout(test, costs, _fixed(2), False))["map50_95"]
    rows = {}

    def score(name: str, trace, **extra) -> None:
        m = scorer.score(trace)["map50_95"]
        rows[name] = {"map50_95": m, "share_of_large": m / large, "cost_ms": cost_ms(test, trace, costs, False), **extra}
        print(f"{name}: {m:.1f} mAP50-95 ({m / large:.1%} of large) at {rows[name]['cost_ms']:.1f} ms", flush=True)

    name, factory, *_ = pick(val, costs, budget, RULES)
    score("count rule", rollout(test, costs, factory(), False), thresholds=list(name))
    policy = Policy(str(POLICY))
    name, factory, *_ = pick(val, costs, budget, [(w, lambda w=w: learned_chooser(policy, float(w))) for w in WEIGHTS])
    score("shipped policy", rollout(test, costs, factory(), False), weight=float(name))
    grid = WEIGHTS[::2]  # every other weight: each candidate is a rollout with per-frame predictions
    for label, full in (("boosted trees, previous frame", False), ("boosted trees, history", True)):
        models = fit(*behaviour_rows(splits["router"], full))
        picked = pick(val, costs, budget, [(w, lambda w=w: history_chooser(models, full, costs.relative, float(w)))
                                           for w in grid])
        score(label, rollout(test, costs, history_chooser(models, full, costs.relative, float(picked[0])), False),
              weight=float(picked[0]))
    report = {"what": __doc__.split("\n\n")[0], "command": "python training/experiments/router_history.py",
              "budget_ms": budget, "always_large_map50_95": large, "rows": rows}
    args.report.write_text(json.dumps(report, indent=2, default=lambda v: v if math.isfinite(v) else None) + "\n")
    print(f"wrote {args.report}")


if __name__ == "__main__":
    main()
