"""Drift monitor: is the world the node sees still the one its policy was trained on? (ROS-free)

Five statistics over a sliding window of the most recent frames, each compared with reference statistics
written into the policy file at training time (`DriftReference`, metadata `adaptive_perception.drift`):
- **feature shift**: the 1024 image features projected onto `PROJECTIONS` fixed directions (a seeded Gaussian
  matrix, after standardising with the reference mean and std); per direction the window's share of frames
  in each of the reference's decile bins, against the reference's 10 % each, as the population stability
  index PSI = sum (p - q) ln(p / q) (shares floored at 0.5 / window); the statistic is the mean PSI over the
  directions;
- **routing-mix shift**: total variation distance between the window's tier mix and the reference mix;
- **agreement drop**: the reference's mean audit agreement minus the mean of the last `AUDIT_WINDOW` audits;
  these two measure the routing as much as the world, so they count only while the node routes as the reference
  was measured (the learned mode at its cost weight and hysteresis: `routing_difference`); in a rule or fixed
  mode, or at another cost weight, they are left out and the image statistics below carry the monitor;
- **image quality shift**: the window means of a few named image features that light, contrast and colour move
  (`QUALITY_FEATURES`: quantiles of the edge-energy, colour-distance, saturation and chroma maps), each as its
  signed distance from the reference's mean in standard deviations of 150-frame window means over the training
  stream, divided by the largest such distance it reached in the same direction on the held-out streams
  (`calibrate_quality`, so a feature that wanders between scenes counts less; per direction, because new scenes
  push edge energy much further up than down, and haze pulls it down); the statistic is the largest. The random
  projections above mix all 1024 features, most of which describe a scene's clutter, which every new scene
  changes; these few describe the camera's view of any scene (measured: README, Drift monitoring);
- **veil**: haze (fog, mist, a fogged lens) lays a bright veil over everything the camera sees, which lifts the
  black level towards the white one; `veil(rgb)` is a frame's black level over its white level, and the statistic
  is the window mean's distance above the training mean in standard deviations of 150-frame window means over
  the training stream (one-sided: a darker picture is the image quality statistic's). A ratio, so a brighter
  or darker exposure of the same scene leaves it where it was; new scenes move it far less than haze does
  (measured: README, Drift monitoring). It is computed from the frame, not from the routing features, which
  describe contrast and colour but not the absolute black level.
Each statistic is divided by its threshold; the drift score is the largest ratio. Thresholds are the largest
value each statistic took over held-out in-distribution streams (`calibrate`) times a margin (the agreement
drop's never below three standard errors of a mean of `AUDIT_WINDOW` audits), so the
false-alarm rate on such data is stated, not guessed: zero over the calibration frames, by construction,
and measured on other held-out frames in the drift report. State: OK; WARN from a score above 1 until one
below `release`; DRIFT after the score stayed above 1 for `confirm` consecutive frames; back to OK only after it stayed
below `release` (< 1) for `confirm` frames (hysteresis).
"""
from __future__ import annotations

import json
import numbers
import math
import threading
from collections import deque
from dataclasses import asdict, dataclass, field
from functools import cached_property

import numpy as np

from adaptive_perception.errors import ConfigError
from adaptive_perception.features import FEATURE_SIZE, GRID, IMAGE_FEATURES, reduce_frame

PROJECTIONS = 8
BINS = 10
WINDOW = 150  # frames: 5 s at 30 Hz
MAX_WINDOW = 9000  # the longest window a reference may ask for: 5 minutes at 30 Hz
STATISTICS = frozenset({"feature_psi", "mix_tvd", "agreement_drop", "image_quality", "veil"})  # what a window measures
AUDIT_WINDOW = 10
MARGIN = 1.25
PROJECTION_SEED = 20261128
METADATA_KEY = "adaptive_perception.drift"
UNKNOWN, OK, WARN, DRIFT = 0, 1, 2, 3  # the RoutingDecision DRIFT_* values
STATE_NAMES = {UNKNOWN: "unknown", OK: "ok", WARN: "warn", DRIFT: "drift"}


def _quantile_feature(map_index: int, fraction: float) -> int:
    """The feature index of a map's quantile (`features`: 128 quantiles per map, the (8k + 4)-th sorted cell)."""
    return map_index * 128 + min(int(round((fraction * 1024 - 4) / 8)), 127)


