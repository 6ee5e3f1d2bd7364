"""Conversion between ROS messages and the core's numpy types."""
from __future__ import annotations

import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header
from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

from adaptive_perception.detector import Detections
from adaptive_perception.image import decode_compressed, decode_raw


def image_to_rgb(msg: Image | CompressedImage) -> np.ndarray:
    """HxWx3 uint8 RGB pixels of an Image or CompressedImage message."""
    if isinstance(msg, CompressedImage):
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
