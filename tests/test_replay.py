"""Bags (MCAP and sqlite3, written with rosbags) replay through the node in lock-step, losing nothing."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from adaptive_perception.bag import Storage, image_topics, read_images, write_image_bag
from adaptive_perception.errors import BagError
from adaptive_perception.ros.replay import ReplayMode, ReplayReport, replay_bag
from adaptive_perception.ros.session import node_process, spun_node
from rosgraph import Graph, wait_until


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
    (tmp_path / "notes").mkdir()
    with pytest.raises(BagError, match="cannot be read as a rosbag2.*pass the bag folder"):
        image_topics(tmp_path / "notes")
    write_image_bag(tmp_path / "bag", _frames(1), "/cam/image_raw")
    with pytest.raises(BagError, match=r"no image topic \['/other'\].*'/cam/image_raw'"):
        list(read_images(tmp_path / "bag", ["/other"]))
    # a `record` output: one bag per segment under it (said: the rosbags error naming a missing metadata file)
    for segment in ("recording_0001", "recording_0002"):
        write_image_bag(tmp_path / "rec" / segment, _frames(1), "/cam/image_raw")
    with pytest.raises(BagError, match=r"rec' is a folder of rosbag2 recordings, not one; it holds 2 bags "
                                       r"\(recording_0001, recording_0002; .*\): pass one of them, e.g. '.*recording_0001'"):
        image_topics(tmp_path / "rec")
    write_image_bag(tmp_path / "evidence" / "camera" / "evidence_0001", _frames(1), "/camera")  # a level deeper
    with pytest.raises(BagError, match=r"evidence' is a folder of rosbag2 recordings, not one; it holds 1 bag "
                                       r"\(camera/evidence_0001; .*e.g. '.*evidence/camera/evidence_0001'"):
        image_topics(tmp_path / "evidence")
    mcap = next((tmp_path / "bag").glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])  # a segment cut short
    with pytest.raises(BagError, match="cannot be read as a rosbag2.*damaged or was cut short"):
        image_topics(tmp_path / "bag")


def test_a_folder_of_bags_stands_for_its_bags_where_training_reads_recordings(tmp_path):
    """`train --source bags` refused a `record` output put among the split's bags (and `retrain --bags` an evidence
    folder): each stands for the bags it holds, one per segment."""
    from adaptive_perception.bag import expand_bags
    from adaptive_perception.training.profile import bag_frames

    for segment in ("recording_0002", "recording_0001"):
        write_image_bag(tmp_path / "rec" / segment, _frames(2), "/cam")
    write_image_bag(tmp_path / "evidence" / "cam" / "evidence_0001", _frames(1), "/cam")
    write_image_bag(tmp_path / "plain", _frames(3), "/cam")
    (tmp_path / "empty").mkdir()
    assert expand_bags([tmp_path / "rec", tmp_path / "plain", tmp_path / "evidence", tmp_path / "empty"]) == [
        tmp_path / "rec" / "recording_0001", tmp_path / "rec" / "recording_0002", tmp_path / "plain",
        tmp_path / "evidence" / "cam" / "evidence_0001", tmp_path / "empty"]
    frames = list(bag_frames(expand_bags([tmp_path / "rec"]), None, False))
    assert [sequence for _, sequence, _, _ in frames] == [0, 0, 1, 1]  # one sequence per segment


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


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_during_a_replay_keeps_its_summary(peer_model, tmp_path, signum):
    """Ctrl-C ended `replay` in a KeyboardInterrupt traceback, with no summary and no --json file; SIGTERM (`timeout`,
    docker stop) killed it outright (exit 143), the summary lost."""
    from vision_msgs.msg import Detection2DArray

    write_image_bag(tmp_path / "bag", _frames(450), "/camera/image_raw")  # 15 s at 30 Hz, replayed over 30 s
    params = {"models.nano": str(peer_model), "models.small": "", "models.large": "", "routing_mode": "fixed:nano",
              "image_topics": ["/camera/image_raw"], "providers": ["CPUExecutionProvider"], "warmup_runs": 0}
    answers = []
    with node_process(params, tmp_path / "node.log"), spun_node("ctrl_c_watch") as watch:
        watch.create_subscription(Detection2DArray, "/detections", answers.append, 10)
        replay = subprocess.Popen([sys.executable, "-m", "adaptive_perception.cli", "replay", str(tmp_path / "bag"),
                                   "--mode", "recorded", "--rate", "0.5", "--json", str(tmp_path / "summary.json")],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while len(answers) < 5 and time.monotonic() < deadline and replay.poll() is None:
                time.sleep(0.05)
            assert len(answers) >= 5, (tmp_path / "node.log").read_text()
            # still replaying (on a loaded host a node slow to answer let a 15 s replay end first: exit 0, no signal)
            assert replay.poll() is None, replay.communicate()
            replay.send_signal(signum)
            out, err = replay.communicate(timeout=30)
        finally:
            if replay.poll() is None:
                replay.kill()
    summary = _interrupted(replay.returncode, out, err, tmp_path / "summary.json")
    assert 5 <= summary["frames_published"] < 450 and summary["outputs_received"] >= 5
    assert f"frames_published: {summary['frames_published']}" in out


def _interrupted(returncode: int, out: str, err: str, json_path: Path) -> dict:
    """The summary of a replay stopped by a signal: exit 130, no traceback, said on stderr and in its --json."""
    assert returncode == 130 and "Traceback" not in err, (returncode, out, err)
    summary = json.loads(json_path.read_text())
    assert summary["stopped_early"] == "interrupted (Ctrl-C or SIGTERM)"
    assert f"stopped after {summary['frames_published']} frames published: interrupted (Ctrl-C or SIGTERM)" in err
    return summary


def test_ctrl_c_while_the_last_answer_is_awaited_keeps_the_summary(tmp_path):
    """Every frame out, the replay waits (up to --timeout) for the node's answer to the last: a Ctrl-C there left
    replay's own handling, exit 130 with neither summary nor --json. A reader that never answers holds it there.
    The replay starts with SIGINT ignored, as a script's background job (`replay ... &`) does: it ignored Ctrl-C."""
    from sensor_msgs.msg import Image
    from vision_msgs.msg import Detection2DArray

    write_image_bag(tmp_path / "bag", _frames(6), "/silent/image_raw")
    seen = []
    with spun_node("silent_node") as silent:
        silent.create_subscription(Image, "/silent/image_raw", seen.append, 10)
        silent.create_publisher(Detection2DArray, "/silent_detections", 10)  # matched, never publishes
        replay = subprocess.Popen([sys.executable, "-m", "adaptive_perception.cli", "replay", str(tmp_path / "bag"),
                                   "--mode", "fast", "--timeout", "120", "--output-topic", "/silent_detections",
                                   "--json", str(tmp_path / "summary.json")],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        try:
            assert wait_until(lambda: len(seen) == 6 or replay.poll() is not None, 60), replay.communicate()
            time.sleep(1.0)  # past the last publish: waiting for its answer
            assert replay.poll() is None, replay.communicate()
            replay.send_signal(signal.SIGINT)
            out, err = replay.communicate(timeout=30)
        finally:
            if replay.poll() is None:
                replay.kill()
    summary = _interrupted(replay.returncode, out, err, tmp_path / "summary.json")
    assert summary["frames_published"] == 6 and summary["outputs_received"] == 0


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
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["frames_published"] == summary["outputs_received"] == 6 and summary["timeouts"] == 0
    assert "outputs_received: 6" in out.stdout


def test_lockstep_refuses_a_bag_that_repeats_an_earlier_frames_stamp(context, peer_model, tmp_path):
    _stamped_bag(tmp_path / "bag", [5, 6, 5])
    graph = Graph(context, {"models.nano": str(peer_model), "models.small": "", "models.large": "", "routing_mode": "fixed:nano",
                            "image_topics": ["image"], "warmup_runs": 0, "providers": ["CPUExecutionProvider"]})
    try:
        assert graph.transition("configure") and graph.transition("activate")
        # it stops there with the numbers of what went out before (it raised and the CLI printed no summary)
        report = replay_bag(graph.driver, tmp_path / "bag", remap={"/cam/image_raw": "image"})
        assert (report.frames_published, report.outputs_received, report.interrupted) == (2, 2, False)
        assert re.search("frame 2 .* repeats header stamp 0.000000005 .* of an earlier frame.*--mode fast",
                         report.stopped) and report.summary()["stopped_early"] == report.stopped
    finally:
        graph.close()


class _Echo:
    """A peer on its own rclpy context: answers each image on 'image' with an empty Detection2DArray of its header,
    except the first `lose` images, whose answers never leave (as when the answer goes out before the node's writer
    has matched the replay's reader), and images `delay` (index -> seconds or None: no answer) holds back."""

    def __init__(self, lose: int, publish: bool = True, delay: Callable[[int], float | None] = lambda _: 0.0,
                 compressed: bool = False, topic: str = "image", best_effort: bool = False):
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CompressedImage, Image
        from vision_msgs.msg import Detection2DArray

        self.received = 0
        self._session = spun_node("echo_peer")
        node = self._session.__enter__()
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT if best_effort else
                         ReliabilityPolicy.RELIABLE)
        self._publisher = node.create_publisher(Detection2DArray, "detections", qos) if publish else None

        def answer(image) -> None:
            index, self.received = self.received, self.received + 1
            wait = delay(index)
            if self._publisher is None or index < lose or wait is None:
                return
            # answer once this writer has matched the replay's reader (discovery runs on each side's schedule): an
            # answer before that is lost, and `lose` is how a test asks for that, not the load of the host
            deadline = time.monotonic() + 10
            while self._publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            if wait > 0:
                threading.Timer(wait, self._publisher.publish, [Detection2DArray(header=image.header)]).start()
            else:
                self._publisher.publish(Detection2DArray(header=image.header))

        node.create_subscription(CompressedImage if compressed else Image, topic, answer, 10)

    def close(self) -> None:
        if self._session is not None:
            self._session.__exit__(None, None, None)
            self._session = None


