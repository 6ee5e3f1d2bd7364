"""Routing over a profiled split, frame by frame, as the node does it: one simulator for labels, BC data,
the PPO environment and the evaluation.

The context features come from the simulated router's own previous output (the detections the node would
have published for the tier it chose), exactly as `features.next_context` builds them. Two settings:

- per-frame: every frame is processed by the chosen tier and shown its own detections;
- streaming: the node's semantics on a carried clock (`WorkerClock`). Frames arrive at 30 Hz; one worker;
  a frame that arrives while the worker is busy replaces the waiting one (the LatestFrameSlot); an output
  is published when its inference ends and stands until the next output; every frame is scored, at its
  arrival, with the output standing at that moment (nothing before the first output). Cost is busy time
  over wall time, so no routing exceeds a 100 % duty cycle.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable

import numpy as np

from adaptive_perception.detector import TIERS
from adaptive_perception.features import FEATURE_SIZE, IMAGE_FEATURES, RoutingContext, median_size
from adaptive_perception.training.labels import MAX_STALE, Costs, empty_quality, exact_seconds, stale_quality
from adaptive_perception.training.profile import PUBLISH_CONF, Profile

FRAME_RATE_HZ = 30
FRAME_PERIOD_S = 1 / FRAME_RATE_HZ


@dataclass
class Split:
    """A profiled split with its quality table and the published output statistics per tier."""

    profile: Profile
    quality: np.ndarray  # (N, 3, MAX_STALE + 1)
    empty: np.ndarray  # (N,) quality of showing nothing on the frame (before a stream's first output)
    counts: np.ndarray = field(init=False)  # (N, 3) published detections
    mean_scores: np.ndarray = field(init=False)  # (N, 3)
    median_sizes: np.ndarray = field(init=False)  # (N, 3) `features.median_size` of the published boxes

    def __post_init__(self) -> None:
        n = len(self.profile)
        self.counts = np.zeros((n, len(TIERS)), np.int64)
        self.mean_scores = np.zeros((n, len(TIERS)), np.float32)
        self.median_sizes = np.zeros((n, len(TIERS)), np.float32)
        frame_hw = tuple(self.profile.meta["frame_hw"])
        for tier in range(len(TIERS)):
            for f, dets in enumerate(self.profile.tier_detections(tier, PUBLISH_CONF)):
                self.counts[f, tier] = len(dets)
                self.mean_scores[f, tier] = dets[:, 4].mean() if len(dets) else 0.0
                self.median_sizes[f, tier] = median_size(dets[:, :4], frame_hw)

    @staticmethod
    def build(profile: Profile) -> "Split":
        return Split(profile, stale_quality(profile), empty_quality(profile))

    def observation(self, frame: int, context: RoutingContext) -> np.ndarray:
        """The 1028 routing features the node would compute for this frame in this context."""
        out = np.empty(FEATURE_SIZE, np.float32)
        out[:IMAGE_FEATURES] = self.profile.features[frame]
        out[IMAGE_FEATURES:] = context.vector()
        return out

    def context_after(self, frame: int, tier: int) -> RoutingContext:
        """The node's context after processing `frame` with `tier`."""
        return RoutingContext(int(self.counts[frame, tier]), float(self.mean_scores[frame, tier]), tier,
                              float(self.median_sizes[frame, tier]))


class WorkerClock:
    """The node's one worker on a fixed-rate frame clock, carried exactly (no rounding to whole frames).

    Frame i arrives at i / rate. `run(cost)` processes the frame waiting now, from when both it and the worker
    are there, for `cost` seconds; meanwhile arriving frames replace each other, so the next frame is the newest
    one arrived by the end (a frame arriving exactly then counts), or, if none arrived, the next to arrive."""

    def __init__(self, frames: int, rate_hz: float = FRAME_RATE_HZ) -> None:
        self.frames = frames
        self.period = Fraction(1) / Fraction(str(rate_hz))
        self.next_frame = 0
        self.free_at = Fraction(0)

    @property
    def done(self) -> bool:
        return self.next_frame >= self.frames

    def arrival(self, frame: int) -> Fraction:
        return frame * self.period

    def run(self, cost_s: Fraction | float) -> tuple[int, Fraction, Fraction]:
        """(frame, start, end) of the next job; the output is published at `end`."""
        frame = self.next_frame
        start = max(self.free_at, self.arrival(frame))
        end = start + Fraction(cost_s)
        self.free_at = end
        newest = int(end / self.period)  # floor: the last frame arrived by `end`
        self.next_frame = newest if newest > frame else frame + 1
        return frame, start, end


