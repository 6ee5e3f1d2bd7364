"""The drift report: its figures from a hand-made stream, and a short real run on the embedded policy."""
from __future__ import annotations

import json
import subprocess

import pytest

from adaptive_perception.drift import DRIFT, OK, UNKNOWN, WARN
from adaptive_perception.evidence import EvidenceSettings
from adaptive_perception.training.drift_report import evidence_frames, markdown, summarise_stream

THRESHOLDS = {"feature_psi": 2.0, "mix_tvd": 0.5, "agreement_drop": 0.2}


def test_delay_false_alarms_and_peaks_from_a_hand_made_stream():
    # 16 in-distribution frames (one false DRIFT episode at frame 9), then the drift: DRIFT first at frame 19
    states = [UNKNOWN] * 3 + [OK] * 5 + [WARN, DRIFT, DRIFT, OK] + [OK] * 4 + [OK, WARN, WARN, DRIFT, DRIFT]
    stats = [{}] * 3 + [{"feature_psi": 1.0, "mix_tvd": 0.1, "agreement_drop": 0.0}] * 13 \
        + [{"feature_psi": 3.0 + i, "mix_tvd": 0.2, "agreement_drop": 0.1} for i in range(5)]
    stats[9] = {"feature_psi": 2.4, "mix_tvd": 0.3, "agreement_drop": 0.05}
    scores = [float("nan")] * 3 + [0.5] * 18
    summary = summarise_stream(states, scores, stats, 16, THRESHOLDS)
    assert (summary["in_distribution_frames"], summary["drift_frames"]) == (16, 5)
    assert summary["false_alarms"] == 1 and summary["warn_frames_before_change"] == 1
    assert summary["detection_delay_frames"] == 3
    assert summary["peak_ratio_before_change"] == {"feature_psi": pytest.approx(1.2), "mix_tvd": pytest.approx(0.6),
                                                   "agreement_drop": pytest.approx(0.25)}
    assert summary["peak_ratio_after_change"] == {"feature_psi": pytest.approx(3.5), "mix_tvd": pytest.approx(0.4),
                                                  "agreement_drop": pytest.approx(0.5)}
    never = summarise_stream([OK] * 10, [0.1] * 10, [{}] * 10, 5, THRESHOLDS)
    assert never["detection_delay_frames"] is None and never["false_alarms"] == 0


def test_a_night_stream_moves_the_features_away_from_the_reference(tmp_path):
    report = tmp_path / "drift.json"
    run = subprocess.run(["adaptive-perception", "bench", "drift", "--in-sequences", "1", "--drift-sequences", "1",
                          "--preset", "night", "--no-retrain", "--report", str(report)], capture_output=True, text=True,
                         timeout=900)
    assert run.returncode in (0, 1), run.stderr[-3000:]
    result = json.loads(report.read_text())
    night = result["presets"]["night"]
    assert (night["in_distribution_frames"], night["drift_frames"]) == (150, 150)
    # a darkened, noisy world: the image features leave the reference's deciles (measured: 0.20 -> 0.82 of the
    # threshold), and the nano/small outputs stop agreeing with large as often
    assert night["peak_ratio_after_change"]["feature_psi"] > 2 * night["peak_ratio_before_change"]["feature_psi"]
    assert result["bars"]["in_distribution_frames"] == 150 and not result["bars"]["no_false_alarm"]  # < 3,000 frames
    assert (tmp_path / "drift.png").stat().st_size > 10_000 and "| night | 150 |" in (tmp_path / "drift.md").read_text()
    assert "retraining" in night and "skipped" in night["retraining"]


def test_the_evidence_is_what_the_node_records_around_the_drift_frame():
    stream = list(range(100))
    # the node's defaults: its ring's last 60 frames (the DRIFT frame the last of them) and the 150 after it;
    # a stream that ends first gives fewer (the node's own recording: tests/test_operator_view.py)
    assert EvidenceSettings().pre_frames == 60 and EvidenceSettings().post_frames == 150
    assert evidence_frames(stream, 70) == list(range(11, 100))
    assert evidence_frames(stream, 40, EvidenceSettings(pre_frames=7, post_frames=5)) == list(range(34, 46))
    assert evidence_frames(stream, 3, EvidenceSettings(pre_frames=7, post_frames=5)) == list(range(0, 9))


def test_the_report_shows_each_presets_retraining_or_why_there_was_none():
    summary = summarise_stream([OK] * 4, [0.1] * 4, [{}] * 4, 2, THRESHOLDS)
    result = {"policy_id": "p", "generator_version": "2.0.0", "window": 150, "confirm_frames": 15, "audit_every": 30,
              "thresholds": THRESHOLDS, "false_alarms_per_1000": 0.0,
              "bars": {"in_distribution_frames": 2, "no_false_alarm": False, "detected_within_150": {}},
              "presets": {"night": {**summary, "retraining": {
                  "evidence_frames": 210, "before": {"map50_95": 11.46, "mean_cost_ms": 13.1},
                  "after": {"map50_95": 13.93, "mean_cost_ms": 25.75},
                  "gate": {"promote": False, "reasons": ["interval does not exclude 0"], "new_data_difference": 0.0,
                           "new_data_difference_ci": [-0.5, 0.25], "cost_ratio": 1.0, "original_loss": -8.75,
                           "matched_cost": {"budget_ms": 13.0, "trained_weight": 0.25173, "weight": 0.4107}}}},
                          "fog": {**summary, "retraining": {"skipped": "not detected: the node records no evidence"}}}}
    text = markdown(result)
    assert ("| night | 210 | 11.5 / 13.9 | 13.1 / 25.8 | 0.2517 -> 0.4107 | +0.00 [-0.50, +0.25], x1.00, -8.75 | keep "
            "the current policy: interval does not exclude 0 |") in text
    assert "| fog | - | - | - | - | - | not detected: the node records no evidence |" in text


def test_fog_lifts_the_veil_past_its_threshold_and_is_drift_within_150_frames(tmp_path):
    """The shipped policy's reference on the drift report's first fog stream (1 new in-distribution sequence, then
    1 of fog): the veil statistic stays under its threshold before the change and crosses it after."""
    report = tmp_path / "drift.json"
    run = subprocess.run(["adaptive-perception", "bench", "drift", "--in-sequences", "1", "--drift-sequences", "1",
                          "--preset", "fog", "--no-retrain", "--report", str(report)], capture_output=True, text=True,
                         timeout=900)
    assert run.returncode in (0, 1), run.stderr[-3000:]
    fog = json.loads(report.read_text())["presets"]["fog"]
    assert fog["false_alarms"] == 0 and fog["peak_ratio_before_change"]["veil"] < 1.0
    assert fog["peak_ratio_after_change"]["veil"] > 1.5  # measured: 1.91 (before the change: -0.25)
    assert fog["detection_delay_frames"] is not None and fog["detection_delay_frames"] <= 150  # measured: 98
