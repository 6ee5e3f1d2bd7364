"""Configuration: YAML defaults equal the node's declared defaults; bad values fail with the fix."""
from __future__ import annotations

import ast
import os
import re
import shutil
import threading
import time
from pathlib import Path

import pytest
import yaml

from adaptive_perception.config import NodeConfig
from adaptive_perception.errors import ConfigError
from adaptive_perception.frames import LatestFrameSlot
from adaptive_perception.router import RouterSettings, weighted_mode
from adaptive_perception.telemetry import HealthSettings

ROOT = Path(__file__).resolve().parents[1]


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_config_yaml_lists_every_declared_parameter_with_its_default():
    from adaptive_perception.ros.node import PARAMETERS

    params = _flatten(yaml.safe_load((ROOT / "config" / "perception.yaml").read_text())["/**/perception_node"]["ros__parameters"])
    assert set(params) == set(PARAMETERS)
    for name, (default, _descriptor) in PARAMETERS.items():
        assert params[name] == default, name


@pytest.mark.parametrize("changes,needle", [
    (dict(routing_mode="smart"), "routing mode 'smart' is unknown; use one of learned, heuristic"),
    (dict(models={"nano": ""}), "models.nano is empty but routing_mode 'fixed:nano'"),
    (dict(routing_mode="heuristic"), "models.small is empty but routing_mode 'heuristic' may route to it"),
    (dict(routing_mode="learned", policy="", models={t: f"embedded:{t}" for t in ("nano", "small", "large")}),
     "policy is empty but routing_mode is 'learned'"),
    (dict(policy="/no/policy.onnx"), "policy = '/no/policy.onnx' does not exist; point it at a routing policy"),
    (dict(router=RouterSettings(random_mix=(1.0, -1.0, 1.0))), "routing.random_mix"),
    (dict(models={"nano": "/does/not/exist.onnx"}), "models.nano = '/does/not/exist.onnx' does not exist"),
    (dict(models={"nano": "~/no-such-tier.onnx"}),
     f"models.nano = '~/no-such-tier.onnx' (read as {os.path.expanduser('~')}/no-such-tier.onnx) does not exist"),
    (dict(models={"nano": "/tmp"}), "models.nano = '/tmp' is a folder; point it at a YOLOv8 detection ONNX file in it"),
    (dict(models={"nano": "embedded:nanno"}), "models.nano: 'embedded:nanno' names no file shipped with the package"),
    (dict(image_topics=()), "image_topics"),
    (dict(qos_reliability="sometimes"), "qos.reliability 'sometimes'"),
    (dict(conf_threshold=1.5), "conf_threshold"),
    # accepted, then a configure that failed naming nothing (a timer of 1e300 s), a live change the next configure
    # refused, scores that overflowed into NaN, or a window whose figures were never trimmed
    (dict(mlflow_uri="sqlite:///x.db", mlflow_interval_s=1e300), "mlflow.interval_s 1e+300 must be > 0 and at most a day"),
    (dict(providers=("FooExecutionProvider",)), "execution provider 'FooExecutionProvider' is not one onnxruntime knows"),
    (dict(providers=("",)), "execution provider '' is not one onnxruntime knows"),
    (dict(router=RouterSettings(cost_weight=1e308)), "routing.cost_weight 1e+308 must be a number up to 1e+06"),
    (dict(health=HealthSettings(window_s=float("inf"))), "diagnostics.window_s inf must be at most an hour"),
    (dict(health=HealthSettings(frame_budget_ms=float("inf"))), "diagnostics.frame_budget_ms inf must be at most an hour"),
])
def test_bad_values_name_the_parameter(changes, needle, peer_model):
    base = dict(routing_mode="fixed:nano", models={"nano": str(peer_model), "small": "", "large": ""})
    base.update(changes)
    with pytest.raises(ConfigError, match=re.escape(needle)):
        NodeConfig(**base).validate()


def test_a_model_path_under_the_home_folder_is_read_there(peer_model, tmp_path, monkeypatch):
    """'~/models/n.onnx' in a params file (no shell to expand it) was refused as a file that does not exist."""
    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copy(peer_model, tmp_path / "tier.onnx")
    config = NodeConfig(routing_mode="fixed:nano", models={"nano": "~/tier.onnx", "small": "", "large": ""})
    config.validate()
    assert config.model_paths()["nano"] == str(tmp_path / "tier.onnx")


