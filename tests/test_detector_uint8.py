"""The tier graphs normalise the frame themselves (`preprocess_in_graph`): a uint8 input, outputs to the bit."""
from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import onnx
from onnx import TensorProto

from adaptive_perception import detector as detector_module
from adaptive_perception.config import resolve_model
from adaptive_perception.detector import DetectorTier, file_digest, letterbox
from adaptive_perception.scenes.sequence import SequenceSpec, render_sequence


def _frame() -> np.ndarray:
    return next(iter(render_sequence(SequenceSpec(4243, 0, 1, version="2.0.0")))).rgb


def test_uint8_graph_gives_the_float_graphs_output_bit_for_bit(peer_model, tmp_path):
    rgb = _frame()  # 640x480: letterboxed into the 320x320 model with padding above and below
    fused = DetectorTier(peer_model, graph_cache_dir=str(tmp_path / "graphs"))
    host = DetectorTier(peer_model, preprocess_in_graph=False)
    assert fused.in_graph and not host.in_graph
    (fused_input,), (host_input,) = fused.session.get_inputs(), host.session.get_inputs()
    assert (fused_input.type, fused_input.shape) == ("tensor(uint8)", [1, 320, 320, 3])
    assert (host_input.type, host_input.shape) == ("tensor(float)", [1, 3, 320, 320])
    tensor, box = fused.preprocess(rgb)
    padded, _ = letterbox(rgb, (320, 320))
    assert tensor.dtype == np.uint8 and np.array_equal(tensor[0], padded) and box.pad_y == 40
    raw_fused, raw_host = fused.infer(tensor), host.infer(host.preprocess(rgb)[0])
    assert raw_fused.shape == raw_host.shape == (84, 2100)
    assert np.array_equal(raw_fused, raw_host)
    a, b = fused.detect(rgb), host.detect(rgb)
    assert len(a) > 0 and np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)
    # the wrapped graph is the model's own plus three steps in front: same weights, same metadata
    wrapped = onnx.load(str(tmp_path / "graphs" / f"{peer_model.stem}-{file_digest(peer_model)}-uint8.onnx"))
    original = onnx.load(str(peer_model))
    assert [n.op_type for n in wrapped.graph.node[:3]] == ["Transpose", "Cast", "Mul"]
    assert len(wrapped.graph.node) == len(original.graph.node) + 3
    assert wrapped.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    assert {p.key: p.value for p in wrapped.metadata_props} == {p.key: p.value for p in original.metadata_props}


def test_the_cached_graph_is_read_as_it_is(tmp_path):
    """The second load of a model reads its cached file: put another tier's graph under nano's name and the
    detector runs that one (so a stale cache would show; the digest in the name keeps files of different
    content apart)."""
    cache = tmp_path / "graphs"
    nano, large = resolve_model("embedded:nano"), resolve_model("embedded:large")
    rgb = _frame()
    first = DetectorTier(nano, graph_cache_dir=str(cache))
    cached = cache / f"nano-{file_digest(nano)}-uint8.onnx"
    assert first.in_graph and sorted(p.name for p in cache.iterdir()) == [cached.name]  # no partial file left
    DetectorTier(large, graph_cache_dir=str(cache))
    shutil.copy(cache / f"large-{file_digest(large)}-uint8.onnx", cached)
    swapped = DetectorTier(nano, graph_cache_dir=str(cache))
    assert swapped.info.input_size == (480, 640) != first.info.input_size  # large's input, from the cached file
    assert not np.array_equal(swapped.detect(rgb).boxes, first.detect(rgb).boxes)


def test_an_unwritable_cache_builds_the_graph_in_memory_and_says_so(peer_model, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.WARNING):
        detector = DetectorTier(peer_model, graph_cache_dir=str(blocker / "graphs"))
    assert detector.in_graph and detector.session.get_inputs()[0].type == "tensor(uint8)"
    assert "cannot cache its uint8-input graph" in caplog.text and str(blocker / "graphs") in caplog.text
    memory = DetectorTier(peer_model, graph_cache_dir="")
    assert memory.in_graph and not any(tmp_path.glob("**/*-uint8.onnx"))


def test_the_graph_cache_keeps_the_most_recently_used_graphs(tmp_path, monkeypatch):
    """Every retrained or edited model leaves a graph under a new digest: the folder keeps only the newest-used
    GRAPH_CACHE_KEEP (here 2), so a graph read from the cache outlives one written before it and not read since."""
    monkeypatch.setattr(detector_module, "GRAPH_CACHE_KEEP", 2)
    cache = tmp_path / "graphs"
    cache.mkdir()
    nano, small, large = (resolve_model(f"embedded:{t}") for t in ("nano", "small", "large"))
    other = cache / "unrelated.onnx"  # not one of the cache's graphs: never touched
    other.write_bytes(b"x")
    DetectorTier(nano, graph_cache_dir=str(cache))
    DetectorTier(small, graph_cache_dir=str(cache))
    for i, name in enumerate((f"nano-{file_digest(nano)}-uint8.onnx", f"small-{file_digest(small)}-uint8.onnx")):
        os.utime(cache / name, (1_000_000 + i, 1_000_000 + i))  # nano written first, small after
    DetectorTier(nano, graph_cache_dir=str(cache))  # read from the cache: nano is now the newest-used
    DetectorTier(large, graph_cache_dir=str(cache))  # a third graph: the oldest-used (small) goes
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [f"nano-{file_digest(nano)}-uint8.onnx", f"large-{file_digest(large)}-uint8.onnx", "unrelated.onnx"])
