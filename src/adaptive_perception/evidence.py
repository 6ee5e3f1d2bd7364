"""Evidence capture: the camera frames around a drift event, and the node's outputs, as rosbag2 MCAP (ROS-free).

Per camera, a ring holds the last `pre_frames` received frames and the outputs published for them (references
to the message objects: nothing is copied or serialized on the processing path). A frame is identified by a key
that grows with every frame received (the node's arrival count), and its outputs name that key: never by header
stamps, which cameras send as zero, repeated, backwards or from another clock. Messages are written in the order
they arrived, each with the wall-clock time it arrived as its log time (never decreasing within a capture), so an
evidence bag replays as the node saw it whatever the stamps inside the messages say. `trigger(camera)` starts an
event: the ring and the camera's next `post_frames` frames (with their outputs, which are still taken while
the next LINGER_FRAMES frames arrive: processing lags reception) go to a background thread that
serializes them and writes them with a `recording.SegmentedRecorder` into the camera's folder under the
evidence folder (`<folder>/<camera topic with / as _>/`), which keeps it under the disk budget (oldest evidence
first, never the event being written). Every event is its own segment (`evidence_NNNN/`), closed when the event
ends or at `close()`, so a process killed mid-event loses at most the segments being written and every earlier one
stays readable with `rosbags`. An event that would outgrow the budget on its own keeps its beginning (the frames
before the trigger and the first after it) and leaves the rest out, counted (`cut_at_budget`). A write the disk
refuses (full) costs the event's open segment, left unclosed as a kill leaves it; the event's later messages go to a
new segment once the disk takes them, and the event's end reports how many it lost (`event_failures`).

While a camera's event runs, another trigger for it is ignored (the evidence is already being kept); when the
writer falls behind by more than `max_pending` messages, messages are skipped and counted, never queued
without bound.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from adaptive_perception.bag import unclosed_inside
from adaptive_perception.errors import write_probe
from adaptive_perception.recording import SegmentedRecorder, in_use

@dataclass(frozen=True)
class EvidenceSettings:
    folder: str = ""  # empty: evidence capture off
    pre_frames: int = 60  # frames kept before the trigger, per camera (2 s at 30 Hz)
    post_frames: int = 150  # frames recorded after it (5 s at 30 Hz)
    budget_mb: float = 2048.0  # disk budget of each camera's evidence folder

    @property
    def enabled(self) -> bool:
        return bool(self.folder)


def _check_folder(folder: Path) -> None:
    """Create the evidence folder and write a probe file in it; OSError in plain words when either fails."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_probe(folder, "evidence")
    except OSError as exc:
        raise OSError(f"cannot write there: {exc.strerror or exc}") from exc


LINGER_FRAMES = 10  # after the last recorded frame, outputs for it are still taken for this many more frames


