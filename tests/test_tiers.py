"""The embedded tiers: load through the runtime, find objects, and the evaluation scores what it should."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from adaptive_perception.config import EMBEDDED_DIR
from adaptive_perception.detector import TIERS, DetectorTier
from adaptive_perception.ros.demo import recall_at_50
from adaptive_perception.scenes.render import CLASSES
from adaptive_perception.scenes.sequence import Regime, SequenceSpec, render_sequence

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dense_frames():
    """Dense frames of the tiers' world (generator 2.0.0) from a sequence that is not in the benchmark (seed 31337)."""
    frames = [f for f in render_sequence(SequenceSpec(31337, 0, 150, version="2.0.0")) if f.regime is Regime.DENSE]
    assert len(frames) >= 10
    return frames[::max(len(frames) // 8, 1)][:8]


def test_embedded_tiers_load_with_benchmark_classes_and_rising_input_size():
    sizes = []
    for tier in TIERS:
        detector = DetectorTier(EMBEDDED_DIR / f"{tier}.onnx")
        assert detector.class_names == CLASSES
        sizes.append(detector.info.input_size[0] * detector.info.input_size[1])
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    total = sum((EMBEDDED_DIR / f"{t}.onnx").stat().st_size for t in TIERS)
    assert total < 80 * 2**20  # the tier bar files_le_80_mb


def test_the_large_tier_is_the_wider_network_and_nano_and_small_share_one():
    """nano and small are `base` (3.0 M weights) at two input sizes; large is `wide` (6.4 M): exporting base for
    every tier, or wide for nano, fails here."""
    from adaptive_perception.training.tiers import _parameters

    million = {t: _parameters(EMBEDDED_DIR / f"{t}.onnx") for t in TIERS}
    assert million["nano"] == pytest.approx(3.0, abs=0.1) and million["small"] == pytest.approx(3.0, abs=0.1)
    assert million["large"] == pytest.approx(6.4, abs=0.1)


def test_export_tiers_takes_one_checkpoint_per_tier_and_names_a_missing_one(tmp_path, monkeypatch):
    from adaptive_perception.errors import AdaptivePerceptionError
    from adaptive_perception.training.tiers import EMBEDDED_WEIGHTS, _parameters, export_tiers

    weights = {tier: ROOT / path for tier, (_, path) in EMBEDDED_WEIGHTS.items()}
    sizes = {"nano": (64, 96), "large": (96, 128)}
    out = export_tiers(weights, tmp_path, sizes)
    assert [DetectorTier(out[t]).info.input_size for t in sizes] == [(64, 96), (96, 128)]
    assert _parameters(out["large"]) > 2 * _parameters(out["nano"])
    monkeypatch.chdir(ROOT)  # None: the embedded tiers' committed checkpoints, paths relative to the checkout
    default = export_tiers(None, tmp_path / "embedded", sizes)
    assert [_parameters(default[t]) for t in sizes] == [_parameters(out[t]) for t in sizes]
    with pytest.raises(AdaptivePerceptionError, match=r"tier\(s\) large: large '.*absent.pt'"):
        export_tiers({**weights, "large": tmp_path / "absent.pt"}, tmp_path, sizes)


def test_the_model_card_names_each_tiers_network_and_its_recipe(tmp_path):
    from adaptive_perception.training.tiers import EMBEDDED_WEIGHTS, write_model_card

    report = json.loads((ROOT / "training" / "reports" / "tiers.json").read_text())
    for tier in TIERS:
        (tmp_path / f"{tier}.onnx").symlink_to(EMBEDDED_DIR / f"{tier}.onnx")
    sources = {tier: (network, ROOT / path) for tier, (network, path) in EMBEDDED_WEIGHTS.items()}
    card = write_model_card(report, ROOT / "training" / "benchmark" / "v2" / "manifest.json",
                            tmp_path / "MODEL_CARD.md", sources).read_text()
    assert "nano (192x256) and small (320x416): `base`" in card
    assert "large (480x640): `wide`, YOLOv8's architecture at depth 0.33 and width 0.375\n(6.4 M parameters), " \
           "started from `base` widened" in card
    assert "`wide`: AdamW optimiser at lr0 0.0005, mosaic\n0.0, batch 16, 15 epochs" in card


def test_large_tier_finds_far_more_objects_than_nano_on_dense_frames(dense_frames):
    recall = {}
    for tier in ("nano", "large"):
        detector = DetectorTier(EMBEDDED_DIR / f"{tier}.onnx", conf_threshold=0.25)
        found = total = 0
        for frame in dense_frames:
            hit, count = recall_at_50([t.box for t in frame.valid], detector.detect(frame.rgb).boxes)
            found, total = found + hit, total + count
        recall[tier] = found / total
    # at the node's 0.25 score threshold on these 8 frames: large (wide) 0.46, nano 0.30; base as large found 0.5+
    # here, with the same dense mAP50 over the test split (models evaluate: wide 56.8, base 56.5, nano 16.2)
    assert recall["large"] >= 0.4, recall
    assert recall["large"] >= 1.4 * recall["nano"], recall


def test_model_card_names_the_frozen_benchmark():
    card = (EMBEDDED_DIR / "MODEL_CARD.md").read_text()
    manifest = json.loads((ROOT / "training" / "benchmark" / "v2" / "manifest.json").read_text())
    assert manifest["content_hash"]["test"][:16] in card
    assert "AGPL-3.0" in card


def test_coco_evaluation_gives_100_for_ground_truth_and_less_for_shifted_boxes(tmp_path):
    from adaptive_perception.scenes import benchmark
    from adaptive_perception.training.tiers import _coco_eval

    records = [{"file": "a.jpg", "sequence": 0, "frame": i, "stamp_ns": i, "regime": "sparse", "in_dataset": True,
                "objects": [{"id": 0, "class_id": 1, "box": [10 + i, 20, 60 + i, 90], "visible": 1.0, "ignore": False},
                            {"id": 1, "class_id": 2, "box": [200, 200, 204, 203], "visible": 1.0, "ignore": True}]}
               for i in range(4)]
    gt = benchmark.coco_ground_truth(records)
    ids = [im["id"] for im in gt["images"]]
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
               for a in gt["annotations"] if not a["iscrowd"]]
    assert _coco_eval(gt, perfect, ids) == pytest.approx((100.0, 100.0))
    # a detection on an ignore region is neither a hit nor a false positive
    on_ignore = perfect + [{"image_id": 0, "category_id": 2, "bbox": [200, 200, 4, 3], "score": 0.95}]
    assert _coco_eval(gt, on_ignore, ids) == pytest.approx((100.0, 100.0))
    # 50x70 boxes 12 px to the side: IoU (38 * 70) / (2 * 3500 - 2660) = 2660 / 4340 = 0.613, a hit at the IoU
    # thresholds 0.50, 0.55 and 0.60 only: 3 of the 10 at AP 100
    shifted = [dict(d, bbox=[d["bbox"][0] + 12, *d["bbox"][1:]]) for d in perfect]
    map50_95, map50 = _coco_eval(gt, shifted, ids)
    assert map50 == pytest.approx(100.0) and map50_95 == pytest.approx(30.0)
    assert _coco_eval(gt, [], ids) == (0.0, 0.0)


def test_map50_by_object_size_scores_each_band_on_its_own_objects():
    from adaptive_perception.scenes import benchmark
    from adaptive_perception.training.tiers import size_band_map50

    sides = [20, 50, 100, 200]  # one object in each band: < 32, 32-64, 64-128, >= 128 px
    records = [{"file": "a.jpg", "sequence": 0, "frame": 0, "stamp_ns": 0, "regime": "sparse", "in_dataset": True,
                "objects": [{"id": i, "class_id": 1, "box": [10 + 210 * (i % 3), 10 + 220 * (i // 3),
                                                              10 + 210 * (i % 3) + side, 10 + 220 * (i // 3) + side],
                             "visible": 1.0, "ignore": False} for i, side in enumerate(sides)]}]
    gt = benchmark.coco_ground_truth(records)
    by_side = {round(a["bbox"][2]): a for a in gt["annotations"]}
    found = [{"image_id": 0, "category_id": 1, "bbox": by_side[side]["bbox"], "score": 0.9} for side in (50, 200)]
    # a higher-scoring false positive of side 150 counts against the >= 128 band only: precision 1/2 at full recall
    false_positive = {"image_id": 0, "category_id": 1, "bbox": [430, 240, 150, 150], "score": 0.95}
    bands = size_band_map50(gt, found + [false_positive])
    assert bands == pytest.approx({"side_lt_32": 0.0, "side_32_64": 100.0, "side_64_128": 0.0, "side_ge_128": 50.0})
    assert size_band_map50(gt, []) == {band: 0.0 for band in bands}


def test_ultralytics_settings_live_in_the_users_cache_not_a_shared_tmp_folder(tmp_path, monkeypatch):
    import os

    from adaptive_perception.training.yolo import _offline_ultralytics

    monkeypatch.delenv("YOLO_CONFIG_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    _offline_ultralytics()
    assert os.environ["YOLO_CONFIG_DIR"] == str(tmp_path / "home" / ".cache" / "adaptive_perception" / "ultralytics")
    monkeypatch.delenv("YOLO_CONFIG_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    _offline_ultralytics()
    assert os.environ["YOLO_CONFIG_DIR"] == str(tmp_path / "xdg" / "adaptive_perception" / "ultralytics")
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "own"))  # the user's own choice is kept
    _offline_ultralytics()
    assert os.environ["YOLO_CONFIG_DIR"] == str(tmp_path / "own")


def test_ultralytics_writes_one_plain_line_per_progress_bar_into_a_log(capsys):
    """Tier training runs for hours into a log file: Ultralytics' bars redrew there every 0.1 s with a carriage
    return and an escape code, and its log lines carried colour codes. Redirected (pytest captures stdout), a bar
    writes one line when it closes and log lines are plain."""
    import io
    import logging

    from adaptive_perception.training.yolo import _offline_ultralytics

    _offline_ultralytics()
    from ultralytics.utils import LOGGER, colorstr
    from ultralytics.utils.tqdm import TQDM

    capsys.readouterr()
    for _ in TQDM(range(200), desc="epoch 1/15", mininterval=0.0):
        pass
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out
    lines = out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("epoch 1/15: 100%") and "200/200" in lines[0]
    log = io.StringIO()  # Ultralytics' own handler holds the stdout of its import; the filter acts before any handler
    handler = logging.StreamHandler(log)
    LOGGER.addHandler(handler)
    try:
        LOGGER.warning(f"{colorstr('train:')} 120 crops")
    finally:
        LOGGER.removeHandler(handler)
    assert log.getvalue().endswith(" train: 120 crops\n") and "\x1b" not in log.getvalue()
