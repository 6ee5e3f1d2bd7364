"""Experiment (not part of the package; kept so the README's figures can be reproduced): is a new ground texture
*novel* to a bank of training patches, where its texture energy (`texture_size_probe.py`) was not out of range?

    python training/experiments/texture_novelty_probe.py [--held-out 24]   # ~10 min on 2 cores

Per frame, two local descriptors of the grey image, each scored as its distance to the nearest of 10,000 descriptors
drawn from a bank of in-distribution frames (20 new sequences, seed 424242, every 10th frame), averaged over the frame:
- `patch`: 8x8 patches of the image at 160x120, mean removed and scaled to unit length (what the ground looks like
  locally, whatever its tint and brightness; flat patches, under 2 grey levels of spread, left out);
- `lbp`: per cell (32 px at 320x240, 16 px at 160x120) the histogram of rotation-invariant uniform local binary
  patterns (8 neighbours at radius 1, a neighbour counts when 2 grey levels brighter), square-rooted (Hellinger):
  a texture's statistics, which a stochastic texture such as grass or gravel repeats where its pixels do not.
Per sequence (150 frames: one scene, as a drift window is) the mean over every 3rd frame. In range: `--held-out`
new in-distribution scenes (CALIBRATION_SEED); to catch: the drift report's new_domain and small_objects streams
(`drift_report.stream_specs`: 5 in-distribution sequences, then 2 of the preset).
"""
from __future__ import annotations

import argparse

import cv2
import numpy as np

from adaptive_perception.progress import progress
from adaptive_perception.scenes.sequence import Drift, SequenceSpec, render_sequence
from adaptive_perception.training.drift_reference import CALIBRATION_SEED
from adaptive_perception.training.drift_report import stream_specs

VERSION = "2.0.0"
WINDOW = 150
BANK_SEED = 424242
PATCH = 8
NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))


def _uniform_table() -> np.ndarray:
    """LBP code -> its number of set bits when it has at most 2 transitions around the circle, else 9."""
    table = np.zeros(256, np.int64)
    for code in range(256):
        bits = [(code >> i) & 1 for i in range(8)]
        transitions = sum(bits[i] != bits[(i + 1) % 8] for i in range(8))
        table[code] = sum(bits) if transitions <= 2 else 9
    return table


UNIFORM = _uniform_table()


def patch_descriptors(grey: np.ndarray) -> np.ndarray:
    small = cv2.resize(grey, (160, 120), interpolation=cv2.INTER_AREA).astype(np.float32)
    rows, cols = small.shape[0] // PATCH, small.shape[1] // PATCH
    x = small.reshape(rows, PATCH, cols, PATCH).transpose(0, 2, 1, 3).reshape(-1, PATCH * PATCH)
    x -= x.mean(1, keepdims=True)
    norm = np.linalg.norm(x, axis=1)
    keep = norm > 2.0 * PATCH
    return x[keep] / norm[keep, None]


def lbp_descriptors(grey: np.ndarray) -> np.ndarray:
    histograms = []
    for size, cell in (((320, 240), 32), ((160, 120), 16)):
        g = cv2.resize(grey, size, interpolation=cv2.INTER_AREA).astype(np.int16)
        centre = g[1:-1, 1:-1]
        code = np.zeros(centre.shape, np.int64)
        for bit, (dy, dx) in enumerate(NEIGHBOURS):
            code |= (g[1 + dy:g.shape[0] - 1 + dy, 1 + dx:g.shape[1] - 1 + dx] >= centre + 2).astype(np.int64) << bit
        labels = UNIFORM[code]
        rows, cols = labels.shape[0] // cell, labels.shape[1] // cell
        blocks = labels[:rows * cell, :cols * cell].reshape(rows, cell, cols, cell).transpose(0, 2, 1, 3)
        blocks = blocks.reshape(rows * cols, -1)
        histograms.append(np.stack([(blocks == k).mean(1) for k in range(10)], 1))
    return np.sqrt(np.concatenate(histograms, 1))


DESCRIPTORS = {"patch": patch_descriptors, "lbp": lbp_descriptors}


def greys(specs: list[SequenceSpec], step: int, desc: str):
    for spec in progress(specs, desc=desc, unit="sequence"):
        for i, frame in enumerate(render_sequence(spec)):
            if i % step == 0:
                yield cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2GRAY)


def nearest(x: np.ndarray, bank: np.ndarray) -> np.ndarray:
    squared = (x * x).sum(1)[:, None] + (bank * bank).sum(1)[None] - 2 * x @ bank.T
    return np.sqrt(np.maximum(squared, 0).min(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held-out", type=int, default=24, help="new in-distribution scenes that set the range")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    pools = {name: [] for name in DESCRIPTORS}
    for grey in greys([SequenceSpec(BANK_SEED, i, WINDOW, version=VERSION) for i in range(20)], 10, "bank"):
        for name, describe in DESCRIPTORS.items():
            pools[name].append(describe(grey))
    banks = {}
    for name, pool in pools.items():
        rows = np.concatenate(pool).astype(np.float32)
        banks[name] = rows[rng.choice(len(rows), min(len(rows), 10_000), replace=False)]

    def scene(spec: SequenceSpec) -> dict[str, float]:
        scores = {name: [] for name in DESCRIPTORS}
        for grey in greys([spec], 3, f"seed {spec.seed} #{spec.index} {spec.drift.value}"):
            for name, describe in DESCRIPTORS.items():
                x = describe(grey).astype(np.float32)
                if len(x):
                    scores[name].append(float(nearest(x, banks[name]).mean()))
        return {name: float(np.mean(values)) for name, values in scores.items()}

    held = [scene(SequenceSpec(CALIBRATION_SEED, i, WINDOW, version=VERSION)) for i in range(args.held_out)]
    streams = {preset: [[scene(s) for s in part] for part in stream_specs(preset, 5, 2, WINDOW, VERSION)]
               for preset in (Drift.NEW_DOMAIN, Drift.SMALL_OBJECTS)}
    print("| descriptor | held-out scenes min / max | new_domain: in-distribution before / after the change "
          "| small_objects: before / after |")
    print("|---|---|---|---|")
    for name in DESCRIPTORS:
        values = [h[name] for h in held]
        cells = [" ".join(f"{s[name]:.3f}" for s in before) + " / " + " ".join(f"{s[name]:.3f}" for s in after)
                 for before, after in streams.values()]
        print(f"| {name} | {min(values):.3f} / {max(values):.3f} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
