"""Widen a trained YOLOv8 network without changing what it computes, as the start of a wider tier's training.

A wider network of the same depth has more channels in every layer. Its weights start as the trained network's:
each old channel keeps its place in its layer's output (after the old ones in each half of a C2f's split
convolution), reads the old channels of its input with the old weights and every new input channel with weight
0, so the old channels compute exactly what they did; the new channels start at PyTorch's random initialisation
and are read by nothing until training gives them weight. The widened network's detections equal the trained
network's (`widen` checks this on a random input before it returns), and training starts from the trained
network's accuracy instead of from scratch (Net2Net's idea, with zero read-out weights instead of copied units).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _head(old: int) -> np.ndarray:
    return np.arange(old)


def _pieces(old: int, new: int, count: int) -> np.ndarray:
    """Where `count` concatenated pieces of `old` channels (each now `new` wide) keep their old channels."""
    return np.concatenate([k * new + np.arange(old) for k in range(count)])


def _copy_conv(new_conv, old_conv, rows: np.ndarray, cols: np.ndarray) -> None:
    """new_conv (Conv2d) takes old_conv's weights at (rows, cols); old rows read nothing else."""
    import torch

    if new_conv.out_channels < old_conv.out_channels or new_conv.in_channels < old_conv.in_channels:
        raise ValueError(f"a layer of the new network is narrower than the trained one's ({new_conv.in_channels} -> "
                         f"{new_conv.out_channels} against {old_conv.in_channels} -> {old_conv.out_channels} channels)")
    with torch.no_grad():
        weight = new_conv.weight
        rows_t, cols_t = torch.as_tensor(rows), torch.as_tensor(cols)
        weight[rows_t] = 0.0
        weight[rows_t[:, None], cols_t[None, :]] = old_conv.weight
        if old_conv.bias is not None:
            new_conv.bias[rows_t] = old_conv.bias


def _copy_bn(new_bn, old_bn, rows: np.ndarray) -> None:
    import torch

    with torch.no_grad():
        rows_t = torch.as_tensor(rows)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(new_bn, name)[rows_t] = getattr(old_bn, name)
        new_bn.num_batches_tracked.copy_(old_bn.num_batches_tracked)


def _copy_block(new, old, cols: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """An Ultralytics Conv (conv + batch norm + activation): returns where its old output channels sit."""
    rows = _head(old.conv.out_channels) if rows is None else rows
    _copy_conv(new.conv, old.conv, rows, cols)
    _copy_bn(new.bn, old.bn, rows)
    return rows


def _copy_module(new, old, cols: np.ndarray) -> np.ndarray:
    """Copy one layer of the model's sequence (not Concat or Detect, which `widen_model` handles); `cols` says where
    its input's old channels sit; returns the same for its output."""
    from ultralytics.nn.modules import C2f, SPPF, Conv

    if isinstance(old, Conv):
        return _copy_block(new, old, cols)
    if isinstance(old, C2f):
        half_old, half_new = old.c, new.c
        if len(new.m) != len(old.m):
            raise ValueError(f"the networks differ in depth (a C2f of {len(old.m)} against {len(new.m)} bottlenecks)")
        _copy_block(new.cv1, old.cv1, cols, _pieces(half_old, half_new, 2))
        for new_b, old_b in zip(new.m, old.m, strict=True):
            inner = _copy_block(new_b.cv1, old_b.cv1, _head(half_old))
            _copy_block(new_b.cv2, old_b.cv2, inner)
        return _copy_block(new.cv2, old.cv2, _pieces(half_old, half_new, 2 + len(old.m)))
    if isinstance(old, SPPF):
        hidden = _copy_block(new.cv1, old.cv1, cols)
        return _copy_block(new.cv2, old.cv2, _pieces(len(hidden), new.cv1.conv.out_channels, 4))
    if not any(True for _ in old.parameters()):  # Upsample and the like: channels pass through
        return cols
    raise NotImplementedError(f"widening a {type(old).__name__} layer is not implemented")


def _copy_detect(new, old, inputs: list[np.ndarray]) -> None:
    for branches in ("cv2", "cv3"):
        for new_seq, old_seq, cols in zip(getattr(new, branches), getattr(old, branches), inputs, strict=True):
            first = _copy_block(new_seq[0], old_seq[0], cols)
            second = _copy_block(new_seq[1], old_seq[1], first)
            if new_seq[2].out_channels != old_seq[2].out_channels:
                raise NotImplementedError("the detection head's outputs must keep their size")
            _copy_conv(new_seq[2], old_seq[2], _head(old_seq[2].out_channels), second)


def widen_model(old_model, new_model) -> None:
    """Copy `old_model`'s weights into `new_model` (Ultralytics DetectionModels of one architecture, the new one at
    least as wide in every layer), so that the new one computes what the old one did."""
    from ultralytics.nn.modules import Concat, Detect

    old_layers, new_layers = list(old_model.model), list(new_model.model)
    if len(old_layers) != len(new_layers):
        raise ValueError(f"the networks differ in depth ({len(old_layers)} against {len(new_layers)} layers)")
    maps: list[np.ndarray] = []  # per layer: where its output's old channels sit in the new output
    widths: list[int] = []  # per layer: the new output's channel count
    channels = _head(old_layers[0].conv.in_channels)  # the image
    for index, (old, new) in enumerate(zip(old_layers, new_layers, strict=True)):
        sources = [old.f] if isinstance(old.f, int) else list(old.f)
        sources = [index + s if s < 0 else s for s in sources]
        if isinstance(old, Detect):
            _copy_detect(new, old, [maps[s] for s in sources])
            break
        if isinstance(old, Concat):
            offsets = np.cumsum([0] + [widths[s] for s in sources[:-1]])
            out = np.concatenate([maps[s] + o for s, o in zip(sources, offsets)])
            width = int(sum(widths[s] for s in sources))
        else:
            out = _copy_module(new, old, channels if index == 0 else maps[sources[0]])
            width = _out_channels(new, widths[sources[0]] if index else 0)
        maps.append(out)
        widths.append(width)


def _out_channels(module, passthrough: int) -> int:
    """A layer's output channel count: its last convolution's (C2f and SPPF end in cv2), else its input's."""
    conv = getattr(getattr(module, "cv2", module), "conv", None)
    return int(conv.out_channels) if conv is not None else passthrough


def widen(source: Path, yaml_path: Path, out: Path, check_seed: int = 0) -> Path:
    """Write an Ultralytics checkpoint of the architecture `yaml_path` whose weights are `source`'s (an Ultralytics
    .pt), widened; refuses to write it unless both give the same outputs on a random 320x320 input."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    ckpt = torch.load(source, map_location="cpu", weights_only=False)
    old = (ckpt.get("ema") or ckpt["model"]).float().eval()
    new = DetectionModel(str(yaml_path), nc=int(old.yaml["nc"]), verbose=False).float()
    widen_model(old, new)
    new.names, new.args = old.names, getattr(old, "args", {})
    new.eval()
    image = torch.rand(1, 3, 320, 320, generator=torch.Generator().manual_seed(check_seed))
    with torch.no_grad():
        expected, got = old(image)[0], new(image)[0]
    gap = float((expected - got).abs().max())
    if gap > 1e-3 * float(expected.abs().max()):
        raise AssertionError(f"widening changed the network's output (largest difference {gap:.3g})")
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": new.half(), "ema": None, "optimizer": None, "epoch": -1, "train_args": {},
                "date": None, "version": ckpt.get("version")}, out)
    return out
