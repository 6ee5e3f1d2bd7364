"""Newest-frame-only mailbox: when frames arrive faster than they are processed, older ones are dropped."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Generic, Hashable, Iterator, TypeVar

T = TypeVar("T")


class LatestFrameSlot(Generic[T]):
    """Holds at most one pending frame per camera; `take` serves cameras round-robin: of the cameras with a frame
    waiting, the one served least recently (never served first, then the one waiting longest). Serving the
    longest-waiting frame instead is not round-robin when cameras publish in rounds: the camera whose frame
    arrives first in each round is served twice in a row whenever both arrive while the worker is busy with it,
    and the other camera waits through two inferences (the 2-camera soak's stalls of 2026-12-05).

    Several workers may draw from one slot with `items`: a camera is then held by the worker processing its
    frame, and no other worker takes that camera's next frame until it is done, so each camera's outputs stay in
    order and every frame's routing context is its previous frame's output."""

    def __init__(self) -> None:
        self._pending: dict[Hashable, T] = {}
        self._order: list[Hashable] = []  # cameras with a frame waiting, in the order their frames began waiting
        self._served: dict[Hashable, int] = {}  # camera -> the number of the take that last served it
        self._held: set[Hashable] = set()  # cameras whose frame a worker of `items` is processing
        self._takes = 0
        self._cond = threading.Condition()
        self._closed = False
        self.dropped = 0

    def put(self, camera: Hashable, frame: T) -> bool:
        """Store the newest frame of a camera; returns True when it replaced an unprocessed one."""
        with self._cond:
            replaced = camera in self._pending
            if replaced:
                self.dropped += 1
            else:
                self._order.append(camera)
            self._pending[camera] = frame
            self._cond.notify_all()  # a worker woken for a held camera waits on; another may take this frame
            return replaced

    def take(self, timeout: float | None = None, hold: bool = False) -> tuple[Hashable, T] | None:
        """The newest frame of the waiting camera served least recently (cameras held by a worker wait), or None
        on timeout or after `close`; `hold`: the camera stays held until `release`."""
        with self._cond:
            def ready() -> list[Hashable]:
                return [camera for camera in self._order if camera not in self._held]

            if not self._cond.wait_for(lambda: ready() or self._closed, timeout) or self._closed:
                return None
            camera = min(ready(), key=lambda c: self._served.get(c, -1))  # ties: the first in _order
            self._order.remove(camera)
            self._takes += 1
            self._served[camera] = self._takes
            if hold:
                self._held.add(camera)
            return camera, self._pending.pop(camera)

    def release(self, camera: Hashable) -> None:
        """A held camera's frame is done: its next frame may be taken."""
        with self._cond:
            self._held.discard(camera)
            self._cond.notify_all()

    def items(self, poll_s: float = 0.1) -> Iterator[tuple[Hashable, T]]:
        """Take items as they come until the slot is closed (checked every `poll_s` while idle); each item's
        camera is held until the consumer asks for the next item (or stops)."""
        while True:
            item = self.take(timeout=poll_s, hold=True)
            if item is not None:
                try:
                    yield item
                finally:
                    self.release(item[0])
            elif self._closed:
                return

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> list[Hashable]:
        """Wake every waiter and discard pending frames; returns the cameras whose frame was discarded."""
        with self._cond:
            self._closed = True
            discarded = list(self._pending)
            self._pending.clear()
            self._order.clear()
            self._cond.notify_all()
            return discarded


@dataclass
class CameraCounters:
    """Where each frame of one camera went: a frame is processed, dropped by the newest-frame rule, failed,
    or lost before the node (published but never delivered: the transport or a full reader queue)."""

    received: int = 0
    lost_before_node: int = 0
    dropped: int = 0  # replaced in the LatestFrameSlot before the worker took it
    processed: int = 0
    failed: int = 0
    first_sequence: int | None = None  # publisher sequence number of the first frame delivered (losses count after it)
    _last_sequence: int | None = field(default=None, repr=False)

    def arrived(self, sequence: int | None) -> None:
        """Count a delivered frame; `sequence` is its publisher's sequence number (gaps are losses).

        A sequence number at or below the last one (a restarted or second publisher) starts a new count."""
        self.received += 1
        if self.first_sequence is None:
            self.first_sequence = sequence
        if sequence is not None and self._last_sequence is not None and sequence > self._last_sequence:
            self.lost_before_node += sequence - self._last_sequence - 1
        self._last_sequence = sequence

    def restart_sequence(self) -> None:
        """The next frame starts a new count: frames published while the node did not subscribe (inactive) were
        never on their way to it, so the gap before it is no loss."""
        self._last_sequence = None

    def as_dict(self) -> dict[str, int]:
        return {"received": self.received, "lost_before_node": self.lost_before_node, "dropped": self.dropped,
                "processed": self.processed, "failed": self.failed}
