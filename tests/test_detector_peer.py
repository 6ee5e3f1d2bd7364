"""The detector runtime agrees with Ultralytics' own prediction on the same ONNX file and images (the train extra,
which `make test` installs, brings Ultralytics; without it these tests fail rather than skip)."""
from __future__ import annotations

import numpy as np
import pytest

from adaptive_perception.detector import DetectorTier, box_iou

CONF = 0.25


def _one_to_one(iou: np.ndarray) -> np.ndarray:
    """Greedy one-to-one matching by descending IoU (clipping can make two kept boxes coincide)."""
    match = np.full(iou.shape[0], -1)
    used = np.zeros(iou.shape[1], bool)
    for flat in np.argsort(-iou, axis=None):
        i, j = np.unravel_index(flat, iou.shape)
        if match[i] < 0 and not used[j]:
            match[i], used[j] = j, True
    return match


def _images() -> list[np.ndarray]:
    """Noise frames (what the random-weight graph was calibrated on) in landscape, odd and portrait shapes."""
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((480, 640, 3), (361, 500, 3), (640, 480, 3))]


def _scene_images() -> list[np.ndarray]:
    """Generated camera frames (a sequence outside the benchmark) for the trained tiers."""
    from adaptive_perception.scenes.sequence import SequenceSpec, render_sequence

    frames = list(render_sequence(SequenceSpec(777, 0, 60)))
    return [max(frames, key=lambda f: len(f.valid)).rgb, frames[0].rgb, frames[30].rgb]


@pytest.fixture(scope="module")
def both(peer_model):
    from ultralytics import YOLO

    return DetectorTier(peer_model, conf_threshold=CONF, iou_threshold=0.7), YOLO(str(peer_model), task="detect")


def _compare(ours_det: DetectorTier, theirs, image: np.ndarray, conf: float, min_boxes: int) -> None:
    ours = ours_det.detect(image)
    height, width = ours_det.info.input_size
    result = theirs.predict(np.ascontiguousarray(image[:, :, ::-1]), imgsz=[height, width], conf=conf, iou=0.7,
                            max_det=300, verbose=False)[0]
    boxes, scores = result.boxes.xyxy.numpy(), result.boxes.conf.numpy()
    classes = result.boxes.cls.numpy().astype(int)
    assert len(ours) >= min_boxes
    assert len(ours) == len(boxes)
    # class-aware NMS keeps overlapping boxes of different classes: match within a class
    iou = np.where(ours.class_ids[:, None] == classes[None, :], box_iou(ours.boxes, boxes), -1.0)
    match = _one_to_one(iou - np.abs(ours.scores[:, None] - scores[None, :]))  # score breaks IoU ties
    assert iou[np.arange(len(ours)), match].min() >= 0.99
    assert np.array_equal(ours.class_ids, classes[match])
    assert np.all(np.abs(ours.scores - scores[match]) <= 1e-3 * ours.scores)
    assert ours.boxes[:, 0::2].max() <= image.shape[1] and ours.boxes[:, 1::2].max() <= image.shape[0]


def test_final_boxes_match_ultralytics_one_to_one(both):
    ours_det, theirs = both
    for image in _images():
        _compare(ours_det, theirs, image, CONF, min_boxes=5)


@pytest.mark.parametrize("tier", ["nano", "large"])
def test_embedded_tiers_match_ultralytics_on_camera_frames(tier):
    from ultralytics import YOLO

    from adaptive_perception.config import EMBEDDED_DIR

    path = EMBEDDED_DIR / f"{tier}.onnx"
    ours_det = DetectorTier(path, conf_threshold=0.05, iou_threshold=0.7)
    theirs = YOLO(str(path), task="detect")
    for image in _scene_images():
        _compare(ours_det, theirs, image, 0.05, min_boxes=3)


def test_pre_nms_candidates_match_ultralytics_decoding(both):
    ours_det, theirs = both
    from ultralytics.utils.nms import non_max_suppression
    import torch

    tensor, _ = ours_det.preprocess(_images()[1])
    raw = ours_det.infer(tensor)
    boxes, scores, classes = ours_det.candidates(raw, conf_threshold=0.05)
    # Ultralytics decoding of the same raw output with NMS switched off (IoU threshold 1.0 keeps all)
    ref = non_max_suppression(torch.from_numpy(raw[None].copy()), conf_thres=0.05, iou_thres=1.0, max_det=100000)[0]
    ref = ref.numpy()
    assert len(boxes) > 100 and len(boxes) == len(ref)
    order_ours = np.lexsort((boxes[:, 0], -scores))
    order_ref = np.lexsort((ref[:, 0], -ref[:, 4]))
    np.testing.assert_allclose(scores[order_ours], ref[order_ref, 4], rtol=1e-6)
    np.testing.assert_allclose(boxes[order_ours], ref[order_ref, :4], atol=1e-3)
    assert np.array_equal(classes[order_ours], ref[order_ref, 5].astype(int))
