"""The README's demo command runs end to end on the embedded tiers and policy and reports what came out."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
from mlflow.tracking import MlflowClient

from adaptive_perception.drawing import TIER_COLOURS

from adaptive_perception.config import resolve_model
from adaptive_perception.policy import Policy
from adaptive_perception.router import weighted_mode

ROOT = Path(__file__).resolve().parents[1]


def test_demo_replays_a_benchmark_sequence_through_a_node_process_per_mode(tmp_path):
    out = subprocess.run(["adaptive-perception", "demo", "--frames", "15", "--out", str(tmp_path),
                          "--modes", "fixed:large,learned,learned:50,fixed:nano"], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["modes"]) == {"learned", "learned:50", "fixed:large", "fixed:nano"}
    # learned:<w> reaches the node as routing.cost_weight: at 50 every larger tier's cost outweighs its value, so
    # the same policy that sends some of these frames to small or large at its default weight sends all to nano
    tiers_chosen = {mode: {t for counts in summary["modes"][mode]["routing_by_regime"].values() for t, n in counts.items()
                           if n} for mode in ("learned", "learned:50")}
    assert tiers_chosen["learned:50"] == {"nano"} and tiers_chosen["learned"] - {"nano"}, tiers_chosen
    assert "learned:50 against always-large on the same 15 frames" in out.stdout
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
    # the store exists before the first node starts: creating its tables slowed that mode's first frames 2-3x
    assert not any("Creating initial MLflow database tables" in (tmp_path / f"node_{m.replace(':', '_')}.log").read_text()
                   for m in summary["modes"])
    assert (tmp_path / "demo_bag" / "metadata.yaml").exists() and (tmp_path / "demo_bag" / "ground_truth.json").exists()
    # the pictures: a strip of routed frames (3 tiles of 320x240 a row) whose banners carry the chosen tier's colour
    strip = cv2.imread(str(tmp_path / "routed_strip.png"))[:, :, ::-1]
    assert strip.shape[1] == 960 and strip.shape[0] in (240, 480)
    banners = [np.median(strip[y + 2:y + 9, x + 200:x + 315].reshape(-1, 3), 0)
               for y in range(0, strip.shape[0], 240) for x in (0, 320, 640) if strip[y:y + 240, x:x + 320].any()]
    shown = [min(TIER_COLOURS, key=lambda t: np.abs(b - 0.65 * np.array(TIER_COLOURS[t])).sum()) for b in banners]
    assert shown == summary["strip_tiers"] and len(shown) >= 2
    assert cv2.imread(str(tmp_path / "node_time.png")) is not None
    # one MLflow run per mode, ended, with the node's own count of the frames it processed
    client = MlflowClient(summary["mlflow"])
    runs = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    assert sorted(r.data.params["routing_mode"] for r in runs) == sorted(weighted_mode(m)[0] for m in summary["modes"])
    assert [r.data.params["routing_mode"] for r in runs if r.data.params["routing.cost_weight"] == "50.0"] == ["learned"]
    assert all(r.info.status == "FINISHED" and r.data.metrics["final.camera_image_raw.frames_processed"] == 15 for r in runs)


def test_demo_rejects_unknown_modes_and_sequences(tmp_path):
    bad_mode = subprocess.run(["adaptive-perception", "demo", "--modes", "learned,turbo", "--out", str(tmp_path)],
                              capture_output=True, text=True, timeout=120)
    assert bad_mode.returncode == 2 and "turbo" in bad_mode.stderr and "fixed:large" in bad_mode.stderr
    for weight in ("abc", "-1", "inf"):
        bad_weight = subprocess.run(["adaptive-perception", "demo", "--modes", f"learned:{weight}", "--out",
                                     str(tmp_path)], capture_output=True, text=True, timeout=120)
        assert bad_weight.returncode == 2, bad_weight.stderr
        assert f"mode 'learned:{weight}': the cost weight after learned: must be a finite number >= 0" in bad_weight.stderr
    bad_sequence = subprocess.run(["adaptive-perception", "demo", "--sequence", "3", "--frames", "2", "--out",
                                   str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert bad_sequence.returncode == 2 and "--sequence 3 is not a test sequence" in bad_sequence.stderr


def test_the_demo_shows_the_policy_at_the_routing_reports_per_frame_operating_point():
    """The demo's second learned row is the weight the routing report calibrated on validation for the embedded
    policy (seed 0's BC + PPO, 40 % of always-large's cost): a retrained policy with a stale weight fails here."""
    from adaptive_perception.ros.demo import DEMO_MODES, PER_FRAME_WEIGHT

    report = json.loads((ROOT / "training" / "reports" / "routing.json").read_text())
    assert report["policies"]["ppo"][0] == Policy(resolve_model("embedded:policy")).policy_id
    calibrated = report["settings"]["per_frame"]["BC + PPO"]["cost_weights"][0]
    assert round(calibrated, 6) == PER_FRAME_WEIGHT and f"learned:{PER_FRAME_WEIGHT}" in DEMO_MODES
