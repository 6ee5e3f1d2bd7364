"""Read and write rosbag2 image recordings (MCAP or sqlite3) with `rosbags`; no ROS installation needed."""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path, PurePath
from typing import Iterable, Iterator, Sequence

import numpy as np
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from adaptive_perception.errors import BagError, ImageDecodeError
from adaptive_perception.progress import counted

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)
TYPESTORE = get_typestore(Stores.ROS2_JAZZY)
# The node's debug image topics (raw, compressed; beside its detections, and per camera under its private namespace):
# drawings of its output, not camera frames. A recording of a node holds them; replay, training and calibration
# leave them out unless named.
DEBUG_IMAGE_TOPICS = ("debug_image", "debug_image/compressed")


class Storage(Enum):
    """rosbag2 storage plugins."""

    MCAP = "mcap"
    SQLITE3 = "sqlite3"


@dataclass(frozen=True)
class BagImage:
    """One recorded image message: its topic, type, CDR bytes as recorded and header stamp."""

    topic: str
    msgtype: str
    bag_time_ns: int
    cdr: bytes
    stamp_sec: int
    stamp_nanosec: int
    frame_id: str
    malformed: bool = False  # no Image could be read from it (stamped with the bag's time); the decoder refuses it


def image_topics(path: str | Path) -> dict[str, str]:
    """Image and CompressedImage topics of a bag, topic -> message type."""
    with _open(path) as reader:
        return {c.topic: c.msgtype for c in reader.connections if c.msgtype in IMAGE_TYPES}


# Encodings of depth and other measurement images (REP 118 and cv_bridge's single-channel types): not camera
# pictures, though a 16-bit one decodes like mono16. A depth camera's compressed topic says "compressedDepth".
DEPTH_ENCODINGS = ("16UC1", "16SC1", "32FC1", "32SC1", "64FC1")


def left_out_topics(path: str | Path, available: Iterable[str] | None = None) -> dict[str, str]:
    """The image topics of a bag (among `available`, default all) that are not camera pictures, each with the reason:
    the node's debug images, topics with no message, depth images (a `compressedDepth` format, or a depth encoding
    (DEPTH_ENCODINGS) on a topic whose name says depth: a 16-bit thermal camera is a camera), and a camera's compressed
    copy beside its raw topic (image_transport records both)."""
    with _open(path) as reader:
        connections = [c for c in reader.connections if c.msgtype in IMAGE_TYPES]
        topics = {c.topic for c in connections} if available is None else set(available)
        counts = _image_counts(reader)
        reasons = {}
        for topic in sorted(topics):
            if topic.rstrip("/").endswith(DEBUG_IMAGE_TOPICS):
                reasons[topic] = "the node's debug images"
            elif not counts.get(topic):
                reasons[topic] = "no messages"
        for c in connections:
            if c.topic not in topics or c.topic in reasons:
                continue
            kind = _first_kind(reader, c)
            if "compresseddepth" in kind.lower() or (kind.split(";")[0].strip() in DEPTH_ENCODINGS
                                                     and "depth" in c.topic.lower()):
                reasons[c.topic] = f"depth ({kind})"
        for topic in sorted(topics):  # a copy only of a raw topic that is itself read
            raw = topic.rstrip("/")[:-len("/compressed")]
            if topic not in reasons and topic.rstrip("/").endswith("/compressed") and raw in topics \
                    and raw not in reasons:
                reasons[topic] = f"the compressed copy of {raw}"
        return reasons


def _first_kind(reader: AnyReader, connection, tries: int = 5) -> str:
    """The encoding (Image) or format (CompressedImage) of the first of a topic's first `tries` messages that can be
    read; "" when none can (the decoder then says what is wrong with them)."""
    for number, (_, _, raw) in enumerate(reader.messages(connections=[connection])):
        if number >= tries:
            break
        try:
            message = reader.deserialize(raw, connection.msgtype)
        except Exception:  # a malformed message: the next may be whole
            continue
        return getattr(message, "encoding", None) or getattr(message, "format", "") or ""
    return ""


