"""Recording serialized ROS messages into segmented rosbag2 MCAP files with a disk budget (ROS-free).

Each segment is a complete rosbag2 folder (`<prefix>_<NNNN>/`, MCAP storage, message schemas embedded, so
Foxglove shows typed fields and `rosbags` reads it back). A segment closes when it holds `segment_bytes`
of messages or spans `segment_s` seconds; the oldest closed segments are removed while the recording is over
`budget_bytes` (never the open one). A process killed mid-write loses at most the open segment; every
closed one stays readable. One recorder writes a folder at a time: it holds an exclusive lock on the folder while it
lives, so a second process (two nodes given one evidence folder and camera, two `record --out` of one folder) is
refused rather than numbering over its segments and removing its open one under the budget.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import time
from pathlib import Path

from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from adaptive_perception.errors import ConfigError

def ros_typestore(prefixes: list[str] | None = None):
    """ROS 2 Jazzy's standard types plus every message definition installed under the ament prefixes
    (`share/<package>/msg/*.msg`: this project's interfaces, vision_msgs), so any topic the node publishes
    can be written with its schema."""
    store = get_typestore(Stores.ROS2_JAZZY)
    found = {}
    for prefix in prefixes if prefixes is not None else os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if not prefix:
            continue
        for path in sorted(Path(prefix, "share").glob("*/msg/*.msg")):
            name = f"{path.parent.parent.name}/msg/{path.stem}"
            if name not in store.fielddefs:
                found.update(get_types_from_msg(path.read_text(), name))
    if found:
        store.register(found)
    return store


def message_definition(store, msgtype: str) -> str:
    """The ros2msg text of a type with its dependencies (what an MCAP schema record holds)."""
    return store.generate_msgdef(msgtype, ros_version=2)[0]


RETRY_S = 1.0  # after a failed write, messages are refused this long before the disk is tried again


def _try_lock(folder: Path) -> int | None:
    """A descriptor of `folder` holding its exclusive lock (closing it lets go), or None when another holds it."""
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return descriptor
    except BlockingIOError:
        os.close(descriptor)
        return None
    except OSError:
        os.close(descriptor)
        raise


def _lock_folder(folder: Path) -> int:
    """An exclusive lock on `folder` (see `_try_lock`); ConfigError when another recorder holds it."""
    for attempt in range(5):  # another process's `in_use` holds it for an instant while it looks
        if attempt:
            time.sleep(0.02)
        descriptor = _try_lock(folder)
        if descriptor is not None:
            return descriptor
    raise ConfigError(f"{folder} is being recorded into by another running recorder (a node's evidence or `record`): "
                      "give each its own folder (each node its own evidence.dir or camera, each `record` its own --out)")


def in_use(folder: Path) -> bool:
    """Whether a recorder (of any process, this one's included) holds `folder`'s lock now."""
    try:
        descriptor = _try_lock(folder)
    except OSError:
        return False
    if descriptor is None:
        return True
    os.close(descriptor)
    return False


class SegmentedRecorder:
    """Writes (topic, type, time, CDR bytes) into rolling rosbag2 MCAP segments under `folder`."""

    def __init__(self, folder: str | Path, store, prefix: str = "recording", segment_bytes: int = 1 << 30,
                 segment_s: float = 300.0, budget_bytes: int = 20 << 30) -> None:
        if segment_bytes <= 0 or segment_s <= 0 or budget_bytes < segment_bytes:
            raise ConfigError(f"recording limits: a segment of {segment_bytes / 2**20:g} MB / {segment_s:g} s and a "
                              f"budget of {budget_bytes / 2**20:g} MB must be > 0, with the budget at least one "
                              "segment (record: --segment-mb, --segment-s, --budget-mb)")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        if not os.access(self.folder, os.W_OK):  # a read-only mount or folder: now, not at the first message
            raise ConfigError(f"{self.folder} is not writable (permissions or a read-only file system): give a folder "
                              "this user can write")
        self._lock = _lock_folder(self.folder)  # before it numbers or removes anything there
        self.store, self.prefix = store, prefix
        # only this recorder's own segment folders are numbered and removed; anything else in `folder` is left alone
        self._segment_re = re.compile(rf"^{re.escape(prefix)}_(\d{{4,}})$")
        self.segment_bytes, self.segment_s, self.budget_bytes = segment_bytes, segment_s, budget_bytes
        try:
            existing = [int(m.group(1)) for p in self.folder.iterdir() if (m := self._segment_re.match(p.name))]
        except OSError:
            self.release()  # never a folder held by a recorder that was not made
            raise
        self._next = max(existing, default=0) + 1  # a restart continues the numbering, never overwrites
        self._writer: Writer | None = None
        self._path: Path | None = None
        self._connections: dict[tuple[str, str], object] = {}
        self._bytes = 0
        self._first_ns: int | None = None
        self.closed_segments: list[Path] = []
        self.removed_segments: list[Path] = []
        self.broken_segments: list[Path] = []  # a write or close failed (a full disk): left as a kill -9 leaves them
        self.messages = 0  # taken into segments (those of a broken segment included: see `lost`)
        self.lost = 0  # messages taken into segments that broke before they closed: not readable with rosbags
        self._segment_messages = 0
        self._failed_at: float | None = None  # monotonic time of the last failure

    def write(self, topic: str, msgtype: str, stamp_ns: int, cdr: bytes) -> None:
        """Write one message. Raises when the disk refuses it (OSError): the segment it broke is given up (later
        messages go to a new one), and for RETRY_S after a failure messages are refused at once, not tried one
        folder each."""
        if msgtype not in self.store.fielddefs:
            raise ConfigError(f"topic {topic}: message type {msgtype} has no definition here; source the "
                              "workspace that provides it (AMENT_PREFIX_PATH) before recording, or, without ROS, "
                              "give its package's prefix: recording.ros_typestore(prefixes=[...])")
        if self._failed_at is not None and time.monotonic() - self._failed_at < RETRY_S:
            raise OSError(f"not written: writing failed under {self.folder} less than {RETRY_S:g} s ago")
        try:
            if self._writer is not None and (self._bytes >= self.segment_bytes or
                                             stamp_ns - self._first_ns >= self.segment_s * 1e9):
                self._close_segment()
            if self._writer is None:
                self._open_segment(stamp_ns)
            key = (topic, msgtype)
            if key not in self._connections:
                self._connections[key] = self._writer.add_connection(topic, msgtype, typestore=self.store)
            self._writer.write(self._connections[key], stamp_ns, bytes(cdr))
        except Exception:  # OSError from a full disk; rosbags' writer can fail otherwise once its file is broken
            self._failed_at = time.monotonic()
            self._give_up_segment()
            raise
        self._failed_at = None
        self._bytes += len(cdr)
        self.messages += 1
        self._segment_messages += 1

    def close(self) -> None:
        if self._writer is not None:
            self._close_segment()

    def release(self) -> None:
        """Let another recorder have the folder (after `close`; the process's exit does it too)."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _open_segment(self, stamp_ns: int) -> None:
        self._path = self.folder / f"{self.prefix}_{self._next:04d}"
        self._next += 1
        self._writer = Writer(self._path, version=9, storage_plugin=StoragePlugin.MCAP)
        self._connections, self._bytes, self._first_ns, self._segment_messages = {}, 0, stamp_ns, 0
        self._writer.open()

    def _close_segment(self) -> None:
        try:
            self._writer.close()
        except Exception:
            self._give_up_segment()
            raise
        self.closed_segments.append(self._path)
        self._writer, self._path = None, None
        self._enforce_budget()

    def _give_up_segment(self) -> None:
        """The open segment failed: let go of its writer (its file stays, unclosed, as a kill leaves one: closing it
        would write an index over a half-written chunk) so the next write starts anew; its messages count as lost."""
        if self._path is not None:
            self.broken_segments.append(self._path)
            self.lost += self._segment_messages
        writer, self._writer, self._path, self._segment_messages = self._writer, None, None, 0
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.abort()

    @property
    def open_bytes(self) -> int:
        """Bytes written into the open segment (0 when none is open)."""
        return self._bytes if self._writer is not None else 0

    def _enforce_budget(self) -> None:
        """Remove the oldest closed segments while the folder's segments exceed the budget; never the newest, the
        one just written (a segment can end a little over its size: the message that crossed it stays in it)."""
        def size(path: Path) -> int:
            return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())

        segments = sorted((p for p in self.folder.iterdir() if self._segment_re.match(p.name) and p.is_dir()),
                          key=lambda p: int(self._segment_re.match(p.name).group(1)))
        total = sum(size(p) for p in segments)
        for oldest in segments[:-1]:
            if total <= self.budget_bytes or oldest == self._path:
                break
            total -= size(oldest)
            shutil.rmtree(oldest)
            self.removed_segments.append(oldest)
