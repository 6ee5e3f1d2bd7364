"""Decode raw and compressed ROS image payloads into HxWx3 uint8 RGB arrays (no cv_bridge)."""
from __future__ import annotations

import cv2
import numpy as np

from adaptive_perception.errors import ImageDecodeError

# OpenCV's own warning for a damaged payload ("[ WARN:0@37.6] global grfmt_png.cpp:793 ... PNG input buffer is
# incomplete") reached the node's log unformatted, beside the node's warning that names the camera and the problem
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

# encoding -> (channels, numpy dtype, conversion to RGB or None when already RGB)
_RAW_LAYOUTS: dict[str, tuple[int, str, int | None]] = {
    "rgb8": (3, "u1", None),
    "bgr8": (3, "u1", cv2.COLOR_BGR2RGB),
    "rgba8": (4, "u1", cv2.COLOR_RGBA2RGB),
    "bgra8": (4, "u1", cv2.COLOR_BGRA2RGB),
    "mono8": (1, "u1", cv2.COLOR_GRAY2RGB),
    "8UC1": (1, "u1", cv2.COLOR_GRAY2RGB),
    "8UC3": (3, "u1", cv2.COLOR_BGR2RGB),  # OpenCV convention: 8UC3 is BGR
    "8UC4": (4, "u1", cv2.COLOR_BGRA2RGB),
    "rgb16": (3, "u2", None),
    "bgr16": (3, "u2", cv2.COLOR_BGR2RGB),
    "mono16": (1, "u2", cv2.COLOR_GRAY2RGB),
    "16UC1": (1, "u2", cv2.COLOR_GRAY2RGB),
    "bayer_rggb8": (1, "u1", cv2.COLOR_BayerBG2RGB),
    "bayer_bggr8": (1, "u1", cv2.COLOR_BayerRG2RGB),
    "bayer_gbrg8": (1, "u1", cv2.COLOR_BayerGR2RGB),
    "bayer_grbg8": (1, "u1", cv2.COLOR_BayerGB2RGB),
    # packed 4:2:2, two bytes per pixel
    "uyvy": (2, "u1", cv2.COLOR_YUV2RGB_UYVY),
    "yuv422": (2, "u1", cv2.COLOR_YUV2RGB_UYVY),
    "yuyv": (2, "u1", cv2.COLOR_YUV2RGB_YUY2),
    "yuv422_yuy2": (2, "u1", cv2.COLOR_YUV2RGB_YUY2),
}

SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_RAW_LAYOUTS)
MAX_SIDE = 16384  # pixels; larger frames are a publisher bug, not a camera
MAX_ASPECT = 64  # longer side / shorter side; beyond it a letterboxed frame has no rows left at the tiers' sizes


def check_size(width: int, height: int, what: str = "image") -> None:
    """Raise ImageDecodeError (kind bad_size) for sizes no tier can run on, in plain words."""
    if width <= 0 or height <= 0:
        problem = "is empty: width and height must be > 0"
    elif max(width, height) > MAX_SIDE:
        problem = f"is larger than {MAX_SIDE} pixels on a side"
    elif max(width, height) > MAX_ASPECT * min(width, height):
        problem = f"has an aspect ratio beyond {MAX_ASPECT}:1, so nothing of it is left after resizing to a tier's input"
    else:
        return
    raise ImageDecodeError(f"{what} size {width}x{height} {problem}; check the publisher's width and height fields",
                           "bad_size")


def decode_raw(
    data: bytes | bytearray | memoryview | np.ndarray,
    width: int,
    height: int,
    encoding: str,
    step: int,
    is_bigendian: bool = False,
) -> np.ndarray:
    """Return the pixels of a sensor_msgs/Image payload as a contiguous HxWx3 uint8 RGB array.

    `step` may exceed width * bytes-per-pixel (row padding); 16-bit data is scaled to 8 bits.
    """
    layout = _RAW_LAYOUTS.get(encoding)
    if layout is None:
        raise ImageDecodeError(
            f"image encoding '{encoding}' is not supported; publish one of: "
            + ", ".join(SUPPORTED_ENCODINGS), "unknown_encoding")
    channels, kind, conversion = layout
    check_size(width, height, f"'{encoding}' image")
    if channels == 2 and width % 2:  # packed 4:2:2: one U and one V per pair of pixels
        raise ImageDecodeError(f"'{encoding}' image size {width}x{height}: packed 4:2:2 pixels come in pairs, so its "
                               "width must be even; check the publisher's width field", "bad_size")
    itemsize = 2 if kind == "u2" else 1
    row_bytes = width * channels * itemsize
    if step < row_bytes:
        raise ImageDecodeError(
            f"image step {step} is smaller than width*bytes_per_pixel = {row_bytes} "
            f"for a {width}x{height} '{encoding}' image; fix the publisher's step field", "bad_step")
    buffer = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.view(np.uint8).ravel()
    needed = step * (height - 1) + row_bytes
    if buffer.size < needed:
        raise ImageDecodeError(
            f"image data has {buffer.size} bytes but a {width}x{height} '{encoding}' image with "
            f"step {step} needs at least {needed}; the message is truncated or its fields are wrong", "truncated")
    if buffer.size > step * height:  # as cv_bridge: the fields describe another image than the data holds
        raise ImageDecodeError(
            f"image data has {buffer.size} bytes but a {width}x{height} '{encoding}' image with step {step} holds "
            f"{step * height}; the publisher's width, height or step field is wrong", "oversized")
    if buffer.size == step * height:
        rows = buffer.reshape(height, step)
    else:  # the last row may legally omit its padding
        rows = np.lib.stride_tricks.as_strided(buffer, shape=(height, step), strides=(step, 1))
    pixels = rows[:, :row_bytes]
    if itemsize == 2:
        dtype = np.dtype(">u2" if is_bigendian else "<u2")
        pixels = np.ascontiguousarray(pixels).view(dtype).astype(np.uint16)
        pixels = (pixels >> 8).astype(np.uint8)
    pixels = pixels.reshape(height, width, channels)
    if conversion is None:
        return np.ascontiguousarray(pixels)
    if channels == 1:
        pixels = pixels[:, :, 0]
    return cv2.cvtColor(np.ascontiguousarray(pixels), conversion)


def decode_compressed(data: bytes | bytearray | memoryview | np.ndarray, format: str = "") -> np.ndarray:
    """Return the pixels of a sensor_msgs/CompressedImage payload (jpeg, png, ...) as HxWx3 uint8 RGB."""
    buffer = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.view(np.uint8).ravel()
    if buffer.size == 0:
        raise ImageDecodeError(f"compressed image (format '{format}') has no data", "truncated")
    decoded = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    if decoded is None:
        raise ImageDecodeError(
            f"compressed image (format '{format}', {buffer.size} bytes) could not be decoded; "
            "publish jpeg or png data", "corrupt_compressed")
    check_size(decoded.shape[1], decoded.shape[0], f"'{format}' compressed image")
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
