"""Write routing policy ONNX files (an MLP given as numpy weights) in the format `adaptive_perception.policy` reads.

One writer for every policy the project makes (the regime classifier, BC, BC + PPO), so the
metadata contract lives in one place. Needs the `onnx` package (the `train` extra); the runtime only reads.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from adaptive_perception.detector import TIERS
from adaptive_perception.features import FEATURE_SIZE, FEATURE_VERSION
from adaptive_perception.policy import META_PREFIX, POLICY_KIND, ValueHead

OPSET = 17


def write_policy(path: str | Path, layers: Sequence[tuple[np.ndarray, np.ndarray]], mean: np.ndarray,
                 std: np.ndarray, policy_id: str, description: str = "", tier_digests: dict[str, str] | None = None,
                 value_head: ValueHead | None = None, drift_reference: str | None = None) -> Path:
    """An MLP: x -> (x - mean) / std (done by the runtime) -> [W_i x + b_i, ReLU between layers] -> 3 logits.

    Each layer is (W of shape (inputs, outputs), b of shape (outputs,)); the first takes FEATURE_SIZE
    inputs and the last gives one logit per tier. `tier_digests` ({tier: `detector.file_digest`}) names the tier
    files the policy was trained with; the node warns when it runs with others. With `value_head` the outputs are
    tier values (`output: tier_values`), chosen by argmax(values - cost_weight x tier_cost). `drift_reference`
    (`DriftReference.to_json()`) lets the node's drift monitor compare what it sees with the training data."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if not layers or layers[0][0].shape[0] != FEATURE_SIZE or layers[-1][0].shape[1] != len(TIERS):
        raise ValueError(f"layers must map {FEATURE_SIZE} features to {len(TIERS)} logits")
    nodes, initializers, current = [], [], "features"
    for index, (weight, bias) in enumerate(layers):
        w_name, b_name, out = f"W{index}", f"b{index}", f"h{index}"
        initializers += [numpy_helper.from_array(np.asarray(weight, np.float32), w_name),
                         numpy_helper.from_array(np.asarray(bias, np.float32).reshape(-1), b_name)]
        last = index == len(layers) - 1
        nodes.append(helper.make_node("Gemm", [current, w_name, b_name], ["logits" if last else out]))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"{out}_relu"]))
            current = f"{out}_relu"
    graph = helper.make_graph(
        nodes, "routing_policy",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", FEATURE_SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(TIERS)])],
        initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="adaptive_perception")
    model.ir_version = 9  # readable by onnxruntime >= 1.17
    metadata = {
        "kind": POLICY_KIND, "policy_id": policy_id, "feature_version": FEATURE_VERSION, "tiers": json.dumps(TIERS),
        "feature_mean": json.dumps([float(v) for v in np.asarray(mean, np.float32)]),
        "feature_std": json.dumps([float(v) for v in np.asarray(std, np.float32)]),
        "description": description,
    }
    if tier_digests:
        metadata["tier_digests"] = json.dumps(dict(tier_digests))
    if drift_reference:
        metadata["drift"] = drift_reference
    if value_head is not None:
        metadata.update(output="tier_values", tier_cost=json.dumps([float(c) for c in value_head.tier_cost]),
                        cost_weight=repr(float(value_head.cost_weight)), temperature=repr(float(value_head.temperature)))
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = META_PREFIX + key, value
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def rewrite_metadata(path: str | Path, out: str | Path, updates: dict[str, str]) -> Path:
    """`path`'s policy written to `out` with the metadata entries in `updates` (keys without the
    `adaptive_perception.` prefix) set and every other part of the file unchanged; the result must load."""
    import onnx

    from adaptive_perception.policy import Policy

    model = onnx.load(str(path))
    keys = {META_PREFIX + key: value for key, value in updates.items()}
    entries = [(entry.key, entry.value) for entry in model.metadata_props if entry.key not in keys]
    del model.metadata_props[:]
    for key, value in entries + list(keys.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    Policy(out)
    return out


def wrap_model(model: str | Path, out: str | Path, policy_id: str, normalisation: str | Path | None = None,
               description: str = "") -> Path:
    """A model of your own (one float32 input [N or 1, 1028], one float32 output [N or 1, 3]: a score per tier,
    before any softmax) written to `out` as a routing policy: the metadata keys added, the graph unchanged, the
    result loaded as the node would before it replaces `out`. `normalisation`: a policy file whose feature mean and
    std the model was trained behind (the runtime feeds (x - mean) / std); None: the model takes the features as
    they are (mean 0, std 1)."""
    import os
    import shutil
    import tempfile

    from adaptive_perception.policy import Policy, PolicyFileError, policy_graph

    policy_graph(model)  # what the node checks before anything runs, named after the model given
    if normalisation is None:
        mean, std = [0.0] * FEATURE_SIZE, [1.0] * FEATURE_SIZE
    else:
        source = Policy(normalisation)
        mean, std = [float(v) for v in source.feature_mean], [float(v) for v in source.feature_std]
    updates = {"kind": POLICY_KIND, "policy_id": policy_id, "feature_version": FEATURE_VERSION,
               "tiers": json.dumps(TIERS), "feature_mean": json.dumps(mean), "feature_std": json.dumps(std),
               "description": description or f"wrapped from {Path(model).name} by `adaptive-perception policy wrap`"}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))  # `out` appears only once it loads
    try:
        os.replace(rewrite_metadata(model, folder / out.name, updates), out)
    except PolicyFileError as exc:  # named after the model given, not the temporary file
        raise PolicyFileError(model, exc.problem, exc.fix) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return out
