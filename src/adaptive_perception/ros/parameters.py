"""perception_node's ROS parameters: name -> (default, descriptor), defaults from NodeConfig so code and YAML agree."""
from __future__ import annotations

import difflib
import json
import re
from pathlib import Path

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from adaptive_perception.audit import MIN_SHARE
from adaptive_perception.config import MAX_WORKERS, NodeConfig
from adaptive_perception.detector import TIERS
from adaptive_perception.errors import AdaptivePerceptionError
from adaptive_perception.router import MAX_HYSTERESIS


def _describe(text: str, **ranges: object) -> ParameterDescriptor:
    return ParameterDescriptor(description=text, **ranges)


_DEFAULTS = NodeConfig()
PARAMETERS: dict[str, tuple[object, ParameterDescriptor]] = {
    "image_topics": (list(_DEFAULTS.image_topics), _describe(
        "Camera topics to subscribe to; a name ending in 'compressed' (after remapping) is read as "
        "sensor_msgs/CompressedImage, any other as sensor_msgs/Image. Outputs of all cameras share the output topics "
        "(header identifies the camera); with several cameras each also gets ~/<camera topic>/detections, "
        "~/<camera topic>/routing, ~/<camera topic>/detections_marker and ~/<camera topic>/debug_image[/compressed]. "
        "The workers (`workers`) serve the cameras round-robin, each keeping only its newest "
        "frame.")),
    "routing_mode": (_DEFAULTS.routing_mode, _describe(
        "How each frame picks a tier: learned (the policy) | heuristic (previous frame's detection count) | random "
        "(seeded, routing.random_mix) | fixed:nano | fixed:small | fixed:large. Switch live with set_routing_mode.")),
    "policy": (_DEFAULTS.policy, _describe(
        "Routing policy ONNX: embedded:policy (shipped with the package), a file path, or empty (then only the "
        "rule-based modes work). Replace live with the load_policy service.")),
    "routing.heuristic_thresholds": (list(_DEFAULTS.router.heuristic_thresholds), _describe(
        "[low, high] detection counts of the heuristic mode: previous count < low -> nano, < high -> small, "
        "else large.")),
    "routing.random_mix": (list(_DEFAULTS.router.random_mix), _describe(
        "Weights of nano, small, large in the random mode (normalised).")),
    "routing.random_seed": (_DEFAULTS.router.random_seed, _describe(
        "Seed of the random mode's draws (>= 0).",
        integer_range=[IntegerRange(from_value=0, to_value=2**63 - 1, step=1)])),
    "routing.hysteresis": (_DEFAULTS.router.hysteresis, _describe(
        "Learned mode: stay on the previous tier unless the best tier's probability beats it by more than this "
        f"(0 = off; at most {MAX_HYSTERESIS}).",
        floating_point_range=[FloatingPointRange(from_value=0.0, to_value=MAX_HYSTERESIS)])),
    "routing.cost_weight": (_DEFAULTS.router.cost_weight, _describe(
        "Learned mode with a tier_values policy: how much a tier's cost weighs against its predicted value (higher = "
        "cheaper routing; at most 1e6); negative = the weight the policy was calibrated with. Takes effect from the "
        "next frame when set on a running node.")),
    **{f"models.{tier}": (_DEFAULTS.models[tier], _describe(
        f"The {tier} tier's YOLOv8 detection ONNX: embedded:<tier> (shipped with the package), a file path, "
        "or empty = not loaded.")) for tier in TIERS},
    "providers": (list(_DEFAULTS.providers), _describe(
        "onnxruntime execution providers in order of preference; unavailable ones are skipped with a warning "
        "and CPUExecutionProvider is always the last resort.")),
    "tensorrt.engine_cache_dir": (_DEFAULTS.accelerator.trt_cache_dir, _describe(
        "TensorRT: folder of built engines, kept between runs (one subfolder per model file and content digest); "
        "the first start with a new model builds its engine (minutes on a Jetson), later starts load it. Must not be "
        "empty.")),
    "tensorrt.fp16": (_DEFAULTS.accelerator.trt_fp16, _describe("TensorRT: build FP16 engines (faster; YOLOv8 "
                                                                "accuracy is unchanged to about 0.1 mAP).")),
    "cuda.device_id": (_DEFAULTS.accelerator.device_id, _describe(
        "GPU used by the TensorRT and CUDA providers.", integer_range=[IntegerRange(from_value=0, to_value=64, step=1)])),
    "conf_threshold": (_DEFAULTS.conf_threshold, _describe(
        "Minimum class score of a detection.", floating_point_range=[FloatingPointRange(from_value=0.0, to_value=1.0)])),
    "iou_threshold": (_DEFAULTS.iou_threshold, _describe(
        "IoU above which NMS suppresses a box of the same class.",
        floating_point_range=[FloatingPointRange(from_value=0.0, to_value=1.0)])),
    "max_detections": (_DEFAULTS.max_detections, _describe(
        "Most boxes published per frame.", integer_range=[IntegerRange(from_value=1, to_value=10000, step=1)])),
    "intra_op_threads": (_DEFAULTS.intra_op_threads, _describe(
        "onnxruntime intra-op threads per session; 0 = onnxruntime's default (one per core) with one worker, the "
        "cores shared out (at least 1 each) with several.",
        integer_range=[IntegerRange(from_value=0, to_value=256, step=1)])),
    "workers": (_DEFAULTS.workers, _describe(
        "Frames processed at once, each camera's by one worker at a time (its outputs stay in order); 0 = one per "
        "camera, at most one per core (one camera: 1). With several cameras, a worker per core with single-threaded "
        "sessions keeps more of their frames than one worker whose every inference is split over the cores (2 "
        "cameras at 30 Hz on 2 cores, 30 minutes: 99 % processed against 83-85 %), each frame taking longer.",
        integer_range=[IntegerRange(from_value=0, to_value=MAX_WORKERS, step=1)])),
    "spin_wait": (_DEFAULTS.spin_wait, _describe(
        "onnxruntime intra-op threads spin-wait for work instead of sleeping (onnxruntime's own default). Default "
        "false: spinning threads take the cores the node's other threads and the machine's other processes need "
        "(two cameras at 30 Hz on 2 cores: 17-26 % more frames processed sleeping, node time p95 lower; beside one "
        "busy process the small tier's p50 rose 17-45 % sleeping and 1.9-3.6x spinning).")),
    "preprocess_in_graph": (_DEFAULTS.preprocess_in_graph, _describe(
        "Each tier's session runs its model with a uint8 (1, H, W, 3) input that the graph itself converts to the "
        "float (1, 3, H, W) / 255 the model takes (Transpose, Cast, Mul in front of it; outputs identical): the host "
        "only letterboxes, and on a GPU the frame crosses the bus as a quarter of the bytes. false: the host converts "
        "(the model file's own graph).")),
    "graph_cache_dir": (_DEFAULTS.graph_cache_dir, _describe(
        "Where the uint8-input graphs of preprocess_in_graph are kept, one file per model file and content digest, "
        "made on the first load of a model and read as they are after, the 24 most recently used kept; "
        "empty: built in memory at every load.")),
    "warmup_runs": (_DEFAULTS.warmup_runs, _describe(
        "Inferences on a grey frame per tier during configure.", integer_range=[IntegerRange(from_value=0, to_value=100, step=1)])),
    "qos.reliability": (_DEFAULTS.qos_reliability, _describe("Image subscription reliability: best_effort | reliable.")),
    "qos.depth": (_DEFAULTS.qos_depth, _describe(
        "Image subscription (DDS reader) queue depth. The node still processes only the newest frame per camera and "
        "counts the rest as dropped; the queue only holds frames that arrive while the executor is busy, such as a "
        "camera's catch-up burst after a stall (10: a third of a second at 30 Hz; with 2, only 3-5 of a burst of 12 "
        "frames reached the node).", integer_range=[IntegerRange(from_value=1, to_value=100, step=1)])),
    "diagnostics.frame_budget_ms": (_DEFAULTS.health.frame_budget_ms, _describe(
        "/diagnostics: a camera is WARN while its node-time p95 over diagnostics.window_s exceeds this (33.3 = 30 Hz; at most 3600000).")),
    "diagnostics.max_drop_share": (_DEFAULTS.health.max_drop_share, _describe(
        "/diagnostics: a camera is WARN while more than this share of its frames is dropped or lost.",
        floating_point_range=[FloatingPointRange(from_value=0.0, to_value=1.0)])),
    "diagnostics.stall_s": (_DEFAULTS.health.stall_s, _describe(
        "/diagnostics: a camera is ERROR when its frames arrive but none was processed for this many seconds (at "
        "most 3600).")),
    "diagnostics.window_s": (_DEFAULTS.health.window_s, _describe(
        "Seconds of recent frames behind the rates, shares and percentiles on /diagnostics (at most 3600).")),
    "metrics.port": (_DEFAULTS.metrics_port, _describe(
        "Prometheus exporter port (http://<metrics.bind>:<port>/metrics); 0 = off.",
        integer_range=[IntegerRange(from_value=0, to_value=65535, step=1)])),
    "metrics.bind": (_DEFAULTS.metrics_bind, _describe(
        "Address the Prometheus exporter listens on: 127.0.0.1 (this machine only) or 0.0.0.0 (every interface).")),
    "mlflow.tracking_uri": (_DEFAULTS.mlflow_uri, _describe(
        "Log each node session as an MLflow run (parameters, per-camera figures every mlflow.interval_s, a final "
        "summary), from a background thread: e.g. sqlite:///runs/mlflow.db or http://mlflow:5000; empty = off. "
        "Needs the mlflow extra (mlflow-skinny).")),
    "mlflow.experiment": (_DEFAULTS.mlflow_experiment, _describe("MLflow experiment of the node's runs.")),
    "mlflow.interval_s": (_DEFAULTS.mlflow_interval_s, _describe("Seconds between two MLflow snapshots (at most 86400).")),
    "audit.every": (_DEFAULTS.audit.every, _describe(
        "Audit one routed frame in this many per camera: the reference tier (large) also runs on it in a background "
        "process, and its agreement with the routed output (F1 at IoU 0.5) feeds the drift monitor; 0 = off.",
        integer_range=[IntegerRange(from_value=0, to_value=100000, step=1)])),
    "audit.max_share": (_DEFAULTS.audit.max_share, _describe(
        "Most of the wall time the audit worker may spend on the reference tier; a due audit beyond it is skipped "
        f"and counted (at least {MIN_SHARE}).", floating_point_range=[FloatingPointRange(from_value=MIN_SHARE,
                                                                                           to_value=1.0)])),
    "drift.confirm_frames": (_DEFAULTS.drift_confirm, _describe(
        "Frames the drift score must stay above 1 before the state is DRIFT (WARN at once), and below 0.8 before "
        "it returns to OK.", integer_range=[IntegerRange(from_value=1, to_value=10000, step=1)])),
    "evidence.dir": (_DEFAULTS.evidence.folder, _describe(
        "Folder for drift evidence: when a camera's drift state turns DRIFT, its frames from before the event (a "
        "ring of evidence.pre_frames) and after it (evidence.post_frames), with the node's outputs for them, are "
        "written as a rosbag2 MCAP segment under <dir>/<camera topic with / as _>/evidence_NNNN, for `train retrain`; "
        "empty = off.")),
    "evidence.pre_frames": (_DEFAULTS.evidence.pre_frames, _describe(
        "Frames kept per camera before a drift event (held in memory as received: about 0.9 MB each at 640x480).",
        integer_range=[IntegerRange(from_value=0, to_value=3000, step=1)])),
    "evidence.post_frames": (_DEFAULTS.evidence.post_frames, _describe(
        "Frames recorded per camera after a drift event.",
        integer_range=[IntegerRange(from_value=1, to_value=100000, step=1)])),
    "evidence.budget_mb": (_DEFAULTS.evidence.budget_mb, _describe(
        "Disk budget of each camera's evidence folder: the oldest evidence is removed first, never the event being "
        "written.", floating_point_range=[FloatingPointRange(from_value=1.0, to_value=1e7)])),
    "autostart": (False, _describe("Configure and activate on start-up (for `ros2 run` without a lifecycle manager).")),
}