def _echo_replay(tmp_path: Path, echo: dict, **replay) -> tuple[ReplayReport, _Echo]:
    """The bag at tmp_path / 'bag' (topic /cam/image_raw) replayed onto 'image' against an `_Echo(**echo)` peer."""
    peer = _Echo(**echo)
    try:
        with spun_node("echo_replay") as node:
            return replay_bag(node, tmp_path / "bag", remap={"/cam/image_raw": "image"}, **replay), peer
    finally:
        peer.close()


def test_lockstep_resends_the_first_frame_whose_answer_was_lost_and_nothing_later(tmp_path):
    write_image_bag(tmp_path / "bag", _frames(4), "/cam/image_raw")
    report, echo = _echo_replay(tmp_path, {"lose": 1}, timeout_s=20.0)
    # without the resend: frame 0 waits its whole 20 s timeout and counts as a timeout
    assert (report.frames_published, report.outputs_received, report.timeouts, report.resent) == (4, 4, 0, 1)
    assert echo.received == 5 and report.wall_s < 10
    assert report.summary()["resent"] == 1


def test_lockstep_resends_only_until_the_first_answer(tmp_path):
    write_image_bag(tmp_path / "bag", _frames(3), "/cam/image_raw")
    # the first frame's answer is lost twice, then the peer answers everything
    report, echo = _echo_replay(tmp_path, {"lose": 2}, timeout_s=7.0)
    assert (report.outputs_received, report.timeouts, report.resent, echo.received) == (3, 0, 2, 5)


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


