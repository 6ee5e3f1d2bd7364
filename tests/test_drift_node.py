"""End to end on the shipped policy and tiers: a real node on a real rclpy graph sees a generated scene turn to
night, turns DRIFT on the frame the drift report's path without ROS says, and keeps the evidence readable."""
from __future__ import annotations

import numpy as np

from adaptive_perception.config import resolve_model
from adaptive_perception.detector import TIERS
from adaptive_perception.drift import DRIFT
from adaptive_perception.policy import Policy
from adaptive_perception.scenes.sequence import Drift, render_sequence
from adaptive_perception.training.drift_reference import cpu_detectors
from adaptive_perception.training.drift_report import run_stream, stream_specs
from adaptive_perception_msgs.msg import RoutingDecision
from adaptive_perception_msgs.srv import LoadPolicy
from rosgraph import Graph, image_msg, wait_until


def test_the_shipped_policy_turns_drift_at_night_in_a_running_node_and_records_the_evidence(context, tmp_path):
    clean, night = stream_specs(Drift.NIGHT, 1, 1, 150, "2.0.0")  # the drift report's first night stream
    frames = [f.rgb for spec in clean + night for f in render_sequence(spec)]
    policy = resolve_model("embedded:policy")
    offline = run_stream([(rgb, 0) for rgb in frames], cpu_detectors(), Policy(policy), 30, 15, "offline")
    expected = offline["states"].index(DRIFT)
    assert 150 < expected < 300  # measured: 114 frames into the night

    evidence = tmp_path / "evidence"
    graph = Graph(context, {**{f"models.{t}": resolve_model(f"embedded:{t}") for t in TIERS}, "routing_mode": "learned",
                            "policy": policy, "providers": ["CPUExecutionProvider"], "warmup_runs": 0,
                            "evidence.dir": str(evidence)}, camera="/robot/front")  # image:=/robot/front
    try:
        assert graph.transition("configure") and graph.transition("activate")
        graph.wait_for_image_subscriber()
        audit = graph.node.drift.audit
        for sec, rgb in enumerate(frames, start=1):
            assert wait_until(lambda: audit.idle, 10)  # each due audit lands before the next frame, as offline
            assert graph.send_lockstep(image_msg(rgb, sec=sec))
        assert wait_until(lambda: len(graph.routing) == len(frames), 5)
        decisions = sorted(graph.routing, key=lambda d: d.header.stamp.sec)
        states = [d.drift_state for d in decisions]
        assert RoutingDecision.DRIFT_DRIFT not in states[:150]  # no false alarm on the in-distribution scene
        assert states.index(RoutingDecision.DRIFT_DRIFT) == expected
        assert [d.tier for d in decisions] == offline["tiers"]  # the same routing, frame by frame
        # and the same score, which the audits' agreement feeds: a node scoring its reference against itself (or
        # against a stale output) would show the night's change in the states later, or not at all
        np.testing.assert_allclose([d.drift_score for d in decisions], offline["scores"], rtol=1e-5, atol=1e-6,
                                   equal_nan=True)
        # a new policy's monitor starts over: the camera leaves DRIFT at once (it stayed there, and its alert
        # fired, until frames came again)
        assert graph.node._drift_states == {"image": RoutingDecision.DRIFT_DRIFT}
        assert graph.call(LoadPolicy, "load_policy", LoadPolicy.Request(path=policy)).success
        assert graph.node._drift_states == {"image": RoutingDecision.DRIFT_UNKNOWN}
        reset = "drift on camera '/robot/front': drift -> unknown (policy 'bc-ppo-l0.251734-s0-0051389b' loaded: its " \
            "drift monitor starts over, unknown until 150 frames fill its window)"
        assert wait_until(lambda: any(log.msg == reset for log in graph.logs), 5), [log.msg for log in graph.logs[-5:]]
        assert wait_until(lambda: {kv.key: kv.value for kv in graph.status("camera /robot/front").values}
                          .get("drift_state") == "unknown", 5)
        assert graph.transition("deactivate") and graph.transition("cleanup")  # closes the evidence segment
    finally:
        graph.close()
    from rosbags.highlevel import AnyReader

    from adaptive_perception.recording import ros_typestore

    # named after the camera's topic after remapping (it was the name before, `image`, on every robot)
    assert [p.name for p in evidence.iterdir()] == ["robot_front"]
    with AnyReader([evidence / "robot_front" / "evidence_0001"], default_typestore=ros_typestore()) as reader:
        images = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages() if c.topic == "/robot/front"]
        # the node writes the detections' CDR itself: rosbags' own reader gets what rclpy delivered live
        recorded_detections = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages()
                               if c.msgtype == "vision_msgs/msg/Detection2DArray"]
    live = {d.header.stamp.sec: d for d in graph.detections}
    assert len(recorded_detections) >= 60
    for message in recorded_detections:
        sent = live[message.header.stamp.sec]
        assert message.header.frame_id == sent.header.frame_id and len(message.detections) == len(sent.detections)
        assert [(d.bbox.center.position.x, d.bbox.size_y, d.results[0].hypothesis.class_id,
                 d.results[0].hypothesis.score) for d in message.detections] == \
            [(d.bbox.center.position.x, d.bbox.size_y, d.results[0].hypothesis.class_id,
              d.results[0].hypothesis.score) for d in sent.detections]
    recorded = [m.header.stamp.sec - 1 for m in images]  # sec n is frame n - 1
    assert recorded == list(range(expected - 59, len(frames)))  # 60 up to the DRIFT frame, the rest after it
    assert bytes(images[-1].data) == frames[-1].tobytes()
    assert np.isfinite(decisions[-1].drift_score) and decisions[-1].drift_score > 1.0


