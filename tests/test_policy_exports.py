"""Policies of a user's own: PyTorch exports as users write them, wrapped with `policy wrap`, accepted and routing
as the torch model does, or refused naming the cause and the fix."""
from __future__ import annotations

import json
import os
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch  # the train extra, which `make test` installs

from adaptive_perception.features import FEATURE_SIZE
from adaptive_perception.policy import Policy, PolicyFileError
from adaptive_perception.training.policy_export import wrap_model


class Mlp(torch.nn.Module):
    """1028 -> 32 -> 3, flattened the way the test asks, optionally ending in a softmax."""

    def __init__(self, flatten: str = "none", softmax: bool = False, scale: float = 1.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.hidden, self.out = torch.nn.Linear(FEATURE_SIZE, 32), torch.nn.Linear(32, 3)
        with torch.no_grad():
            self.out.weight.mul_(scale)
        self.flatten, self.softmax = flatten, softmax

    def forward(self, x):
        h = torch.relu(self.hidden(x))
        if self.flatten == "view":
            h = h.view(h.size(0), -1)
        y = self.out(h)
        return torch.softmax(y, dim=1) if self.softmax else y


def export(module, path: Path, opset: int = 17, batch: int = 1, dynamic: bool = True) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), torch.zeros(batch, FEATURE_SIZE), str(path), dynamo=False,
                          input_names=["x"], output_names=["y"], opset_version=opset,
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}} if dynamic else None)
    return path


def features(count: int) -> np.ndarray:
    return np.random.default_rng(1).normal(0.0, 1.0, (count, FEATURE_SIZE)).astype(np.float32)


def test_a_wrapped_torch_mlp_scores_and_routes_as_the_torch_model_does(tmp_path):
    module = Mlp(flatten="view", scale=8.0)  # view: a graph of Shape, Gather, Reshape, run in onnxruntime
    model = export(module, tmp_path / "mine.onnx", opset=14)
    with pytest.raises(PolicyFileError, match="policy wrap MODEL.onnx --out POLICY.onnx --id NAME"):
        Policy(model)  # a plain model: the refusal says how to make it a policy
    policy = Policy(wrap_model(model, tmp_path / "policy.onnx", "mine-1"))
    assert policy.policy_id == "mine-1" and policy.drift_reference is None
    x = features(64)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    got = np.stack([policy.logits(row) for row in x])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).all() and len(set(expected.argmax(axis=1))) == 3
    assert policy.engine == "onnxruntime"

    # trained behind the embedded policy's normalisation: the runtime feeds (x - mean) / std
    normalised = Policy(wrap_model(model, tmp_path / "normalised.onnx", "mine-2", _embedded()))
    reference = Policy(_embedded())
    row = x[0] * 3.0 + 1.0
    with torch.no_grad():
        inside = module(torch.from_numpy(((row - reference.feature_mean) / reference.feature_std)[None])).numpy()[0]
    np.testing.assert_allclose(normalised.logits(row), inside, rtol=1e-4, atol=1e-4)


def test_a_confident_dense_policy_still_runs_in_numpy(tmp_path):
    """Logits in the hundreds: numpy's products differ from onnxruntime's by float32 rounding at that scale, and the
    faster path was given up at a fixed tolerance of 1e-5."""
    torch.manual_seed(3)  # logits to 290 where another is near 0: onnxruntime and numpy differ by 1e-4 there
    module = torch.nn.Sequential(torch.nn.Linear(FEATURE_SIZE, 64), torch.nn.ReLU(), torch.nn.Linear(64, 3))
    with torch.no_grad():
        module[2].weight.mul_(200.0)
    policy = Policy(wrap_model(export(module, tmp_path / "mine.onnx"), tmp_path / "policy.onnx", "confident"))
    x = features(16)
    with torch.no_grad():
        expected = module(torch.from_numpy(x * 3.0)).numpy()
    assert np.abs(expected).max() > 100 and policy.engine == "numpy"
    np.testing.assert_allclose(np.stack([policy.logits(row) for row in x * 3.0]), expected, rtol=1e-4, atol=1e-3)


def _embedded() -> str:
    from adaptive_perception.config import resolve_model

    return resolve_model("embedded:policy")


