"""Experiment (not part of the package; kept so the README's figures can be reproduced): which per-frame
black-level, contrast or brightness value, none of them in the routing features, tells fog from new
in-distribution scenes? It chose the drift monitor's veil statistic (`drift.veil`).

    python training/experiments/veil_probe.py [--benchmark build/benchmark-v2]   # ~8 min

Per frame, over the 32x32 cells the routing features use: the 5th, 25th and 50th percentile of the darkest
colour channel (black level), the 90 % range of the grey level (contrast), the median grey level, the median
chroma range (brightest minus darkest channel) and the shipped veil (black level over white level). Each is
scored per 150-frame window the way the monitor scores its statistics: the window mean's distance from the
router split's mean in standard deviations of the router split's window means, divided by its largest distance
in the same direction over the held-out scenes (the validation and test splits and the 40 calibration sequences
of `policy drift-reference --calibration-sequences 40`), so 1.25 is the threshold. Printed per preset: the peak
before the change over the drift report's in-distribution windows and the peak after it, upwards and downwards.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from adaptive_perception.drift import MARGIN, WINDOW, _window_means, veil
from adaptive_perception.scenes.sequence import SequenceSpec, render_sequence
from adaptive_perception.training.drift_reference import CALIBRATION_SEED
from adaptive_perception.training.drift_report import PRESETS, stream_specs

NAMES = ("black_q05", "black_q25", "black_q50", "grey_range_90", "grey_q50", "chroma_range_q50", "veil")


def values(rgb: np.ndarray) -> list[float]:
    small = cv2.resize(rgb, (64, 64), interpolation=cv2.INTER_LINEAR)
    cells = cv2.resize(small, (32, 32), interpolation=cv2.INTER_AREA).reshape(-1, 3).astype(np.float64) / 255
    dark, bright, grey = cells.min(1), cells.max(1), cells.mean(1)
    q = np.percentile
    return [q(dark, 5), q(dark, 25), q(dark, 50), q(grey, 95) - q(grey, 5), q(grey, 50), q(bright - dark, 50),
            veil(rgb)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmark", type=Path, default=Path("build/benchmark-v2"))
    args = parser.parse_args()

    def split(name: str) -> np.ndarray:
        files = sorted((args.benchmark / "images" / name).glob("*.jpg"))
        if not files:
            raise SystemExit(f"{args.benchmark}/images/{name} has no frames: `adaptive-perception scenes generate "
                             f"--generator-version 2.0.0 --out {args.benchmark}`")
        return np.array([values(cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)) for f in files])

    def rendered(specs) -> np.ndarray:
        return np.array([values(frame.rgb) for spec in specs for frame in render_sequence(spec)])

    reference = split("router")
    held_out = [split("val"), split("test"),
                rendered([SequenceSpec(CALIBRATION_SEED, i, WINDOW, version="2.0.0") for i in range(40)])]
    mean, std = reference.mean(0), np.maximum(_window_means(reference, WINDOW).std(0), 1e-9)

    def z(stream: np.ndarray) -> np.ndarray:
        return (_window_means(stream, WINDOW) - mean) / std

    up = np.maximum(1.0, np.max([z(h).max(0) for h in held_out], 0))
    down = np.maximum(1.0, np.max([(-z(h)).max(0) for h in held_out], 0))
    rows = {name: [] for name in NAMES}
    for preset in PRESETS:
        clean, drifted = stream_specs(preset, 5, 2, WINDOW, "2.0.0")
        stream, change = rendered(clean + drifted), sum(s.frames for s in clean)
        scores = z(stream)
        print(f"{preset.value}: mean veil {stream[:change, -1].mean():.3f} before the change, "
              f"{stream[change:, -1].mean():.3f} after (training mean {mean[-1]:.3f})")
        before, after = scores[:change - WINDOW + 1], scores[change:]
        for i, name in enumerate(NAMES):
            rows[name].append(f"{(before[:, i] / up[i]).max():.2f} / {(-before[:, i] / down[i]).max():.2f} | "
                              f"{(after[:, i] / up[i]).max():.2f} / {(-after[:, i] / down[i]).max():.2f}")
    print(f"in units of the held-out peak per direction (threshold {MARGIN}); before = in-distribution windows of "
          "the preset's stream, after = windows wholly after the change")
    print("| value | " + " | ".join(f"{p.value} before up / down | after up / down" for p in PRESETS) + " |")
    for name in NAMES:
        print(f"| {name} | " + " | ".join(rows[name]) + " |")


if __name__ == "__main__":
    main()