# map indices in `features.image_features`: 0 edge energy E, 1 colour distance D, 2 saturation S, 3 chroma K
QUALITY_FEATURES = {"edge_energy_q50": _quantile_feature(0, 0.5), "edge_energy_q90": _quantile_feature(0, 0.9),
                    "colour_distance_q90": _quantile_feature(1, 0.9), "saturation_q50": _quantile_feature(2, 0.5),
                    "saturation_q90": _quantile_feature(2, 0.9), "chroma_q50": _quantile_feature(3, 0.5),
                    "chroma_q90": _quantile_feature(3, 0.9)}
_QUALITY_INDEX = np.array(list(QUALITY_FEATURES.values()))


_VEIL_CELLS = GRID * GRID
_VEIL_DARK = _VEIL_CELLS * 5 // 100  # order statistics of the cells: the 52nd lowest (the 5th percentile) ...
_VEIL_BRIGHT = _VEIL_CELLS * 95 // 100  # ... and the 973rd lowest (the 95th)


def veil(rgb: np.ndarray) -> float:
    """A frame's black level over its white level, in [0, 1], on the 32x32 cells the routing features use
    (`features.reduce_frame`): the black level is the 5th percentile (the 52nd lowest of 1024) of the cells'
    darkest channel, the white level the 95th (the 973rd lowest) of their brightest channel, at least 1."""
    cells = reduce_frame(rgb)[1].reshape(-1, 3)
    dark = np.partition(cells.min(axis=1), _VEIL_DARK)[_VEIL_DARK]
    bright = np.partition(cells.max(axis=1), _VEIL_BRIGHT)[_VEIL_BRIGHT]
    return float(dark) / max(float(bright), 1.0)


def projection(dims: int, seed: int = PROJECTION_SEED, count: int = PROJECTIONS) -> np.ndarray:
    """The fixed (dims, count) projection, unit-norm columns."""
    matrix = np.random.default_rng(seed).standard_normal((dims, count))
    return (matrix / np.linalg.norm(matrix, axis=0)).astype(np.float64)


MIN_CALIBRATION_FRAMES = 3000  # held-out frames below which a reference's thresholds are said to be thin


