"""Shared fixtures: real YOLOv8 ONNX graphs exported offline, real rclpy contexts."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def peer_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """yolov8n from its yaml, random weights with a spread-out classification head, exported at 320 px."""
    from adaptive_perception.training.yolo import export_random_yolov8

    return export_random_yolov8(tmp_path_factory.mktemp("models") / "yolov8n_spread_320.onnx",
                                variant="n", imgsz=320, seed=0, score_spread=0.05)


@pytest.fixture(scope="module")
def context():
    """An rclpy context of its own per test module (nodes in it talk over the real localhost graph)."""
    import rclpy

    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.shutdown(context=ctx)


@pytest.fixture(scope="session")
def scene_rgb() -> np.ndarray:
    """A 640x480 RGB frame with a few filled shapes on a gradient (deterministic)."""
    import cv2

    ys, xs = np.mgrid[0:480, 0:640]
    frame = np.stack([xs * 255 // 640, ys * 255 // 480, np.full_like(xs, 90)], axis=2).astype(np.uint8)
    cv2.rectangle(frame, (60, 80), (200, 220), (220, 30, 30), -1)
    cv2.circle(frame, (420, 300), 70, (30, 200, 60), -1)
    cv2.rectangle(frame, (480, 40), (600, 120), (20, 20, 220), -1)
    return frame