def parse_override(item: str) -> tuple[str, object]:
    """NAME=VALUE from a command line -> (name, value) for a declared parameter: a string parameter takes the text,
    others read it as JSON (numbers, true/false, lists) and must have the parameter's type; an integer becomes a
    float where the parameter is a double (ROS refuses an int there)."""
    name, sep, text = item.partition("=")
    if not sep:
        raise AdaptivePerceptionError(f"--param {item!r}: use NAME=VALUE, e.g. audit.every=0")
    if name not in PARAMETERS:
        close = difflib.get_close_matches(name, PARAMETERS, n=1)
        raise AdaptivePerceptionError(f"--param {item!r}: perception_node has no parameter {name!r}"
                                      + (f"; did you mean {close[0]}?" if close else " (README, Parameters)"))
    default = PARAMETERS[name][0]
    if isinstance(default, str):
        return name, text
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    if isinstance(default, float):
        value = _as_float(value)
    elif isinstance(default, list) and any(isinstance(v, float) for v in default) and isinstance(value, list):
        value = [_as_float(v) for v in value]
    kind = "a list" if isinstance(default, list) else {bool: "true or false", int: "a whole number",
                                                         float: "a number"}[type(default)]
    if type(value) is not type(default):  # the node would refuse it and never start
        raise AdaptivePerceptionError(f"--param {item!r}: {name} takes {kind}, e.g. {name}={json.dumps(default)}")
    return name, value


