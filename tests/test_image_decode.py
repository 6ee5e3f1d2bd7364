"""Every supported raw encoding and compressed format decodes to the same RGB pixels."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from adaptive_perception.detector import DetectorTier
from adaptive_perception.errors import ImageDecodeError
from adaptive_perception.features import RoutingContext, routing_features
from adaptive_perception.image import SUPPORTED_ENCODINGS, decode_compressed, decode_raw

H, W = 37, 53  # odd sizes catch row/stride mistakes


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _padded(rows: np.ndarray, pad: int) -> tuple[bytes, int]:
    """Payload with `pad` junk bytes after every row, and the resulting step."""
    flat = rows.reshape(rows.shape[0], -1)
    junk = np.full((flat.shape[0], pad), 0xAB, np.uint8)
    return np.hstack([flat, junk]).tobytes(), flat.shape[1] + pad


@pytest.mark.parametrize("pad", [0, 7])
@pytest.mark.parametrize("encoding,make", [
    ("rgb8", lambda x: x),
    ("bgr8", lambda x: x[:, :, ::-1]),
    ("8UC3", lambda x: x[:, :, ::-1]),
    ("rgba8", lambda x: np.dstack([x, np.full(x.shape[:2], 9, np.uint8)])),
    ("bgra8", lambda x: np.dstack([x[:, :, ::-1], np.full(x.shape[:2], 9, np.uint8)])),
    ("8UC4", lambda x: np.dstack([x[:, :, ::-1], np.full(x.shape[:2], 9, np.uint8)])),
])
def test_colour_encodings_give_the_same_rgb(rgb, encoding, make, pad):
    data, step = _padded(np.ascontiguousarray(make(rgb)), pad)
    out = decode_raw(data, W, H, encoding, step)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("encoding", ["mono8", "8UC1"])
def test_mono8_replicates_grey_into_three_channels(rgb, encoding):
    grey = rgb[:, :, 0]
    data, step = _padded(grey, 3)
    out = decode_raw(data, W, H, encoding, step)
    np.testing.assert_array_equal(out, np.dstack([grey] * 3))


@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("encoding", ["mono16", "16UC1"])
def test_16_bit_mono_keeps_the_high_byte_in_either_byte_order(rgb, encoding, bigendian):
    grey16 = rgb[:, :, 1].astype(np.uint16) * 256 + 3  # high byte == original value
    rows = grey16.astype(">u2" if bigendian else "<u2").view(np.uint8).reshape(H, W * 2)
    data, step = _padded(rows, 4)
    out = decode_raw(data, W, H, encoding, step, is_bigendian=bigendian)
    np.testing.assert_array_equal(out[:, :, 0], rgb[:, :, 1])


def test_rgb16_and_bgr16(rgb):
    wide = rgb.astype(np.uint16) * 257
    np.testing.assert_array_equal(decode_raw(wide.astype("<u2").tobytes(), W, H, "rgb16", W * 6), rgb)
    np.testing.assert_array_equal(decode_raw(wide[:, :, ::-1].astype("<u2").tobytes(), W, H, "bgr16", W * 6), rgb)


@pytest.mark.parametrize("encoding,offsets", [
    ("bayer_rggb8", {"r": (0, 0), "g1": (0, 1), "g2": (1, 0), "b": (1, 1)}),
    ("bayer_bggr8", {"b": (0, 0), "g1": (0, 1), "g2": (1, 0), "r": (1, 1)}),
    ("bayer_gbrg8", {"g1": (0, 0), "b": (0, 1), "r": (1, 0), "g2": (1, 1)}),
    ("bayer_grbg8", {"g1": (0, 0), "r": (0, 1), "b": (1, 0), "g2": (1, 1)}),
])
def test_bayer_mosaic_of_a_flat_colour_demosaics_to_that_colour(encoding, offsets):
    colour = {"r": 200, "g1": 120, "g2": 120, "b": 40}
    mosaic = np.zeros((16, 20), np.uint8)
    for name, (dy, dx) in offsets.items():
        mosaic[dy::2, dx::2] = colour[name]
    out = decode_raw(mosaic.tobytes(), 20, 16, encoding, 20)
    np.testing.assert_allclose(out[4:-4, 4:-4].reshape(-1, 3).mean(0), [200, 120, 40], atol=2)


@pytest.mark.parametrize("encoding", ["uyvy", "yuyv"])
def test_packed_yuv422_of_a_flat_colour(encoding):
    r, g, b = 180, 90, 30  # BT.601 video range, as cameras send it
    y = round(16 + 0.257 * r + 0.504 * g + 0.098 * b)
    u = round(128 - 0.148 * r - 0.291 * g + 0.439 * b)
    v = round(128 + 0.439 * r - 0.368 * g - 0.071 * b)
    pair = [u, y, v, y] if encoding == "uyvy" else [y, u, y, v]
    data = np.tile(np.array(pair, np.uint8), 8 * 6)  # 8 rows of 12 pixels (6 pairs)
    out = decode_raw(data.tobytes(), 12, 8, encoding, 24)
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), [180, 90, 30], atol=4)
    # an odd width cannot be packed in pairs: a named kind in plain words (OpenCV's assertion came through raw)
    with pytest.raises(ImageDecodeError, match=rf"'{encoding}' image size 11x8: packed 4:2:2 pixels come in pairs, "
                                               "so its width must be even") as refused:
        decode_raw(data.tobytes()[:22 * 8], 11, 8, encoding, 22)
    assert refused.value.kind == "bad_size"


def test_every_listed_encoding_decodes():
    for encoding in SUPPORTED_ENCODINGS:
        channels = {"mono8": 1, "8UC1": 1, "mono16": 2, "16UC1": 2, "rgb16": 6, "bgr16": 6,
                    "rgba8": 4, "bgra8": 4, "8UC4": 4, "uyvy": 2, "yuv422": 2, "yuyv": 2,
                    "yuv422_yuy2": 2}.get(encoding, 3 if "bayer" not in encoding else 1)
        out = decode_raw(bytes(8 * 6 * channels), 6, 8, encoding, 6 * channels)
        assert out.shape == (8, 6, 3)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_compressed_matches_the_raw_pixels(scene_rgb, ext):
    rgb = scene_rgb  # smooth content: jpeg error stays small, a channel swap does not
    encoded = cv2.imencode(ext, rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    out = decode_compressed(encoded, "rgb8; jpeg compressed bgr8" if ext == ".jpg" else "png")
    assert out.shape == rgb.shape
    if ext == ".png":
        np.testing.assert_array_equal(out, rgb)
    else:  # lossy, but channel order must be right: the mean error stays small
        assert np.abs(out.astype(int) - rgb.astype(int)).mean() < 3
        swapped = np.abs(out[:, :, ::-1].astype(int) - rgb.astype(int)).mean()
        assert swapped > 3 * np.abs(out.astype(int) - rgb.astype(int)).mean()


@pytest.mark.parametrize("kwargs,needle,kind", [
    (dict(encoding="32FC1"), "'32FC1' is not supported", "unknown_encoding"),
    (dict(step=10), "step 10 is smaller", "bad_step"),
    (dict(data=bytes(100)), "truncated", "truncated"),
    (dict(height=H // 2), rf"has {W * H * 3} bytes but a {W}x{H // 2} 'rgb8' image .* holds {W * 3 * (H // 2)}", "oversized"),
    (dict(width=0), "empty", "bad_size"),
    (dict(width=100000, height=1, step=300000, data=bytes(300000)), "larger than 16384 pixels", "bad_size"),
    (dict(width=10000, height=100, step=30000, data=bytes(3000000)), "aspect ratio beyond 64:1", "bad_size"),
])
def test_bad_raw_images_raise_naming_the_field(rgb, kwargs, needle, kind):
    args = dict(data=rgb.tobytes(), width=W, height=H, encoding="rgb8", step=W * 3)
    args.update(kwargs)
    with pytest.raises(ImageDecodeError, match=needle) as raised:
        decode_raw(**args)
    assert raised.value.kind == kind


@pytest.mark.parametrize("width,height", [(64, 1), (1, 64), (4096, 64)])
def test_thin_frames_within_the_limits_run_through_features_and_a_tier(width, height, peer_model):
    rgb = decode_raw(np.full((height, width, 3), 120, np.uint8).tobytes(), width, height, "rgb8", width * 3)
    assert routing_features(rgb, RoutingContext()).shape == (1028,)
    detections = DetectorTier(peer_model).detect(rgb)
    assert len(detections.boxes) == len(detections.scores)


def test_garbage_compressed_data_raises():
    with pytest.raises(ImageDecodeError, match="could not be decoded") as raised:
        decode_compressed(b"\x00\x01not an image", "jpeg")
    assert raised.value.kind == "corrupt_compressed"
    with pytest.raises(ImageDecodeError, match="no data"):
        decode_compressed(b"", "png")


def test_a_truncated_png_is_the_node_s_error_alone_not_also_opencv_s_line(capfd):
    """OpenCV's own "[ WARN:0@37.6] global grfmt_png.cpp ... PNG input buffer is incomplete" reached the node's
    log unformatted, beside the node's warning."""
    ok, png = cv2.imencode(".png", np.random.default_rng(3).integers(0, 256, (64, 64, 3), np.uint8))
    assert ok
    capfd.readouterr()
    with pytest.raises(ImageDecodeError, match="could not be decoded") as raised:
        decode_compressed(png.tobytes()[: png.size // 2], "png")
    assert raised.value.kind == "corrupt_compressed"
    assert "PNG input buffer is incomplete" not in capfd.readouterr().err
    gif = cv2.imencode(".gif", np.random.default_rng(3).integers(0, 256, (64, 64, 3), np.uint8))[1]
    with pytest.raises(ImageDecodeError, match="could not be decoded"):  # "[ERROR:0@0.03] ... can't read header"
        decode_compressed(gif.tobytes()[: gif.size // 2], "gif")
    assert "loadsave" not in capfd.readouterr().err


@pytest.mark.parametrize("ext, params", [(".png", []), (".jpg", []), (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])])
def test_a_compressed_frame_is_sized_from_its_header(ext, params):
    from adaptive_perception.image import compressed_size

    pixels = np.random.default_rng(0).integers(0, 255, (23, 37, 3), np.uint8)
    data = cv2.imencode(ext, pixels, params)[1].ravel()
    assert compressed_size(data) == (37, 23)
    assert compressed_size(data[:3]) is None and compressed_size(cv2.imencode(".bmp", pixels)[1].ravel()) is None


def _png_of_zeros(width: int, height: int) -> bytes:
    """A valid grey PNG of zeros, written row by row: a few hundred kilobytes that unpack into width x height."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    packer, row, parts = zlib.compressobj(9), bytes(width + 1), []
    for _ in range(height):
        parts.append(packer.compress(row))
    parts.append(packer.flush())
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


def test_a_compressed_bomb_is_refused_before_it_is_decoded():
    """249 KB of PNG unpacked into 1.5 GB in the node before its size was checked (a robot's memory gone on one
    frame); within 16384 px a side it was decoded whole. Refused from its header now, in a fresh process whose
    peak memory shows nothing was unpacked."""
    import subprocess
    import sys

    bomb = _png_of_zeros(9000, 8000)  # 72 M pixels: 216 MB as BGR, 432 MB with the RGB copy
    assert len(bomb) < 200_000
    script = ("import resource, sys\nfrom adaptive_perception.image import decode_compressed\n"
              "from adaptive_perception.errors import ImageDecodeError\ndata = sys.stdin.buffer.read()\n"
              "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
              "try:\n    decode_compressed(data, 'png')\nexcept ImageDecodeError as exc:\n    print(exc.kind, exc)\n"
              "print('grew', (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024, 'MB')\n")
    run = subprocess.run([sys.executable, "-c", script], input=bomb, capture_output=True, timeout=120)
    out = run.stdout.decode()
    assert run.returncode == 0, run.stderr.decode()
    assert out.startswith("bad_size 'png' compressed image size 9000x8000 is over 64 M pixels, refused before "
                          "decoding"), out
    assert int(out.split("grew ")[1].split()[0]) < 50, out
    # a frame under the limit still decodes
    assert decode_compressed(_png_of_zeros(640, 480), "png").shape == (480, 640, 3)


def test_the_jpeg_header_search_stops_within_its_bounds():
    """A crafted run of 4 MB of fill bytes or empty segments held a worker for over a second in the marker loop;
    the search reads at most JPEG_HEADER_SCAN bytes, past which the frame is sized after decoding."""
    from adaptive_perception.image import JPEG_HEADER_SCAN, compressed_size

    jpeg = cv2.imencode(".jpg", np.zeros((23, 37, 3), np.uint8))[1].tobytes()
    app = b"\xff\xe1\xff\xff" + bytes(0xFFFF - 2)  # one maximal APP1 segment (EXIF-sized)
    near = jpeg[:2] + app * (JPEG_HEADER_SCAN // len(app) - 1) + jpeg[2:]
    far = jpeg[:2] + app * (JPEG_HEADER_SCAN // len(app) + 1) + jpeg[2:]
    assert compressed_size(np.frombuffer(near, np.uint8)) == (37, 23)
    assert compressed_size(np.frombuffer(far, np.uint8)) is None
    for crafted in (b"\xff\xd8" + b"\xff" * 4_000_000, b"\xff\xd8" + b"\xff\xe0\x00\x02" * 1_000_000):
        assert compressed_size(np.frombuffer(crafted, np.uint8)) is None


def test_the_last_row_may_omit_its_padding():
    """2x2 rgb8, step 8 (6 bytes of pixels + 2 padding): 8 + 6 = 14 bytes, the last row without its padding."""

    data = bytes([1, 2, 3, 4, 5, 6, 0xEE, 0xEE, 7, 8, 9, 10, 11, 12])
    out = decode_raw(data, 2, 2, "rgb8", 8)
    assert out.tolist() == [[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [10, 11, 12]]]
