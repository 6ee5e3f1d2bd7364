"""8-bit tiers for CPU robots: `adaptive-perception models quantize`.

onnxruntime static quantization in QDQ form: weights signed 8-bit per output channel, activations unsigned 8-bit
per tensor, their ranges the min/max over calibration frames from the robot's own camera (a bag) or a folder of
images. Every operator is quantized except a YOLOv8 detect head's decoding after its last convolutions: its one
output tensor holds box coordinates in pixels beside class scores in [0, 1], and one 8-bit scale for both rounds
every score to 0. Needs only the runtime's packages (onnx, onnxruntime), so it runs on the robot.

Measured on the embedded tiers (training/README.md "8-bit tiers"): at most 0.6 mAP50-95 lost per tier, 1.7-2.4x
faster on a 2-core x86 CPU with AVX-512 VNNI; large gains most, so a router over 8-bit tiers saves less against
its own always-large. Retrain the router for the new tiers' costs (`train all --model ...`): the policy names the
tier files it was trained with and the node warns when they differ.
"""
from __future__ import annotations

import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from adaptive_perception.audit import agreement
from adaptive_perception.config import resolve_model
from adaptive_perception.detector import QUANTIZED_KEY, DetectorTier
from adaptive_perception.errors import AdaptivePerceptionError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True)
class Quantized:
    """One tier quantized: its files, sizes, the latency of both on the check frames and their agreement there."""

    tier: str
    source: Path
    out: Path
    source_mb: float
    out_mb: float
    source_ms: float
    out_ms: float
    agreement: float  # mean F1 at IoU 0.5 of the 8-bit tier's published detections against the source's, over
    # the check frames where either found something (nan where neither did: two blind models agree vacuously)
    compared: int  # check frames where either tier found something
    checked: int  # check frames


def decode_nodes(model, path: Path) -> list[str]:
    """The detect head's nodes after its convolution branches: an Ultralytics YOLOv8 export names every node
    `/model.<i>/...`, the head is the last module, its convolutions sit under `cv2.*` (boxes) and `cv3.*` (classes)."""
    indices = [int(m.group(1)) for node in model.graph.node if (m := re.match(r"/model\.(\d+)/", node.name))]
    if not indices:
        raise AdaptivePerceptionError(
            f"'{path}' does not name its nodes as an Ultralytics YOLOv8 export does (/model.<i>/...), so the detect "
            "head's decoding cannot be kept in float; export it with `adaptive-perception models export`")
    head = f"/model.{max(indices)}/"
    nodes = [n.name for n in model.graph.node if n.name.startswith(head) and "/cv2." not in n.name
             and "/cv3." not in n.name]
    if not nodes:
        raise AdaptivePerceptionError(f"'{path}': its last module {head} has no decoding after cv2/cv3; not a "
                                      "YOLOv8 detect head")
    return nodes


def image_folder_frames(folder: Path, count: int, what: str = "--images",
                        fix: str = "give a folder of the camera's frames or --bag a recording") -> list[np.ndarray]:
    """`count` RGB frames spread evenly over a folder's images (sorted by name); errors name the folder as `what`
    and end with `fix`."""
    import cv2

    if not Path(folder).is_dir():
        raise AdaptivePerceptionError(f"{what} '{folder}' is not a folder; {fix}")
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise AdaptivePerceptionError(f"{what} '{folder}' holds no {'/'.join(IMAGE_SUFFIXES)} file; {fix}")
    frames = []
    for path in _spread(paths, count):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise AdaptivePerceptionError(f"{what}: '{path}' is not a readable image; remove it or fix it")
        frames.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    return frames


