"""Training crops at the scales the tiers serve: each tier sees objects at the size its input gives them.

A tier that runs the 640x480 frame at input width W sees every object at scale W / 640. A network
trained on whole frames at one input size learns one object scale and loses accuracy at the others
(a 320 px network run at 640 px sees big objects twice as big as any it learned). Here every
training sample is a fixed-size window of the frame resized to one tier's scale: native-resolution
crops for the large tier, smaller scales for the cheaper tiers, so the cost per sample stays that of
a small input while the objects keep the sizes they have at serving time.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from adaptive_perception.scenes.benchmark import fresh_dataset_folders

PAD_VALUE = 114  # Ultralytics' letterbox grey: padding looks the same in training and at run time
MIN_KEPT_FRACTION = 0.30  # an object cut by the window keeps its label only if this much of its box remains
MIN_KEPT_AREA = 16.0  # px^2 after scaling; smaller remnants are dropped, like the benchmark's ignore rule


@dataclass(frozen=True)
class CropPlan:
    """How training samples are cut: one window of `size` px per frame, at a scale cycled over `scales`.

    With `near_share` > 0, that share of the native-scale (1.0) windows of frames holding an object whose scaled
    side reaches NEAR_MIN_SIDE is placed to contain the largest such object whole (a random placement cuts a near
    object at the window's edge far more often than not, so the native scale rarely sees one whole)."""

    scales: tuple[float, ...]
    size: int = 320
    seed: int = 0
    near_share: float = 0.0


NEAR_MIN_SIDE = 112  # px at the window's scale: above about a third of a 320 px window


def crop_labels(boxes: np.ndarray, classes: np.ndarray, scale: float, window: tuple[int, int, int, int]
                ) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (xyxy, source pixels) -> boxes in the window of the scaled frame (x0, y0, x1, y1), clipped.

    A box keeps its label when at least MIN_KEPT_FRACTION of its scaled area and MIN_KEPT_AREA px^2
    remain inside the window; the rest are dropped."""
    if len(boxes) == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    x0, y0, x1, y1 = window
    scaled = np.asarray(boxes, np.float64) * scale
    clipped = np.stack([np.clip(scaled[:, 0], x0, x1), np.clip(scaled[:, 1], y0, y1),
                        np.clip(scaled[:, 2], x0, x1), np.clip(scaled[:, 3], y0, y1)], axis=1)
    full = (scaled[:, 2] - scaled[:, 0]) * (scaled[:, 3] - scaled[:, 1])
    kept_area = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    keep = (kept_area >= MIN_KEPT_FRACTION * np.maximum(full, 1e-9)) & (kept_area >= MIN_KEPT_AREA)
    shifted = clipped[keep] - [x0, y0, x0, y0]
    return shifted.astype(np.float32), np.asarray(classes)[keep]


def _origin(extent: int, size: int, rng: np.random.Generator, focus: tuple[float, float] | None) -> int:
    """A window origin along one axis of `extent` px; with `focus` (low, high), one that contains that span, or is
    centred on it when it is longer than the window."""
    if extent <= size:
        return 0
    low, high = 0, extent - size
    if focus is not None:
        inside = max(low, int(np.ceil(focus[1])) - size), min(high, int(np.floor(focus[0])))
        if inside[0] > inside[1]:  # no window holds the span (it is longer than one, or within a pixel of it)
            return int(np.clip(round((focus[0] + focus[1] - size) / 2), low, high))
        low, high = inside
    return int(rng.integers(low, high + 1))


def cut(rgb: np.ndarray, scale: float, size: int, rng: np.random.Generator,
        focus: np.ndarray | None = None) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A size x size window of the frame resized by `scale` (padded where the scaled frame is smaller); with a
    `focus` box (x0 y0 x1 y1 in the scaled frame) the window contains it (or is centred on it where it cannot)."""
    height, width = rgb.shape[:2]
    scaled_w, scaled_h = int(round(width * scale)), int(round(height * scale))
    scaled = rgb if scale == 1.0 else cv2.resize(rgb, (scaled_w, scaled_h), interpolation=cv2.INTER_AREA)
    x0 = _origin(scaled_w, size, rng, None if focus is None else (focus[0], focus[2]))
    y0 = _origin(scaled_h, size, rng, None if focus is None else (focus[1], focus[3]))
    x1, y1 = min(x0 + size, scaled_w), min(y0 + size, scaled_h)
    canvas = np.full((size, size, 3), PAD_VALUE, np.uint8)
    canvas[: y1 - y0, : x1 - x0] = scaled[y0:y1, x0:x1]
    return canvas, (x0, y0, x1, y1)


def near_focus(objects: list[dict], scale: float, plan: CropPlan, rng: np.random.Generator) -> np.ndarray | None:
    """The scaled box a native-scale window should contain whole (the largest object at least NEAR_MIN_SIDE px on a
    side), for `plan.near_share` of such windows; None otherwise."""
    if plan.near_share <= 0 or scale != 1.0 or not objects:
        return None
    boxes = np.array([o["box"] for o in objects], np.float64) * scale
    sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    if sides.max() < NEAR_MIN_SIDE or rng.random() >= plan.near_share:
        return None
    return boxes[int(np.argmax(sides))]


def build(benchmark_dir: Path, out_dir: Path, plan: CropPlan, splits: tuple[str, ...] = ("train", "val")) -> Path:
    """Write a YOLO dataset of crops from the benchmark's dataset frames; returns its data.yaml.

    Deterministic for (benchmark, plan): rebuilding gives the same files, so a resumed training sees
    the data it started with."""
    benchmark_dir, out_dir = Path(benchmark_dir), Path(out_dir)
    records = json.loads((benchmark_dir / "frames.json").read_text())
    classes = json.loads((benchmark_dir / "coco" / "train.json").read_text())["categories"]
    for split in splits:
        fresh_dataset_folders(out_dir, split)
        rng = np.random.default_rng([plan.seed, splits.index(split)])
        chosen = [r for r in records[split] if r.get("in_dataset")]
        for index, record in enumerate(chosen):
            scale = plan.scales[index % len(plan.scales)]
            bgr = cv2.imread(str(benchmark_dir / "images" / split / record["file"]))
            valid = [o for o in record["objects"] if not o["ignore"]]
            image, window = cut(bgr, scale, plan.size, rng, near_focus(valid, scale, plan, rng))
            boxes, class_ids = crop_labels(np.array([o["box"] for o in valid]).reshape(-1, 4),
                                           np.array([o["class_id"] for o in valid], np.int64), scale, window)
            stem = f"{Path(record['file']).stem}_s{int(round(scale * 100)):03d}"
            cv2.imwrite(str(out_dir / "images" / split / f"{stem}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
            lines = [f"{c} {(b[0] + b[2]) / 2 / plan.size:.6f} {(b[1] + b[3]) / 2 / plan.size:.6f} "
                     f"{(b[2] - b[0]) / plan.size:.6f} {(b[3] - b[1]) / plan.size:.6f}" for b, c in zip(boxes, class_ids)]
            (out_dir / "labels" / split / f"{stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    data_yaml = out_dir / "data.yaml"
    data_yaml.write_text(f"path: {out_dir.resolve()}\ntrain: images/train\nval: images/val\n"
                         "names:\n" + "".join(f"  {c['id']}: {c['name']}\n" for c in classes))
    return data_yaml
