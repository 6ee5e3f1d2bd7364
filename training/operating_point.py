"""`adaptive-perception policy operating-point`: which `routing.cost_weight` to run a tier_values policy at.

A policy from `train` carries the weight calibrated per frame to 40 % of always-large's cost on the training
machine. A deployment differs: other tier latencies (`--latency DEVICE.json`, as `train --latency` takes it), another
budget (`--cost-share`), or the camera's stream, where a slow tier blinds the frames that arrive while it works.
This command picks the weight on the validation split of a `train` work folder and scores it once on the test split:

- per frame (default): the smallest weight whose mean cost per frame on validation is at most `--cost-share` x
  always-large's (`learn.calibrate_weight`, how `train` calibrates it);
- `--streaming`: the weight with the best streaming mAP50-95 on validation among the policy's own and `GRID`, in
  the simulator's 30 Hz stream (one worker, newest frame, outputs standing until the next: `simulate`).

The policy is run as the node runs it (its own relative tier costs in the value head); the latency file sets the
simulated time only. Nothing is written but `--report`; the node's weight is set with `routing.cost_weight`.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from adaptive_perception.detector import TIERS
from adaptive_perception.drift import same_weight, weight_text
from adaptive_perception.errors import AdaptivePerceptionError
from adaptive_perception.policy import Policy
from adaptive_perception.progress import progress

GRID = (0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5)  # streaming candidates besides the policy's own weight


def _row(scorer, split, trace, weight: float | None = None) -> dict:
    mix = trace.mix()
    return {**({} if weight is None else {"weight": float(weight)}), "map50_95": scorer.score(trace)["map50_95"],
            "cost_ms": trace.busy_ms / len(split.profile), "mix": dict(zip(TIERS, np.round(mix, 4).tolist()))}


def streaming_choice(policy: Policy, val, val_scorer, costs, show: bool = True) -> tuple[float, list[dict]]:
    """The weight with the best streaming mAP50-95 on `val` (scored by `val_scorer`) among the policy's own and
    GRID, and every candidate's row (weight, mAP50-95, cost, mix), in the order tried (the own weight first)."""
    from adaptive_perception.training.report import learned_chooser
    from adaptive_perception.training.simulate import rollout

    own = float(policy.value_head.cost_weight)
    weights = [own, *(w for w in GRID if w != own)]
    grid = [_row(val_scorer, val, rollout(val, costs, learned_chooser(policy, weight), True), weight)
            for weight in progress(weights, desc="validation split, streaming at 30 Hz", unit="weight", enabled=show)]
    return max(grid, key=lambda row: row["map50_95"])["weight"], grid