def test_replay_says_when_the_output_publisher_is_best_effort(tmp_path):
    write_image_bag(tmp_path / "bag", _frames(1), "/cam/image_raw")
    echo = _Echo(lose=0, best_effort=True)
    try:
        with spun_node("best_effort_replay") as node, pytest.raises(
                Exception, match=r"'/detections' is published by \['echo_peer'\] with a QoS a reliable reader "
                                 r"cannot match \(best effort"):
            replay_bag(node, tmp_path / "bag", remap={"/cam/image_raw": "image"}, wait_for_subscriber_s=1.0)
    finally:
        echo.close()


def test_replays_leave_the_executor_that_spins_their_node_running(tmp_path, monkeypatch):
    """rclpy's executor dies (InvalidHandle) when an entity with QoS-event handlers is destroyed in another thread
    while it builds its wait set, as replay destroys its reader and publishers at the end (a simulator test's listener
    lost its last RoutingDecision so in CI). A 50-ms wait-set build widens that window from microseconds to the
    moment replay's teardown lands in; each replay after the first needs the executor alive for its answers."""
    import rclpy.executors

    build = rclpy.executors._rclpy.WaitSet

    def slow_build(*args):
        time.sleep(0.05)
        return build(*args)

    monkeypatch.setattr(rclpy.executors._rclpy, "WaitSet", slow_build)
    write_image_bag(tmp_path / "bag", _frames(2), "/cam/image_raw")
    echo = _Echo(lose=0)
    try:
        with spun_node("respun_replay") as node:
            reports = [replay_bag(node, tmp_path / "bag", remap={"/cam/image_raw": "image"}, timeout_s=3.0)
                       for _ in range(4)]
    finally:
        echo.close()
    assert [(r.outputs_received, r.timeouts) for r in reports] == [(2, 0)] * 4


def test_lockstep_skips_a_frame_that_repeats_the_previous_one_as_a_recording_of_a_resend_holds(tmp_path):
    _stamped_bag(tmp_path / "bag", [7, 7, 8, 9])
    report, echo = _echo_replay(tmp_path, {"lose": 0}, timeout_s=10.0)
    assert (report.frames_published, report.outputs_received, report.skipped_repeats, echo.received) == (3, 3, 1, 3)


def test_lockstep_stops_at_a_different_frame_under_the_previous_frames_stamp(tmp_path):
    """Only a recording of a resend repeats a frame: a camera that stamps every frame 0 (or two frames alike) sent
    1 of 30 frames and exited 0."""
    _stamped_bag(tmp_path / "bag", [0, 0, 0], distinct=True)
    report, echo = _echo_replay(tmp_path, {"lose": 0}, timeout_s=10.0)
    assert (report.frames_published, report.skipped_repeats, echo.received) == (1, 0, 1)
    assert re.search("frame 1 .* repeats header stamp 0.000000000 .* of an earlier frame", report.stopped)


def test_recorded_replay_waits_each_gap_over_rate_and_no_jump_of_the_bags_clock(tmp_path):
    """A frame logged a day ahead hung the replay for a day (at --rate 0.1 from a log time of 0: an OverflowError
    traceback). The reader orders the bag by log time; gaps at --rate 2.5: 100 s -> 40 s, cut; 0.4 s -> 0.16;
    0.5 s -> 0.2; 0.8 s -> 0.32."""
    log = [0, 100_000_000_000, 100_400_000_000, 100_900_000_000, 101_700_000_000]
    _stamped_bag(tmp_path / "bag", [1, 2, 3, 4, 5], log_ns=log)
    sent: list[float] = []

    def too_long(*_):
        raise TimeoutError("the replay waited out the bag's jump")

    previous = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(60)
    try:
        report, echo = _echo_replay(tmp_path, {"lose": 0}, mode=ReplayMode.RECORDED, rate=2.5, timeout_s=5.0,
                                    on_frame=lambda i: sent.append(time.perf_counter()))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert (report.frames_published, report.gaps_cut, report.summary()["gaps_cut"], echo.received) == (5, 1, 1, 5)
    offsets = [t - sent[0] for t in sent]
    for offset, due in zip(offsets, [0.0, 0.0, 0.16, 0.36, 0.68]):
        assert due - 0.005 <= offset <= due + 1.0, offsets