def bag_frames(bag: Path, count: int, topics: Sequence[str] | None = None) -> list[np.ndarray]:
    """`count` RGB frames spread evenly over the image messages of a bag, or of the bags in a folder (`record`'s
    segments, as training reads them), with the node's decoder; two passes, so a long recording is never held in
    memory."""
    import itertools

    from adaptive_perception.bag import bag_image_rgb, camera_topics, expand_bags, image_topics, read_images, said_left_out
    from adaptive_perception.errors import ImageDecodeError

    bags = expand_bags([bag])
    # each bag's topics chosen once (both passes read them): the named ones, else its cameras
    chosen = {path: camera_topics(path, image_topics(path)) if not topics else (list(topics), {}) for path in bags}
    left_out = {topic: why for _, skipped in chosen.values() for topic, why in skipped.items()}
    if left_out:  # said once, so a depth stream or a copy that should have been read is noticed
        print(f"bag '{bag}': calibrating on its cameras; left out {said_left_out(left_out)}", flush=True)

    def images():
        return itertools.chain.from_iterable(read_images(path, chosen[path][0]) for path in bags)

    total = sum(1 for _ in images())
    wanted = set(_spread(list(range(total)), count))
    frames, refused = [], []
    for index, image in enumerate(images()):
        if index in wanted:
            try:
                frames.append(bag_image_rgb(image))
            except ImageDecodeError as exc:  # the node skips such a frame; so does the calibration
                refused.append(f"message {index}: {exc}")
    if refused:
        print(f"bag '{bag}': {len(refused)} of the {len(wanted)} frames drawn cannot be decoded and are left out "
              f"(first: {refused[0]})", flush=True)
    if refused and not frames:
        raise AdaptivePerceptionError(f"bag '{bag}': none of the {len(wanted)} frames drawn can be decoded; the "
                                      "README's \"Topics and services\" lists the encodings the node reads")
    return frames


def _spread(items: list, count: int) -> list:
    if count >= len(items):
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


