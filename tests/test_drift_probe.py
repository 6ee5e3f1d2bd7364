"""The drift probe's candidate statistics on hand-made features (the report itself: `bench drift-probe`)."""
from __future__ import annotations

import numpy as np
import pytest

from adaptive_perception.drift import _QUALITY_INDEX, WINDOW, build_reference, calibrate_quality, quality_shift
from adaptive_perception.training.drift_probe import peaks, window_z

# reference: 150 frames at 0 then 150 at 2 -> window means 2i/150 for i = 0..150, mean 1, and the std of a
# uniform grid of 151 points: (2/150) sqrt((151^2 - 1) / 12)
REFERENCE = np.r_[np.zeros(150), np.full(150, 2.0)][:, None]
STD = 2 / 150 * np.sqrt((151 ** 2 - 1) / 12)


def _constant(z: float, frames: int = WINDOW) -> np.ndarray:
    return np.full((frames, 1), 1 + z * STD)


def test_two_sided_peaks_keep_a_fall_that_new_scenes_never_made_visible():
    held_out = [_constant(3.0), _constant(-1.5)]  # new scenes went 3 stds up, only 1.5 down
    both = window_z(REFERENCE, held_out)
    one = window_z(REFERENCE, held_out, both_ways=False)
    assert both(_constant(-2.25)) == pytest.approx([1.5]) and one(_constant(-2.25)) == pytest.approx([0.75])
    assert both(_constant(3.6)) == pytest.approx([1.2]) and one(_constant(3.6)) == pytest.approx([1.2])
    # a direction the held-out data never moved in is floored at one std
    assert window_z(REFERENCE, [_constant(3.0)])(_constant(-0.5, 160)) == pytest.approx([0.5] * 11)


def test_the_two_sided_candidate_is_the_shipped_image_quality_statistic():
    rng = np.random.default_rng(7)
    reference = rng.normal(size=(400, 1024))
    held_out = [rng.normal(0.1, 1.2, size=(300, 1024)), rng.normal(-0.1, 0.9, size=(200, 1024))]
    stream = rng.normal(-0.3, 1.0, size=(WINDOW, 1024))  # below the mean, where the held-out peaks are lower
    shipped = build_reference(reference, np.zeros(400, int), np.zeros(1))
    shipped.quality_peak, shipped.quality_peak_down = calibrate_quality(shipped, held_out)
    probe = window_z(reference, held_out, _QUALITY_INDEX)
    assert probe(stream) == pytest.approx([quality_shift(shipped, stream[:, _QUALITY_INDEX])])


def test_peaks_split_windows_at_the_change_and_drop_the_ones_across_it():
    scores = np.zeros(400)  # window i covers frames i .. i + 149; the drift starts at frame 200
    scores[50], scores[51], scores[199], scores[200] = 5.0, 9.0, 8.0, 3.0
    assert peaks(scores, 200) == (5.0, 3.0)
