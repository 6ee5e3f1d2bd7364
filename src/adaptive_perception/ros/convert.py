"""Conversion between ROS messages and the core's numpy types."""
from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header
from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

from adaptive_perception.detector import Detections
from adaptive_perception.errors import ImageDecodeError
from adaptive_perception.image import decode_compressed, decode_raw


@dataclass(frozen=True)
class ReceivedImage:
    """A camera message as it arrived: its serialized bytes (what the node subscribes to, `raw=True`) and the
    fields read from them, the pixels a read-only view into those bytes. rclpy's own deserialization builds a
    Python message and copies the pixels (0.5 ms for 640x480 rgb8 here) for every frame, also those the worker
    never takes; this reads a few header fields and copies nothing."""

    cdr: bytes
    compressed: bool  # sensor_msgs/CompressedImage, else sensor_msgs/Image
    sec: int
    nanosec: int
    frame_id: str
    data: np.ndarray  # uint8 view into `cdr`
    height: int = 0  # Image only
    width: int = 0
    encoding: str = ""
    is_bigendian: bool = False
    step: int = 0
    format: str = ""  # CompressedImage only

    @property
    def header(self) -> Header:
        header = Header(frame_id=self.frame_id)
        header.stamp.sec, header.stamp.nanosec = self.sec, self.nanosec
        return header

    @property
    def stamp_ns(self) -> int:
        return self.sec * 1_000_000_000 + self.nanosec


class _CdrReader:
    """Plain CDR (XCDR1) of the two image types: a 4-byte encapsulation header, then each field aligned to its
    size counted from the end of that header; strings and byte sequences are a uint32 length, then the bytes."""

    def __init__(self, cdr: bytes) -> None:
        if len(cdr) < 4 or cdr[0] != 0 or cdr[1] not in (0, 1):
            raise ImageDecodeError(f"image message of {len(cdr)} bytes does not start with a plain CDR "
                                   "encapsulation header; publish sensor_msgs/Image or CompressedImage", "truncated")
        self.cdr, self.order, self.pos = cdr, "<" if cdr[1] == 1 else ">", 4

    def _take(self, code: str):
        size = struct.calcsize(code)
        self.pos += -(self.pos - 4) % size
        try:
            value = struct.unpack_from(self.order + code, self.cdr, self.pos)[0]
        except struct.error:
            raise ImageDecodeError(f"image message of {len(self.cdr)} bytes ends inside its fields; the message is "
                                   "truncated", "truncated") from None
        self.pos += size
        return value

    def uint32(self) -> int:
        return self._take("I")

    def int32(self) -> int:
        return self._take("i")

    def uint8(self) -> int:
        return self._take("B")

    def octets(self) -> np.ndarray:
        length = self.uint32()
        if self.pos + length > len(self.cdr):
            raise ImageDecodeError(f"image message of {len(self.cdr)} bytes declares {length} bytes of data at byte "
                                   f"{self.pos}; the message is truncated", "truncated")
        self.pos += length
        return np.frombuffer(self.cdr, np.uint8, length, self.pos - length)

    def string(self) -> str:
        return bytes(self.octets()).rstrip(b"\0").decode("utf-8", "replace")


def parse_image(cdr: bytes, compressed: bool) -> ReceivedImage:
    """A serialized sensor_msgs/Image (or CompressedImage) as a `ReceivedImage`; ImageDecodeError (truncated)
    where the bytes end early."""
    reader = _CdrReader(bytes(cdr))
    sec, nanosec, frame_id = reader.int32(), reader.uint32(), reader.string()
    if compressed:
        image_format = reader.string()
        return ReceivedImage(reader.cdr, True, sec, nanosec, frame_id, reader.octets(), format=image_format)
    height, width, encoding = reader.uint32(), reader.uint32(), reader.string()
    is_bigendian, step = bool(reader.uint8()), reader.uint32()
    return ReceivedImage(reader.cdr, False, sec, nanosec, frame_id, reader.octets(), height, width, encoding,
                         is_bigendian, step)


def image_to_rgb(msg: Image | CompressedImage | ReceivedImage) -> np.ndarray:
    """HxWx3 uint8 RGB pixels of an Image or CompressedImage message, as received or deserialized."""
    if isinstance(msg, CompressedImage) or (isinstance(msg, ReceivedImage) and msg.compressed):
        return decode_compressed(msg.data, msg.format)
    return decode_raw(msg.data, msg.width, msg.height, msg.encoding, msg.step, bool(msg.is_bigendian))


def rgb_to_msg(rgb: np.ndarray, header: Header) -> Image:
    """An rgb8 Image message of HxWx3 uint8 pixels."""
    msg = Image(header=header, height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", step=rgb.shape[1] * 3)
    msg.data = np.ascontiguousarray(rgb).tobytes()
    return msg


def rgb_to_compressed(rgb: np.ndarray, header: Header, quality: int = 85) -> CompressedImage:
    """A jpeg CompressedImage message of HxWx3 uint8 RGB pixels."""
    _, jpeg = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    msg = CompressedImage(header=header, format="jpeg")
    msg.data = jpeg.tobytes()
    return msg


def msg_to_detections(msg: Detection2DArray) -> Detections:
    """The boxes (xyxy source pixels), scores and class names of a Detection2DArray."""
    names = [d.results[0].hypothesis.class_id if d.results else "" for d in msg.detections]
    classes = tuple(dict.fromkeys(names))
    boxes = [[d.bbox.center.position.x - d.bbox.size_x / 2, d.bbox.center.position.y - d.bbox.size_y / 2,
              d.bbox.center.position.x + d.bbox.size_x / 2, d.bbox.center.position.y + d.bbox.size_y / 2]
             for d in msg.detections]
    scores = [d.results[0].hypothesis.score if d.results else 0.0 for d in msg.detections]
    return Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32),
                      np.asarray([classes.index(n) for n in names], np.int64), classes)


def detections_to_msg(detections: Detections, header: Header) -> Detection2DArray:
    """Detection2DArray with the source header; bbox centre/size in source pixels, class name in class_id."""
    out = Detection2DArray(header=header)
    names = detections.names()
    for (x1, y1, x2, y2), score, name in zip(detections.boxes.tolist(), detections.scores.tolist(), names):
        det = Detection2D(header=header)
        det.bbox.center.position.x = (x1 + x2) / 2.0
        det.bbox.center.position.y = (y1 + y2) / 2.0
        det.bbox.size_x = x2 - x1
        det.bbox.size_y = y2 - y1
        hypothesis = ObjectHypothesisWithPose()
        hypothesis.hypothesis.class_id = name
        hypothesis.hypothesis.score = float(score)
        det.results.append(hypothesis)
        out.detections.append(det)
    return out
