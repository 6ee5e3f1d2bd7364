"""What an operator sees of a running node, on a real rclpy graph: /diagnostics levels and values, frame age,
bad input by kind, tier failures, incompatible QoS, and the Prometheus endpoint scraped over HTTP."""
from __future__ import annotations

import re
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

from adaptive_perception_msgs.msg import RoutingDecision
from adaptive_perception_msgs.srv import SetRoutingMode
from rosgraph import Graph, image_msg, wait_until

OK, WARN, ERROR = b"\x00", b"\x01", b"\x02"


def _noise(seed: int, shape=(96, 128, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _graph(context, tier_models, **parameters) -> Graph:
    graph = Graph(context, {**{f"models.{t}": str(p) for t, p in tier_models.items()}, "routing_mode": "fixed:small",
                            "policy": "", "providers": ["CPUExecutionProvider"], "warmup_runs": 0, **parameters})
    assert graph.transition("configure") and graph.transition("activate")
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
                           "metrics": "off (metrics.port 0)"}
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
        assert float(values["frame_age_ms_p50"]) == pytest.approx(graph.routing[0].frame_age_ms, abs=0.01)
    finally:
        graph.close()


def test_malformed_frames_are_counted_by_kind_logged_by_camera_and_the_next_good_frame_runs(context, tier_models):
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
               variant(6, encoding="32FC7"), variant(7, data=good.data[:500])]
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
        absurd = next(text for text in skipped if "100000x1" in text)
        assert "larger than 16384 pixels" in absurd and "cv2" not in absurd and "Assertion" not in absurd
        assert graph.state() == "active"
    finally:
        graph.close()


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
        best_effort = graph.driver.create_publisher(Image, "image", QoSProfile(
            depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
        assert wait_until(lambda: any("offers a QoS this node's subscription cannot accept" in log.msg
                                      for log in graph.logs), 10)
        warning = next(log.msg for log in graph.logs if "cannot accept" in log.msg)
        assert "'/image'" in warning and "RELIABILITY" in warning and "qos.reliability=reliable" in warning
        graph.status("camera /image", lambda v: v["qos_incompatible"] == "1")
        graph.driver.destroy_publisher(best_effort)
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
        assert _sample(text, "adaptive_perception_frames_processed_total", camera="image", tier="nano") == 2
        assert _sample(text, "adaptive_perception_frames_processed_total", camera="image", tier="large") == 1
        assert _sample(text, "adaptive_perception_frames_processed_total", camera="image", tier="small") == 0
        assert _sample(text, "adaptive_perception_frames_received_total", camera="image") == 3
        assert _sample(text, "adaptive_perception_node_seconds_count", camera="image", tier="nano") == 2
        node_seconds = _sample(text, "adaptive_perception_node_seconds_sum", camera="image", tier="nano")
        assert node_seconds * 1e3 == pytest.approx(sum(d.total_ms for d in graph.routing[:2]), rel=1e-3)
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
            assert any("set metrics.port to a free port" in log.msg for log in graph.logs)
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
        assert publishers == {"/detections", "/routing", "/diagnostics"}
        assert {"detections", "routing", "/diagnostics"} <= listed
        assert subscriptions == {"/image"} and "image" in listed
        assert own_services == {"change_state", "get_state", "set_routing_mode", "load_policy"}
        assert {f"~/{s}" for s in own_services} <= listed
    finally:
        graph.close()