def _margin(budget_bytes: int) -> int:
    """Bytes of an evidence budget kept for what is not message data: MCAP's records and indexes, metadata.yaml."""
    return max(64 << 10, budget_bytes // 50)


@dataclass
class _Camera:
    ring: deque  # (log time ns, frame key, topic, msgtype, message, is_frame), in arrival order
    frames: int = 0  # frames in the ring
    post_left: int = 0  # frames still to record in the running event
    linger_left: int = 0  # frames to wait for the last frames' outputs; an event runs while either is > 0
    end_key: int = 0  # the last recorded frame's key
    start_key: int | None = None  # the running event's first frame's key (None until it has one)
    end_pending: bool = False  # the event's end waits for a slot in the writer's queue

    @property
    def running(self) -> bool:
        return self.post_left > 0 or self.linger_left > 0 or self.end_pending


class EvidenceCapture:
    """`frame(...)` for every received camera message, `output(...)` for every published output, `trigger(camera)`
    on drift. `serialize(message) -> bytes` turns a message into CDR (rclpy.serialization.serialize_message in
    the node), called on the writer thread only."""

    def __init__(self, settings: EvidenceSettings, store, serialize: Callable[[object], bytes],
                 max_pending: int = 4096,
                 on_event: Callable[[str, Path | None, int, int], None] | None = None,
                 clock: Callable[[], int] | None = None, cameras: Sequence[str] = ()) -> None:
        """`cameras`: the camera topics whose folders are taken now (each recorder locks its folder, so one that
        another node or `record` writes is refused here, not at the first drift event); others at their first
        event."""
        if not settings.enabled:
            raise ValueError("evidence: no folder given (EvidenceSettings.folder, the node's evidence.dir); capture "
                             "is off without one")
        if settings.pre_frames < 0 or settings.post_frames < 1 or not settings.budget_mb > 0:
            raise ValueError(f"evidence: pre_frames {settings.pre_frames} must be >= 0, post_frames "
                             f"{settings.post_frames} >= 1 and budget_mb {settings.budget_mb} > 0")
        self.root = Path(settings.folder).expanduser()  # '~/evidence' in a params file, where no shell expands it
        _check_folder(self.root)  # now, not at the first DRIFT, when the evidence is wanted
        # segments an earlier process never closed (killed while writing): kept, named (`train retrain` skips them);
        # not those another running node or `record` is writing now
        self.unclosed = [path for path in unclosed_inside(self.root) if not in_use(path.parent)]
        self.settings, self.serialize, self.on_event = settings, serialize, on_event
        self.store = store
        self.recorders: dict[str, SegmentedRecorder] = {}  # per camera, on the writer thread
        self.segments: list[Path] = []  # every closed evidence segment, in order
        self._cameras: dict[str, _Camera] = {}
        self._lock = threading.Lock()
        # the log time of a message: when it arrived (ns), the wall clock at start plus the monotonic clock since, so a
        # clock set by NTP during an event neither stretches the bag nor squeezes it
        wall, steady = time.time_ns(), time.monotonic_ns()
        self._clock = clock or (lambda: wall + time.monotonic_ns() - steady)
        self._last_ns = 0  # the latest log time given: a clock set back never reorders the bag
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._ends_waiting = False  # an event's end found the queue full (`_send_end`)
        self.events = self.written = self.skipped = self.failed = self.cut_at_budget = 0
        self._cut_in_event: dict[str, int] = {}  # per camera, on the writer thread: messages the budget left out
        # per camera, on the writer thread: messages its latest ended event could not write (a full disk), and
        # those its running event could not write so far
        self.failed_in_event: dict[str, int] = {}
        self._failing: dict[str, int] = {}
        self._lost_seen: dict[str, int] = {}  # per camera: its recorder's `lost` already counted as failed
        self.last_error = ""
        try:
            for camera in cameras:
                self._recorder(camera)
        except Exception:
            self._release()
            raise
        self._thread = threading.Thread(target=self._write_loop, name="evidence", daemon=True)
        self._thread.start()

    def _camera(self, camera: str) -> _Camera:
        if camera not in self._cameras:
            self._cameras[camera] = _Camera(deque())
        return self._cameras[camera]

    def frame(self, camera: str, topic: str, msgtype: str, key: int, message: object) -> None:
        """A frame received; `key` grows with every frame of the camera (the node's arrival count)."""
        self._add(camera, topic, msgtype, key, message, True)

    def output(self, camera: str, topic: str, msgtype: str, key: int, message: object) -> None:
        """An output published for the frame of that `key`."""
        self._add(camera, topic, msgtype, key, message, False)

    def _add(self, camera: str, topic: str, msgtype: str, key: int, message: object, is_frame: bool) -> None:
        with self._lock:
            state = self._camera(camera)
            self._send_ends()
            self._last_ns = max(self._last_ns + 1, self._clock())
            entry = (self._last_ns, key, topic, msgtype, message, is_frame)
            if state.post_left > 0:
                if is_frame and state.start_key is None:
                    state.start_key = key
                if not is_frame and (state.start_key is None or key < state.start_key):
                    return  # a late output of a frame that is not in the event
                self._put(("write", camera, entry))
                if is_frame:
                    state.post_left -= 1
                    state.end_key = key
                    if state.post_left == 0:
                        state.linger_left = LINGER_FRAMES
                return
            if state.linger_left > 0:  # the event's frames are recorded; their outputs may still come
                if not is_frame and key <= state.end_key:
                    self._put(("write", camera, entry))
                elif is_frame:
                    state.linger_left -= 1
                    if state.linger_left == 0:  # never dropped (the segment would stay open): sent once there is a slot
                        state.end_pending = True
                        self._send_end(camera, state)
            state.ring.append(entry)
            state.frames += is_frame
            # pre_frames frames at most, and outputs (two per frame on each of two topic sets) bounded with them
            while state.ring and (state.frames > self.settings.pre_frames
                                  or len(state.ring) > 5 * max(1, self.settings.pre_frames)):
                state.frames -= state.ring.popleft()[5]

    def trigger(self, camera: str) -> bool:
        """Start an event for `camera`; False when one is already running for it."""
        with self._lock:
            state = self._camera(camera)
            self._send_ends()
            if state.running:
                return False
            self.events += 1
            oldest = min((e[1] for e in state.ring if e[5]), default=None)
            for entry in state.ring:
                if oldest is not None and entry[1] >= oldest:  # outputs of frames that left the ring stay out
                    self._put(("write", camera, entry))
            state.ring.clear()
            state.frames = 0
            state.post_left = self.settings.post_frames
            state.start_key = oldest
            return True

    def capturing(self, camera: str) -> bool:
        with self._lock:
            return camera in self._cameras and self._cameras[camera].running

    def _send_end(self, camera: str, state: _Camera) -> None:
        """The event's end, if it waits, into the writer's queue when there is a slot: never waited for here, on the
        node's processing path (a writer stuck on a hung disk froze frame processing with a full queue). Tried again
        with every camera's next message and by the writer once it has caught up (`_send_ends`); the camera's next
        event starts only after its end is sent."""
        if state.end_pending:
            try:
                self._queue.put_nowait(("end", camera, None))
                state.end_pending = False
            except queue.Full:
                self._ends_waiting = True

    def _send_ends(self) -> None:
        """Every camera's waiting end (under the lock): a camera silent after its event still has its segment closed.
        One flag read when none waits (every message on the processing path calls it)."""
        if not self._ends_waiting:
            return
        self._ends_waiting = False  # set again by `_send_end` for an end the queue still has no slot for
        for camera, state in self._cameras.items():
            self._send_end(camera, state)

    def _put(self, item) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.skipped += 1

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                action, camera, entry = item
                if action == "end":
                    self._end(camera)
                else:
                    log_ns, _, topic, msgtype, message, _ = entry
                    recorder = self._recorder(camera)
                    if camera in self._cut_in_event:  # the event reached the budget: its rest is left out, whole
                        self._cut(camera)
                        continue
                    cdr = self.serialize(message)
                    # one event never outgrows the budget (a margin for MCAP's own records and metadata.yaml)
                    if recorder.open_bytes + len(cdr) > recorder.budget_bytes - _margin(recorder.budget_bytes):
                        self._cut(camera)
                        continue
                    recorder.write(topic, msgtype, log_ns, cdr)
                    self.written += 1
            except Exception as exc:  # a full disk or a bad message costs evidence, never the node
                self._failed(camera, exc)
            finally:
                if item is not None and self._ends_waiting and self._queue.empty():  # caught up: an end that
                    with self._lock:  # waited for a slot gets one
                        self._send_ends()
                self._queue.task_done()

    def _failed(self, camera: str, exc: Exception, refused: int = 1) -> None:
        """`refused` messages not written (0: a segment's close failed), and those already in the segment the
        failure left unclosed (lost with it)."""
        recorder = self.recorders.get(camera)
        lost = recorder.lost - self._lost_seen.get(camera, 0) if recorder is not None else 0
        if recorder is not None:
            self._lost_seen[camera] = recorder.lost
        self.failed += refused + lost
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._failing[camera] = self._failing.get(camera, 0) + refused + lost

    def _cut(self, camera: str) -> None:
        self.cut_at_budget += 1
        self._cut_in_event[camera] = self._cut_in_event.get(camera, 0) + 1

    def _recorder(self, camera: str) -> SegmentedRecorder:
        if camera not in self.recorders:
            budget = max(1, int(self.settings.budget_mb * 2**20))  # `_write_loop` keeps an event within it
            self.recorders[camera] = SegmentedRecorder(
                self.root / (camera.strip("/").replace("/", "_") or "camera"), self.store,
                prefix="evidence", segment_bytes=budget, segment_s=1e9, budget_bytes=budget)
        return self.recorders[camera]

    def _end(self, camera: str) -> None:
        recorder, cut, closed = self.recorders.get(camera), self._cut_in_event.pop(camera, 0), None
        if recorder is not None:
            before = len(recorder.closed_segments)
            try:
                recorder.close()
            except Exception as exc:  # its writer is let go (`SegmentedRecorder`): the next event starts anew
                self._failed(camera, exc, refused=0)
            if len(recorder.closed_segments) > before:
                closed = recorder.closed_segments[-1]
                self.segments.append(closed)
        failed = self.failed_in_event[camera] = self._failing.pop(camera, 0)
        if self.on_event is not None and (closed is not None or cut or failed):  # nothing written: said too
            self.on_event(camera, closed, cut, failed)

    def event_failures(self) -> dict[str, int]:
        """Per camera with a loss: the messages its running event could not write so far, else those its latest
        ended event could not write (so a loss is reported until an event of that camera is written whole)."""
        failing, ended = dict(self._failing), dict(self.failed_in_event)
        return {camera: n for camera in {*failing, *ended} if (n := failing.get(camera) or ended.get(camera, 0))}

    def flush(self) -> None:
        """Wait until everything handed to the writer is on disk (the open event's segment stays open)."""
        self._queue.join()

    def close(self, timeout_s: float = 60.0) -> None:
        """Write what is pending, close the open segments, stop the writer; a writer stuck on a hung disk is given
        `timeout_s` in all (shutdown waited for it for ever) and keeps its folders: nobody else writes there."""
        deadline = time.monotonic() + timeout_s
        with self._lock:  # no new write for a running event after this (its post and linger frames are zeroed)
            ending = [camera for camera, state in self._cameras.items() if state.running]
            for camera in ending:
                state = self._cameras[camera]
                state.post_left = state.linger_left = 0
                state.end_pending = False
        try:  # outside the lock: the processing path goes on while the writer catches up
            for item in [("end", camera, None) for camera in ending] + [None]:
                self._queue.put(item, timeout=max(0.0, deadline - time.monotonic()))
        except queue.Full:
            pass
        self._thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if not self._thread.is_alive():
            self._release()

    def __enter__(self) -> "EvidenceCapture":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def _release(self) -> None:
        for recorder in self.recorders.values():  # their folders, for the next configure or another recorder
            recorder.release()
