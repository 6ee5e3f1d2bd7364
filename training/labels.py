"""Stages 2-3, costs and labels: per-frame quality of each tier, tier costs per device, optimal tiers.

Quality of detections on a frame pools the way COCO mAP pools: true positives minus 0.3 x false positives,
each averaged over IoU thresholds 0.50:0.05:0.95, on the detections the node publishes (score >= its
conf_threshold), matched greedily by score within a class; a detection on an ignore region counts neither
way. Counts, not a per-frame ratio: finding twelve objects on a dense frame is worth twelve times finding
one on a sparse frame, as in the split's mAP (a per-frame F1 weighed them alike, and its own budget oracle
lost to the detection-count heuristic). Values are in units of the split's mean objects per frame.
`stale_quality[f, t, k]` scores tier t's detections of frame f against the truth of frame f + k (k = 0 is
the frame itself): what a frame shows while a slower tier works on a later one.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from adaptive_perception.detector import TIERS, box_iou, other_files
from adaptive_perception.errors import AdaptivePerceptionError
from adaptive_perception.progress import progress
from adaptive_perception.training.profile import PUBLISH_CONF, Profile

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
FP_WEIGHT = 0.3  # a false positive costs 0.3 of a true positive: below-threshold noise lowers mAP, but less than a miss
MAX_STALE = 6  # frames after f that tier t's output of f can cover; more is treated as the last


def match_counts(detections: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives per IoU threshold 0.50:0.05:0.95 of (K, 6) detections x0 y0 x1 y1 score class
    against (G, 6) truth x0 y0 x1 y1 class ignore, matched greedily by score within a class as COCO does; a
    detection matching only an ignore region counts neither way."""
    valid = truth[truth[:, 5] == 0]
    ignore = truth[truth[:, 5] != 0]
    tp = np.zeros(len(IOU_THRESHOLDS))
    fp = np.zeros(len(IOU_THRESHOLDS))
    if len(detections) == 0:
        return tp, fp
    detections = detections[np.argsort(-detections[:, 4], kind="stable")]
    same_class = detections[:, None, 5] == valid[None, :, 4]
    iou = np.where(same_class, box_iou(detections[:, :4], valid[:, :4]), 0.0) if len(valid) else np.zeros((len(detections), 0))
    on_ignore = np.zeros((len(detections), len(IOU_THRESHOLDS)), bool)
    if len(ignore):
        ignored_iou = np.where(detections[:, None, 5] == ignore[None, :, 4], box_iou(detections[:, :4], ignore[:, :4]), 0.0)
        on_ignore = ignored_iou.max(axis=1)[:, None] >= IOU_THRESHOLDS[None, :]
    for t, threshold in enumerate(IOU_THRESHOLDS):
        taken = np.zeros(len(valid), bool)
        for d in range(len(detections)):
            candidates = np.where(taken, -1.0, iou[d]) if len(valid) else iou[d]
            best = int(np.argmax(candidates)) if len(valid) else -1
            if best >= 0 and candidates[best] >= threshold:
                taken[best] = True
                tp[t] += 1
            elif not on_ignore[d, t]:
                fp[t] += 1
    return tp, fp


def frame_value(detections: np.ndarray, truth: np.ndarray) -> float:
    """What a frame's published detections add to split-level mAP50-95: true positives minus FP_WEIGHT x false
    positives, each averaged over IoU 0.50:0.95. Counts pool over frames as COCO pools objects (a twelve-object
    frame weighs twelve times a one-object frame); showing nothing is worth 0."""
    tp, fp = match_counts(detections, truth)
    return float(tp.mean() - FP_WEIGHT * fp.mean())


def empty_quality(profile: Profile) -> np.ndarray:
    """(N,) quality of showing no detections on each frame (a stream's frames before its first output)."""
    empty = np.zeros((0, 6), np.float32)
    unit = _objects_per_frame(profile)
    return np.array([frame_value(empty, truth) / unit for truth in profile.frame_truth()], np.float32)


def _objects_per_frame(profile: Profile) -> float:
    """The split's mean count of valid objects per frame: the unit of quality (a split-level constant)."""
    truth = profile.frame_truth()
    return max(float(np.mean([(t[:, 5] == 0).sum() for t in truth])), 1e-6) if len(truth) else 1.0


def stale_quality(profile: Profile, max_stale: int = MAX_STALE) -> np.ndarray:
    """(N, 3, max_stale + 1) value (`frame_value`, in units of the split's mean objects per frame) of tier t's
    published detections of frame f on the truth of frame f + k (the same sequence; past a sequence's end the
    last frame's value is repeated, and never used)."""
    truth = profile.frame_truth()
    unit = _objects_per_frame(profile)
    out = np.zeros((len(profile), len(TIERS), max_stale + 1), np.float32)
    for tier in range(len(TIERS)):
        detections = profile.tier_detections(tier, PUBLISH_CONF)
        for frames in progress(profile.sequences(), desc=f"quality, {TIERS[tier]}", unit="sequence"):
            for i, f in enumerate(frames):
                for k in range(max_stale + 1):
                    target = frames[min(i + k, len(frames) - 1)]
                    out[f, tier, k] = frame_value(detections[f], truth[target]) / unit
    return out


