"""What the running node has done, per camera and per tier, and the health levels it implies (ROS-free).

The node records every frame's fate here (arrived, lost before the node, dropped by the newest-frame rule,
processed by a tier, failed); `/diagnostics`, the Prometheus exporter and MLflow read snapshots. Totals count
since configure; rates, shares and percentiles cover the last `window_s` seconds, so a level reflects the present.
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from adaptive_perception.errors import ConfigError
from adaptive_perception.frames import CameraCounters

OK, WARN, ERROR = 0, 1, 2  # the values of diagnostic_msgs/DiagnosticStatus levels
TIER_FAILURE = "tier_failed"  # the failure kind of an exception inside a detector tier


@dataclass(frozen=True)
class HealthSettings:
    """Thresholds of the diagnostic levels (node parameters `diagnostics.*`)."""

    frame_budget_ms: float = 33.3  # WARN when a camera's node-time p95 exceeds it
    max_drop_share: float = 0.2  # WARN when more of a camera's frames than this are dropped or lost
    stall_s: float = 3.0  # ERROR when frames arrive but none was processed for this long
    window_s: float = 10.0  # rates, shares and percentiles cover this many recent seconds

    def validate(self) -> "HealthSettings":
        if not self.frame_budget_ms > 0 or not 0.0 <= self.max_drop_share <= 1.0:
            raise ConfigError(f"diagnostics.frame_budget_ms {self.frame_budget_ms} must be > 0 and "
                              f"diagnostics.max_drop_share {self.max_drop_share} in [0, 1]")
        if not self.stall_s > 0 or not self.window_s > 0:
            raise ConfigError(f"diagnostics.stall_s {self.stall_s} and diagnostics.window_s {self.window_s} must be > 0")
        # finite and at most an hour: the window keeps every frame's figures it covers, and a stall never seen or a
        # budget never exceeded is no setting
        for name, value in (("frame_budget_ms", self.frame_budget_ms), ("stall_s", self.stall_s),
                            ("window_s", self.window_s)):
            if not value <= (3.6e6 if name == "frame_budget_ms" else 3600.0):
                raise ConfigError(f"diagnostics.{name} {value} must be at most an hour")
        return self


AHEAD_SLACK_NS = 100_000_000  # a stamp this far ahead is the node's clock lagging (a bag's /clock at 40 Hz): age 0


def frame_age_ms(stamp_ns: int, now_ns: int) -> float:
    """Milliseconds from a frame's header stamp to `now_ns` on the node's clock; NaN where the frame carries no
    stamp (0) or one more than 100 ms ahead of that clock (a camera clock out of sync): no age to report, where the
    difference read as 57 years or a negative age. A stamp up to 100 ms ahead (with use_sim_time, /clock ticks at
    40 Hz behind the frames) is age 0."""
    if stamp_ns <= 0 or stamp_ns > now_ns + AHEAD_SLACK_NS:
        return math.nan
    return max(now_ns - stamp_ns, 0) / 1e6


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (linear interpolation), NaN for no values."""
    return float(np.percentile(values, q)) if values else math.nan


@dataclass
class _Processed:
    t: float
    tier: str
    node_ms: float
    overhead_ms: float
    frame_age_ms: float


@dataclass
class CameraStats:
    """One camera's totals since configure and its recent events (monotonic seconds)."""

    counters: CameraCounters = field(default_factory=CameraCounters)
    failures_by_kind: dict[str, int] = field(default_factory=dict)
    arrivals: deque[float] = field(default_factory=deque)
    losses: deque[tuple[float, int]] = field(default_factory=deque)
    drops: deque[float] = field(default_factory=deque)
    failures: deque[tuple[float, str]] = field(default_factory=deque)
    processed: deque[_Processed] = field(default_factory=deque)
    qos_incompatible: int = 0  # publishers whose QoS this camera's subscription cannot accept
    last_arrival: float | None = None
    last_processed: float | None = None
    first_arrival: float | None = None  # since the latest activation
    tier_frames: dict[str, int] = field(default_factory=dict)  # frames each tier processed since configure
    session_first_arrival: float | None = None  # since configure

    def prune(self, oldest: float) -> None:
        for events, when in ((self.arrivals, lambda e: e), (self.drops, lambda e: e),
                             (self.losses, lambda e: e[0]), (self.failures, lambda e: e[0]),
                             (self.processed, lambda e: e.t)):
            while events and when(events[0]) < oldest:
                events.popleft()