def _kind(default: object) -> str:
    """What a params file must write for a parameter of `default`'s type."""
    if isinstance(default, list):
        return "a list of " + {int: "whole numbers", float: "numbers with a decimal point", str: "strings"}[
            type(default[0])]
    return {bool: "true or false", int: "a whole number", float: "a number with a decimal point", str: "a string"}[
        type(default)]


def _fits(value: object, default: object) -> bool:
    """Whether ROS takes `value` from a params file for a parameter of `default`'s type: it converts nothing (1 for
    a double, 1.0 for an integer, 123 for a string are each refused), and a list's items all have its items' type."""
    if isinstance(default, list):
        return isinstance(value, list) and all(type(v) is type(default[0]) for v in value)
    return type(value) is type(default)


def _as_float(value: object) -> object:
    return float(value) if type(value) is int else value  # True stays a bool


def check_params_file(path: Path, ros_args: list[str]) -> None:
    """Refuse a --params-file that holds no parameters for this node: ROS would start it on its defaults, silently.
    `ros_args`: the node's ROS arguments (a `-r __node:=NAME` renames it)."""
    import yaml

    try:
        data = _ros_yaml(yaml.compose(Path(path).read_text()))
    except OSError as exc:
        raise AdaptivePerceptionError(f"--params-file '{path}' cannot be read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise AdaptivePerceptionError(f"--params-file '{path}' is not YAML: {exc}") from None
    node, namespace = "perception_node", "/"
    for i, arg in enumerate(ros_args[:-1]):  # -r __node:=NAME renames the node, -r __ns:=/NS places it
        if arg in ("-r", "--remap") and ros_args[i + 1].startswith("__node:="):
            node = ros_args[i + 1].split(":=", 1)[1]
        if arg in ("-r", "--remap") and ros_args[i + 1].startswith("__ns:="):
            namespace = "/" + ros_args[i + 1].split(":=", 1)[1].strip("/")
    full = f"{namespace.rstrip('/')}/{node}"
    given: dict[str, object] = {}  # node key -> its ros__parameters

    def walk(entry: object, prefix: str) -> None:
        for key, value in (entry.items() if isinstance(entry, dict) else ()):
            if key == "ros__parameters":
                given[prefix] = value
            else:
                walk(value, f"{prefix}/{str(key).strip('/')}")
    walk(data, "")
    names = list(given)
    if not any(_names_node(name, full) for name in names):
        found = f"parameters for {', '.join(n or '/' for n in names)} only" if names else "no <node>: ros__parameters: entry"
        raise AdaptivePerceptionError(f"--params-file '{path}' holds {found}, none for {full}: the node would start on "
                                      f"its defaults; key them by this node's name (/**/{node}: ros__parameters: ...), "
                                      "or by /** for any node")
    wrong = []  # ROS refused them naming neither the file nor the type to write
    for name in (n for n in names if _names_node(n, full)):
        for parameter, value in _flat(given[name]).items():
            if parameter not in PARAMETERS:
                continue
            default = PARAMETERS[parameter][0]
            if value == []:  # ROS cannot type an empty list: the parameter stays unset and the node cannot start
                wrong.append(f"{parameter}: [] is empty, which ROS leaves unset (e.g. {json.dumps(default)})")
            elif not _fits(value, default):
                wrong.append(f"{parameter}: {json.dumps(value)} is not {_kind(default)} (e.g. "
                             f"{json.dumps(default)})")
    if wrong:
        raise AdaptivePerceptionError(f"--params-file '{path}': {'; '.join(wrong)}; ROS converts no type")


ROS_TRUE = {"Y", "y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"}
ROS_FALSE = {"N", "n", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"}
_C_INTEGER = re.compile(r"[+-]?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")


def _ros_scalar(text: str, quoted: bool) -> object:
    """A params file's scalar as ROS's YAML reader types it (not as YAML 1.1 does: `4e3` is a double, `1_000`, `~`
    and `2024-01-01` are strings): quoted, a string; else a bool word, a C integer (0x10, 010 octal), a C double
    (4e3, 1.0e6, inf, .nan), or a string."""
    if quoted:
        return text
    if text in ROS_TRUE or text in ROS_FALSE:
        return text in ROS_TRUE
    if _C_INTEGER.fullmatch(text):
        body = text.lstrip("+-")
        base = 16 if body[:2] in ("0x", "0X") else 8 if len(body) > 1 and body[0] == "0" else 10
        return int(text, base)
    if "_" not in text:
        try:
            return float(text.replace(".inf", "inf").replace(".Inf", "inf").replace(".nan", "nan").replace(".NaN", "nan"))
        except ValueError:
            pass
    return text


def _ros_yaml(node) -> object:
    """A composed YAML node as plain values, its scalars typed as ROS types them."""
    import yaml

    if node is None:
        return None
    if isinstance(node, yaml.ScalarNode):
        return _ros_scalar(node.value, node.style in ("'", '"'))
    if isinstance(node, yaml.SequenceNode):
        return [_ros_yaml(item) for item in node.value]
    return {str(key.value): _ros_yaml(value) for key, value in node.value}


def _flat(entry: object, prefix: str = "") -> dict[str, object]:
    """A params file's nested ros__parameters as dotted names (`audit: {every: 30}` is audit.every)."""
    if not isinstance(entry, dict):
        return {prefix: entry} if prefix else {}
    flat: dict[str, object] = {}
    for key, value in entry.items():
        flat.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _names_node(key: str, full: str) -> bool:
    """Whether a params file's node key (`/front/perception_node`, `/**/perception_node`, `/*/x`, `/**`) names the
    node of fully qualified name `full`, as ROS matches them: a key without a leading slash is from the root, `*`
    is one name, `**` any number of them."""
    pattern = ""
    for token in key.strip("/").split("/"):
        pattern += "(/[^/]+)*" if token == "**" else "/[^/]+" if token == "*" else "/" + re.escape(token)
    return re.fullmatch(pattern, full) is not None


def params_files(ros_args: list[str]) -> list[str]:
    """The --params-file paths among a node's ROS arguments (launch passes each file it is given so)."""
    return [ros_args[i + 1] for i, arg in enumerate(ros_args[:-1]) if arg == "--params-file"]


ROS_NODE_PARAMETERS = {"use_sim_time", "start_type_description_service"}  # what rclpy declares on every node


def unknown_parameters(names) -> list[str]:
    """One line per name that is no parameter of perception_node (or of every ROS node), with the closest one: a
    misspelt key in a params file is otherwise ignored by ROS without a word, and its parameter keeps its default."""
    lines = []
    for name in sorted(set(names) - set(PARAMETERS) - ROS_NODE_PARAMETERS):
        close = difflib.get_close_matches(name, PARAMETERS, n=1)
        lines.append(f"{name!r}" + (f" (did you mean {close[0]}?)" if close else ""))
    return lines

