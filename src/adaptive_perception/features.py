"""Routing features: 1024 image statistics + 4 context values from the camera's previous routed output.

Every value, in order (all float32; the maps E, D, S, K over 32x32 cells are described in image_features):
  0..511     128 quantiles of each map (E, D, S, K in turn): the sorted 1024 cell values, every 8th from the 4th
  512..767   log1p(cell count) of a 64-bin histogram of each map (E, D, K: bins of 1/128; S: bins of 1/64)
  768..1023  log1p(cell count) of the joint 16x16 histogram of D (rows) and E (columns), bins of 1/32
  1024       log1p(number of detections published for this camera's previous frame)
  1025       their mean score (0 when there were none or before the first frame)
  1026       (previous tier index + 1) / 3: 0 before the first frame, 1/3 nano, 2/3 small, 1 large
  1027       the median over those detections of sqrt(box area / frame area): how big the objects were (0 when
             there were none or before the first frame)
Nothing depends on machine load or wall-clock time, so training recomputes them exactly from stored frames.
Version 1's last value was the time since the previous frame; its stored normalisation had a std of 5 ms, so a
100 ms gap reached a policy at +14 standard deviations, and it said nothing about the scene. Box sizes do: small
objects are where a larger tier finds what a smaller one misses (measured: `training/README.md`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

GRID = 32  # image statistics over GRID x GRID cells
IMAGE_FEATURES = GRID * GRID  # 1024
CONTEXT_FEATURES = 4
FEATURE_SIZE = IMAGE_FEATURES + CONTEXT_FEATURES  # 1028
# Stored in every policy file; a policy trained on another version is refused. Change it with the features.
FEATURE_VERSION = "edge-colour-stats+ctx4/2"
_WORK_SIZE = 2 * GRID  # the frame is reduced to 64x64 before gradients
_QUANTILE_STEP = 8  # every 8th of the 1024 sorted cell values: 128 quantiles per map
_HIST_BINS = 64
_HIST_SCALE = np.array([[128.0], [128.0], [64.0], [128.0]], np.float32)  # bins of 1/128 (E, D, K), 1/64 (S)
_HIST_OFFSETS = np.arange(4)[:, None] * _HIST_BINS
_HIST_SIZE = 4 * _HIST_BINS + 256
_MEDIAN_INDEX = GRID * GRID // 2  # the upper median of the 1024 cells
# RGB in [0, 255] -> opponent colours intensity, red-green, yellow-blue: an exact integer matrix (grey has exactly
# zero chroma), then a per-row scale to [0, 1] for intensity and [-1, 1] for the colour axes
_OPPONENT = np.array([[1, 1, 1], [2, -2, 0], [1, 1, -2]], np.float32)
_OPPONENT_SCALE = np.array([[1 / 765], [1 / 510], [1 / 510]], np.float32)


@dataclass(frozen=True)
class RoutingContext:
    """What the router knows about this camera from its previous routed frame (nothing about machine load)."""

    prev_count: int = 0  # detections published for the previous frame
    prev_mean_score: float = 0.0  # their mean score (0 when there were none)
    prev_tier: int = -1  # tier index that ran on it; -1 before the first frame
    prev_median_size: float = 0.0  # median sqrt(box area / frame area) of its detections (0 when none)

    def __post_init__(self) -> None:
        if not -1 <= self.prev_tier < 3 or self.prev_count < 0 or not (
                math.isfinite(self.prev_mean_score) and math.isfinite(self.prev_median_size)):
            raise ValueError(f"routing context {self}: prev_tier must be -1 (no previous frame) or a tier index 0-2, "
                             "prev_count >= 0, the mean score and median size finite (`next_context` builds it from "
                             "a routed frame's output)")

    def vector(self) -> np.ndarray:
        """The 4 context features: log1p(count), mean score, (tier + 1) / 3, median relative box size."""
        return np.array([math.log1p(max(self.prev_count, 0)), self.prev_mean_score, (self.prev_tier + 1) / 3.0,
                         self.prev_median_size], np.float32)


def median_size(boxes: np.ndarray, frame_hw: tuple[int, int]) -> float:
    """The median over (K, 4) x0 y0 x1 y1 boxes of sqrt(box area / frame area); 0 for no boxes."""
    if len(boxes) == 0:
        return 0.0
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    return float(np.median(np.sqrt(area / float(frame_hw[0] * frame_hw[1]))))


def next_context(boxes: np.ndarray, scores: np.ndarray, tier: int, frame_hw: tuple[int, int]) -> RoutingContext:
    """Context for the next frame from this frame's routed output: its (K, 4) boxes and scores, tier, frame size."""
    return RoutingContext(int(scores.size), float(scores.mean()) if scores.size else 0.0, int(tier),
                          median_size(boxes, frame_hw))


