"""Could another window statistic of the 1024 image features tell fog, a new ground or small objects from a new
in-distribution scene? A probe of candidate statistics, none of them shipped (`adaptive-perception bench
drift-probe`).

Every candidate is a per-window score (windows of the monitor's 150 frames), calibrated the way the shipped
monitor calibrates its statistics: divided by the largest value it took over the held-out validation and test
splits (each split's frames back to back, as `train export` calibrates), so 1.25 (the monitor's margin) is the
threshold. The reference is the benchmark's router split (the policy's training frames); the streams are the
drift report's (`drift_report.stream_specs`, same seeds: 5 new in-distribution sequences, then 2 of the preset).
Per preset: the peak over windows that end before the change (in distribution: above 1.25 the monitor warns, and
it raises a false alarm when that lasts `confirm` frames) and over windows wholly after it (above 1.25 and above
every in-distribution peak: the statistic separates the preset from every new in-distribution window). The
candidates:
- `quality_one_sided`: the image quality statistic as shipped until 2026-12-03 (the largest |z| of 7 named
  features' window means, in training window-mean stds, each over its held-out peak of |z|);
- `quality_two_sided`: the same with a separate held-out peak per direction (fog lowers edge energy, and new
  scenes wander further up than down): the shipped `drift.quality_shift` since, chosen by this probe;
- `all_two_sided`: the same over all 1024 features;
- `pca_mahalanobis_K`: the Mahalanobis distance of the window mean of the standardised features in the training
  frames' top K principal components;
- `knn_64`: per frame, the root mean squared distance to its 5 nearest training frames (every 3rd router frame) in
  the top 64 components, averaged over the window.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from adaptive_perception.drift import _QUALITY_INDEX, MARGIN, WINDOW, _window_means
from adaptive_perception.errors import AdaptivePerceptionError
from adaptive_perception.features import image_features
from adaptive_perception.progress import progress
from adaptive_perception.scenes.sequence import render_sequence
from adaptive_perception.training.drift_report import PRESETS, stream_specs


def window_z(reference: np.ndarray, held_out: list[np.ndarray], columns=None, both_ways: bool = True):
    """A window score: the largest signed z of the window means of `columns` (in training window-mean stds, from
    the (N, F) `reference` frames), each over its held-out peak (floored at 1 std): one peak per direction when
    `both_ways` (the shipped `drift.quality_shift` on its 7 features), else the larger of the two."""
    columns = np.arange(reference.shape[1]) if columns is None else np.asarray(columns)
    mean = reference[:, columns].mean(0)
    std = np.maximum(_window_means(reference[:, columns], WINDOW).std(0), 1e-6)

    def z(features):
        return (_window_means(features[:, columns], WINDOW) - mean) / std

    up = np.maximum(1.0, np.max([z(f).max(0) for f in held_out], 0))
    down = np.maximum(1.0, np.max([(-z(f)).max(0) for f in held_out], 0))
    if not both_ways:
        up = down = np.maximum(up, down)
    return lambda features: np.maximum(z(features) / up, -z(features) / down).max(1)


def _components(reference: np.ndarray, k: int):
    mean, scale = reference.mean(0), np.maximum(reference.std(0), 1e-6)
    standardised = (reference - mean) / scale
    _, singular, vt = np.linalg.svd(standardised, full_matrices=False)
    return (lambda features: ((features - mean) / scale) @ vt[:k].T), singular[:k] ** 2 / (len(reference) - 1)


def pca_mahalanobis(reference: np.ndarray, k: int):
    project, variance = _components(reference, k)
    return lambda features: np.sqrt((_window_means(project(features), WINDOW) ** 2 / variance).sum(1))


def knn_novelty(reference: np.ndarray, k: int = 64, neighbours: int = 5, stride: int = 3):
    project, _ = _components(reference, k)
    bank = project(reference[::stride])

    def score(features):
        points = project(features)
        distances = np.empty(len(points))
        for start in range(0, len(points), 256):
            block = ((points[start:start + 256, None, :] - bank[None]) ** 2).sum(-1)
            distances[start:start + 256] = np.sqrt(np.sort(block, 1)[:, :neighbours].mean(1))
        return _window_means(distances[:, None], WINDOW)[:, 0]
    return score


def peaks(scores: np.ndarray, change: int) -> tuple[float, float]:
    """(peak over windows ending before frame `change`, peak over windows wholly from it on) of per-window scores
    (window i covers frames i .. i + WINDOW - 1)."""
    return float(scores[:change - WINDOW + 1].max()), float(scores[change:].max())


def _split_features(benchmark: Path, split: str) -> np.ndarray:
    files = sorted((benchmark / "images" / split).glob("*.jpg"))
    if not files:
        raise AdaptivePerceptionError(f"{benchmark}/images/{split} has no frames; generate the benchmark with "
                                      "`adaptive-perception scenes generate --generator-version 2.0.0 --out "
                                      f"{benchmark}`")
    return np.stack([image_features(cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB))
                     for f in progress(files, desc=f"features {split}", unit="frame")]).astype(np.float64)


def run(benchmark: Path, report: Path, in_sequences: int = 5, drift_sequences: int = 2, frames: int = 150,
        version: str = "2.0.0") -> dict:
    reference = _split_features(benchmark, "router")
    held_out = [_split_features(benchmark, s) for s in ("val", "test")]
    candidates = {"quality_one_sided": window_z(reference, held_out, _QUALITY_INDEX, both_ways=False),
                  "quality_two_sided": window_z(reference, held_out, _QUALITY_INDEX),
                  "all_two_sided": window_z(reference, held_out),
                  **{f"pca_mahalanobis_{k}": pca_mahalanobis(reference, k) for k in (8, 32)},
                  "knn_64": knn_novelty(reference)}
    calibration = {name: max(float(score(f).max()) for f in held_out) for name, score in candidates.items()}
    streams = {}
    for preset in PRESETS:
        clean, drifted = stream_specs(preset, in_sequences, drift_sequences, frames, version)
        streams[preset.value] = (np.stack([image_features(f.rgb) for spec in progress(
            clean + drifted, desc=f"features {preset.value} stream", unit="sequence") for f in render_sequence(spec)]
        ).astype(np.float64), sum(s.frames for s in clean))
    result = {"benchmark": str(benchmark), "window": WINDOW, "margin": MARGIN, "statistics": {}}
    for name, score in candidates.items():
        rows = {}
        for preset, (features, change) in streams.items():
            before, after = peaks(score(features) / calibration[name], change)
            rows[preset] = {"peak_before": before, "peak_after": after}
        worst_before = max(r["peak_before"] for r in rows.values())
        result["statistics"][name] = {"presets": rows, "peak_before_all_streams": worst_before,
                                      "above_threshold_before": worst_before > MARGIN,
                                      "separates": [p for p, r in rows.items()
                                                    if r["peak_after"] > max(MARGIN, worst_before)]}
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(result, indent=1))
    report.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {report} and {report.with_suffix('.md')}")
    return result


def markdown(result: dict) -> str:
    presets = list(next(iter(result["statistics"].values()))["presets"])
    lines = ["Candidate drift statistics, in units of their held-out peak (threshold "
             f"{result['margin']}); command: `adaptive-perception bench drift-probe`.", "",
             "| statistic | in-distribution peak (all streams) | " + " | ".join(f"{p} after" for p in presets)
             + " | separates from every in-distribution window |", "|---|---|" + "---|" * len(presets) + "---|"]
    for name, s in result["statistics"].items():
        above = " (above)" if s["above_threshold_before"] else ""
        lines.append(f"| {name} | {s['peak_before_all_streams']:.2f}{above} | "
                     + " | ".join(f"{s['presets'][p]['peak_after']:.2f}" for p in presets) + " | "
                     + (", ".join(s["separates"]) or "none") + " |")
    return "\n".join(lines)
