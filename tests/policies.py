"""Routing policies built for tests with the project's policy writer (real ONNX files)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from adaptive_perception.features import FEATURE_SIZE, RoutingContext, routing_features
from adaptive_perception.training.policy_export import write_policy


def two_frame_policy(path: Path, frames: dict[str, np.ndarray], policy_id: str, reverse: bool = False) -> Path:
    """Linear policy along the line from the sparse to the dense frame's features: past the midpoint
    (stored as the normalisation mean) large wins, before it nano; `reverse` swaps the two."""
    dense, sparse = (routing_features(frames[k], RoutingContext()) for k in ("dense", "sparse"))
    direction = (dense - sparse) / np.linalg.norm(dense - sparse)
    weight = np.zeros((FEATURE_SIZE, 3), np.float32)
    weight[:, 2], weight[:, 0] = (-direction, direction) if reverse else (direction, -direction)
    return write_policy(path, [(weight, np.zeros(3, np.float32))], (dense + sparse) / 2, np.ones(FEATURE_SIZE),
                        policy_id, "test policy")


def constant_policy(path: Path, probabilities: tuple[float, float, float], policy_id: str = "constant",
                    tier_digests: dict[str, str] | None = None) -> Path:
    """Ignores its input: the softmax of its logits is `probabilities`."""
    return write_policy(path, [(np.zeros((FEATURE_SIZE, 3), np.float32), np.log(np.asarray(probabilities, np.float32)))],
                        np.zeros(FEATURE_SIZE), np.ones(FEATURE_SIZE), policy_id, tier_digests=tier_digests)


def value_policy(path: Path, values: tuple[float, float, float], tier_cost: tuple[float, float, float],
                 cost_weight: float, policy_id: str = "values", temperature: float = 0.1) -> Path:
    """A tier_values policy that ignores its input: every frame's predicted tier values are `values`."""
    from adaptive_perception.policy import ValueHead

    return write_policy(path, [(np.zeros((FEATURE_SIZE, 3), np.float32), np.asarray(values, np.float32))],
                        np.zeros(FEATURE_SIZE), np.ones(FEATURE_SIZE), policy_id,
                        value_head=ValueHead(np.asarray(tier_cost, np.float32), cost_weight, temperature))


def drifting_policy(path: Path, in_distribution: list[np.ndarray], window: int, policy_id: str = "watched",
                    cost_weight: float | None = None) -> Path:
    """A constant nano policy whose drift reference is built and calibrated on `in_distribution` frames
    (features of noise-like camera frames), with a short window so a node test sees DRIFT within seconds.
    With `cost_weight`, a tier_values policy (values 1 / 0 / 0 at costs 0.1 / 0.3 / 1: nano at any weight >= 0)
    whose reference was measured at that weight."""
    from adaptive_perception.drift import build_reference, calibrate
    from adaptive_perception.features import image_features
    from adaptive_perception.policy import ValueHead

    features = np.stack([image_features(frame) for frame in in_distribution])
    tiers = np.zeros(len(features), int)
    reference = build_reference(features, tiers, np.ones(4))
    reference.window, reference.cost_weight = window, cost_weight
    reference.thresholds = calibrate(reference, [(features, tiers, np.full(len(features), np.nan))])
    reference.calibration_frames = len(features)  # thin: the node says so when it loads the policy
    head = None if cost_weight is None else ValueHead(np.array([0.1, 0.3, 1.0], np.float32), cost_weight, 0.1)
    outputs = np.array([1.0, 0.0, 0.0], np.float32) if head else np.log(np.array([0.98, 0.01, 0.01], np.float32))
    return write_policy(path, [(np.zeros((FEATURE_SIZE, 3), np.float32), outputs)], np.zeros(FEATURE_SIZE),
                        np.ones(FEATURE_SIZE), policy_id, drift_reference=reference.to_json(), value_head=head)
