"""Audit sampling off the hot path: a share of routed frames also runs through the reference tier (ROS-free).

Agreement between the routed output and the reference is the live accuracy proxy: F1 at IoU 0.5, where a
routed box matches at most one reference box of the same class (greedy, highest IoU first), F1 = 2 TP /
(routed + reference); two empty outputs agree fully (1.0). The audit worker holds one frame at a time: when it
is busy, or when its busy time over the last `window_s` exceeds `max_share` of the wall time, the sample is
skipped and counted, so the routed frame is never delayed and the audit's compute stays bounded.

The node runs the reference tier in a process of its own (`ReferenceProcess`: a single-threaded session at
the lowest CPU priority, nice 19), so an audit takes spare cycles rather than the routed frames' cores. Not a
niced thread in the node: a low-priority thread that holds Python's GIL when the cores are busy stops every
thread of the node until the scheduler gets back to it (measured: gaps of 0.2-1.2 s on both cameras at once,
frames lost in transport while the executor waited), while the worker thread here does little but wait on
the process.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Hashable

import numpy as np

from adaptive_perception.detector import Detections, box_iou
from adaptive_perception.errors import refuse_first

AGREEMENT_IOU = 0.5
MIN_SHARE = 0.001  # the smallest audit.max_share: at 79 ms a reference frame, about one audit every 79 s


def agreement(routed: Detections, reference: Detections, iou: float = AGREEMENT_IOU) -> float:
    """F1 of the routed boxes against the reference boxes (class-aware, one-to-one, IoU >= `iou`)."""
    if len(routed) == 0 and len(reference) == 0:
        return 1.0
    if len(routed) == 0 or len(reference) == 0:
        return 0.0
    routed_names, reference_names = np.array(routed.names()), np.array(reference.names())
    overlap = box_iou(routed.boxes.astype(np.float64), reference.boxes.astype(np.float64))
    overlap[routed_names[:, None] != reference_names[None, :]] = 0.0
    matched = 0
    pairs = np.argwhere(overlap >= iou)
    used_r, used_f = set(), set()
    for i, j in sorted(pairs.tolist(), key=lambda p: -overlap[p[0], p[1]]):
        if i not in used_r and j not in used_f:
            used_r.add(i)
            used_f.add(j)
            matched += 1
    return 2.0 * matched / (len(routed) + len(reference))


@dataclass(frozen=True)
class AuditSettings:
    """Node parameters `audit.*`."""

    every: int = 30  # audit one frame in `every` (per camera); 0 = off
    max_share: float = 0.25  # most of the wall time the audit worker may spend running the reference tier
    window_s: float = 10.0

    def validate(self) -> "AuditSettings":
        refuse_first([(self.every < 0, f"audit.every {self.every} must be >= 0 (0 = off)"),
                      (not MIN_SHARE <= self.max_share <= 1.0,
                       f"audit.max_share {self.max_share} must lie in [{MIN_SHARE}, 1]"),
                      (not self.window_s > 0, f"audit window {self.window_s} s must be > 0")])
        return self


class AuditWorker:
    """Runs `reference(rgb) -> Detections` on offered frames in a thread of its own and reports
    `on_result(key, agreement, reference_detections)`."""

    def __init__(self, reference: Callable[[np.ndarray], Detections],
                 on_result: Callable[[Hashable, float, Detections], None], settings: AuditSettings = AuditSettings(),
                 clock=time.monotonic) -> None:
        self.settings = settings.validate()
        self._reference, self._on_result, self._clock = reference, on_result, clock
        self._counts: dict[Hashable, int] = {}
        self._busy: deque[tuple[float, float]] = deque()  # (start, end) of recent audits
        self._pending: tuple[Hashable, np.ndarray, Detections] | None = None
        self._running = False
        self._cond = threading.Condition()
        self._closed = False
        self.audited = 0
        self.skipped_busy = 0  # due, but the worker was still auditing an earlier frame
        self.skipped_share = 0  # due, but the audit's share of the wall time was used up
        self.failed = 0  # the reference tier or the result's handler raised
        self.last_error = ""  # the latest such exception, as text
        self._thread = threading.Thread(target=self._loop, name="audit", daemon=True)
        self._thread.start()

    def due(self, camera: Hashable) -> bool:
        """Count one routed frame of `camera`; True when it is this camera's turn to be audited."""
        if not self.settings.every:
            return False
        count = self._counts.get(camera, 0)
        self._counts[camera] = count + 1
        return count % self.settings.every == 0

    def busy_share(self) -> float:
        """Share of the last `window_s` the worker spent auditing."""
        now = self._clock()
        start = now - self.settings.window_s
        with self._cond:
            while self._busy and self._busy[0][1] < start:
                self._busy.popleft()
            spent = sum(min(end, now) - max(begin, start) for begin, end in self._busy)
        return spent / self.settings.window_s

    @property
    def idle(self) -> bool:
        """True when no audit is running or waiting."""
        with self._cond:
            return not self._running and self._pending is None

    def offer(self, key: Hashable, rgb: np.ndarray, routed: Detections) -> bool:
        """Hand a due frame to the worker (a copy of `rgb`: the caller may reuse its buffer); False (and counted) when
        it is busy or over its share, and after `close` (the node's workers may offer frames of different cameras at
        once)."""
        over_share = self.busy_share() > self.settings.max_share
        # copied outside the lock (other cameras' offers wait on it), unless the worker is plainly busy
        frame = None if over_share or self._running or self._pending is not None else rgb.copy()
        with self._cond:
            if self._closed:
                return False
            if over_share:
                self.skipped_share += 1
                return False
            if self._running or self._pending is not None or frame is None:
                self.skipped_busy += 1
                return False
            self._pending = (key, frame, routed)
            self._cond.notify()
        return True

    def close(self) -> None:
        """Stop the worker (an audit running finishes first); later offers are refused."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=30)

    def __enter__(self) -> "AuditWorker":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._closed)
                if self._closed:
                    return
                key, rgb, routed = self._pending
                self._pending, self._running = None, True
            started = self._clock()
            try:
                reference = self._reference(rgb)
                score = agreement(routed, reference)
            except Exception as exc:  # the audit never takes the node down; a failure is counted
                self._failed(exc)
                continue
            finally:
                with self._cond:
                    self._busy.append((started, self._clock()))
                    self._running = False
            self.audited += 1
            try:
                self._on_result(key, score, reference)
            except Exception as exc:  # a failing handler loses this result, never the worker (nor later audits)
                self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        self.failed += 1
        self.last_error = f"{type(exc).__name__}: {exc}"


class ReferenceProcess:
    """The reference tier in a child process at the lowest CPU priority; call it like `DetectorTier.detect`.

    `tier_args` are `DetectorTier`'s arguments (picklable). The child is spawned (a fresh interpreter: no forked
    DDS or onnxruntime state), loads the tier and answers frames over a pipe; a call blocks (without the GIL)
    until the answer comes. A failure in the child comes back as its exception text; a dead child raises. Being
    spawned, the child imports the caller's main module again: a script that creates one needs the usual
    `if __name__ == "__main__":` guard."""

    def __init__(self, *tier_args, start_timeout_s: float = 120.0) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._lock = threading.Lock()
        self._process = context.Process(target=_serve_reference, args=(child, tier_args), name="audit-reference",
                                        daemon=True)
        try:
            self._process.start()
            child.close()
            started = self._conn.poll(start_timeout_s)
        except BaseException:  # Ctrl-C or SIGTERM while it starts (a configure cut short): the child goes at once,
            # before the closed pipe leaves it printing an EOFError traceback or loading a tier nobody will ask
            if self._process.pid is not None:
                self._process.kill()
                self._process.join(timeout=5)
            self._conn.close()
            raise
        if not started:
            self.close()
            raise RuntimeError(f"the audit's reference process did not start within {start_timeout_s:.0f} s")
        kind, value = self._conn.recv()
        if kind != "ready":
            self.close()
            raise RuntimeError(f"the audit's reference tier failed to load: {value}")
        self.pid = self._process.pid

    def __call__(self, rgb: np.ndarray) -> Detections:
        with self._lock:
            self._conn.send(rgb)
            kind, value = self._conn.recv()
        if kind != "ok":
            raise RuntimeError(f"reference tier: {value}")
        return value

    def close(self) -> None:
        try:
            self._conn.send(None)
        except (OSError, ValueError):
            pass
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout=5)
        self._conn.close()


def _serve_reference(conn, tier_args: tuple) -> None:
    """The reference process: nice 19, one DetectorTier, frames in and Detections out until None or EOF. Ctrl-C in
    a terminal reaches the whole process group: the node shuts this process down (None, or EOF when it is gone),
    so SIGINT is ignored here rather than ending it mid-frame with a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        os.nice(19)
    except (AttributeError, OSError):
        pass
    try:
        from adaptive_perception.detector import DetectorTier, fallback_already_said

        # the node asked for the same providers and said which it lacks; the same line would come again from here,
        # bare on its stderr. What only this process meets (a provider that cannot start here) is still said
        fallback_already_said(tier_args[1])
        tier = DetectorTier(*tier_args)
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            rgb = conn.recv()
        except (EOFError, OSError):
            return
        if rgb is None:
            return
        try:
            conn.send(("ok", tier.detect(rgb)))
        except Exception as exc:  # one bad frame costs one audit
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
