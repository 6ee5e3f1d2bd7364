"""Routed frames as pictures: boxes, class, score and the chosen tier drawn on the frame (ROS-free).

Used by the node's debug image, the demo's PNG strip and the recorder, so all three look the same."""
from __future__ import annotations

import cv2
import numpy as np

from adaptive_perception.detector import Detections

# RGB colour per tier: the tier that ran is visible at a glance
TIER_COLOURS: dict[str, tuple[int, int, int]] = {"nano": (60, 200, 75), "small": (255, 190, 0), "large": (230, 40, 60)}
_FONT = cv2.FONT_HERSHEY_SIMPLEX
BANNER_HEIGHT = 22  # pixels of the tier banner along the top edge


def tier_colour(tier: str) -> tuple[int, int, int]:
    return TIER_COLOURS.get(tier, (200, 200, 200))


def draw_routed(rgb: np.ndarray, detections: Detections, tier: str, caption: str = "") -> np.ndarray:
    """A copy of `rgb` with each box outlined in the tier's colour, labelled `class score`, and a banner
    naming the tier (and `caption`, e.g. the node time) across the top. The banner is drawn first and a label
    never starts inside it, so a box at the top edge keeps its label readable."""
    out = np.ascontiguousarray(rgb).copy()
    colour = tier_colour(tier)
    height, width = out.shape[:2]
    scale = max(0.35, min(width, height) / 1000.0)
    banner = min(BANNER_HEIGHT, height)
    out[:banner] = (0.35 * out[:banner] + 0.65 * np.array(colour)).astype(np.uint8)
    count = len(detections)
    text = f"{tier}  {count} box{'' if count == 1 else 'es'}" + (f"  {caption}" if caption else "")
    cv2.putText(out, text, (4, banner - 6), _FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for (x1, y1, x2, y2), score, name in zip(detections.boxes.tolist(), detections.scores.tolist(), detections.names()):
        p1, p2 = (int(round(x1)), int(round(y1))), (int(round(x2)), int(round(y2)))
        cv2.rectangle(out, p1, p2, colour, 2)
        label = f"{name} {score:.2f}"
        (tw, th), _ = cv2.getTextSize(label, _FONT, scale, 1)
        top = max(p1[1] - th - 4, banner)  # above the box, or just below the banner where there is no room
        cv2.rectangle(out, (p1[0], top), (p1[0] + tw + 4, top + th + 4), colour, -1)
        cv2.putText(out, label, (p1[0] + 2, top + th + 1), _FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out
