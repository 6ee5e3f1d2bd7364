"""Routing over a profiled split, frame by frame, as the node does it: one simulator for labels, BC data,
the PPO environment and the evaluation.

The context features come from the simulated router's own previous output (the detections the node would
have published for the tier it chose), exactly as `features.next_context` builds them. Two settings:

- per-frame: every frame is processed by the chosen tier;
- streaming: frames arrive on a 30 Hz clock; while the chosen tier runs (its cost on the named device),
  frames that arrive are dropped except the newest, which is processed next (the node's latest-frame
  slot); each dropped frame is scored with the stale detections of the last processed frame.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from adaptive_perception.detector import TIERS
from adaptive_perception.features import FEATURE_SIZE, IMAGE_FEATURES, RoutingContext
from adaptive_perception.training.labels import MAX_STALE, Costs, stale_quality
from adaptive_perception.training.profile import PUBLISH_CONF, Profile

FRAME_PERIOD_S = 1 / 30


@dataclass
class Split:
    """A profiled split with its quality table and the published output statistics per tier."""

    profile: Profile
    quality: np.ndarray  # (N, 3, MAX_STALE + 1)
    counts: np.ndarray = field(init=False)  # (N, 3) published detections
    mean_scores: np.ndarray = field(init=False)  # (N, 3)

    def __post_init__(self) -> None:
        n = len(self.profile)
        self.counts = np.zeros((n, len(TIERS)), np.int64)
        self.mean_scores = np.zeros((n, len(TIERS)), np.float32)
        for tier in range(len(TIERS)):
            for f, dets in enumerate(self.profile.tier_detections(tier, PUBLISH_CONF)):
                self.counts[f, tier] = len(dets)
                self.mean_scores[f, tier] = dets[:, 4].mean() if len(dets) else 0.0

    @staticmethod
    def build(profile: Profile) -> "Split":
        return Split(profile, stale_quality(profile))

    def observation(self, frame: int, context: RoutingContext) -> np.ndarray:
        """The 1028 routing features the node would compute for this frame in this context."""
        out = np.empty(FEATURE_SIZE, np.float32)
        out[:IMAGE_FEATURES] = self.profile.features[frame]
        out[IMAGE_FEATURES:] = context.vector()
        return out

    def context_after(self, frame: int, tier: int, gap_frames: int) -> RoutingContext:
        return RoutingContext(int(self.counts[frame, tier]), float(self.mean_scores[frame, tier]), tier,
                              gap_frames * FRAME_PERIOD_S)


class Stream:
    """Steps through one sequence: `observation()` for the frame to route, `step(tier)` routes it."""

    def __init__(self, split: Split, frames: np.ndarray, costs: Costs, streaming: bool) -> None:
        self.split, self.frames, self.costs, self.streaming = split, frames, costs, streaming
        self.position = 0
        self.context = RoutingContext()

    @property
    def done(self) -> bool:
        return self.position >= len(self.frames)

    @property
    def frame(self) -> int:
        return int(self.frames[self.position])

    def observation(self) -> np.ndarray:
        return self.split.observation(self.frame, self.context)

    def advance_for(self, tier: int) -> int:
        """Frames the clock moves on while `tier` runs: the next processed frame is the newest arrived one."""
        if not self.streaming:
            return 1
        return max(1, int(self.costs.ms[tier] / 1000.0 / FRAME_PERIOD_S))

    def step(self, tier: int) -> tuple[list[tuple[int, int, int]], float]:
        """Route the current frame to `tier`. Returns the frames it covers as (frame, source frame, tier)
        and their summed quality; the cost is the caller's (one inference of `tier`)."""
        frame = self.frame
        advance = min(self.advance_for(tier), len(self.frames) - self.position)
        covered = [(int(self.frames[self.position + k]), frame, tier) for k in range(advance)]
        quality = float(sum(self.split.quality[frame, tier, min(k, MAX_STALE)] for k in range(advance)))
        self.position += advance
        self.context = self.split.context_after(frame, tier, advance)
        return covered, quality


# chooser(frame index, observation, context) -> tier index
Chooser = Callable[[int, np.ndarray, RoutingContext], int]


@dataclass
class Trace:
    """One routing row on a split: who showed what on every frame, and what it cost."""

    shown: np.ndarray  # (N, 2) per frame: source frame and tier of the detections shown for it
    processed_tiers: list[int]  # tier of every inference run, in order
    processed_frames: list[int]
    switches: int
    quality: np.ndarray  # (N,) quality of what was shown on each frame

    def mix(self) -> np.ndarray:
        counts = np.bincount(self.processed_tiers, minlength=len(TIERS))
        return counts / max(counts.sum(), 1)


def rollout(split: Split, costs: Costs, chooser: Chooser, streaming: bool) -> Trace:
    n = len(split.profile)
    shown = np.full((n, 2), -1, np.int64)
    quality = np.zeros(n, np.float32)
    tiers, processed, switches = [], [], 0
    for frames in split.profile.sequences():
        stream = Stream(split, frames, costs, streaming)
        previous = None
        while not stream.done:
            frame, context = stream.frame, stream.context
            tier = int(chooser(frame, stream.observation(), context))
            covered, _ = stream.step(tier)
            for k, (target, source, used) in enumerate(covered):
                shown[target] = (source, used)
                quality[target] = split.quality[source, used, min(k, MAX_STALE)]
            tiers.append(tier)
            processed.append(frame)
            switches += int(previous is not None and tier != previous)
            previous = tier
    return Trace(shown, tiers, processed, switches, quality)
