"""Shared fixtures: real YOLOv8 ONNX graphs exported offline, real rclpy contexts."""
from __future__ import annotations

import ast
import socket
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def peer_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """yolov8n from its yaml, random weights with a spread-out classification head, exported at 320 px."""
    from adaptive_perception.training.yolo import export_random_yolov8

    return export_random_yolov8(tmp_path_factory.mktemp("models") / "yolov8n_spread_320.onnx",
                                variant="n", imgsz=320, seed=0, score_spread=0.05)


@pytest.fixture(scope="session")
def tier_models(peer_model, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three different tier files: the peer graph with each tier's name in its class names ("nano-0", ...), so a
    detection tells which tier produced it, and the files' digests differ."""
    import onnx

    folder = tmp_path_factory.mktemp("tiers")
    out = {}
    for tier in ("nano", "small", "large"):
        model = onnx.load(str(peer_model))
        entry = next(e for e in model.metadata_props if e.key == "names")
        count = len(ast.literal_eval(entry.value))
        entry.value = repr({i: f"{tier}-{i}" for i in range(count)})
        out[tier] = folder / f"{tier}.onnx"
        onnx.save(model, str(out[tier]))
    return out


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


@pytest.fixture(scope="session")
def regime_frames() -> dict[str, np.ndarray]:
    """A dense (10 objects) and a sparse (no object) 640x480 frame of the demo's generated sequence."""
    from adaptive_perception.ros.demo import DEMO_SEED
    from adaptive_perception.scenes.sequence import Regime, SequenceSpec, render_sequence

    frames = {f.index: f for f in render_sequence(SequenceSpec(DEMO_SEED, 0, 101)) if f.index in (40, 100)}
    assert frames[40].regime is Regime.DENSE and frames[100].regime is Regime.SPARSE
    return {"dense": frames[40].rgb, "sparse": frames[100].rgb}


@pytest.fixture(scope="session")
def regime_policy(regime_frames, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A policy built to send the dense frame to large and the sparse frame to nano."""
    from policies import two_frame_policy

    return two_frame_policy(tmp_path_factory.mktemp("policies") / "dense_large.onnx", regime_frames, "dense-to-large")


def unused_port() -> int:
    """A localhost TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def free_port() -> int:
    return unused_port()
