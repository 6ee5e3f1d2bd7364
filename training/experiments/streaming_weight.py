"""Experiment (not part of the package; kept so the README's figures can be reproduced): the streaming operating
point. The node runs streaming (30 Hz, one worker, newest frame), and there, at the policy file's own cost weight
(BC's, calibrated per frame to 40 % of large's cost; PPO keeps it), BC + PPO routes no better than the count rule.
Here every learned policy's weight is chosen on the validation split by streaming mAP50-95 over a grid (the
file's own weight included), scored once on test, and compared with the count rule tuned at the same test cost
the way the routing report tunes it. Nothing here is shipped: the node's `routing.cost_weight` sets a weight.

    python training/experiments/streaming_weight.py [--work build/train-v3]   # ~9 min; after `train all`
    python training/experiments/streaming_weight.py --policy embedded:policy   # one policy (~2 min)
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from adaptive_perception.config import resolve_model
from adaptive_perception.policy import Policy
from adaptive_perception.training.evaluate import Scorer
from adaptive_perception.training.operating_point import GRID, streaming_choice
from adaptive_perception.training.pipeline import Settings, _load_costs, load_split
from adaptive_perception.training.report import _paired, _row, _tune_heuristic, heuristic_at_cost, learned_chooser
from adaptive_perception.training.simulate import rollout

KINDS = {"bc": "BC only", "ppo": "BC + PPO"}


def _public(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("build/train-v3"))
    parser.add_argument("--resamples", type=int, default=200)
    parser.add_argument("--policy", help="one policy file (or embedded:policy) in place of the run's seeds; "
                                         "writes streaming_weight_<policy id>.json")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parents[1] / "reports" / "streaming_weight.json")
    args = parser.parse_args()
    settings = Settings(work=args.work)
    costs, val, test = _load_costs(settings), load_split(settings, "val"), load_split(settings, "test")
    val_scorer, scorer = Scorer(val), Scorer(test)
    kinds = KINDS
    if args.policy:
        single = Policy(resolve_model(args.policy))
        kinds = {"given": single.policy_id}
        args.out = args.out.with_name(f"streaming_weight_{single.policy_id}.json")
    result = {"command": "python training/experiments/streaming_weight.py"
              + (f" --policy {args.policy}" if args.policy else ""), "work": str(args.work), "grid": GRID,
              "rows": {}, "comparisons": {}}
    raw = {}
    for kind, name in kinds.items():
        policies = ([single] if args.policy else
                    [Policy(args.work / "policies" / f"{kind}_seed{s}.onnx") for s in range(settings.seeds)])
        chosen, validation = [], []
        for policy in policies:
            best, grid = streaming_choice(policy, val, val_scorer, costs, show=False)
            chosen.append(best)
            validation.append({str(row["weight"]): row["map50_95"] for row in grid})
            print(f"{name} {policy.policy_id}: validation streaming mAP50-95 by weight "
                  + ", ".join(f"{row['weight']:.3g} {row['map50_95']:.1f}" for row in grid) + f" -> {best:.3g}")
        for point, weights in (("own weight", [p.value_head.cost_weight for p in policies]),
                               ("weight chosen on validation", chosen)):
            traces = [rollout(test, costs, learned_chooser(p, w), True) for p, w in zip(policies, weights)]
            raw[(kind, point)] = _row(scorer, test, costs, traces, args.resamples)
            result["rows"][f"{name}, {point}"] = {**_public(raw[(kind, point)]), "cost_weights": list(weights)}
        result["rows"][f"{name}, weight chosen on validation"]["validation_map50_95_by_weight"] = validation
    for kind, name in kinds.items():
        for point in ("own weight", "weight chosen on validation"):
            learned = raw[(kind, point)]
            cost_ms = learned["mean_cost_ms"]  # the count rule tuned at that test cost, as the routing report tunes it
            heuristic = heuristic_at_cost(scorer, test, costs, _tune_heuristic(val, test, costs, True, cost_ms), True,
                                          cost_ms, args.resamples)[0]
            result["rows"][f"count rule at {name}'s cost, {point}"] = _public(heuristic)
            result["comparisons"][f"{name}, {point} - count rule at its cost"] = _paired(learned, heuristic)
    if not args.policy:
        result["comparisons"]["BC + PPO - BC only, both at the weight chosen on validation"] = _paired(
            raw[("ppo", "weight chosen on validation")], raw[("bc", "weight chosen on validation")])
    print(f"\n{'row':<64} {'mAP50-95':>18} {'cost ms':>8}  mix n/s/l")
    for name, row in result["rows"].items():
        low, high = row["map50_95_ci"]
        mix = " / ".join(f"{100 * row['mix'][t]:.0f}" for t in row["mix"])
        print(f"{name:<64} {row['map50_95']:5.1f} [{low:4.1f}, {high:4.1f}] {row['mean_cost_ms']:8.1f}  {mix}")
    for name, paired in result["comparisons"].items():
        low, high = paired["difference_ci"]
        print(f"{name}: {paired['difference']:+.1f} [{low:+.1f}, {high:+.1f}]")
    args.out.write_text(json.dumps(result, indent=1, default=float))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
