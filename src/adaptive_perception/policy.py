"""The routing policy runtime: an ONNX MLP from the 1028 routing features to one logit per tier.

A policy file carries everything needed to run it in its ONNX metadata (never in code):

| key | value |
|---|---|
| `adaptive_perception.kind` | `routing_policy` |
| `adaptive_perception.policy_id` | a non-empty id, published in every RoutingDecision |
| `adaptive_perception.feature_version` | must equal `features.FEATURE_VERSION` (the node's feature extractor) |
| `adaptive_perception.tiers` | JSON list of the tiers in logit order, e.g. `["nano", "small", "large"]` |
| `adaptive_perception.feature_mean` / `feature_std` | JSON lists of 1028 floats; the input is (x - mean) / std |
| `adaptive_perception.description` | optional free text (how it was made) |
| `adaptive_perception.output` | optional: `logits` (default; the policy's choice is the largest) or `tier_values` (each tier's predicted value on this frame; the choice is the largest value - cost_weight x tier_cost, so the cost weight moves the operating point without retraining) |
| `adaptive_perception.tier_cost` / `cost_weight` / `temperature` | `tier_values` only: JSON list of 3 relative tier costs, the calibrated default weight (>= 0), and the temperature of the published probabilities (> 0) |
| `adaptive_perception.tier_digests` | optional JSON {tier: first 16 hex digits of the SHA-256 of the tier ONNX it was trained with}; the node warns when a loaded tier differs |
| `adaptive_perception.drift` | optional JSON drift reference (`drift.DriftReference`): feature mean/std, decile edges of the projected features, the tier mix and audit agreement on the training data (with the cost weight and hysteresis they were routed at), thresholds calibrated on held-out data; the node's drift monitor compares with it |

The graph has one float32 input of shape (N or 1, 1028) and one float32 output of shape (N or 1, 3).

Inputs the policy does not read: when the first layer (a Gemm or MatMul on the input with constant weights) gives
some inputs zero weight in every unit, those inputs cannot move the output, so the runtime feeds onnxruntime only
the others (`inputs_read`; the logits are the same, checked at load) and says whether it reads the image
statistics at all (`reads_image`). A context-only policy (`train --policy-inputs context`, the default) reads the
4 context values: its decision needs neither the 1024 image statistics nor the 0.5 MB of zero first-layer weights
that the detector's inference pushes out of the cache between frames.

How a frame runs: where the graph is a chain of dense layers (Gemm, optionally followed by Relu, each on the
previous one's output: what `train export` writes), numpy evaluates those layers on the read inputs
(`dense_layers`), once their logits match onnxruntime's within 1e-5 at load; right after a detector's inference
onnxruntime's call path is cold, and a frame's decision cost 0.14 ms at the median there against 0.06 ms for the
same matrix products in numpy (0.015 / 0.007 ms warm). Any other graph runs in onnxruntime through input and
output buffers bound to the session once (an io binding), one frame at a time.
"""
from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adaptive_perception.detector import TIERS, other_files
from adaptive_perception.errors import AdaptivePerceptionError
from adaptive_perception.features import FEATURE_SIZE, FEATURE_VERSION, IMAGE_FEATURES

META_PREFIX = "adaptive_perception."
POLICY_KIND = "routing_policy"
REQUIRED_KEYS = ("kind", "policy_id", "feature_version", "tiers", "feature_mean", "feature_std")
# What a policy graph may hold: dense layers, activations and the arithmetic, comparisons, reductions and reshaping
# around them (and the convolutions of a small image encoder); every tensor's size is then bounded by shape inference
# (`_one_frame_problem`). Control flow (Loop ran 10^15 iterations inside the node's executor at load, deaf to SIGTERM)
# and operators that size their output from a tensor's values (ConstantOfShape asked for 6 GB) are refused.
POLICY_OPERATORS = frozenset({
    "Gemm", "MatMul", "Einsum", "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Sign", "Exp", "Log", "Sqrt", "Pow",
    "Reciprocal", "Erf", "Round", "Floor", "Ceil", "Max", "Min", "Sum", "Mean", "Clip", "Relu", "LeakyRelu", "PRelu",
    "ThresholdedRelu", "Elu", "Selu", "Celu", "Gelu", "Mish", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Softplus", "Softsign", "Softmax", "LogSoftmax", "Identity", "Dropout", "Constant", "Cast", "CastLike",
    "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Slice", "Gather", "GatherElements",
    "GatherND", "Split", "Expand", "Where", "Shape", "Size", "BatchNormalization", "LayerNormalization",
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceSumSquare",
    "ReduceLogSumExp", "Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Equal", "Greater",
    "GreaterOrEqual", "Less", "LessOrEqual", "Not", "And", "Or", "Xor"})