class Stream:
    """Steps through one sequence: `observation()` for the frame to route, `step(tier)` routes it."""

    def __init__(self, split: Split, frames: np.ndarray, costs: Costs, streaming: bool) -> None:
        self.split, self.frames, self.costs, self.streaming = split, frames, costs, streaming
        self.clock = WorkerClock(len(frames))
        self.context = RoutingContext()
        self.busy_s = Fraction(0)  # inference time inside the sequence's wall time
        self._standing: tuple[int, int] | None = None  # (position, tier) of the output published last
        self._settled = 0  # positions before this one have their shown output fixed

    @property
    def position(self) -> int:
        return self.clock.next_frame

    @property
    def done(self) -> bool:
        return self.clock.done

    @property
    def frame(self) -> int:
        return int(self.frames[self.position])

    def observation(self) -> np.ndarray:
        return self.split.observation(self.frame, self.context)

    def _show_until(self, until: int) -> list[tuple[int, int, int]]:
        """Settle positions [settled, until): each shows the standing output (source frame, tier) or nothing (-1, -1)."""
        covered = []
        for position in range(self._settled, min(until, len(self.frames))):
            if self._standing is None:
                covered.append((int(self.frames[position]), -1, -1))
            else:
                source, tier = self._standing
                covered.append((int(self.frames[position]), int(self.frames[source]), tier))
        self._settled = max(self._settled, min(until, len(self.frames)))
        return covered

    def shown_quality(self, target: int, source: int, tier: int) -> float:
        """Quality of frame `target` showing `tier`'s output of frame `source` (tier -1: nothing shown)."""
        if tier < 0:
            return float(self.split.empty[target])
        stale = int(np.searchsorted(self.frames, target) - np.searchsorted(self.frames, source))
        return float(self.split.quality[source, tier, min(stale, MAX_STALE)])

    def step(self, tier: int, cost_ms: float | None = None) -> tuple[list[tuple[int, int, int]], float]:
        """Route the current frame to `tier` (its cost: `cost_ms`, else the tier's cost on the named device).

        Returns the frames whose shown output became fixed by this step, as (frame, source frame, tier) with
        source -1 for nothing shown, and their summed quality. Per frame that is the frame itself. Streaming it
        is the frames that arrived while the previous output stood, and, when the sequence ends, the rest."""
        position = self.position
        cost = self.costs.ms[tier] if cost_ms is None else cost_ms
        if not self.streaming:
            self.clock.next_frame += 1
            covered = [(int(self.frames[position]), int(self.frames[position]), tier)]
            self._settled = position + 1
            quality = float(self.split.quality[self.frames[position], tier, 0])
            self.busy_s += exact_seconds(cost)
        else:
            _, start, end = self.clock.run(exact_seconds(cost))
            wall_end = self.clock.arrival(len(self.frames))
            self.busy_s += max(Fraction(0), min(end, wall_end) - start)
            # frames arriving before this output's publication show the output standing until then
            covered = self._show_until(math.ceil(end / self.clock.period) if end < wall_end else len(self.frames))
            self._standing = (position, tier)
            if self.done:
                covered += self._show_until(len(self.frames))
            quality = sum(self.shown_quality(*shown) for shown in covered)
        self.context = self.split.context_after(int(self.frames[position]), tier)
        return covered, quality


# chooser(frame index, observation, context) -> tier index
Chooser = Callable[[int, np.ndarray, RoutingContext], int]


@dataclass
class Trace:
    """One routing row on a split: who showed what on every frame, and what it cost."""

    shown: np.ndarray  # (N, 2) per frame: source frame and tier of the detections shown for it (-1, -1: nothing)
    processed_tiers: list[int]  # tier of every inference run, in order
    processed_frames: list[int]
    switches: int
    quality: np.ndarray  # (N,) quality of what was shown on each frame
    busy_ms: float  # inference time inside the split's wall time (streaming) or in all (per frame)

    def mix(self) -> np.ndarray:
        counts = np.bincount(self.processed_tiers, minlength=len(TIERS))
        return counts / max(counts.sum(), 1)


def rollout(split: Split, costs: Costs, chooser: Chooser, streaming: bool) -> Trace:
    n = len(split.profile)
    shown = np.full((n, 2), -1, np.int64)
    quality = np.zeros(n, np.float32)
    tiers, processed, switches, busy = [], [], 0, Fraction(0)
    for frames in split.profile.sequences():
        stream = Stream(split, frames, costs, streaming)
        previous = None
        while not stream.done:
            frame, context = stream.frame, stream.context
            tier = int(chooser(frame, stream.observation(), context))
            covered, _ = stream.step(tier)
            for target, source, used in covered:
                shown[target] = (source, used)
                quality[target] = stream.shown_quality(target, source, used)
            tiers.append(tier)
            processed.append(frame)
            switches += int(previous is not None and tier != previous)
            previous = tier
        busy += stream.busy_s
    return Trace(shown, tiers, processed, switches, quality, float(busy * 1000))
