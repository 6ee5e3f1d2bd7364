"""Experiment (not part of the package; kept so training/README.md's "The cheap tiers' input sizes" can be
reproduced): the routing ceiling of one or more `train` work folders' tiers on the splits a choice of tiers may look
at, the router and validation splits.

    python training/experiments/tier_sizes.py build/train-v3 build/size-nano-224x288 ...   # ~1 min per folder

Per folder (its profiles and labels, the tiers' costs from its latency.json when it has one, else the embedded
tiers'), per split, at 40 % of always-large's cost: always-nano, always-small and always-large (mAP50-95), and as
shares of always-large the budget oracle, the previous-frame oracle (`router_ceiling.oracle_trace`) and the count
rule tuned on that split itself (the best rule of `report.HEURISTIC_GRID` within the budget). Writes
build/tier_sizes.json.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from router_ceiling import RULES, oracle_trace, pick

from adaptive_perception.training.evaluate import Scorer
from adaptive_perception.training.labels import Costs
from adaptive_perception.training.pipeline import Settings, load_split
from adaptive_perception.training.report import _fixed
from adaptive_perception.training.simulate import rollout

ROOT = Path(__file__).resolve().parents[2]
EMBEDDED_LATENCY = ROOT / "training/latency/cpu-2core-family2-wide.json"


def ceiling(work: Path, split_name: str, costs: Costs, share: float = 0.40) -> dict[str, float]:
    split = load_split(Settings(work=work), split_name)
    scorer = Scorer(split)
    budget = share * costs.ms[2]
    fixed = {tier: scorer.score(rollout(split, costs, _fixed(t), False))["map50_95"]
             for t, tier in enumerate(("nano", "small", "large"))}
    _, rule, *_ = pick(split, costs, budget, RULES)
    shares = {name: scorer.score(trace)["map50_95"] / fixed["large"] for name, trace in (
        ("oracle", oracle_trace(split, costs, budget, False)),
        ("previous-frame oracle", oracle_trace(split, costs, budget, True)),
        ("count rule", rollout(split, costs, rule(), False)))}
    return {**fixed, **shares}


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    report = {}
    print("| folder | costs (ms) | split | nano / small / large | oracle / previous-frame oracle / count rule |\n"
          "|---|---|---|---|---|")
    for work in map(Path, sys.argv[1:]):
        costs = Costs.load(work / "latency.json" if (work / "latency.json").is_file() else EMBEDDED_LATENCY)
        report[str(work)] = {"costs_ms": costs.ms.round(3).tolist()}
        for split in ("router", "val"):
            row = report[str(work)][split] = ceiling(work, split, costs)
            print(f"| {work.name} | {' / '.join(f'{m:.1f}' for m in costs.ms)} | {split} | "
                  f"{row['nano']:.1f} / {row['small']:.1f} / {row['large']:.1f} | {100 * row['oracle']:.1f} / "
                  f"{100 * row['previous-frame oracle']:.1f} / {100 * row['count rule']:.1f} |")
    out = ROOT / "build/tier_sizes.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