@dataclass
class DriftReference:
    """What in-distribution looked like at training time, and the calibrated thresholds."""

    mean: list[float]  # per image feature
    std: list[float]
    edges: list[list[float]]  # per projection, the BINS - 1 inner decile edges
    tier_mix: list[float]  # nano, small, large on the reference data, as the policy routed it
    agreement: float  # mean audit agreement of the routed output with the reference tier
    agreement_std: float = 0.0  # spread of single audits: floors the agreement threshold
    thresholds: dict[str, float] = field(default_factory=dict)  # feature_psi, mix_tvd, agreement_drop, image_quality, veil
    quality_mean: list[float] = field(default_factory=list)  # per QUALITY_FEATURES (empty: statistic off)
    quality_std: list[float] = field(default_factory=list)  # of their 150-frame window means in training
    quality_peak: list[float] = field(default_factory=list)  # per feature, its held-out peak above the mean, in stds
    # per feature, its held-out peak below the mean (empty in references written before 2026-12-03: then
    # `quality_peak` is the peak of the distance either way and serves both directions)
    quality_peak_down: list[float] = field(default_factory=list)
    veil_mean: float = 0.0  # of `veil` over the training frames
    veil_std: float = 0.0  # of its 150-frame window means in training; 0: statistic off (references before 2026-12-04)
    # the learned mode's cost weight and hysteresis the tier mix and audit agreement were measured at (cost weight
    # None: a logits policy, or a reference written before 2026-12-05 at the policy's own weight, which `Policy`
    # fills in when it loads one)
    cost_weight: float | None = None
    hysteresis: float = 0.0
    window: int = WINDOW
    seed: int = PROJECTION_SEED
    # held-out in-distribution frames the thresholds were calibrated on (0: not recorded, references before 2026-12-07)
    calibration_frames: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    def thin_calibration(self) -> str:
        """Why the thresholds cannot be trusted to stay quiet on new in-distribution scenes, or "" when they can (or
        the reference does not say what they read)."""
        if not 0 < self.calibration_frames < MIN_CALIBRATION_FRAMES:
            return ""
        return (f"its drift thresholds were calibrated on {self.calibration_frames} held-out frames, fewer than "
                f"{MIN_CALIBRATION_FRAMES} (20 scenes of 150 frames, what the scene benchmark's validation and test "
                "splits hold): every scene moves the statistics, so new in-distribution scenes may cross them and "
                "turn DRIFT. Recompute the reference on more scenes: adaptive-perception policy drift-reference "
                "<policy file> --work <its train folder> --calibration-sequences 40")

    def layout(self) -> str:
        """Which statistics this reference carries, naming the earlier layouts the node still reads."""
        quality = ("none" if not self.quality_mean else "a peak per direction" if self.quality_peak_down
                   else "one peak for both directions (an earlier layout, read as written)")
        veil = "on" if self.veil_std > 0 else "none (the monitor runs without it)"
        return f"image quality {quality}; veil {veil}"

    @staticmethod
    def from_json(text: str) -> "DriftReference":
        try:
            data = json.loads(text)
            reference = DriftReference(**data)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"the policy's drift reference ({METADATA_KEY}) is not readable: {exc}") from None
        problem = reference._bad_value()  # the types first: a number where a list belongs has no length
        if problem:
            raise ConfigError(f"the policy's drift reference ({METADATA_KEY}) is not usable: {problem}; export the "
                              "policy again, or recompute its reference with `adaptive-perception policy "
                              "drift-reference`")
        if len(reference.mean) != len(reference.std) or len(reference.edges) != PROJECTIONS or \
                len(reference.quality_mean) not in (0, len(QUALITY_FEATURES)) or \
                len(reference.quality_std) != len(reference.quality_mean) or \
                len(reference.quality_peak) not in (0, len(reference.quality_mean)) or \
                len(reference.quality_peak_down) not in (0, len(reference.quality_peak)):
            raise ConfigError(f"the policy's drift reference ({METADATA_KEY}) has inconsistent sizes")
        return reference

    def _bad_value(self) -> str:
        """What of a reference read from a file the monitor could not run on ("" when nothing): a window of -1
        raised inside the node's service callback and took the node down, a window of 0 failed every frame."""
        def numbers(values, name: str, low: float = -math.inf) -> str:
            if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                       and math.isfinite(v) and v >= low for v in values):
                return f"{name} must be a list of finite numbers" + (f" >= {low:g}" if low > -math.inf else "")
            return ""

        def whole(value, name: str, low: int, high: int) -> str:
            ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
            return "" if ok else f"{name} {value!r} must be a whole number in [{low}, {high}]"

        checks = [
            numbers(self.mean, "mean") or ("" if 1 <= len(self.mean) <= IMAGE_FEATURES else
                                           f"mean has {len(self.mean)} values, at most {IMAGE_FEATURES}"),
            numbers(self.std, "std", 0.0),
            *(numbers(row, "edges") or ("" if len(row) == BINS - 1 and row == sorted(row) else
                                        f"edges must be {BINS - 1} ascending values a projection")
              for row in (self.edges if isinstance(self.edges, list) else [None])),
            numbers(self.tier_mix, "tier_mix", 0.0) or ("" if len(self.tier_mix) == 3 else
                                                        "tier_mix must hold 3 shares"),
            numbers([self.agreement, self.agreement_std, self.veil_mean], "agreement, agreement_std, veil_mean"),
            numbers([self.veil_std, self.hysteresis], "veil_std, hysteresis", 0.0),
            "" if isinstance(self.thresholds, dict) and not numbers(list(self.thresholds.values()), "", 1e-12)
            and (not self.thresholds or ("feature_psi" in self.thresholds and set(self.thresholds) <= STATISTICS))
            else f"thresholds must map feature_psi and others of {sorted(STATISTICS)} to finite numbers > 0",
            numbers(self.quality_mean, "quality_mean"), numbers(self.quality_std, "quality_std", 1e-12),
            # held-out peaks are floored at one window std (`calibrate_quality`): below, the score runs away
            numbers(self.quality_peak, "quality_peak", 1.0), numbers(self.quality_peak_down, "quality_peak_down", 1.0),
            "" if self.cost_weight is None else numbers([self.cost_weight], "cost_weight", 0.0),
            whole(self.window, "window", 1, MAX_WINDOW), whole(self.seed, "seed", 0, 2**32 - 1),
            whole(self.calibration_frames, "calibration_frames", 0, 10**9)]
        return "; ".join(problem for problem in checks if problem)

    @cached_property
    def _projector(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean, std floored at 1e-6, projection matrix) as arrays, built on the first `project` (a reference's
        mean, std and seed are not changed after it is built)."""
        return (np.asarray(self.mean, np.float64), np.maximum(np.asarray(self.std, np.float64), 1e-6),
                projection(len(self.mean), self.seed))

    def project(self, features: np.ndarray) -> np.ndarray:
        """(N, PROJECTIONS) projected, standardised image features."""
        mean, std, matrix = self._projector
        image = np.asarray(features, np.float64)[..., :len(mean)]
        return ((image - mean) / std) @ matrix


def build_reference(features: np.ndarray, tiers: np.ndarray, agreements: np.ndarray, window: int = WINDOW,
                    veils: np.ndarray | None = None) -> DriftReference:
    """Reference statistics from in-distribution frames: image features (N, >= 1024), the tier the policy
    chose per frame, audit agreements (routed output vs the reference tier) on those frames, and optionally
    each frame's `veil` (without them the veil statistic is off)."""
    image = np.asarray(features, np.float64)[:, :1024]
    reference = DriftReference(mean=image.mean(0).tolist(), std=image.std(0).tolist(), edges=[],
                               tier_mix=(np.bincount(np.asarray(tiers, int), minlength=3) / len(tiers)).tolist(),
                               agreement=float(np.mean(agreements)), agreement_std=float(np.std(agreements)),
                               window=window)
    projected = reference.project(image)
    reference.edges = [np.quantile(projected[:, j], np.arange(1, BINS) / BINS).tolist() for j in range(PROJECTIONS)]
    if len(image) >= reference.window:
        means = _window_means(image[:, _QUALITY_INDEX], reference.window)
        reference.quality_mean = image[:, _QUALITY_INDEX].mean(0).tolist()
        reference.quality_std = np.maximum(means.std(0), 1e-6).tolist()
        if veils is not None:
            veils = np.asarray(veils, np.float64)[:, None]
            reference.veil_mean = float(veils.mean())
            reference.veil_std = max(float(_window_means(veils, reference.window).std()), 1e-6)
    return reference


