"""Segmented MCAP recording without ROS: rollover by time and size, the disk budget, schemas, kill -9."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from rosbags.highlevel import AnyReader

from adaptive_perception.errors import ConfigError
from adaptive_perception.recording import SegmentedRecorder, message_definition, ros_typestore
from adaptive_perception.ros import MARKER_TOPIC

STORE = ros_typestore()
ROUTING = "adaptive_perception_msgs/msg/RoutingDecision"
IMAGE = "sensor_msgs/msg/Image"


def _routing(stamp_ns: int, tier: str) -> bytes:
    types = STORE.types
    header = types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](
        sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id="cam")
    msg = types[ROUTING](header=header, tier=["nano", "small", "large"].index(tier), tier_name=tier, mode="learned",
                         probabilities=np.array([0.2, 0.3, 0.5], np.float32), policy_id="p", feature_ms=0.2,
                         policy_ms=0.1, inference_ms=9.0, total_ms=9.5, frame_age_ms=20.0, audited=False,
                         drift_state=0, drift_score=float("nan"))
    return STORE.serialize_cdr(msg, ROUTING)


def _image(stamp_ns: int) -> bytes:
    types = STORE.types
    header = types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](
        sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id="cam")
    data = np.full(30 * 40 * 3, stamp_ns % 251, np.uint8)
    return STORE.serialize_cdr(types[IMAGE](header=header, height=30, width=40, encoding="rgb8", is_bigendian=0,
                                            step=120, data=data), IMAGE)


def _read(folder: Path) -> list[tuple[str, int, object]]:
    with AnyReader([folder]) as reader:
        return [(c.topic, t, reader.deserialize(raw, c.msgtype)) for c, t, raw in reader.messages()]


def test_segments_roll_over_by_time_keep_schemas_and_read_back(tmp_path):
    recorder = SegmentedRecorder(tmp_path, STORE, segment_s=1.0)
    tiers = ["nano", "small", "large"]
    # 30 Hz for 3.3 s. Frame 30 is 30 x 33.333333 ms = 999.99999 ms after frame 0: still inside the first second,
    # so each segment holds 31 frames and the next starts at 31, 62, 93 (7 left)
    for i in range(100):
        stamp = 10**9 + i * 33_333_333
        recorder.write("/cam/image_raw", IMAGE, stamp, _image(stamp))
        recorder.write("/routing", ROUTING, stamp, _routing(stamp, tiers[i % 3]))
    recorder.close()
    assert [p.name for p in recorder.closed_segments] == [f"recording_{n:04d}" for n in (1, 2, 3, 4)]
    counts = [len(_read(p)) // 2 for p in recorder.closed_segments]
    assert counts == [31, 31, 31, 7]
    second = _read(recorder.closed_segments[1])
    routed = [m for topic, _, m in second if topic == "/routing"]
    assert [m.tier_name for m in routed[:3]] == ["small", "large", "nano"]  # frames 31, 32, 33
    assert routed[0].header.stamp.sec == 2 and routed[0].total_ms == pytest.approx(9.5)
    images = [m for topic, _, m in second if topic == "/cam/image_raw"]
    assert images[0].width == 40 and int(images[0].data[0]) == (10**9 + 31 * 33_333_333) % 251
    with AnyReader([recorder.closed_segments[0]]) as reader:  # the schema travels with the data
        connection = next(c for c in reader.connections if c.topic == "/routing")
        assert "string tier_name" in connection.msgdef.data and "float32 frame_age_ms" in connection.msgdef.data
    assert "float32 frame_age_ms" in message_definition(STORE, ROUTING)


def test_the_budget_removes_the_oldest_segments_and_a_restart_continues_the_numbering(tmp_path):
    one_frame = len(_image(0))
    recorder = SegmentedRecorder(tmp_path, STORE, segment_bytes=10 * one_frame, budget_bytes=25 * one_frame)
    for i in range(60):  # 6 segments of 10 frames, about 10 frames' worth each on disk
        recorder.write("/cam/image_raw", IMAGE, 10**9 + i, _image(10**9 + i))
    recorder.close()
    assert len(recorder.closed_segments) == 6
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["recording_0005", "recording_0006"] and len(recorder.removed_segments) == 4
    assert [m.header.stamp.nanosec for _, _, m in _read(tmp_path / "recording_0006")][0] == 50
    # a second recorder on the folder while the first holds it (two nodes on one evidence folder and camera numbered
    # over each other's segments and removed the other's open one under the budget): refused
    with pytest.raises(ConfigError, match=f"{tmp_path} is being recorded into by another running recorder"):
        SegmentedRecorder(tmp_path, STORE, segment_bytes=10 * one_frame, budget_bytes=25 * one_frame)
    recorder.release()
    again = SegmentedRecorder(tmp_path, STORE, segment_bytes=10 * one_frame, budget_bytes=25 * one_frame)
    again.write("/cam/image_raw", IMAGE, 5, _image(5))
    again.close()
    again.release()
    assert again.closed_segments == [tmp_path / "recording_0007"]


def test_the_segment_just_written_is_never_the_one_the_budget_removes(tmp_path):
    """A segment a little over the budget (the message that crossed its size stays in it; MCAP's own records) was
    removed the moment it closed: the recording just made was gone."""
    one_frame = len(_image(0))
    recorder = SegmentedRecorder(tmp_path, STORE, segment_bytes=10 * one_frame, budget_bytes=10 * one_frame)
    for i in range(11):  # the 11th frame closes a segment of 10 frames, over the budget on disk with its records
        recorder.write("/cam/image_raw", IMAGE, 10**9 + i, _image(10**9 + i))
    assert recorder.closed_segments == [tmp_path / "recording_0001"] and recorder.removed_segments == []
    assert len(_read(tmp_path / "recording_0001")) == 10
    for i in range(11, 20):
        recorder.write("/cam/image_raw", IMAGE, 10**9 + i, _image(10**9 + i))
    recorder.close()  # now the older one goes, the newest stays
    assert recorder.removed_segments == [tmp_path / "recording_0001"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recording_0002"]


def test_folders_that_are_not_this_recorders_segments_are_neither_numbered_nor_removed(tmp_path):
    one_frame = len(_image(0))
    for name in ("calib_2024", "run_0007", "recording_12", "evidence_0009", "recording_0003.bak"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "keep.bin").write_bytes(bytes(3 * one_frame))  # heavy enough to count against a budget
    recorder = SegmentedRecorder(tmp_path, STORE, segment_bytes=10 * one_frame, budget_bytes=25 * one_frame)
    for i in range(40):
        recorder.write("/cam/image_raw", IMAGE, 10**9 + i, _image(10**9 + i))
    recorder.close()
    assert [p.name for p in recorder.closed_segments] == [f"recording_{n:04d}" for n in (1, 2, 3, 4)]
    assert sorted(p.name for p in recorder.removed_segments) == ["recording_0001", "recording_0002"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "calib_2024", "evidence_0009", "recording_0003", "recording_0003.bak", "recording_0004", "recording_12",
        "run_0007"]
    assert all((tmp_path / name / "keep.bin").stat().st_size == 3 * one_frame
               for name in ("calib_2024", "run_0007", "recording_12", "evidence_0009", "recording_0003.bak"))


def test_limits_are_validated_and_unknown_types_named(tmp_path):
    with pytest.raises(ConfigError, match=r"a segment of [0-9.e-]+ MB / 300 s and a budget of [0-9.e-]+ MB.*--segment-mb, --segment-s, --budget-mb"):
        SegmentedRecorder(tmp_path, STORE, segment_bytes=100, budget_bytes=10)
    with pytest.raises(ConfigError, match="budget"):
        SegmentedRecorder(tmp_path, STORE, segment_bytes=100, budget_bytes=10)
    recorder = SegmentedRecorder(tmp_path, STORE)
    with pytest.raises(ConfigError, match="my_msgs/msg/Thing has no definition"):
        recorder.write("/thing", "my_msgs/msg/Thing", 1, b"\x00\x01\x00\x00")
    recorder.close()


WRITER = """
import sys, time
sys.path.insert(0, {tests!r})
from test_recording import STORE, IMAGE, _image
from adaptive_perception.recording import SegmentedRecorder
recorder = SegmentedRecorder({folder!r}, STORE, segment_s=0.5)
i = 0
while True:
    stamp = 10**9 + i * 33_333_333
    recorder.write("/cam/image_raw", IMAGE, stamp, _image(stamp))
    i += 1
    time.sleep(0.005)
"""


def test_a_kill_9_loses_at_most_the_open_segment(tmp_path):
    folder = tmp_path / "evidence"
    writer = subprocess.Popen([sys.executable, "-c", WRITER.format(tests=str(Path(__file__).parent), folder=str(folder))])
    try:
        deadline = time.monotonic() + 60
        while len(list(folder.glob("*/metadata.yaml"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    closed = sorted(p.parent for p in folder.glob("*/metadata.yaml"))
    assert len(closed) >= 3
    stamps = [m.header.stamp for p in closed for _, _, m in _read(p)]
    assert len(stamps) >= 3 * 15  # 0.5 s segments at < 200 Hz
    open_segments = [p for p in folder.iterdir() if p not in closed]
    assert len(open_segments) <= 1  # only the segment being written lacks its metadata


def test_the_foxglove_layout_reads_only_topics_and_fields_the_node_publishes():
    import json
    import re

    layout = json.loads((Path(__file__).resolve().parents[1] / "config" / "foxglove" / "perception.json").read_text())
    published = {"/routing": ROUTING, "/debug_image/compressed": "sensor_msgs/msg/CompressedImage",
                 "/diagnostics": "diagnostic_msgs/msg/DiagnosticArray"}
    text = json.dumps(layout["configById"])
    paths = re.findall(r'"(/[a-z_/]+)(?:\{[^}]*\})?\.([a-z_]+)"', text.replace('\\"', "'"))
    assert {topic for topic, _ in paths} == {"/routing"} and len(paths) >= 5
    for topic, field in paths:
        assert field in {name for name, _ in STORE.fielddefs[published[topic]][1]}, (topic, field)
    filters = re.findall(r"\{tier_name=='(\w+)'\}", text.replace('\\"', "'"))
    assert sorted(filters) == ["large", "nano", "small"]
    assert layout["configById"]["Image!debug"]["imageMode"]["imageTopic"] in published
    assert layout["configById"]["DiagnosticSummary!all"]["topicToRender"] in published
    # the boxes over the camera itself: the launch file's default camera topic, the marker turned on over it
    camera = layout["configById"]["Image!camera"]["imageMode"]
    launch = (Path(__file__).resolve().parents[1] / "launch" / "perception.launch.py").read_text()
    assert f'"image", default_value="{camera["imageTopic"]}"' in launch
    assert camera["annotations"] == {f"/{MARKER_TOPIC}": {"visible": True}}
    panels = set(re.findall(r'"([A-Za-z]+![a-z]+)"', json.dumps(layout["layout"])))
    assert panels == set(layout["configById"])  # every configured panel is placed, and only those
    # frame age (hours to years on a replayed bag: its stamps are the recording's) has a plot of its own: on one
    # axis with node time it flattened the per-tier lines
    for name, panel in layout["configById"].items():
        fields = {path["value"].rsplit(".", 1)[1] for path in panel.get("paths", [])}
        assert not (name.startswith("Plot!") and {"frame_age_ms", "total_ms"} <= fields), name
    assert any(path["value"] == "/routing.frame_age_ms" for name, panel in layout["configById"].items()
               if name.startswith("Plot!") for path in panel["paths"])


def test_the_foxglove_layout_uses_only_keys_foxglove_knows():
    """Every key of every panel's configuration is one Foxglove's own layout schema has (foxglove-sdk's
    `foxglove.layouts`, generated from the app's panel schemas): a misspelt key is silently ignored by the app
    (a plot's `title` was, where the panel's title is `foxglovePanelTitle`)."""
    import json

    import foxglove.layouts as fl  # the foxglove extra, which the bootstrap installs
    layout = json.loads((Path(__file__).resolve().parents[1] / "config" / "foxglove" / "perception.json").read_text())
    schemas = {"Image": fl.ImageConfig(), "Plot": fl.PlotConfig(), "StateTransitions": fl.StateTransitionsConfig(),
               "DiagnosticSummary": fl.DiagnosticsSummaryConfig(), "RawMessages": fl.RawMessagesConfig()}

    def keys(model) -> set[str]:
        return set(model._to_dict())

    for name, config in layout["configById"].items():
        assert set(config) - {"foxglovePanelTitle"} <= keys(schemas[name.split("!")[0]]), name
        for path in config.get("paths", []):
            assert set(path) <= keys(fl.PlotSeries(value="")), (name, path)
        if "imageMode" in config:
            assert set(config["imageMode"]) <= keys(fl.ImageModeConfig()), name
            for settings in config["imageMode"].get("annotations", {}).values():
                assert set(settings) <= keys(fl.ImageAnnotationSettings()), name
    titled = [config["foxglovePanelTitle"] for name, config in layout["configById"].items() if name.startswith("Plot!")]
    assert len(titled) == 3 and all(titled)


def test_record_without_a_destination_says_what_to_give(tmp_path):
    run = subprocess.run(["adaptive-perception", "record"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "give --out DIR (MCAP segments) and/or --live" in run.stderr
    (tmp_path / "a-file").write_text("")  # was a bare "[Errno 17] File exists"
    run = subprocess.run(["adaptive-perception", "record", "--out", str(tmp_path / "a-file")], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2 and f"--out {tmp_path / 'a-file'} is a file; give the folder" in run.stderr


def test_a_recording_of_nothing_fails(tmp_path):
    """No camera or node on the graph: `record` exited 0 with an empty --out, which a script took for a recording."""
    env = {**os.environ, "ROS_DOMAIN_ID": str(int(os.environ.get("ROS_DOMAIN_ID", "0")) % 100 + 130)}  # nobody here
    run = subprocess.run(["adaptive-perception", "record", "--out", str(tmp_path / "rec"), "--camera", "/no_cam",
                          "--duration", "2"], capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 1, run.stderr
    assert "recorded 0 messages" in run.stderr and "NOTHING RECORDED: no message came on any of the topics" in run.stderr
    assert "; stops after 2 s or at Ctrl-C" in run.stderr  # it said "Ctrl-C stops" with a --duration too


def test_a_disk_that_refuses_writes_costs_the_broken_segment_and_recording_goes_on(tmp_path):
    """A full disk killed `record`'s executor thread on the first failed write and nothing more was ever recorded
    (the process ran on). The file size limit stands in for the disk here: writes past it fail with EFBIG, as a full
    disk's fail with ENOSPC. The broken segment is given up, messages are refused for RETRY_S (not tried one new
    folder each), then a new segment takes them."""
    script = textwrap.dedent(f"""
        import resource, signal, time
        from pathlib import Path
        from adaptive_perception.recording import RETRY_S, SegmentedRecorder, ros_typestore
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (3 << 20, 3 << 20))
        store = ros_typestore()
        Image = store.types["sensor_msgs/msg/Image"]
        def cdr(n, size):
            msg = Image(header=store.types["std_msgs/msg/Header"](stamp=store.types["builtin_interfaces/msg/Time"](
                sec=n, nanosec=0), frame_id="cam"), height=1, width=size, encoding="mono8", is_bigendian=0,
                step=size, data=__import__("numpy").random.default_rng(n).integers(0, 255, size, "uint8"))
            return bytes(store.serialize_cdr(msg, "sensor_msgs/msg/Image"))
        recorder = SegmentedRecorder(Path({str(tmp_path / "rec")!r}), store, segment_s=600)
        failures, n = [], 0
        while not failures:  # 600 KB frames until the file limit refuses one
            n += 1
            try:
                recorder.write("/cam", "sensor_msgs/msg/Image", n * 10**9, cdr(n, 600_000))
            except OSError as exc:
                failures.append(str(exc))
        try:  # at once: refused without touching the disk
            recorder.write("/cam", "sensor_msgs/msg/Image", (n + 1) * 10**9, cdr(n + 1, 100))
        except OSError as exc:
            failures.append(str(exc))
        time.sleep(RETRY_S)
        for m in range(n + 2, n + 5):
            recorder.write("/cam", "sensor_msgs/msg/Image", m * 10**9, cdr(m, 100))
        recorder.close()
        print(n, len(failures), recorder.lost, [p.name for p in recorder.broken_segments],
              [p.name for p in recorder.closed_segments])
        print(failures[0][:60]); print(failures[1])
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    counts, first, second = run.stdout.strip().splitlines()
    n, failures, lost, broken, closed = counts.split(" ", 4)
    assert int(n) >= 3 and failures == "2"  # at least a few frames went in before the limit
    assert int(lost) == int(n) - 1  # taken into the broken segment before the failing one: lost with it
    assert (broken, closed) == ("['recording_0001']", "['recording_0002']")
    assert "File too large" in first and second.startswith("not written: writing failed under")
    assert sorted(p.name for p in (tmp_path / "rec").iterdir()) == ["recording_0001", "recording_0002"]
    assert [t // 10**9 for _, t, _ in _read(tmp_path / "rec" / "recording_0002")] == [int(n) + 2, int(n) + 3, int(n) + 4]


def test_a_message_exactly_segment_s_after_the_first_opens_the_next_segment(tmp_path):
    """segment_s 1: frames at +0, +0.5, +1.0, +1.5 s: the segment spans [0, 1) s, so 2 + 2."""

    recorder = SegmentedRecorder(tmp_path, STORE, segment_s=1.0)
    for k in range(4):
        stamp = 10**9 + k * 500_000_000
        recorder.write("/cam/image_raw", IMAGE, stamp, _image(stamp))
    recorder.close()
    recorder.release()
    assert [len(_read(p)) for p in recorder.closed_segments] == [2, 2]
