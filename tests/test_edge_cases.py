"""Edge cases of the drift report's figures and bars, the held-out report, which recordings retraining reads, the
debug image's banner, the policy store's history, the per-camera frame counters, ROS's typing of params-file values
and node-key wildcards, and the CLI's bounds: each at a value a mutation audit found no test holding (expected
values worked out by hand beside them)."""
from __future__ import annotations

import numpy as np
import pytest

from adaptive_perception.drift import DRIFT, OK, WARN
from adaptive_perception.training.drift_report import summarise_stream

T = {"feature_psi": 2.0}


def test_drift_at_frame_0_is_a_false_alarm_entry():
    # entries: frame 0 (first frame, nothing before it) and frame 4; change at 3 -> frame 0 is a false alarm
    s = summarise_stream([DRIFT, DRIFT, OK, OK, DRIFT], [0.1] * 5, [{}] * 5, 3, T)
    assert s["false_alarms"] == 1 and s["detection_delay_frames"] == 1


def test_drift_exactly_at_the_change_is_no_false_alarm_and_delay_0():
    s = summarise_stream([OK, OK, OK, DRIFT, DRIFT], [0.1] * 5, [{}] * 5, 3, T)
    assert s["false_alarms"] == 0
    assert s["detection_delay_frames"] == 0


def test_warn_on_the_change_frame_is_not_before_the_change():
    s = summarise_stream([OK, WARN, OK, WARN, DRIFT], [0.1] * 5, [{}] * 5, 3, T)
    assert s["warn_frames_before_change"] == 1


def test_the_bars_hold_at_exactly_3000_frames_and_150_frames_of_delay_and_alarms_count_per_1000():
    from adaptive_perception.training.drift_report import totals

    def row(frames: int, alarms: int, delay: int | None) -> dict:
        return {"in_distribution_frames": frames, "false_alarms": alarms, "detection_delay_frames": delay}

    # 1,500 + 1,500 = 3,000 in-distribution frames, none alarmed: the bar holds at exactly 3,000; 150 frames of
    # delay is within 150, 151 is not, and an undetected preset is not
    held = totals({"night": row(1500, 0, 150), "fog": row(1500, 0, 0), "new_domain": row(0, 0, 151),
                   "small_objects": row(0, 0, None)})
    assert held["false_alarms_per_1000"] == 0.0
    assert held["bars"] == {"no_false_alarm": True, "in_distribution_frames": 3000, "detected_within_150": {
        "night": True, "fog": True, "new_domain": False, "small_objects": False}}
    # 2,999 frames are too few to hold it; 2 alarms in 500 frames are 4 per 1,000
    assert totals({"night": row(2999, 0, 10)})["bars"]["no_false_alarm"] is False
    alarmed = totals({"night": row(300, 2, 10), "fog": row(200, 0, 10)})
    assert alarmed["false_alarms_per_1000"] == 4.0 and alarmed["bars"]["no_false_alarm"] is False
    assert totals({})["false_alarms_per_1000"] is None


def test_too_few_sequences_drop_the_bootstrap_replicates():
    from adaptive_perception.training.heldout import intervals_if_enough

    row = {"map50_95": 30.0, "map50_95_ci": [30.0, 30.0], "_replicates": [30.0, 30.0], "mean_cost_ms": 20.0}
    result = {"frames": 20, "sequences": 2, "rows": {"learned": dict(row)},
              "learned_minus_heuristic": {"difference": 1.0, "difference_ci": [1.0, 1.0]}}
    assert intervals_if_enough(result)["rows"] == {"learned": {"map50_95": 30.0, "mean_cost_ms": 20.0}}


def _bag(path, n=40, hw=(24, 32)):
    from adaptive_perception.bag import write_image_bag

    write_image_bag(path, [(10**9 + i * 33_333_333, np.zeros((*hw, 3), np.uint8)) for i in range(n)], "/camera/image_raw")
    return path


def _kill(bag):
    """The bag as a killed writer leaves it: no metadata.yaml, its MCAP cut short (no footer magic)."""
    (bag / "metadata.yaml").unlink()
    mcap = next(bag.glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[:200])
    return bag