class Telemetry:
    """Thread-safe recorder: the subscription callbacks and the worker write, the reporters read."""

    def __init__(self, cameras: tuple[str, ...] | list[str], tiers: tuple[str, ...] | list[str],
                 settings: HealthSettings = HealthSettings(), sink=None, clock=time.monotonic) -> None:
        """`sink` (e.g. metrics.PrometheusMetrics) receives every event as well, outside the lock's statistics."""
        self.settings = settings.validate()
        self.sink = sink
        self.tiers = tuple(tiers)
        self.cameras: dict[str, CameraStats] = {camera: CameraStats() for camera in cameras}
        self._clock = clock
        self._lock = threading.Lock()
        self.started = clock()
        self.active, self.active_since = True, self.started  # the node: subscribed to its cameras since

    def set_active(self, active: bool) -> None:
        """The node subscribed to its cameras (lifecycle active) or stopped; an inactive node's cameras WARN."""
        with self._lock:
            self.active, self.active_since = active, self._clock()
            for stats in self.cameras.values():
                stats.first_arrival = None  # a stall counts from the first frame since
                stats.counters.restart_sequence()  # and losses: frames sent while inactive were never sent to it

    def _stats(self, camera: str, now: float) -> CameraStats:
        stats = self.cameras[camera]
        stats.prune(now - self.settings.window_s)
        return stats

    # ---- recording (hot path: a lock, a few appends) -----------------------------------------
    def arrived(self, camera: str, sequence: int | None) -> None:
        with self._lock:
            now = self._clock()
            stats = self._stats(camera, now)
            before = stats.counters.lost_before_node
            stats.counters.arrived(sequence)
            lost = stats.counters.lost_before_node - before
            if lost:
                stats.losses.append((now, lost))
            stats.arrivals.append(now)
            stats.last_arrival = now
            if stats.first_arrival is None:
                stats.first_arrival = now
            if stats.session_first_arrival is None:
                stats.session_first_arrival = now
        if self.sink is not None:
            self.sink.arrived(camera, lost)

    def dropped(self, camera: str) -> None:
        with self._lock:
            now = self._clock()
            stats = self._stats(camera, now)
            stats.counters.dropped += 1
            stats.drops.append(now)
        if self.sink is not None:
            self.sink.dropped(camera)

    def processed(self, camera: str, tier: str, node_ms: float, overhead_ms: float, frame_age_ms: float) -> None:
        with self._lock:
            now = self._clock()
            stats = self._stats(camera, now)
            stats.counters.processed += 1
            stats.tier_frames[tier] = stats.tier_frames.get(tier, 0) + 1
            stats.processed.append(_Processed(now, tier, node_ms, overhead_ms, frame_age_ms))
            stats.last_processed = now
        if self.sink is not None:
            self.sink.processed(camera, tier, node_ms, overhead_ms, frame_age_ms)

    def failed(self, camera: str, kind: str, tier: str | None = None) -> None:
        """A frame that produced no output; `kind` names the problem (a decode problem, or TIER_FAILURE)."""
        key = f"{TIER_FAILURE}:{tier}" if kind == TIER_FAILURE else kind
        with self._lock:
            now = self._clock()
            stats = self._stats(camera, now)
            stats.counters.failed += 1
            stats.failures_by_kind[key] = stats.failures_by_kind.get(key, 0) + 1
            stats.failures.append((now, key))
        if self.sink is not None:
            self.sink.failed(camera, key)

    def incompatible_qos(self, camera: str) -> None:
        """A publisher on this camera's topic offers a QoS the subscription cannot accept."""
        with self._lock:
            self.cameras[camera].qos_incompatible += 1
        if self.sink is not None:
            self.sink.incompatible_qos(camera)

    # ---- reading ----------------------------------------------------------------------------
    def session_report(self, camera: str) -> dict[str, float]:
        """One camera's whole session since configure: the frame totals, each tier's share of the processed frames,
        the share of frames dropped or lost, and the mean rate from its first frame to its last output."""
        with self._lock:
            s = self.cameras[camera]
            counters = s.counters.as_dict()
            processed = counters["processed"]
            span = (s.last_processed - s.session_first_arrival
                    if s.last_processed is not None and s.session_first_arrival is not None else 0.0)
            arrived = counters["received"] + counters["lost_before_node"]
            return {**{f"frames_{k}": float(v) for k, v in counters.items()},
                    **{f"{tier}_share": s.tier_frames.get(tier, 0) / processed if processed else 0.0
                       for tier in self.tiers},
                    "drop_share": (counters["dropped"] + counters["lost_before_node"]) / arrived if arrived else 0.0,
                    "fps": processed / span if span > 0 else math.nan}

    def camera_report(self, camera: str) -> dict[str, object]:
        """Totals, recent rates and percentiles of one camera, with its level and the reasons for it."""
        with self._lock:
            now = self._clock()
            s = self._stats(camera, now)
            span = max(min(self.settings.window_s, now - self.started), 1e-9)
            recent = list(s.processed)
            arrived = len(s.arrivals) + sum(n for _, n in s.losses)
            not_processed = len(s.drops) + sum(n for _, n in s.losses)
            report: dict[str, object] = {
                **{f"frames_{k}": v for k, v in s.counters.as_dict().items()},
                "failures_by_kind": dict(s.failures_by_kind),
                "qos_incompatible": s.qos_incompatible,
                "fps": len(recent) / span,
                "drop_share": not_processed / arrived if arrived else 0.0,
                "node_ms_p50": percentile([p.node_ms for p in recent], 50),
                "node_ms_p95": percentile([p.node_ms for p in recent], 95),
                "router_overhead_ms_p95": percentile([p.overhead_ms for p in recent], 95),
                "frame_age_ms_p50": percentile(ages := [p.frame_age_ms for p in recent if p.frame_age_ms >= 0], 50),
                "frame_age_ms_p95": percentile(ages, 95),
                "frames_age_unknown": len(recent) - len(ages),
            }
            for tier in self.tiers:
                times = [p.node_ms for p in recent if p.tier == tier]
                report[f"{tier}_share"] = len(times) / len(recent) if recent else 0.0
                report[f"{tier}_ms_p50"] = percentile(times, 50)
                report[f"{tier}_ms_p95"] = percentile(times, 95)
            recent_failures = [kind for _, kind in s.failures]
            # since the last output or the first frame since activation, whichever came last
            start = now if s.first_arrival is None else s.first_arrival
            stalled_for = now - (start if s.last_processed is None else max(start, s.last_processed))
            receiving = s.last_arrival is not None and now - s.last_arrival < self.settings.stall_s
            level, reasons = OK, []
            tier_failures = sorted({k.split(":", 1)[1] for k in recent_failures if k.startswith(TIER_FAILURE)})
            if tier_failures:
                level = ERROR
                reasons.append(f"tier {', '.join(tier_failures)} failed on recent frames")
            if receiving and stalled_for >= self.settings.stall_s:
                level = ERROR
                reasons.append(f"frames arrive but none was processed for {stalled_for:.1f} s")
            warnings = []
            arrived_since = s.first_arrival is not None  # a frame since the activation (set_active resets it)
            quiet_for = now - (s.last_arrival if arrived_since else self.active_since)
            if not self.active:
                warnings.append("node inactive: not subscribed to this camera (lifecycle activate)")
            elif quiet_for >= self.settings.stall_s:
                quiet = f"no frame for {quiet_for:.1f} s" if arrived_since else \
                    f"no frame in {quiet_for:.1f} s since activation"
                if s.qos_incompatible:
                    why = (f"{s.qos_incompatible} publisher(s) on this topic offer a QoS this subscription cannot "
                           "accept, so their frames never arrive (match qos.reliability to the camera's)")
                elif arrived_since:
                    why = "has the camera stopped publishing?"
                else:
                    why = "is anything publishing on this topic (ros2 topic info)?"
                warnings.append(f"{quiet}: {why}")
            if recent and report["node_ms_p95"] > self.settings.frame_budget_ms:
                warnings.append(f"node time p95 {report['node_ms_p95']:.1f} ms exceeds the frame budget "
                                f"{self.settings.frame_budget_ms:.1f} ms")
            if report["drop_share"] > self.settings.max_drop_share:
                warnings.append(f"{report['drop_share']:.0%} of frames dropped or lost (limit "
                                f"{self.settings.max_drop_share:.0%})")
            if s.losses:
                warnings.append(f"{sum(n for _, n in s.losses)} frames lost before the node: check the camera driver's "
                                "DDS profile (README, Transport)")
            if report["frames_age_unknown"]:
                warnings.append(f"{report['frames_age_unknown']} recent frames carry a header stamp of 0 or one ahead "
                                "of this node's clock, so their age is unknown: stamp frames at capture, on a clock in "
                                "sync with this machine's (with use_sim_time: is /clock published?)")
            bad = sorted({k for k in recent_failures if not k.startswith(TIER_FAILURE)})
            if bad:
                warnings.append(f"bad frames ({', '.join(bad)})")
            if warnings and level == OK:
                level = WARN
            reasons += warnings
            if not reasons:
                reasons.append("frames processed" if s.counters.processed else
                               "frames arriving" if s.counters.received else "no frames yet")
            report["level"], report["message"] = level, "; ".join(reasons)
            return report

    def tier_report(self, tier: str) -> dict[str, object]:
        """One tier over all cameras: frames it ran on recently, their node time and the tier's failures."""
        with self._lock:
            now = self._clock()
            times, failures, total_failures = [], 0, 0
            for camera in self.cameras:
                s = self._stats(camera, now)
                times += [p.node_ms for p in s.processed if p.tier == tier]
                failures += sum(1 for _, k in s.failures if k == f"{TIER_FAILURE}:{tier}")
                total_failures += s.failures_by_kind.get(f"{TIER_FAILURE}:{tier}", 0)
        level = ERROR if failures else OK
        message = f"failed on {failures} recent frames" if failures else (
            f"ran on {len(times)} recent frames" if times else "idle")
        return {"frames": len(times), "node_ms_p50": percentile(times, 50), "node_ms_p95": percentile(times, 95),
                "failures": total_failures, "level": level, "message": message}


def key_values(report: dict[str, object]) -> list[tuple[str, str]]:
    """A report as diagnostic key/value strings: counts as integers, times and shares with 2 decimals,
    failures as one `failed_<kind>` per kind; `level` and `message` are the status's own fields."""
    out = []
    for key, value in report.items():
        if key in ("level", "message"):
            continue
        if isinstance(value, dict):
            out += [(f"failed_{kind}", str(count)) for kind, count in sorted(value.items())]
        elif isinstance(value, float):
            out.append((key, f"{value:.2f}"))
        else:
            out.append((key, str(value)))
    return out


class ErrorLog:
    """Decides which failures to log: the first of each (camera, kind) at once, repeats at most every
    `interval_s` with the number suppressed, so a throttled log never hides that a new kind appeared."""

    def __init__(self, interval_s: float = 5.0, clock=time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}

    def admit(self, camera: str, kind: str) -> int | None:
        """None to stay silent, else the number of same-kind failures suppressed since the last log."""
        key, now = (camera, kind), self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._suppressed.pop(key, 0)