def _window_means(values: np.ndarray, window: int) -> np.ndarray:
    """(N - window + 1, K) means of every full window of (N, K) values."""
    sums = np.cumsum(np.vstack([np.zeros((1, values.shape[1])), values]), axis=0)
    return (sums[window:] - sums[:-window]) / window


def _quality_distances(reference: DriftReference, means: np.ndarray) -> np.ndarray:
    """(window mean - reference mean) / reference window std, for (..., len(QUALITY_FEATURES)) window means."""
    return (means - np.asarray(reference.quality_mean)) / np.asarray(reference.quality_std)


def quality_shift(reference: DriftReference, quality: np.ndarray) -> float:
    """The image quality statistic of a window of (W, len(QUALITY_FEATURES)) values: the largest signed distance
    (`_quality_distances`) divided by that feature's held-out peak in that direction (1 before
    `calibrate_quality`)."""
    up = np.asarray(reference.quality_peak) if reference.quality_peak else 1.0
    down = np.asarray(reference.quality_peak_down) if reference.quality_peak_down else up
    distances = _quality_distances(reference, quality.mean(0))
    return float(np.max(np.maximum(distances / up, -distances / down)))


def calibrate_quality(reference: DriftReference, streams: list[np.ndarray]) -> tuple[list[float], list[float]]:
    """Per QUALITY_FEATURE, the largest distance above and the largest below the reference mean that any full
    window of the held-out streams' (N, >= 1024) features reached (each floored at 1 standard deviation):
    `DriftReference.quality_peak` and `quality_peak_down`."""
    up = np.ones(len(QUALITY_FEATURES))
    down = np.ones(len(QUALITY_FEATURES))
    for features in streams:
        quality = np.asarray(features, np.float64)[:, _QUALITY_INDEX]
        if len(quality) >= reference.window:
            distances = _quality_distances(reference, _window_means(quality, reference.window))
            up, down = np.maximum(up, distances.max(0)), np.maximum(down, (-distances).max(0))
    return up.tolist(), down.tolist()