def check_rgb(rgb: np.ndarray) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or rgb.size == 0:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got shape {rgb.shape} {rgb.dtype}")


def reduce_frame(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An HxWx3 uint8 frame sampled to 64x64 (bilinear; reads ~64 rows only) and that averaged to GRID x GRID
    cells (uint8, both): what the image statistics, and the drift monitor's veil, are computed on."""
    small = cv2.resize(rgb, (_WORK_SIZE, _WORK_SIZE), interpolation=cv2.INTER_LINEAR)
    return small, cv2.resize(small, (GRID, GRID), interpolation=cv2.INTER_AREA)


def image_features(rgb: np.ndarray) -> np.ndarray:
    """1024 float32 statistics of clutter and object density, independent of where things are in the frame.

    The frame is sampled to 64x64 (bilinear) and averaged to 32x32 cells. Four
    maps of 1024 cells each: E gradient energy (grey, central differences, 2x2 pooled), D colour distance
    from the frame's median colour (opponent colour space: intensity, red-green, yellow-blue), S saturation
    (HSV), K chroma (length of the two opponent colour axes). Objects are edges and colours that
    differ from the background, so their number moves these maps' distributions; a position-specific map
    would make a policy learn every object position separately. All maps lie in [0, ~1.7]."""
    check_rgb(rgb)
    # resizing and colour conversions stay in OpenCV's fixed-point uint8 paths and the float work in
    # numpy, so the result is bit-identical wherever the buffers sit (OpenCV's float SIMD is not)
    small, cells = reduce_frame(rgb)
    grey = cv2.copyMakeBorder(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY), 1, 1, 1, 1, cv2.BORDER_REPLICATE)
    grey = grey.astype(np.float32) * (1.0 / 255.0)
    gx = grey[1:-1, 2:] - grey[1:-1, :-2]
    gy = grey[2:, 1:-1] - grey[:-2, 1:-1]
    energy = np.sqrt(gx * gx + gy * gy)
    maps = np.empty((4, GRID * GRID), np.float32)
    maps[0] = ((energy[0::2, 0::2] + energy[1::2, 0::2] + energy[0::2, 1::2] + energy[1::2, 1::2]) * 0.25).ravel()
    opponent = (_OPPONENT @ cells.reshape(-1, 3).T.astype(np.float32)) * _OPPONENT_SCALE  # 3 x 1024
    median = np.partition(opponent, _MEDIAN_INDEX, axis=1)[:, _MEDIAN_INDEX:_MEDIAN_INDEX + 1]  # np.median is slower
    diff = opponent - median
    maps[1] = np.sqrt((diff * diff).sum(axis=0))
    maps[2] = cv2.cvtColor(cells, cv2.COLOR_RGB2HSV).reshape(-1, 3)[:, 1] * (1.0 / 255.0)
    maps[3] = np.sqrt(opponent[1] * opponent[1] + opponent[2] * opponent[2])
    quantiles = np.sort(maps, axis=1)[:, _QUANTILE_STEP // 2::_QUANTILE_STEP]  # 4 x 128
    bins = np.minimum((maps * _HIST_SCALE).astype(np.int64), _HIST_BINS - 1)  # 4 x 1024 bin indices
    joint = 4 * _HIST_BINS + (bins[1] >> 2) * 16 + (bins[0] >> 2)  # D x E, 16 x 16
    counts = np.bincount(np.concatenate([(bins + _HIST_OFFSETS).ravel(), joint]), minlength=_HIST_SIZE)
    return np.concatenate([quantiles.ravel(), np.log1p(counts.astype(np.float32))])


def routing_features(rgb: np.ndarray, context: RoutingContext) -> np.ndarray:
    """The 1028 policy inputs for one frame: image statistics, then the context values."""
    return np.concatenate([image_features(rgb), context.vector()])


def add_image_features(features: np.ndarray, rgb: np.ndarray) -> None:
    """Fill in the image statistics of 1028 features whose image part is still zero (`Routed.features`)."""
    features[:IMAGE_FEATURES] = image_features(rgb)
