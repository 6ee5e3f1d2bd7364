"""Tier family 2: training crops at the tiers' scales and the plateau rule (no training here: hand-made inputs)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from adaptive_perception.training.crops import PAD_VALUE, CropPlan, crop_labels, cut, near_focus
from adaptive_perception.training.tiers import plateau


def test_crop_labels_scale_clip_and_drop_boxes_cut_by_the_window():
    boxes = np.array([[100.0, 100.0, 200.0, 150.0],   # scale 0.5 -> (50, 50, 100, 75)
                      [300.0, 20.0, 340.0, 60.0],     # -> (150, 10, 170, 30): 20 px wide, half outside x >= 160
                      [600.0, 400.0, 640.0, 480.0]])  # -> (300, 200, 320, 240): wholly outside the window
    classes = np.array([3, 1, 4])
    kept, kept_classes = crop_labels(boxes, classes, 0.5, (60, 0, 160, 100))
    # box 0 keeps (100 - 60) / 50 = 80 % of its width: shifted by the window origin; box 1 keeps 50 %;
    # box 2 keeps nothing and is dropped
    np.testing.assert_allclose(kept, [[0.0, 50.0, 40.0, 75.0], [90.0, 10.0, 100.0, 30.0]])
    assert kept_classes.tolist() == [3, 1]
    sliver, _ = crop_labels(np.array([[0.0, 0.0, 100.0, 100.0]]), np.array([0]), 1.0, (75, 0, 375, 300))
    assert len(sliver) == 0  # 25 % of the box inside: below the 30 % rule


def test_cut_resizes_to_the_tier_scale_and_pads_small_frames():
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[:, 320:] = 200
    rng = np.random.default_rng(0)
    nano, window = cut(frame, 0.4, 320, rng)  # 256 x 192 < 320: whole frame, padded right and below
    assert window == (0, 0, 256, 192) and nano.shape == (320, 320, 3)
    assert (nano[:192, :120] == 0).all() and (nano[:192, 136:256] == 200).all()
    assert (nano[192:] == PAD_VALUE).all() and (nano[:, 256:] == PAD_VALUE).all()
    native, window = cut(frame, 1.0, 320, rng)  # large: a native-resolution window
    x0, y0, x1, y1 = window
    assert (x1 - x0, y1 - y0) == (320, 320) and 0 <= x0 <= 320 and 0 <= y0 <= 160
    np.testing.assert_array_equal(native, frame[y0:y1, x0:x1])


def test_near_object_windows_hold_the_largest_object_whole_at_the_native_scale_only():
    near = {"box": [300, 100, 520, 330], "class_id": 1}  # 220 x 230 px
    far = {"box": [20, 20, 60, 50], "class_id": 0}
    plan = CropPlan(scales=(0.4, 1.0), near_share=1.0)
    frame = np.zeros((480, 640, 3), np.uint8)
    for seed in range(20):
        rng = np.random.default_rng(seed)
        focus = near_focus([far, near], 1.0, plan, rng)
        np.testing.assert_array_equal(focus, [300, 100, 520, 330])
        _, (x0, y0, x1, y1) = cut(frame, 1.0, 320, rng, focus)
        # a window of 320 holding x 300-520 and y 100-330 starts at x 200-300 and y 10-100
        assert 200 <= x0 <= 300 and 10 <= y0 <= 100 and (x1 - x0, y1 - y0) == (320, 320)
        boxes, _ = crop_labels(np.array([near["box"]], float), np.array([1]), 1.0, (x0, y0, x1, y1))
        np.testing.assert_allclose(boxes, [[300 - x0, 100 - y0, 520 - x0, 330 - y0]])
    # a box wider than the window: the window is centred on it, (100 + 540 - 320) / 2 = 160
    _, window = cut(frame, 1.0, 320, np.random.default_rng(0), np.array([100.0, 150, 540, 250]))
    assert window[0] == 160 and 0 <= window[1] <= 150
    rng = np.random.default_rng(0)
    assert near_focus([near], 0.4, plan, rng) is None  # cheaper scales are cut as before
    assert near_focus([far], 1.0, plan, rng) is None  # 40 px: not near
    assert near_focus([near], 1.0, CropPlan(scales=(1.0,)), rng) is None  # the default plan
    # the default plan draws exactly what it drew before near windows existed
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    assert cut(frame, 1.0, 320, a, near_focus([near], 1.0, CropPlan(scales=(1.0,)), a))[1] == cut(frame, 1.0, 320, b)[1]


@pytest.mark.parametrize("curve, reached, gain", [
    (list(range(20)), False, 10.0),  # one point per epoch: far from a plateau
    # best 20.1 ten epochs ago, 20.5 now: +0.4
    ([10.0] * 3 + [20.0, 20.1] + [20.2, 20.1, 20.3, 20.4, 20.2, 20.1, 20.3, 20.4, 20.5, 20.4], True, 0.4),
    ([10.0] * 3 + [20.0] * 11 + [20.6], False, 0.6),  # the last epoch still adds 0.6
    ([1.0] * 10, False, None),  # ten epochs are not enough to tell
])
def test_plateau_is_less_than_half_a_point_over_ten_epochs(curve, reached, gain):
    check = plateau(np.array(curve, float))
    assert check["reached"] is reached
    assert check["gain_last_epochs"] == (None if gain is None else pytest.approx(gain))


def test_a_committed_checkpoint_is_compact_and_resumes_in_this_checkout(tmp_path):
    import torch

    from adaptive_perception.training.tiers import _relocate, compact_checkpoint

    moments = torch.tensor([1e-12, 3.0e-8, 0.5, 2.0])  # Adam's second moments can be tiny: bfloat16 keeps them
    ckpt = {"ema": None, "optimizer": {"state": {0: {"step": torch.tensor(7.0), "exp_avg_sq": moments.clone()}}},
            "train_args": {"data": "/elsewhere/data.yaml", "project": "/elsewhere", "name": "run",
                           "save_dir": "/elsewhere/run", "model": "/elsewhere/run/weights/last.pt"}}
    torch.save(ckpt, tmp_path / "last.pt")
    compact_checkpoint(tmp_path / "last.pt", tmp_path / "kept.pt")
    kept = torch.load(tmp_path / "kept.pt", weights_only=False)["optimizer"]["state"][0]
    assert kept["exp_avg_sq"].dtype == torch.bfloat16 and (kept["exp_avg_sq"] > 0).all()
    run, data = tmp_path / "home" / "run", tmp_path / "home" / "crops" / "data.yaml"
    _relocate(tmp_path / "kept.pt", run, data)
    resumed = torch.load(run / "weights" / "last.pt", weights_only=False)
    state = resumed["optimizer"]["state"][0]["exp_avg_sq"]
    assert state.dtype == torch.float32 and torch.allclose(state, moments, rtol=1e-2)
    assert resumed["train_args"]["data"] == str(data.resolve()) and resumed["train_args"]["save_dir"] == str(run.resolve())


def test_tier_bars_from_a_hand_made_report():
    from adaptive_perception.training.tiers import tier_bars

    def row(all95, sparse50, dense50, p50, mb):
        return {"map50_95_all": all95, "map50_sparse": sparse50, "map50_dense": dense50, "latency_p50_ms": p50,
                "file_mb": mb}
    # steps 3.5 and 2.9 points; nano 2.5 mAP50 behind on sparse, 10.4 on dense; latency 22.5 / 5 = 4.5; 81 MB
    tiers = {"nano": row(30.0, 70.0, 40.0, 5.0, 6.0), "small": row(33.5, 71.0, 45.0, 11.0, 20.0),
             "large": row(36.4, 72.5, 50.4, 22.5, 55.0)}
    bars = tier_bars(tiers)
    assert {k: (v["value"], v["met"]) for k, v in bars.items()} == {
        "large_map50_95_ge_35": (36.4, True), "small_ge_nano_plus_3": (3.5, True),
        "large_ge_small_plus_3": (2.9, False), "sparse_nano_within_3_map50_of_large": (2.5, True),
        "dense_large_ahead_of_nano_by_10_map50": (10.4, True), "latency_large_over_nano_ge_4_5": (4.5, True),
        "files_le_80_mb": (81.0, False)}
    tiers["large"].update(map50_95_all=34.9, map50_sparse=73.5, map50_dense=49.9, latency_p50_ms=22.0)
    tiers["large"]["file_mb"] = 54.0
    assert [k for k, v in tier_bars(tiers).items() if not v["met"]] == [
        "large_map50_95_ge_35", "large_ge_small_plus_3", "sparse_nano_within_3_map50_of_large",
        "dense_large_ahead_of_nano_by_10_map50", "latency_large_over_nano_ge_4_5"]


def test_the_model_card_warns_when_large_loses_near_objects_and_the_table_shows_every_size():
    from adaptive_perception.training.tiers import _near_note, report_table

    def row(*bands):
        return {"input_hw": [1, 1], "map50_95_all": 0.0, "map50_all": 0.0, "map50_sparse": 0.0, "map50_moderate": 0.0,
                "map50_dense": 0.0, "map50_95_dense": 0.0, "latency_p50_ms": 1.0, "latency_p95_ms": 1.0, "file_mb": 1.0,
                "map50_by_size": dict(zip(("side_lt_32", "side_32_64", "side_64_128", "side_ge_128"), bands))}
    report = {"tiers": {"nano": row(4.8, 46.1, 77.3, 57.5), "small": row(22.8, 80.0, 81.5, 51.0),
                        "large": row(50.0, 87.8, 79.2, 21.1)}}
    note = _near_note(report)
    assert "large tier scores 21.1 mAP50 against nano's 57.5 and small's\n51.0" in note
    assert "| large | 50.0 | 87.8 | 79.2 | 21.1 |" in report_table(report)
    report["tiers"]["large"]["map50_by_size"]["side_ge_128"] = 57.5  # large as good as nano there: no warning
    assert _near_note(report) == ""
    del report["tiers"]["small"]["map50_by_size"]  # a report written before the size bands
    assert _near_note(report) == "" and "objects >= 128 px" not in report_table(report)


def test_the_checkpoint_folder_keeps_best_without_its_optimizer_and_only_when_it_changed(tmp_path):
    import os

    import torch

    from adaptive_perception.training.tiers import _checkpoint_to

    run, keep = tmp_path / "run", tmp_path / "keep"
    (run / "weights").mkdir(parents=True)

    def checkpoint(path, weight):
        model = torch.nn.Linear(2, 1)
        torch.nn.init.constant_(model.weight, weight)
        torch.save({"model": model, "ema": None, "epoch": 3, "train_args": {},
                    "optimizer": {"state": {0: {"exp_avg_sq": torch.ones(4)}}}}, path)
    checkpoint(run / "weights" / "last.pt", 1.0)
    checkpoint(run / "weights" / "best.pt", 2.0)
    _checkpoint_to(run, keep)
    best = torch.load(keep / "best.pt", weights_only=False)
    assert best["optimizer"] is None and float(best["model"].weight[0, 0]) == 2.0
    assert torch.load(keep / "last.pt", weights_only=False)["optimizer"] is not None
    checkpoint(run / "weights" / "best.pt", 5.0)  # an older best (e.g. restored at resume) leaves the kept one
    os.utime(run / "weights" / "best.pt", (0, 0))
    _checkpoint_to(run, keep)
    assert float(torch.load(keep / "best.pt", weights_only=False)["model"].weight[0, 0]) == 2.0
    checkpoint(run / "weights" / "best.pt", 7.0)  # an improved epoch rewrites it
    os.utime(run / "weights" / "best.pt", (time_now := (keep / "best.pt").stat().st_mtime + 10, time_now))
    _checkpoint_to(run, keep)
    assert float(torch.load(keep / "best.pt", weights_only=False)["model"].weight[0, 0]) == 7.0


def test_compare_scores_each_candidate_at_its_own_size_on_the_chosen_split(tmp_path):
    """Two committed checkpoints at different sizes on a tiny generator-2.0.0 validation split: the trained base
    network at large's size must find far more than the narrow one at nano's size, and run slower."""
    import json
    import subprocess
    from dataclasses import replace

    from adaptive_perception.scenes import benchmark

    benchmark.generate(replace(benchmark.PRESETS["tiny"], version="2.0.0"), tmp_path / "bench", workers=1)
    run = subprocess.run(["adaptive-perception", "models", "compare", "--benchmark", str(tmp_path / "bench"),
                          "--candidate", "base-large=training/checkpoints/tiers-v2/base/last.pt@480x640",
                          "--candidate", "narrow-nano=training/checkpoints/tiers-v2/narrow/best.pt@192x256",
                          "--report", str(tmp_path / "candidates.json")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "candidates.json").read_text())
    large, nano = report["candidates"]["base-large"], report["candidates"]["narrow-nano"]
    assert report["split"] == "val" and report["frames"] == 30
    assert (large["input_hw"], nano["input_hw"]) == ([480, 640], [192, 256])
    assert large["map50_all"] > 30 and large["map50_all"] > nano["map50_all"] + 10, (large, nano)
    assert large["latency_p50_ms"] > 2 * nano["latency_p50_ms"]
    assert "base-large 480x640: mAP50-95" in run.stdout
    # small objects need pixels: the native input finds far more of those under 32 px a side than nano's
    # by object size: a band is scored where the split has objects of that size, and only there
    from adaptive_perception.training.tiers import SIZE_BANDS

    truth = json.loads((tmp_path / "bench" / "coco" / "val.json").read_text())["annotations"]
    sides = [(a["bbox"][2] * a["bbox"][3]) ** 0.5 for a in truth if not a["iscrowd"]]
    for band, (low, high) in SIZE_BANDS.items():
        present = any(low <= side < high for side in sides)
        assert [math.isnan(c["map50_by_size"][band]) for c in (large, nano)] == [not present] * 2, (band, sides)
    assert large["map50_by_size"]["side_64_128"] > 50, large
    assert "mAP50 by object side: lt_32" in run.stdout


def test_tier_training_turns_ultralytics_mlflow_callback_off(tmp_path, monkeypatch):
    """`models train-tiers` (the base recipe, `tiers.train`) left mlflow.db and mlruns/ in the working directory: only
    the family's networks (`train_network`) turned Ultralytics' MLflow callback off. Both set Ultralytics up through
    `_ultralytics_trainer` before anything else, and it turns the callback off."""
    from adaptive_perception.training import tiers
    from ultralytics.utils import SETTINGS

    class SetUp(Exception):
        pass

    def set_up():
        raise SetUp
    monkeypatch.setattr(tiers, "_ultralytics_trainer", set_up)
    with pytest.raises(SetUp):
        tiers.train(tmp_path / "data.yaml", tmp_path)
    with pytest.raises(SetUp):
        tiers.train_network(tiers.NETWORKS["base"], tmp_path, tmp_path)
    monkeypatch.undo()
    before = SETTINGS["mlflow"]
    try:
        SETTINGS.update({"mlflow": True})
        tiers._ultralytics_trainer()
        assert SETTINGS["mlflow"] is False
    finally:
        SETTINGS.update({"mlflow": before})
