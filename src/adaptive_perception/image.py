"""Decode raw and compressed ROS image payloads into HxWx3 uint8 RGB arrays (no cv_bridge)."""
from __future__ import annotations

import cv2
import numpy as np

from adaptive_perception.errors import ImageDecodeError

# OpenCV's own lines for a damaged payload ("[ WARN:0@37.6] global grfmt_png.cpp:793 ... PNG input buffer is
# incomplete", "[ERROR:0@0.03] global loadsave.cpp ... can't read header") reached the node's log unformatted, beside
# the node's warning that names the camera and the problem (its failures are raised, not only logged)
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

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
MAX_COMPRESSED_PIXELS = 64_000_000  # above 8K UHD (33 M); decoded, 192 MB of BGR
JPEG_HEADER_SCAN = 1 << 17  # bytes of a JPEG searched for its frame header (EXIF and ICC segments come before it)


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


def compressed_size(buffer: np.ndarray) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR or a JPEG's frame header, without decoding; None for other formats or a
    header too damaged to read (the decoder then says what is wrong)."""
    head = buffer[:32].tobytes()
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR" and len(head) >= 24:
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if not head.startswith(b"\xff\xd8"):
        return None
    # marker segments up to the frame header (SOF0-15 but DHT, JPG and DAC), within the first JPEG_HEADER_SCAN
    # bytes and markers: a crafted run of fill bytes or empty segments must not hold a worker for a second
    data, at = buffer[:JPEG_HEADER_SCAN].tobytes(), 2
    for _ in range(JPEG_HEADER_SCAN // 4):
        if at + 4 > len(data) or data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no length field
            at += 2
            continue
        length = data[at + 2] << 8 | data[at + 3]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if at + 9 > len(data):
                return None
            return data[at + 7] << 8 | data[at + 8], data[at + 5] << 8 | data[at + 6]
        if marker == 0xDA or length < 2:  # scan data before any frame header: not a JPEG to trust
            return None
        at += 2 + length
    return None


def decode_compressed(data: bytes | bytearray | memoryview | np.ndarray, format: str = "") -> np.ndarray:
    """Return the pixels of a sensor_msgs/CompressedImage payload (jpeg, png, ...) as HxWx3 uint8 RGB. A PNG or
    JPEG is sized from its header first: a few hundred kilobytes of PNG can unpack into gigabytes."""
    buffer = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.view(np.uint8).ravel()
    if buffer.size == 0:
        raise ImageDecodeError(f"compressed image (format '{format}') has no data", "truncated")
    size = compressed_size(buffer)
    if size is not None:
        check_size(*size, f"'{format}' compressed image")
        if size[0] * size[1] > MAX_COMPRESSED_PIXELS:
            raise ImageDecodeError(f"'{format}' compressed image size {size[0]}x{size[1]} is over "
                                   f"{MAX_COMPRESSED_PIXELS / 1e6:g} M pixels, refused before decoding; check the "
                                   "publisher's resolution", "bad_size")
    decoded = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    if decoded is None:
        raise ImageDecodeError(
            f"compressed image (format '{format}', {buffer.size} bytes) could not be decoded; "
            "publish jpeg or png data", "corrupt_compressed")
    check_size(decoded.shape[1], decoded.shape[0], f"'{format}' compressed image")
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
