"""One YOLOv8 detection runtime for every tier: ONNX metadata, letterbox, onnxruntime, decode, NMS."""
from __future__ import annotations

import ast
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from adaptive_perception.errors import ConfigError, ModelFileError
from adaptive_perception.image import check_size

LOG = logging.getLogger(__name__)

TIERS: tuple[str, ...] = ("nano", "small", "large")
QUANTIZED_KEY = "adaptive_perception.quantized"  # metadata entry of a tier `models quantize` wrote: what, from which file
DEFAULT_PROVIDERS: tuple[str, ...] = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)
PAD_VALUE = 114  # grey used by Ultralytics for letterbox borders
MAX_NMS_CANDIDATES = 30000  # highest-scoring candidates kept before NMS
MAX_WH = 7680  # class offset for class-aware NMS in one pass
UINT8_INPUT = "adaptive_perception/image_uint8"  # the input `with_uint8_input` gives a graph
GRAPH_CACHE = "~/.cache/adaptive_perception/graphs"  # `uint8_graph`'s files, one per model file and digest
GRAPH_CACHE_KEEP = 24  # newest-used graphs kept there; older ones go when a new one is written (8 sets of 3 tiers)


@dataclass(frozen=True)
class Detections:
    """Boxes of one frame in source-image pixels (xyxy), with scores in [0, 1] and class indices."""

    boxes: np.ndarray  # (N, 4) float32, x1 y1 x2 y2
    scores: np.ndarray  # (N,) float32
    class_ids: np.ndarray  # (N,) int64
    class_names: tuple[str, ...] = field(repr=False, default=())

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def names(self) -> list[str]:
        """Class name of each box (the index as text where the model has no name for it)."""
        return [self.class_names[i] if i < len(self.class_names) else str(i) for i in self.class_ids.tolist()]

    @staticmethod
    def empty(class_names: tuple[str, ...] = ()) -> "Detections":
        return Detections(
            np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64), class_names
        )


@dataclass(frozen=True)
class Letterbox:
    """How a source image was resized and padded into the network input."""

    scale: float
    pad_x: int
    pad_y: int
    source_shape: tuple[int, int]  # (height, width)


@dataclass(frozen=True)
class ModelInfo:
    """What the ONNX file says about itself."""

    path: str
    input_name: str
    input_size: tuple[int, int]  # (height, width)
    stride: int
    class_names: tuple[str, ...]
    num_anchors: int
    precision: str = "float"  # "int8" for a tier `models quantize` wrote (its QUANTIZED_KEY metadata entry)


