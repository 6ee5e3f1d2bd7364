"""`adaptive-perception models export` works offline on architecture yamls and refuses to download."""
from __future__ import annotations

import subprocess

from adaptive_perception.detector import DetectorTier


def test_export_from_architecture_yaml_gives_a_loadable_rectangular_tier(tmp_path):
    out = tmp_path / "small.onnx"
    run = subprocess.run(["adaptive-perception", "models", "export", "--weights", "yolov8n.yaml", "--imgsz", "320", "416",
                          "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    detector = DetectorTier(out)
    assert detector.info.input_size == (320, 416) and len(detector.class_names) == 80
    assert detector.info.num_anchors == (40 * 52 + 20 * 26 + 10 * 13)


def test_export_of_missing_weights_offline_says_what_to_do(tmp_path):
    run = subprocess.run(["adaptive-perception", "models", "export", "--weights", "yolov8l.pt", "--out",
                          str(tmp_path / "l.onnx")], capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "yolov8l.pt" in run.stderr and "connected machine" in run.stderr
    assert not (tmp_path / "l.onnx").exists()