def choose(policy: Policy, work: Path, latency: Path | None = None, streaming: bool = False,
           cost_share: float = 0.4) -> dict:
    from adaptive_perception.training.evaluate import Scorer
    from adaptive_perception.training.labels import Costs
    from adaptive_perception.training.learn import calibrate_weight
    from adaptive_perception.training.pipeline import Settings, _load_costs, load_split, work_mismatches
    from adaptive_perception.training.report import _fixed, learned_chooser
    from adaptive_perception.training.simulate import rollout

    if policy.value_head is None:
        raise AdaptivePerceptionError(f"policy '{policy.policy_id}' ({policy.path}) outputs tier logits: it has no cost "
                                      "weight to choose (policies from `adaptive-perception train` output tier values)")
    if not streaming and not 0.0 < cost_share <= 1.0:
        raise AdaptivePerceptionError(f"--cost-share {cost_share}: give a share of always-large's cost in (0, 1], "
                                      "e.g. 0.4")
    settings = Settings(work=work)
    for problem in work_mismatches(work, policy):  # profiled with other tiers: the weight would fit those
        print(f"warning: {problem}", file=sys.stderr, flush=True)
    costs = Costs.load(latency) if latency else _load_costs(settings)
    timed_other = costs.mismatches(policy)
    if timed_other:  # a latency file of other tiers: the weight would fit their timings
        print(f"warning: --latency {latency} timed other tier files than policy '{policy.policy_id}' was trained with: "
              f"{', '.join(timed_other)}; time its tiers (`bench latency --model ...`)", file=sys.stderr, flush=True)
    val, test = load_split(settings, "val"), load_split(settings, "test")
    own = float(policy.value_head.cost_weight)
    val_scorer, test_scorer = Scorer(val), Scorer(test)
    if streaming:
        chosen, grid = streaming_choice(policy, val, val_scorer, costs)
    else:
        budget = cost_share * float(costs.ms[-1])
        print(f"validation split, per frame: the smallest weight within {budget:.1f} ms a frame", flush=True)
        # rounded up to what is printed (weight_text), so the printed weight keeps the validation budget
        chosen = math.ceil(round(calibrate_weight(lambda w: learned_chooser(policy, w), val, costs, budget) * 1e6, 3)) / 1e6
        grid = [_row(val_scorer, val, rollout(val, costs, learned_chooser(policy, w), False), w)
                for w in sorted({own, chosen})]
        cheapest = next(row for row in grid if row["weight"] == chosen)["cost_ms"]
        if cheapest > budget + 1e-9:  # the search gave up at its largest weight: no weight fits
            raise AdaptivePerceptionError(
                f"--cost-share {cost_share:g}: no cost weight keeps this policy's routing of the validation split within "
                f"{budget:.1f} ms a frame; at weight {chosen:g} it still costs {cheapest:.1f} ms "
                f"({cheapest / float(costs.ms[-1]):.0%} of large's {float(costs.ms[-1]):.1f} ms; nano alone costs "
                f"{float(costs.ms[0]):.1f} ms): give a --cost-share of at least "
                f"{math.ceil(100 * cheapest / float(costs.ms[-1])) / 100:g}")
    val_large = _row(val_scorer, val, rollout(val, costs, _fixed(len(TIERS) - 1), streaming))
    rows = {"always-large": _row(test_scorer, test, rollout(test, costs, _fixed(len(TIERS) - 1), streaming))}
    for name, weight in (("the policy's own weight", own), ("the chosen weight", chosen)):
        rows[name] = _row(test_scorer, test, rollout(test, costs, learned_chooser(policy, weight), streaming), weight)
    return {"policy_id": policy.policy_id, "policy": str(policy.path), "work": str(work), "costs_ms": costs.ms.tolist(),
            "device": costs.device, "setting": "streaming at 30 Hz" if streaming else "per frame",
            **({} if streaming else {"cost_share": cost_share, "budget_ms": cost_share * float(costs.ms[-1])}),
            "own_weight": own, "chosen_weight": float(chosen), "validation": {"always-large": val_large, "weights": grid},
            "test": rows,
            "drift_reference_weight": policy.drift_reference.cost_weight if policy.drift_reference else None}


def _table(rows: list[tuple[str, dict]]) -> str:
    """Rows after always-large's, which sets the "cost vs large" column (streaming: busy time over wall time)."""
    large_ms = rows[0][1]["cost_ms"]
    lines = ["| row | mAP50-95 | cost (ms) | cost vs large | mix nano / small / large |", "|---|---|---|---|---|"]
    for name, row in rows:
        mix = " / ".join(f"{100 * row['mix'][t]:.0f}" for t in TIERS)
        lines.append(f"| {name} | {row['map50_95']:.1f} | {row['cost_ms']:.1f} | {row['cost_ms'] / large_ms:.0%} | {mix} |")
    return "\n".join(lines)


def render(result: dict) -> str:
    budget = f", budget {result['cost_share']:.0%} of large's cost" if "budget_ms" in result else ""
    own, chosen = result["own_weight"], result["chosen_weight"]
    text = [f"operating point of policy '{result['policy_id']}' {result['setting']}{budget} (tiers "
            f"{' / '.join(f'{m:.1f}' for m in result['costs_ms'])} ms: {result['device']})",
            "", "validation split:",
            _table([("always-large", result["validation"]["always-large"])]
                   + [(f"weight {weight_text(r['weight'])}", r) for r in result["validation"]["weights"]]),
            "", "test split (scored once):",
            _table([(name + (f" ({weight_text(row['weight'])})" if "weight" in row else ""), row)
                    for name, row in result["test"].items()]),
            "", f"chosen weight {weight_text(chosen)} (the policy's own: {weight_text(own)}); set it on a running node "
            "with", f"  ros2 param set /perception_node routing.cost_weight {weight_text(chosen)}",
            f"  adaptive-perception set-routing --cost-weight {weight_text(chosen)}   # the same, without ros2",
            "or as routing.cost_weight in the node's parameter file."]
    measured = result["drift_reference_weight"]
    if measured is not None and not same_weight(chosen, measured):
        text.append(f"At a weight other than its drift reference's ({weight_text(measured)}) the drift monitor leaves "
                    "the tier mix and audit agreement out; to keep them, measure the reference at this weight and load "
                    f"the file it writes: adaptive-perception policy drift-reference {result['policy']} --work "
                    f"{result['work']} --calibration-sequences 40 --cost-weight {weight_text(chosen)} "
                    f"--out POLICY_AT_{weight_text(chosen)}.onnx")
    return "\n".join(text)


def write(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