def test_an_mcap_of_its_opening_magic_alone_is_not_complete(tmp_path):
    from adaptive_perception.bag import MCAP_MAGIC, _complete_mcap

    for content in (MCAP_MAGIC, MCAP_MAGIC * 2):  # 8 and 16 bytes: <= 2 * 8, cut at the start
        (tmp_path / "x.mcap").write_bytes(content)
        assert _complete_mcap(tmp_path / "x.mcap") is False
    (tmp_path / "x.mcap").write_bytes(MCAP_MAGIC + b"x" + MCAP_MAGIC)  # 17 bytes ending in the magic
    assert _complete_mcap(tmp_path / "x.mcap") is True


def test_a_bag_with_its_metadata_is_closed_even_if_its_mcap_is_cut(tmp_path):
    from adaptive_perception.bag import never_closed

    bag = _bag(tmp_path / "b")
    mcap = next(bag.glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[:200])
    assert never_closed(bag) is False
    (bag / "metadata.yaml").unlink()
    assert never_closed(bag) is True


def test_a_folder_of_bare_mcap_files_stands_for_them(tmp_path):
    from adaptive_perception.bag import expand_bags

    flat = tmp_path / "flat"
    flat.mkdir()
    for name in ("a", "b"):
        next(_bag(tmp_path / name, 3).glob("*.mcap")).rename(flat / f"{name}.mcap")
    assert expand_bags([flat]) == [flat / "a.mcap", flat / "b.mcap"]


def _original(tmp_path):
    from test_routing_training import _profile

    original = tmp_path / "original"
    original.mkdir()
    for split in ("router", "val", "test"):
        _profile(6).save(original / f"profile_{split}.npz")  # trained at 160x100 frames
    return original


def test_the_gate_counts_a_short_last_segment(tmp_path, capsys):
    from adaptive_perception.cli import main

    # 51 frames in 10-frame segments: 5 full + 1 short = 6 segments >= 2 * 3: passes the count, and is then refused
    # for its frame size (32x24, the original's is 160x100), still before profiling
    bag = _bag(tmp_path / "evidence_0001", 51)
    assert main(["train", "retrain", "--bags", str(bag), "--original-work", str(_original(tmp_path)),
                 "--segment-frames", "10", "--work", str(tmp_path / "work")]) == 2
    err = capsys.readouterr().err
    assert "segments of 10 frames" not in err and "trained on 160x100 frames" in err and "32x24" in err


def test_a_named_bag_never_closed_is_left_out_not_refused(tmp_path, capsys):
    from adaptive_perception.cli import main

    good, killed = _bag(tmp_path / "evidence_0001"), _kill(_bag(tmp_path / "evidence_0002"))
    assert main(["train", "retrain", "--bags", str(good), str(killed), "--original-work", str(_original(tmp_path)),
                 "--work", str(tmp_path / "work")]) == 2
    out = capsys.readouterr()
    assert f"left out ['{killed}']: never closed" in out.out
    assert "--bags hold 40 frames (40 per bag and camera): 2 segments of 30 frames" in out.err