def decile_bins(edges: np.ndarray, projected: np.ndarray) -> np.ndarray:
    """The reference decile bin of each projected value, (..., PROJECTIONS) ints in [0, BINS): how many of its
    projection's BINS - 1 inner edges (`edges`, (PROJECTIONS, BINS - 1)) lie at or below it."""
    return (edges <= projected[..., None]).sum(axis=-1)


def _psi(counts: np.ndarray, frames: int) -> float:
    """Mean PSI over the projections of a window's (PROJECTIONS, BINS) bin counts of `frames` frames."""
    shares = np.maximum(counts / frames, 0.5 / frames)
    expected = 1.0 / BINS
    return float(((shares - expected) * np.log(shares / expected)).sum()) / PROJECTIONS


def feature_psi(reference: DriftReference, projected: np.ndarray) -> float:
    """Mean PSI over the projections of a window of projected features (W, PROJECTIONS)."""
    bins = decile_bins(np.asarray(reference.edges), projected)
    return _psi(np.stack([np.bincount(bins[:, j], minlength=BINS) for j in range(PROJECTIONS)]), len(projected))


def mix_tvd(reference: DriftReference, tiers: np.ndarray) -> float:
    """Total variation distance between a window's tier mix and the reference mix."""
    mix = np.bincount(np.asarray(tiers, int), minlength=3) / max(len(tiers), 1)
    return float(0.5 * np.abs(mix - np.asarray(reference.tier_mix)).sum())


def weight_text(weight: float) -> str:
    """A cost weight as a decimal literal that `ros2 param set` and YAML read back as a double (never '1' or
    '1e-05', which they read as an integer and a string), to 6 decimals: `same_weight` as the weight itself."""
    text = f"{weight:.6f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def same_weight(a: float, b: float) -> bool:
    """Whether two cost weights route alike: equal to 0.1 %, or within 1e-6 (what `weight_text` rounds away), so
    a weight typed back from any printed figure counts as the one printed."""
    return math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-6)


def routing_difference(reference: DriftReference, mode: str, cost_weight: float | None, hysteresis: float) -> str:
    """How the node's routing differs from the routing the reference measured its tier mix and audit agreement
    under ('' when it does not): another mode, another cost weight (a tier_values policy's, `cost_weight` the one
    in force; `same_weight`), another hysteresis. Those two statistics then describe the routing change, not the
    world."""
    if mode != "learned":
        return f"the routing mode is {mode}"
    if cost_weight is not None and reference.cost_weight is not None and \
            not same_weight(cost_weight, reference.cost_weight):
        return f"the cost weight is {weight_text(cost_weight)}"
    if not math.isclose(hysteresis, reference.hysteresis, abs_tol=1e-9):
        return f"the hysteresis is {hysteresis:g}"
    return ""


def window_statistics(reference: DriftReference, projected: np.ndarray, tiers: np.ndarray | None,
                      agreements: list[float] | None, quality: np.ndarray | None = None,
                      veils: np.ndarray | None = None, psi: float | None = None) -> dict[str, float]:
    """The statistics of one window; `mix_tvd` and `agreement_drop` only when `tiers` and `agreements` are given
    (an empty list of agreements: no audits yet, a drop of 0); `image_quality` and `veil` only when the reference
    has them and their values are given; `psi`, when given, is the window's feature PSI (`projected` is then not
    read)."""
    values = {"feature_psi": feature_psi(reference, projected) if psi is None else psi}
    if tiers is not None:
        values["mix_tvd"] = mix_tvd(reference, tiers)
    if agreements is not None:
        values["agreement_drop"] = reference.agreement - float(np.mean(agreements)) if agreements else 0.0
    if reference.quality_mean and quality is not None:
        values["image_quality"] = quality_shift(reference, quality)
    if reference.veil_std > 0 and veils is not None:
        values["veil"] = (float(np.mean(veils)) - reference.veil_mean) / reference.veil_std
    return values


