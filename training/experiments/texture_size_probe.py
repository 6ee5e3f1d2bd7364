"""Experiment (not part of the package; kept so the README's figures can be reproduced): could a finer look at the
ground, or the large tier's view of object sizes on the audited frames, tell a new ground or small objects from a
new in-distribution scene? Neither does; neither is shipped.

    python training/experiments/texture_size_probe.py [--calibration 30]   # ~17 min on 2 cores

- **texture**: the new grounds (`moon.png`, `text.png`) differ from the training ones (grass, gravel, brick) in
  fine detail that the routing features' 64x64 sampling averages away. Per frame, the grey level's absolute
  Laplacian at 640x480, 320x240, 160x120 and on the features' own 64x64 sample, averaged over 32x32 cells, and the
  25th, 50th and 75th percentile of the cells. Per sequence (150 frames: one scene, as a drift window is), the log
  of the mean, in standard deviations of the sequence values over `--calibration` new in-distribution sequences
  (CALIBRATION_SEED). JPEG's effect (quality 92, as the benchmark's images) is the mean shift of 6 of them.
- **size**: objects 2.5x smaller should show in the sizes the large tier finds. Per audited frame (every 30th, as
  the node audits), the mean over the large tier's published boxes of log sqrt(box area / frame area); per
  150-frame window, the mean over its audits, in standard deviations of the router split's windows (every phase
  of the audit grid); the held-out range is over the validation and test profiles and 20 calibration sequences,
  the drift report's streams (5 in-distribution sequences, then 2 of the preset) give the range after the change.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from adaptive_perception.features import reduce_frame
from adaptive_perception.scenes.sequence import Drift, SequenceSpec, render_sequence
from adaptive_perception.training.drift_reference import AUDIT_EVERY, CALIBRATION_SEED, cpu_detectors
from adaptive_perception.training.drift_report import PRESETS, stream_specs
from adaptive_perception.training.pipeline import Settings, _profile_path
from adaptive_perception.training.profile import PUBLISH_CONF, Profile

VERSION = "2.0.0"
WINDOW = 150
SCALES = ((640, 480), (320, 240), (160, 120), None)  # None: the routing features' 64x64 sample
QUANTILES = (25, 50, 75)
NAMES = [f"laplacian_{'64' if size is None else size[0]}_q{q}" for size in SCALES for q in QUANTILES]


def texture(rgb: np.ndarray) -> list[float]:
    out = []
    for size in SCALES:
        if size is None:
            image = reduce_frame(rgb)[0]
        else:
            image = rgb if size == rgb.shape[1::-1] else cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
        cells = cv2.resize(np.abs(cv2.Laplacian(grey, cv2.CV_32F)), (32, 32), interpolation=cv2.INTER_AREA)
        out += np.percentile(cells, QUANTILES).tolist()
    return out


def jpeg(rgb: np.ndarray) -> np.ndarray:
    data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])[1]
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def sequence_texture(spec: SequenceSpec, compress: bool = False) -> np.ndarray:
    """log of the per-sequence mean of each texture value."""
    values = np.array([texture(jpeg(f.rgb) if compress else f.rgb) for f in render_sequence(spec)])
    return np.log(values.mean(0) + 1e-3)


def frame_size(boxes: np.ndarray, hw: tuple[int, int] = (480, 640)) -> float:
    if len(boxes) == 0:
        return float("nan")
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    return float(np.mean(np.log(np.sqrt(area / (hw[0] * hw[1])) + 1e-6)))


def window_sizes(sizes: np.ndarray, phase: int, step: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(window end, mean size over the window's audited frames with boxes) for windows ending every `step` frames."""
    ends = np.arange(WINDOW, len(sizes) + 1, step)
    out = []
    for end in ends:
        audited = np.arange(end - WINDOW, end)
        values = sizes[audited[(audited - phase) % AUDIT_EVERY == 0]]
        values = values[np.isfinite(values)]
        out.append(values.mean() if len(values) else np.nan)
    return ends, np.asarray(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration", type=int, default=30, help="new in-distribution sequences for the texture")
    parser.add_argument("--work", type=Path, default=Path("build/train-v2"), help="profiles of the training work")
    args = parser.parse_args()

    print("texture: per sequence, z against the in-distribution sequences (log of the sequence mean)")
    calibration = [SequenceSpec(CALIBRATION_SEED, i, WINDOW, version=VERSION) for i in range(args.calibration)]
    clean = np.array([sequence_texture(s) for s in calibration])
    mean, std = clean.mean(0), clean.std(0)
    compressed = np.array([sequence_texture(s, compress=True) for s in calibration[:6]])
    drifted = {p: np.array([sequence_texture(SequenceSpec(777 + i, i, WINDOW, drift=p, version=VERSION))
                            for i in range(6)]) for p in (Drift.NEW_DOMAIN, Drift.SMALL_OBJECTS)}
    print("| value | in-distribution min / max | JPEG shift | new_domain (6 sequences) | small_objects (6) |")
    print("|---|---|---|---|---|")
    for i, name in enumerate(NAMES):
        z = (clean[:, i] - mean[i]) / std[i]
        shift = float(((compressed[:, i] - clean[:6, i]) / std[i]).mean())
        cells = [" ".join(f"{v:+.1f}" for v in (drifted[p][:, i] - mean[i]) / std[i]) for p in drifted]
        print(f"| {name} | {z.min():+.2f} / {z.max():+.2f} | {shift:+.2f} | {cells[0]} | {cells[1]} |")

    print("\nsize: per 150-frame window, the large tier's mean log size over its audits, z against the router split")
    settings = Settings(work=args.work)
    profiles = {split: np.array([frame_size(rows[:, :4]) for rows in
                                 Profile.load(_profile_path(settings, split)).tier_detections(2, PUBLISH_CONF)])
                for split in ("router", "val", "test")}
    reference = np.concatenate([window_sizes(profiles["router"], phase)[1] for phase in range(0, AUDIT_EVERY, 5)])
    ref_mean, ref_std = np.nanmean(reference), np.nanstd(reference)
    large = cpu_detectors()["large"]

    def rendered(specs) -> np.ndarray:
        return np.array([frame_size(large.detect(f.rgb).boxes) for spec in specs for f in render_sequence(spec)])

    held_out = [profiles["val"], profiles["test"],
                rendered([SequenceSpec(CALIBRATION_SEED, i, WINDOW, version=VERSION) for i in range(20)])]
    z_held = np.concatenate([(window_sizes(h, phase)[1] - ref_mean) / ref_std
                             for h in held_out for phase in range(0, AUDIT_EVERY, 5)])
    print(f"held-out windows: {np.nanmin(z_held):+.2f} / {np.nanmax(z_held):+.2f}")
    print("| preset | before the change min / max | wholly after min / max |")
    print("|---|---|---|")
    for preset in PRESETS:
        before_specs, after_specs = stream_specs(preset, 5, 2, WINDOW, VERSION)
        sizes, change = rendered(before_specs + after_specs), 5 * WINDOW
        rows = [window_sizes(sizes, phase) for phase in (0, 15)]
        before = np.concatenate([(w[ends <= change] - ref_mean) / ref_std for ends, w in rows])
        after = np.concatenate([(w[ends >= change + WINDOW] - ref_mean) / ref_std for ends, w in rows])
        print(f"| {preset.value} | {np.nanmin(before):+.2f} / {np.nanmax(before):+.2f} | "
              f"{np.nanmin(after):+.2f} / {np.nanmax(after):+.2f} |")


if __name__ == "__main__":
    main()
