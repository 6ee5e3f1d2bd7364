"""The node subscribes to serialized frames and reads them itself (`convert.parse_image`): every field as rclpy's
deserialization gives it, the pixels without a copy, and a clear error for bytes that end early."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CompressedImage, Image

from adaptive_perception.errors import ImageDecodeError
from adaptive_perception.ros.convert import image_to_rgb, parse_image, rgb_to_compressed
from rosgraph import image_msg, wait_until


def _noise(seed: int, shape=(37, 53, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize("frame_id", ["", "a", "ab", "abc", "abcd", "cam_front_left", "kamera_ä"])
def test_fields_and_pixels_match_rclpys_deserialization(frame_id):
    """Frame ids of every length modulo 4 move the alignment of all later fields."""
    rgb = _noise(len(frame_id))
    raw = image_msg(rgb, sec=1_700_000_123, nanosec=999_999_999, frame_id=frame_id)
    padded = Image(header=raw.header, height=37, width=53, encoding="bgr8", step=53 * 3 + 5, is_bigendian=1)
    padded.data = np.hstack([rgb[:, :, ::-1].reshape(37, -1), np.full((37, 5), 255, np.uint8)]).tobytes()
    for message, kind in ((raw, Image), (padded, Image), (rgb_to_compressed(rgb, raw.header), CompressedImage)):
        cdr = serialize_message(message)
        parsed, reference = parse_image(cdr, kind is CompressedImage), deserialize_message(cdr, kind)
        assert (parsed.sec, parsed.nanosec, parsed.frame_id) == (1_700_000_123, 999_999_999, frame_id)
        assert parsed.header == reference.header and parsed.stamp_ns == 1_700_000_123_999_999_999
        if kind is Image:
            assert (parsed.height, parsed.width, parsed.encoding, parsed.is_bigendian, parsed.step) == (
                reference.height, reference.width, reference.encoding, bool(reference.is_bigendian), reference.step)
        else:
            assert parsed.format == reference.format == "jpeg"
        assert parsed.data.tobytes() == bytes(reference.data)
        assert np.shares_memory(parsed.data, np.frombuffer(parsed.cdr, np.uint8))  # a view, not a copy
        assert np.array_equal(image_to_rgb(parsed), image_to_rgb(reference))
    assert np.array_equal(image_to_rgb(parse_image(serialize_message(raw), False)), rgb)


def test_a_big_endian_message_written_by_hand():
    """Encapsulation 00 00 (big-endian CDR), each field aligned from byte 4: laid out here byte by byte."""
    pixels = bytes(range(2 * 3 * 3))
    cdr = (b"\x00\x00\x00\x00" + struct.pack(">iI", 7, 8) + struct.pack(">I", 3) + b"ab\x00" + b"\x00"  # pad to 4
           + struct.pack(">II", 2, 3) + struct.pack(">I", 5) + b"rgb8\x00"  # height, width, encoding (to byte 37)
           + b"\x01" + b"\x00\x00" + struct.pack(">I", 9)  # is_bigendian (one byte, no alignment), pad to 40, step
           + struct.pack(">I", len(pixels)) + pixels)
    parsed = parse_image(cdr, False)
    assert (parsed.sec, parsed.nanosec, parsed.frame_id, parsed.height, parsed.width, parsed.encoding,
            parsed.is_bigendian, parsed.step) == (7, 8, "ab", 2, 3, "rgb8", True, 9)
    assert parsed.data.tobytes() == pixels
    assert np.array_equal(image_to_rgb(parsed), np.arange(18, dtype=np.uint8).reshape(2, 3, 3))


def test_bytes_that_end_early_are_a_clear_truncated_error():
    cdr = serialize_message(image_msg(_noise(0), sec=1))
    with pytest.raises(ImageDecodeError, match=r"declares 5883 bytes of data .* truncated") as caught:
        parse_image(cdr[:-10], False)
    assert caught.value.kind == "truncated"
    with pytest.raises(ImageDecodeError, match="ends inside its fields"):
        parse_image(cdr[:14], False)
    with pytest.raises(ImageDecodeError, match="plain CDR encapsulation header"):
        parse_image(b"\x00\x07\x00\x00" + cdr[4:], False)


def test_the_node_counts_a_truncated_serialized_frame_and_answers_the_next(context, peer_model):
    from rosgraph import Graph

    graph = Graph(context, {"models.nano": str(peer_model), "models.small": "", "models.large": "",
                            "routing_mode": "fixed:nano", "providers": ["CPUExecutionProvider"], "warmup_runs": 1})
    try:
        assert graph.transition("configure") and graph.transition("activate")
        graph.wait_for_image_subscriber()
        good = image_msg(_noise(3, (48, 64, 3)), sec=5, frame_id="cam")
        graph.image_pub.publish(serialize_message(good)[:-100])  # rclpy publishes bytes as they are
        assert wait_until(lambda: graph.node.totals().failed == 1, 5)
        assert graph.send_lockstep(good)
        assert [(d.header.stamp.sec, d.header.frame_id) for d in graph.detections] == [(5, "cam")]
        assert graph.state() == "active"
    finally:
        graph.close()
