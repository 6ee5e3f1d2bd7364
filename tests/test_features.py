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


def test_flat_frames_have_no_gradient_energy_and_noise_has_plenty():
    assert not image_features(np.zeros((480, 640, 3), np.uint8)).any()
    assert not image_features(np.full((480, 640, 3), 200, np.uint8)).any()
    noise = image_features(np.random.default_rng(2).integers(0, 256, (480, 640, 3), dtype=np.uint8))
    assert (noise > 0.01).mean() > 0.95


def test_energy_lands_in_the_cell_of_the_edge():
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[:, 320:] = 255  # one vertical edge in the middle
    grid = image_features(frame).reshape(32, 32)
    assert grid[:, 15:17].min() > 0.1 and grid[:, :14].max() == 0 and grid[:, 18:].max() == 0


def test_context_follows_the_previous_routed_output():
    first = next_context(np.array([0.9, 0.5, 0.4], np.float32), tier=2, stamp_ns=2_000_000_000, previous_stamp_ns=None)
    assert first == RoutingContext(3, pytest.approx(0.6), 2, 0.0)
    later = next_context(np.zeros(0, np.float32), tier=0, stamp_ns=2_100_000_000, previous_stamp_ns=2_000_000_000)
    assert later.prev_count == 0 and later.prev_mean_score == 0.0 and later.dt_s == pytest.approx(0.1)
    vector = routing_features(np.zeros((8, 8, 3), np.uint8), first)[IMAGE_FEATURES:]
    np.testing.assert_allclose(vector, [np.log1p(3), 0.6, 1.0, 0.0], rtol=1e-6)
    assert RoutingContext().vector().tolist() == [0.0, 0.0, 0.0, 0.0]
    assert RoutingContext(dt_s=5.0).vector()[3] == 1.0
