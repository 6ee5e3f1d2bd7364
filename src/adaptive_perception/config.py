"""Typed, validated node configuration (the node's ROS parameters, read once per configure)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from adaptive_perception.audit import AuditSettings
from adaptive_perception.evidence import EvidenceSettings
from adaptive_perception.detector import DEFAULT_PROVIDERS, GRAPH_CACHE, TIERS, AcceleratorSettings
from adaptive_perception.errors import ConfigError, refuse_first
from adaptive_perception.router import RouterSettings, check_mode, tiers_needed
from adaptive_perception.telemetry import HealthSettings

RELIABILITIES = ("best_effort", "reliable")
EMBEDDED_PREFIX = "embedded:"
EMBEDDED_DIR = Path(__file__).resolve().parent / "models"
MAX_WORKERS = 16


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which taskset and container cpusets narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_model(value: str) -> str:
    """A model or policy parameter's file path: `embedded:<name>` names a file shipped with the package
    (embedded:nano|small|large for the tiers, embedded:policy for the routing policy); a leading ~ is the home."""
    if value.startswith(EMBEDDED_PREFIX):
        path = EMBEDDED_DIR / f"{value[len(EMBEDDED_PREFIX):]}.onnx"
        if not path.is_file():
            known = ", ".join(EMBEDDED_PREFIX + p.stem for p in sorted(EMBEDDED_DIR.glob("*.onnx")))
            raise ConfigError(f"'{value}' names no file shipped with the package; embedded files: {known}")
        return str(path)
    return os.path.expanduser(value)  # '~/models/n.onnx' in a params file, where no shell expands it


def tier_models(items: list[str], models: dict[str, str] | None = None) -> dict[str, str]:
    """`models` (tier -> file) with each `--model TIER=PATH` item applied over it; a malformed item is refused."""
    models = dict(models or {})
    for item in items:
        tier, _, path = item.partition("=")
        if tier not in TIERS or not path:
            raise ConfigError(f"--model '{item}' must look like nano=PATH, small=PATH or large=PATH")
        models[tier] = path
    return models


@dataclass(frozen=True)
class NodeConfig:
    """Everything `on_configure` needs; defaults match config/perception.yaml."""

    image_topics: tuple[str, ...] = ("image",)
    routing_mode: str = "learned"
    policy: str = f"{EMBEDDED_PREFIX}policy"
    router: RouterSettings = RouterSettings()
    models: dict[str, str] = field(default_factory=lambda: {tier: f"{EMBEDDED_PREFIX}{tier}" for tier in TIERS})
    providers: tuple[str, ...] = DEFAULT_PROVIDERS
    accelerator: AcceleratorSettings = AcceleratorSettings()
    conf_threshold: float = 0.25
    iou_threshold: float = 0.7
    max_detections: int = 300
    intra_op_threads: int = 0
    workers: int = 0  # frames processed at once (each camera by one worker at a time); 0: one per camera, per core
    spin_wait: bool = False  # onnxruntime intra-op threads sleep between parallel work (true: spin, its own default)
    preprocess_in_graph: bool = True  # the tier graphs take the uint8 frame and normalise it (`detector.with_uint8_input`)
    graph_cache_dir: str = GRAPH_CACHE  # those graphs, made once per model file ("": in memory at every load)
    warmup_runs: int = 2
    qos_reliability: str = "best_effort"
    qos_depth: int = 10  # a third of a second of frames at 30 Hz for a busy executor; the worker takes only the newest
    health: HealthSettings = HealthSettings()
    metrics_port: int = 9464  # Prometheus exporter; 0 = off
    metrics_bind: str = "127.0.0.1"
    mlflow_uri: str = ""  # one MLflow run per node session; empty = off
    mlflow_experiment: str = "perception_node"
    mlflow_interval_s: float = 10.0
    audit: AuditSettings = AuditSettings()
    drift_confirm: int = 15  # frames the drift score must stay above 1 before DRIFT (and below the band before OK)
    evidence: EvidenceSettings = EvidenceSettings()  # frames around a DRIFT event as MCAP; off by default

    @property
    def worker_count(self) -> int:
        """The workers the node runs: `workers`, or for 0 one per camera, at most one per core this process may
        use."""
        return self.workers or max(1, min(len(self.image_topics), usable_cores(), MAX_WORKERS))

    @property
    def session_threads(self) -> int:
        """onnxruntime intra-op threads per tier session: `intra_op_threads`; for 0, onnxruntime's default (one
        per core) with one worker, and the cores shared out with several (at least 1 each: concurrent runs of one
        session would share its thread pool, so the workers are the parallelism)."""
        count = self.worker_count
        return self.intra_op_threads or (max(1, usable_cores() // count) if count > 1 else 0)

    def model_paths(self) -> dict[str, str]:
        """Resolved file path per loaded tier (tiers with an empty parameter are left out)."""
        return {tier: resolve_model(value) for tier, value in self.models.items() if value}

    def validate(self) -> "NodeConfig":
        """Return self, or raise ConfigError naming the parameter and the fix."""
        if not self.image_topics or any(not t for t in self.image_topics):
            raise ConfigError(f"image_topics {list(self.image_topics)} must list at least one non-empty topic, "
                              "e.g. image_topics:=[/camera/image_raw]")
        check_mode(self.routing_mode)
        self.router.validate()
        for tier in tiers_needed(self.routing_mode):
            if not self.models.get(tier):
                raise ConfigError(f"models.{tier} is empty but routing_mode '{self.routing_mode}' may route to it; "
                                  f"set models.{tier} to a YOLOv8 detection ONNX file (or use a fixed:<tier> mode)")
        if self.routing_mode == "learned" and not self.policy:
            raise ConfigError("policy is empty but routing_mode is 'learned'; set policy to embedded:policy or a "
                              "policy ONNX file, or pick another routing_mode")
        files = {f"models.{tier}": value for tier, value in self.models.items()} | {"policy": self.policy}
        for name, value in files.items():
            kind = "routing policy ONNX" if name == "policy" else "YOLOv8 detection ONNX"
            try:
                path = resolve_model(value)
            except ConfigError as exc:  # an embedded name that names nothing: say which parameter holds it
                raise ConfigError(f"{name}: {exc}") from exc
            if value.startswith(EMBEDDED_PREFIX) and not Path(path).is_file():
                raise ConfigError(f"{name} = '{value}': the embedded file {path} is missing; names are "
                                  "embedded:nano|small|large|policy (or point the parameter at a " + kind + " file)")
            if path and Path(path).is_dir():
                raise ConfigError(f"{name} = '{value}' is a folder; point it at a {kind} file in it")
            if path and not Path(path).is_file():
                read_as = f" (read as {path})" if path != value else ""
                raise ConfigError(f"{name} = '{value}'{read_as} does not exist; point it at a {kind} file")
        if not 0.0 <= self.conf_threshold <= 1.0 or not 0.0 <= self.iou_threshold <= 1.0:
            raise ConfigError("conf_threshold and iou_threshold must lie in [0, 1]")
        if self.qos_reliability not in RELIABILITIES:
            raise ConfigError(f"qos.reliability '{self.qos_reliability}' must be one of {RELIABILITIES}")
        if not 0 <= self.workers <= MAX_WORKERS:
            raise ConfigError(f"workers {self.workers} must be 0-{MAX_WORKERS} (frames processed at once; 0 = one "
                              "per camera, at most one per core)")
        if self.intra_op_threads < 0:
            raise ConfigError(f"intra_op_threads {self.intra_op_threads} must be >= 0 (0 = onnxruntime's default, "
                              "or the cores shared out among several workers)")
        if self.qos_depth < 1 or self.max_detections < 1:
            raise ConfigError("qos.depth and max_detections must be >= 1")
        import onnxruntime as ort

        from adaptive_perception.detector import check_provider_names

        check_provider_names(self.providers, ort.get_all_providers())  # now, not at the next configure
        self.health.validate()
        self.audit.validate()
        if self.drift_confirm < 1:
            raise ConfigError(f"drift.confirm_frames {self.drift_confirm} must be >= 1")
        refuse_first([
            (self.evidence.pre_frames < 0, f"evidence.pre_frames {self.evidence.pre_frames} must be >= 0"),
            (self.evidence.post_frames < 1, f"evidence.post_frames {self.evidence.post_frames} must be >= 1"),
            (not self.evidence.budget_mb > 0, f"evidence.budget_mb {self.evidence.budget_mb} must be > 0"),
            (self.accelerator.device_id < 0, f"cuda.device_id {self.accelerator.device_id} must be >= 0"),
            (not self.accelerator.trt_cache_dir, "tensorrt.engine_cache_dir must not be empty (built TensorRT engines "
                                                 "are kept there between runs)"),
            (not 0 < self.mlflow_interval_s <= 86400,
             f"mlflow.interval_s {self.mlflow_interval_s} must be > 0 and at most a day (86400)"),
            (bool(self.mlflow_uri) and not self.mlflow_experiment, "mlflow.experiment must not be empty")])
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics.port {self.metrics_port} must be a TCP port (1-65535), or 0 to turn metrics off")
        return self