def test_a_bad_value_is_named_alone_not_beside_a_good_neighbour(peer_model):
    """Checked in pairs, an empty engine cache folder was reported as "cuda.device_id 0 must be >= 0 and
    tensorrt.engine_cache_dir non-empty", and audit.max_share 0 as a problem with audit.every 30 too."""
    from adaptive_perception.audit import AuditSettings
    from adaptive_perception.detector import AcceleratorSettings
    from adaptive_perception.evidence import EvidenceSettings

    base = dict(routing_mode="fixed:nano", models={"nano": str(peer_model), "small": "", "large": ""})
    for changes, said, unsaid in [
            (dict(accelerator=AcceleratorSettings(trt_cache_dir="")), "tensorrt.engine_cache_dir must not be empty",
             "cuda.device_id"),
            (dict(accelerator=AcceleratorSettings(device_id=-1)), "cuda.device_id -1 must be >= 0", "tensorrt"),
            (dict(audit=AuditSettings(max_share=0.0)), "audit.max_share 0.0 must lie in [0.001, 1]", "audit.every"),
            (dict(evidence=EvidenceSettings(budget_mb=0.0)), "evidence.budget_mb 0.0 must be > 0", "pre_frames"),
            (dict(mlflow_uri="sqlite:///x.db", mlflow_experiment=""), "mlflow.experiment must not be empty",
             "interval_s")]:
        with pytest.raises(ConfigError) as refused:
            NodeConfig(**base, **changes).validate()
        assert said in str(refused.value) and unsaid not in str(refused.value), str(refused.value)


def test_every_value_a_declared_range_allows_is_one_the_node_accepts(context, peer_model):
    """`ros2 param describe` (and a parameter GUI) offered audit.max_share 0 and routing.hysteresis 1, inside their
    declared ranges, which the node then refused; the mlflow.interval_s limit held only with MLflow on."""
    from rclpy.parameter import Parameter

    from adaptive_perception.ros.node import PARAMETERS, PerceptionNode

    fixed = {"routing_mode": "fixed:nano", "models.nano": str(peer_model), "models.small": "", "models.large": "",
             "policy": "", "metrics.port": 0}
    node = PerceptionNode(context=context, cli_args=["--ros-args", "-r", "__node:=range_check"],
                          parameter_overrides=[Parameter(k, value=v) for k, v in fixed.items()])
    try:
        checked = 0
        for name, (default, descriptor) in PARAMETERS.items():
            for bounds in [*descriptor.floating_point_range, *descriptor.integer_range]:
                for value in (bounds.from_value, bounds.to_value):
                    node.read_config({name: type(default)(value)})  # raises ConfigError naming it if refused
                    checked += 1
        assert checked >= 20
        with pytest.raises(ConfigError, match="mlflow.interval_s 100000.0 must be > 0 and at most a day"):
            node.read_config({"mlflow.interval_s": 100000.0})  # MLflow off (no tracking URI): still refused
    finally:
        node.destroy_node()


def test_good_config_validates(peer_model):
    config = NodeConfig(routing_mode="fixed:nano", models={"nano": str(peer_model), "small": "", "large": ""}).validate()
    assert config.model_paths() == {"nano": str(peer_model)}
    default = NodeConfig().validate()  # learned routing over the embedded tiers and policy
    assert default.routing_mode == "learned" and default.policy == "embedded:policy" and len(default.model_paths()) == 3


def test_slot_keeps_only_the_newest_frame_per_camera_and_serves_cameras_in_turn():
    slot: LatestFrameSlot[int] = LatestFrameSlot()
    assert slot.put("front", 1) is False
    assert slot.put("front", 2) is True
    slot.put("rear", 10)
    slot.put("front", 3)
    assert slot.dropped == 2
    assert slot.take(0) == ("front", 3)
    assert slot.take(0) == ("rear", 10)
    assert slot.take(0.01) is None
    slot.put("rear", 11)
    assert slot.close() == ["rear"]  # what it discards is named, so the node counts it (deactivate lost count of it)
    assert slot.take(0) is None and slot.closed