MAX_POLICY_BYTES = 64 * 1024 * 1024  # the shipped policy is 0.6 MB; a routing policy's overhead budget is 0.5 ms
MAX_POLICY_NODES = 1000  # the shipped policy has 5; 8,000 MatMuls took 17 s to load and 1.5 s a frame
MAX_TENSOR_ELEMENTS = 16 * 1024 * 1024  # per tensor, batch 1: a [10000, 10000] product took 866 MB
MAX_POLICY_ID = 128  # characters: the id goes into every RoutingDecision, metrics label and log line
CONTRACT = (f"a routing policy has one float32 input [N or 1, {FEATURE_SIZE}] (the routing features) and one float32 "
            f"output [N or 1, {len(TIERS)}] (a score per tier, before any softmax)")
FLATTEN_HINT = ("a PyTorch export: flatten with torch.flatten(x, 1), not x.view(x.size(0), -1), and export at opset 14 "
                "or later, where ONNX infers a Reshape's output from its shape input")
WRAP_HINT = "`adaptive-perception policy wrap MODEL.onnx --out POLICY.onnx --id NAME` adds it to a model of your own"


class PolicyFileError(AdaptivePerceptionError):
    """A policy file is missing, unreadable or not a routing policy for these features and tiers."""

    def __init__(self, path: object, problem: str, fix: str = "") -> None:
        self.problem, self.fix = problem, fix
        message = f"policy file '{path}': {problem}"
        super().__init__(message + (f" ({fix})" if fix else ""))


OUTPUTS = ("logits", "tier_values")


@dataclass(frozen=True)
class ValueHead:
    """How a `tier_values` policy turns its outputs into a choice: argmax(values - weight x tier_cost)."""

    tier_cost: np.ndarray  # (3,) costs relative to the large tier
    cost_weight: float  # the weight calibrated at training time (its operating point)
    temperature: float  # probabilities = softmax((values - weight x tier_cost) / temperature)


@dataclass(frozen=True)
class PolicyInfo:
    """What the policy file says about itself."""

    path: str
    policy_id: str
    tiers: tuple[str, ...]
    description: str
    tier_digests: dict[str, str]  # empty when the file names none (policies written before they were recorded)


def dense_layers(model) -> list[tuple[np.ndarray, np.ndarray, bool]] | None:
    """An ONNX model (`onnx.ModelProto`) as a chain of dense layers [(W of shape (inputs, units), b of shape
    (units,), whether a Relu follows)], or None where its graph is anything else: each node takes the previous
    one's output, a Gemm with constant weights and bias (alpha = beta = 1, input not transposed) or a Relu after
    one, and the last gives the graph's output."""
    from onnx import helper, numpy_helper

    graph = model.graph
    constants = {tensor.name: tensor for tensor in graph.initializer}
    inputs = [value.name for value in graph.input if value.name not in constants]
    if len(inputs) != 1 or len(graph.output) != 1:
        return None
    current, layers = inputs[0], []
    for node in graph.node:
        if list(node.input[:1]) != [current] or len(node.output) != 1:
            return None
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Gemm" and len(node.input) == 3 and all(name in constants for name in node.input[1:]) \
                and attributes.get("alpha", 1.0) == 1.0 and attributes.get("beta", 1.0) == 1.0 \
                and attributes.get("transA", 0) == 0:
            weights = numpy_helper.to_array(constants[node.input[1]])
            weights = weights.T if attributes.get("transB", 0) else weights
            bias = numpy_helper.to_array(constants[node.input[2]]).reshape(-1)
            if weights.ndim != 2 or bias.shape != (weights.shape[1],):
                return None
            layers.append([np.ascontiguousarray(weights, np.float32), bias.astype(np.float32), False])
        elif node.op_type == "Relu" and layers and not layers[-1][2]:
            layers[-1][2] = True
        else:
            return None
        current = node.output[0]
    if not layers or current != graph.output[0].name:
        return None
    return [(weights, bias, relu) for weights, bias, relu in layers]


