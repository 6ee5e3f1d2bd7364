"""The promotion gate's decision on hand-made scores: paired interval, matched cost, loss on the original split."""
from __future__ import annotations

import pytest

from adaptive_perception.training.gate import decide


def row(map50_95: float, replicates: list[float], cost_ms: float = 10.0) -> dict:
    return {"map50_95": map50_95, "map50": map50_95 + 10, "replicates": [(r, r + 10) for r in replicates],
            "mean_cost_ms": cost_ms}


CURRENT_NEW = row(30.0, [30.0, 29.0, 31.0, 30.5])
CURRENT_ORIGINAL = row(40.0, [40.0, 40.0, 40.0, 40.0])


def test_a_candidate_better_on_every_paired_resample_at_the_same_cost_is_promoted():
    # paired differences 1.0, 1.5, 2.0, 2.5 (not sorted by the resample order: 2.0, 2.5, 1.0, 1.5)
    candidate = row(31.6, [32.0, 31.5, 32.0, 32.0], cost_ms=10.4)
    decision = decide(candidate, CURRENT_NEW, row(39.2, [39.0] * 4), CURRENT_ORIGINAL)
    assert decision["promote"] and decision["reasons"] == []
    # numpy's linear percentiles of [1.0, 1.5, 2.0, 2.5]: 2.5 % at rank 0.075, 97.5 % at rank 2.925
    assert decision["new_data"]["difference"] == pytest.approx(1.6)
    assert decision["new_data"]["difference_ci"] == [pytest.approx(1.0375), pytest.approx(2.4625)]
    assert decision["new_data"]["cost_ratio"] == pytest.approx(1.04) and decision["original"]["loss"] == pytest.approx(0.8)


def test_accuracy_bought_with_cost_is_refused_even_when_it_is_better():
    candidate = row(33.0, [33.0, 32.0, 34.0, 33.5], cost_ms=10.6)  # 6 % dearer than the current policy
    decision = decide(candidate, CURRENT_NEW, row(40.0, [40.0] * 4), CURRENT_ORIGINAL)
    assert not decision["promote"]
    assert decision["checks"] == {"cost_matched": False, "better_on_new_data": True, "original_loss_ok": True}
    assert decision["reasons"] == ["the candidate costs 6.0 % more per frame on the new data (10.60 against 10.00 ms; "
                                   "at most 5 %): it buys accuracy with cost"]


def test_a_difference_whose_interval_reaches_zero_is_not_better():
    # paired differences -0.5, 0.5, 1.0, 1.5: the 2.5 % percentile is -0.5 + 0.075 * 1.0 = -0.425
    candidate = row(30.6, [29.5, 29.5, 32.0, 32.0])
    decision = decide(candidate, CURRENT_NEW, row(40.0, [40.0] * 4), CURRENT_ORIGINAL)
    assert decision["checks"]["better_on_new_data"] is False and not decision["promote"]
    assert decision["new_data"]["difference_ci"][0] == pytest.approx(-0.425)
    assert "interval [-0.42, +1.46] does not exclude 0" in decision["reasons"][0]


def test_a_candidate_that_forgets_the_original_world_is_refused():
    candidate = row(32.0, [32.0, 31.0, 33.0, 32.5])
    decision = decide(candidate, CURRENT_NEW, row(38.9, [38.9] * 4), CURRENT_ORIGINAL)
    assert decision["checks"]["original_loss_ok"] is False and not decision["promote"]
    assert decision["reasons"] == ["on the original test split the candidate loses 1.10 mAP50-95 (at most 1.0)"]


def test_unpaired_replicates_are_refused():
    with pytest.raises(ValueError, match="same number"):
        decide(row(31.0, [31.0, 31.0]), CURRENT_NEW, CURRENT_ORIGINAL, CURRENT_ORIGINAL)


def test_each_limit_is_inclusive_where_the_gate_says_at_most_and_exclusive_for_the_interval():
    # 10.5 against 10.0 ms is exactly 5 % dearer and 40.0 - 39.0 exactly 1.0 point lost: both "at most", so allowed;
    # paired differences 0.5, 1.0, 1.5, 2.0: interval [0.5375, 1.9625], clear of 0
    candidate = row(31.0, [30.5, 30.0, 32.5, 32.5], cost_ms=10.5)
    decision = decide(candidate, CURRENT_NEW, row(39.0, [39.0] * 4), CURRENT_ORIGINAL)
    assert decision["promote"], decision["reasons"]
    assert decision["new_data"]["cost_ratio"] == 1.05 and decision["original"]["loss"] == 1.0
    # paired differences 0, 0, 1, 1: the interval's low end is 0 itself, which it must exclude
    tied = decide(row(30.6, [30.0, 29.0, 32.0, 31.5]), CURRENT_NEW, row(40.0, [40.0] * 4), CURRENT_ORIGINAL)
    assert tied["new_data"]["difference_ci"] == [0.0, 1.0]
    assert not tied["promote"] and tied["checks"]["better_on_new_data"] is False
    assert "interval [+0.00, +1.00] does not exclude 0" in tied["reasons"][0]
