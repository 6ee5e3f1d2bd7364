"""perception_node on a real rclpy graph on localhost, driven through its lifecycle services in lock-step."""
from __future__ import annotations

import gc
import math
import socket
import threading

import cv2
import numpy as np
import pytest
import rclpy

from adaptive_perception.detector import DetectorTier
from conftest import unused_port
from rosgraph import Graph, image_msg, wait_until


@pytest.fixture
def graph(context, peer_model):
    g = Graph(context, {"models.nano": str(peer_model), "models.small": "", "models.large": "", "routing_mode": "fixed:nano", "providers": ["CPUExecutionProvider"],
                        "image_topics": ["image", "image/compressed"], "warmup_runs": 1})
    yield g
    g.close()


def _noise(seed: int, shape=(480, 640, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_one_detection_array_per_frame_with_the_image_header(graph, peer_model):
    assert graph.state() == "unconfigured"
    assert graph.transition("configure") and graph.state() == "inactive"
    assert graph.transition("activate") and graph.state() == "active"
    graph.wait_for_image_subscriber()
    reference = DetectorTier(peer_model)
    frames = [_noise(seed) for seed in range(5)]
    for i, rgb in enumerate(frames):
        assert graph.send_lockstep(image_msg(rgb, sec=100 + i, nanosec=1000 * i, frame_id="cam_front"))
    assert not wait_until(lambda: len(graph.detections) > 5, 0.5), "more outputs than frames"
    assert [(d.header.stamp.sec, d.header.stamp.nanosec, d.header.frame_id) for d in graph.detections] == \
        [(100 + i, 1000 * i, "cam_front") for i in range(5)]
    for msg, rgb in zip(graph.detections, frames):
        expected = reference.detect(rgb)
        assert len(msg.detections) == len(expected) > 0
        centres = np.array([[d.bbox.center.position.x, d.bbox.center.position.y] for d in msg.detections])
        sizes = np.array([[d.bbox.size_x, d.bbox.size_y] for d in msg.detections])
        np.testing.assert_allclose(centres, (expected.boxes[:, :2] + expected.boxes[:, 2:]) / 2, atol=1e-3)
        np.testing.assert_allclose(sizes, expected.boxes[:, 2:] - expected.boxes[:, :2], atol=1e-3)
        assert [d.results[0].hypothesis.class_id for d in msg.detections] == expected.names()
        assert all(0.25 < d.results[0].hypothesis.score <= 1.0 for d in msg.detections)
    assert wait_until(lambda: len(graph.routing) == 5, 5)
    for decision in graph.routing:
        assert decision.tier_name == "nano" and decision.mode == "fixed:nano"
        assert list(decision.probabilities) == [1.0, 0.0, 0.0]
        assert decision.total_ms >= decision.inference_ms > 0


def test_detections_leave_before_the_drift_monitors_work_on_the_frame(graph):
    """A consumer waits for the detections only: they are published as soon as they exist; the drift monitor's
    update (image statistics, windows, audit sampling) and the RoutingDecision that carries its state follow."""
    assert graph.transition("configure") and graph.transition("activate")
    graph.wait_for_image_subscriber()
    released = threading.Event()
    frame = graph.node.drift.frame

    def held(*args, **kwargs):  # the real update, held until the test has looked
        released.wait(30)
        return frame(*args, **kwargs)

    graph.node.drift.frame = held
    graph.image_pub.publish(image_msg(_noise(3), sec=7))
    assert wait_until(lambda: len(graph.detections) == 1, 10), "the detections waited for the drift monitor"
    assert [d.header.stamp.sec for d in graph.detections] == [7] and graph.routing == []
    released.set()
    assert wait_until(lambda: len(graph.routing) == 1, 10)
    assert graph.routing[0].header.stamp.sec == 7 and graph.node.totals().processed == 1


def test_deactivate_stops_output_and_cleanup_frees_sessions(graph):
    gc.unfreeze()
    assert graph.transition("configure") and graph.transition("activate")
    assert gc.get_freeze_count() > 10_000  # what configure loaded is set aside from the collector's full passes
    graph.wait_for_image_subscriber()
    assert graph.send_lockstep(image_msg(_noise(1), sec=1))
    assert graph.transition("deactivate") and graph.state() == "inactive"
    graph.image_pub.publish(image_msg(_noise(2), sec=2))
    assert not wait_until(lambda: len(graph.detections) > 1, 1.5), "an inactive node published"
    assert set(graph.node.detectors) == {"nano"}
    assert graph.transition("cleanup") and graph.state() == "unconfigured"
    assert graph.node.detectors == {} and graph.node.config is None
    assert gc.get_freeze_count() == 0  # and can be collected again


def test_the_launch_files_activate_filter_matches_a_configure_and_not_a_deactivate(graph):
    """The launch file activates the node on a transition event it filters by start and goal state: on the goal
    alone (inactive), a deactivate matched too, and launch activated the node again at once."""
    from lifecycle_msgs.msg import TransitionEvent
    from test_config import LAUNCH_ACTIVATES_AFTER

    events: list[TransitionEvent] = []
    graph.driver.create_subscription(TransitionEvent, f"/{graph.name}/transition_event", events.append, 10)
    # the subscription matched before the transitions
    assert wait_until(lambda: graph.node.count_subscribers(f"/{graph.name}/transition_event") > 0, 5)
    assert graph.transition("configure") and graph.transition("activate") and graph.transition("deactivate")
    assert wait_until(lambda: len(events) == 6, 5), [(e.start_state.label, e.goal_state.label) for e in events]
    pairs = [(e.start_state.label, e.goal_state.label) for e in events]
    assert pairs.count(("configuring", "inactive")) == 1 and pairs.count(("deactivating", "inactive")) == 1
    matched = [i for i, pair in enumerate(pairs) if pair == tuple(LAUNCH_ACTIVATES_AFTER.values())]
    assert matched == [pairs.index(("configuring", "inactive"))]


def test_spin_wait_reaches_the_tier_sessions(graph):
    entry = "session.intra_op.allow_spinning"
    assert graph.transition("configure")  # the default: sleeping threads
    assert graph.node.detectors["nano"].session.get_session_options().get_session_config_entry(entry) == "0"
    assert graph.transition("cleanup")
    graph.node.set_parameters([rclpy.parameter.Parameter("spin_wait", value=True)])
    assert graph.transition("configure")
    assert graph.node.detectors["nano"].session.get_session_options().get_session_config_entry(entry) == "1"
    assert graph.transition("cleanup")


def test_preprocess_in_graph_and_its_cache_reach_the_tier_sessions(graph, tmp_path):
    graph.node.set_parameters([rclpy.parameter.Parameter("graph_cache_dir", value=str(tmp_path / "graphs"))])
    assert graph.transition("configure")
    assert {t: d.session.get_inputs()[0].type for t, d in graph.node.detectors.items()} == \
        {t: "tensor(uint8)" for t in graph.node.detectors} and "nano" in graph.node.detectors
    # one per model file (the fixture's tiers share the peer model where their parameter is empty)
    assert sorted(p.name for p in (tmp_path / "graphs").iterdir()) == sorted(
        {f"{d.path.stem}-{d.digest}-uint8.onnx" for d in graph.node.detectors.values()})
    assert graph.transition("cleanup")
    graph.node.set_parameters([rclpy.parameter.Parameter("preprocess_in_graph", value=False)])
    assert graph.transition("configure")
    assert {t: d.session.get_inputs()[0].type for t, d in graph.node.detectors.items()} == \
        {t: "tensor(float)" for t in graph.node.detectors} and "nano" in graph.node.detectors
    assert graph.transition("cleanup")


def test_a_bad_model_path_is_refused_at_set_and_configure_keeps_the_good_one(graph, peer_model, tmp_path):
    missing = tmp_path / "no_such_model.onnx"
    refused = graph.node.set_parameters([rclpy.parameter.Parameter("models.nano", value=str(missing))])[0]
    assert not refused.successful and f"models.nano = '{missing}' does not exist" in refused.reason
    assert graph.transition("configure") and graph.state() == "inactive"
    assert graph.node.detectors["nano"].path == peer_model


def test_a_bad_cost_weight_is_refused_while_a_moved_model_file_has_broken_the_parameters(context, peer_model, tmp_path):
    """With the parameters already broken (a tier's file moved after configure), changes are taken as they come;
    a cost weight the router refuses then raised inside rclpy's parameter callback and killed the executor."""
    import shutil

    model = tmp_path / "nano.onnx"
    shutil.copy(peer_model, model)
    graph = Graph(context, {"models.nano": str(model), "models.small": "", "models.large": "",
                            "routing_mode": "fixed:nano", "policy": "", "providers": ["CPUExecutionProvider"],
                            "warmup_runs": 0})
    try:
        assert graph.transition("configure")
        model.unlink()  # the parameters now name a file that does not exist
        for bad in (float("inf"), 1e7):
            refused = graph.node.set_parameters([rclpy.parameter.Parameter("routing.cost_weight", value=bad)])[0]
            assert not refused.successful and "must be a number up to 1e+06" in refused.reason
        assert graph.node.set_parameters([rclpy.parameter.Parameter("routing.cost_weight", value=0.5)])[0].successful
        assert graph.state() == "inactive"  # the executor still answers
    finally:
        graph.close()


def test_not_an_onnx_file_fails_configure_naming_the_file(graph, tmp_path):
    bogus = tmp_path / "weights.onnx"
    bogus.write_bytes(b"this is not a protobuf")
    graph.node.set_parameters([rclpy.parameter.Parameter("models.nano", value=str(bogus))])
    assert not graph.transition("configure")
    assert wait_until(lambda: any(str(bogus) in log.msg and "not a loadable ONNX" in log.msg for log in graph.logs), 5)


def test_compressed_jpeg_and_png_frames_are_detected(graph, peer_model):
    from sensor_msgs.msg import CompressedImage

    assert graph.transition("configure") and graph.transition("activate")
    graph.wait_for_image_subscriber(graph.compressed_pub)
    rgb = _noise(3)
    for i, (fmt, ext) in enumerate((("jpeg", ".jpg"), ("png", ".png"))):
        msg = CompressedImage(format=fmt, data=cv2.imencode(ext, rgb[:, :, ::-1])[1].tobytes())
        msg.header.stamp.sec, msg.header.frame_id = 50 + i, "cam"
        assert graph.send_lockstep(msg, graph.compressed_pub)
    png_boxes = len(graph.detections[1].detections)
    assert png_boxes == len(DetectorTier(peer_model).detect(rgb)), "png is lossless: same boxes as raw pixels"


def test_a_remapped_compressed_topic_is_subscribed_as_compressed(context, peer_model):
    from adaptive_perception.ros.node import PerceptionNode

    node = PerceptionNode(context=context, cli_args=["--ros-args", "-r", "image:=/cam/image_raw/compressed"],
                          parameter_overrides=[rclpy.parameter.Parameter("models.nano", value=str(peer_model)),
                                               rclpy.parameter.Parameter("models.small", value=""),
                                               rclpy.parameter.Parameter("models.large", value=""),
                                               rclpy.parameter.Parameter("routing_mode", value="fixed:nano"),
                                               rclpy.parameter.Parameter("warmup_runs", value=0),
                                               rclpy.parameter.Parameter("metrics.port", value=0)])
    try:
        assert node.trigger_configure().name == "SUCCESS" and node.trigger_activate().name == "SUCCESS"
        types = dict(node.get_topic_names_and_types())
        assert types["/cam/image_raw/compressed"] == ["sensor_msgs/msg/CompressedImage"]
    finally:
        node._stop_processing()
        node.destroy_node()


def test_an_invalid_topic_name_is_refused_at_set_and_fails_configure_with_the_reason(graph, context, peer_model):
    """A camera topic ROS refuses passed configure unless metrics were on, where resolving it raised: an ERROR
    transition with the metrics port left bound, so the next configure ran without metrics. Now `ros2 param set`
    refuses it, and configure (from a parameter file) fails with the reason, the port free."""
    refused = graph.node.set_parameters([rclpy.parameter.Parameter("image_topics", value=["bad topic name!"])])[0]
    assert not refused.successful and "image_topics: 'bad topic name!' is not a ROS topic name" in refused.reason
    port = unused_port()
    bad = Graph(context, {"models.nano": str(peer_model), "models.small": "", "models.large": "",
                          "routing_mode": "fixed:nano", "image_topics": ["bad topic name!"], "warmup_runs": 0,
                          "metrics.port": port})
    try:
        assert not bad.transition("configure") and bad.state() == "unconfigured"
        assert wait_until(lambda: any("configure failed: image_topics: 'bad topic name!' is not a ROS topic name"
                                      in log.msg for log in bad.logs), 5), [log.msg for log in bad.logs]
        with socket.socket() as sock:  # nothing holds the metrics port
            sock.bind(("127.0.0.1", port))
    finally:
        bad.close()


def test_declared_ranges_refuse_what_configure_would_refuse(graph):
    """A value outside the declared range is refused at `ros2 param set`, before it can fail a later configure."""
    refused = graph.node.set_parameters([rclpy.parameter.Parameter("routing.random_seed", value=-1)])[0]
    assert not refused.successful and "routing.random_seed" in refused.reason
    assert graph.node.set_parameters([rclpy.parameter.Parameter("routing.random_seed", value=7)])[0].successful
    assert graph.node.read_config().router.random_seed == 7


def test_a_change_configure_would_refuse_is_refused_at_set(graph, tmp_path):
    """qos.reliability 'reliabel' was accepted at `ros2 param set` and failed the next configure."""
    refused = graph.node.set_parameters([rclpy.parameter.Parameter("qos.reliability", value="reliabel")])[0]
    assert not refused.successful and "qos.reliability 'reliabel' must be one of" in refused.reason
    # and the node's log says so (only the caller was told)
    assert wait_until(lambda: any("parameter change refused (qos.reliability = 'reliabel'): qos.reliability "
                                  "'reliabel' must be one of" in log.msg and log.level == 30 for log in graph.logs), 5)
    missing = tmp_path / "missing.onnx"
    refused = graph.node.set_parameters([rclpy.parameter.Parameter("models.small", value=str(missing))])[0]
    assert not refused.successful and f"models.small = '{missing}' does not exist" in refused.reason
    # an execution provider onnxruntime does not know was accepted here and failed the next configure
    refused = graph.node.set_parameters([rclpy.parameter.Parameter("providers", value=["FooExecutionProvider"])])[0]
    assert not refused.successful and "execution provider 'FooExecutionProvider' is not one onnxruntime" in refused.reason
    assert graph.node.get_parameter("qos.reliability").value == "best_effort"
    assert graph.node.set_parameters([rclpy.parameter.Parameter("qos.reliability", value="reliable")])[0].successful
    assert graph.transition("configure")


def test_parameters_that_start_broken_are_mended_one_at_a_time(context, peer_model, tmp_path):
    """Two bad values from a params file: refusing every change that leaves the set invalid would refuse each fix
    while the other value is still wrong."""
    missing = tmp_path / "missing.onnx"
    g = Graph(context, {"models.nano": str(peer_model), "models.small": str(missing), "models.large": "",
                        "routing_mode": "fixed:nano", "qos.reliability": "reliabel", "warmup_runs": 0})
    try:
        assert g.node.set_parameters([rclpy.parameter.Parameter("qos.reliability", value="reliable")])[0].successful
        assert not g.transition("configure") and g.state() == "unconfigured"
        assert wait_until(lambda: any("configure failed" in log.msg and f"models.small = '{missing}' does not exist"
                                      in log.msg for log in g.logs), 5)
        assert g.node.set_parameters([rclpy.parameter.Parameter("models.small", value="")])[0].successful
        assert g.transition("configure") and g.node.config.qos_reliability == "reliable"
        # now valid: a change that breaks it again is refused
        assert not g.node.set_parameters([rclpy.parameter.Parameter("models.small", value=str(missing))])[0].successful
    finally:
        g.close()


def test_a_misspelt_key_in_a_params_file_is_named(context, tmp_path):
    """ROS keeps a value for a parameter the node never declares, silently: `conf_treshold` left conf_threshold at
    its default, `qos: {relability: ...}` left best_effort in place."""
    from adaptive_perception.ros.node import PerceptionNode

    params = tmp_path / "params.yaml"
    params.write_text("/**:\n  ros__parameters:\n    use_sim_time: false\n    conf_treshold: 0.5\n"
                      "    iou_threshold: 0.6\n    qos:\n      relability: reliable\n    zzz_unrelated: 1\n")
    node = PerceptionNode(context=context, cli_args=["--ros-args", "--params-file", str(params),
                                                     "-r", "__node:=perception_node_typos"])
    try:
        assert node.unknown_parameters == ["'conf_treshold' (did you mean conf_threshold?)",
                                           "'qos.relability' (did you mean qos.reliability?)", "'zzz_unrelated'"]
        assert node.get_parameter("iou_threshold").value == 0.6  # the file was read: its known key applied
        assert node.get_parameter("conf_threshold").value == 0.25
    finally:
        node.destroy_node()


def test_a_camera_listed_twice_after_remapping_fails_configure_and_is_refused_when_set(context, peer_model):
    """`image` and `/image` are one topic: each frame was processed and published twice, its counters split. Given
    at start (a parameter file), configure refuses it; set on a running node, the set is refused (it was accepted,
    and the next configure failed, leaving the node unconfigured)."""
    twice = ["image", "/image", "image/compressed"]
    graph = Graph(context, {"models.nano": str(peer_model), "models.small": "", "models.large": "",
                            "routing_mode": "fixed:nano", "image_topics": twice, "warmup_runs": 1})
    try:
        assert not graph.transition("configure")
        assert wait_until(lambda: any("configure failed" in log.msg and "name /image more than once (after remapping)"
                                      in log.msg for log in graph.logs), 5), [log.msg for log in graph.logs]
        graph.node.set_parameters([rclpy.parameter.Parameter("image_topics", value=["image", "image/compressed"])])
        assert graph.transition("configure")
        result = graph.node.set_parameters([rclpy.parameter.Parameter("image_topics", value=twice)])[0]
        assert not result.successful and "name /image more than once (after remapping)" in result.reason
        assert graph.node.get_parameter("image_topics").value == ["image", "image/compressed"]
        assert graph.transition("cleanup") and graph.transition("configure")  # still configurable
    finally:
        graph.close()


def test_a_running_node_refuses_an_unknown_mode_and_says_when_a_parameter_applies(graph):
    """Set on a running node, routing_mode 'fixed:huge' was accepted and failed the next configure; conf_threshold
    was accepted without a word while the running node kept its old value."""
    assert graph.transition("configure") and graph.transition("activate")
    refused = graph.node.set_parameters([rclpy.parameter.Parameter("routing_mode", value="fixed:huge")])[0]
    assert not refused.successful and "routing mode 'fixed:huge' is unknown" in refused.reason
    assert graph.node.get_parameter("routing_mode").value == "fixed:nano"
    assert graph.node.set_parameters([rclpy.parameter.Parameter("conf_threshold", value=0.9)])[0].successful
    assert wait_until(lambda: any("parameter conf_threshold = 0.9 is set but applies at the next configure" in log.msg
                                  for log in graph.logs), 5), [log.msg for log in graph.logs]
    assert graph.node.detectors["nano"].conf_threshold == 0.25  # the running tier keeps its value, as said
    # set in a loop (a script), it is said once every 5 s, not once a call (670 lines a minute)
    for value in (0.8, 0.7, 0.6):
        assert graph.node.set_parameters([rclpy.parameter.Parameter("conf_threshold", value=value)])[0].successful
    assert graph.node.set_parameters([rclpy.parameter.Parameter("iou_threshold", value=0.5)])[0].successful
    assert wait_until(lambda: any("parameter iou_threshold = 0.5 is set" in log.msg for log in graph.logs), 5)
    said = [log.msg for log in graph.logs if "parameter conf_threshold" in log.msg and "is set" in log.msg]
    assert len(said) == 1 and "conf_threshold = 0.9 is set" in said[0], said
    assert graph.transition("deactivate")
    assert wait_until(lambda: graph.status("routing").message.startswith("inactive (lifecycle activate to process "
                                                                         "frames): fixed:nano"), 5)
    assert wait_until(lambda: graph.status("camera /image").message ==
                      "node inactive: not subscribed to this camera (lifecycle activate)", 5)


@pytest.mark.parametrize("compressed", [True, False])
def test_a_publisher_of_the_wrong_type_on_the_camera_topic_is_named(context, peer_model, compressed):
    """A CompressedImage camera on a topic the node reads as Image (or an Image camera on a .../compressed topic):
    its frames never arrive and DDS says nothing; /diagnostics asked whether anything was publishing at all. The
    fix named is the one for the direction at hand (one fixed text told an Image publisher to publish Image)."""
    from rclpy.node import Node
    from sensor_msgs.msg import CompressedImage, Image

    topic = "image" if compressed else "image/compressed"
    g = Graph(context, {"models.nano": str(peer_model), "models.small": "", "models.large": "", "warmup_runs": 0,
                        "routing_mode": "fixed:nano", "image_topics": [topic], "diagnostics.stall_s": 0.5})
    camera_context = rclpy.context.Context()  # a participant of its own: the driver already publishes Image there
    rclpy.init(context=camera_context)
    camera = Node("wrong_type_camera", context=camera_context)
    try:
        camera.create_publisher(CompressedImage if compressed else Image, topic, 10)
        assert g.transition("configure") and g.transition("activate")
        published, read = ("CompressedImage", "Image") if compressed else ("Image", "CompressedImage")
        said = f"node wrong_type_camera publishes sensor_msgs/msg/{published} on /{topic}, where this node reads " \
               f"sensor_msgs/msg/{read}"
        fix = ("for compressed frames: remap the camera to its .../compressed topic" if compressed else
               "for raw frames: name the camera's topic without the 'compressed' ending")
        assert wait_until(lambda: g.status(f"camera /{topic}").message.startswith(said), 10), \
            g.status(f"camera /{topic}").message
        assert fix in g.status(f"camera /{topic}").message and g.status(f"camera /{topic}").level == bytes([2])
        assert wait_until(lambda: any(log.msg.startswith(said) for log in g.logs), 5)
    finally:
        camera.destroy_node()
        rclpy.shutdown(context=camera_context)
        g.close()


def test_with_use_sim_time_the_node_follows_clock_across_a_deactivate_and_keeps_its_heartbeat(context, peer_model):
    """A bag played with --clock: the node's time is the bag's, through a reconfigure, and /diagnostics (what
    `health` judges by wall time) go on while the bag is paused. The node's camera list was named like rclpy's own
    list of subscriptions and replaced it: /clock was never read, and a deactivate destroyed its subscription."""
    from rosgraph_msgs.msg import Clock

    g = Graph(context, {"models.nano": str(peer_model), "models.small": "", "models.large": "",
                        "routing_mode": "fixed:nano", "providers": ["CPUExecutionProvider"], "warmup_runs": 1,
                        "use_sim_time": True})
    try:
        clock = g.driver.create_publisher(Clock, "/clock", 10)

        def at(sec: int) -> bool:  # publish the bag's clock until the node's time is there
            clock.publish(Clock(clock=rclpy.time.Time(seconds=sec).to_msg()))
            return g.node.get_clock().now().nanoseconds == sec * 10**9

        assert g.transition("configure") and g.transition("activate")
        assert wait_until(lambda: at(1000), 10), f"node time {g.node.get_clock().now()} never followed /clock"
        g.wait_for_image_subscriber()
        assert g.send_lockstep(image_msg(_noise(1), sec=999, nanosec=750_000_000))
        assert g.routing[-1].frame_age_ms == pytest.approx(250.0, abs=1e-6)  # against the bag's time
        # no stamp, or one ahead of the node's clock: no age (was 1e6 s, and -1000 ms)
        for sec, seed in ((0, 3), (1001, 4)):
            assert g.send_lockstep(image_msg(_noise(seed), sec=sec)) and math.isnan(g.routing[-1].frame_age_ms)
        assert g.transition("deactivate") and g.transition("activate")
        assert wait_until(lambda: at(2000), 10), "after a deactivate the node's time stopped following /clock"
        g.wait_for_image_subscriber()
        assert g.send_lockstep(image_msg(_noise(2), sec=1999))
        assert g.routing[-1].frame_age_ms == pytest.approx(1000.0, abs=1e-6)
        paused = len(g.diagnostics)  # the bag paused: no /clock from here on
        assert wait_until(lambda: len(g.diagnostics) >= paused + 2, 4), "no /diagnostics while the clock stood"
    finally:
        g.close()
