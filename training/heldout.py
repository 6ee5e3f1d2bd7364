"""`adaptive-perception bench heldout`: the committed policy on scenes no training, calibration or benchmark
split ever used: newly seeded in-distribution sequences of the policy's generator version, and each drift preset.

Per set, every frame goes through the profile stage (features, all three tiers, the sidecar truth, as the
training pipeline does) and is routed per frame by the simulator: the learned policy (its own context), the
heuristic read at exactly the learned policy's cost on this set (the best rule below and above that cost on this
set's own frames, time-shared: a rule tuned in-sample, a stronger opponent than a deployed one), always-nano and
always-large. mAP50-95 with pycocotools; the difference carries a paired 95 % bootstrap interval over sequences.
No bar: it shows how far the policy generalises. Writes JSON and a Markdown table.
"""
from __future__ import annotations

import json
from pathlib import Path

from adaptive_perception.config import resolve_model
from adaptive_perception.detector import TIERS
from adaptive_perception.policy import Policy
from adaptive_perception.router import Router
from adaptive_perception.scenes.benchmark import camera_pixels
from adaptive_perception.scenes.sequence import Drift, SequenceSpec, render_sequence
from adaptive_perception.training.evaluate import Scorer
from adaptive_perception.training.labels import Costs
from adaptive_perception.training.profile import profile
from adaptive_perception.training.report import (
    HEURISTIC_GRID, _clean, _fixed, _paired, _router_chooser, _row, bracketing_rules, heuristic_at_cost,
    heuristic_chooser,
)
from adaptive_perception.training.simulate import Split, rollout

SEED = 626262  # no benchmark split, drift reference or drift report uses it
MIN_SEQUENCES_FOR_INTERVAL = 4  # 4 sequences resample into 35 distinct splits


def set_specs(name: str, sequences: int, frames: int, version: str) -> list[SequenceSpec]:
    """`in_distribution` or a drift preset's value: `sequences` new sequences of `frames` frames."""
    drift = Drift.NONE if name == "in_distribution" else Drift(name)
    offset = 0 if drift is Drift.NONE else 1 + list(Drift).index(drift)
    return [SequenceSpec(SEED + offset, i, frames, drift=drift, version=version) for i in range(sequences)]


def _frames(specs: list[SequenceSpec]):
    """Rendered frames as a camera delivers them (JPEG round trip), with their truth, as the profile stage reads."""
    for spec in specs:
        for frame in render_sequence(spec):
            objects = [{"box": list(t.box), "class_id": t.class_id, "ignore": t.ignore} for t in frame.truths]
            yield camera_pixels(frame.rgb), spec.index, frame.stamp_ns, objects


def _heuristic_at(split: Split, scorer: Scorer, costs: Costs, cost_ms: float, resamples: int) -> dict:
    candidates = []
    for thresholds in HEURISTIC_GRID:
        trace = rollout(split, costs, heuristic_chooser(thresholds), False)
        candidates.append((trace.busy_ms / len(split.profile), float(trace.quality.mean()), thresholds))
    return heuristic_at_cost(scorer, split, costs, bracketing_rules(candidates, cost_ms), False, cost_ms, resamples)[0]


def evaluate_set(split: Split, policy: Policy, costs: Costs, resamples: int) -> dict:
    scorer = Scorer(split)
    router = Router("learned", policy)
    learned = _row(scorer, split, costs, [rollout(split, costs, _router_chooser(router), False)], resamples)
    rows = {"learned": learned,
            "heuristic at the learned cost": _heuristic_at(split, scorer, costs, learned["mean_cost_ms"], resamples),
            **{f"always-{t}": _row(scorer, split, costs, [rollout(split, costs, _fixed(i), False)], resamples)
               for i, t in enumerate(TIERS) if t != "small"}}
    return intervals_if_enough({"frames": len(split.profile), "sequences": len(split.profile.sequences()),
                                "rows": rows,
                                "learned_minus_heuristic": _paired(learned, rows["heuristic at the learned cost"])})


def intervals_if_enough(result: dict) -> dict:
    """A set's result, its bootstrap intervals (the paired difference's and every row's) dropped, and why, when too
    few sequences resample into too few distinct splits to bound anything (1 sequence: one split, a zero-width
    "interval"; 2: three)."""
    sequences = result["sequences"]
    if sequences >= MIN_SEQUENCES_FOR_INTERVAL:
        return result
    paired = result["learned_minus_heuristic"]
    rows = {name: {k: v for k, v in row.items() if not k.endswith("_ci") and k != "_replicates"}
            for name, row in result["rows"].items()}
    return {**result, "rows": rows, "learned_minus_heuristic": {
        "difference": paired["difference"],
        "no_interval": f"{sequences} sequence{'s' * (sequences != 1)}: a bootstrap over sequences needs at least "
                       f"{MIN_SEQUENCES_FOR_INTERVAL} (--sequences)"}}


def run(policy_path: str, latency: Path, sets: list[str], sequences: int, frames: int, version: str,
        resamples: int, report_path: Path, command: str = "adaptive-perception bench heldout") -> dict:
    policy = Policy(resolve_model(policy_path))
    costs = Costs.load(latency)
    result = {"command": command, "policy_id": policy.policy_id, "generator_version": version, "seed": SEED,
              "costs": costs.device,
              "tier_cost_ms": dict(zip(TIERS, costs.ms.round(3).tolist())), "sets": {}}
    for name in sets:
        specs = set_specs(name, sequences, frames, version)
        profiled = profile(_frames(specs), sequences * frames, "sidecar", {t: f"embedded:{t}" for t in TIERS},
                           desc=f"held-out {name}")
        result["sets"][name] = evaluate_set(Split.build(profiled), policy, costs, resamples)
        print(markdown(result).splitlines()[-1])
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(_clean(result), indent=1))
    report_path.with_suffix(".md").write_text(markdown(result) + "\n")
    print(markdown(result))
    print(f"wrote {report_path} and {report_path.with_suffix('.md')}")
    return result


def markdown(result: dict) -> str:
    lines = [f"Policy `{result['policy_id']}` on held-out scenes (generator {result['generator_version']}, seed "
             f"{result['seed']}), per frame; costs: {result['costs']}. Command: "
             f"`{result.get('command', 'adaptive-perception bench heldout')}`.", "",
             "| set | frames | learned mAP50-95 | cost (ms) | mix nano / small / large | heuristic at that cost | "
             "learned - heuristic [95 % CI] | always-nano | always-large |", "|---|---|---|---|---|---|---|---|---|"]
    for name, s in result["sets"].items():
        r = s["rows"]
        mix = " / ".join(f"{100 * r['learned']['mix'][t]:.0f}" for t in TIERS)
        d = s["learned_minus_heuristic"]
        ci = d.get("difference_ci")
        lines.append(f"| {name} | {s['frames']} | {r['learned']['map50_95']:.1f} | {r['learned']['mean_cost_ms']:.1f} | "
                     f"{mix} | {r['heuristic at the learned cost']['map50_95']:.1f} | {d['difference']:+.1f}"
                     + (f" [{ci[0]:+.1f}, {ci[1]:+.1f}]" if ci else " (no interval: too few sequences)")
                     + f" | {r['always-nano']['map50_95']:.1f} | "
                     f"{r['always-large']['map50_95']:.1f} |")
    return "\n".join(lines)

