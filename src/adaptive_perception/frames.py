"""Newest-frame-only mailbox: when frames arrive faster than they are processed, older ones are dropped."""
from __future__ import annotations

import threading
from typing import Generic, Hashable, TypeVar

T = TypeVar("T")


class LatestFrameSlot(Generic[T]):
    """Holds at most one pending frame per camera; `take` serves cameras round-robin."""

    def __init__(self) -> None:
        self._pending: dict[Hashable, T] = {}
        self._order: list[Hashable] = []
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
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> tuple[Hashable, T] | None:
        """The oldest-waiting camera's newest frame, or None on timeout or after `close`."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._order or self._closed, timeout):
                return None
            if self._closed:
                return None
            camera = self._order.pop(0)
            return camera, self._pending.pop(camera)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Wake every waiter and discard pending frames."""
        with self._cond:
            self._closed = True
            self._pending.clear()
            self._order.clear()
            self._cond.notify_all()