def test_a_frame_inside_its_tier_at_a_routing_change_joins_no_window_in_a_running_node(context, tier_models, scene_rgb):
    """A frame routed under fixed:large whose inference is still running when set_routing_mode returns to learned
    must not put large into the fresh window of the drift monitor's tier mix (it would count a mix the policy
    never chose). The large tier is held inside its call on an event, so the change lands mid-inference."""
    import threading

    from adaptive_perception_msgs.srv import SetRoutingMode

    graph = Graph(context, {**{f"models.{t}": str(p) for t, p in tier_models.items()}, "routing_mode": "fixed:large",
                            "policy": resolve_model("embedded:policy"), "providers": ["CPUExecutionProvider"],
                            "warmup_runs": 0, "audit.every": 1000})
    try:
        assert graph.transition("configure") and graph.transition("activate")
        graph.wait_for_image_subscriber()
        assert graph.send_lockstep(image_msg(scene_rgb, sec=1))  # under fixed:large: the mix is left out anyway
        (camera, monitor), = graph.node.drift.monitors.items()
        large = graph.node.detectors["large"]
        inside, release = threading.Event(), threading.Event()
        detect = large.detect

        def held(rgb):
            inside.set()
            assert release.wait(20)
            return detect(rgb)
        large.detect = held
        graph.image_pub.publish(image_msg(scene_rgb, sec=2))
        assert inside.wait(10)  # frame 2 was routed to large and is inside its inference
        answer = graph.call(SetRoutingMode, "set_routing_mode", SetRoutingMode.Request(mode="learned"))
        assert answer.success, answer.message
        release.set()
        assert wait_until(lambda: any(d.header.stamp.sec == 2 for d in graph.routing), 10)
        second = next(d for d in graph.routing if d.header.stamp.sec == 2)
        assert (second.mode, second.tier_name) == ("fixed:large", "large")
        assert list(monitor._tiers) == [] and monitor.routing_off == ""  # counted again, without frame 2's tier
        large.detect = detect
        assert graph.send_lockstep(image_msg(scene_rgb, sec=3))
        assert wait_until(lambda: any(d.header.stamp.sec == 3 for d in graph.routing), 10)  # after the detections
        third = next(d for d in graph.routing if d.header.stamp.sec == 3)
        assert third.mode == "learned" and list(monitor._tiers) == [third.tier]
    finally:
        graph.close()


def test_evidence_the_disk_refuses_is_an_error_in_the_log_and_a_warning_on_diagnostics(context, tier_models, tmp_path):
    """Evidence lost to a full disk was only counted (`evidence_messages_failed`): no line in the log, the routing
    status OK, and the event gone. Here the camera's evidence folder goes after configure (a file takes its name):
    the event's end is logged as an error and the routing status warns until an event of the camera writes. A
    camera folder that cannot be made at configure turns evidence off there, said."""
    import shutil

    from diagnostic_msgs.msg import DiagnosticStatus

    from adaptive_perception.evidence import LINGER_FRAMES

    evidence = tmp_path / "evidence"
    evidence.mkdir()
    (evidence / "image").write_text("in the way")
    graph = Graph(context, {**{f"models.{t}": str(p) for t, p in tier_models.items()}, "routing_mode": "fixed:nano",
                            "policy": "", "providers": ["CPUExecutionProvider"], "warmup_runs": 0,
                            "evidence.dir": str(evidence), "evidence.pre_frames": 1, "evidence.post_frames": 2})
    try:
        assert graph.transition("configure") and graph.node.evidence is None
        assert wait_until(lambda: any(log.msg.startswith(f"evidence capture off: {evidence} cannot be used")
                                      and "image" in log.msg for log in graph.logs), 10)
        assert graph.transition("cleanup")
        (evidence / "image").unlink()
        assert graph.transition("configure") and graph.transition("activate")
        shutil.rmtree(evidence / "image")  # the camera's folder goes, a file in its place: every write fails
        (evidence / "image").write_text("in the way")
        graph.wait_for_image_subscriber()
        frame = np.full((48, 64, 3), 90, np.uint8)
        assert graph.send_lockstep(image_msg(frame, sec=1))
        assert graph.node.evidence.trigger("/image")  # what a DRIFT does (the drift tests turn one for real)
        for sec in range(2, 4 + LINGER_FRAMES):
            assert graph.send_lockstep(image_msg(frame, sec=sec))
        # the frame before the trigger and the 2 after it, each with its detections and routing decision
        said = "drift evidence of camera '/image': 9 messages could not be written ("
        assert wait_until(lambda: any(log.msg.startswith(said) for log in graph.logs), 10), \
            [log.msg for log in graph.logs[-5:]]
        status = graph.status("routing", lambda v: v["evidence_messages_failed"] == "9", timeout=5)
        assert status.level == DiagnosticStatus.WARN
        assert "drift evidence not written: 9 messages of the latest event of camera '/image'" in status.message
    finally:
        graph.close()
