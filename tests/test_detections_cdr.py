"""The node writes the Detection2DArray's CDR itself (`detections_cdr`): rclpy reads back exactly the message the
vision_msgs classes describe, for every alignment the variable-length strings can leave."""
from __future__ import annotations

import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from std_msgs.msg import Header
from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

from adaptive_perception.detector import Detections
from adaptive_perception.ros.convert import detections_cdr, msg_to_detections


def _reference(detections: Detections, header: Header) -> Detection2DArray:
    """The same message built field by field with the generated classes (defaults for every field not set)."""
    out = Detection2DArray(header=header)
    for (x1, y1, x2, y2), score, name in zip(detections.boxes.tolist(), detections.scores.tolist(), detections.names()):
        det = Detection2D(header=header)
        det.bbox.center.position.x, det.bbox.center.position.y = (x1 + x2) / 2.0, (y1 + y2) / 2.0
        det.bbox.size_x, det.bbox.size_y = x2 - x1, y2 - y1
        hypothesis = ObjectHypothesisWithPose()
        hypothesis.hypothesis.class_id, hypothesis.hypothesis.score = name, float(score)
        det.results.append(hypothesis)
        out.detections.append(det)
    return out


@pytest.mark.parametrize("frame_id", ["", "a", "ab", "abc", "cam_front", "kamera_vorne_ü"])
def test_rclpy_reads_back_the_message_the_generated_classes_describe(frame_id):
    rng = np.random.default_rng(len(frame_id))
    # class names of every length mod 4 and 8, one with a 2-byte UTF-8 character, and ids without a name
    names = ("p", "car", "bike", "truck", "bicycle", "fahrrad_ß")
    for count in range(0, 13):
        boxes = rng.uniform(0, 600, (count, 4)).astype(np.float32)
        boxes[:, 2:] += boxes[:, :2]
        detections = Detections(boxes, rng.uniform(0.25, 1, count).astype(np.float32),
                                rng.integers(0, len(names) + 2, count).astype(np.int64), names)
        header = Header(frame_id=frame_id)
        header.stamp.sec, header.stamp.nanosec = 1_700_000_000 + count, 999_999_999 - count
        cdr = detections_cdr(detections, header.stamp.sec, header.stamp.nanosec, frame_id)
        expected = _reference(detections, header)
        assert deserialize_message(cdr, Detection2DArray) == expected
        assert len(cdr) == len(serialize_message(expected))  # no field missing or padded differently


def test_one_box_by_hand():
    detections = Detections(np.array([[10.0, 20.0, 30.0, 60.0]], np.float32), np.array([0.75], np.float32),
                            np.array([1]), ("person", "car"))
    msg = deserialize_message(detections_cdr(detections, -3, 7, "cam"), Detection2DArray)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (-3, 7, "cam")
    (det,) = msg.detections
    assert (det.header.stamp.sec, det.header.frame_id) == (-3, "cam") and det.id == ""
    assert (det.bbox.center.position.x, det.bbox.center.position.y, det.bbox.center.theta) == (20.0, 40.0, 0.0)
    assert (det.bbox.size_x, det.bbox.size_y) == (20.0, 40.0)
    (result,) = det.results
    assert result.hypothesis.class_id == "car" and result.hypothesis.score == pytest.approx(0.75)
    pose = result.pose.pose
    assert (pose.position.x, pose.position.y, pose.position.z) == (0.0, 0.0, 0.0)
    assert (pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w) == (0.0, 0.0, 0.0, 1.0)
    assert list(result.pose.covariance) == [0.0] * 36
    back = msg_to_detections(msg)
    assert back.names() == ["car"] and back.boxes.tolist() == [[10.0, 20.0, 30.0, 60.0]]
    empty = deserialize_message(detections_cdr(Detections.empty(("car",)), 5, 0, "cam"), Detection2DArray)
    assert empty.detections == [] and empty.header.stamp.sec == 5


@pytest.mark.parametrize("frame_id", ["", "a", "ab", "abc", "cam_front", "kamera_vorne_ü"])
def test_the_marker_is_the_image_marker_rclpy_writes_with_four_edges_per_box_in_the_tiers_colour(frame_id):
    from geometry_msgs.msg import Point
    from std_msgs.msg import ColorRGBA
    from visualization_msgs.msg import ImageMarker

    from adaptive_perception.ros.convert import marker_cdr

    rng = np.random.default_rng(7 + len(frame_id))
    colours = {"nano": (60, 200, 75), "small": (255, 190, 0), "large": (230, 40, 60)}  # the debug image's
    for count, tier in ((0, "nano"), (1, "small"), (3, "large"), (5, "nano")):
        boxes = rng.uniform(0, 600, (count, 4)).astype(np.float32)
        boxes[:, 2:] += boxes[:, :2]
        detections = Detections(boxes, np.full(count, 0.5, np.float32), np.zeros(count, np.int64), ("p",))
        header = Header(frame_id=frame_id)
        header.stamp.sec, header.stamp.nanosec = 1_700_000_123, 456_789 + count
        red, green, blue = (c / 255 for c in colours[tier])
        expected = ImageMarker(header=header, ns="detections", type=ImageMarker.LINE_LIST, action=ImageMarker.ADD,
                               scale=2.0, outline_color=ColorRGBA(r=red, g=green, b=blue, a=1.0))
        for x1, y1, x2, y2 in boxes.tolist():  # top, right, bottom, left
            for x, y in ((x1, y1), (x2, y1), (x2, y1), (x2, y2), (x2, y2), (x1, y2), (x1, y2), (x1, y1)):
                expected.points.append(Point(x=x, y=y))
        cdr = marker_cdr(detections, tier, header.stamp.sec, header.stamp.nanosec, frame_id)
        written = serialize_message(expected)
        expected = deserialize_message(written, ImageMarker)  # the colour as float32, as it travels
        assert deserialize_message(cdr, ImageMarker) == expected, (count, tier)
        assert len(cdr) == len(written)  # no field missing or padded differently


def test_a_detection_without_a_hypothesis_reads_back_with_score_0():
    """centre (5, 5), size 2 x 4 -> box (4, 3, 6, 7); no result: class '' and score 0."""

    det = Detection2D()
    det.bbox.center.position.x, det.bbox.center.position.y = 5.0, 5.0
    det.bbox.size_x, det.bbox.size_y = 2.0, 4.0
    back = msg_to_detections(Detection2DArray(detections=[det]))
    assert back.boxes.tolist() == [[4.0, 3.0, 6.0, 7.0]] and back.scores.tolist() == [0.0] and back.names() == [""]
