"""Conversion between ROS messages and the core's numpy types."""
from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header
from vision_msgs.msg import Detection2DArray

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
    arrival: int = 0  # the node's count of frames received when this one came: identifies it (evidence pairs by it)

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


def parse_image(cdr: bytes, compressed: bool, arrival: int = 0) -> ReceivedImage:
    """A serialized sensor_msgs/Image (or CompressedImage) as a `ReceivedImage` (the `arrival`-th frame received);
    ImageDecodeError (truncated) where the bytes end early."""
    reader = _CdrReader(bytes(cdr))
    sec, nanosec, frame_id = reader.int32(), reader.uint32(), reader.string()
    if compressed:
        image_format = reader.string()
        return ReceivedImage(reader.cdr, True, sec, nanosec, frame_id, reader.octets(), format=image_format,
                             arrival=arrival)
    height, width, encoding = reader.uint32(), reader.uint32(), reader.string()
    is_bigendian, step = bool(reader.uint8()), reader.uint32()
    return ReceivedImage(reader.cdr, False, sec, nanosec, frame_id, reader.octets(), height, width, encoding,
                         is_bigendian, step, arrival=arrival)


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


# the fixed tail of one ObjectHypothesisWithPose after its score: pose (position 0, orientation x y z w = 0 0 0 1)
# and a zero covariance, then the bbox's five doubles follow
_POSE_TAIL = struct.pack("<7d", 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0) + bytes(36 * 8)
_EMPTY_ID = struct.pack("<I", 1) + b"\0"  # Detection2D.id: the empty string


def _cdr_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<I", len(raw) + 1) + raw + b"\0"


def detections_cdr(detections: Detections, sec: int, nanosec: int, frame_id: str) -> bytes:
    """The serialized vision_msgs/Detection2DArray (little-endian plain CDR, as rclpy's serialize_message writes
    it) of `detections` under the source image's header: per box one Detection2D with that header, its centre and
    size in source pixels, one hypothesis (class name, score), an identity pose, zero covariance and an empty id.
    Written directly: building the Python message and serializing it cost 0.5-1 ms a frame here, before the
    detections could leave the node."""
    header = struct.pack("<iI", sec, nanosec) + _cdr_string(frame_id)
    parts = [b"\0\1\0\0", header]
    pos = len(header)  # CDR aligns each field to its size, counted from the end of the 4-byte encapsulation header
    boxes, scores = detections.boxes.tolist(), detections.scores.tolist()
    names = detections.names()
    encoded = {name: _cdr_string(name) for name in set(names)}

    def align(size: int) -> None:
        nonlocal pos
        pad = -pos % size
        if pad:
            parts.append(bytes(pad))
            pos += pad

    align(4)
    parts.append(struct.pack("<I", len(boxes)))
    pos += 4
    for (x1, y1, x2, y2), score, class_name in zip(boxes, scores, names):
        align(4)
        parts.append(header)
        pos += len(header)
        align(4)
        name = encoded[class_name]
        parts += (b"\1\0\0\0", name)  # a sequence of one result, its class name
        pos += 4 + len(name)
        align(8)
        parts += (struct.pack("<d", score), _POSE_TAIL,
                  struct.pack("<5d", (x1 + x2) / 2.0, (y1 + y2) / 2.0, 0.0, x2 - x1, y2 - y1), _EMPTY_ID)
        pos += 8 + len(_POSE_TAIL) + 40 + len(_EMPTY_ID)
    return b"".join(parts)


MARKER_LINE_PX = 2.0  # outline thickness of the overlay's boxes, in image pixels
_LINE_LIST, _ADD = 2, 0  # visualization_msgs/ImageMarker's type and action


def marker_cdr(detections: Detections, tier: str, sec: int, nanosec: int, frame_id: str) -> bytes:
    """The boxes as one serialized `visualization_msgs/ImageMarker` (little-endian plain CDR, as rclpy writes it):
    a LINE_LIST, each box's four edges as eight points (top, right, bottom, left), in the colour of the tier that
    ran, `MARKER_LINE_PX` wide, under the frame's header, so Foxglove's Image panel overlays it on the camera topic.
    An empty list clears the previous frame's boxes; ImageMarker has no text (class and score are in the debug
    image). Written directly, as the detections are: the Python message cost 1.7 ms a frame at 100 boxes."""
    from adaptive_perception.drawing import tier_colour

    parts = [b"\0\1\0\0"]
    pos = 0

    def put(data: bytes, alignment: int) -> None:
        nonlocal pos
        pad = -pos % alignment
        parts.append(bytes(pad) + data)
        pos += pad + len(data)

    put(struct.pack("<iI", sec, nanosec), 4)
    put(_cdr_string(frame_id), 4)
    put(_cdr_string("detections"), 4)  # ns
    put(struct.pack("<3i", 0, _LINE_LIST, _ADD), 4)  # id, type, action
    put(bytes(24), 8)  # position
    colour = struct.pack("<4f", *(c / 255.0 for c in tier_colour(tier)), 1.0)
    put(struct.pack("<f", MARKER_LINE_PX) + colour, 4)  # scale, outline_color
    put(b"\0", 1)  # filled
    put(bytes(16) + bytes(8), 4)  # fill_color, lifetime
    corners = detections.boxes[:, [0, 1, 2, 1, 2, 1, 2, 3, 2, 3, 0, 3, 0, 3, 0, 1]].reshape(-1, 2).astype(np.float64)
    put(struct.pack("<I", len(corners)), 4)
    if len(corners):
        points = np.zeros((len(corners), 3), "<f8")
        points[:, :2] = corners
        put(points.tobytes(), 8)
    put(struct.pack("<I", 0), 4)  # outline_colors: none (outline_color serves every edge)
    return b"".join(parts)