def agreement_peak(reference: DriftReference, agreements: np.ndarray, audit_every: int) -> float:
    """The largest agreement drop (reference agreement - mean of AUDIT_WINDOW consecutive audits) in a stream's
    per-frame agreements (NaN = not audited). A stream audited on every frame is read at each of the
    `audit_every` phases of the node's 1-in-`audit_every` sampling (which frames the node audits depends on when
    it started and on skipped audits), so the peak covers the sampling's own noise, not one draw of it; a
    sparsely audited stream gives its one sequence of audits."""
    agreements = np.asarray(agreements, np.float64)
    dense = len(agreements) > 0 and bool(np.isfinite(agreements).all())
    sequences = ([agreements[phase::audit_every] for phase in range(audit_every)] if dense and audit_every > 1
                 else [agreements[np.isfinite(agreements)]])
    peak = 0.0
    for audits in sequences:
        if len(audits) >= AUDIT_WINDOW:
            means = np.convolve(audits, np.full(AUDIT_WINDOW, 1.0 / AUDIT_WINDOW), "valid")
            peak = max(peak, reference.agreement - float(means.min()))
    return peak


def calibrate(reference: DriftReference, streams: list[tuple[np.ndarray, ...]],
              margin: float = MARGIN, audit_every: int = 30) -> dict[str, float]:
    """Thresholds from held-out in-distribution streams of (features, tiers, per-frame audit agreement or NaN
    for frames not audited[, per-frame veil]): per statistic, the largest value any full window reached, times
    `margin` (the veil's peak floored at one window standard deviation); the agreement drop's peak is
    `agreement_peak`'s (every phase of the node's audit sampling where a stream was audited on every frame).
    A reference with the veil statistic needs every stream's veils."""
    peaks = {"feature_psi": 0.0, "mix_tvd": 0.0, "agreement_drop": 0.0}
    if reference.quality_mean:
        peaks["image_quality"] = 0.0
    if reference.veil_std > 0:
        if any(len(stream) < 4 or stream[3] is None for stream in streams):
            raise ConfigError("the reference has a veil statistic, so every calibration stream needs its veils")
        peaks["veil"] = 1.0
    for features, tiers, agreements, *rest in streams:
        projected = reference.project(features)
        quality = np.asarray(features, np.float64)[:, _QUALITY_INDEX]
        veils = np.asarray(rest[0], np.float64) if rest and rest[0] is not None else None
        for end in range(reference.window, len(projected) + 1):
            start = end - reference.window
            values = window_statistics(reference, projected[start:end], tiers[start:end], [], quality[start:end],
                                       veils[start:end] if veils is not None else None)
            for key, value in values.items():
                peaks[key] = max(peaks[key], value)
        if len(projected) >= reference.window:
            peaks["agreement_drop"] = max(peaks["agreement_drop"], agreement_peak(reference, agreements, audit_every))
    if not any(len(stream[0]) >= reference.window for stream in streams):
        raise ConfigError(f"calibration needs streams of at least {reference.window} frames")
    thresholds = {key: max(value * margin, 1e-6) for key, value in peaks.items()}
    # a held-out stream whose audits happen to agree better than the training data's says nothing about how far
    # a mean of AUDIT_WINDOW audits wanders by chance: never below three standard errors of that mean
    thresholds["agreement_drop"] = max(thresholds["agreement_drop"], 3 * reference.agreement_std / np.sqrt(AUDIT_WINDOW))
    return thresholds