def _read_inputs(model) -> tuple[np.ndarray, bytes | None]:
    """(indices of the inputs the policy's first layer gives a non-zero weight, the model (an `onnx.ModelProto`,
    changed in place) without the others as serialized ONNX or None when it reads them all). Every input counts as
    read where the graph does not begin with one Gemm (no transposed input) or MatMul of the input by a constant
    used nowhere else."""
    from onnx import helper, numpy_helper

    everything = np.arange(FEATURE_SIZE)
    graph = model.graph
    constants = {tensor.name: tensor for tensor in graph.initializer}
    inputs = [value for value in graph.input if value.name not in constants]
    consumers = [node for node in graph.node if inputs and inputs[0].name in node.input]
    if len(inputs) != 1 or len(consumers) != 1:
        return everything, None
    first = consumers[0]
    attributes = {a.name: helper.get_attribute_value(a) for a in first.attribute}
    if first.op_type not in ("Gemm", "MatMul") or list(first.input[:1]) != [inputs[0].name] or len(first.input) < 2 \
            or first.input[1] not in constants or attributes.get("transA", 0) != 0 \
            or sum(first.input[1] in node.input for node in graph.node) != 1:
        return everything, None
    weights = numpy_helper.to_array(constants[first.input[1]])
    transposed = bool(attributes.get("transB", 0))
    rows = weights.T if transposed else weights  # (inputs, units)
    if rows.ndim != 2 or rows.shape[0] != FEATURE_SIZE:
        return everything, None
    read = np.flatnonzero((rows != 0).any(axis=1))
    if len(read) == FEATURE_SIZE or len(read) == 0:
        return everything, None
    kept = rows[read].T if transposed else rows[read]
    constants[first.input[1]].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(kept), first.input[1]))
    inputs[0].type.tensor_type.shape.dim[1].dim_value = len(read)
    return read, model.SerializeToString()


def policy_graph(path: str | Path):
    """The policy file's ONNX model, read without running anything; PolicyFileError where its size, external or
    sparse tensors, operators or tensor shapes are not what a routing policy holds."""
    import onnx

    size = Path(path).stat().st_size
    if not size:
        raise PolicyFileError(path, "is empty (0 bytes)", "was it cut short while copying? give a policy ONNX "
                              "written by `adaptive-perception train export`")
    if size > MAX_POLICY_BYTES:
        raise PolicyFileError(path, f"is {size / 2**20:.0f} MB, more than a routing policy's {MAX_POLICY_BYTES >> 20} "
                              "MB", "give a policy ONNX written by `adaptive-perception train export`")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise PolicyFileError(path, f"is not an ONNX model ({str(exc).splitlines()[0][:200] if str(exc) else exc!r})",
                              "is it a complete ONNX file?") from None
    graph = model.graph
    external = [t.name for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise PolicyFileError(path, f"keeps tensors {external[:3]} in external files", "a routing policy is one "
                              "self-contained file: export it again")
    sparse = [a.name for n in graph.node for a in n.attribute if a.name.startswith("sparse_value")]
    if len(graph.sparse_initializer) or sparse:  # a few KB that onnxruntime expands into a dense tensor of any size
        raise PolicyFileError(path, "holds sparse tensors, which a routing policy has no use for",
                              "export policies with `adaptive-perception train export`")
    if len(graph.node) > MAX_POLICY_NODES:
        raise PolicyFileError(path, f"has {len(graph.node)} operators, more than a routing policy's {MAX_POLICY_NODES}",
                              "export policies with `adaptive-perception train export`")
    unknown = sorted({f"{n.domain + '.' if n.domain not in ('', 'ai.onnx') else ''}{n.op_type}"
                      for n in graph.node if n.domain not in ("", "ai.onnx") or n.op_type not in POLICY_OPERATORS})
    if unknown:
        raise PolicyFileError(path, f"uses operators {unknown[:8]}, outside what a routing policy may hold (dense "
                              "layers, activations, convolutions and the arithmetic, comparisons, reductions and "
                              "reshaping around them; no control flow, no operator that sizes its output from data, "
                              "no operator of another domain such as scikit-learn's ai.onnx.ml)",
                              "express that part with the operators adaptive_perception.policy.POLICY_OPERATORS "
                              "lists, or train the policy with `adaptive-perception train`")
    _check_interface(path, graph)
    problem, fix = _one_frame_problem(model)
    if problem:
        raise PolicyFileError(path, problem, fix)
    return model


def _shape_text(value) -> tuple[str, list[int | None] | None]:
    """('float32 [N, 1028]'-like text, the dims (None where open) or None where no shape is declared) of a graph
    input or output."""
    import onnx

    if not value.type.HasField("tensor_type"):
        return f"a {value.type.WhichOneof('value') or 'value of no type'}, not a tensor", None
    tensor = value.type.tensor_type
    kind = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.DOUBLE: "float64"}.get(
        tensor.elem_type, onnx.TensorProto.DataType.Name(tensor.elem_type).lower())
    if not tensor.HasField("shape"):
        return f"{kind} of no declared shape", None
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    return f"{kind} [{', '.join('N' if d is None else str(d) for d in dims)}]", dims