def letterbox(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping the aspect ratio and pad with grey to `size` (height, width), centred. The frame is resized
    straight into the padded canvas, and where it needs neither resizing nor a border it is returned as it is."""
    height, width = image.shape[:2]
    target_h, target_w = size
    scale = min(target_h / height, target_w / width)
    new_w, new_h = int(round(width * scale)), int(round(height * scale))
    pad_w, pad_h = (target_w - new_w) / 2, (target_h - new_h) / 2
    top, left = int(round(pad_h - 0.1)), int(round(pad_w - 0.1))
    box = Letterbox(scale, left, top, (height, width))
    resize = (new_w, new_h) != (width, height)
    if (new_h, new_w) == (target_h, target_w):
        return (cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR) if resize else image), box
    canvas = np.empty((target_h, target_w, 3), np.uint8)
    canvas[:top], canvas[top + new_h:] = PAD_VALUE, PAD_VALUE
    canvas[top:top + new_h, :left], canvas[top:top + new_h, left + new_w:] = PAD_VALUE, PAD_VALUE
    inner = canvas[top:top + new_h, left:left + new_w]
    if resize:
        cv2.resize(image, (new_w, new_h), dst=inner, interpolation=cv2.INTER_LINEAR)
    else:
        inner[:] = image
    return canvas, box


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices in descending score order."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)  # np.maximum: np.clip's wrapper costs more per call
    keep: list[int] = []
    while order.size:
        best = order[0]
        keep.append(int(best))
        rest = order[1:]
        w = np.maximum(np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]), 0)
        h = np.maximum(np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]), 0)
        inter = w * h
        iou = inter / (areas[best] + areas[rest] - inter + 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (A, B) of xyxy boxes a (A, 4) and b (B, 4); for scoring, not the NMS hot path."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def _export_args(meta: dict[str, str]) -> dict:
    """The export arguments Ultralytics records (`args`: nms=True lives there in newer versions); {} without."""
    try:
        args = ast.literal_eval(meta.get("args", "{}"))
    except Exception:  # ValueError, SyntaxError, TypeError ({[1]: 2}), ...: not arguments this reader knows
        return {}
    return args if isinstance(args, dict) else {}


def _parse_metadata(path: Path, meta: dict[str, str], input_shape: Sequence[object]) -> tuple[tuple[int, int], int, tuple[str, ...]]:
    if meta.get("task", "detect") != "detect":
        raise ModelFileError(
            path, f"its metadata says task '{meta['task']}', not 'detect'", "export a YOLOv8 detection model"
        )
    try:
        raw_names = ast.literal_eval(meta["names"]) if "names" in meta else {}
    except (ValueError, SyntaxError) as exc:
        raise ModelFileError(path, f"metadata 'names' is not a dict literal ({exc})") from exc
    if isinstance(raw_names, dict):
        names = tuple(str(raw_names[k]) for k in sorted(raw_names))
    else:
        names = tuple(str(n) for n in raw_names)
    stride = int(ast.literal_eval(meta["stride"])) if "stride" in meta else 32
    size: tuple[int, int] | None = None
    if "imgsz" in meta:
        imgsz = ast.literal_eval(meta["imgsz"])
        size = (int(imgsz[0]), int(imgsz[1])) if isinstance(imgsz, (list, tuple)) else (int(imgsz), int(imgsz))
    height, width = input_shape[2], input_shape[3]
    if isinstance(height, int) and isinstance(width, int):
        size = (height, width)
    if size is None:
        raise ModelFileError(path, "input height/width are dynamic and metadata has no 'imgsz'",
                             "export with a fixed imgsz")
    return size, stride, names


def class_list_mismatch(class_names: dict[str, Sequence[str]]) -> str:
    """A warning when the tiers (tier -> class names) do not name the same classes in the same order, else "":
    /detections would switch its vocabulary with the routed tier, and the audit, which matches large's output
    with the routed one by class, would read disagreement where the names differ."""
    if len({tuple(names) for names in class_names.values()}) <= 1:
        return ""

    def listed(names: Sequence[str]) -> str:
        return f"{len(names)} ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})"

    return ("the tiers name different classes: " + "; ".join(f"{t} {listed(n)}" for t, n in class_names.items())
            + ". /detections switches its class names with the routed tier, and the audit's agreement (large against "
            "the routed output, by class) falls where they differ: export the three tiers with one class list")


def tier_order_mismatch(input_sizes: dict[str, tuple[int, int]]) -> str:
    """A warning when the tiers' inputs (tier -> (height, width)) shrink from nano to small to large, else "": a
    model in the wrong slot (the large tier is the audit's reference, and a policy's costs assume the order)."""
    areas = [input_sizes[t][0] * input_sizes[t][1] for t in TIERS if t in input_sizes]
    if all(a <= b for a, b in zip(areas, areas[1:])):
        return ""
    return ("the tiers' inputs are not ordered nano <= small <= large (" + ", ".join(
        f"{t} {h}x{w}" for t, (h, w) in input_sizes.items()) + " as height x width): is a model in another tier's "
        "slot? The large tier is the audit's reference; check models.nano, models.small and models.large")


def other_files(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    """The tiers whose file digest in `actual` is not the one `expected` names ({tier: `file_digest`} each; a tier
    either leaves out has nothing to compare)."""
    return [tier for tier, digest in actual.items() if tier in expected and expected[tier] != digest]


def file_digest(path: str | os.PathLike[str]) -> str:
    """The first 16 hex digits of a file's SHA-256: how a policy names the tier files it was trained with."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def with_uint8_input(path: Path) -> bytes | None:
    """The model at `path` with one uint8 (batch, H, W, 3) RGB input that the graph itself turns into the float
    (batch, 3, H, W) in [0, 1] its first layer takes (Transpose, Cast, Mul by 1/255 in front of it): the host then
    only letterboxes, and on a GPU the frame crosses the bus as a quarter of the bytes. None where the model's input
    is not one float tensor of rank 4 with 3 channels or the file does not parse; the session then loads the file
    as it is and `DetectorTier._inspect` says what is wrong."""
    import onnx
    from onnx import TensorProto, helper

    try:
        model = onnx.load(str(path))
    except Exception:  # a broken file: onnxruntime's own error names it (ModelFileError)
        return None
    graph = model.graph
    constants = {tensor.name for tensor in graph.initializer}
    inputs = [value for value in graph.input if value.name not in constants]
    if len(inputs) != 1:
        return None
    tensor = inputs[0].type.tensor_type
    dims = list(tensor.shape.dim)
    if tensor.elem_type != TensorProto.FLOAT or len(dims) != 4 or dims[1].dim_value != 3:
        return None
    image = helper.make_tensor_value_info(UINT8_INPUT, TensorProto.UINT8, [None] * 4)
    for position, source in enumerate((dims[0], dims[2], dims[3])):
        image.type.tensor_type.shape.dim[position].CopyFrom(source)
    image.type.tensor_type.shape.dim[3].dim_value = 3
    scale = helper.make_tensor(f"{UINT8_INPUT}/scale", TensorProto.FLOAT, [], [1.0 / 255.0])
    steps = [helper.make_node("Transpose", [UINT8_INPUT], [f"{UINT8_INPUT}/nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Cast", [f"{UINT8_INPUT}/nchw"], [f"{UINT8_INPUT}/float"], to=TensorProto.FLOAT),
             helper.make_node("Mul", [f"{UINT8_INPUT}/float", scale.name], [inputs[0].name])]
    graph.input.remove(inputs[0])
    graph.input.insert(0, image)
    graph.initializer.append(scale)
    for node in reversed(steps):
        graph.node.insert(0, node)
    return model.SerializeToString()


def uint8_graph(path: Path, digest: str, cache_dir: str) -> str | bytes | None:
    """`with_uint8_input(path)` for a session: the file `<cache_dir>/<stem>-<digest>-uint8.onnx`, made on the first
    load of that model and read as it is after (the digest fixes the source graph), so a node start does not
    parse the model twice; the bytes themselves where `cache_dir` is empty or not writable; None as
    `with_uint8_input`."""
    cached = Path(cache_dir).expanduser() / f"{path.stem}-{digest}-uint8.onnx" if cache_dir else None
    if cached is not None and cached.is_file():
        try:
            os.utime(cached)  # last used now: the pruning below keeps it
        except OSError:
            pass
        return str(cached)
    wrapped = with_uint8_input(path)
    if wrapped is None or cached is None:
        return wrapped
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(f"{cached.name}.{os.getpid()}.partial")
        partial.write_bytes(wrapped)
        partial.replace(cached)  # atomic: a node starting at the same time reads a whole file or makes its own
    except OSError as exc:
        LOG.warning("%s: cannot cache its uint8-input graph in %s (%s); building it at every load", path, cache_dir, exc)
        return wrapped
    _prune_graph_cache(cached.parent, GRAPH_CACHE_KEEP)
    return str(cached)


def _prune_graph_cache(folder: Path, keep: int) -> None:
    """Remove all but the `keep` most recently used `*-uint8.onnx` graphs in `folder` (every model file retrained or
    edited leaves a graph under a new digest; without this the folder grows by one per digest, for ever)."""
    graphs = []
    for item in folder.glob("*-uint8.onnx"):
        try:
            graphs.append((item.stat().st_mtime, item))
        except OSError:
            continue  # removed by another process meanwhile
    for _, stale in sorted(graphs, reverse=True)[keep:]:
        try:
            stale.unlink()
        except OSError:
            pass


class DetectorTier:
    """A YOLOv8 detection ONNX export behind an onnxruntime session; one class serves every tier.

    With `preprocess_in_graph` (the default) the session runs a copy of the model whose graph takes the
    letterboxed uint8 frame and normalises it itself (`with_uint8_input`, cached in `graph_cache_dir`);
    otherwise the host converts it to float. Outputs are the same to the bit either way."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        providers: Sequence[str] = ("CPUExecutionProvider",),
        conf_threshold: float = 0.25,
        iou_threshold: float = 0.7,
        max_detections: int = 300,
        intra_op_threads: int = 0,
        name: str = "",
        accelerator: AcceleratorSettings | None = None,
        spin_wait: bool = False,  # the node's default (`spin_wait`): whatever times a tier times it as the node runs it
        preprocess_in_graph: bool = True,
        graph_cache_dir: str = GRAPH_CACHE,
    ) -> None:
        import onnxruntime as ort

        if not 0.0 <= conf_threshold <= 1.0 or not 0.0 <= iou_threshold <= 1.0:
            raise ValueError(f"conf_threshold {conf_threshold} and iou_threshold {iou_threshold} must lie in [0, 1]")
        if max_detections < 1:
            raise ValueError(f"max_detections {max_detections} must be >= 1")
        if isinstance(providers, str):  # one name, not its letters
            providers = (providers,)
        if isinstance(path, str) and path.startswith("embedded:"):  # the names the node's parameters take
            from adaptive_perception.config import resolve_model
            path = resolve_model(path)
        self.path = Path(path)
        self.name = name or self.path.stem
        self.conf_threshold = float(conf_threshold)
        self.iou_threshold = float(iou_threshold)
        self.max_detections = int(max_detections)
        if self.path.is_dir():
            raise ModelFileError(self.path, "is a folder", "name the YOLOv8 detection ONNX file in it")
        if not self.path.is_file():
            raise ModelFileError(self.path, "does not exist", "check the path: models.<tier> for the node, --model "
                                 "<tier>=PATH for the tools")
        options = ort.SessionOptions()
        if intra_op_threads > 0:
            options.intra_op_num_threads = intra_op_threads
        options.log_severity_level = 3
        # spinning intra-op threads wait for work busily: faster, but they hold the cores a while after each call
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin_wait else "0")
        chosen = select_providers(providers, ort.get_available_providers())
        self.digest = file_digest(self.path)
        self.requested = tuple(providers)
        wrapped = uint8_graph(self.path, self.digest, graph_cache_dir) if preprocess_in_graph else None
        self.in_graph = wrapped is not None
        # the graph with the uint8 input is another graph: its TensorRT engines are cached apart
        configured = provider_options(chosen, self.path, self.digest + ("-uint8" if self.in_graph else ""),
                                      accelerator or AcceleratorSettings())
        try:
            self.session = ort.InferenceSession(wrapped if self.in_graph else str(self.path), sess_options=options,
                                                providers=configured)
        except Exception as exc:  # onnxruntime raises several private exception types
            raise ModelFileError(self.path, f"is not a loadable ONNX model ({str(exc).splitlines()[0]})",
                                 "empty, cut short or not ONNX: copy it again, or export it again with "
                                 "`adaptive-perception models export`") from exc
        self.providers = tuple(self.session.get_providers())
        if self.providers[0] != chosen[0]:
            LOG.warning("%s: %s could not start; running on %s", self.path, chosen[0], self.providers[0])
        self.info = self._inspect()

    def _inspect(self) -> ModelInfo:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise ModelFileError(self.path, f"has {len(inputs)} inputs; a YOLOv8 export has exactly one image input")
        shape = inputs[0].shape
        if self.in_graph:  # (batch, H, W, 3) uint8, normalised by the graph: checked as the (batch, 3, H, W) behind it
            shape = [shape[0], shape[3], shape[1], shape[2]]
        if len(shape) != 4:
            raise ModelFileError(self.path, f"input '{inputs[0].name}' has rank {len(shape)} (shape {shape}); "
                                 "expected 4 (batch, 3, height, width)")
        if not self.in_graph and inputs[0].name == UINT8_INPUT:
            raise ModelFileError(self.path, f"input '{inputs[0].name}' takes uint8 frames of shape {shape}: the node's "
                                 "own uint8 wrapper of a tier (its graph_cache_dir), not a YOLOv8 export",
                                 "point the parameter at the original ONNX file")
        if isinstance(shape[1], int) and shape[1] != 3:
            raise ModelFileError(self.path, f"input has {shape[1]} channels; expected 3 (RGB)")
        if isinstance(shape[0], int) and shape[0] != 1:
            raise ModelFileError(self.path, f"input batch is fixed to {shape[0]}; the runtime sends one frame",
                                 "export with batch=1 or a dynamic batch")
        if not self.in_graph and inputs[0].type != "tensor(float)":
            raise ModelFileError(self.path, f"input type is {inputs[0].type}; the runtime sends float32",
                                 "export without half=True / int8")
        out_shape = outputs[0].shape
        try:
            meta = self.session.get_modelmeta().custom_metadata_map
        except UnicodeDecodeError as exc:  # a damaged file whose graph still loads
            raise ModelFileError(self.path, f"its metadata is not valid text ({exc})",
                                 "the file is damaged: copy or export it again") from None
        def end_to_end(shown: str = "") -> ModelFileError:
            return ModelFileError(self.path, f"is an end-to-end export with NMS inside ([1, N, 6] output){shown}",
                                  "export with nms=False; the runtime runs its own NMS")

        if meta.get("end2end", "False") == "True" or meta.get("nms", "False") == "True" or _export_args(meta).get("nms"):
            raise end_to_end()
        size, stride, names = _parse_metadata(self.path, meta, shape)
        if len(out_shape) != 3 or not isinstance(out_shape[1], int) or out_shape[1] < 5:
            raise ModelFileError(self.path, f"output '{outputs[0].name}' has shape {out_shape}; a YOLOv8 detect "
                                 "head gives [1, 4 + classes, anchors]",
                                 "export a detection model (not segment/pose/end-to-end NMS)")
        if out_shape[2] == 6 and out_shape[1] > 6:  # boxes of (x0, y0, x1, y1, score, class), not 2 classes
            raise end_to_end(f": output '{outputs[0].name}' has shape {out_shape}")
        # a YOLOv8 head at strides 8, 16 and 32 has this many anchors; found in the channels' place, it is transposed
        expected = sum(-(-size[0] // s) * -(-size[1] // s) for s in (8, 16, 32))
        if out_shape[1] == expected and out_shape[2] != expected:
            raise ModelFileError(self.path, f"output '{outputs[0].name}' has shape {out_shape}: {expected} anchors, "
                                 f"as a {size[0]}x{size[1]} input gives, where the classes belong: a transposed head "
                                 "([1, anchors, 4 + classes]); a YOLOv8 detect head gives [1, 4 + classes, anchors]",
                                 "export with Ultralytics' default output layout")
        if not names:
            LOG.warning("%s: no Ultralytics metadata names its classes (or its task): taken as a YOLOv8 detection "
                        "head of %d classes, named by index; export it with Ultralytics to carry them",
                        self.path, out_shape[1] - 4)
        num_classes = out_shape[1] - 4
        if names and len(names) != num_classes:
            raise ModelFileError(self.path, f"metadata names {len(names)} classes but the head outputs {num_classes}")
        if not names:
            names = tuple(str(i) for i in range(num_classes))
        anchors = out_shape[2] if isinstance(out_shape[2], int) else -1
        return ModelInfo(str(self.path), inputs[0].name, size, stride, names, anchors,
                         "int8" if QUANTIZED_KEY in meta else "float")

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.info.class_names

    def preprocess(self, image_rgb: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """HxWx3 uint8 RGB -> the session's input, and the letterbox applied: the letterboxed (1, H, W, 3) uint8
        frame where the graph normalises it (`in_graph`), else (1, 3, H, W) float32 in [0, 1]."""
        if not isinstance(image_rgb, np.ndarray) or image_rgb.ndim != 3 or image_rgb.shape[2] != 3 \
                or image_rgb.dtype != np.uint8:
            got = f"shape {image_rgb.shape} {image_rgb.dtype}" if isinstance(image_rgb, np.ndarray) else \
                type(image_rgb).__name__
            raise ValueError(f"expected an HxWx3 uint8 RGB image (a numpy array), got {got}")
        check_size(image_rgb.shape[1], image_rgb.shape[0])
        padded, box = letterbox(image_rgb, self.info.input_size)
        if self.in_graph:
            return np.ascontiguousarray(padded[None]), box
        tensor = padded.transpose(2, 0, 1)[None].astype(np.float32) * (1.0 / 255.0)
        return np.ascontiguousarray(tensor), box

    def infer(self, tensor: np.ndarray) -> np.ndarray:
        """Raw head output (4 + classes, anchors) for one preprocessed image."""
        return self.session.run(None, {self.info.input_name: tensor})[0][0]

    def candidates(self, raw: np.ndarray, conf_threshold: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Decoded pre-NMS candidates above the threshold: xyxy boxes in network pixels, scores, classes. The kept
        anchors' columns are gathered once (the output is read cold from the cache after inference, so each pass
        over it counts)."""
        threshold = self.conf_threshold if conf_threshold is None else conf_threshold
        scores = raw[4:].max(axis=0)  # a max over the contiguous class rows; the argmax only for the few kept
        kept = np.flatnonzero(scores > threshold)
        if kept.size > MAX_NMS_CANDIDATES:
            kept = kept[scores[kept] >= np.partition(scores[kept], -MAX_NMS_CANDIDATES)[-MAX_NMS_CANDIDATES]]
        columns = raw[:, kept].astype(np.float32, copy=False)  # (4 + classes, K)
        half = columns[2:4] * 0.5
        boxes = np.concatenate([columns[:2] - half, columns[:2] + half]).T  # (K, 4) x1 y1 x2 y2
        return boxes, scores[kept].astype(np.float32, copy=False), columns[4:].argmax(axis=0)

    def postprocess(self, raw: np.ndarray, box: Letterbox, conf_threshold: float | None = None,
                    max_detections: int | None = None) -> Detections:
        """Class-aware NMS and mapping back to source-image pixels (thresholds default to the tier's own)."""
        boxes, scores, class_ids = self.candidates(raw, conf_threshold)
        if scores.size == 0:
            return Detections.empty(self.class_names)
        keep = nms(boxes + (class_ids[:, None] * MAX_WH).astype(np.float32), scores, self.iou_threshold)
        keep = keep[: self.max_detections if max_detections is None else max_detections]
        boxes = boxes[keep]  # a (K, 4) copy, mapped in place
        boxes -= np.array([box.pad_x, box.pad_y] * 2, np.float32)
        boxes /= np.float32(box.scale)
        height, width = box.source_shape
        np.clip(boxes, 0, np.array([width, height] * 2, np.float32), out=boxes)
        return Detections(boxes, scores[keep], class_ids[keep].astype(np.int64), self.class_names)

    def detect(self, image_rgb: np.ndarray) -> Detections:
        """Detect objects in an HxWx3 uint8 RGB image; boxes come back in its pixels."""
        tensor, box = self.preprocess(image_rgb)
        return self.postprocess(self.infer(tensor), box)

    def warmup(self, runs: int = 2) -> None:
        """Run the session on grey frames so the first real frame pays no start-up cost."""
        height, width = self.info.input_size
        frame = np.full((height, width, 3), PAD_VALUE, np.uint8)
        for _ in range(runs):
            self.detect(frame)


@dataclass(frozen=True)
class AcceleratorSettings:
    """Options of the GPU execution providers (node parameters `tensorrt.*`, `cuda.device_id`)."""

    trt_cache_dir: str = "~/.cache/adaptive_perception/tensorrt"  # built engines persist here between runs
    trt_fp16: bool = True
    device_id: int = 0


def provider_options(chosen: Sequence[str], model: Path, digest: str,
                     settings: AcceleratorSettings) -> list[str | tuple[str, dict[str, str]]]:
    """onnxruntime's providers argument for `chosen`: TensorRT with an engine cache of its own per model file
    (`<cache>/<file stem>-<digest>`: the digest fixes the graph and its static input size, so an engine is never
    reused for another model or size) and optional FP16; CUDA on the configured device; CPU as it is."""
    out: list[str | tuple[str, dict[str, str]]] = []
    for provider in chosen:
        if provider == "TensorrtExecutionProvider":
            cache = Path(settings.trt_cache_dir).expanduser() / f"{model.stem}-{digest}"
            cache.mkdir(parents=True, exist_ok=True)
            out.append((provider, {"device_id": str(settings.device_id), "trt_engine_cache_enable": "True",
                                   "trt_engine_cache_path": str(cache), "trt_timing_cache_enable": "True",
                                   "trt_timing_cache_path": str(cache), "trt_fp16_enable": str(settings.trt_fp16)}))
        elif provider == "CUDAExecutionProvider":
            out.append((provider, {"device_id": str(settings.device_id)}))
        else:
            out.append(provider)
    return out


_WARNED_UNAVAILABLE: set[tuple[tuple[str, ...], tuple[str, ...]]] = set()


def fallback_already_said(requested: Sequence[str]) -> None:
    """Mark the fallback from `requested` to what this onnxruntime build has as logged (the audit's process: the
    node that started it has said it)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    _WARNED_UNAVAILABLE.add((tuple(p for p in requested if p not in available), tuple(available)))


def check_provider_names(requested: Sequence[str], known: Sequence[str]) -> None:
    """Refuse a name no onnxruntime build knows ('CUDA', 'cpu'): it would fall back like a provider this build
    lacks, and a typo would read as 'no GPU here'."""
    import difflib

    for name in requested:
        if name in known:
            continue
        lower = {k.lower(): k for k in known}  # 'cuda' -> CUDAExecutionProvider, a misspelling -> the closest
        key = next((k for k in (name.lower(), name.lower() + "executionprovider") if k in lower), None) or next(
            iter(difflib.get_close_matches(name.lower(), list(lower), n=1, cutoff=0.6)), None)
        raise ConfigError(f"execution provider '{name}' is not one onnxruntime knows"
                          + (f": did you mean '{lower[key]}'?" if key else "")
                          + f" (known: {', '.join(known)}; the node's providers parameter, the tools' --provider)")


def select_providers(requested: Sequence[str], available: Sequence[str]) -> list[str]:
    """Keep the requested execution providers this onnxruntime build has, in order; CPU always last. A name no
    onnxruntime build knows is refused. The fallback is logged once per process and combination (every tier and the
    audit worker ask alike; each tier's provider is reported on its own at configure and in diagnostics)."""
    import onnxruntime as ort

    check_provider_names(requested, ort.get_all_providers())
    unknown = [p for p in requested if p not in available]
    if unknown and (tuple(unknown), tuple(available)) not in _WARNED_UNAVAILABLE:
        _WARNED_UNAVAILABLE.add((tuple(unknown), tuple(available)))
        LOG.warning("execution providers %s are not available in this onnxruntime build (has %s); falling back",
                    unknown, list(available))
    chosen = [p for p in requested if p in available and p != "CPUExecutionProvider"]
    return chosen + ["CPUExecutionProvider"]