def test_fast_replay_counts_what_the_node_left_unanswered_and_no_idle_wait_in_its_rate(tmp_path):
    write_image_bag(tmp_path / "bag", _frames(6), "/cam/image_raw")
    began = time.monotonic()
    # the peer drops every other frame, the newest too
    report, _ = _echo_replay(tmp_path, {"lose": 0, "delay": lambda i: None if i % 2 else 0.0}, mode=ReplayMode.FAST,
                             timeout_s=4.0)
    took = time.monotonic() - began
    summary = report.summary()
    assert (summary["frames_published"], summary["outputs_received"], summary["unanswered"]) == (6, 3, 3)
    assert took >= 4.0, "it waited for the newest frame's answer"
    # the wait is not in the rate: 6 frames go out back to back and 3 answers follow within a second
    assert report.wall_s < 2.0 and summary["fps"] > 1.5, summary
    assert summary["steady_fps"] is None and summary["timeouts"] == 0


def test_lockstep_stops_when_nobody_reads_the_camera_topic_any_more(tmp_path):
    """A node killed mid-replay left lock-step waiting out --timeout for every frame left (25 minutes for a 150-frame
    bag at the default), then blaming a slow tier."""
    write_image_bag(tmp_path / "bag", _frames(8), "/cam/image_raw")
    echo = _Echo(lose=0, delay=lambda i: None if i >= 2 else 0.0)  # answers frames 0 and 1, then is gone

    def leave(index: int) -> None:
        if index == 2:
            echo.close()  # its subscription goes with it
    try:
        with spun_node("echo_replay") as node:
            report = replay_bag(node, tmp_path / "bag", remap={"/cam/image_raw": "image"}, timeout_s=1.0,
                                on_frame=leave)
    finally:
        echo.close()
    assert (report.frames_published, report.outputs_received, report.timeouts) == (3, 2, 1)
    assert report.stopped.startswith("nobody reads '/image' any more (after frame 2's --timeout)"), report.stopped


def test_a_lockstep_answer_after_its_timeout_is_late_not_an_output(tmp_path):
    write_image_bag(tmp_path / "bag", _frames(4), "/cam/image_raw")
    # frame 1 goes out at 0 s and times out at 2 s; its answer comes at 3 s, while the replay waits for frame 2's
    # (out at 2 s, answered at 3.5 s, within its timeout)
    report, _ = _echo_replay(tmp_path, {"lose": 0, "delay": lambda i: {1: 3.0, 2: 1.5}.get(i, 0.0)}, timeout_s=2.0)
    assert (report.frames_published, report.outputs_received, report.timeouts, report.late) == (4, 3, 1, 1)
    assert len(report.latencies_ms) == 3 and max(report.latencies_ms) < 2000


def test_no_answer_at_all_gives_a_strict_json_summary():
    summary = ReplayReport(frames_published=3, timeouts=3, wall_s=9.0).summary()
    assert summary["latency_p50_ms"] is None and summary["latency_p95_ms"] is None and summary["unanswered"] == 3
    assert json.loads(json.dumps(summary, allow_nan=False))["steady_fps"] is None