def test_a_subset_keeps_only_its_frames_detections_and_truth():
    from test_routing_training import _profile

    from adaptive_perception.training.retrain import subset

    # _profile(6): one truth box a frame; tier t detects on frame f when t >= f % 3 -> frames 1 and 3: 2 + 3 rows
    part = subset(_profile(6), [3, 1])
    assert part.truth[:, 0].tolist() == [0, 1]
    assert part.detections[:, :2].tolist() == [[0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]


def test_the_banner_blends_35_percent_frame_with_65_percent_tier_colour():
    from adaptive_perception.detector import Detections
    from adaptive_perception.drawing import draw_routed

    frame = np.full((60, 200, 3), 128, np.uint8)
    empty = Detections.empty(("car",))
    # 0.35 * 128 + 0.65 * c, truncated: nano (60, 200, 75) -> (83, 174, 93); small (255, 190, 0) -> (210, 168, 44);
    # large (230, 40, 60) -> (194, 70, 83); an unknown tier is grey (200, 200, 200) -> (174, 174, 174)
    expected = {"nano": (83, 174, 93), "small": (210, 168, 44), "large": (194, 70, 83), "other": (174, 174, 174)}
    for tier, pixel in expected.items():
        out = draw_routed(frame, empty, tier)
        assert tuple(out[2, 199].tolist()) == pixel, tier  # the banner's right end: no text there


def test_a_frame_lower_than_the_banner_still_shows_the_tier_text():
    from adaptive_perception.detector import Detections
    from adaptive_perception.drawing import draw_routed

    # 10 rows: the banner is the whole frame, its text's baseline at row 10 - 6 = 4, so glyphs show in rows 0-4;
    # everywhere else the banner colour (83, 174, 93) of nano on grey 128
    out = draw_routed(np.full((10, 200, 3), 128, np.uint8), Detections.empty(("car",)), "nano")
    assert (out[:, 150:] == np.array([83, 174, 93], np.uint8)).all()
    assert (out[:5, :40] != np.array([83, 174, 93], np.uint8)).any(axis=-1).sum() > 5


def test_history_skips_blank_lines_and_a_store_without_its_log_has_none(tmp_path):
    from adaptive_perception.policy_store import PolicyStore
    from policies import constant_policy

    store = PolicyStore(tmp_path / "store")
    store.init(str(constant_policy(tmp_path / "nano.onnx", (0.98, 0.01, 0.01), "to-nano")))
    with open(store.folder / "history.jsonl", "a") as history:
        history.write("\n   \n")
    assert [h["action"] for h in store.history()] == ["init"]
    (store.folder / "history.jsonl").unlink()  # a store whose log is gone: still a store (current.onnx), no entries
    assert store.history() == []


def test_recordings_in_lists_bag_folders_and_bag_files(tmp_path):
    from adaptive_perception.bag import recordings_in

    for name in ("b.mcap", "c.db3", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "a").mkdir()
    assert recordings_in(tmp_path) == [tmp_path / "a", tmp_path / "b.mcap", tmp_path / "c.db3"]


def test_camera_counters_count_gaps_and_restart():
    from adaptive_perception.frames import CameraCounters

    c = CameraCounters()
    for sequence in (5, 6, 9):
        c.arrived(sequence)
    assert (c.received, c.lost_before_node, c.first_sequence) == (3, 2, 5)
    c.arrived(9)  # the same number again: a restarted publisher, no loss and no negative loss
    assert c.lost_before_node == 2
    c.restart_sequence()
    c.arrived(20)  # the gap over the restart is no loss
    c.arrived(22)
    assert c.as_dict() == {"received": 6, "lost_before_node": 3, "dropped": 0, "processed": 0, "failed": 0}


def test_ros_scalars_are_typed_as_ros_types_them():
    import math

    from adaptive_perception.ros.parameters import _ros_scalar

    assert _ros_scalar("1_000", False) == "1_000"  # no digit separators in ROS: a string, not 1000.0
    assert _ros_scalar(".inf", False) == math.inf and _ros_scalar("-.inf", False) == -math.inf
    assert _ros_scalar("N", False) is False and _ros_scalar("Y", False) is True
    assert _ros_scalar("010", False) == 8 and _ros_scalar("0x10", False) == 16 and _ros_scalar("0", False) == 0
    assert _ros_scalar("4e3", False) == 4000.0 and _ros_scalar("true", True) == "true"


def test_node_key_wildcards():
    from adaptive_perception.ros.parameters import _names_node

    assert _names_node("/**/perception_node", "/perception_node")  # ** is any number of names, none included
    assert _names_node("/**/perception_node", "/a/b/perception_node")
    assert _names_node("/*/perception_node", "/front/perception_node")
    assert not _names_node("/*/perception_node", "/a/b/perception_node")  # * is exactly one name
    assert not _names_node("/*/perception_node", "/perception_node")


def test_cli_number_port_and_tracking_uri_bounds():
    import argparse

    from adaptive_perception.cli import _finite, _non_negative, _port, _positive, _tracking_uri

    assert _non_negative("0") == 0.0 and _positive("0.5") == 0.5 and _finite("-3") == -3.0
    for parse, text in ((_positive, "0"), (_finite, "inf"), (_positive, "nan"), (_non_negative, "-1e-9")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)
    assert _port("65535") == 65535 and _port("1") == 1
    with pytest.raises(argparse.ArgumentTypeError, match="TCP port"):
        _port("65536")
    assert _tracking_uri("databricks") == "databricks" and _tracking_uri("sqlite:///x/mlflow.db") == "sqlite:///x/mlflow.db"
    for folder in ("FILE:///tmp/runs", "file:///tmp/runs", "runs"):
        with pytest.raises(argparse.ArgumentTypeError, match="is a folder"):
            _tracking_uri(folder)


def test_refuse_first_names_the_first_failing_check():
    from adaptive_perception.errors import ConfigError, refuse_first

    refuse_first([(False, "a"), (False, "b")])
    with pytest.raises(ConfigError, match="^b$"):
        refuse_first([(False, "a"), (True, "b"), (True, "c")])
