"""Exceptions raised for bad user input; each message names the input and the fix."""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator


class AdaptivePerceptionError(Exception):
    """Base class of every error this package raises on purpose."""


class ImageDecodeError(AdaptivePerceptionError, ValueError):
    """An image message cannot be turned into an HxWx3 uint8 array; `kind` names the problem for counting
    (unknown_encoding, bad_size, bad_step, truncated, oversized, corrupt_compressed)."""

    def __init__(self, message: str, kind: str = "undecodable") -> None:
        super().__init__(message)
        self.kind = kind


class TierFailure(AdaptivePerceptionError):
    """A detector tier raised while running on a frame (the frame itself decoded fine)."""

    def __init__(self, tier: str, cause: Exception) -> None:
        super().__init__(f"tier '{tier}' failed: {type(cause).__name__}: {cause}")
        self.tier = tier


class ModelFileError(AdaptivePerceptionError):
    """A model file is missing, unreadable or not a YOLOv8 detection ONNX export."""

    def __init__(self, path: object, problem: str, fix: str = "") -> None:
        self.path = str(path)
        self.problem = problem
        message = f"model file '{self.path}': {problem}"
        if fix:
            message += f" ({fix})"
        super().__init__(message)


class BagError(AdaptivePerceptionError):
    """A rosbag2 file cannot be read or holds nothing to replay."""


class ConfigError(AdaptivePerceptionError, ValueError):
    """A parameter or option has a value that cannot work."""


def read_json(path: str | Path, what: str, keys: tuple[str, ...] = ()) -> dict:
    """The JSON object in `path` holding `keys`, or an error naming the file, what it should be and what is wrong
    (a missing file or a folder raises the OSError, which names the path)."""
    import json

    try:
        value = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdaptivePerceptionError(f"{path} is not valid JSON ({exc}); expected {what}") from None
    missing = [key for key in keys if key not in value] if isinstance(value, dict) else ["a JSON object"]
    if missing:
        raise AdaptivePerceptionError(f"{path} lacks {', '.join(missing)}; expected {what}")
    return value


def refuse_first(checks: list[tuple[bool, str]]) -> None:
    """ConfigError with the message of the first failing check: each names the one parameter that is wrong."""
    for failed, message in checks:
        if failed:
            raise ConfigError(message)


def write_probe(folder: str | Path, name: str = "write") -> None:
    """Write a file in `folder` and remove it again (OSError if that fails): root passes every permission check and
    a read-only mount none. The file is created exclusively under a fresh name, so a name planted in the folder (a
    symbolic link to another file) is never written through."""
    import tempfile

    with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{name}.", suffix=".probe"):
        pass


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """An exclusive lock on the file `path` (created where missing, never through a link planted there) held while
    the block runs; another process's block on the same file waits for it."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock
