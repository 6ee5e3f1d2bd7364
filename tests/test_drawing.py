"""Routed frames drawn for people: box outlines in the tier's colour, labels, and a banner naming the tier."""
from __future__ import annotations

import numpy as np

from adaptive_perception.detector import Detections
from adaptive_perception.drawing import BANNER_HEIGHT, TIER_COLOURS, draw_routed


def _one_box() -> Detections:
    return Detections(np.array([[20, 40, 60, 80]], np.float32), np.array([0.9], np.float32), np.array([0]), ("car",))


def test_boxes_are_outlined_in_the_tier_colour_and_the_source_stays_untouched():
    frame = np.zeros((100, 120, 3), np.uint8)
    picture = draw_routed(frame, _one_box(), "large")
    assert frame.max() == 0 and picture.shape == frame.shape and picture.dtype == np.uint8
    assert tuple(picture[60, 20]) == TIER_COLOURS["large"]  # left edge, halfway down
    assert tuple(picture[60, 60]) == TIER_COLOURS["large"]  # right edge
    assert picture[60, 40].max() == 0 and picture[90, 100].max() == 0  # inside the box, outside everything
    label = picture[28:40, 20:60].reshape(-1, 3)  # the label tab above the box: tier colour with dark text
    assert (label == TIER_COLOURS["large"]).all(axis=1).mean() > 0.5 and (label.sum(axis=1) < 100).any()


def test_the_banner_names_the_tier_by_colour_and_differs_between_tiers():
    frame = np.full((60, 200, 3), 128, np.uint8)
    empty = Detections.empty(("car",))
    banners = {tier: draw_routed(frame, empty, tier, "12.3 ms")[:BANNER_HEIGHT] for tier in TIER_COLOURS}
    for tier, banner in banners.items():
        dominant = int(np.argmax(TIER_COLOURS[tier]))
        assert np.median(banner[:, 150:, dominant]) > np.median(banner[:, 150:, [c for c in range(3) if c != dominant]])
    assert not np.array_equal(banners["nano"], banners["large"])
    assert np.array_equal(draw_routed(frame, empty, "nano")[BANNER_HEIGHT:], frame[BANNER_HEIGHT:])


def test_a_box_at_the_top_edge_keeps_its_label_below_the_banner():
    frame = np.zeros((120, 200, 3), np.uint8)
    top_box = Detections(np.array([[30, 2, 120, 90]], np.float32), np.array([0.8], np.float32), np.array([0]), ("car",))
    picture = draw_routed(frame, top_box, "small")
    # the label tab starts on the banner's last row + 1, in the tier's pure colour (the banner is a blend)
    tab = picture[BANNER_HEIGHT:BANNER_HEIGHT + 8, 33:60].reshape(-1, 3)
    assert (tab == TIER_COLOURS["small"]).all(axis=1).mean() > 0.5 and (tab.sum(axis=1) < 100).any()
    assert not (picture[BANNER_HEIGHT - 3, 33:60] == TIER_COLOURS["small"]).all(axis=1).any()  # not under the banner
