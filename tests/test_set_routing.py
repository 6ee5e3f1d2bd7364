"""`adaptive-perception set-routing`: a running node's routing mode and cost weight switched from the command line,
through its services on a real rclpy graph (the venv has no `ros2` command)."""
from __future__ import annotations

import numpy as np
import pytest

from adaptive_perception.cli import main
from rosgraph import Graph, image_msg, wait_until


@pytest.fixture
def graph(context, tier_models):
    graph = Graph(context, {**{f"models.{t}": str(p) for t, p in tier_models.items()}, "routing_mode": "fixed:small",
                            "policy": "", "providers": ["CPUExecutionProvider"], "warmup_runs": 0})
    assert graph.transition("configure") and graph.transition("activate")
    graph.wait_for_image_subscriber()
    yield graph
    graph.close()


def _routed_tier(graph: Graph, frame: np.ndarray, sec: int) -> str:
    """The tier that ran on the frame, read off its detections (each tier's file names its classes "<tier>-<id>"),
    checked against the one its RoutingDecision names (the router's choice, which alone proved nothing)."""
    assert graph.send_lockstep(image_msg(frame, sec=sec))
    assert wait_until(lambda: any(d.header.stamp.sec == sec for d in graph.detections), 5)
    detections = next(d for d in graph.detections if d.header.stamp.sec == sec)
    ran = {r.hypothesis.class_id.split("-")[0] for det in detections.detections for r in det.results}
    decided = next(d.tier_name for d in graph.routing if d.header.stamp.sec == sec)
    assert ran == {decided}, (ran, decided)
    return decided


def test_set_routing_switches_the_running_node_and_reports_its_answer(graph, capsys, regime_frames):
    node = f"/{graph.name}"
    dense = regime_frames["dense"]  # every tier finds boxes on it
    assert _routed_tier(graph, dense, 1) == "small"
    assert main(["set-routing", "fixed:large", "--node", node]) == 0
    assert f"{node}: routing mode is now 'fixed:large'" in capsys.readouterr().out
    assert _routed_tier(graph, dense, 2) == "large"  # the next frame runs the large tier's model
    assert main(["set-routing", "--cost-weight", "0.25", "--node", node]) == 0
    assert f"{node}: routing.cost_weight is now 0.25" in capsys.readouterr().out
    assert graph.node.get_parameter("routing.cost_weight").value == 0.25
    # refusals: the node's reason, exit 2, the mode in force unchanged (a mode no node knows is argparse's to refuse)
    assert main(["set-routing", "learned", "--node", node]) == 2  # this node has no policy
    err = capsys.readouterr().err
    assert "mode 'learned' refused" in err and "needs a policy" in err, err
    assert _routed_tier(graph, dense, 3) == "large"


def test_set_routing_refuses_a_weight_that_is_not_a_finite_number(capsys):
    with pytest.raises(SystemExit):
        main(["set-routing", "--cost-weight", "nan"])
    assert "argument --cost-weight: nan is not a finite number" in capsys.readouterr().err


def test_set_routing_without_a_node_says_where_it_looked(capsys):
    assert main(["set-routing", "fixed:nano", "--node", "/nobody_here", "--timeout", "0.5"]) == 2
    assert ("no service /nobody_here/set_routing_mode within 0.5 s: is the node running, under that name (--node"
            in capsys.readouterr().err)
    assert main(["set-routing"]) == 2
    assert "set-routing: give a MODE, --cost-weight W, or both" in capsys.readouterr().err