class DriftMonitor:
    """Feed one routed frame at a time; read `state` and `score`."""

    def __init__(self, reference: DriftReference, confirm: int = 15, release: float = 0.8) -> None:
        if not reference.thresholds:
            raise ConfigError("the drift reference has no calibrated thresholds; re-export the policy with "
                              "`adaptive-perception train export`")
        if isinstance(confirm, bool) or not isinstance(confirm, numbers.Integral) or confirm < 1:
            raise ConfigError(f"drift confirm {confirm!r} must be a whole number of frames >= 1")
        if not 0 < release <= 1:
            raise ConfigError(f"drift release {release!r} must lie in (0, 1] (a share of the threshold; at 0 DRIFT "
                              "would never clear)")
        self.reference, self.confirm, self.release = reference, confirm, release
        self._edges = np.asarray(reference.edges, np.float64)
        # the window's decile bins per frame and their counts, kept as frames enter and leave
        self._bins: deque[np.ndarray] = deque(maxlen=reference.window)
        self._counts = np.zeros((PROJECTIONS, BINS), np.int64)
        self._quality: deque[np.ndarray] = deque(maxlen=reference.window)
        self._tiers: deque[int] = deque(maxlen=reference.window)
        self._veils: deque[float] = deque(maxlen=reference.window)
        self._audits: deque[float] = deque(maxlen=AUDIT_WINDOW)
        self.state, self.score = UNKNOWN, float("nan")
        self.statistics: dict[str, float] = {}
        self._above = self._below = 0
        self.frames = 0
        self.routing_off = ""  # why the tier mix and audit agreement are left out ('': they count)
        self._routing_next = ""

    def set_routing_difference(self, reason: str) -> None:
        """`routing_difference` of the node's routing now, from the next frame on (a service may call this while
        the worker is inside `update`). While it is not '', the tier mix and the audit agreement are left out of
        the score; when that changes, the window's tiers and audits start over, so neither statistic mixes frames
        routed one way with frames routed another (`DriftWatch` keeps out the frame and the audit in flight at
        the change)."""
        self._routing_next = reason

    def _apply_routing(self) -> None:
        reason = self._routing_next
        if bool(reason) != bool(self.routing_off):
            self._tiers.clear()
            self._audits.clear()
        self.routing_off = reason

    def audit(self, agreement: float) -> None:
        if not self.routing_off:
            self._audits.append(float(agreement))

    def update(self, features: np.ndarray, tier: int | None, frame_veil: float | None = None) -> tuple[int, float]:
        """Add a frame (its routing features, tier and `veil`); returns (state, score). UNKNOWN until the window
        is full; the veil statistic counts once the window holds a veil for every frame. `tier` None: the frame
        was routed before the latest routing change, so its tier joins no window (the mix waits for a full one)."""
        features = np.asarray(features)
        if features.shape not in ((FEATURE_SIZE,), (IMAGE_FEATURES,)) or not np.isfinite(features).all():
            raise ValueError(f"drift monitor: features of shape {features.shape} with "
                             f"{features.size - np.isfinite(features).sum()} non-finite values; it takes a frame's "
                             f"{FEATURE_SIZE} routing features (`Routed.features`) or their {IMAGE_FEATURES} image "
                             "statistics, all finite")
        if not features[:IMAGE_FEATURES].any():  # every image has histogram counts
            raise ValueError("drift monitor: the features' image statistics are all zero: call `Routed.complete(rgb)` "
                             "first (a policy that reads only the context leaves them out of the decision)")
        self._apply_routing()
        self.frames += 1
        bins = decile_bins(self._edges, self.reference.project(features[None])[0])
        rows = np.arange(PROJECTIONS)
        if len(self._bins) == self.reference.window:
            self._counts[rows, self._bins[0]] -= 1
        self._bins.append(bins)
        self._counts[rows, bins] += 1
        self._quality.append(features[_QUALITY_INDEX].astype(np.float64))
        if tier is not None:
            self._tiers.append(int(tier))
        if frame_veil is None:
            self._veils.clear()
        else:
            self._veils.append(float(frame_veil))
        if len(self._bins) < self.reference.window:
            return self.state, self.score
        compared = not self.routing_off
        tiers = np.asarray(self._tiers) if compared and len(self._tiers) == self.reference.window else None
        audits = (list(self._audits) if len(self._audits) == AUDIT_WINDOW else []) if compared else None
        veils = np.asarray(self._veils) if len(self._veils) == self.reference.window else None
        self.statistics = window_statistics(self.reference, None, tiers, audits,
                                            np.asarray(self._quality), veils, psi=_psi(self._counts, len(self._bins)))
        return self.advance(max(self.statistics[k] / self.reference.thresholds[k] for k in self.statistics
                                if k in self.reference.thresholds))

    def observe(self, features: np.ndarray, tier: int | None, rgb: np.ndarray) -> tuple[int, float]:
        """`update` with the frame itself: its veil is computed when the reference has the veil statistic."""
        return self.update(features, tier, veil(rgb) if self.reference.veil_std > 0 else None)

    def advance(self, score: float) -> tuple[int, float]:
        """The state machine: one window's score in, the new (state, score) out."""
        self.score = score
        if score > 1.0:
            self._above, self._below = self._above + 1, 0
        elif score < self.release:
            self._above, self._below = 0, self._below + 1
        else:
            self._above = self._below = 0
        if self.state == DRIFT:
            if self._below >= self.confirm:
                self.state = OK
        elif self._above >= self.confirm:
            self.state = DRIFT
        elif score > 1.0:
            self.state = WARN
        elif self.state != WARN or self._below > 0:
            self.state = OK
        return self.state, self.score


