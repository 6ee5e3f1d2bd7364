"""Recording the node's topics to MCAP and serving them live to Foxglove, on a real rclpy graph."""
from __future__ import annotations

import asyncio
import time
import json
import re
import struct

import numpy as np
import pytest
import websockets
from rosbags.highlevel import AnyReader

from adaptive_perception.live import LiveServer
from adaptive_perception.recording import SegmentedRecorder, ros_typestore
from adaptive_perception.ros.record import TopicRecorder, default_topics
from conftest import unused_port
from rosgraph import Graph, image_msg, wait_until

STORE = ros_typestore()


def _graph(context, tier_models) -> Graph:
    graph = Graph(context, {**{f"models.{t}": str(p) for t, p in tier_models.items()}, "routing_mode": "fixed:small",
                            "policy": "", "providers": ["CPUExecutionProvider"], "warmup_runs": 0})
    assert graph.transition("configure") and graph.transition("activate")
    graph.wait_for_image_subscriber()
    return graph


def test_the_recording_holds_every_message_type_with_typed_fields(context, tier_models, regime_frames, tmp_path):
    graph = _graph(context, tier_models)
    topics = default_topics(["/image"], graph.name)
    recorder = SegmentedRecorder(tmp_path / "rec", STORE, segment_s=600)
    recording = TopicRecorder(graph.driver, topics, recorder)
    try:
        assert wait_until(lambda: recording.discover() or len(recording.types) == len(topics), 10)
        assert wait_until(lambda: graph.node._debug_pubs[1].get_subscription_count() > 0, 10)
        for sec in (1, 2, 3):
            assert graph.send_lockstep(image_msg(regime_frames["dense"], sec=sec))
            # the debug image is drawn in a thread of its own (only the newest frame): each drawn before the next
            assert wait_until(lambda: recording.discover() or
                              recording.counts["/debug_image/compressed"] == sec, 10), recording.counts
        assert wait_until(lambda: recording.discover() or recording.counts["/routing"] == 3, 10)
        assert wait_until(lambda: recording.counts["/diagnostics"] >= 1 and
                          recording.counts["/debug_image/compressed"] == 3, 10)
        recording.stop()  # its subscriptions stay until the node goes; what they still deliver is left out
        assert graph.send_lockstep(image_msg(regime_frames["dense"], sec=4))
        time.sleep(0.5)
        assert recording.counts["/routing"] == 3 and recording.counts["/detections"] == 3
    finally:
        recording.stop()
        recorder.close()
        graph.close()
    with AnyReader(recorder.closed_segments) as reader:
        types = {c.topic: c.msgtype for c in reader.connections}
        messages = {}
        for connection, _, raw in reader.messages():
            messages.setdefault(connection.topic, []).append(reader.deserialize(raw, connection.msgtype))
    assert types == {"/image": "sensor_msgs/msg/Image", "/detections": "vision_msgs/msg/Detection2DArray",
                     "/routing": "adaptive_perception_msgs/msg/RoutingDecision",
                     "/debug_image/compressed": "sensor_msgs/msg/CompressedImage",
                     "/detections_marker": "visualization_msgs/msg/ImageMarker",
                     "/diagnostics": "diagnostic_msgs/msg/DiagnosticArray"}
    assert [m.header.stamp.sec for m in messages["/image"]] == [1, 2, 3]
    assert [m.tier_name for m in messages["/routing"]] == ["small"] * 3
    assert all(m.frame_age_ms > 0 and m.total_ms > 0 for m in messages["/routing"])
    names = {r.hypothesis.class_id.split("-")[0] for d in messages["/detections"] for det in d.detections for r in det.results}
    assert names == {"small"}  # typed all the way down: the class names of the small tier's file
    assert np.array_equal(np.frombuffer(bytes(messages["/image"][0].data), np.uint8), regime_frames["dense"].reshape(-1))
    assert [m.format for m in messages["/debug_image/compressed"]] == ["jpeg"] * 3
    assert any(s.name.endswith("camera /image") for d in messages["/diagnostics"] for s in d.status)
    # the boxes again as Foxglove's overlay on /image: each box's four edges, in the colour of the tier that ran
    # (small's orange: 255, 190, 0), stamped as its frame
    assert [m.header.stamp.sec for m in messages["/detections_marker"]] == [1, 2, 3]
    for detections, marker in zip(messages["/detections"], messages["/detections_marker"]):
        assert marker.type == 2 and (marker.outline_color.r, marker.outline_color.g, marker.outline_color.b) == \
            pytest.approx((1.0, 190 / 255, 0.0))
        edges = np.array([(p.x, p.y) for p in marker.points]).reshape(-1, 8, 2)
        boxes = [(b.center.position.x - b.size_x / 2, b.center.position.y - b.size_y / 2,
                  b.center.position.x + b.size_x / 2, b.center.position.y + b.size_y / 2)
                 for b in (d.bbox for d in detections.detections)]
        assert len(boxes) > 0 and len(edges) == len(boxes)
        for (x1, y1, x2, y2), box in zip(boxes, edges):
            np.testing.assert_allclose(box, [(x1, y1), (x2, y1), (x2, y1), (x2, y2), (x2, y2), (x1, y2), (x1, y2),
                                             (x1, y1)], atol=1e-3)