@dataclass(frozen=True)
class Costs:
    """Mean milliseconds per inference of each tier on a named device."""

    device: str
    ms: np.ndarray  # (3,)
    digests: dict | None = None  # {tier: file digest} of the files timed, where the latency file records them

    def mismatches(self, policy) -> list[str]:
        """One line per tier timed on another file than `policy` was trained with (by both files' digests)."""
        expected, timed = policy.info.tier_digests, self.digests or {}
        return [f"{tier} (timed {timed[tier]}, policy trained with {expected[tier]})"
                for tier in other_files(expected, timed)]

    @staticmethod
    def measured(profiles: list[Profile]) -> "Costs":
        latency = np.concatenate([p.latency_ms for p in profiles])
        return Costs(f"{profiles[0].meta['device']}, measured while profiling", latency.mean(axis=0))

    @staticmethod
    def load(path: Path) -> "Costs":
        example = ('expected JSON like {"device": "Jetson Orin NX, TensorRT FP16", "tiers_ms": {"nano": 4.1, '
                   '"small": 7.9, "large": 21.5}}')
        try:
            data = json.loads(Path(path).read_text())
        except OSError as exc:
            raise AdaptivePerceptionError(f"latency file '{path}' cannot be read ({exc.strerror})") from None
        except ValueError as exc:
            raise AdaptivePerceptionError(f"latency file '{path}' is not JSON (line {exc.lineno}: {exc.msg}); "
                                          f"{example}") from None
        try:
            ms = np.asarray([float(data["tiers_ms"][t]) for t in TIERS])
            device = str(data["device"])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise AdaptivePerceptionError(f"latency file '{path}' needs a device name and tiers_ms with a number for "
                                          f"each of {', '.join(TIERS)}; {example}") from None
        if not (np.isfinite(ms).all() and (ms > 0).all()):
            raise AdaptivePerceptionError(f"latency file '{path}': tier latencies must be positive, got {ms.tolist()}")
        digests = data.get("digests")
        return Costs(device, ms, {str(k): str(v) for k, v in digests.items()} if isinstance(digests, dict) else None)

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"device": self.device, "tiers_ms": dict(zip(TIERS, self.ms.round(3).tolist())),
                                    "host_cores": os.cpu_count()}, indent=2) + "\n")
        return path

    @property
    def relative(self) -> np.ndarray:
        """Costs as a fraction of the large tier's."""
        return self.ms / self.ms[-1]


def exact_seconds(ms: float) -> Fraction:
    """Milliseconds as exact seconds (to the microsecond), for clocks that must not drift by rounding."""
    return Fraction(str(round(float(ms), 6))) / 1000


def streaming_labels(quality: np.ndarray, costs: Costs, rate_hz: float = 30.0) -> np.ndarray:
    """(N, 3) per-frame labels for streaming at `rate_hz`: tier t's output of frame f scored on the first frame
    it is shown on, ceil(cost_t x rate) frames later (the node publishes when inference ends; a frame arriving
    exactly then shows it). A slow tier's accuracy is worth what it is worth when it lands."""
    period = Fraction(1) / Fraction(str(rate_hz))
    lag = [min(math.ceil(exact_seconds(ms) / period), quality.shape[2] - 1) for ms in costs.ms]
    return np.stack([quality[:, t, lag[t]] for t in range(len(TIERS))], axis=1)


def optimal_tiers(quality: np.ndarray, costs: Costs, lam: float) -> np.ndarray:
    """Per frame, argmax over tiers of quality - lam * cost / cost(large) (ties go to the cheaper tier)."""
    return np.argmax(quality - lam * costs.relative[None, :] + 1e-9 * np.arange(len(TIERS))[::-1], axis=1)


def budget_oracle(quality: np.ndarray, costs: Costs, budget_ms: float) -> np.ndarray:
    """Per-frame tiers of high total quality whose mean cost stays within `budget_ms`: the Lagrangian relaxation of
    this multiple-choice knapsack (the smallest lam whose optimal tiers fit), then the budget it leaves is spent
    greedily on the upgrades with the best quality gain per millisecond. Near the optimum, not always at it: the
    greedy fill can spend the last of the budget on a smaller gain with a better rate (a test shows one)."""
    tiers = optimal_tiers(quality, costs, 0.0)
    if costs.ms[tiers].mean() > budget_ms:
        low, high = 0.0, 1.0
        while costs.ms[optimal_tiers(quality, costs, high)].mean() > budget_ms and high < 1e6:
            high *= 2
        for _ in range(60):
            middle = (low + high) / 2
            if costs.ms[optimal_tiers(quality, costs, middle)].mean() > budget_ms:
                low = middle
            else:
                high = middle
        tiers = optimal_tiers(quality, costs, high)
    frames = np.arange(len(quality))
    spare = budget_ms * len(quality) - costs.ms[tiers].sum()
    while True:
        gain = quality - quality[frames, tiers][:, None]
        extra = costs.ms[None, :] - costs.ms[tiers][:, None]
        ok = (gain > 1e-12) & (extra <= spare + 1e-9)
        if not ok.any():
            return tiers
        rate = np.where(ok, gain / np.maximum(extra, 1e-9), -np.inf)
        f, t = np.unravel_index(np.argmax(rate), rate.shape)
        spare -= extra[f, t]
        tiers[f] = t