def _stamped_bag(path: Path, stamps: list[int], log_ns: list[int] | None = None, distinct: bool = False) -> None:
    """One frame per header stamp on /cam/image_raw, recorded 1 ms apart whatever the stamps (or at `log_ns`);
    the same picture in each, or with `distinct` a picture of its own."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    from adaptive_perception.bag import IMAGE_TYPE, TYPESTORE, image_message

    pictures = [rgb for _, rgb in _frames(len(stamps) if distinct else 1)]
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection("/cam/image_raw", IMAGE_TYPE, typestore=TYPESTORE)
        for i, stamp in enumerate(stamps):
            message = image_message(pictures[i % len(pictures)], stamp, "cam")
            writer.write(conn, log_ns[i] if log_ns else 10**9 + i * 10**6, TYPESTORE.serialize_cdr(message, IMAGE_TYPE))


def _two_topic_bag(path: Path, topics: list[str], count: int) -> None:
    from rosbags.rosbag2 import StoragePlugin, Writer

    from adaptive_perception.bag import IMAGE_TYPE, TYPESTORE, image_message

    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connections = [writer.add_connection(t, IMAGE_TYPE, typestore=TYPESTORE) for t in topics]
        for stamp, rgb in _frames(count):
            for conn in connections:
                writer.write(conn, stamp, TYPESTORE.serialize_cdr(image_message(rgb, stamp, "cam"), IMAGE_TYPE))


def test_replay_leaves_the_nodes_debug_images_out_unless_named(tmp_path):
    _two_topic_bag(tmp_path / "bag", ["/image", "/perception_node/debug_image"], 3)
    echo = _Echo(lose=0)
    try:
        with spun_node("debug_replay") as node:
            report = replay_bag(node, tmp_path / "bag", timeout_s=10.0)
            assert report.skipped_topics == {"/perception_node/debug_image": "the node's debug images"}
            assert (report.frames_published, report.outputs_received, echo.received) == (3, 3, 3)
            with pytest.raises(Exception, match="nobody subscribes to '/perception_node/debug_image'"):
                replay_bag(node, tmp_path / "bag", topics=["/perception_node/debug_image"], wait_for_subscriber_s=0.5)
    finally:
        echo.close()
    _two_topic_bag(tmp_path / "only_debug", ["/perception_node/debug_image"], 1)
    with spun_node("debug_replay") as node, pytest.raises(BagError, match=r"no camera pictures: /perception_node/debug_image \(the node's debug images\).*--topic"):
        replay_bag(node, tmp_path / "only_debug")


def test_training_and_calibration_read_the_cameras_of_a_node_recording_not_its_debug_images(tmp_path):
    """A `record` bag holds the node's debug images beside the camera: profiling it for training, counting it for
    the gate and drawing 8-bit calibration frames from it read the cameras only, one sequence per camera."""
    from adaptive_perception.bag import image_count, read_images
    from adaptive_perception.training.profile import bag_frames
    from adaptive_perception.training.quantize import bag_frames as calibration_frames

    _two_topic_bag(tmp_path / "bag", ["/cam_b", "/cam_a", "/perception_node/debug_image"], 3)
    assert image_count(tmp_path / "bag") == 6
    assert sorted(i.topic for i in read_images(tmp_path / "bag")) == ["/cam_a"] * 3 + ["/cam_b"] * 3
    frames = list(bag_frames([tmp_path / "bag", tmp_path / "bag"], None, False))
    assert [sequence for _, sequence, _, _ in frames] == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3  # per bag and camera
    assert [stamp for _, _, stamp, _ in frames[:6]] == [stamp for stamp, _ in _frames(3)] * 2
    np.testing.assert_array_equal(frames[1][0], _frames(3)[1][1])
    assert len(calibration_frames(tmp_path / "bag", 100)) == 6
    assert [s for _, s, _, _ in bag_frames([tmp_path / "bag"], "/cam_b", False)] == [0, 0, 0]  # a named topic only
    _two_topic_bag(tmp_path / "only_debug", ["/perception_node/debug_image"], 1)
    for read in (image_count, lambda bag: next(read_images(bag)), lambda bag: next(bag_frames([bag], None, False))):
        with pytest.raises(BagError, match=r"holds no camera pictures: /perception_node/debug_image \(the node's debug "
                                           r"images\); record the camera's topic"):
            read(tmp_path / "only_debug")
    assert len(list(read_images(tmp_path / "only_debug", ["/perception_node/debug_image"]))) == 1  # named: read


def test_a_replay_that_published_nothing_fails_and_took_no_time(tmp_path, capsys):
    """A bag whose every frame the node's decoder refuses (a 32FC1 stream remapped to the camera) exited 0 with
    wall_s -60979."""
    from adaptive_perception.cli import main

    _bag_with_bad_frames(tmp_path / "bag", "/cam/image_raw", _frames(2), bad=(0, 1))
    echo = _Echo(lose=0)
    try:
        assert main(["replay", str(tmp_path / "bag"), "--remap", "/cam/image_raw:=/image", "--timeout", "5"]) == 1
    finally:
        echo.close()
    out, err = capsys.readouterr()
    assert "frames_published: 0" in out and "wall_s: 0.00" in out and echo.received == 0
    assert "no frame published: every frame on the topics replayed is one the node's decoder refuses" in err


def _camera_rig_bag(path: Path, count: int) -> None:
    """What a depth camera's driver and image_transport record: colour raw and its compressed copy, depth raw (16UC1)
    and compressedDepth, and an infrared topic declared but never published (sqlite3, as `ros2 bag record` writes)."""
    import cv2
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys.stores.ros2_jazzy import sensor_msgs__msg__CompressedImage as CompressedImage

    from adaptive_perception.bag import COMPRESSED_TYPE, IMAGE_TYPE, TYPESTORE, image_message

    with Writer(path, version=9, storage_plugin=StoragePlugin.SQLITE3) as writer:
        topics = {"/cam/color/image_raw": IMAGE_TYPE, "/cam/color/image_raw/compressed": COMPRESSED_TYPE,
                  "/cam/depth/image_rect_raw": IMAGE_TYPE, "/cam/depth/image_rect_raw/compressedDepth": COMPRESSED_TYPE,
                  "/cam/infra1/image_rect_raw": IMAGE_TYPE}
        connections = {t: writer.add_connection(t, kind, typestore=TYPESTORE) for t, kind in topics.items()}
        for stamp, rgb in _frames(count):
            colour = image_message(rgb, stamp, "cam")
            depth = image_message(rgb, stamp, "cam")
            depth.encoding, depth.step = "16UC1", rgb.shape[1] * 2
            depth.data = np.ascontiguousarray(rgb[:, :, :2]).reshape(-1)  # 2 bytes a pixel
            jpeg = CompressedImage(header=colour.header, format="rgb8; jpeg compressed bgr8",
                                   data=np.frombuffer(cv2.imencode(".jpg", rgb[:, :, ::-1])[1].tobytes(), np.uint8))
            packed = CompressedImage(header=colour.header, format="16UC1; compressedDepth png", data=jpeg.data)
            for topic, message in (("/cam/color/image_raw", colour), ("/cam/color/image_raw/compressed", jpeg),
                                   ("/cam/depth/image_rect_raw", depth),
                                   ("/cam/depth/image_rect_raw/compressedDepth", packed)):
                writer.write(connections[topic], stamp, TYPESTORE.serialize_cdr(message, topics[topic]))


def test_depth_streams_compressed_copies_and_silent_topics_are_not_cameras(tmp_path, capsys):
    """A colour-and-depth recording was read as two cameras (training, retraining and 8-bit calibration took the
    depth images for pictures, and the compressed copy of the colour camera for a third one), and replay waited
    15 s for a subscriber on the depth topic, then on an infrared topic that never published."""
    from adaptive_perception.bag import camera_counts, camera_topics, image_topics
    from adaptive_perception.training.profile import bag_frames
    from adaptive_perception.training.quantize import bag_frames as calibration_frames

    _camera_rig_bag(tmp_path / "rig", 3)
    left_out = {"/cam/color/image_raw/compressed": "the compressed copy of /cam/color/image_raw",
                "/cam/depth/image_rect_raw": "depth (16UC1)",
                "/cam/depth/image_rect_raw/compressedDepth": "depth (16UC1; compressedDepth png)",
                "/cam/infra1/image_rect_raw": "no messages"}
    assert camera_topics(tmp_path / "rig", image_topics(tmp_path / "rig")) == (["/cam/color/image_raw"], left_out)
    assert camera_counts(tmp_path / "rig") == {"/cam/color/image_raw": 3}
    frames = list(bag_frames([tmp_path / "rig"], None, False))
    assert [sequence for _, sequence, _, _ in frames] == [0, 0, 0]
    np.testing.assert_array_equal(frames[2][0], _frames(3)[2][1])  # the colour camera's own pixels
    assert capsys.readouterr().out.startswith(f"bag '{tmp_path / 'rig'}': reading /cam/color/image_raw; left out "
                                              "/cam/color/image_raw/compressed (the compressed copy of")
    assert len(calibration_frames(tmp_path / "rig", 100)) == 3
    assert "calibrating on its cameras; left out /cam/color/image_raw/compressed" in capsys.readouterr().out
    # a bag of a newer rosbag2 is named as such, not as damaged

    metadata = tmp_path / "rig" / "metadata.yaml"
    metadata.write_text(re.sub(r"version: \d+", "version: 99", metadata.read_text(), count=1))
    with pytest.raises(BagError, match="Rosbag2 version 99 not supported.*written by a newer rosbag2 than this reader"):
        image_topics(tmp_path / "rig")
    metadata.write_text(re.sub(r"version: 99", "version: 9", metadata.read_text(), count=1))
    # a 16-bit thermal camera is a camera; a depth stream through the plain compressed transport is depth; a
    # compressed topic whose raw topic holds nothing is the camera (it was refused as a copy of an empty topic)
    import cv2
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys.stores.ros2_jazzy import sensor_msgs__msg__CompressedImage as CompressedImage

    from adaptive_perception.bag import COMPRESSED_TYPE, IMAGE_TYPE, TYPESTORE, image_message

    with Writer(tmp_path / "more", version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        kinds = {"/thermal/image_raw": IMAGE_TYPE, "/cam/depth/compressed": COMPRESSED_TYPE,
                 "/front/image_raw": IMAGE_TYPE, "/front/image_raw/compressed": COMPRESSED_TYPE}
        connections = {t: writer.add_connection(t, kind, typestore=TYPESTORE) for t, kind in kinds.items()}
        for stamp, rgb in _frames(2):
            thermal = image_message(rgb, stamp, "cam")
            thermal.encoding, thermal.step = "16UC1", rgb.shape[1] * 2
            thermal.data = np.ascontiguousarray(rgb[:, :, :2]).reshape(-1)
            png = np.frombuffer(cv2.imencode(".png", rgb[:, :, 0])[1].tobytes(), np.uint8)
            writer.write(connections["/thermal/image_raw"], stamp, TYPESTORE.serialize_cdr(thermal, IMAGE_TYPE))
            for topic, kind in (("/cam/depth/compressed", "16UC1; png compressed"),
                                ("/front/image_raw/compressed", "png")):
                writer.write(connections[topic], stamp, TYPESTORE.serialize_cdr(
                    CompressedImage(header=thermal.header, format=kind, data=png), COMPRESSED_TYPE))
    assert camera_topics(tmp_path / "more", image_topics(tmp_path / "more")) == (
        ["/front/image_raw/compressed", "/thermal/image_raw"],
        {"/cam/depth/compressed": "depth (16UC1; png compressed)", "/front/image_raw": "no messages"})
    # named, a depth topic is still read (the user asked for it)
    assert len(list(bag_frames([tmp_path / "rig"], "/cam/depth/image_rect_raw", False))) == 3
    echo = _Echo(lose=0)
    try:
        with spun_node("rig_replay") as node:
            report = replay_bag(node, tmp_path / "rig", timeout_s=10.0, remap={"/cam/color/image_raw": "/image"},
                                wait_for_subscriber_s=5.0)
        assert report.skipped_topics == left_out
        assert (report.frames_published, report.outputs_received, echo.received) == (3, 3, 3)
    finally:
        echo.close()


def _bag_with_bad_frames(path: Path, topic: str, frames: list[tuple[int, np.ndarray]], bad: tuple[int, ...],
                         cut: tuple[int, ...] = ()) -> None:
    """An MCAP bag of rgb8 frames where the frames at the `bad` indices carry an encoding the node does not read,
    and those at `cut` are messages cut to 30 bytes (no Image can be read from them)."""
    import dataclasses

    from rosbags.rosbag2 import StoragePlugin, Writer

    from adaptive_perception.bag import IMAGE_TYPE, TYPESTORE, image_message

    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection(topic, IMAGE_TYPE, typestore=TYPESTORE)
        for i, (stamp, rgb) in enumerate(frames):
            msg = image_message(rgb, stamp, "cam")
            if i in bad:
                msg = dataclasses.replace(msg, encoding="weird42")
            cdr = TYPESTORE.serialize_cdr(msg, IMAGE_TYPE)
            writer.write(conn, stamp, cdr[:30] if i in cut else cdr)


def test_lockstep_leaves_out_a_frame_the_node_cannot_decode_instead_of_waiting_for_an_answer(context, peer_model,
                                                                                             tmp_path):
    """Each such frame cost the whole --timeout and was counted as one, as if a tier were slow; a malformed message
    (cut short) ended the replay with a rosbags traceback."""
    frames = _frames(5)
    _bag_with_bad_frames(tmp_path / "bag", "/cam/image_raw", frames, bad=(0,), cut=(3,))
    graph = Graph(context, {"models.nano": str(peer_model), "models.small": "", "models.large": "",
                            "routing_mode": "fixed:nano", "image_topics": ["image"], "warmup_runs": 0,
                            "providers": ["CPUExecutionProvider"]})
    try:
        assert graph.transition("configure") and graph.transition("activate")
        report = replay_bag(graph.driver, tmp_path / "bag", remap={"/cam/image_raw": "image"}, timeout_s=60)
        assert (report.frames_published, report.outputs_received, report.undecodable, report.timeouts) == (3, 3, 2, 0)
        assert {d.header.stamp.sec * 10**9 + d.header.stamp.nanosec for d in graph.detections} == \
            {frames[i][0] for i in (1, 2, 4)}
        assert graph.node.totals().failed == 0  # never sent
        # fast mode sends them (the node counts them); a malformed last frame left replay waiting out --timeout
        # for the answer of a frame the node never answers
        _bag_with_bad_frames(tmp_path / "fast", "/cam/image_raw", frames, bad=(), cut=(4,))
        started = time.monotonic()
        report = replay_bag(graph.driver, tmp_path / "fast", ReplayMode.FAST, remap={"/cam/image_raw": "image"},
                            timeout_s=30)
        assert time.monotonic() - started < 15 and report.frames_published == 5
        assert wait_until(lambda: graph.node.totals().failed == 1, 5)  # the malformed one, counted as truncated
        # and so did a last frame that reads but does not decode (an encoding the node refuses)
        _bag_with_bad_frames(tmp_path / "fast_odd", "/cam/image_raw", frames, bad=(4,))
        started = time.monotonic()
        report = replay_bag(graph.driver, tmp_path / "fast_odd", ReplayMode.FAST, remap={"/cam/image_raw": "image"},
                            timeout_s=30)
        assert time.monotonic() - started < 15 and report.frames_published == 5
        assert wait_until(lambda: graph.node.totals().failed == 2, 5)
    finally:
        graph.close()


def test_training_and_calibration_leave_out_frames_the_node_cannot_decode_and_say_so(tmp_path, capsys):
    """One frame in an encoding the node does not read ended `train profile --source bags` (and `models quantize
    --bag`) with a decode error naming neither bag nor frame; the node skips such a frame and goes on. A malformed
    message (cut short) ended them with a rosbags traceback."""
    from adaptive_perception.training.profile import bag_frames
    from adaptive_perception.training.quantize import bag_frames as calibration_frames

    frames = _frames(4)
    _bag_with_bad_frames(tmp_path / "bag", "/cam", frames, bad=(1,), cut=(2,))
    read = []
    profiled = list(bag_frames([tmp_path / "bag"], None, False, read))
    assert [stamp for _, _, stamp, _ in profiled] == [frames[0][0], frames[3][0]]
    assert read == [{"bag": str(tmp_path / "bag"), "camera": "/cam", "frames": 2, "undecodable": 2}]  # for MLflow
    np.testing.assert_array_equal(profiled[1][0], frames[3][1])
    said = capsys.readouterr().out
    assert f"bag '{tmp_path / 'bag'}', camera '/cam': 2 frames the node's decoder refuses left out, as the node skips " \
           "them (first: message 1: image encoding 'weird42' is not supported" in said
    assert len(calibration_frames(tmp_path / "bag", 100)) == 2
    assert f"bag '{tmp_path / 'bag'}': 2 of the 4 frames drawn cannot be decoded and are left out (first: message 1:" \
        in capsys.readouterr().out


def test_replay_names_a_remap_of_a_topic_the_bag_lacks_and_a_type_the_node_does_not_read(tmp_path):
    write_image_bag(tmp_path / "bag", _frames(1), "/cam/image_raw")
    with spun_node("remap_replay") as node, \
            pytest.raises(BagError, match=r"--remap names \['cam/image_raw'\].*'/cam/image_raw'.*leading '/'"):
        replay_bag(node, tmp_path / "bag", remap={"cam/image_raw": "image"})
    echo = _Echo(lose=0, compressed=True)  # reads CompressedImage on 'image'; the bag holds Image
    try:
        with spun_node("type_replay") as node, pytest.raises(
                Exception, match=r"'/image' is read as \['sensor_msgs/msg/CompressedImage'\].*ends in 'compressed'"):
            replay_bag(node, tmp_path / "bag", remap={"/cam/image_raw": "image"}, wait_for_subscriber_s=1.0)
    finally:
        echo.close()


def test_replay_waits_for_the_subscribers_asked_for_so_a_late_recorder_gets_every_frame(tmp_path):
    from sensor_msgs.msg import Image

    write_image_bag(tmp_path / "bag", _frames(5), "/cam/image_raw")
    seen: list[int] = []
    with spun_node("too_few") as node, pytest.raises(Exception, match=r"has 1 of the 2 subscribers.*--subscribers"):
        echo = _Echo(lose=0, topic="image_alone")  # a topic of its own: a closed reader can linger in discovery
        try:
            replay_bag(node, tmp_path / "bag", remap={"/cam/image_raw": "image_alone"}, wait_for_subscriber_s=1.0,
                       subscribers=2)
        finally:
            echo.close()
    assert echo.received == 0

    def late_recorder() -> None:  # a second reader that joins a second after the replay started waiting
        time.sleep(1.0)
        with spun_node("late_recorder") as recorder:
            recorder.create_subscription(Image, "image", lambda m: seen.append(m.header.stamp.nanosec), 10)
            done.wait(30)

    done = threading.Event()
    thread = threading.Thread(target=late_recorder)
    thread.start()
    try:
        report, echo = _echo_replay(tmp_path, {"lose": 0}, timeout_s=10.0, subscribers=2)
        time.sleep(0.5)
    finally:
        done.set()
        thread.join()
    assert (report.frames_published, report.outputs_received, echo.received) == (5, 5, 5)
    assert sorted(seen) == [t % 10**9 for t, _ in _frames(5)], "the late reader got every frame"


def test_training_on_a_bag_without_camera_frames_names_the_bag(tmp_path):
    """It said only "the profile source yielded no frames", naming no bag."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    from adaptive_perception.bag import TYPESTORE
    from adaptive_perception.training.profile import bag_frames

    String = TYPESTORE.types["std_msgs/msg/String"]
    with Writer(tmp_path / "bag", version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection("/chatter", "std_msgs/msg/String", typestore=TYPESTORE)
        writer.write(conn, 10**9, TYPESTORE.serialize_cdr(String(data="hello"), "std_msgs/msg/String"))
    with pytest.raises(BagError, match=f"bag '{tmp_path / 'bag'}' has no sensor_msgs/Image or CompressedImage topic"):
        list(bag_frames([tmp_path / "bag"], None, False))


def test_a_complete_mcap_without_metadata_is_a_recording_and_one_file_of_a_split_one_is_refused(tmp_path):
    """An MCAP the mcap tool or a Foxglove export wrote (no metadata.yaml) was called a killed recording and left out
    of retraining; one file of a recording split in two was read alone, half the frames, without a word."""
    import shutil

    import yaml

    from adaptive_perception.bag import expand_bags, image_count, never_closed, read_images, unclosed_inside

    write_image_bag(tmp_path / "export", _frames(3), "/cam")
    (tmp_path / "export" / "metadata.yaml").unlink()
    assert not never_closed(tmp_path / "export")
    [mcap] = expand_bags([tmp_path / "export"])
    assert mcap.suffix == ".mcap" and image_count(mcap) == 3
    killed = tmp_path / "killed"
    killed.mkdir()
    data = mcap.read_bytes()
    (killed / "killed_0.mcap").write_bytes(data[: len(data) // 2])  # cut where the writer was killed: no footer
    assert never_closed(killed) and expand_bags([killed]) == [killed]
    # a folder of exports with one cut short: the complete ones are read, the folder named as holding an unclosed one
    shutil.copyfile(mcap, killed / "whole.mcap")
    assert expand_bags([killed]) == [killed / "whole.mcap"] and unclosed_inside(killed) == [killed]
    # a `record` output whose second segment lost its metadata.yaml (its MCAP complete): read, not dropped unsaid
    write_image_bag(tmp_path / "out" / "seg0", _frames(2), "/cam")
    shutil.copytree(tmp_path / "export", tmp_path / "out" / "seg1")
    assert expand_bags([tmp_path / "out"]) == [tmp_path / "out" / "seg0", tmp_path / "out" / "seg1" / mcap.name]
    # a recording of two files: each file alone is refused, naming the folder
    write_image_bag(tmp_path / "split", _frames(4), "/cam")
    [first] = (tmp_path / "split").glob("*.mcap")
    shutil.copyfile(first, tmp_path / "split" / "second.mcap")
    metadata = yaml.safe_load((tmp_path / "split" / "metadata.yaml").read_text())
    metadata["rosbag2_bagfile_information"]["relative_file_paths"].append("second.mcap")
    (tmp_path / "split" / "metadata.yaml").write_text(yaml.safe_dump(metadata))
    with pytest.raises(BagError, match=f"is one of the 2 files of the recording '{tmp_path / 'split'}'.*pass the "
                                       "folder"):
        next(read_images(first))


def test_recorded_pacing_keeps_to_the_bags_clock_without_accumulating(tmp_path):
    """Five frames logged 0.5 s apart at --rate 1: due at 0, 0.5, 1.0, 1.5, 2.0 s after the first. A pacing that
    restarts from each publish waits 0.5, 1.0, 1.5, 2.0 s (due cumulative) -> 0, 0.5, 1.5, 3.0, 5.0."""

    _stamped_bag(tmp_path / "bag", [1, 2, 3, 4, 5], log_ns=[10**9 + k * 500_000_000 for k in range(5)])
    sent: list[float] = []
    report, echo = _echo_replay(tmp_path, {"lose": 0}, mode=ReplayMode.RECORDED, rate=1.0, timeout_s=5.0,
                                on_frame=lambda i: sent.append(time.perf_counter()))
    assert report.frames_published == 5 and report.gaps_cut == 0
    offsets = [t - sent[0] for t in sent]
    for offset, due in zip(offsets, [0.0, 0.5, 1.0, 1.5, 2.0]):
        assert due - 0.005 <= offset <= due + 0.6, offsets