def _check_interface(path: object, graph) -> None:
    """PolicyFileError unless the graph declares the contract's input and output (`CONTRACT`): one float32 input of
    shape [N or 1, 1028], one float32 output of rank 2 with 3 columns where its shape is declared."""
    import onnx

    constants = {tensor.name for tensor in graph.initializer}
    inputs = [value for value in graph.input if value.name not in constants]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise PolicyFileError(path, f"has {len(inputs)} inputs and {len(graph.output)} outputs, expected 1 and 1",
                              f"{CONTRACT}: export the model on the features alone and return only the per-tier "
                              "scores (no label, probabilities or extra outputs)")
    for role, value, width in (("input", inputs[0], FEATURE_SIZE), ("output", graph.output[0], len(TIERS))):
        text, dims = _shape_text(value)
        declared = value.type.HasField("tensor_type")
        problem = ""
        if not declared or value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            problem = f"its {role} '{value.name}' is {text}, not float32"
        elif dims is None:
            if role == "input":
                problem = f"its input '{value.name}' declares no shape"
        elif len(dims) != 2 or dims[1] not in (width, None) or (role == "input" and dims[1] is None):
            problem = f"its {role} '{value.name}' is {text}, expected [N or 1, {width}]"
        elif dims[0] not in (1, None):
            raise PolicyFileError(path, f"its {role} '{value.name}' is {text}: a batch fixed at {dims[0]}, where the "
                                  "node runs one frame at a time", "export with a batch-1 dummy input, or with a "
                                  f"dynamic batch (torch: dynamic_axes={{'{value.name}': {{0: 'batch'}}}})")
        if problem:
            raise PolicyFileError(path, problem, CONTRACT)


def _one_frame_problem(model) -> tuple[str, str]:
    """(why some tensor of the graph could be too large to compute, or the output is not one frame's 3 scores, and
    its fix), ("", "") when neither: with the inputs' open dimensions set to 1 (one frame), ONNX's shape inference
    and its data propagation must determine every operator's output shape, none may hold more than
    MAX_TENSOR_ELEMENTS elements, and the output's must be [1, 3]."""
    import onnx

    one_frame = onnx.ModelProto()
    one_frame.CopyFrom(model)
    for value in one_frame.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.dim_value = 1
    try:
        inferred = onnx.shape_inference.infer_shapes(one_frame, strict_mode=True, data_prop=True)
    except Exception as exc:  # noqa: BLE001 (inference refused the graph: its shapes cannot be known)
        return f"its tensor shapes cannot be inferred ({str(exc).splitlines()[0][:200]})", FLATTEN_HINT
    shapes = {v.name: v.type.tensor_type for v in [*inferred.graph.value_info, *inferred.graph.output]}
    for node in model.graph.node:
        for name in node.output:
            tensor = shapes.get(name)
            if name and (tensor is None or not tensor.HasField("shape")):
                return (f"the shape of '{name}' ({node.op_type}) cannot be inferred for one frame, so its size cannot "
                        "be bounded", FLATTEN_HINT)
            if not name:
                continue
            elements = 1
            for dim in tensor.shape.dim:
                if dim.HasField("dim_value"):
                    elements *= max(dim.dim_value, 1)
                else:
                    return (f"the shape of '{name}' ({node.op_type}) depends on the data ('{dim.dim_param or '?'}'), "
                            "so its size cannot be bounded", FLATTEN_HINT)
            if elements > MAX_TENSOR_ELEMENTS:
                return (f"'{name}' ({node.op_type}) holds {elements:,} elements for one frame, more than a routing "
                        f"policy's {MAX_TENSOR_ELEMENTS:,}", "a routing policy's tensors are small: train it with "
                        "`adaptive-perception train`, or shrink the layers")
    output = model.graph.output[0].name
    dims = [d.dim_value for d in shapes[output].shape.dim] if output in shapes else None
    if dims != [1, len(TIERS)]:
        return (f"its output '{output}' is {dims} for one frame, expected [1, {len(TIERS)}]", CONTRACT)
    return "", ""