class DriftWatch:
    """The node's drift side in one place: audit sampling (`audit.AuditWorker` on the reference tier) and one
    `DriftMonitor` per camera. `frame(...)` is called on the processing path and never waits for an audit."""

    def __init__(self, cameras, reference: DriftReference | None, reference_tier=None, audit_settings=None,
                 confirm: int = 15) -> None:
        from adaptive_perception.audit import AuditSettings, AuditWorker

        self.confirm = confirm
        self._reference_tier = reference_tier
        self.agreements: dict[str, list[float]] = {camera: [] for camera in cameras}  # recent audit scores
        self.audit = AuditWorker(reference_tier, self._audited, audit_settings or AuditSettings()) \
            if reference_tier is not None else None
        self._routing: tuple[str, float | None, float] = ("learned", None, 0.0)
        self._reason = ""
        # counts the changes of `routing_difference` and of reference; frames and audits carry theirs. The lock
        # makes an audit's check and append one step against a change (executor thread) and its reset.
        self.routing_generation = self._policy_generation = 0
        self._lock = threading.Lock()
        self.set_reference(reference)

    def set_reference(self, reference: DriftReference | None) -> None:
        """A new policy brings its own reference: every camera's monitor starts over (frames and audits of the
        previous policy's routing still in flight are left out of it)."""
        with self._lock:
            self.routing_generation += 1
            self._policy_generation = self.routing_generation  # audits of frames routed before it: not this policy's
            for recent in self.agreements.values():
                recent.clear()  # the agreement reported is the new policy's routing against the reference tier
            self.reference = reference if reference is not None and reference.thresholds else None
            self.monitors = {camera: DriftMonitor(self.reference, self.confirm) if self.reference else None
                             for camera in self.agreements}
        self.set_routing(*self._routing)

    def set_routing(self, mode: str, cost_weight: float | None, hysteresis: float) -> str:
        """The node's routing now (`Router.operating_point`); returns `routing_difference` against the reference
        ('' also without a reference) and applies it to every camera's monitor."""
        self._routing = (mode, cost_weight, hysteresis)
        reason = routing_difference(self.reference, mode, cost_weight, hysteresis) if self.reference else ""
        with self._lock:
            if reason != self._reason:
                self._reason, self.routing_generation = reason, self.routing_generation + 1
            for monitor in self.monitors.values():
                if monitor is not None:
                    monitor.set_routing_difference(reason)
        return reason

    def _audited(self, key: tuple, score: float, _reference_detections) -> None:
        camera, generation = key
        with self._lock:
            if generation < self._policy_generation:  # routed by the policy before the last load
                return
            recent = self.agreements[camera]
            recent.append(score)
            del recent[:-AUDIT_WINDOW]
            monitor = self.monitors.get(camera)
            if monitor is not None and generation == self.routing_generation:  # else: routed before a change
                monitor.audit(score)

    def monitoring(self, camera) -> bool:
        """Whether `frame` reads this camera's image features (a monitor is running for it)."""
        return self.monitors.get(camera) is not None

    def frame(self, camera, features: np.ndarray, tier: int, rgb: np.ndarray, detections,
              generation: int | None = None) -> tuple[bool, int, float]:
        """(audited, state, score) for one routed frame; `audited` = handed to the audit worker. `generation`: the
        `routing_generation` read before the frame was routed (None: now); a frame routed before the latest
        routing change adds no tier to the window, and its audit, if any, is not counted."""
        if camera not in self.agreements:
            raise KeyError(f"camera {camera!r} is not one of this DriftWatch's cameras {sorted(self.agreements)}")
        generation = self.routing_generation if generation is None else generation
        audited = bool(self.audit is not None and self.audit.due(camera)
                       and self.audit.offer((camera, generation), rgb, detections))
        monitor = self.monitors.get(camera)
        if monitor is None:
            return audited, UNKNOWN, float("nan")
        return (audited, *monitor.observe(features, tier if generation == self.routing_generation else None, rgb))

    def close(self) -> None:
        if self.audit is not None:
            self.audit.close()
        if hasattr(self._reference_tier, "close"):  # a ReferenceProcess: its child goes too
            self._reference_tier.close()

    def __enter__(self) -> "DriftWatch":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()
