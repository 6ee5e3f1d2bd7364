"""Routing features: 1024 image statistics + 4 context values from the camera's previous routed output."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

GRID = 32  # image statistics on a GRID x GRID map
IMAGE_FEATURES = GRID * GRID  # 1024
CONTEXT_FEATURES = 4
FEATURE_SIZE = IMAGE_FEATURES + CONTEXT_FEATURES  # 1028
_WORK_SIZE = 2 * GRID  # the frame is reduced to 64x64 grey before gradients
MAX_DT_S = 1.0  # time since the previous frame is clipped here


@dataclass(frozen=True)
class RoutingContext:
    """What the router knows about this camera from its previous routed frame (nothing about machine load)."""

    prev_count: int = 0  # detections published for the previous frame
    prev_mean_score: float = 0.0  # their mean score (0 when there were none)
    prev_tier: int = -1  # tier index that ran on it; -1 before the first frame
    dt_s: float = 0.0  # seconds between the two frames' header stamps

    def vector(self) -> np.ndarray:
        """The 4 context features: log1p(count), mean score, (tier + 1) / 3, dt clipped to [0, 1] s."""
        return np.array([np.log1p(max(self.prev_count, 0)), self.prev_mean_score, (self.prev_tier + 1) / 3.0,
                         min(max(self.dt_s, 0.0), MAX_DT_S)], np.float32)


def next_context(scores: np.ndarray, tier: int, stamp_ns: int, previous_stamp_ns: int | None) -> RoutingContext:
    """Context for the next frame from this frame's routed output (its scores, tier and header stamp)."""
    dt = 0.0 if previous_stamp_ns is None else (stamp_ns - previous_stamp_ns) / 1e9
    return RoutingContext(int(scores.size), float(scores.mean()) if scores.size else 0.0, int(tier), dt)


def image_features(rgb: np.ndarray) -> np.ndarray:
    """1024 float32 values: log1p of the mean gradient magnitude on a 32x32 grid of the frame.

    Gradient energy per cell measures clutter and object edges, cheaply: the frame is reduced to
    64x64 grey before the gradients, so the cost hardly depends on the camera resolution."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or rgb.size == 0:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got shape {rgb.shape} {rgb.dtype}")
    # bilinear to 128x128 (cheap at any resolution), then an exact 2x2 area mean to 64x64 grey; both run
    # in OpenCV's fixed-point uint8 paths, so the result is bit-identical wherever the buffers sit
    small = cv2.resize(rgb, (2 * _WORK_SIZE, 2 * _WORK_SIZE), interpolation=cv2.INTER_LINEAR)
    small = cv2.resize(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY), (_WORK_SIZE, _WORK_SIZE), interpolation=cv2.INTER_AREA)
    # gradients and pooling in numpy: OpenCV's float SIMD paths can round differently with alignment
    grey = np.pad(small.astype(np.float32) * (1.0 / 255.0), 1, mode="edge")
    gx = grey[1:-1, 2:] - grey[1:-1, :-2]
    gy = grey[2:, 1:-1] - grey[:-2, 1:-1]
    energy = np.sqrt(gx * gx + gy * gy)
    pooled = energy.reshape(GRID, 2, GRID, 2).mean(axis=(1, 3))
    return np.log1p(pooled).reshape(IMAGE_FEATURES).astype(np.float32)


def routing_features(rgb: np.ndarray, context: RoutingContext) -> np.ndarray:
    """The 1028 policy inputs for one frame: image statistics, then the context values."""
    return np.concatenate([image_features(rgb), context.vector()])