def quantize_model(source: Path, out: Path, frames: Sequence[np.ndarray]) -> Path:
    """`source` (a YOLOv8 detection ONNX with a float image input) quantized to `out`, calibrated on `frames`
    (HxWx3 uint8 RGB, letterboxed as the node does)."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not frames:
        raise AdaptivePerceptionError("no calibration frames: the recording or folder gave none")
    source, out = Path(source), Path(out)
    detector = DetectorTier(source, preprocess_in_graph=False)  # the float tensor the graph itself takes
    excluded = decode_nodes(onnx.load(str(source)), source)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.frames = iter(frames)

        def get_next(self):
            frame = next(self.frames, None)
            return None if frame is None else {detector.info.input_name: detector.preprocess(frame)[0]}

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / out.name
        # onnx's own shape inference: the exports' shapes are static (the symbolic pass would need sympy)
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(quantized), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=excluded)
        model = onnx.load(str(quantized))
        onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, QUANTIZED_KEY: (
            f"int8 QDQ, weights per channel, activations min/max over {len(frames)} calibration frames, detect head "
            f"decoding in float; from {source.name}")})
        onnx.save(model, str(quantized))
        quantized.replace(out)  # whole or not at all
    return out


def check_jobs(models: dict[str, str], out_dir: Path, replace: bool = False) -> dict[str, tuple[Path, Path]]:
    """{tier: (its float source, the 8-bit file to write)}, checked before any frame is read: `out_dir` a folder
    this process can write (or can make), no source already 8-bit, no output over its own source, and no existing
    output replaced unless `replace`."""
    import onnx

    from adaptive_perception.errors import write_probe

    out_dir = Path(out_dir)
    existing = next(p for p in (out_dir, *out_dir.absolute().parents) if p.exists())  # made later, where missing
    if out_dir.suffix == ".onnx" or not existing.is_dir():
        raise AdaptivePerceptionError(f"--out {out_dir}: give the folder the tiers go in (<tier>.onnx each), not a "
                                      "file")
    try:
        write_probe(existing, "quantize")
    except OSError as exc:
        raise AdaptivePerceptionError(f"--out {out_dir}: cannot write there ({exc.strerror or exc}); give a folder "
                                      "you can write") from None
    jobs = {}
    for tier, spec in models.items():
        source, out = Path(resolve_model(spec)), out_dir / f"{tier}.onnx"
        try:
            metadata = {p.key: p.value for p in onnx.load(str(source), load_external_data=False).metadata_props}
        except Exception as exc:  # noqa: BLE001 (onnx's own parse error: named below with the file)
            raise AdaptivePerceptionError(f"--model {tier}={spec}: '{source}' is not an ONNX model ({exc})") from None
        if QUANTIZED_KEY in metadata:  # onnxruntime's quantizer loops for ever on a QDQ graph
            raise AdaptivePerceptionError(f"--model {tier}={spec}: '{source}' is already an 8-bit tier "
                                          f"({metadata[QUANTIZED_KEY]}); quantize its float source")
        if out.exists() and out.resolve() == source.resolve():
            raise AdaptivePerceptionError(f"--out {out_dir} would write the 8-bit {tier} over its source '{source}'; "
                                          "give another --out folder")
        if out.exists() and not replace:
            raise AdaptivePerceptionError(f"--out {out_dir} already holds {out.name}; give another folder, or "
                                          "--replace to write over it (a node or policy that names it then gets other "
                                          "weights)")
        jobs[tier] = (source, out)
    return jobs


def quantize_tiers(jobs: dict[str, tuple[Path, Path]], frames: Sequence[np.ndarray],
                   check: Sequence[np.ndarray] = (), repeats: int = 5) -> list[Quantized]:
    """Each tier of `jobs` (`check_jobs`) quantized from its source to its output, then each pair timed in turn on
    the `check` frames with the node's settings and their detections compared there."""
    rows = []
    for tier, (source, out) in jobs.items():
        out = quantize_model(source, out, frames)
        print(f"[quantize] {tier}: {source} -> {out}; timing both on {len(check)} frames", flush=True)
        times = {}
        pair = {"source": DetectorTier(source, name=tier), "out": DetectorTier(out, name=f"{tier} int8")}
        for name, detector in pair.items():
            detector.warmup(2)
            samples = []
            for _ in range(repeats):
                for frame in check:
                    start = time.perf_counter()
                    detector.detect(frame)
                    samples.append(time.perf_counter() - start)
            times[name] = float(np.median(samples)) * 1e3 if samples else float("nan")
        found = [(pair["out"].detect(frame), pair["source"].detect(frame)) for frame in check]
        scores = [agreement(mine, theirs) for mine, theirs in found if len(mine) or len(theirs)]
        rows.append(Quantized(tier, source, out, source.stat().st_size / 1e6, out.stat().st_size / 1e6,
                              times["source"], times["out"], float(np.mean(scores)) if scores else float("nan"),
                              len(scores), len(check)))
    return rows


def split_frames(frames: list[np.ndarray], count: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Calibration frames and, between them, up to 10 others to check on (never calibrated on)."""
    calibration = frames[::2][:count]
    check = frames[1::2][:10]
    return calibration, check


def table(rows: Iterable[Quantized]) -> str:
    lines = ["| tier | file | MB source -> int8 | ms source -> int8 (median, this machine) | detections agree (F1 at "
             "IoU 0.5) |", "|---|---|---|---|---|"]

    def shown(value: float, digits: int) -> str:  # nan where no frame was left to check on
        return "-" if np.isnan(value) else f"{value:.{digits}f}"

    def agreed(r: Quantized) -> str:
        if not r.checked:
            return "- (no frame left to check on)"
        if not r.compared:
            return f"- (neither found anything on the {r.checked} check frames: nothing to compare)"
        return f"{r.agreement:.2f} on the {r.compared} of {r.checked} check frames with detections"

    for r in rows:
        lines.append(f"| {r.tier} | {r.out} | {r.source_mb:.1f} -> {r.out_mb:.1f} | {shown(r.source_ms, 1)} -> "
                     f"{shown(r.out_ms, 1)} | {agreed(r)} |")
    return "\n".join(lines)