def camera_topics(path: str | Path, available: Iterable[str]) -> tuple[list[str], dict[str, str]]:
    """(the camera topics among a bag's image topics `available`, sorted; the others with why they are left out),
    BagError when none is left."""
    available = sorted(available)
    if not available:  # training said only "the profile source yielded no frames"
        raise BagError(f"bag '{path}' has no sensor_msgs/Image or CompressedImage topic: record the camera's topic "
                       "(`adaptive-perception record --camera TOPIC`)")
    left_out = left_out_topics(path, available)
    cameras = [t for t in available if t not in left_out]
    if not cameras:
        raise BagError(f"bag '{path}' holds no camera pictures: {said_left_out(left_out)}; record the camera's topic "
                       "(`adaptive-perception record --camera TOPIC`); replay and models quantize read one anyway when "
                       "--topic names it")
    return cameras, left_out


def said_left_out(left_out: dict[str, str]) -> str:
    """'/a (why), /b (why)': the topics `camera_topics` left out, for a message."""
    return ", ".join(f"{topic} ({why})" for topic, why in sorted(left_out.items()))


def default_topics(path: str | Path, available: Iterable[str]) -> list[str]:
    """The camera topics among a bag's image topics `available` (`camera_topics`)."""
    return camera_topics(path, available)[0]


def camera_counts(path: str | Path) -> dict[str, int]:
    """Image messages per camera topic of a bag (`camera_topics`), from its index."""
    with _open(path) as reader:
        counts = _image_counts(reader)
    return {t: counts[t] for t in default_topics(path, counts)}


def _image_counts(reader: AnyReader) -> dict[str, int]:
    """Image messages per image topic of an open bag, from its index (a topic may have several connections)."""
    counts: dict[str, int] = {}
    for c in reader.connections:
        if c.msgtype in IMAGE_TYPES:
            counts[c.topic] = counts.get(c.topic, 0) + c.msgcount
    return counts


BAG_FILES = (".mcap", ".db3")  # a recording's storage file, which the reader takes without its folder


def recordings_in(folder: Path) -> list[Path]:
    """What a folder of recordings holds, in name order: its folders (bags, or folders of them) and bag files."""
    return sorted(p for p in folder.glob("*") if p.is_dir() or (p.is_file() and p.suffix in BAG_FILES))


def _bags_inside(folder: Path) -> list[Path]:
    """The recordings a folder that is not one holds, in name order: a `record` output, one bag per segment; the
    node's evidence, one per camera and segment, a level deeper; the complete MCAP files of such folders without
    metadata.yaml. [] for a bag itself, a file, or nothing of the kind."""
    if not folder.is_dir() or (folder / "metadata.yaml").is_file():
        return []
    bags = {m.parent for pattern in ("*/metadata.yaml", "*/*/metadata.yaml") for m in folder.glob(pattern)}
    bags |= {mcap for pattern in ("*/", "*/*/") for sub in folder.glob(pattern) for mcap in _bare_mcaps(sub)}
    return sorted(bags)


MCAP_MAGIC = b"\x89MCAP0\r\n"  # an MCAP file begins and, once its writer closed it, ends with this


def _complete_mcap(path: Path) -> bool:
    """Whether an MCAP file was closed by its writer (its footer's magic at the end)."""
    try:
        with open(path, "rb") as handle:
            if handle.seek(0, 2) <= 2 * len(MCAP_MAGIC):  # the opening magic alone, or less: cut at its start
                return False
            handle.seek(-len(MCAP_MAGIC), 2)
            return handle.read() == MCAP_MAGIC
    except OSError:
        return False


def _bare_mcaps(folder: Path) -> list[Path]:
    """The complete MCAP files of a folder without metadata.yaml (the mcap tool's, a Foxglove export): recordings."""
    if not folder.is_dir() or (folder / "metadata.yaml").is_file():
        return []
    return sorted(mcap for mcap in folder.glob("*.mcap") if _complete_mcap(mcap))