def _same_scores(got: np.ndarray, expected: np.ndarray) -> bool:
    """Whether another way of running the policy gives its scores, to float32 rounding at their magnitude (a
    confident network's logits of 100 or more differ by 1e-5 in their summation order alone)."""
    scale = max(1.0, float(np.abs(expected).max()))
    return bool(np.allclose(got, expected, rtol=1e-5, atol=1e-5 * scale))


def _softmax(scores: list[float]) -> np.ndarray:
    """float32 softmax of a few scores, on Python floats (see `Policy.scores`)."""
    top = max(scores)
    shifted = [math.exp(value - top) for value in scores]
    total = sum(shifted)
    return np.array([value / total for value in shifted], np.float32)


class Policy:
    """A loaded, validated routing policy. `probabilities(features)` takes one frame's 1028 features, or only the
    inputs the policy reads (`inputs_read`)."""

    def __init__(self, path: str | Path) -> None:
        import onnxruntime as ort

        if isinstance(path, str) and path.startswith("embedded:"):  # the names the node's parameters take
            from adaptive_perception.config import resolve_model
            path = resolve_model(path)
        self.path = str(path)
        if not Path(path).is_file():
            raise PolicyFileError(path, "is a directory, not a file" if Path(path).is_dir() else "does not exist",
                                  "give a policy ONNX written by `adaptive-perception train export` (or train all), "
                                  "or embedded:policy")
        model = policy_graph(path)  # checked before onnxruntime runs any of it
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # a tiny MLP: threads only add latency
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        try:
            # the bytes checked above, not the file again (it could have been swapped since)
            self._session = ort.InferenceSession(model.SerializeToString(), options,
                                                 providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise PolicyFileError(path, f"onnxruntime cannot load it ({str(exc).splitlines()[0][:200]})",
                                  "is it a complete ONNX file?") from None
        try:
            stored = self._session.get_modelmeta().custom_metadata_map
        except UnicodeDecodeError as exc:  # a damaged file whose graph still loads
            raise PolicyFileError(path, f"its metadata is not valid text ({exc})",
                                  "the file is damaged: copy it again or re-export it") from None
        meta = {k[len(META_PREFIX):]: v for k, v in stored.items() if k.startswith(META_PREFIX)}
        missing = [k for k in REQUIRED_KEYS if k not in meta]
        if missing:
            bare = sorted(k for k in stored if k in REQUIRED_KEYS)
            raise PolicyFileError(path, f"metadata lacks {[META_PREFIX + k for k in missing]}"
                                  + (f" (it has {bare} without the prefix '{META_PREFIX}')" if bare else ""),
                                  "a model is a routing policy once its metadata says what it was trained on: "
                                  + WRAP_HINT)
        if meta["kind"] != POLICY_KIND:
            raise PolicyFileError(path, f"metadata kind is '{meta['kind']}', not '{POLICY_KIND}'")
        if meta["feature_version"] != FEATURE_VERSION:
            raise PolicyFileError(path, f"was trained on features '{meta['feature_version']}' but this node computes "
                                  f"'{FEATURE_VERSION}'", "retrain the policy with this version: the features' "
                                  "meaning changed, so no re-export can carry it over")
        try:
            tier_digests = json.loads(meta.get("tier_digests", "{}"))
            if not isinstance(tier_digests, dict) or not all(isinstance(v, str) for v in tier_digests.values()):
                raise ValueError("tier_digests must map tier names to hex digests")
            tiers = tuple(json.loads(meta["tiers"]))
            mean = np.asarray(json.loads(meta["feature_mean"]), np.float32)
            std = np.asarray(json.loads(meta["feature_std"]), np.float32)
        except (ValueError, TypeError) as exc:
            raise PolicyFileError(path, f"metadata is not valid JSON ({exc})") from None
        if tiers != TIERS:
            raise PolicyFileError(path, f"routes to tiers {list(tiers)}, expected {list(TIERS)} in that order")
        if mean.shape != (FEATURE_SIZE,) or std.shape != (FEATURE_SIZE,):
            raise PolicyFileError(path, f"feature_mean/feature_std have shapes {mean.shape}/{std.shape}, "
                                  f"expected ({FEATURE_SIZE},)")
        bad = np.flatnonzero(~(np.isfinite(mean) & np.isfinite(std) & (std > 0)))
        if bad.size:
            raise PolicyFileError(path, f"feature_mean/feature_std must be finite with std > 0 (not at feature "
                                  f"{int(bad[0])}, {bad.size} in all)", "a feature that did not vary in training "
                                  "takes std 1, as `adaptive-perception train` writes it")
        if not meta["policy_id"].strip():
            raise PolicyFileError(path, "policy_id is empty")
        if len(meta["policy_id"]) > MAX_POLICY_ID or not meta["policy_id"].isprintable():
            raise PolicyFileError(path, f"policy_id ({len(meta['policy_id'])} characters) must be printable and at "
                                  f"most {MAX_POLICY_ID} characters", "export it again with a short policy id")
        inputs = self._session.get_inputs()  # one float32 [N or 1, 1028] (`_check_interface`)
        self.value_head = self._value_head(path, meta)
        self.drift_reference = None  # what the drift monitor compares with; policies exported before it have none
        self.reference_weight_recorded = False  # whether the reference names the weight its tier mix was measured at
        if "drift" in meta:
            from adaptive_perception.drift import DriftReference
            from adaptive_perception.errors import ConfigError

            try:
                self.drift_reference = DriftReference.from_json(meta["drift"])
            except ConfigError as exc:
                raise PolicyFileError(path, str(exc), "re-export the policy") from None
            self.reference_weight_recorded = self.drift_reference.cost_weight is not None
            if self.drift_reference.cost_weight is None and self.value_head is not None:
                # written before references named their weight: measured at the policy's own
                self.drift_reference.cost_weight = self.value_head.cost_weight
        self._input = inputs[0].name
        self.feature_mean, self.feature_std = mean, std  # what the input is normalised with: (x - mean) / std
        self._scale = (1.0 / std).astype(np.float32)
        self._offset = (-mean / std).astype(np.float32)
        self._read: np.ndarray | slice | None = None  # the inputs fed to the session; None: all of them
        self._bound = None  # (io binding, its input row, its output row, their OrtValues) once `_bind` checked it
        self._dense: list[tuple[np.ndarray, np.ndarray, bool]] | None = None  # numpy's layers once `_use_dense` checked them
        self._lock = threading.Lock()  # the bound buffers serve one frame at a time
        self.info = PolicyInfo(self.path, meta["policy_id"], tiers, meta.get("description", ""), tier_digests)
        try:  # a zero input and 4 random ones
            outputs = np.vstack([self._run(np.zeros(FEATURE_SIZE, np.float32)), self._check_logits()])
        except Exception as exc:  # noqa: BLE001 (onnxruntime's own error, now rather than on a frame)
            raise PolicyFileError(path, f"onnxruntime cannot run it on one frame ({str(exc).splitlines()[0][:200]})",
                                  CONTRACT) from None
        if outputs.shape[1:] != (len(TIERS),) or not np.isfinite(outputs).all():
            raise PolicyFileError(path, f"output is {outputs.shape[1:]} (finite: {bool(np.isfinite(outputs).all())}) "
                                  f"for a frame, expected {len(TIERS)} finite scores", CONTRACT)
        if self.value_head is None and (outputs >= 0).all() and np.ptp(outputs, axis=0).max() > 1e-3 \
                and np.allclose(outputs.sum(axis=1), 1.0, rtol=0.0, atol=1e-4):  # (a constant output is any scores)
            raise PolicyFileError(path, "its outputs are probabilities (non-negative, summing to 1 on every input "
                                  "tried), which the router's own softmax would flatten", "export the scores before "
                                  "the final Softmax (or their LogSoftmax)")
        self.inputs_read = np.arange(FEATURE_SIZE)
        layers = dense_layers(model)  # of the whole file: `_read_inputs` then cuts the model's first layer in place
        read, reduced = _read_inputs(model)
        if reduced is not None:
            self._use_inputs(read, ort.InferenceSession(reduced, options, providers=["CPUExecutionProvider"]))
        if layers is not None:
            self._use_dense(layers)
        if self._dense is None:
            self._bind(ort)

    def _use_dense(self, layers: list[tuple[np.ndarray, np.ndarray, bool]]) -> None:
        """Run the policy as numpy's matrix products from now on (the first layer on the read inputs only), once
        they give onnxruntime's logits."""
        expected = self._check_logits()
        weights, bias, relu = layers[0]
        if self._read is not None:
            layers = [(np.ascontiguousarray(weights[self.inputs_read]), bias, relu), *layers[1:]]
        self._dense = layers
        try:
            same = _same_scores(self._check_logits(), expected)
        except ValueError:  # layers that do not chain
            same = False
        if not same:
            self._dense = None

    def _use_inputs(self, read: np.ndarray, session) -> None:
        """Feed `session` (the model on the `read` inputs only) from now on, once its logits match the full
        model's on random inputs."""
        full = self._check_logits()
        full_session, scale, offset = self._session, self._scale, self._offset
        # a run of consecutive inputs (the context values) is read as a view, not gathered
        contiguous = bool(np.all(np.diff(read) == 1))
        self._session, self._read = session, slice(int(read[0]), int(read[-1]) + 1) if contiguous else read
        self._scale, self._offset = scale[read], offset[read]
        if not _same_scores(self._check_logits(), full):
            self._session, self._read, self._scale, self._offset = full_session, None, scale, offset
            return
        self.inputs_read = read

    def _bind(self, ort) -> None:
        """From now on run one frame through preallocated input and output buffers bound to the session (an io
        binding: no per-call dict, input conversion or output allocation), once it gives the unbound logits."""
        unbound = self._check_logits()
        x = np.zeros((1, len(self._scale)), np.float32)
        y = np.zeros((1, len(TIERS)), np.float32)
        values = ort.OrtValue.ortvalue_from_numpy(x), ort.OrtValue.ortvalue_from_numpy(y)  # views of x and y
        binding = self._session.io_binding()
        binding.bind_ortvalue_input(self._input, values[0])
        binding.bind_ortvalue_output(self._session.get_outputs()[0].name, values[1])
        self._bound = (binding, x[0], y[0], values)
        try:
            same = np.array_equal(self._check_logits(), unbound)
        except Exception:  # noqa: BLE001 (onnxruntime refused the bound buffers: the unbound calls stay)
            same = False
        if not same:
            self._bound = None

    def _check_logits(self) -> np.ndarray:
        """The logits on 4 fixed random inputs: how a faster way to run the policy proves it gives the same."""
        check = np.random.default_rng(0).normal(0.0, 3.0, (4, FEATURE_SIZE)).astype(np.float32)
        return np.stack([self._run(x) for x in check])

    @property
    def engine(self) -> str:
        """What runs a frame: `numpy` (the graph's dense layers) or `onnxruntime`."""
        return "numpy" if self._dense is not None else "onnxruntime"

    @property
    def reads_image(self) -> bool:
        """Whether any of the 1024 image statistics can move this policy's output."""
        return bool(self.inputs_read[0] < IMAGE_FEATURES)

    @staticmethod
    def _value_head(path: object, meta: dict[str, str]) -> ValueHead | None:
        output = meta.get("output", "logits")
        if output not in OUTPUTS:
            raise PolicyFileError(path, f"output '{output}' is unknown", f"use one of {', '.join(OUTPUTS)}")
        if output == "logits":
            return None
        try:
            cost = np.asarray(json.loads(meta["tier_cost"]), np.float32)
            weight, temperature = float(meta["cost_weight"]), float(meta["temperature"])
        except (KeyError, ValueError, TypeError) as exc:
            raise PolicyFileError(path, f"a tier_values policy needs tier_cost, cost_weight and temperature ({exc})") from None
        if cost.shape != (len(TIERS),) or not np.isfinite(cost).all() or (cost < 0).any():
            raise PolicyFileError(path, f"tier_cost {cost.tolist()} must be {len(TIERS)} non-negative numbers")
        if not (np.isfinite(weight) and weight >= 0 and np.isfinite(temperature) and temperature > 0):
            raise PolicyFileError(path, f"cost_weight {weight} must be >= 0 and temperature {temperature} > 0")
        return ValueHead(cost, weight, temperature)

    @property
    def policy_id(self) -> str:
        return self.info.policy_id

    def tier_mismatches(self, loaded: dict[str, tuple[str, str]]) -> list[str]:
        """One warning naming every loaded tier ({tier: (digest, path)}) that is not the file this policy was trained
        with (none when all are)."""
        expected = self.info.tier_digests
        tiers = other_files(expected, {t: digest for t, (digest, _) in loaded.items()})
        if not tiers:
            return []
        files = "; ".join(f"the {tier} tier {loaded[tier][1]} has digest {loaded[tier][0]}, trained with "
                          f"{expected[tier]}" for tier in tiers)
        models = " ".join(f"--model {tier}=..." for tier in tiers)
        return [f"policy '{self.policy_id}' was trained with other tier files than the loaded ones ({files}): it "
                f"learned when each tier is good enough for other detectors; load the tiers it was trained with, or "
                f"retrain it on these (`adaptive-perception train all {models}`)"]

    def _run(self, features: np.ndarray) -> np.ndarray:
        """The outputs for one frame's 1028 features."""
        return self._run_read(features if self._read is None else features[self._read])

    def _run_read(self, features: np.ndarray) -> np.ndarray:
        """The outputs for one frame's inputs the session or the dense layers are fed (`inputs_read`, in order)."""
        dense = self._dense
        if dense is not None:
            x = features * self._scale + self._offset
            for weights, bias, relu in dense:
                x = x @ weights + bias
                if relu:
                    np.maximum(x, 0.0, out=x)
            return x
        bound = self._bound
        if bound is None:
            x = (features * self._scale + self._offset).reshape(1, -1)
            return self._session.run(None, {self._input: x})[0].reshape(-1)
        binding, x, y, _values = bound
        with self._lock:
            np.multiply(features, self._scale, out=x)
            np.add(x, self._offset, out=x)
            self._session.run_with_iobinding(binding)
            return y.copy()

    def logits(self, features: np.ndarray) -> np.ndarray:
        """One frame's outputs from its 1028 features, or, for a policy that reads fewer, from only the inputs it
        reads (`inputs_read`, in that order: a context-only policy's decision needs no 1028-vector)."""
        features = features.astype(np.float32, copy=False)
        if features.shape == (FEATURE_SIZE,):
            return self._run(features)
        if self._read is not None and features.shape == (len(self.inputs_read),):
            return self._run_read(features)
        raise ValueError(f"expected {FEATURE_SIZE} features" + (f" or the {len(self.inputs_read)} inputs this policy "
                         "reads" if self._read is not None else "") + f", got shape {features.shape}")

    def scores(self, features: np.ndarray, cost_weight: float | None = None) -> list[float]:
        """One frame's per-tier scores, largest = chosen: the logits, or for a `tier_values` policy
        (values - weight x tier_cost) / temperature with `cost_weight` (None: the policy's calibrated weight).
        Python floats: on three values, with the caches cold after a tier, cheaper than numpy's calls."""
        out = self.logits(features).tolist()
        head = self.value_head
        if head is None:
            return out
        weight = head.cost_weight if cost_weight is None else cost_weight
        return [(value - weight * cost) / head.temperature for value, cost in zip(out, head.tier_cost.tolist())]

    def probabilities(self, features: np.ndarray, cost_weight: float | None = None) -> np.ndarray:
        """Softmax over the tiers' scores for one frame (float32)."""
        return _softmax(self.scores(features, cost_weight))
