"""Experiment (not part of the package; kept so the README's figures can be reproduced): do the nano tier's own
feature maps, pooled over the frame, tell a new ground or small objects from a new in-distribution scene, where the
routing features and the routed output's statistics could not?

    python training/experiments/backbone_drift_probe.py [--reference 24] [--held-out 16]   # ~10 min on 2 cores

The nano tier's ONNX graph gets extra outputs: the global average of its backbone's last map (SPPF, 256 channels),
of the neck's finest map (P3, 64 channels; small objects live there) and of its coarsest (P5, 256), and the global
maximum of P3: 640 values a frame, from the inference the node runs anyway. Per 150-frame scene (a drift window's
length), the mean of each value; scored against `--reference` new in-distribution scenes (CALIBRATION_SEED) as the
mean over values of the squared z (each value's mean and std over the reference scenes), and the share of values
beyond 3 stds. `--held-out` further new in-distribution scenes give the range a threshold must clear without false
alarms; 6 scenes of each drift preset (the texture probe's seeds) are what it must catch.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from adaptive_perception.progress import progress
from adaptive_perception.scenes.sequence import Drift, SequenceSpec, render_sequence
from adaptive_perception.training.drift_reference import CALIBRATION_SEED

ROOT = Path(__file__).resolve().parents[2]
NANO = ROOT / "src/adaptive_perception/models/nano.onnx"
VERSION = "2.0.0"
WINDOW = 150
MAPS = {"sppf_mean": ("/model.9/cv2/act/Mul_output_0", "GlobalAveragePool"),
        "p3_mean": ("/model.15/cv2/act/Mul_output_0", "GlobalAveragePool"),
        "p5_mean": ("/model.21/cv2/act/Mul_output_0", "GlobalAveragePool"),
        "p3_max": ("/model.15/cv2/act/Mul_output_0", "GlobalMaxPool")}


def embedding_session(path: Path) -> tuple[ort.InferenceSession, tuple[int, int]]:
    """The tier graph with the pooled maps as extra outputs; (session, input height and width)."""
    model = onnx.load(str(path))
    graph = model.graph
    for name, (tensor, op) in MAPS.items():
        graph.node.append(helper.make_node(op, [tensor], [name], name=f"probe_{name}"))
        graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    dims = graph.input[0].type.tensor_type.shape.dim
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return (ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]),
            (int(dims[2].dim_value), int(dims[3].dim_value)))


def scene_embedding(session: ort.InferenceSession, hw: tuple[int, int], spec: SequenceSpec) -> np.ndarray:
    """Mean over the scene's frames of the pooled maps (the frame resized to the tier's 4:3 input, as its
    letterbox does for a 640x480 frame)."""
    rows = []
    for frame in render_sequence(spec):
        x = cv2.resize(frame.rgb, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
        outputs = session.run(list(MAPS), {session.get_inputs()[0].name: x.transpose(2, 0, 1)[None]})
        rows.append(np.concatenate([o.reshape(-1) for o in outputs]))
    return np.mean(rows, axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=int, default=24)
    parser.add_argument("--held-out", type=int, default=16)
    args = parser.parse_args()
    session, hw = embedding_session(NANO)
    clean = [SequenceSpec(CALIBRATION_SEED, i, WINDOW, version=VERSION) for i in range(args.reference + args.held_out)]
    sets = {"in-distribution": clean}
    sets.update({p.value: [SequenceSpec(777 + i, i, WINDOW, drift=p, version=VERSION) for i in range(6)]
                 for p in (Drift.NIGHT, Drift.FOG, Drift.NEW_DOMAIN, Drift.SMALL_OBJECTS)})
    embedded = {name: np.array([scene_embedding(session, hw, s) for s in progress(specs, desc=name, unit="scene")])
                for name, specs in sets.items()}
    reference, held_out = embedded["in-distribution"][:args.reference], embedded["in-distribution"][args.reference:]
    mean, std = reference.mean(0), reference.std(0) + 1e-6
    probe = session.run(list(MAPS), {session.get_inputs()[0].name: np.zeros((1, 3, *hw), np.float32)})
    bounds = np.cumsum([0] + [o.size for o in probe])  # where each map's values start in an embedding
    print(f"per scene: mean squared z over the values (and the share beyond 3 stds), against {args.reference} "
          f"in-distribution scenes; held-out: {args.held_out} more")
    print(f"| scenes | all {bounds[-1]} | " + " | ".join(MAPS) + " |\n|---|" + "---|" * (len(MAPS) + 1))
    for name, values in [("held-out in-distribution", held_out)] + [(k, v) for k, v in embedded.items()
                                                                    if k != "in-distribution"]:
        z = (values - mean) / std
        cells = [f"{(z ** 2).mean(1).min():.1f}-{(z ** 2).mean(1).max():.1f} ({(np.abs(z) > 3).mean():.0%})"]
        for i in range(len(MAPS)):
            part = z[:, bounds[i]:bounds[i + 1]]
            cells.append(f"{(part ** 2).mean(1).min():.1f}-{(part ** 2).mean(1).max():.1f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