def never_closed(path: Path) -> bool:
    """A folder without metadata.yaml holding an MCAP that lacks its footer: a segment whose writer was killed while
    recording, which no reader opens and `expand_bags` leaves out (the folder's complete MCAP files are read)."""
    return path.is_dir() and not (path / "metadata.yaml").is_file() and \
        any(not _complete_mcap(mcap) for mcap in path.glob("*.mcap"))


def unclosed_inside(folder: Path) -> list[Path]:
    """The never-closed segments in a folder of bags (and the folder itself), where `_bags_inside` finds the rest."""
    if not folder.is_dir() or (folder / "metadata.yaml").is_file():
        return []
    candidates = {folder} | {sub for pattern in ("*/", "*/*/") for sub in folder.glob(pattern)}
    return sorted(path for path in candidates if never_closed(path))


def expand_bags(paths: list[Path]) -> list[Path]:
    """Each path as the recordings it stands for: a folder of recordings is its bags and complete MCAP files
    (`_bags_inside`, `_bare_mcaps`); anything else is kept, a bag as itself, the rest for the reader's error to name."""
    return [bag for path in map(Path, paths) for bag in (_bags_inside(path) + _bare_mcaps(path) or [path])]


def image_count(path: str | Path) -> int:
    """Camera image messages in a bag, from its index."""
    return sum(camera_counts(path).values())


def read_images(path: str | Path, topics: Sequence[str] | None = None) -> Iterator[BagImage]:
    """Image messages of a bag in recorded order, restricted to `topics` when given (default: every image topic
    but the node's debug images)."""
    with _open(path) as reader:
        available = {c.topic for c in reader.connections if c.msgtype in IMAGE_TYPES}
        if not available:
            raise BagError(f"bag '{path}' has no sensor_msgs/Image or CompressedImage topic; "
                           f"it holds {sorted({c.topic for c in reader.connections})}")
        wanted = set(topics) if topics else set(default_topics(path, available))
        missing = wanted - available
        if missing:
            raise BagError(f"bag '{path}' has no image topic {sorted(missing)}; its image topics are {sorted(available)}")
        connections = [c for c in reader.connections if c.topic in wanted and c.msgtype in IMAGE_TYPES]
        for conn, timestamp, raw in reader.messages(connections=connections):
            try:
                header = reader.deserialize(raw, conn.msgtype).header
            except Exception:  # a malformed message (`record` keeps the bytes a publisher sent): yielded as recorded,
                # stamped with the bag's time; the decoder refuses it (`bag_image_rgb`), as the node would
                yield BagImage(conn.topic, conn.msgtype, timestamp, bytes(raw), timestamp // 1_000_000_000,
                               timestamp % 1_000_000_000, "", malformed=True)
                continue
            yield BagImage(conn.topic, conn.msgtype, timestamp, bytes(raw),
                           header.stamp.sec, header.stamp.nanosec, header.frame_id)


@contextmanager
def _open(path: str | Path) -> Iterator[AnyReader]:
    bag = Path(path)
    if not bag.exists():
        raise BagError(f"bag '{bag}' does not exist")
    split = _split_files(bag)
    if len(split) > 1:  # the reader would read this one file and say nothing of the rest
        raise BagError(f"bag '{bag}' is one of the {len(split)} files of the recording '{bag.parent}' (its "
                       "metadata.yaml lists them all): pass the folder to read the whole recording")
    try:
        reader = AnyReader([bag], default_typestore=TYPESTORE)
        reader.open()
    except Exception as exc:  # rosbags raises several reader error types
        looks_like_a_bag = (bag / "metadata.yaml").exists() if bag.is_dir() else bag.suffix in (".mcap", ".db3")
        inside = [str(p.relative_to(bag)) for p in _bags_inside(bag)]
        if looks_like_a_bag and re.search(r"version \d+ not supported", str(exc), re.IGNORECASE):
            fix = "it was written by a newer rosbag2 than this reader takes; convert it with that ROS version's tools"
        elif looks_like_a_bag:
            fix = ("it looks like one, so it is damaged or was cut short (a segment whose writer was killed has no "
                   "index: the recorder loses at most that one); use another segment")
        elif inside:  # a `record` output or an evidence folder: one bag per segment
            fix = (f"it holds {counted(len(inside), 'bag')} ({', '.join(inside[:3])}{', ...' if len(inside) > 3 else ''}"
                   f"; `record` and the node's evidence capture keep one per segment): pass one of them, e.g. "
                   f"'{bag / inside[0]}'")
        else:
            fix = "pass the bag folder (with metadata.yaml) or its .mcap/.db3 file"
        what = "is a folder of rosbag2 recordings, not one" if inside else \
            f"cannot be read as a rosbag2 recording ({exc})"
        raise BagError(f"bag '{bag}' {what}; {fix}") from exc
    try:
        yield reader
    finally:
        reader.close()


