"""Typed, validated node configuration (the node's ROS parameters, read once per configure)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from adaptive_perception.detector import DEFAULT_PROVIDERS, TIERS
from adaptive_perception.errors import ConfigError

RELIABILITIES = ("best_effort", "reliable")
EMBEDDED_PREFIX = "embedded:"
EMBEDDED_DIR = Path(__file__).resolve().parent / "models"


def resolve_model(value: str) -> str:
    """A model parameter's file path: `embedded:<tier>` names a tier shipped with the package."""
    if value.startswith(EMBEDDED_PREFIX):
        return str(EMBEDDED_DIR / f"{value[len(EMBEDDED_PREFIX):]}.onnx")
    return value


@dataclass(frozen=True)
class NodeConfig:
    """Everything `on_configure` needs; defaults match config/perception.yaml."""

    image_topics: tuple[str, ...] = ("image",)
    routing_mode: str = "fixed:nano"
    models: dict[str, str] = field(default_factory=lambda: {tier: f"{EMBEDDED_PREFIX}{tier}" for tier in TIERS})
    providers: tuple[str, ...] = DEFAULT_PROVIDERS
    conf_threshold: float = 0.25
    iou_threshold: float = 0.7
    max_detections: int = 300
    intra_op_threads: int = 0
    warmup_runs: int = 2
    qos_reliability: str = "best_effort"
    qos_depth: int = 1

    @property
    def fixed_tier(self) -> str:
        return self.routing_mode.split(":", 1)[1]

    def model_paths(self) -> dict[str, str]:
        """Resolved file path per loaded tier (tiers with an empty parameter are left out)."""
        return {tier: resolve_model(value) for tier, value in self.models.items() if value}

    def validate(self) -> "NodeConfig":
        """Return self, or raise ConfigError naming the parameter and the fix."""
        if not self.image_topics or any(not t for t in self.image_topics):
            raise ConfigError(f"image_topics {list(self.image_topics)} must list at least one non-empty topic, "
                              "e.g. image_topics:=[/camera/image_raw]")
        if not self.routing_mode.startswith("fixed:") or self.fixed_tier not in TIERS:
            raise ConfigError(
                f"routing_mode '{self.routing_mode}' is not supported; use one of "
                + ", ".join(f"fixed:{t}" for t in TIERS)
            )
        if not self.models.get(self.fixed_tier):
            raise ConfigError(
                f"models.{self.fixed_tier} is empty but routing_mode is '{self.routing_mode}'; "
                f"set models.{self.fixed_tier} to a YOLOv8 detection ONNX file"
            )
        for tier, value in self.models.items():
            path = resolve_model(value)
            if value.startswith(EMBEDDED_PREFIX) and not Path(path).is_file():
                raise ConfigError(f"models.{tier} = '{value}': the embedded tier file {path} is missing; names are "
                                  "embedded:nano|small|large, and a source checkout builds the files with "
                                  "`adaptive-perception models export-tiers` (or point the parameter at an ONNX file)")
            if path and not Path(path).is_file():
                raise ConfigError(f"models.{tier} = '{value}' does not exist; point it at a YOLOv8 detection ONNX file")
        if not 0.0 <= self.conf_threshold <= 1.0 or not 0.0 <= self.iou_threshold <= 1.0:
            raise ConfigError("conf_threshold and iou_threshold must lie in [0, 1]")
        if self.qos_reliability not in RELIABILITIES:
            raise ConfigError(f"qos.reliability '{self.qos_reliability}' must be one of {RELIABILITIES}")
        if self.qos_depth < 1 or self.max_detections < 1:
            raise ConfigError("qos.depth and max_detections must be >= 1")
        return self
