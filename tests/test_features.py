"""Routing features: shape, determinism, finiteness, context semantics, and signal on scene density."""
from __future__ import annotations

import numpy as np
import pytest

from adaptive_perception.features import (
    FEATURE_SIZE, IMAGE_FEATURES, RoutingContext, image_features, next_context, routing_features,
)


@pytest.mark.parametrize("image", [
    np.zeros((480, 640, 3), np.uint8),
    np.full((480, 640, 3), 255, np.uint8),
    np.random.default_rng(0).integers(0, 256, (720, 1280, 3), dtype=np.uint8),
    np.random.default_rng(1).integers(0, 256, (3, 5, 3), dtype=np.uint8),
    np.zeros((1, 1, 3), np.uint8),
])
def test_features_are_1028_finite_float32_and_deterministic(image):
    a = routing_features(image, RoutingContext())
    b = routing_features(image.copy(), RoutingContext())
    assert a.shape == (FEATURE_SIZE,) == (1028,) and a.dtype == np.float32
    assert np.isfinite(a).all() and np.array_equal(a, b)


def _d_cells_above(features: np.ndarray, threshold_bin: int) -> float:
    """Cells whose colour distance from the frame's median exceeds threshold_bin/128 (from D's histogram)."""
    hist = np.expm1(features[512 + 64:512 + 128].astype(np.float64))
    return float(hist[threshold_bin:].sum())


def test_flat_frames_put_every_cell_in_the_first_bin_and_noise_spreads():
    for value in (0, 200):
        features = image_features(np.full((480, 640, 3), value, np.uint8))
        assert not features[:512].any()  # no edges, no colour distance, no saturation, no chroma
        first_bins = [512, 576, 640, 704, 768]  # E, D, S, K histograms, then the joint D x E histogram
        np.testing.assert_allclose(features[first_bins], np.log1p(1024), rtol=1e-6)
        assert np.count_nonzero(features) == len(first_bins)
    noise = image_features(np.random.default_rng(2).integers(0, 256, (480, 640, 3), dtype=np.uint8))
    assert (noise[:128] > 0.01).mean() > 0.95  # gradient energy quantiles
    assert np.count_nonzero(noise[512:576]) > 5  # energy spread over many histogram bins


def _scene(squares: list[tuple[int, int]], colours=((220, 30, 30), (30, 200, 40), (240, 220, 20))) -> np.ndarray:
    """Grey frame with 40x30 px coloured squares at cell-aligned (row, col) positions of the 32x32 grid."""
    frame = np.full((480, 640, 3), 110, np.uint8)
    for index, (row, col) in enumerate(squares):
        frame[row * 15:row * 15 + 30, col * 20:col * 20 + 40] = colours[index % len(colours)]
    return frame


def test_image_features_do_not_depend_on_where_objects_are():
    here = image_features(_scene([(3, 4)]))
    there = image_features(_scene([(24, 25)]))
    np.testing.assert_array_equal(here, there)


def test_more_objects_move_more_cells_away_from_the_background_colour():
    positions = [(r, c) for r in range(2, 30, 5) for c in range(2, 30, 5)]
    counts = [_d_cells_above(image_features(_scene(positions[:n])), 16) for n in (1, 4, 12, 30)]
    assert counts == sorted(counts) and len(set(counts)) == 4, counts
    assert counts[0] >= 4  # one 2x2-cell square


def test_context_follows_the_previous_routed_output():
    # a 200 x 100 frame (area 20,000 px): boxes of 200, 400 and 2,000 px -> sqrt(area share) 0.1, 0.1414, 0.3162
    boxes = np.array([[0, 0, 10, 20], [50, 50, 70, 70], [100, 0, 140, 50]], np.float32)
    first = next_context(boxes, np.array([0.9, 0.5, 0.4], np.float32), tier=2, frame_hw=(100, 200))
    assert (first.prev_count, first.prev_tier) == (3, 2)
    assert (first.prev_mean_score, first.prev_median_size) == (pytest.approx(0.6), pytest.approx(0.1414214, rel=1e-6))
    # the median, not the mean (0.186) or the first box; an even count takes the middle two's mean
    two = next_context(boxes[[0, 2]], np.array([0.9, 0.5], np.float32), tier=1, frame_hw=(100, 200))
    assert two.prev_median_size == pytest.approx((0.1 + 0.3162278) / 2, rel=1e-6)
    # relative to the frame: the same boxes on a frame of 4x the area are half as big
    assert next_context(boxes, np.ones(3, np.float32), 0, (200, 400)).prev_median_size == pytest.approx(0.0707107, rel=1e-6)
    later = next_context(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), tier=0, frame_hw=(100, 200))
    assert later == RoutingContext(0, 0.0, 0, 0.0)
    vector = routing_features(np.zeros((8, 8, 3), np.uint8), first)[IMAGE_FEATURES:]
    np.testing.assert_allclose(vector, [np.log1p(3), 0.6, 1.0, 0.1414214], rtol=1e-6)
    assert RoutingContext().vector().tolist() == [0.0, 0.0, 0.0, 0.0]


def test_the_top_saturation_quantile_is_the_1021st_smallest_cell():
    """A feature layout that moved (the quantiles read from another cell) would feed every shipped policy and drift
    reference shifted inputs under the same feature version: known values pin it."""
    from adaptive_perception.features import image_features
    frame = np.full((64, 64, 3), 128, np.uint8)
    frame[:4, :4] = (255, 0, 0)  # 2 x 2 of the 32 x 32 cells pure red (saturation 1), the other 1020 grey (0)
    features = image_features(frame)
    # saturation quantiles are features 256..383, the (8k + 4)-th smallest cell: k = 127 is the 1021st (index 1020)
    assert features[383] == pytest.approx(1.0) and features[382] == 0.0
