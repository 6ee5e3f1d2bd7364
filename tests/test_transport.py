"""Camera frames cross processes at 30 Hz on the shipped defaults: real publisher, subscriber and node processes."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from adaptive_perception.training.transport import Pass, run_pass
from adaptive_perception.transport import apply_defaults, shipped_profile

ROOT = Path(__file__).resolve().parents[1]
FRAMES = 300  # 10 s at 30 Hz


def _domain() -> int:
    return 150 + os.getpid() % 50


def test_the_shipped_profile_is_applied_unless_the_user_chose_one():
    assert shipped_profile() == ROOT / "config" / "fastdds.xml"
    env = {"RMW_IMPLEMENTATION": "rmw_fastrtps_cpp"}
    assert apply_defaults(env) == str(ROOT / "config" / "fastdds.xml")
    assert env["FASTRTPS_DEFAULT_PROFILES_FILE"] == str(ROOT / "config" / "fastdds.xml")
    assert apply_defaults({}) is not None  # no RMW named: ROS 2's default is Fast DDS
    mine = {"RMW_IMPLEMENTATION": "rmw_fastrtps_cpp", "FASTRTPS_DEFAULT_PROFILES_FILE": "/etc/my_profile.xml"}
    assert apply_defaults(mine) is None and mine["FASTRTPS_DEFAULT_PROFILES_FILE"] == "/etc/my_profile.xml"
    cyclone = {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}
    assert apply_defaults(cyclone) is None and "FASTRTPS_DEFAULT_PROFILES_FILE" not in cyclone


@pytest.mark.parametrize("reliability", ["best_effort", "reliable"])
def test_a_bare_subscriber_receives_99_percent_of_raw_frames_at_30_hz(tmp_path, reliability):
    row = run_pass(Pass("bare", "raw 640x480", 1, reliability, "shipped", FRAMES, 30.0), tmp_path, _domain())
    detail = row["cameras_detail"]["/bench/camera0/image_raw"]
    assert detail["published"] == FRAMES
    assert row["delivered_share"] >= 0.99, f"{detail['delivered']} of {FRAMES} raw 640x480 frames arrived"


def test_two_cameras_are_both_delivered(tmp_path):
    row = run_pass(Pass("bare", "raw 640x480", 2, "best_effort", "shipped", FRAMES, 30.0), tmp_path, _domain())
    assert len(row["cameras_detail"]) == 2
    assert row["delivered_share"] >= 0.99, row["cameras_detail"]  # the worse camera decides


def test_the_node_accounts_for_every_frame_it_was_sent(tmp_path):
    """Each published frame is answered, dropped by the newest-frame rule or counted as lost before the node."""
    row = run_pass(Pass("node fixed:nano", "raw 640x480", 1, "best_effort", "shipped", FRAMES, 30.0), tmp_path, _domain())
    detail = row["cameras_detail"]["/bench/camera0/image_raw"]
    assert detail["node_processed"] == detail["delivered"] > 0  # every routing output reached the listener
    assert detail["node_received"] == detail["node_processed"] + detail["node_dropped"] + detail["node_failed"]
    assert detail["published"] == detail["node_received"] + detail["node_lost_before_node"]
    # nano takes well under a frame period: nearly all arrive (with Fast DDS's default 512 KB segment, 33-43 %
    # did); 0.75 leaves room for a loaded machine (0.88 beside tier training), `bench transport` has the figures
    assert row["delivered_share"] >= 0.75, detail


def test_a_catch_up_burst_is_counted_not_lost(tmp_path):
    """A camera starved of CPU publishes the frames it owes back to back. Those arriving while the executor is busy
    must wait in the reader's queue and be counted as dropped by the newest-frame rule, not overwritten there: with
    the earlier depth of 2, only 3-5 of 12 frames sent at once reached the node (the bench's 30 Hz passes lost
    5-9 of 600, likely this way). fixed:large holds the worker for the whole burst."""
    burst = 8
    row = run_pass(Pass("node fixed:large", "raw 640x480", 1, "reliable", "shipped", burst, 3000.0), tmp_path, _domain())
    detail = row["cameras_detail"]["/bench/camera0/image_raw"]
    assert detail["published"] == burst
    assert detail["node_received"] == burst and detail["node_lost_before_node"] == 0, detail
    assert detail["node_processed"] == detail["delivered"] >= 1
    assert detail["node_processed"] + detail["node_dropped"] == burst, detail


def test_a_profile_named_by_the_fastdds_variable_is_the_users_choice():
    mine = {"RMW_IMPLEMENTATION": "rmw_fastrtps_cpp", "FASTDDS_DEFAULT_PROFILES_FILE": "/etc/my_profile.xml"}
    assert apply_defaults(mine) is None and "FASTRTPS_DEFAULT_PROFILES_FILE" not in mine
