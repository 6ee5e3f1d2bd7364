"""The README's demo command runs end to end on the embedded tiers and reports what came out."""
from __future__ import annotations

import json
import subprocess


def test_demo_replays_every_frame_through_a_node_process_per_tier(tmp_path):
    out = subprocess.run(["adaptive-perception", "demo", "--frames", "15", "--out", str(tmp_path), "--tiers", "nano,large"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["tiers"]) == {"nano", "large"}
    for tier, row in summary["tiers"].items():
        assert row["frames_published"] == row["outputs_received"] == 15 and row["timeouts"] == 0
        assert row["inference_p50_ms"] > 0 and row["latency_p50_ms"] >= row["total_p50_ms"]
        assert f"| {tier} | 15 / 15 |" in out.stdout
        assert "tier " + tier in (tmp_path / f"node_{tier}.log").read_text()
    assert summary["tiers"]["large"]["inference_p50_ms"] > summary["tiers"]["nano"]["inference_p50_ms"]
    assert (tmp_path / "demo_bag" / "metadata.yaml").exists()
