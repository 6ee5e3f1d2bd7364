"""The README's demo command runs end to end on the embedded tiers and policy and reports what came out."""
from __future__ import annotations

import json
import subprocess

from adaptive_perception.config import resolve_model
from adaptive_perception.policy import Policy


def test_demo_replays_a_benchmark_sequence_through_a_node_process_per_mode(tmp_path):
    out = subprocess.run(["adaptive-perception", "demo", "--frames", "15", "--out", str(tmp_path),
                          "--modes", "fixed:large,learned,fixed:nano"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["modes"]) == {"learned", "fixed:large", "fixed:nano"}
    assert sum(summary["regime_frames"].values()) == 15
    for mode, row in summary["modes"].items():
        assert row["frames_published"] == row["outputs_received"] == row["decisions"] == 15 and row["timeouts"] == 0
        assert row["inference_mean_ms"] > 0 and row["total_mean_ms"] > row["inference_mean_ms"]
        assert sum(sum(counts.values()) for counts in row["routing_by_regime"].values()) == 15
        assert f"| {mode} | 15 / 15 |" in out.stdout
    # the throughput column ranks the modes as their node times do, whatever order they ran in
    nano, slow = summary["modes"]["fixed:nano"], summary["modes"]["fixed:large"]
    assert nano["total_mean_ms"] * 1.5 < slow["total_mean_ms"] and nano["steady_fps"] > slow["steady_fps"], (nano, slow)
    large = summary["modes"]["fixed:large"]["routing_by_regime"]
    assert all(counts["nano"] == counts["small"] == 0 for counts in large.values())
    learned = summary["modes"]["learned"]
    assert learned["policy_id"] == Policy(resolve_model("embedded:policy")).policy_id
    assert "Routing by scene complexity, mode learned" in out.stdout
    assert "learned against always-large on the same 15 frames" in out.stdout
    assert "policy '" + learned["policy_id"] in (tmp_path / "node_learned.log").read_text()
    assert (tmp_path / "demo_bag" / "metadata.yaml").exists() and (tmp_path / "demo_bag" / "ground_truth.json").exists()


def test_demo_rejects_unknown_modes_and_sequences(tmp_path):
    bad_mode = subprocess.run(["adaptive-perception", "demo", "--modes", "learned,turbo", "--out", str(tmp_path)],
                              capture_output=True, text=True, timeout=120)
    assert bad_mode.returncode == 2 and "turbo" in bad_mode.stderr and "fixed:large" in bad_mode.stderr
    bad_sequence = subprocess.run(["adaptive-perception", "demo", "--sequence", "3", "--frames", "2", "--out",
                                   str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert bad_sequence.returncode == 2 and "--sequence 3 is not a test sequence" in bad_sequence.stderr
