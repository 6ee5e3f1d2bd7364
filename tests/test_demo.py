"""The README's demo command runs end to end and reports what came out."""
from __future__ import annotations

import json
import subprocess


def test_demo_replays_every_frame_through_a_node_process(tmp_path):
    out = subprocess.run(["adaptive-perception", "demo", "--frames", "12", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["frames_published"] == summary["outputs_received"] == 12 and summary["timeouts"] == 0
    assert summary["node_inference_p50_ms"] > 0 and summary["latency_p50_ms"] >= summary["node_total_p50_ms"]
    assert "| Detection2DArray out   | 12  (timeouts: 0) |" in out.stdout
    assert (tmp_path / "demo_bag" / "metadata.yaml").exists()
    assert "tier nano" in (tmp_path / "node.log").read_text()
