"""What an operator sees of a running node, on a real rclpy graph: /diagnostics levels and values, frame age,
bad input by kind, tier failures, incompatible QoS, and the Prometheus endpoint scraped over HTTP."""
from __future__ import annotations

import os
import re
import threading
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from rcl_interfaces.msg import Log
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from vision_msgs.msg import Detection2DArray

from adaptive_perception_msgs.msg import RoutingDecision
from adaptive_perception_msgs.srv import SetRoutingMode
from rosgraph import Graph, image_msg, wait_until

OK, WARN, ERROR = b"\x00", b"\x01", b"\x02"


def _noise(seed: int, shape=(96, 128, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _graph(context, tier_models, camera: str = "image", **parameters) -> Graph:
    graph = Graph(context, {**{f"models.{t}": str(p) for t, p in tier_models.items()}, "routing_mode": "fixed:small",
                            "policy": "", "providers": ["CPUExecutionProvider"], "warmup_runs": 0, **parameters},
                  camera=camera)
    assert graph.transition("configure") and graph.transition("activate")
    if "image" in parameters.get("image_topics", ["image"]):
        graph.wait_for_image_subscriber()
    return graph


def _mode(graph: Graph, mode: str) -> None:
    assert graph.call(SetRoutingMode, "set_routing_mode", SetRoutingMode.Request(mode=mode)).success


def test_diagnostics_give_counts_shares_and_latency_per_camera_and_tier(context, tier_models):
    graph = _graph(context, tier_models, **{"diagnostics.frame_budget_ms": 5000.0})
    try:
        for sec in (1, 2, 3):
            assert graph.send_lockstep(image_msg(_noise(sec), sec=sec))
        _mode(graph, "fixed:large")
        assert graph.send_lockstep(image_msg(_noise(4), sec=4))
        camera = graph.status("camera /image", lambda v: v["frames_processed"] == "4")
        values = {kv.key: kv.value for kv in camera.values}
        assert camera.level == OK and camera.message == "frames processed"
        assert (values["frames_received"], values["frames_dropped"], values["frames_failed"]) == ("4", "0", "0")
        assert (values["nano_share"], values["small_share"], values["large_share"]) == ("0.00", "0.75", "0.25")
        assert values["nano_ms_p50"] == "nan" and float(values["small_ms_p50"]) > 0
        assert float(values["node_ms_p95"]) >= float(values["small_ms_p50"]) and values["qos_incompatible"] == "0"
        tiers = {t: {kv.key: kv.value for kv in graph.status(f"tier {t}").values} for t in ("nano", "small", "large")}
        assert [tiers[t]["frames"] for t in ("nano", "small", "large")] == ["0", "3", "1"]
        assert tiers["small"]["provider"] == "CPUExecutionProvider" and tiers["large"]["model"] == str(tier_models["large"])
        routing = {kv.key: kv.value for kv in graph.status("routing").values}
        assert routing == {"mode": "fixed:large", "policy_id": "", "drift_state": "unknown",
                           "drift_routing_statistics": "no drift monitor", "metrics": "off (metrics.port 0)",
                           "mlflow_run": "off", "evidence": "off"}
    finally:
        graph.close()


def test_frame_age_and_a_p95_past_the_frame_budget_warn(context, tier_models):
    graph = _graph(context, tier_models, **{"diagnostics.frame_budget_ms": 0.01})
    try:
        msg = image_msg(_noise(9), sec=0)
        stamp = graph.node.get_clock().now().nanoseconds - 700_000_000  # taken 0.7 s ago
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        assert graph.send_lockstep(msg)
        assert wait_until(lambda: len(graph.routing) == 1, 5)
        assert 700.0 <= graph.routing[0].frame_age_ms < 700.0 + 5000.0
        assert graph.routing[0].drift_state == RoutingDecision.DRIFT_UNKNOWN
        camera = graph.status("camera /image", lambda v: v["frames_processed"] == "1")
        assert camera.level == WARN
        assert re.fullmatch(r"node time p95 [\d.]+ ms exceeds the frame budget 0\.0 ms", camera.message)
        values = {kv.key: kv.value for kv in camera.values}
        # taken when the detections leave, before the RoutingDecision (whose age is at its own publication)
        assert 700.0 <= float(values["frame_age_ms_p50"]) <= graph.routing[0].frame_age_ms + 0.05
        assert graph.routing[0].frame_age_ms - float(values["frame_age_ms_p50"]) < 100.0
    finally:
        graph.close()


def test_malformed_frames_are_counted_by_kind_logged_by_camera_and_the_next_good_frame_runs(context, tier_models,
                                                                                           capfd):
    graph = _graph(context, tier_models, image_topics=["image", "image/compressed"])
    try:
        good = image_msg(_noise(1), sec=1)

        def variant(sec: int, **fields) -> Image:
            msg = image_msg(_noise(1), sec=sec)
            for name, value in fields.items():
                setattr(msg, name, value)
            return msg

        bad = [variant(2, data=good.data[:1000]), variant(3, step=10),
               variant(4, width=100000, height=1, step=300000, data=bytes(300000)), variant(5, width=0),
               variant(6, encoding="32FC7\n[FATAL] tier large crashed\x1b[2J"), variant(7, data=good.data[:500])]
        for count, msg in enumerate(bad, start=1):
            graph.image_pub.publish(msg)
            assert wait_until(lambda: graph.node.totals().failed == count, 5), f"frame {count} not counted"
        jpeg = CompressedImage(format="jpeg", data=cv2.imencode(".jpg", _noise(2))[1].tobytes()[:40])
        jpeg.header.stamp.sec = 8
        assert wait_until(lambda: graph.compressed_pub.get_subscription_count() > 0, 10)
        graph.compressed_pub.publish(jpeg)
        assert wait_until(lambda: graph.node.totals().failed == 7, 5)
        assert graph.send_lockstep(good)
        assert [d.header.stamp.sec for d in graph.detections] == [1]
        camera = graph.status("camera /image", lambda v: v["frames_failed"] == "6")
        values = {kv.key: kv.value for kv in camera.values}
        assert {k: v for k, v in values.items() if k.startswith("failed_")} == {
            "failed_bad_size": "2", "failed_bad_step": "1", "failed_truncated": "2", "failed_unknown_encoding": "1"}
        assert camera.level == WARN and "bad frames (bad_size, bad_step, truncated, unknown_encoding)" in camera.message
        compressed = {kv.key: kv.value for kv in graph.status("camera /image/compressed").values}
        assert compressed["failed_corrupt_compressed"] == "1"
        skipped = [log.msg for log in graph.logs if "skipped" in log.msg]
        kinds = [re.search(r"skipped \((\w+)\)", text).group(1) for text in skipped]
        # every new kind is logged at once; a repeat within 5 s (width 0 after 100000x1, the second truncated
        # frame) is only counted
        assert sorted(kinds) == ["bad_size", "bad_step", "corrupt_compressed", "truncated", "unknown_encoding"]
        assert all("camera '/image" in text for text in skipped)
        # a publisher's encoding string is shown with its control characters escaped: it printed a fake log line
        odd = next(text for text in skipped if "unknown_encoding" in text)
        assert "32FC7\\n[FATAL] tier large crashed\\x1b[2J" in odd and "\n" not in odd and "\x1b" not in odd
        absurd = next(text for text in skipped if "100000x1" in text)
        assert "larger than 16384 pixels" in absurd and "cv2" not in absurd and "Assertion" not in absurd
        assert graph.state() == "active"
    finally:
        graph.close()
    # the closing record adds up: received = processed + dropped + failed (it left the failed frames out)
    assert ("shutting down; since configure '/image' 7 received, 1 processed, 0 dropped, 6 failed, 0 lost before the "
            "node; '/image/compressed' 1 received, 0 processed, 0 dropped, 1 failed, 0 lost before the node"
            ) in capfd.readouterr().err


def test_a_failing_tier_is_an_error_naming_it_while_the_other_tiers_serve(context, tier_models, regime_policy):
    graph = _graph(context, tier_models)
    try:
        # a real onnxruntime session of another graph: running it with the tier's input name raises
        graph.node.detectors["small"].session = ort.InferenceSession(str(regime_policy),
                                                                     providers=["CPUExecutionProvider"])
        graph.image_pub.publish(image_msg(_noise(3), sec=3))
        assert wait_until(lambda: graph.node.totals().failed == 1, 5)
        camera = graph.status("camera /image", lambda v: v["frames_failed"] == "1")
        assert camera.level == ERROR and camera.message == "tier small failed on recent frames"
        assert {kv.key: kv.value for kv in camera.values}["failed_tier_failed:small"] == "1"
        small = graph.status("tier small", lambda v: v["failures"] == "1")
        assert small.level == ERROR and graph.status("tier nano").level == OK
        assert any("skipped (tier_failed): tier 'small' failed" in log.msg for log in graph.logs)
        _mode(graph, "fixed:nano")
        assert graph.send_lockstep(image_msg(_noise(4), sec=4))
    finally:
        graph.close()


def test_an_incompatible_publisher_is_named_in_a_warning_and_counted(context, tier_models):
    graph = _graph(context, tier_models, **{"qos.reliability": "reliable"})
    try:
        graph.driver.create_publisher(Image, "image", QoSProfile(
            depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
        assert wait_until(lambda: any("offers a QoS this node's subscription cannot accept" in log.msg
                                      for log in graph.logs), 10)
        warning = next(log.msg for log in graph.logs if "cannot accept" in log.msg)
        assert "'/image'" in warning and "RELIABILITY" in warning and "qos.reliability=reliable" in warning
        graph.status("camera /image", lambda v: v["qos_incompatible"] == "1")
    finally:
        graph.close()


def _scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def _sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in the scrape")


def test_the_metrics_endpoint_counts_what_the_node_did(context, tier_models, free_port):
    graph = _graph(context, tier_models, **{"metrics.port": free_port})
    try:
        _mode(graph, "fixed:nano")
        for sec in (1, 2):
            assert graph.send_lockstep(image_msg(_noise(sec), sec=sec))
        _mode(graph, "fixed:large")
        assert graph.send_lockstep(image_msg(_noise(3), sec=3))
        assert wait_until(lambda: graph.node.totals().processed == 3, 5)
        text = _scrape(free_port)
        assert _sample(text, "adaptive_perception_frames_processed_total", camera="/image", tier="nano") == 2
        assert _sample(text, "adaptive_perception_frames_processed_total", camera="/image", tier="large") == 1
        assert _sample(text, "adaptive_perception_frames_processed_total", camera="/image", tier="small") == 0
        assert _sample(text, "adaptive_perception_frames_received_total", camera="/image") == 3
        assert _sample(text, "adaptive_perception_node_seconds_count", camera="/image", tier="nano") == 2
        node_seconds = _sample(text, "adaptive_perception_node_seconds_sum", camera="/image", tier="nano")
        # node time is message in to detections out: more than the tier's inference, less than every step on the
        # frame (total_ms: the drift monitor's update and the RoutingDecision come after the detections)
        first_two = graph.routing[:2]
        # (0.01 ms clear of it: a node time taken at the end would match total_ms up to float32 rounding)
        assert sum(d.inference_ms for d in first_two) < node_seconds * 1e3 < sum(d.total_ms for d in first_two) - 0.01
        assert _sample(text, "adaptive_perception_policy_info", mode="fixed:large") == 1
        routing = {kv.key: kv.value for kv in graph.status("routing").values}
        assert routing["metrics"] == f"http://127.0.0.1:{free_port}/metrics"
        assert graph.transition("deactivate") and graph.transition("cleanup")
        time.sleep(0.2)
        with pytest.raises(urllib.error.URLError):
            _scrape(free_port)  # cleanup frees the port
    finally:
        graph.close()


def test_a_metrics_port_in_use_costs_the_metrics_not_the_perception(context, tier_models, free_port):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", free_port))
        taken.listen()
        graph = _graph(context, tier_models, **{"metrics.port": free_port})
        try:
            assert graph.send_lockstep(image_msg(_noise(1), sec=1))
            routing = graph.status("routing")
            assert routing.level == WARN and "not served: 127.0.0.1:" in {kv.key: kv.value for kv in routing.values}["metrics"]
            assert f"; metrics not served: 127.0.0.1:{free_port}" in routing.message  # the level says why
            assert any("set metrics.port to a free port" in log.msg for log in graph.logs)
            assert not any("set metrics.bind" in log.msg for log in graph.logs)
        finally:
            graph.close()
    # an address that is not this machine's: the fix is metrics.bind's, not the port's (it named the port)
    graph = _graph(context, tier_models, **{"metrics.port": free_port, "metrics.bind": "not an address"})
    try:
        assert graph.send_lockstep(image_msg(_noise(1), sec=1))
        def own() -> list[str]:  # this node's lines, not the node before's (/rosout keeps a history)
            return [log.msg for log in graph.logs if log.name == graph.name]

        assert wait_until(lambda: any("set metrics.bind to an address of this machine" in m for m in own()), 5)
        assert not any("set metrics.port" in m for m in own())
    finally:
        graph.close()


def test_another_node_of_the_same_name_on_the_graph_is_named_until_it_goes(context, tier_models):
    """Two nodes both named /perception_node: set-routing reached either at random and nothing said so."""
    from rclpy.node import Node

    graph = _graph(context, tier_models)
    try:
        said = f"1 other node(s) on the ROS graph are also named /{graph.name}"
        assert said not in graph.status("routing").message
        twin = Node(graph.name, context=context)  # the same name in the same (root) namespace
        assert wait_until(lambda: said in graph.status("routing").message, 10)
        assert graph.status("routing").level == WARN
        assert wait_until(lambda: any(log.msg.startswith(said) and log.level == 40 for log in graph.logs), 5)
        twin.destroy_node()
        assert wait_until(lambda: said not in graph.status("routing").message, 10)
    finally:
        graph.close()


def test_the_readme_topic_table_names_every_publisher_subscription_and_service_of_the_node(context, tier_models):
    from test_config import _readme_table

    listed = {name for cell in _readme_table("Topics and services") for name in re.findall(r"`([^`]+)`", cell)}
    graph = _graph(context, tier_models)
    try:
        node, name = graph.node, graph.name
        generic = {"/rosout", "/parameter_events", f"/{name}/transition_event"}
        publishers = {t for t, _ in node.get_publisher_names_and_types_by_node(name, "/")} - generic
        subscriptions = {t for t, _ in node.get_subscriber_names_and_types_by_node(name, "/")}
        services = {t.removeprefix(f"/{name}/") for t, _ in node.get_service_names_and_types_by_node(name, "/")}
        own_services = {s for s in services if not s.endswith("parameters") and "parameter" not in s
                        and s not in ("get_available_states", "get_available_transitions", "get_transition_graph",
                                      "get_type_description")}
        # the debug image beside detections, as DESIGN's topic table has it (it was private: ~/debug_image)
        assert publishers == {"/detections", "/routing", "/detections_marker", "/diagnostics", "/debug_image",
                              "/debug_image/compressed"}
        assert {"detections", "routing", "detections_marker", "/diagnostics", "debug_image",
                "debug_image/compressed"} <= listed
        assert subscriptions == {"/image"} and "image" in listed
        assert own_services == {"change_state", "get_state", "set_routing_mode", "load_policy"}
        assert {f"~/{s}" for s in own_services} <= listed
    finally:
        graph.close()


def test_the_debug_image_is_drawn_only_while_someone_subscribes(context, tier_models, regime_frames):
    from adaptive_perception.drawing import TIER_COLOURS

    graph = _graph(context, tier_models, routing_mode="fixed:large")
    try:
        assert graph.send_lockstep(image_msg(_noise(1, (240, 320, 3)), sec=1))
        time.sleep(0.3)
        assert graph.node.debug_rendered == 0  # nobody listens: nothing drawn
        raw, jpeg = [], []
        reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        graph.driver.create_subscription(Image, "/debug_image", raw.append, reliable)
        graph.driver.create_subscription(CompressedImage, "/debug_image/compressed", jpeg.append, reliable)
        pubs = graph.node._debug_pubs
        assert wait_until(lambda: all(p.get_subscription_count() for p in pubs), 10)
        frame = regime_frames["dense"]
        height, width = frame.shape[:2]
        assert graph.send_lockstep(image_msg(frame, sec=2))
        assert wait_until(lambda: raw and jpeg, 5)
        picture = np.frombuffer(bytes(raw[0].data), np.uint8).reshape(height, width, 3)
        assert (raw[0].header.stamp.sec, raw[0].encoding, jpeg[0].header.stamp.sec, jpeg[0].format) == (2, "rgb8", 2, "jpeg")
        boxes = graph.detections[-1].detections
        assert boxes, "the large tier finds objects on the dense frame"
        # the middle of each box's left edge is drawn in large's colour (unless another box's label covers it)
        edges = [tuple(picture[int(round(b.bbox.center.position.y)), int(round(b.bbox.center.position.x - b.bbox.size_x / 2))])
                 for b in boxes]
        assert np.mean([edge == TIER_COLOURS["large"] for edge in edges]) >= 0.7, edges
        changed = (picture != frame).any(axis=2)
        assert 0.005 < changed[30:].mean() < 0.5  # outlines and labels, the rest is the frame
        decoded = cv2.imdecode(np.frombuffer(bytes(jpeg[0].data), np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
        assert np.abs(decoded.astype(int) - picture.astype(int)).mean() < 12  # the same picture, jpeg-compressed
        assert graph.node.debug_rendered == 1
    finally:
        graph.close()


def test_each_camera_has_its_own_debug_image_and_the_combined_one_shows_them_in_turn(context, tier_models):
    """With several cameras the one debug image flipped between them frame by frame (Foxglove's Image panel and
    RViz showed both cameras alternating): each camera's newest frame now also goes to its own topics."""
    graph = _graph(context, tier_models, routing_mode="fixed:nano", image_topics=["front/image_raw", "rear/image_raw"])
    try:
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        got = {"front": [], "rear": [], "combined": [], "front_jpeg": []}
        for cam in ("front", "rear"):
            graph.driver.create_subscription(Image, f"/{graph.name}/{cam}/image_raw/debug_image", got[cam].append,
                                             reliable)
        graph.driver.create_subscription(CompressedImage, f"/{graph.name}/front/image_raw/debug_image/compressed",
                                         got["front_jpeg"].append, reliable)
        graph.driver.create_subscription(Image, "/debug_image", got["combined"].append, reliable)
        publishers = {cam: graph.driver.create_publisher(Image, f"{cam}/image_raw", reliable) for cam in ("front", "rear")}
        watched = [*graph.node._debug_pubs[:1], *(p for c in ("front", "rear") for p in
                                                   graph.node._camera_pubs[f"{c}/image_raw"][2:3]),
                   graph.node._camera_pubs["front/image_raw"][3]]
        assert wait_until(lambda: all(p.get_subscription_count() for p in [*publishers.values(), *watched]), 10)
        for sec in range(1, 4):
            for cam, shade in (("front", 90), ("rear", 170)):
                publishers[cam].publish(image_msg(np.full((120, 160, 3), shade, np.uint8), sec=sec, frame_id=cam))
                # one frame at a time: the renderer keeps only each camera's newest frame
                assert wait_until(lambda: len(got[cam]) == sec, 5), (cam, sec, {k: len(v) for k, v in got.items()})
        assert [(m.header.frame_id, m.header.stamp.sec) for m in got["front"]] == [("front", s) for s in (1, 2, 3)]
        assert [(m.header.frame_id, m.header.stamp.sec) for m in got["rear"]] == [("rear", s) for s in (1, 2, 3)]
        assert [m.header.frame_id for m in got["front_jpeg"]] == ["front"] * 3
        # the picture is the camera's own frame (what the boxes and banner leave of it), never the other camera's
        for cam, shade, other in (("front", 90, 170), ("rear", 170, 90)):
            grey = (np.frombuffer(bytes(got[cam][-1].data), np.uint8).reshape(120, 160, 3) == shade).all(axis=2)
            alien = (np.frombuffer(bytes(got[cam][-1].data), np.uint8).reshape(120, 160, 3) == other).all(axis=2)
            assert grey.mean() > 0.01 and not alien.any(), cam
        assert wait_until(lambda: len(got["combined"]) == 6, 5)
        assert [m.header.frame_id for m in got["combined"]] == ["front", "rear"] * 3
        assert graph.node.debug_rendered == 6  # drawn once a frame for all the topics that show it
    finally:
        graph.close()


def test_every_frame_is_accounted_for_across_deactivation(context, tier_models):
    """Frames waiting for a worker at deactivate were discarded uncounted (received > processed + dropped + failed,
    by 11 frames a camera in 25 cycles), and frames the publisher sent while the node was inactive, never on their
    way to it, were counted as lost before the node (150 after 5 s inactive), blaming the camera driver."""
    graph = _graph(context, tier_models, routing_mode="fixed:nano", image_topics=["front/image_raw", "rear/image_raw"],
                   workers=1)
    try:
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        publishers = {cam: graph.driver.create_publisher(Image, f"{cam}/image_raw", reliable) for cam in ("front", "rear")}
        assert wait_until(lambda: all(p.get_subscription_count() for p in publishers.values()), 10)
        frame = _noise(5, (240, 320, 3))
        for cycle in range(3):
            for sec in range(6):  # a burst on both cameras (within the readers' depth of 10): one worker, so
                # frames wait in the slot
                for cam, publisher in publishers.items():
                    publisher.publish(image_msg(frame, sec=100 * cycle + sec, frame_id=cam))
            assert wait_until(lambda: all(graph.node.counters[f"{c}/image_raw"].received >= 1 for c in publishers), 5)
            assert graph.transition("deactivate")
            for sec in range(20, 30):  # sent while inactive: never delivered, and no loss of the node's
                for cam, publisher in publishers.items():
                    publisher.publish(image_msg(frame, sec=100 * cycle + sec, frame_id=cam))
            assert graph.transition("activate")
            assert wait_until(lambda: all(p.get_subscription_count() for p in publishers.values()), 10)
        for cam, publisher in publishers.items():  # one last frame each, answered
            publisher.publish(image_msg(frame, sec=999, frame_id=cam))
        assert wait_until(lambda: all(any(d.header.stamp.sec == 999 and d.header.frame_id == c
                                          for d in graph.detections) for c in publishers), 10)
        for cam in publishers:
            counters = graph.node.counters[f"{cam}/image_raw"]
            assert counters.received == counters.processed + counters.dropped + counters.failed, counters
            assert counters.lost_before_node == 0, counters
        assert sum(graph.node.counters[f"{c}/image_raw"].dropped for c in publishers) > 0  # frames did wait
    finally:
        graph.close()


def test_a_cleanup_logs_the_session_totals_it_ends_and_the_next_configure_counts_anew(context, tier_models):
    """A cleanup dropped the session's counts unlogged: the shutdown line covered only the last session."""
    graph = _graph(context, tier_models, routing_mode="fixed:nano")
    try:
        graph.wait_for_image_subscriber()
        for sec in range(3):
            assert graph.send_lockstep(image_msg(_noise(sec), sec=sec))
        graph.image_pub.publish(image_msg(_noise(9)[:, :, :2].copy(), sec=9))  # 2 channels as rgb8: failed
        assert wait_until(lambda: graph.node.counters["image"].failed == 1, 10)

        def closing_lines() -> list[str]:
            return [log.msg for log in graph.logs if log.name == graph.node.get_logger().name
                    and "; since configure " in log.msg]

        for session, (received, processed, failed) in enumerate([(4, 3, 1), (1, 1, 0)]):
            assert graph.transition("deactivate") and graph.transition("cleanup")
            assert wait_until(lambda: len(closing_lines()) == session + 1, 10), closing_lines()
            assert closing_lines()[-1] == (
                f"cleaning up; since configure '/image' {received} received, {processed} processed, 0 dropped, "
                f"{failed} failed, 0 lost before the node")
            assert graph.transition("configure") and graph.transition("activate")
            graph.wait_for_image_subscriber()
            assert graph.send_lockstep(image_msg(_noise(7), sec=20))
    finally:
        graph.close()


@pytest.mark.parametrize("workers", [1, 0])  # one worker; the default: one per camera, at most one per core
def test_two_cameras_at_different_rates_get_their_own_topics_and_neither_starves(context, tier_models, workers):
    graph = _graph(context, tier_models, routing_mode="fixed:nano", image_topics=["front/image_raw", "rear/image_raw"],
                   workers=workers)
    try:
        cores = len(os.sched_getaffinity(0))
        count = 1 if workers == 1 else min(2, cores)
        running = [t.name for t in threading.enumerate() if t.name.startswith("perception-worker")]
        assert sorted(running) == [f"perception-worker-{i}" for i in range(count)]
        # with several workers the cores are shared out among them, not one session's pool they would all share
        threads = graph.node.detectors["nano"].session.get_session_options().intra_op_num_threads
        assert threads == (0 if count == 1 else cores // count)
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        outputs = {cam: {"detections": [], "routing": []} for cam in ("front", "rear")}
        for cam, topics in outputs.items():
            for kind, msg_type in (("detections", Detection2DArray), ("routing", RoutingDecision)):
                graph.driver.create_subscription(msg_type, f"/{graph.name}/{cam}/image_raw/{kind}", topics[kind].append,
                                                 reliable)
        publishers = {cam: graph.driver.create_publisher(Image, f"{cam}/image_raw", reliable) for cam in outputs}
        assert wait_until(lambda: all(p.get_subscription_count() for p in publishers.values()), 10)
        assert wait_until(lambda: all(graph.node._camera_pubs[f"{c}/image_raw"][0].get_subscription_count()
                                      for c in outputs), 10)
        sent = {"front": 0, "rear": 0}
        start = time.monotonic()
        for step in range(60):  # 3 s: front at 20 Hz, rear at 5 Hz
            for cam, every in (("front", 1), ("rear", 4)):
                if step % every == 0:
                    publishers[cam].publish(image_msg(_noise(step), sec=step, frame_id=cam))
                    sent[cam] += 1
            time.sleep(max(0.0, start + (step + 1) * 0.05 - time.monotonic()))
        assert sent == {"front": 60, "rear": 15}
        time.sleep(0.5)  # then one last frame each, waited for: a loss before it shows as a gap in the sequence
        for cam, publisher in publishers.items():
            publisher.publish(image_msg(_noise(99), sec=99, frame_id=cam))
            sent[cam] += 1
        assert wait_until(lambda: all(any(d.header.stamp.sec == 99 for d in outputs[c]["detections"]) for c in outputs), 10)

        def accounted(c):  # processed, dropped by the newest-frame rule, or lost before the reader's queue
            counters = graph.node.counters[f"{c}/image_raw"]
            return counters.processed + counters.dropped + counters.lost_before_node
        assert wait_until(lambda: all(accounted(c) == sent[c] for c in outputs), 10), \
            {c: graph.node.counters[f"{c}/image_raw"] for c in outputs}
        assert wait_until(lambda: all(len(outputs[c][k]) == graph.node.counters[f"{c}/image_raw"].processed
                                      for c in outputs for k in ("detections", "routing")), 5)
        # neither starves: the slow camera gets (nearly) every frame, the fast one at least as many outputs as the
        # slow one (how many more depends on the machine's spare CPU), and every frame is accounted for
        served = {}
        for cam in outputs:
            got, counters = outputs[cam], graph.node.counters[f"{cam}/image_raw"]
            assert {d.header.frame_id for d in got["detections"]} == {cam} == {r.header.frame_id for r in got["routing"]}
            assert len(got["detections"]) == len(got["routing"]) == counters.processed
            stamps = [d.header.stamp.sec for d in got["detections"]]
            assert stamps == sorted(set(stamps)) == [r.header.stamp.sec for r in got["routing"]]  # in order, once
            served[cam] = counters.processed
        assert served["rear"] >= 0.9 * sent["rear"] and served["front"] >= served["rear"], served
        assert len(graph.detections) == sum(len(o["detections"]) for o in outputs.values())  # combined topic: both
    finally:
        graph.close()


def test_each_node_session_is_an_mlflow_run_with_parameters_snapshots_and_a_summary(context, tier_models, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    graph = _graph(context, tier_models, camera="/robot/cam7", **{"mlflow.tracking_uri": uri, "mlflow.experiment":
                                                                  "robot-7", "mlflow.interval_s": 0.5,
                                                                  "diagnostics.window_s": 1.0})
    try:
        assert graph.node.run.wait_started(60) and graph.node.run.error is None
        for sec in (1, 2, 3):
            assert graph.send_lockstep(image_msg(_noise(sec), sec=sec))
        _mode(graph, "fixed:nano")
        assert graph.send_lockstep(image_msg(_noise(4), sec=4))
        # a policy loaded during the session: the run's tag names it (it kept the one at configure)
        from adaptive_perception_msgs.srv import LoadPolicy
        from policies import constant_policy

        loaded = constant_policy(tmp_path / "swapped.onnx", (0.2, 0.3, 0.5), "swapped-in")
        assert graph.call(LoadPolicy, "load_policy", LoadPolicy.Request(path=str(loaded))).success
        run_id = graph.node.run.run_id
        client = MlflowClient(uri)
        assert wait_until(lambda: any(m.value == 4 for m in client.get_metric_history(run_id, "robot_cam7.frames_processed")),
                          20)
        assert graph.status("routing", lambda v: v["mlflow_run"] == run_id)
        time.sleep(1.5)  # every frame leaves the 1 s window: the summary still covers the session (it read the window)
        assert graph.transition("deactivate") and graph.transition("cleanup")  # ends the run
    finally:
        graph.close()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.experiment_id == client.get_experiment_by_name("robot-7").experiment_id
    assert run.data.params["routing_mode"] == "fixed:small" and run.data.params["models.large"] == str(tier_models["large"])
    assert run.data.tags["node"] == f"/{graph.name}" and run.data.tags["policy_id"] == "swapped-in"
    final = {k: v for k, v in run.data.metrics.items() if k.startswith("final.")}
    assert final["final.robot_cam7.frames_processed"] == 4 and final["final.robot_cam7.frames_received"] == 4
    assert final["final.robot_cam7.small_share"] == 0.75 and final["final.robot_cam7.nano_share"] == 0.25
    assert final["final.robot_cam7.drop_share"] == 0.0 and final["final.robot_cam7.fps"] > 0.0
    assert not any(".image." in k or k.startswith("image.") for k in run.data.metrics)  # keyed by the topic remapped
    steps = [m.step for m in client.get_metric_history(run_id, "robot_cam7.frames_processed")]
    assert len(steps) >= 2 and steps == sorted(steps)  # snapshots over time


def test_an_unwritable_mlflow_store_costs_the_run_not_the_perception(context, tier_models):
    graph = _graph(context, tier_models, **{"mlflow.tracking_uri": "sqlite:////proc/no-such-dir/mlflow.db",
                                            "mlflow.interval_s": 0.5})
    try:
        assert graph.node.run.wait_started(60)
        assert "MLflow run not started" in graph.node.run.error
        # said in the log while the node runs, within a snapshot interval (it came only at shutdown)
        assert wait_until(lambda: any(log.msg.startswith("MLflow run not started at 'sqlite:////proc/no-such-dir/")
                                      and log.msg.endswith("; running without an MLflow run") for log in graph.logs), 5)
        assert graph.send_lockstep(image_msg(_noise(1), sec=1))
        routing = graph.status("routing")  # a session asked to be recorded and is not: the operator view warns
        assert "MLflow run not started" in {kv.key: kv.value for kv in routing.values}["mlflow_run"]
        assert routing.level == WARN and "; MLflow run not started at 'sqlite:////proc/no-such-dir/" in routing.message
    finally:
        graph.close()


def test_an_evidence_folder_that_cannot_be_written_is_said_at_configure_not_at_the_first_drift(context, tier_models):
    """It was accepted without a word; the first failure would have come at the first DRIFT, when the evidence is
    wanted."""
    graph = _graph(context, tier_models, **{"evidence.dir": "/proc/no-such-dir/evidence"})
    try:
        assert wait_until(lambda: any(log.msg.startswith("evidence capture off: /proc/no-such-dir/evidence cannot be "
                                                         "used (cannot write there: ") and
                                      log.msg.endswith("set evidence.dir to a writable folder") for log in graph.logs), 5)
        assert graph.send_lockstep(image_msg(_noise(1), sec=1))  # perception goes on
        routing = graph.status("routing")
        assert routing.level == WARN and "; evidence capture off: /proc/no-such-dir/evidence" in routing.message
        assert {kv.key: kv.value for kv in routing.values}["evidence"].startswith("off: /proc/no-such-dir/evidence")
    finally:
        graph.close()


def test_evidence_an_earlier_run_never_closed_is_named_at_configure_and_kept(context, tier_models, tmp_path):
    """A node killed while writing an event left a segment without metadata.yaml; the next run said nothing, and
    `train retrain --bags <dir>/<camera>/evidence_*` then refused the whole set."""
    killed = tmp_path / "evidence" / "image" / "evidence_0003"
    killed.mkdir(parents=True)
    (killed / "evidence_0003_0.mcap").write_bytes(b"\x89MCAP0\r\n")
    graph = _graph(context, tier_models, **{"evidence.dir": str(tmp_path / "evidence")})
    try:
        assert wait_until(lambda: any("segments an earlier run never closed" in log.msg and str(killed) in log.msg
                                      and log.level == Log.WARN for log in graph.logs), 5)
        routing = {kv.key: kv.value for kv in graph.status("routing").values}
        assert routing["evidence"] == str(tmp_path / "evidence") and killed.exists()
    finally:
        graph.close()


def test_a_silent_fallback_to_cpu_is_visible_at_configure_and_in_diagnostics(context, tier_models, tmp_path,
                                                                            monkeypatch, capfd):
    import adaptive_perception.detector as detector

    monkeypatch.setattr(detector, "_WARNED_UNAVAILABLE", set())  # what earlier tests in this process were told
    capfd.readouterr()
    graph = _graph(context, tier_models, providers=list(detector.DEFAULT_PROVIDERS),
                   **{"tensorrt.engine_cache_dir": str(tmp_path / "trt")})
    try:
        tier = {kv.key: kv.value for kv in graph.status("tier large").values}
        assert (tier["requested_provider"], tier["provider"]) == ("TensorrtExecutionProvider", "CPUExecutionProvider")
        assert wait_until(lambda: any("on CPUExecutionProvider (requested TensorrtExecutionProvider: not available "
                                      "here)" in log.msg for log in graph.logs), 5)
        # the core's own warning reaches /rosout as the node's, at WARN (it was a bare line on stderr)
        assert wait_until(lambda: any(
            log.name == graph.name and log.level == Log.WARN and log.msg.startswith(
                "detector: execution providers ['TensorrtExecutionProvider', 'CUDAExecutionProvider'] are not "
                "available in this onnxruntime build") for log in graph.logs), 5)
    finally:
        graph.close()
    # and only as the node's on stderr: not also bare (logging's last resort) or from the audit's process
    said = [line for line in capfd.readouterr().err.splitlines() if "are not available in this onnxruntime" in line]
    assert len(said) == 1 and "[WARN] " in said[0] and f"[{graph.name}]: detector: execution providers" in said[0], said


def test_the_log_bridge_speaks_once_through_the_newest_live_node(context, capfd):
    """Every node added a handler of its own: with two in a process each core warning came twice, once under a node
    that had nothing to do with it, and a node whose constructor failed left its handler behind."""
    import logging

    import rclpy.logging

    from adaptive_perception.ros.node import _RosLogBridge

    bridge, core = _RosLogBridge(), logging.getLogger("adaptive_perception.detector")
    first, second = rclpy.logging.get_logger("bridge_first"), rclpy.logging.get_logger("bridge_second")
    bridge.attach(first)
    bridge.attach(second)
    capfd.readouterr()
    core.warning("said while both live")
    bridge.detach(second)
    core.warning("said after the second went")
    bridge.detach(first)
    assert bridge not in logging.getLogger("adaptive_perception").handlers
    core.warning("said with none left")
    lines = capfd.readouterr().err.splitlines()
    assert [line.split("]: ")[0].rsplit("[", 1)[1] for line in lines if "said while both live" in line] == \
        ["bridge_second"]
    assert [line.split("]: ")[0].rsplit("[", 1)[1] for line in lines if "said after the second went" in line] == \
        ["bridge_first"]
    assert not any("said with none left" in line and "[bridge_" in line for line in lines)


def test_audits_are_sampled_and_a_changed_scene_is_drift_on_decisions_diagnostics_and_log(context, tier_models, tmp_path):
    from policies import drifting_policy

    rng = np.random.default_rng(4)
    in_distribution = [rng.integers(0, 256, (96, 128, 3), np.uint8) for _ in range(40)]
    policy = drifting_policy(tmp_path / "watched.onnx", in_distribution, window=10)
    evidence = tmp_path / "evidence"
    graph = _graph(context, tier_models, routing_mode="learned", policy=str(policy), **{
        "audit.every": 5, "drift.confirm_frames": 3, "evidence.dir": str(evidence), "evidence.pre_frames": 4,
        "evidence.post_frames": 3})
    try:
        # thresholds calibrated on 40 frames: said when the policy loads, with the command that fixes it
        assert wait_until(lambda: any(log.level == Log.WARN and log.msg.startswith(
            "policy 'watched': its drift thresholds were calibrated on 40 held-out frames, fewer than 3000") and
            "--calibration-sequences 40" in log.msg for log in graph.logs), 5)
        audit = graph.node.drift.audit
        dark = np.zeros((96, 128, 3), np.uint8)  # after 20 frames the lights go out
        frames = in_distribution[:20] + [dark + (sec % 3) for sec in range(21, 41)]
        for sec, frame in enumerate(frames, start=1):
            assert wait_until(lambda: audit.idle, 10)  # the low-priority audit finished before the next due frame
            assert graph.send_lockstep(image_msg(frame, sec=sec))
        assert wait_until(lambda: len(graph.routing) == 40, 5)
        decisions = sorted(graph.routing, key=lambda d: d.header.stamp.sec)
        assert [d.header.stamp.sec for d in decisions if d.audited] == [1, 6, 11, 16, 21, 26, 31, 36]  # 1 in 5
        states = [d.drift_state for d in decisions]
        assert states[:9] == [RoutingDecision.DRIFT_UNKNOWN] * 9  # until the 10-frame window is full
        assert set(states[9:20]) == {RoutingDecision.DRIFT_OK}  # the calibration frames themselves
        first_drift = states.index(RoutingDecision.DRIFT_DRIFT)
        assert 20 < first_drift <= 20 + 3 + 3  # confirmed 3 frames after the score passes 1, within a few frames
        assert all(s == RoutingDecision.DRIFT_DRIFT for s in states[first_drift:])
        assert decisions[-1].drift_score > 1.0 and decisions[10].drift_score <= 1.0
        camera = graph.status("camera /image", lambda v: v["drift_state"] == "drift")
        assert camera.level == WARN and camera.message.startswith("drift: the scene differs from the policy")
        values = {kv.key: kv.value for kv in camera.values}
        assert 0.0 <= float(values["audit_agreement"]) <= 1.0  # the audits reached the monitor
        routing = {kv.key: kv.value for kv in graph.status("routing", lambda v: v["evidence_events"] == "1").values}
        assert routing["drift_state"] == "drift" and routing["evidence"] == str(evidence)
        assert any("drift on camera '/image': warn -> drift" in log.msg or "ok -> drift" in log.msg
                   for log in graph.logs)
        assert graph.transition("deactivate") and graph.transition("cleanup")  # closes the evidence segment
    finally:
        graph.close()
    # the evidence: the 4 frames up to the one that turned DRIFT and the 3 after it, with the node's outputs
    from rosbags.highlevel import AnyReader

    from adaptive_perception.recording import ros_typestore

    drift_sec = decisions[first_drift].header.stamp.sec
    with AnyReader([evidence / "image" / "evidence_0001"], default_typestore=ros_typestore()) as reader:
        recorded = [(c.topic, reader.deserialize(raw, c.msgtype)) for c, _, raw in reader.messages()]
    secs = {topic: [m.header.stamp.sec for t, m in recorded if t == topic] for topic in ("/image", "/routing",
                                                                                          "/detections")}
    expected = list(range(drift_sec - 3, drift_sec + 4))
    assert secs == {"/image": expected, "/routing": expected, "/detections": expected}
    images = [m for t, m in recorded if t == "/image"]
    assert bytes(images[-1].data) == frames[drift_sec + 2].tobytes()  # the camera's frame itself (sec n = frames[n - 1])
    routed = {m.header.stamp.sec: m.drift_state for t, m in recorded if t == "/routing"}
    assert routed[drift_sec] == RoutingDecision.DRIFT_DRIFT and routed[drift_sec - 3] != RoutingDecision.DRIFT_DRIFT
    assert sorted(p.name for p in (evidence / "image").iterdir()) == ["evidence_0001"]  # one event, one segment


def test_a_baseline_mode_or_another_cost_weight_leaves_the_routing_statistics_out_of_drift(context, tier_models, tmp_path):
    """The drift reference measured the tier mix under the policy (all nano here) at its cost weight (1.0): an operator
    who runs the fixed:large baseline on the same scenes must not get DRIFT for the mix, and at another weight the
    node says the mix and audits are off, and how to measure them at that weight."""
    from rclpy.parameter import Parameter

    from policies import drifting_policy

    rng = np.random.default_rng(9)
    in_distribution = [rng.integers(0, 256, (96, 128, 3), np.uint8) for _ in range(40)]
    policy = drifting_policy(tmp_path / "watched.onnx", in_distribution, window=10, cost_weight=1.0)
    graph = _graph(context, tier_models, routing_mode="fixed:large", policy=str(policy),
                   **{"audit.every": 0, "drift.confirm_frames": 3})
    try:
        routing = graph.status("routing")
        assert {kv.key: kv.value for kv in routing.values}["drift_routing_statistics"] == \
            "off: the routing mode is fixed:large"
        for sec, frame in enumerate(in_distribution[:16], start=1):  # the mix would be 0 / 0 / 1 against 1 / 0 / 0
            assert graph.send_lockstep(image_msg(frame, sec=sec))
        assert wait_until(lambda: len(graph.routing) == 16, 5)
        states = [d.drift_state for d in sorted(graph.routing, key=lambda d: d.header.stamp.sec)]
        assert states[9:] == [RoutingDecision.DRIFT_OK] * 7 and {d.tier_name for d in graph.routing} == {"large"}
        monitor = next(iter(graph.node.drift.monitors.values()))
        assert "mix_tvd" not in monitor.statistics and "feature_psi" in monitor.statistics

        _mode(graph, "learned")  # the policy's own routing at its own weight: the mix counts again, from scratch
        assert graph.status("routing", lambda v: v["drift_routing_statistics"] == "on")
        for sec, frame in enumerate(in_distribution[16:26], start=17):
            assert graph.send_lockstep(image_msg(frame, sec=sec))
        assert wait_until(lambda: len(graph.routing) == 26, 5)
        assert monitor.statistics["mix_tvd"] == 0.0 and monitor.state == RoutingDecision.DRIFT_OK
        assert any("tier mix and audit agreement count again" in log.msg for log in graph.logs)

        assert graph.node.set_parameters([Parameter("routing.cost_weight", value=0.5)])[0].successful
        assert graph.status("routing", lambda v: v["drift_routing_statistics"] == "off: the cost weight is 0.5")
        said = next(log.msg for log in graph.logs if "while the cost weight is 0.5" in log.msg)
        assert "at cost weight 1" in said and "policy drift-reference" in said and "--cost-weight 0.5" in said
    finally:
        graph.close()
