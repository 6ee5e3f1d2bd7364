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


def test_export_into_a_folder_writes_and_names_the_file_inside_it(tmp_path):
    """`--out DIR` moved the ONNX into DIR but printed DIR, not the file a tier's parameter must name."""
    run = subprocess.run(["adaptive-perception", "models", "export", "--weights", "yolov8n.yaml", "--imgsz", "192",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    written = tmp_path / "yolov8n.onnx"
    assert f"wrote {written}\n" in run.stdout
    # Ultralytics' own report named the temporary folder it exported into, and `yolo predict` lines
    assert "Results saved to" not in run.stdout + run.stderr and "netron" not in run.stdout + run.stderr
    assert DetectorTier(written).info.input_size == (192, 192)


def test_export_of_an_onnx_file_says_it_is_a_tier_already(tmp_path):
    """A non-.pt --weights reached Ultralytics, which failed with a TypeError traceback."""
    run = subprocess.run(["adaptive-perception", "models", "export", "--weights", "nano.onnx", "--out",
                          str(tmp_path / "n.onnx")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "--weights 'nano.onnx': use an Ultralytics .pt checkpoint or a model yaml" in run.stderr
    assert "point models.<tier> at it" in run.stderr


def test_export_of_a_segmentation_or_pose_model_is_refused_before_writing_what_the_node_refuses(tmp_path):
    for weights, task in (("yolov8n-seg.yaml", "segment"), ("yolov8n-pose.yaml", "pose")):
        run = subprocess.run(["adaptive-perception", "models", "export", "--weights", weights, "--imgsz", "192",
                              "--out", str(tmp_path / "m.onnx")], capture_output=True, text=True, timeout=300)
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-2000:]
        assert f"--weights '{weights}' is a {task} model; the node runs detection models only" in run.stderr
        assert not (tmp_path / "m.onnx").exists()


def test_train_tiers_offers_exactly_the_networks_the_trainer_knows(capsys):
    """The --network choices are spelled out in the CLI (building the parser must not import the trainer); a
    network added to or removed from `tiers.NETWORKS` without the CLI would be refused or crash there."""
    import re

    import pytest

    from adaptive_perception.cli import main
    from adaptive_perception.training.tiers import NETWORKS

    with pytest.raises(SystemExit):
        main(["models", "train-tiers", "--network", "no-such-network"])
    offered = re.search(r"invalid choice: '?no-such-network'? \(choose from (.*)\)", capsys.readouterr().err).group(1)
    assert sorted(choice.strip().strip("'") for choice in offered.split(",")) == sorted(NETWORKS)