def _split_files(bag: Path) -> list[str]:
    """The files of the recording a bag file belongs to, where its folder's metadata.yaml names it; [] otherwise."""
    metadata = bag.parent / "metadata.yaml"
    if not bag.is_file() or not metadata.is_file():
        return []
    import yaml

    try:
        files = yaml.safe_load(metadata.read_text())["rosbag2_bagfile_information"]["relative_file_paths"]
    except Exception:  # not rosbag2's metadata: nothing to say
        return []
    names = [PurePath(str(f)).name for f in files]  # older metadata gives them with the folder's name in front
    return names if bag.name in names else []


def image_message(rgb: np.ndarray, stamp_ns: int, frame_id: str, encoding: str = "rgb8") -> object:
    """A rosbags sensor_msgs/Image holding an HxWx3 uint8 RGB frame (rgb8 or bgr8)."""
    from rosbags.typesys.stores.ros2_jazzy import builtin_interfaces__msg__Time as Time
    from rosbags.typesys.stores.ros2_jazzy import sensor_msgs__msg__Image as Image
    from rosbags.typesys.stores.ros2_jazzy import std_msgs__msg__Header as Header

    if encoding not in ("rgb8", "bgr8"):
        raise ValueError(f"encoding '{encoding}' must be rgb8 or bgr8")
    pixels = rgb if encoding == "rgb8" else rgb[:, :, ::-1]
    height, width = rgb.shape[:2]
    header = Header(stamp=Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000), frame_id=frame_id)
    return Image(header=header, height=height, width=width, encoding=encoding, is_bigendian=0,
                 step=width * 3, data=np.ascontiguousarray(pixels).reshape(-1))


def write_image_bag(
    path: str | Path,
    frames: Iterable[tuple[int, np.ndarray]],
    topic: str = "/camera/image_raw",
    frame_id: str = "camera",
    storage: Storage = Storage.MCAP,
) -> int:
    """Write (stamp_ns, HxWx3 RGB) frames as sensor_msgs/Image to a new bag folder; returns the count."""
    plugin = StoragePlugin.MCAP if storage is Storage.MCAP else StoragePlugin.SQLITE3
    count = 0
    with Writer(Path(path), version=9, storage_plugin=plugin) as writer:
        conn = writer.add_connection(topic, IMAGE_TYPE, typestore=TYPESTORE)
        for stamp_ns, rgb in frames:
            msg = image_message(rgb, stamp_ns, frame_id)
            writer.write(conn, stamp_ns, TYPESTORE.serialize_cdr(msg, IMAGE_TYPE))
            count += 1
    return count


def bag_image_rgb(image: BagImage) -> np.ndarray:
    """The HxWx3 uint8 RGB pixels of a recorded Image or CompressedImage (the node's decoder)."""
    from adaptive_perception.image import decode_compressed, decode_raw

    try:
        msg = TYPESTORE.deserialize_cdr(image.cdr, image.msgtype)
    except Exception as exc:  # what the node counts as `truncated`: a message that ends early
        raise ImageDecodeError(f"recorded {image.msgtype} message of {len(image.cdr)} bytes cannot be read "
                               f"({type(exc).__name__}: {exc})", "truncated") from None
    if image.msgtype == COMPRESSED_TYPE:
        return decode_compressed(msg.data, msg.format)
    return decode_raw(msg.data, msg.width, msg.height, msg.encoding, msg.step, bool(msg.is_bigendian))
