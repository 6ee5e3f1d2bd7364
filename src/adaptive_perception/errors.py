"""Exceptions raised for bad user input; each message names the input and the fix."""
from __future__ import annotations


class AdaptivePerceptionError(Exception):
    """Base class of every error this package raises on purpose."""


class ImageDecodeError(AdaptivePerceptionError, ValueError):
    """An image message cannot be turned into an HxWx3 uint8 array; `kind` names the problem for counting
    (unknown_encoding, bad_size, bad_step, truncated, corrupt_compressed)."""

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
