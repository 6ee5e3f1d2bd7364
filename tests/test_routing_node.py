"""The router inside perception_node on a real rclpy graph: RoutingDecision per frame, live mode and policy swaps."""
from __future__ import annotations

import numpy as np
import pytest
import rclpy

from adaptive_perception_msgs.srv import LoadPolicy, SetRoutingMode
from diagnostic_msgs.msg import DiagnosticStatus
from policies import constant_policy, two_frame_policy, value_policy
from rosgraph import Graph, image_msg, wait_until


@pytest.fixture
def graph(context, tier_models, regime_policy):
    # three tier files whose class names carry the tier's name: each frame's detections tell which tier ran
    g = Graph(context, {**{f"models.{t}": str(path) for t, path in tier_models.items()},
                        "policy": str(regime_policy), "routing_mode": "learned",
                        "providers": ["CPUExecutionProvider"], "image_topics": ["image"], "warmup_runs": 0})
    assert g.transition("configure") and g.transition("activate")
    g.wait_for_image_subscriber()
    yield g
    g.close()


def _route(graph: Graph, rgb: np.ndarray, sec: int):
    """Send one frame in lock-step and return its RoutingDecision, after checking from the frame's detections
    (class names "<tier>-<id>") that the tier the decision names is the tier that ran."""
    assert graph.send_lockstep(image_msg(rgb, sec=sec))
    assert wait_until(lambda: any(d.header.stamp.sec == sec for d in graph.routing)
                      and any(d.header.stamp.sec == sec for d in graph.detections), 5)
    decision = next(d for d in graph.routing if d.header.stamp.sec == sec)
    detections = next(d for d in graph.detections if d.header.stamp.sec == sec)
    ran = {r.hypothesis.class_id.split("-")[0] for det in detections.detections for r in det.results}
    assert ran == {decision.tier_name}, (ran, decision.tier_name)
    return decision


def test_learned_routing_publishes_one_decision_per_frame_with_timings(graph, regime_frames):
    dense, sparse = _route(graph, regime_frames["dense"], 1), _route(graph, regime_frames["sparse"], 2)
    assert (dense.tier_name, dense.tier, sparse.tier_name, sparse.tier) == ("large", 2, "nano", 0)
    for decision in (dense, sparse):
        assert decision.mode == "learned" and decision.policy_id == "dense-to-large"
        assert sum(decision.probabilities) == pytest.approx(1.0, abs=1e-5)
        assert decision.feature_ms > 0 and decision.policy_ms > 0 and decision.inference_ms > 0
        assert decision.total_ms >= decision.feature_ms + decision.policy_ms + decision.inference_ms
        assert np.isnan(decision.drift_score) and decision.drift_state == decision.DRIFT_UNKNOWN  # no reference
    assert [dense.audited, sparse.audited] == [True, False]  # audit.every 30: the 1st, 31st, ... frame
    assert len(graph.routing) == len(graph.detections) == 2
    # these tiers name their classes apart ("nano-0", ...): at configure the node said so, as a warning
    assert wait_until(lambda: any("the tiers name different classes: nano 80 (nano-0" in log.msg for log in graph.logs), 5)
    warned = next(log for log in graph.logs if "the tiers name different classes" in log.msg)
    assert warned.level == 30 and "large 80 (large-0, large-1, large-2, large-3, ...)" in warned.msg  # WARN


def test_a_corrupt_policy_is_refused_and_the_old_one_keeps_routing(graph, regime_frames, tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage")
    response = graph.call(LoadPolicy, "load_policy", LoadPolicy.Request(path=str(corrupt)))
    assert not response.success and str(corrupt) in response.message and "running policy stays" in response.message
    after = [_route(graph, regime_frames[k], sec) for k, sec in (("dense", 10), ("sparse", 11))]
    assert [(d.tier_name, d.policy_id) for d in after] == [("large", "dense-to-large"), ("nano", "dense-to-large")]
    assert graph.node.get_parameter("policy").value != str(corrupt)
    # a policy whose drift reference passed the checks and then raised inside this callback took the node down
    import json

    import onnx

    crafted = two_frame_policy(tmp_path / "crafted.onnx", regime_frames, "crafted")
    model = onnx.load(crafted)
    model.metadata_props.add(key="adaptive_perception.drift", value=json.dumps(
        {"mean": [0.0], "std": [1.0], "edges": [list(range(1, 10))] * 8, "tier_mix": [0.5, 0.3, 0.2],
         "agreement": 0.8, "thresholds": {"feature_psi": 1.0}, "window": -1}))
    onnx.save(model, crafted)
    response = graph.call(LoadPolicy, "load_policy", LoadPolicy.Request(path=str(crafted)))
    assert not response.success and "window -1 must be a whole number" in response.message
    assert _route(graph, regime_frames["dense"], 12).policy_id == "dense-to-large"  # alive, the old policy routing


def test_load_policy_swaps_between_frames(graph, regime_frames, tmp_path):
    reverse = two_frame_policy(tmp_path / "reverse.onnx", regime_frames, "reverse", reverse=True)
    assert _route(graph, regime_frames["dense"], 20).tier_name == "large"
    response = graph.call(LoadPolicy, "load_policy", LoadPolicy.Request(path=str(reverse)))
    assert response.success and response.message == "reverse"
    decision = _route(graph, regime_frames["dense"], 21)
    assert (decision.tier_name, decision.policy_id) == ("nano", "reverse")
    assert graph.node.get_parameter("policy").value == str(reverse)  # a reconfigure keeps the new policy


def test_set_routing_mode_switches_live_and_refuses_unknown_modes(graph, regime_frames):
    response = graph.call(SetRoutingMode, "set_routing_mode", SetRoutingMode.Request(mode="fixed:small"))
    assert response.success
    decision = _route(graph, regime_frames["dense"], 30)
    assert (decision.tier_name, decision.mode, decision.policy_id) == ("small", "fixed:small", "")
    assert list(decision.probabilities) == [0.0, 1.0, 0.0]
    refused = graph.call(SetRoutingMode, "set_routing_mode", SetRoutingMode.Request(mode="fastest"))
    assert not refused.success and "fastest" in refused.message and "fixed:large" in refused.message
    # a 2 MB request came back twice in the answer and went into the log whole: said by its length, cut short
    huge = graph.call(SetRoutingMode, "set_routing_mode", SetRoutingMode.Request(mode="\x1b[2J" + "x" * 2_000_000))
    assert not huge.success and len(huge.message) < 400 and "2000004 characters are no routing mode" in huge.message
    assert "\\x1b[2J" in huge.message and "\x1b" not in huge.message
    path = graph.call(LoadPolicy, "load_policy", LoadPolicy.Request(path="/" + "p" * 1_000_000))
    assert not path.success and len(path.message) < 400 and "a path of 1000001 characters" in path.message
    assert not any(len(log.msg) > 2500 for log in graph.logs)
    assert _route(graph, regime_frames["dense"], 31).mode == "fixed:small"
    # a small noise frame in which small finds nothing: the context the heuristic reads next says 0 objects
    empty = np.random.default_rng(3).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    assert graph.send_lockstep(image_msg(empty, sec=32))
    assert len(graph.detections[-1].detections) == 0 and graph.routing[-1].tier_name == "small"
    # heuristic: the previous routed frame's detection count decides (nano below 3, large from 8): the dense
    # frame after the empty one goes to nano, which finds its many objects, so the next dense frame goes to large
    assert graph.call(SetRoutingMode, "set_routing_mode", SetRoutingMode.Request(mode="heuristic")).success
    assert graph.node.get_parameter("routing_mode").value == "heuristic"
    first = _route(graph, regime_frames["dense"], 33)
    assert (first.mode, first.tier_name) == ("heuristic", "nano") and len(graph.detections[-1].detections) >= 8
    assert _route(graph, regime_frames["dense"], 34).tier_name == "large"


def test_configure_fails_on_a_bad_policy_file_naming_it(context, peer_model, tmp_path):
    bad = tmp_path / "policy.onnx"
    bad.write_bytes(b"not onnx")
    g = Graph(context, {**{f"models.{t}": str(peer_model) for t in ("nano", "small", "large")},
                        "policy": str(bad), "providers": ["CPUExecutionProvider"], "warmup_runs": 0})
    try:
        assert not g.transition("configure") and g.state() == "unconfigured"
        assert wait_until(lambda: any(str(bad) in log.msg and "policy file" in log.msg for log in g.logs), 5)
    finally:
        g.close()


def test_loading_a_policy_trained_on_other_tiers_warns_naming_both_files(graph, tier_models, tmp_path, capfd):
    from adaptive_perception.detector import file_digest

    digests = {t: file_digest(p) for t, p in tier_models.items()}
    matching = constant_policy(tmp_path / "matching.onnx", (0.2, 0.3, 0.5), "matching", digests)
    other = constant_policy(tmp_path / "other.onnx", (0.2, 0.3, 0.5), "other-tiers",
                            {**digests, "large": "0123456789abcdef"})
    capfd.readouterr()
    response = graph.call(LoadPolicy, "load_policy", LoadPolicy.Request(path=str(matching)))
    assert response.success and list(response.warnings) == []
    assert wait_until(lambda: "'matching' loaded" in capfd.readouterr().err, 5)
    response = graph.call(LoadPolicy, "load_policy", LoadPolicy.Request(path=str(other)))
    assert response.success  # a warning, not a refusal, and the caller gets it too
    assert len(response.warnings) == 1 and "0123456789abcdef" in response.warnings[0]
    assert "large tier" in response.warnings[0] and digests["large"] in response.warnings[0]
    logged = ""

    def warned() -> bool:
        nonlocal logged
        logged += capfd.readouterr().err
        return "0123456789abcdef" in logged

    assert wait_until(warned, 5), logged
    warning = next(line for line in logged.splitlines() if "0123456789abcdef" in line)
    assert "WARN" in warning and "large tier" in warning and digests["large"] in warning
    assert str(tier_models["large"]) in warning and "nano tier" not in warning
    # it carries no drift reference: said on loading as at configure (it was said only for cameras in warn or drift)
    assert "policy 'other-tiers' carries no drift reference: drift monitoring is off" in logged
    # and on /diagnostics, where an operator looks (it was only in the log): the routing status warns, naming the tier
    assert wait_until(lambda: "other large tier" in graph.status("routing").message, 5)
    routing = graph.status("routing")
    assert routing.level == DiagnosticStatus.WARN
    assert routing.message.split("policy 'other-tiers' was trained with other ")[1].startswith("large tier files")
    large = {kv.key: kv.value for kv in graph.status("tier large").values}
    assert (large["digest"], large["precision"]) == (digests["large"], "float")
    response = graph.call(LoadPolicy, "load_policy", LoadPolicy.Request(path=str(matching)))
    assert response.success and graph.status("routing", lambda v: v["policy_id"] == "matching", timeout=5)
    assert "trained with other" not in graph.status("routing", lambda v: v["policy_id"] == "matching").message


def test_the_cost_weight_moves_a_value_policys_operating_point_on_a_running_node(graph, regime_frames, tmp_path):
    from rclpy.parameter import Parameter

    # values 0 / 0.5 / 0.8 at costs 0.2 / 0.5 / 1: weight 0 -> large, 1 (the policy's own) -> small, 3 -> nano
    policy = value_policy(tmp_path / "values.onnx", (0.0, 0.5, 0.8), (0.2, 0.5, 1.0), cost_weight=1.0)
    assert graph.call(LoadPolicy, "load_policy", LoadPolicy.Request(path=str(policy))).success
    routed = {}
    for sec, weight in enumerate((3.0, 0.0, -1.0), start=40):
        assert graph.node.set_parameters([Parameter("routing.cost_weight", value=weight)])[0].successful
        routed[weight] = _route(graph, regime_frames["dense"], sec).tier_name
    assert routed == {3.0: "nano", 0.0: "large", -1.0: "small"}
    assert wait_until(lambda: any(log.msg == "routing.cost_weight = -1 (the policy's own weight): the operating point "
                                  "moves from the next frame" for log in graph.logs), 5)
    refused = graph.node.set_parameters([Parameter("routing.cost_weight", value=float("inf"))])[0]
    assert not refused.successful and "routing.cost_weight" in refused.reason
    # a refused batch applies nothing and says nothing of its other members ("conf_threshold ... applies at the
    # next configure" would be false)
    batch = graph.node.set_parameters_atomically([Parameter("conf_threshold", value=0.4),
                                                   Parameter("routing.cost_weight", value=float("nan"))])
    assert not batch.successful and "routing.cost_weight nan must be a number" in batch.reason
    assert graph.node.get_parameter("conf_threshold").value == 0.25
    assert wait_until(lambda: any(log.msg.startswith("parameter change refused (conf_threshold = 0.4, "
                                                     "routing.cost_weight = nan)") for log in graph.logs), 5)
    assert not any("conf_threshold = 0.4 is set" in log.msg for log in graph.logs)
    assert _route(graph, regime_frames["dense"], 50).tier_name == "small"
    # set while another mode routes: said to apply in the learned mode, not "from the next frame"
    assert graph.call(SetRoutingMode, "set_routing_mode", SetRoutingMode.Request(mode="fixed:large")).success
    assert graph.node.set_parameters([Parameter("routing.cost_weight", value=3.0)])[0].successful
    assert wait_until(lambda: any(log.msg == "routing.cost_weight = 3: it applies in the learned mode (routing now "
                                  "fixed:large)" for log in graph.logs), 5)
    assert _route(graph, regime_frames["dense"], 51).tier_name == "large"


def test_services_name_what_is_wrong_before_anything_changes(graph, tier_models):
    """load_policy('') said "is a directory"; embedded:nope named a file path instead of the shipped names; an
    unconfigured node accepted a mode its next configure refused; the live switch's own parameter update was
    reported as a change that waits for configure."""
    empty = graph.call(LoadPolicy, "load_policy", LoadPolicy.Request(path=" "))
    assert not empty.success and empty.message.startswith("no path given: name a policy ONNX file or embedded:policy")
    unknown = graph.call(LoadPolicy, "load_policy", LoadPolicy.Request(path="embedded:nope"))
    assert not unknown.success and "'embedded:nope' names no file shipped with the package" in unknown.message
    assert "embedded:policy" in unknown.message and "embedded:large" in unknown.message
    assert graph.call(SetRoutingMode, "set_routing_mode", SetRoutingMode.Request(mode="fixed:large")).success
    assert not any("applies at the next configure" in log.msg for log in graph.logs)
    assert graph.transition("deactivate") and graph.transition("cleanup")
    graph.node.set_parameters([rclpy.parameter.Parameter("models.small", value="")])
    refused = graph.call(SetRoutingMode, "set_routing_mode", SetRoutingMode.Request(mode="learned"))
    assert not refused.success and "tiers ['small'] are not loaded" in refused.message
    assert graph.call(SetRoutingMode, "set_routing_mode", SetRoutingMode.Request(mode="fixed:nano")).success
    assert graph.transition("configure")


def test_a_running_node_refuses_a_mode_whose_tier_it_has_not_loaded(context, tier_models, regime_frames):
    """nano and small loaded, large empty: fixed:large is refused on the active node and nano keeps running;
    fixed:small is taken and small runs (class names "<tier>-<id>" tell which tier ran)."""

    g = Graph(context, {"models.nano": str(tier_models["nano"]), "models.small": str(tier_models["small"]),
                        "models.large": "", "policy": "", "routing_mode": "fixed:nano",
                        "providers": ["CPUExecutionProvider"], "image_topics": ["image"], "warmup_runs": 0})
    try:
        assert g.transition("configure") and g.transition("activate")
        g.wait_for_image_subscriber()

        def ran(sec: int) -> set[str]:
            assert g.send_lockstep(image_msg(regime_frames["dense"], sec=sec))
            assert wait_until(lambda: any(d.header.stamp.sec == sec for d in g.detections), 5)
            found = next(d for d in g.detections if d.header.stamp.sec == sec)
            return {r.hypothesis.class_id.split("-")[0] for det in found.detections for r in det.results}

        refused = g.call(SetRoutingMode, "set_routing_mode", SetRoutingMode.Request(mode="fixed:large"))
        assert not refused.success and "tiers ['large'] are not loaded" in refused.message
        assert g.node.get_parameter("routing_mode").value == "fixed:nano"
        assert ran(1) == {"nano"}
        assert g.call(SetRoutingMode, "set_routing_mode", SetRoutingMode.Request(mode="fixed:small")).success
        assert ran(2) == {"small"}
    finally:
        g.close()