@pytest.mark.parametrize("case,needle", [
    # the router applies its own softmax: a softmaxed output was accepted and flattened ([0.99, 0, 0.01] published
    # as [0.57, 0.21, 0.21]; with hysteresis, other tiers)
    ("softmax", "its outputs are probabilities (non-negative, summing to 1 on every input tried)"),
    # a dummy batch of 32 without dynamic axes: onnxruntime's bare InvalidArgument, a traceback in the CLI
    ("batch32", "its input 'x' is float32 [32, 1028]: a batch fixed at 32, where the node runs one frame at a time "
                "(export with a batch-1 dummy input, or with a dynamic batch (torch: dynamic_axes={'x': {0: 'batch'}})"),
    # ONNX infers a Reshape's output from its shape input only from opset 14
    ("view13", "and export at opset 14 or later"),
    # outputs of another type or rank passed the probe and failed in the io binding with onnxruntime's own text
    ("int_output", "its output 'y' is int64 [N, 3], not float32"),
    ("rank3", "its output 'y' is float32 [N, 1, 3], expected [N or 1, 3]"),
    ("two_outputs", "has 1 inputs and 2 outputs, expected 1 and 1 (a routing policy has one float32 input"),
    ("width", "its input 'x' is float32 [N, 1024], expected [N or 1, 1028]"),
])
def test_exports_that_break_the_contract_are_refused_with_the_cause_and_the_fix(case, needle, tmp_path):
    class Variant(Mlp):
        def forward(self, x):
            y = super().forward(x)
            if case == "int_output":
                return y.to(torch.int64)
            if case == "rank3":
                return y.unsqueeze(1)
            if case == "two_outputs":
                return y, y * 2
            return y

    module = Variant(flatten="view" if case == "view13" else "none", softmax=case == "softmax")
    if case == "width":
        module.hidden = torch.nn.Linear(1024, 32)
    path = tmp_path / "mine.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), torch.zeros(32 if case == "batch32" else 1, 1024 if case == "width"
                                                     else FEATURE_SIZE), str(path), dynamo=False,
                          input_names=["x"], output_names=["y", "z"] if case == "two_outputs" else ["y"],
                          opset_version=13 if case == "view13" else 17,
                          dynamic_axes=None if case == "batch32" else {"x": {0: "batch"}})
    with pytest.raises(PolicyFileError) as error:
        wrap_model(path, tmp_path / "policy.onnx", "mine")
    assert str(path) in str(error.value) and needle in str(error.value), str(error.value)
    assert not (tmp_path / "policy.onnx").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["mine.onnx"]


def test_comparisons_and_reductions_a_torch_model_emits_are_allowed(tmp_path):
    class Gated(Mlp):
        def forward(self, x):
            y = super().forward(x)
            floor = torch.amin(y, dim=1, keepdim=True)
            return torch.where(x[:, :3] >= 0.0, y - floor, y) + torch.sign(y) * 0.01

    module = Gated()
    policy = Policy(wrap_model(export(module, tmp_path / "gated.onnx"), tmp_path / "policy.onnx", "gated"))
    x = features(8)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.stack([policy.logits(row) for row in x]), expected, rtol=1e-4, atol=1e-4)


def test_metadata_written_without_the_prefix_is_named(tmp_path):
    import onnx

    path = export(Mlp(), tmp_path / "mine.onnx")
    model = onnx.load(path)
    for key, value in {"kind": "routing_policy", "policy_id": "bare", "feature_version": "x", "tiers": "[]",
                       "feature_mean": "[]", "feature_std": "[]"}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)
    with pytest.raises(PolicyFileError, match=r"without the prefix 'adaptive_perception\.'"):
        Policy(path)


def test_policy_wrap_on_the_command_line(tmp_path):
    model = export(Mlp(), tmp_path / "mine.onnx")
    run = subprocess.run(["adaptive-perception", "policy", "wrap", str(model), "--out", str(tmp_path / "p.onnx"),
                          "--id", "cli-1", "--description", "an MLP of mine"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    shown = subprocess.run(["adaptive-perception", "policy", "inspect", str(tmp_path / "p.onnx")], capture_output=True,
                           text=True, timeout=120)
    assert shown.returncode == 0 and "policy_id cli-1" in shown.stdout and "an MLP of mine" in shown.stdout
    assert "drift reference: none" in shown.stdout
    meta = {p.key: p.value for p in __import__("onnx").load(tmp_path / "p.onnx").metadata_props}
    assert json.loads(meta["adaptive_perception.feature_std"]) == [1.0] * FEATURE_SIZE
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "p.onnx").stat().st_mode & 0o777 == 0o666 & ~umask  # as any file written here, not 0600
    broken = subprocess.run(["adaptive-perception", "policy", "wrap", "/etc/hostname", "--out",
                             str(tmp_path / "q.onnx"), "--id", "x"], capture_output=True, text=True, timeout=120)
    assert broken.returncode == 2 and "policy file '/etc/hostname': is not an ONNX model" in broken.stderr
    assert not (tmp_path / "q.onnx").exists()