def test_the_default_topics_follow_the_nodes_namespace_and_its_cameras(context, tier_models, tmp_path):
    """A node in /robot1 publishes /robot1/detections, which the defaults missed ("never seen on the graph"); with
    several cameras they took the combined debug image (the cameras in turn) and no camera's own outputs."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    cameras = ["/cam_a/image_raw", "/cam_b/image_raw"]
    graph = Graph(context, {**{f"models.{t}": str(p) for t, p in tier_models.items()}, "routing_mode": "fixed:small",
                            "policy": "", "providers": ["CPUExecutionProvider"], "warmup_runs": 0,
                            "image_topics": cameras}, namespace="/robot1")
    assert graph.transition("configure") and graph.transition("activate")
    topics = default_topics(cameras, graph.fqn)
    node = f"/robot1/{graph.name}"
    assert topics == [*cameras, "/robot1/detections", "/robot1/routing",
                      *(f"{node}{c}/{leaf}" for c in cameras for leaf in ("detections", "routing", "detections_marker",
                                                                          "debug_image/compressed")),
                      "/diagnostics"]
    # without --camera: the node's default camera, `image`, in its namespace (it was /image)
    assert default_topics(None, "/robot1/perception_node")[:3] == ["/robot1/image", "/robot1/detections",
                                                                   "/robot1/routing"]
    recorder = SegmentedRecorder(tmp_path / "rec", STORE, segment_s=600)
    recording = TopicRecorder(graph.driver, topics, recorder)
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    publishers = {c: graph.driver.create_publisher(Image, c, reliable) for c in cameras}
    try:
        assert wait_until(lambda: recording.discover() or len(recording.types) == len(topics), 10), \
            set(topics) - set(recording.types)
        debug = [graph.node._camera_pubs[c][3] for c in cameras]
        assert wait_until(lambda: all(p.get_subscription_count() for p in [*publishers.values(), *debug]), 10)
        for sec in (1, 2):
            for index, camera in enumerate(cameras):
                publishers[camera].publish(image_msg(np.full((48, 64, 3), 60 + index, np.uint8), sec=sec,
                                                     frame_id=camera.split("/")[1]))
                assert wait_until(lambda: recording.counts[f"{node}{camera}/debug_image/compressed"] == sec, 10)
        assert wait_until(lambda: recording.counts["/robot1/routing"] == 4, 10)
    finally:
        recording.stop()
        recorder.close()
        graph.close()
    with AnyReader(recorder.closed_segments) as reader:
        frames = {}
        for connection, _, raw in reader.messages():
            if connection.topic != "/diagnostics":
                frames.setdefault(connection.topic, []).append(
                    reader.deserialize(raw, connection.msgtype).header.frame_id)
    assert frames["/robot1/detections"].count("cam_a") == frames["/robot1/detections"].count("cam_b") == 2
    for camera in cameras:
        own = camera.split("/")[1]
        for leaf in ("detections", "routing", "detections_marker", "debug_image/compressed"):
            assert frames[f"{node}{camera}/{leaf}"] == [own, own], (camera, leaf)
        assert frames[camera] == [own, own]


async def _receive_detections(port: int, count: int, timeout: float) -> list[tuple[int, bytes]]:
    """A Foxglove WebSocket client: subscribe to /detections once advertised, return (log time, payload)s."""
    got: list[tuple[int, bytes]] = []
    async with websockets.connect(f"ws://127.0.0.1:{port}", subprotocols=["foxglove.sdk.v1"]) as ws:
        async def run():
            async for frame in ws:
                if isinstance(frame, str):
                    message = json.loads(frame)
                    if message["op"] == "advertise":
                        for channel in message["channels"]:
                            if channel["topic"] == "/detections":
                                assert channel["encoding"] == "cdr" and channel["schemaEncoding"] == "ros2msg"
                                assert "BoundingBox2D" in channel["schema"]
                                await ws.send(json.dumps({"op": "subscribe",
                                                          "subscriptions": [{"id": 7, "channelId": channel["id"]}]}))
                elif frame[0] == 0x01:  # message data: opcode, subscription id, log time, payload
                    subscription, log_time = struct.unpack_from("<IQ", frame, 1)
                    assert subscription == 7
                    got.append((log_time, frame[13:]))
                    if len(got) == count:
                        return
        await asyncio.wait_for(run(), timeout)
    return got


def test_a_foxglove_client_receives_typed_detections_live(context, tier_models, regime_frames):
    graph = _graph(context, tier_models)
    live = LiveServer(STORE, port=unused_port())
    recording = TopicRecorder(graph.driver, ["/detections", "/routing"], live=live)
    try:
        assert wait_until(lambda: recording.discover() or len(recording.types) == 2, 10)
        loop = asyncio.new_event_loop()
        client = loop.run_in_executor(None, lambda: asyncio.run(_receive_detections(live.port, 2, 30)))
        # the client connects and subscribes (a fixed second's wait, under load, sent the frames before it had)
        assert wait_until(lambda: "/detections" in live._channels and live._channels["/detections"].has_sinks(), 30)
        for sec in (5, 6):
            assert graph.send_lockstep(image_msg(regime_frames["dense"], sec=sec))
        received = loop.run_until_complete(client)
        loop.close()
    finally:
        recording.stop()
        live.close()
        graph.close()
    decoded = [STORE.deserialize_cdr(payload, "vision_msgs/msg/Detection2DArray") for _, payload in received]
    assert [d.header.stamp.sec for d in decoded] == [5, 6]
    sent = graph.detections[-2:]
    assert [len(d.detections) for d in decoded] == [len(d.detections) for d in sent]
    first = decoded[0].detections[0]
    assert first.results[0].hypothesis.class_id == sent[0].detections[0].results[0].hypothesis.class_id
    assert abs(first.bbox.size_x - sent[0].detections[0].bbox.size_x) < 1e-9


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT-ignored-at-start", "SIGTERM-sim-time"])
def test_record_stopped_by_sigterm_closes_its_open_segment(context, tmp_path, signum):
    """SIGTERM (docker stop, systemd) killed `record` with its segment open: a 0-byte MCAP, no metadata. Started as
    a shell's background job (`record ... &`, SIGINT ignored), `kill -INT` left it running. With --use-sim-time the
    log times are /clock's (it could not run on a bag's clock at all)."""
    import os
    import signal
    import subprocess
    import sys

    import rclpy
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image

    out = tmp_path / "rec"
    log = open(tmp_path / "record.log", "w")
    # a relative camera name, as ROS resolves it: it was compared as written and nothing was recorded
    sim = ["--use-sim-time"] if "sim-time" in signum else []
    record = subprocess.Popen([sys.executable, "-m", "adaptive_perception.cli", "record", "--out", str(out), "--camera",
                               "sigterm_cam", *sim], stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ),
                              preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if "SIGINT" in signum
                              else None)
    publisher_node = Node("sigterm_camera", context=context)
    publisher = publisher_node.create_publisher(Image, "/sigterm_cam", QoSProfile(depth=10,
                                                reliability=ReliabilityPolicy.RELIABLE))
    clock = publisher_node.create_publisher(Clock, "/clock", 10)
    try:
        assert wait_until(lambda: publisher.get_subscription_count() > 0, 30), (tmp_path / "record.log").read_text()
        if sim:
            assert wait_until(lambda: clock.get_subscription_count() > 0, 30)
        time.sleep(1.0)
        for sec in range(1, 6):
            clock.publish(Clock(clock=rclpy.time.Time(seconds=5000 + sec).to_msg()))  # the bag's time
            time.sleep(0.1)
            publisher.publish(image_msg(np.full((24, 32, 3), sec, np.uint8), sec=sec))
            time.sleep(0.1)
        time.sleep(1.0)
        # no node runs here: its topics are named missing early (it was said only at the end of the recording)
        assert wait_until(lambda: re.search(r"not on the graph after 5 s: \[.*'/detections', '/routing', "
                                            r"'/detections_marker', '/debug_image/compressed', "
                                            r"'/diagnostics'\]; recorded "
                                            "once they appear", (tmp_path / "record.log").read_text()), 15), \
            (tmp_path / "record.log").read_text()
        record.send_signal(signal.SIGINT if "SIGINT" in signum else signal.SIGTERM)
        assert record.wait(30) == 0, (tmp_path / "record.log").read_text()
    finally:
        if record.poll() is None:
            record.kill()
        log.close()
        publisher_node.destroy_node()
    segments = sorted(p.parent for p in out.rglob("metadata.yaml"))
    assert segments, (tmp_path / "record.log").read_text()
    with AnyReader(segments, default_typestore=STORE) as reader:
        seconds, logged = zip(*[(reader.deserialize(raw, c.msgtype).header.stamp.sec, t)
                                for c, t, raw in reader.messages() if c.topic == "/sigterm_cam"])
    assert seconds == (1, 2, 3, 4, 5)
    if sim:
        assert [t / 1e9 for t in logged] == [5001.0, 5002.0, 5003.0, 5004.0, 5005.0]
    else:
        assert all(abs(t / 1e9 - time.time()) < 300 for t in logged)
    assert f"closed {segments[0]}" in (tmp_path / "record.log").read_text(), "the segment closed at the stop is named"


def test_record_on_a_disk_that_refuses_writes_says_so_goes_on_and_exits_1(context, tmp_path):
    """On a full disk the first failed write killed record's executor thread: nothing more was recorded, the process
    ran on, and its summary said nothing of the loss (exit 0). The file size limit stands in for the disk (writes
    past it fail, as a full disk's do)."""
    import os
    import resource
    import signal
    import subprocess
    import sys

    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (3 << 20, 3 << 20))
    out, log_path = tmp_path / "rec", tmp_path / "record.log"
    with open(log_path, "w") as log:
        record = subprocess.Popen([sys.executable, "-m", "adaptive_perception.cli", "record", "--out", str(out),
                                   "--camera", "disk_cam"], stdout=log, stderr=subprocess.STDOUT,
                                  env=dict(os.environ), preexec_fn=limit_file_size)
    publisher_node = Node("disk_camera", context=context)
    publisher = publisher_node.create_publisher(Image, "/disk_cam", QoSProfile(depth=50,
                                                reliability=ReliabilityPolicy.RELIABLE))
    try:
        assert wait_until(lambda: publisher.get_subscription_count() > 0, 30), log_path.read_text()
        time.sleep(1.0)
        sec = 0
        while "NOT RECORDED" not in log_path.read_text() and sec < 60:
            sec += 1
            publisher.publish(image_msg(np.full((480, 640, 3), sec, np.uint8), sec=sec))
            time.sleep(0.1)
        assert "NOT RECORDED: 1 messages so far could not be written (OSError" in log_path.read_text(), \
            log_path.read_text()
        time.sleep(1.5)  # past the recorder's pause after a failure
        for late in (1001, 1002):  # small frames, after the failure: recorded into a new segment
            publisher.publish(image_msg(np.full((8, 8, 3), 7, np.uint8), sec=late))
            time.sleep(0.3)
        time.sleep(0.5)
        record.send_signal(signal.SIGINT)
        assert record.wait(30) == 1, log_path.read_text()
    finally:
        if record.poll() is None:
            record.kill()
        publisher_node.destroy_node()
    text = log_path.read_text()
    assert re.search(r"NOT RECORDED: \d+ messages could not be written and \d+ written before a failure are in "
                     r"segments it left unclosed \(no index: .*\): \['.*recording_0001'.*\] \(last error: OSError",
                     text), text
    last = sorted(p for p in out.iterdir())[-1]
    with AnyReader([last], default_typestore=STORE) as reader:
        assert [reader.deserialize(raw, c.msgtype).header.stamp.sec for c, _, raw in reader.messages()] == [1001, 1002]
