"""Bags (MCAP and sqlite3, written with rosbags) replay through the node in lock-step, losing nothing."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adaptive_perception.bag import Storage, image_topics, read_images, write_image_bag
from adaptive_perception.errors import BagError
from adaptive_perception.ros.replay import ReplayMode, replay_bag
from adaptive_perception.ros.session import node_process, spun_node
from rosgraph import Graph


def _frames(count: int) -> list[tuple[int, np.ndarray]]:
    rng = np.random.default_rng(11)
    return [(1_000_000_000 + i * 33_333_333, rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)) for i in range(count)]


@pytest.mark.parametrize("storage", [Storage.MCAP, Storage.SQLITE3])
def test_bag_round_trip_keeps_pixels_and_stamps(tmp_path, storage):
    frames = _frames(4)
    assert write_image_bag(tmp_path / "bag", frames, "/cam/image_raw", "cam", storage) == 4
    assert image_topics(tmp_path / "bag") == {"/cam/image_raw": "sensor_msgs/msg/Image"}
    recorded = list(read_images(tmp_path / "bag"))
    assert [(m.stamp_sec * 10**9 + m.stamp_nanosec) for m in recorded] == [t for t, _ in frames]
    assert all(m.frame_id == "cam" and m.bag_time_ns == t for m, (t, _) in zip(recorded, frames))


def test_bag_errors_name_the_bag_and_the_fix(tmp_path):
    with pytest.raises(BagError, match="does not exist"):
        image_topics(tmp_path / "missing")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "metadata.yaml").write_text("not: a bag")
    with pytest.raises(BagError, match="cannot be read as a rosbag2"):
        image_topics(tmp_path / "junk")
    write_image_bag(tmp_path / "bag", _frames(1), "/cam/image_raw")
    with pytest.raises(BagError, match=r"no image topic \['/other'\].*'/cam/image_raw'"):
        list(read_images(tmp_path / "bag", ["/other"]))


@pytest.mark.parametrize("storage", [Storage.MCAP, Storage.SQLITE3])
def test_lockstep_replay_gets_one_output_per_frame(context, peer_model, tmp_path, storage):
    frames = _frames(12)
    write_image_bag(tmp_path / "bag", frames, "/cam/image_raw", "cam", storage)
    graph = Graph(context, {"models.nano": str(peer_model), "models.small": "", "models.large": "", "routing_mode": "fixed:nano", "image_topics": ["image"], "warmup_runs": 0,
                            "providers": ["CPUExecutionProvider"]})
    try:
        assert graph.transition("configure") and graph.transition("activate")
        report = replay_bag(graph.driver, tmp_path / "bag", ReplayMode.LOCKSTEP, remap={"/cam/image_raw": "image"})
        assert report.frames_published == report.outputs_received == 12 and report.timeouts == 0
        totals = graph.node.totals()
        assert (totals.received, totals.processed, totals.dropped, totals.lost_before_node) == (12, 12, 0, 0)
        stamps = [d.header.stamp.sec * 10**9 + d.header.stamp.nanosec for d in graph.detections]
        assert stamps == [t for t, _ in frames]
        assert report.detections == sum(len(d.detections) for d in graph.detections) > 0
    finally:
        graph.close()


def test_fast_replay_drops_stale_frames_instead_of_queueing(context, peer_model, tmp_path):
    frames = _frames(40)
    write_image_bag(tmp_path / "bag", frames, "/cam/image_raw")
    graph = Graph(context, {"models.nano": str(peer_model), "models.small": "", "models.large": "", "routing_mode": "fixed:nano", "image_topics": ["image"], "warmup_runs": 0,
                            "qos.reliability": "reliable", "providers": ["CPUExecutionProvider"]})
    try:
        assert graph.transition("configure") and graph.transition("activate")
        report = replay_bag(graph.driver, tmp_path / "bag", ReplayMode.FAST, remap={"/cam/image_raw": "image"},
                            timeout_s=3.0)
        assert report.frames_published == 40
        totals = graph.node.totals()
        assert totals.processed == report.outputs_received < 40  # older frames were dropped, not queued
        # every frame is accounted for: dropped by the newest-frame rule, or overwritten in the depth-1 reader queue
        assert totals.received == totals.processed + totals.dropped
        first = graph.node.counters["image"].first_sequence  # losses are counted from the first delivered frame on
        assert totals.received + totals.lost_before_node == 40 - (first - 1)
        last = graph.detections[-1].header.stamp
        assert last.sec * 10**9 + last.nanosec == frames[-1][0], "the newest frame is always processed"
    finally:
        graph.close()


def test_replay_without_subscriber_explains_what_to_do(tmp_path):
    write_image_bag(tmp_path / "bag", _frames(1), "/nobody/listens")
    with spun_node("lonely_replay") as node, pytest.raises(Exception, match="nobody subscribes.*--remap"):
        replay_bag(node, tmp_path / "bag", wait_for_subscriber_s=0.5)


def test_replay_cli_against_a_node_process(peer_model, tmp_path):
    write_image_bag(tmp_path / "bag", _frames(6), "/camera/image_raw")
    params = {"models.nano": str(peer_model), "models.small": "", "models.large": "", "routing_mode": "fixed:nano", "image_topics": ["/camera/image_raw"], "qos.reliability": "reliable",
              "providers": ["CPUExecutionProvider"],
              "mlflow.experiment": "2026"}  # a string that reads as a number must reach the node as a string
    config_yaml = Path(__file__).resolve().parents[1] / "config" / "perception.yaml"
    with node_process(params, tmp_path / "node.log", params_file=config_yaml):
        out = subprocess.run([sys.executable, "-m", "adaptive_perception.cli", "replay", str(tmp_path / "bag"),
                              "--json", str(tmp_path / "summary.json"), "--timeout", "30"],
                             capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr + (tmp_path / "node.log").read_text()
    import json

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["frames_published"] == summary["outputs_received"] == 6 and summary["timeouts"] == 0
    assert "outputs_received: 6" in out.stdout


def test_lockstep_refuses_a_bag_with_repeated_stamps(context, peer_model, tmp_path):
    frame = _frames(1)[0][1]
    write_image_bag(tmp_path / "bag", [(5, frame), (5, frame)], "/cam/image_raw")
    graph = Graph(context, {"models.nano": str(peer_model), "models.small": "", "models.large": "", "routing_mode": "fixed:nano",
                            "image_topics": ["image"], "warmup_runs": 0, "providers": ["CPUExecutionProvider"]})
    try:
        assert graph.transition("configure") and graph.transition("activate")
        with pytest.raises(BagError, match="repeats header stamp.*--mode fast"):
            replay_bag(graph.driver, tmp_path / "bag", remap={"/cam/image_raw": "image"})
    finally:
        graph.close()


class _Echo:
    """A peer on its own rclpy context: answers each image on 'image' with an empty Detection2DArray of its header,
    except the first `lose` images, whose answers never leave (as when the answer goes out before the node's writer
    has matched the replay's reader)."""

    def __init__(self, lose: int, publish: bool = True):
        from sensor_msgs.msg import Image
        from vision_msgs.msg import Detection2DArray

        self.received = 0
        self._session = spun_node("echo_peer")
        node = self._session.__enter__()
        self._publisher = node.create_publisher(Detection2DArray, "detections", 10) if publish else None

        def answer(image: Image) -> None:
            self.received += 1
            if self._publisher is not None and self.received > lose:
                self._publisher.publish(Detection2DArray(header=image.header))

        node.create_subscription(Image, "image", answer, 10)

    def close(self) -> None:
        self._session.__exit__(None, None, None)


def test_lockstep_resends_the_first_frame_whose_answer_was_lost_and_nothing_later(tmp_path):
    write_image_bag(tmp_path / "bag", _frames(4), "/cam/image_raw")
    echo = _Echo(lose=1)
    try:
        with spun_node("resend_replay") as node:
            report = replay_bag(node, tmp_path / "bag", remap={"/cam/image_raw": "image"}, timeout_s=20.0)
        # without the resend: frame 0 waits its whole 20 s timeout and counts as a timeout
        assert (report.frames_published, report.outputs_received, report.timeouts, report.resent) == (4, 4, 0, 1)
        assert echo.received == 5 and report.wall_s < 10
        assert report.summary()["resent"] == 1
    finally:
        echo.close()


def test_lockstep_resends_only_until_the_first_answer(tmp_path):
    write_image_bag(tmp_path / "bag", _frames(3), "/cam/image_raw")
    echo = _Echo(lose=2)  # the first frame's answer is lost twice, then the peer answers everything
    try:
        with spun_node("resend_replay") as node:
            report = replay_bag(node, tmp_path / "bag", remap={"/cam/image_raw": "image"}, timeout_s=7.0)
        assert (report.outputs_received, report.timeouts, report.resent, echo.received) == (3, 0, 2, 5)
    finally:
        echo.close()


def test_replay_names_the_output_topic_when_nobody_publishes_on_it(tmp_path):
    write_image_bag(tmp_path / "bag", _frames(1), "/cam/image_raw")
    echo = _Echo(lose=0, publish=False)
    try:
        with spun_node("unanswered_replay") as node, \
                pytest.raises(Exception, match="nobody publishes on '/detections'.*--output-topic"):
            replay_bag(node, tmp_path / "bag", remap={"/cam/image_raw": "image"}, wait_for_subscriber_s=1.0)
        assert echo.received == 0, "nothing is published before the node's outputs can be received"
    finally:
        echo.close()