def test_slot_serves_the_camera_served_least_recently_when_cameras_publish_in_rounds():
    slot: LatestFrameSlot[int] = LatestFrameSlot()
    slot.put("cam0", 1), slot.put("cam1", 1)  # round 1: cam0's frame lands first
    assert slot.take(0) == ("cam0", 1)
    assert slot.take(0) == ("cam1", 1)
    slot.put("cam0", 2)
    assert slot.take(0) == ("cam0", 2)
    slot.put("cam0", 3), slot.put("cam1", 3)  # round 3 lands while cam0's frame 2 is processed: cam0 first again
    assert slot.take(0) == ("cam1", 3)  # cam1 was served less recently (serving cam0 again left cam1 two inferences)
    assert slot.take(0) == ("cam0", 3)
    slot.put("cam1", 4)
    slot.put("cam2", 1)  # a camera never served goes before one served before, though its frame came later
    assert slot.take(0) == ("cam2", 1) and slot.take(0) == ("cam1", 4) and slot.take(0.01) is None


def test_a_camera_held_by_one_worker_waits_while_another_worker_serves_the_other_cameras():
    slot: LatestFrameSlot[int] = LatestFrameSlot()
    slot.put("a", 1)
    assert slot.take(0, hold=True) == ("a", 1)  # worker 1 processes a's frame 1
    slot.put("a", 2), slot.put("b", 1)
    assert slot.take(0, hold=True) == ("b", 1)  # worker 2 gets b
    assert slot.take(0.01) is None  # a's frame 2 waits: a second worker on a would publish its outputs out of order
    slot.release("a")
    assert slot.take(0) == ("a", 2)
    slot.release("b")
    slot.put("b", 2)
    assert slot.take(0) == ("b", 2) and slot.dropped == 0


def test_two_workers_never_process_one_camera_at_once_and_both_cameras_are_served_in_parallel():
    slot: LatestFrameSlot[int] = LatestFrameSlot()
    spans: list[tuple[str, int, float, float]] = []

    def worker():
        for camera, frame in slot.items(0.01):
            begin = time.monotonic()
            time.sleep(0.02)  # an inference
            spans.append((camera, frame, begin, time.monotonic()))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for frame in range(40):  # camera a every 4 ms, faster than one worker serves it; b every 20 ms
        slot.put("a", frame)
        if frame % 5 == 0:
            slot.put("b", frame)
        time.sleep(0.004)
    time.sleep(0.1)
    slot.close()
    for thread in threads:
        thread.join()
    for camera in ("a", "b"):
        own = sorted((s for s in spans if s[0] == camera), key=lambda s: s[2])
        assert [s[1] for s in own] == sorted({s[1] for s in own}), own  # in order, none twice
        assert all(earlier[3] <= later[2] for earlier, later in zip(own, own[1:])), own  # one at a time
    a_spans, b_spans = [s for s in spans if s[0] == "a"], [s for s in spans if s[0] == "b"]
    assert len(b_spans) >= 6 and any(a[2] < b[3] and b[2] < a[3] for a in a_spans for b in b_spans)  # in parallel


@pytest.mark.parametrize("cores,cameras,workers,expected", [
    (2, 1, 0, (1, 0)),  # the shipped default, one camera: one worker on onnxruntime's pool (one thread per core)
    (2, 2, 0, (2, 1)),  # two cameras on 2 cores: a worker each, single-threaded sessions (the 30-minute soak's)
    (2, 3, 0, (2, 1)),  # more cameras than cores: a worker per core
    (8, 2, 0, (2, 4)),  # two cameras on 8 cores: the cores shared out
    (8, 3, 0, (3, 2)),
    (2, 2, 1, (1, 0)),  # one worker asked for
    (2, 1, 2, (2, 1)),
])
def test_workers_default_to_one_per_camera_and_core_and_share_the_cores_out(monkeypatch, cores, cameras, workers,
                                                                             expected):
    monkeypatch.setattr("adaptive_perception.config.usable_cores", lambda: cores)
    config = NodeConfig(image_topics=tuple(f"cam{i}" for i in range(cameras)), workers=workers)
    assert (config.worker_count, config.session_threads) == expected
    assert NodeConfig(image_topics=("a", "b"), workers=2, intra_op_threads=3).session_threads == 3  # as asked


