"""`adaptive-perception models quantize`: the embedded tiers in 8 bits, calibrated on a real rosbag2 recording of
generated scenes, find what the float tiers find on a frame they were not calibrated on."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import onnx
import pytest

from adaptive_perception.audit import agreement
from adaptive_perception.bag import write_image_bag
from adaptive_perception.cli import main
from adaptive_perception.config import resolve_model
from adaptive_perception.detector import DetectorTier
from adaptive_perception.training.quantize import QUANTIZED_KEY


@pytest.fixture(scope="module")
def camera_bag(tmp_path_factory):
    """60 frames of a generated sequence (another seed than the demo's, whose frames the checks below use)."""
    from adaptive_perception.scenes.sequence import SequenceSpec, render_sequence

    path = tmp_path_factory.mktemp("quantize") / "camera"
    write_image_bag(path, ((f.index * 33_333_333, f.rgb) for f in render_sequence(SequenceSpec(7, 3, 60))))
    return path


def _names(model: onnx.ModelProto) -> dict:
    return ast.literal_eval(next(p.value for p in model.metadata_props if p.key == "names"))


def test_quantized_tiers_from_a_bag_are_8_bit_and_find_what_the_float_tiers_find(camera_bag, regime_frames, tmp_path,
                                                                                capsys):
    out = tmp_path / "int8"
    assert main(["models", "quantize", "--model", "nano=embedded:nano", "--model", "large=embedded:large",
                 "--bag", str(camera_bag), "--frames", "12", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "12 calibration frames, 10 check frames" in printed
    assert "| nano |" in printed and "| large |" in printed
    assert sorted(p.name for p in out.iterdir()) == ["large.onnx", "nano.onnx"]  # only the tiers asked for
    for tier, size in (("nano", (192, 256)), ("large", (480, 640))):
        source = resolve_model(f"embedded:{tier}")
        model = onnx.load(str(out / f"{tier}.onnx"))
        ops = [n.op_type for n in model.graph.node]
        weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
        assert ops.count("QuantizeLinear") > 50 and len(weights) >= 60  # every convolution's weights in 8 bits
        assert (out / f"{tier}.onnx").stat().st_size < 0.35 * Path(source).stat().st_size
        meta = {p.key: p.value for p in model.metadata_props}
        assert "12 calibration frames" in meta[QUANTIZED_KEY] and f"from {tier}.onnx" in meta[QUANTIZED_KEY]
        assert _names(model) == _names(onnx.load(source))
        # scores down to 0.1 (the node publishes from 0.25): more boxes, so one near the threshold does not decide
        float_tier, int8_tier = (DetectorTier(p, conf_threshold=0.1) for p in (source, out / f"{tier}.onnx"))
        assert int8_tier.info.input_size == size  # each tier quantized from its own file
        found, reference = int8_tier.detect(regime_frames["dense"]), float_tier.detect(regime_frames["dense"])
        # a head quantized with one scale for pixels and scores finds nothing at all; this one agrees box for box
        assert len(reference) >= 8 and agreement(found, reference) >= 0.8
        assert np.abs(np.sort(found.scores)[-3:] - np.sort(reference.scores)[-3:]).max() < 0.1


def test_two_tiers_that_find_nothing_are_not_reported_as_agreeing():
    """The check read "detections agree (F1) 1.00" for two random-weight models that found nothing on any frame."""
    from adaptive_perception.training.quantize import Quantized, table

    def row(agreement: float, compared: int, checked: int) -> Quantized:
        return Quantized("nano", Path("a.onnx"), Path("b.onnx"), 12.0, 3.5, 8.0, 4.0, agreement, compared, checked)

    printed = table([row(float("nan"), 0, 10), row(0.9, 7, 10), row(float("nan"), 0, 0)]).splitlines()
    assert printed[2].endswith("| - (neither found anything on the 10 check frames: nothing to compare) |")
    assert printed[3].endswith("| 0.90 on the 7 of 10 check frames with detections |")
    assert printed[4].endswith("| - (no frame left to check on) |")


def test_quantize_says_what_is_wrong_with_its_inputs(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["models", "quantize", "--images", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert f"--images '{empty}' holds no" in capsys.readouterr().err
    (empty / "frame.jpg").write_bytes(b"not a jpeg")
    assert main(["models", "quantize", "--images", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "frame.jpg' is not a readable image" in capsys.readouterr().err
    assert main(["models", "quantize", "--images", str(empty), "--topic", "/c", "--out", str(tmp_path / "o")]) == 2
    assert "--topic picks a bag's image topic; give --bag too" in capsys.readouterr().err
    assert main(["models", "quantize", "--model", "tiny=x.onnx", "--images", str(empty), "--out", "o"]) == 2
    assert "--model 'tiny=x.onnx' must look like nano=PATH" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_graph_that_is_not_an_ultralytics_export_is_refused_naming_it(tmp_path, regime_frames):
    from adaptive_perception.errors import AdaptivePerceptionError
    from adaptive_perception.training.quantize import quantize_model

    source = tmp_path / "renamed.onnx"
    model = onnx.load(resolve_model("embedded:nano"))
    for index, node in enumerate(model.graph.node):
        node.name = f"node{index}"
    onnx.save(model, str(source))
    with pytest.raises(AdaptivePerceptionError, match="renamed.onnx' does not name its nodes as an Ultralytics"):
        quantize_model(source, tmp_path / "out.onnx", [regime_frames["dense"]])
    assert not (tmp_path / "out.onnx").exists()


def test_quantize_never_writes_over_its_source_an_existing_tier_or_a_quantized_one(camera_bag, tmp_path, capsys):
    """`--out` the sources' own folder replaced the float tier with the 8-bit one (and compared the file with
    itself: F1 1.00); an existing <tier>.onnx was replaced without a word (the README's two examples wrote the same
    folder); an 8-bit tier given as a source kept onnxruntime's quantizer busy for ever; `--out x.onnx` made a
    folder of that name. Each is refused before a frame is read, naming the fix."""
    import shutil

    own = tmp_path / "models"
    own.mkdir()
    shutil.copy(resolve_model("embedded:nano"), own / "nano.onnx")
    before = (own / "nano.onnx").read_bytes()
    bag = ["--bag", str(camera_bag), "--frames", "4"]
    assert main(["models", "quantize", "--model", f"nano={own / 'nano.onnx'}", *bag, "--out", str(own)]) == 2
    assert f"--out {own} would write the 8-bit nano over its source '{own / 'nano.onnx'}'" in capsys.readouterr().err
    assert main(["models", "quantize", "--model", f"nano={own / 'nano.onnx'}", *bag, "--out", str(own),
                 "--replace"]) == 2
    assert (own / "nano.onnx").read_bytes() == before
    out = tmp_path / "int8"
    assert main(["models", "quantize", "--model", "nano=embedded:nano", *bag, "--out", str(out)]) == 0
    written = (out / "nano.onnx").stat().st_mtime_ns
    assert main(["models", "quantize", "--model", "nano=embedded:nano", *bag, "--out", str(out)]) == 2
    assert f"--out {out} already holds nano.onnx; give another folder, or --replace" in capsys.readouterr().err
    assert (out / "nano.onnx").stat().st_mtime_ns == written
    assert main(["models", "quantize", "--model", f"nano={out / 'nano.onnx'}", *bag, "--out", str(tmp_path / "q")]) == 2
    assert f"'{out / 'nano.onnx'}' is already an 8-bit tier (int8 QDQ" in capsys.readouterr().err
    assert main(["models", "quantize", "--model", "nano=embedded:nano", *bag, "--out", str(tmp_path / "n.onnx")]) == 2
    assert "give the folder the tiers go in (<tier>.onnx each), not a file" in capsys.readouterr().err
    assert not (tmp_path / "q").exists() and not (tmp_path / "n.onnx").exists()
    assert main(["models", "quantize", "--model", "nano=embedded:nano", *bag, "--out", str(out), "--replace"]) == 0
    assert (out / "nano.onnx").stat().st_mtime_ns != written


def test_quantize_calibrates_on_a_folder_of_recordings_as_training_reads_them(camera_bag, tmp_path, capsys):
    """`record`'s output folder (recording_0001, ...), which `train --source bags` takes, was refused."""
    import shutil

    folder = tmp_path / "rec"
    for name in ("recording_0001", "recording_0002"):
        shutil.copytree(camera_bag, folder / name)
    assert main(["models", "quantize", "--model", "nano=embedded:nano", "--bag", str(folder), "--frames", "80",
                 "--out", str(tmp_path / "int8")]) == 0
    # 120 frames in the two recordings: 60 to calibrate on (fewer than asked, and said), 10 to check on
    assert f"60 calibration frames (of --frames 80: {folder} holds 120), 10 check frames" in capsys.readouterr().out
