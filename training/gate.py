"""The promotion gate: a retrained policy replaces the running one only if it is really better (ROS-free).

Truth on evidence bags comes from the reference tier (large), which rewards any policy that routes more frames
to large; so the gate compares the two policies at matched cost:
1. cost: the candidate's mean cost per frame on the new data's held-out segments may exceed the current
   policy's by at most `cost_tolerance` (relative); otherwise it buys accuracy with cost and is refused;
2. new data: the candidate's mAP50-95 minus the current policy's on those segments, with a paired 95 %
   bootstrap interval (the same resampled segments score both); it must exclude 0 (better, not just equal);
3. original data: the candidate may lose at most `max_original_loss` mAP50-95 points on the original test split
   (the world it was trained for has not gone away).
Promote only when all three hold. Each row is a `Scorer.score(..., resamples=R, seed=S)` result (same R and S
for both policies on a split) with `mean_cost_ms` added.
"""
from __future__ import annotations

import numpy as np

from adaptive_perception.training.evaluate import interval

COST_TOLERANCE = 0.05
MAX_ORIGINAL_LOSS = 1.0


def _paired(candidate: dict, current: dict) -> dict:
    difference = candidate["map50_95"] - current["map50_95"]
    a = np.asarray([r[0] for r in candidate["replicates"]], np.float64)
    b = np.asarray([r[0] for r in current["replicates"]], np.float64)
    if len(a) != len(b) or not len(a):
        raise ValueError("the paired interval needs the same number (> 0) of bootstrap replicates for both policies")
    return {"difference": float(difference), "difference_ci": interval((a - b).tolist())}


def decide(new_candidate: dict, new_current: dict, original_candidate: dict, original_current: dict,
           cost_tolerance: float = COST_TOLERANCE, max_original_loss: float = MAX_ORIGINAL_LOSS) -> dict:
    """The gate's decision with every number it used and, when it refuses, why (in words)."""
    cost_ratio = new_candidate["mean_cost_ms"] / new_current["mean_cost_ms"]
    new = _paired(new_candidate, new_current)
    loss = original_current["map50_95"] - original_candidate["map50_95"]
    checks = {
        "cost_matched": bool(cost_ratio <= 1.0 + cost_tolerance),
        "better_on_new_data": bool(new["difference_ci"][0] > 0.0),
        "original_loss_ok": bool(loss <= max_original_loss),
    }
    reasons = []
    if not checks["cost_matched"]:
        reasons.append(f"the candidate costs {100 * (cost_ratio - 1):.1f} % more per frame on the new data "
                       f"({new_candidate['mean_cost_ms']:.2f} against {new_current['mean_cost_ms']:.2f} ms; at most "
                       f"{100 * cost_tolerance:.0f} %): it buys accuracy with cost")
    if not checks["better_on_new_data"]:
        low, high = new["difference_ci"]
        reasons.append(f"on the new data the candidate is {new['difference']:+.2f} mAP50-95 against the current "
                       f"policy, interval [{low:+.2f}, {high:+.2f}] does not exclude 0")
    if not checks["original_loss_ok"]:
        reasons.append(f"on the original test split the candidate loses {loss:.2f} mAP50-95 (at most "
                       f"{max_original_loss:.1f})")
    return {"promote": all(checks.values()), "checks": checks, "reasons": reasons,
            "new_data": {**new, "candidate_map50_95": new_candidate["map50_95"],
                         "current_map50_95": new_current["map50_95"],
                         "candidate_cost_ms": new_candidate["mean_cost_ms"],
                         "current_cost_ms": new_current["mean_cost_ms"], "cost_ratio": float(cost_ratio)},
            "original": {"candidate_map50_95": original_candidate["map50_95"],
                         "current_map50_95": original_current["map50_95"], "loss": float(loss)},
            "cost_tolerance": cost_tolerance, "max_original_loss": max_original_loss}