def test_workers_and_threads_are_bounded():
    for bad in (-1, 17):
        with pytest.raises(ConfigError, match=f"workers {bad} must be 0-16"):
            NodeConfig(workers=bad).validate()
    with pytest.raises(ConfigError, match="intra_op_threads -1 must be >= 0"):
        NodeConfig(intra_op_threads=-1).validate()


def _readme_table(heading: str) -> list[str]:
    """First cells of the table under a README heading."""
    text = (ROOT / "README.md").read_text().split(f"\n## {heading}", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    return [row.split(" | ")[0].removeprefix("| ") for row in rows[1:]]


def test_the_readme_parameter_table_lists_exactly_the_declared_parameters():
    from adaptive_perception.ros.node import PARAMETERS

    listed = set()
    for cell in _readme_table("Parameters"):
        names = re.findall(r"`([^`]+)`", cell)
        prefix = names[0].rsplit(".", 1)[0]
        listed |= {prefix + name if name.startswith(".") else name for name in names}
    assert listed == set(PARAMETERS)


LAUNCH_ACTIVATES_AFTER = {"start_state": "configuring", "goal_state": "inactive"}  # its transition event filter


def test_the_launch_file_passes_only_what_the_node_has():
    """launch_ros cannot run here: read the launch file's arguments, remapping and parameter file instead."""
    from adaptive_perception.ros.node import PARAMETERS

    tree = ast.parse((ROOT / "launch" / "perception.launch.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    declared = {c.args[0].value for c in calls if c.func.id == "DeclareLaunchArgument"}
    used = {c.args[0].value for c in calls if c.func.id == "LaunchConfiguration"}
    assert declared == used == {"image", "params_file", "namespace", "dds_profile"}
    node = next(c for c in calls if c.func.id == "LifecycleNode")
    keywords = {k.arg: k.value for k in node.keywords}
    assert keywords["executable"].value == "perception_node" and keywords["name"].value == "perception_node"
    remapped = [pair.elts[0].value for pair in keywords["remappings"].elts]
    assert remapped == ["image"] == list(PARAMETERS["image_topics"][0])  # the node's default camera topic
    default_params = next(c for c in calls if c.func.id == "PathJoinSubstitution" and
                          any(isinstance(e, ast.Constant) and e.value == "perception.yaml" for e in c.args[0].elts))
    assert default_params is not None  # and perception.yaml holds exactly the declared parameters (above)
    handler = next(c for c in calls if c.func.id == "OnStateTransition")
    states = {k.arg: k.value.value for k in handler.keywords if k.arg in ("start_state", "goal_state")}
    # the end of a configure only (test_node: a deactivate ends in inactive too, and the launch re-activated it)
    assert states == LAUNCH_ACTIVATES_AFTER


def test_learned_at_a_weight_names_the_learned_mode_and_its_weight():
    """`learned:<w>` in the demo's and the benchmarks' mode lists; a weight of 0 is a weight (greedy on value), not
    "the default"."""
    assert weighted_mode("learned:0.25") == ("learned", 0.25)
    assert weighted_mode("learned:0") == ("learned", 0.0)
    assert weighted_mode("heuristic") == ("heuristic", None) and weighted_mode("fixed:nano") == ("fixed:nano", None)
    for bad in ("learned:", "learned:x", "learned:-0.1", "learned:inf", "learned:nan"):
        with pytest.raises(ConfigError, match=f"mode '{bad}': the cost weight after learned: must be a finite"):
            weighted_mode(bad)
    with pytest.raises(ConfigError, match="routing mode 'fixed:huge' is unknown"):
        weighted_mode("fixed:huge")


def test_config_refuses_an_iou_threshold_past_1_and_a_qos_depth_of_0(peer_model):
    base = dict(routing_mode="fixed:nano", models={"nano": str(peer_model), "small": "", "large": ""})
    with pytest.raises(ConfigError, match=r"conf_threshold and iou_threshold must lie in \[0, 1\]"):
        NodeConfig(**base, iou_threshold=1.5).validate()
    with pytest.raises(ConfigError, match="qos.depth and max_detections must be >= 1"):
        NodeConfig(**base, qos_depth=0).validate()
    NodeConfig(**base, iou_threshold=1.0, qos_depth=1).validate()  # the bounds themselves pass
