"""YOLOv8 graphs built and exported with Ultralytics (AGPL-3.0), offline: no hub, no downloads."""
from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from adaptive_perception.errors import AdaptivePerceptionError

VARIANTS = ("n", "s", "m", "l", "x")


def _offline_ultralytics() -> None:
    os.environ.setdefault("YOLO_OFFLINE", "true")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    if "YOLO_CONFIG_DIR" not in os.environ:  # the user's own cache: a fixed folder in /tmp is anyone's to plant
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        os.environ["YOLO_CONFIG_DIR"] = str(cache / "adaptive_perception" / "ultralytics")
    _plain_when_redirected()


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class _PlainText(logging.Filter):
    """Ultralytics colours its log lines whatever the stream; a log file or CI keeps the escape codes as noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not sys.stdout.isatty():
            record.msg, record.args = ANSI.sub("", record.getMessage()), ()
        return True


def _plain_when_redirected() -> None:
    """Ultralytics' output where stdout is not a terminal: one line per progress bar when it closes (an epoch's
    training, its validation) and no colour codes. Its bars redrew every 0.1 s with a carriage return there, megabytes
    of log for one tier's training, which it only spares GitHub Actions."""
    import ultralytics.utils
    import ultralytics.utils.tqdm as bars

    logger = logging.getLogger(ultralytics.utils.LOGGING_NAME)
    if not any(isinstance(f, _PlainText) for f in logger.filters):
        logger.addFilter(_PlainText())
    if not getattr(bars.is_noninteractive_console, "redirected_too", False):
        console = bars.is_noninteractive_console

        def noninteractive() -> bool:
            return console() or not sys.stdout.isatty()
        noninteractive.redirected_too = True
        bars.is_noninteractive_console = noninteractive


def export_random_yolov8(out: str | Path, variant: str = "n", imgsz: int = 320, seed: int = 0,
                         score_spread: float = 0.0, calibration: "np.ndarray | None" = None) -> Path:
    """Build YOLOv8<variant> from its architecture yaml with random weights and export it to ONNX.

    Real graph, real latency, meaningless boxes. A freshly initialised network scores every anchor
    almost the same; `score_spread` > 0 first sets the batch-norm statistics from random images (so
    activations reach the head), then re-draws the classification layer with that weight std, so
    scores vary between anchors and NMS and thresholds become observable (the runtime's peer test).
    `calibration` (N x H x W x 3 uint8 RGB frames) replaces the random calibration images, so scores
    spread on frames like those rather than on noise.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant '{variant}' must be one of {VARIANTS}")
    _offline_ultralytics()
    import torch
    from ultralytics import YOLO

    torch.manual_seed(seed)
    model = YOLO(f"yolov8{variant}.yaml")
    if score_spread > 0:
        net = model.model
        net.train()
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = None  # cumulative average over the calibration batches
        with torch.no_grad():
            if calibration is None:
                batches = [torch.rand(4, 3, imgsz, imgsz) for _ in range(8)]
            else:
                import cv2

                images = np.stack([cv2.resize(f, (imgsz, imgsz)) for f in calibration])
                batches = [torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)]
            for batch in batches:
                net(batch)
        net.eval()
        head = net.model[-1]
        for branch in head.cv3:  # per-scale classification branches; the last conv emits class logits
            final = branch[-1]
            torch.nn.init.normal_(final.weight, std=score_spread)
            torch.nn.init.uniform_(final.bias, -9.0, -4.0)
    return export_onnx(model, imgsz, out)


def export_onnx(model: object, imgsz: int | tuple[int, int], out: str | Path) -> Path:
    """Export an Ultralytics YOLO model to ONNX at `imgsz` (int or (height, width)) and move it to `out`."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    size = list(imgsz) if isinstance(imgsz, (tuple, list)) else imgsz
    from ultralytics.utils import LOGGER

    with tempfile.TemporaryDirectory() as tmp:
        cwd, level = os.getcwd(), LOGGER.level
        os.chdir(tmp)  # a yaml-built model exports next to its yaml name, i.e. into the cwd
        # Ultralytics' export report names the temporary folder and `yolo predict` lines: the caller says where it went
        LOGGER.setLevel(logging.WARNING)
        try:
            exported = Path(model.export(format="onnx", imgsz=size, simplify=True, verbose=False)).resolve()
        finally:
            os.chdir(cwd)
            LOGGER.setLevel(level)
        if out.is_dir():  # --out a folder: the file goes inside it under the exporter's name
            out = out / exported.name
        shutil.move(str(exported), out)
    return out


def export_pretrained(weights: str, imgsz: int | tuple[int, int], out: str | Path) -> Path:
    """Export Ultralytics weights to ONNX: a local .pt file, or a name such as yolov8n.pt that Ultralytics
    downloads (connected machines only), or an architecture yaml (offline: random weights)."""
    if Path(weights).suffix not in (".pt", ".yaml", ".yml"):
        hint = " (an ONNX file is a tier already: point models.<tier> at it)" if Path(weights).suffix == ".onnx" else ""
        raise AdaptivePerceptionError(f"--weights '{weights}': use an Ultralytics .pt checkpoint or a model yaml such "
                                      f"as yolov8n.yaml{hint}")
    _offline_ultralytics()
    from ultralytics import YOLO

    if Path(weights).suffix == ".pt" and not Path(weights).exists() and os.environ.get("YOLO_OFFLINE") == "true":
        raise FileNotFoundError(f"weights '{weights}' are not on this machine and YOLO_OFFLINE=true forbids "
                                "downloading them; copy the .pt file here or run on a connected machine")
    if Path(weights).exists():
        weights = str(Path(weights).resolve())  # export_onnx works in a temporary directory
    model = YOLO(weights)
    if model.task != "detect":  # the node would refuse the file it writes
        raise AdaptivePerceptionError(f"--weights '{weights}' is a {model.task} model; the node runs detection models "
                                      "only: export a detection model (yolov8n.yaml, yolov8s.pt, ...)")
    return export_onnx(model, imgsz, out)
