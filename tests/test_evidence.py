"""Evidence capture around a drift event, written as real rosbag2 MCAP and read back with rosbags."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore

from adaptive_perception.evidence import LINGER_FRAMES, EvidenceCapture, EvidenceSettings

STORE = get_typestore(Stores.ROS2_JAZZY)
Image, Header, Time, String = (STORE.types[t] for t in ("sensor_msgs/msg/Image", "std_msgs/msg/Header",
                                                         "builtin_interfaces/msg/Time", "std_msgs/msg/String"))
IMAGE, STRING = "sensor_msgs/msg/Image", "std_msgs/msg/String"
CAMERA = "/cam/image_raw"


def frame(n: int) -> Image:
    pixels = np.full((4, 6, 3), n % 256, np.uint8)
    return Image(header=Header(stamp=Time(sec=n, nanosec=0), frame_id="cam"), height=4, width=6,
                 encoding="rgb8", is_bigendian=0, step=18, data=pixels.ravel())


def serialize(message) -> bytes:
    return bytes(STORE.serialize_cdr(message, IMAGE if isinstance(message, Image) else STRING))


def capture(folder: Path, pre: int, post: int, **kwargs) -> EvidenceCapture:
    return EvidenceCapture(EvidenceSettings(str(folder), pre, post, **kwargs), STORE, serialize)


def send_frame(evidence: EvidenceCapture, n: int) -> None:
    evidence.frame(CAMERA, CAMERA, IMAGE, n * 10**9, frame(n))


def send_output(evidence: EvidenceCapture, n: int) -> None:
    evidence.output(CAMERA, "/routing", STRING, n * 10**9, String(data=f"out {n}"))


def read(segment: Path) -> list[tuple[str, int, object]]:
    """(topic, the frame number the message carries: an image's stamp, an output's text, message) in bag order,
    whose log times (when each message arrived) grow."""
    with AnyReader([segment], default_typestore=STORE) as reader:
        rows = [(c.topic, t, reader.deserialize(raw, c.msgtype)) for c, t, raw in reader.messages()]
    times = [t for _, t, _ in rows]
    assert times == sorted(set(times)) and all(t > 0 for t in times)
    return [(topic, m.header.stamp.sec if hasattr(m, "header") else int(m.data.split()[-1]), m)
            for topic, _, m in rows]


def test_an_event_keeps_the_frames_before_and_after_the_trigger_with_their_late_outputs(tmp_path):
    evidence = capture(tmp_path, pre=3, post=2)
    for n in range(1, 7):
        send_frame(evidence, n)
        if n < 6:
            send_output(evidence, n)
    assert evidence.trigger(CAMERA) and evidence.capturing(CAMERA)
    assert not evidence.trigger(CAMERA)  # an event already runs for this camera
    send_frame(evidence, 7)
    send_output(evidence, 6)  # processing lags reception by a frame
    send_frame(evidence, 8)  # the second and last frame after the trigger
    send_output(evidence, 7)
    send_frame(evidence, 9)  # not recorded: the event only waits for the outputs of frames up to 8
    send_output(evidence, 8)
    send_output(evidence, 9)  # not recorded: its frame is not in the event
    for n in range(10, 8 + LINGER_FRAMES):
        send_frame(evidence, n)
    assert evidence.capturing(CAMERA)  # frames 9.. are the linger: one frame short of it
    send_frame(evidence, 8 + LINGER_FRAMES)
    assert not evidence.capturing(CAMERA)
    evidence.flush()
    segment = tmp_path / "cam_image_raw" / "evidence_0001"
    assert evidence.segments == [segment] and evidence.events == 1
    messages = read(segment)
    frames = [(t, bytes(m.data)[0]) for topic, t, m in messages if topic == CAMERA]
    assert frames == [(n, n) for n in (4, 5, 6, 7, 8)]  # the 3 before the trigger and the 2 after, pixels intact
    assert [m.data for topic, _, m in messages if topic == "/routing"] == [f"out {n}" for n in (4, 5, 6, 7, 8)]
    # the next event starts from the frames received since: the last 3 of the linger
    assert evidence.trigger(CAMERA)
    last = 8 + LINGER_FRAMES
    send_frame(evidence, last + 1)
    send_frame(evidence, last + 2)
    evidence.close()
    second = read(tmp_path / "cam_image_raw" / "evidence_0002")
    assert [t for topic, t, _ in second if topic == CAMERA] == [last - 2, last - 1, last, last + 1, last + 2]
    assert evidence.written == 10 + 5 and evidence.skipped == evidence.failed == 0


def test_two_cameras_keep_separate_events_and_an_unfinished_event_is_closed_at_shutdown(tmp_path):
    evidence = capture(tmp_path, pre=2, post=100)
    for n in range(1, 4):
        send_frame(evidence, n)
        evidence.frame("/front", "/front", IMAGE, n * 10**9, frame(100 + n))
    evidence.trigger("/front")
    evidence.frame("/front", "/front", IMAGE, 4 * 10**9, frame(104))
    send_frame(evidence, 4)  # the other camera's frames stay out of the event
    evidence.close()
    assert evidence.segments == [tmp_path / "front" / "evidence_0001"]
    assert [bytes(m.data)[0] for _, _, m in read(evidence.segments[0])] == [102, 103, 104]
    assert not (tmp_path / "cam_image_raw").exists()


def test_old_evidence_is_removed_first_to_stay_under_the_budget(tmp_path):
    big = np.zeros((512, 512, 3), np.uint8)  # 768 KiB: each event is one such frame and a tiny one
    evidence = capture(tmp_path, pre=1, post=1, budget_mb=2.0)
    for event in range(4):
        evidence.frame(CAMERA, CAMERA, IMAGE, (2 * event + 1) * 10**9,
                       Image(header=Header(stamp=Time(sec=2 * event + 1, nanosec=0), frame_id="cam"), height=512,
                             width=512, encoding="rgb8", is_bigendian=0, step=1536, data=big.ravel()))
        evidence.trigger(CAMERA)
        send_frame(evidence, 2 * event + 2)
        for n in range(LINGER_FRAMES):
            evidence.frame(CAMERA, CAMERA, IMAGE, (2 * event + 2) * 10**9 + n + 1, frame(0))
        evidence.flush()
    evidence.close()
    kept = sorted(p.name for p in (tmp_path / "cam_image_raw").iterdir())
    assert kept == ["evidence_0003", "evidence_0004"]  # 4 events of 0.75 MiB: only the newest 2 fit in 2 MiB
    assert len(evidence.segments) == 4


def test_an_event_larger_than_the_budget_keeps_its_beginning_and_is_never_removed_while_written(tmp_path):
    """At a small budget an event rolled into a second segment and the first, with the frames before the trigger,
    was removed to make room for it; the node then named a segment that no longer held the event's start."""
    def big(n: int) -> Image:  # 768 KiB: one fits in 1 MiB, two do not
        return Image(header=Header(stamp=Time(sec=n, nanosec=0), frame_id="cam"), height=512, width=512,
                     encoding="rgb8", is_bigendian=0, step=1536, data=np.full((512, 512, 3), n, np.uint8).ravel())

    def output(n: int) -> None:  # a small message that would still fit after a cut
        evidence.output(CAMERA, "/routing", STRING, n * 10**9, String(data=f"routed {n}"))

    events = []
    evidence = EvidenceCapture(EvidenceSettings(str(tmp_path), 1, 2, budget_mb=1.0), STORE, serialize,
                               on_event=lambda camera, path, cut, failed: events.append((camera, path and path.name, cut)))
    evidence.frame(CAMERA, CAMERA, IMAGE, 1 * 10**9, big(1))  # before the trigger
    output(1)
    evidence.trigger(CAMERA)
    for n in (2, 3):
        evidence.frame(CAMERA, CAMERA, IMAGE, n * 10**9, big(n))
        output(n)  # cut with its frame: an output without its frame, or a frame gap, is no evidence
    for n in range(LINGER_FRAMES):
        evidence.frame(CAMERA, CAMERA, IMAGE, 3 * 10**9 + n + 1, frame(0))
    evidence.flush()
    assert sorted(p.name for p in (tmp_path / "cam_image_raw").iterdir()) == ["evidence_0001"]
    kept = read(evidence.segments[0])
    assert [(topic, t) for topic, t, _ in kept] == [(CAMERA, 1), ("/routing", 1)]  # the event's start, kept
    assert events == [(CAMERA, "evidence_0001", 4)] and evidence.cut_at_budget == 4 and evidence.written == 2
    # an event whose very first message is over the budget: nothing written, and said all the same
    huge = Image(header=Header(stamp=Time(sec=20, nanosec=0), frame_id="cam"), height=600, width=600,
                 encoding="rgb8", is_bigendian=0, step=1800, data=np.zeros(600 * 600 * 3, np.uint8))
    evidence.frame(CAMERA, CAMERA, IMAGE, 20 * 10**9, huge)  # the frame before the trigger opens the event
    evidence.trigger(CAMERA)
    for n in (21, 22):
        evidence.frame(CAMERA, CAMERA, IMAGE, n * 10**9, frame(n))
    for n in range(LINGER_FRAMES):
        evidence.frame(CAMERA, CAMERA, IMAGE, 22 * 10**9 + n + 1, frame(0))
    evidence.close()
    assert events[1:] == [(CAMERA, None, 3)] and len(evidence.segments) == 1


def test_a_slow_writer_skips_and_counts_messages_instead_of_queueing_them(tmp_path):
    entered, gate = threading.Event(), threading.Event()

    def slow(message) -> bytes:  # a disk that stalls
        entered.set()
        gate.wait(10)
        return serialize(message)

    evidence = EvidenceCapture(EvidenceSettings(str(tmp_path), 0, 50), STORE, slow, max_pending=5)
    evidence.trigger(CAMERA)
    send_frame(evidence, 1)
    assert entered.wait(5)
    for n in range(2, 21):
        send_frame(evidence, n)
    gate.set()
    evidence.close()
    # the writer held one message while 5 waited: the other 14 were skipped
    assert (evidence.written, evidence.skipped) == (6, 14)
    assert [t for _, t, _ in read(evidence.segments[0])] == [1, 2, 3, 4, 5, 6]


def test_a_hung_writer_never_blocks_the_processing_path_and_the_event_ends_once_it_catches_up(tmp_path):
    """The event's end waited for a slot in a full queue, inside the capture's lock, on the node's processing thread:
    a disk that hung froze frame processing (and the shutdown that waited the same way)."""
    entered, gate = threading.Event(), threading.Event()

    def hung(message) -> bytes:
        entered.set()
        gate.wait(30)
        return serialize(message)

    evidence = EvidenceCapture(EvidenceSettings(str(tmp_path), 0, 2), STORE, hung, max_pending=3)
    evidence.trigger(CAMERA)
    send_frame(evidence, 1)  # the writer takes it and hangs
    assert entered.wait(5)
    send_frame(evidence, 2)  # the event's last frame
    send_output(evidence, 1)
    send_output(evidence, 2)  # the queue is full (frame 2 and both outputs)

    def linger() -> None:  # the frames after the event: the last one ends it
        for n in range(3, 3 + LINGER_FRAMES):
            send_frame(evidence, n)
    sender = threading.Thread(target=linger)
    sender.start()
    sender.join(5)
    assert not sender.is_alive(), "a frame waited for the hung writer"
    assert evidence.capturing(CAMERA) and not evidence.trigger(CAMERA)  # ended, its end not yet handed over
    gate.set()  # the writer catches up and sends the end itself: the camera may stay silent after its event
    evidence.flush()
    assert not evidence.capturing(CAMERA) and evidence.segments == [tmp_path / "cam_image_raw" / "evidence_0001"]
    assert [(topic, n) for topic, n, _ in read(evidence.segments[0])] == [
        (CAMERA, 1), (CAMERA, 2), ("/routing", 1), ("/routing", 2)]
    evidence.close()


def test_closing_over_a_hung_writer_returns_within_its_timeout(tmp_path):
    gate = threading.Event()
    evidence = EvidenceCapture(EvidenceSettings(str(tmp_path), 0, 50), STORE,
                               lambda message: gate.wait(30) and serialize(message), max_pending=2)
    evidence.trigger(CAMERA)
    for n in range(1, 6):
        send_frame(evidence, n)
    started = time.monotonic()
    evidence.close(timeout_s=1.0)
    assert time.monotonic() - started < 3.0
    assert evidence._thread.is_alive()  # still stuck: it keeps its folder
    gate.set()


def test_a_message_that_cannot_be_written_costs_only_itself(tmp_path):
    evidence = capture(tmp_path, pre=0, post=3)
    evidence.trigger(CAMERA)
    send_frame(evidence, 1)
    evidence.frame(CAMERA, CAMERA, "no_such/msg/Type", 2 * 10**9, frame(2))
    send_frame(evidence, 3)
    evidence.close()
    assert (evidence.written, evidence.failed) == (2, 1) and "no_such/msg/Type" in evidence.last_error
    assert [t for _, t, _ in read(evidence.segments[0])] == [1, 3]


def test_refuses_an_event_without_frames_after_the_trigger(tmp_path):
    with pytest.raises(ValueError, match="post_frames 0 >= 1"):
        capture(tmp_path, pre=5, post=0)


def test_kill_9_while_an_event_is_written_leaves_every_earlier_event_readable(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_evidence import CAMERA, LINGER_FRAMES, capture, send_frame
        evidence = capture(sys.argv[1], pre=2, post=3)
        for n in range(1, 3):
            send_frame(evidence, n)
        evidence.trigger(CAMERA)
        for n in range(3, 6 + LINGER_FRAMES):
            send_frame(evidence, n)
        evidence.close()
        evidence = capture(sys.argv[1], pre=0, post=10**6)
        evidence.trigger(CAMERA)  # the second event does not end before the kill: frames keep coming
        n = 100
        print("second event", flush=True)
        while True:
            send_frame(evidence, n)
            n += 1
            time.sleep(0.002)
    """)
    writer = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "second event"
        time.sleep(0.5)
    finally:
        writer.kill()
        writer.wait(10)
    assert writer.returncode == -9
    first = read(tmp_path / "cam_image_raw" / "evidence_0001")
    assert [t for _, t, _ in first] == [1, 2, 3, 4, 5]
    # the segment being written when killed: its MCAP, never closed (no metadata.yaml)
    assert list((tmp_path / "cam_image_raw" / "evidence_0002").glob("*.mcap"))
    assert not (tmp_path / "cam_image_raw" / "evidence_0002" / "metadata.yaml").exists()
    # the next process names it (the node warns at configure), keeps it, and numbers on after it
    again = capture(tmp_path, pre=0, post=1)
    assert again.unclosed == [tmp_path / "cam_image_raw" / "evidence_0002"]
    again.trigger(CAMERA)
    for n in range(200, 202 + LINGER_FRAMES):
        send_frame(again, n)
    again.close()
    assert again.segments == [tmp_path / "cam_image_raw" / "evidence_0003"]
    assert (tmp_path / "cam_image_raw" / "evidence_0002").exists()
    # the evidence folder as `train retrain --bags` reads it: the closed segments, and the one never closed apart
    from adaptive_perception.bag import expand_bags, unclosed_inside

    assert expand_bags([tmp_path]) == [tmp_path / "cam_image_raw" / f"evidence_000{n}" for n in (1, 3)]
    assert unclosed_inside(tmp_path) == [tmp_path / "cam_image_raw" / "evidence_0002"]


def test_the_evidence_folder_may_start_at_the_home_folder(tmp_path, monkeypatch):
    """'~/evidence' in a params file made a folder named '~' in the node's working directory."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    evidence = capture(Path("~/evidence"), pre=0, post=1)
    evidence.trigger(CAMERA)
    for n in range(1, 2 + LINGER_FRAMES):
        send_frame(evidence, n)
    evidence.close()
    assert evidence.segments == [tmp_path / "home" / "evidence" / "cam_image_raw" / "evidence_0001"]
    assert not (tmp_path / "~").exists()


def test_the_folder_check_never_writes_through_a_link_planted_in_the_folder(tmp_path):
    """The check wrote `.write_probe_<pid>` with a predictable name: a link planted there emptied its target."""
    import os

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / "evidence").mkdir()
    (tmp_path / "evidence" / f".write_probe_{os.getpid()}").symlink_to(victim)
    EvidenceCapture(EvidenceSettings(str(tmp_path / "evidence"), 1, 2), STORE, serialize).close()
    assert victim.read_text() == "keep me"
    assert [p.name for p in (tmp_path / "evidence").iterdir()] == [f".write_probe_{os.getpid()}"]  # nothing left


def test_an_event_that_could_not_be_written_is_reported_and_the_next_one_starts_clean(tmp_path):
    """Evidence lost to the disk was only counted: the node logged nothing and /diagnostics stayed OK. The event's
    end now reports how many of its messages failed, and they stay counted until an event of the camera writes."""
    events = []
    evidence = EvidenceCapture(EvidenceSettings(str(tmp_path), 1, 2), STORE, serialize,
                               on_event=lambda camera, path, cut, failed: events.append((path and path.name, failed)))
    (tmp_path / "cam_image_raw").write_text("in the way")  # the camera's folder cannot be made: every write fails
    send_frame(evidence, 1)
    evidence.trigger(CAMERA)
    for n in range(2, 4 + LINGER_FRAMES):
        send_frame(evidence, n)
    evidence.flush()
    assert events == [(None, 3)] and evidence.event_failures() == {CAMERA: 3} and evidence.failed == 3
    assert "cam_image_raw" in evidence.last_error
    (tmp_path / "cam_image_raw").unlink()
    evidence.trigger(CAMERA)
    send_frame(evidence, 50)
    evidence.flush()
    assert evidence.written == 2 and evidence.event_failures() == {CAMERA: 3}  # until this event is written whole
    for n in range(51, 53 + LINGER_FRAMES):
        send_frame(evidence, n)
    evidence.flush()
    assert events == [(None, 3), ("evidence_0001", 0)] and evidence.event_failures() == {}
    evidence.close()


def test_messages_in_a_segment_the_disk_broke_count_as_lost_with_it(tmp_path):
    """Only the writes the disk refused were counted; those already in the segment the failure left unclosed (no
    index: unreadable) were not. The file size limit stands in for a full disk (writes past it fail)."""
    script = textwrap.dedent(f"""
        import resource, signal
        import numpy as np
        from pathlib import Path
        from rosbags.typesys import Stores, get_typestore
        from adaptive_perception.evidence import LINGER_FRAMES, EvidenceCapture, EvidenceSettings
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        store = get_typestore(Stores.ROS2_JAZZY)
        Image, Header, Time = (store.types[t] for t in ("sensor_msgs/msg/Image", "std_msgs/msg/Header",
                                                        "builtin_interfaces/msg/Time"))
        def frame(n):
            data = np.random.default_rng(n).integers(0, 255, 300_000, np.uint8)
            return Image(header=Header(stamp=Time(sec=n, nanosec=0), frame_id="cam"), height=1, width=300_000,
                         encoding="mono8", is_bigendian=0, step=300_000, data=data)
        events = []
        evidence = EvidenceCapture(EvidenceSettings({str(tmp_path)!r}, 0, 8, budget_mb=100.0), store,
                                   lambda m: bytes(store.serialize_cdr(m, "sensor_msgs/msg/Image")),
                                   on_event=lambda camera, path, cut, failed: events.append((path, failed)))
        evidence.trigger("/cam")
        for n in range(1, 9 + LINGER_FRAMES):
            evidence.frame("/cam", "/cam", "sensor_msgs/msg/Image", n * 10**9, frame(n))
            evidence.flush()
        evidence.close()
        print(events, evidence.failed, evidence.written)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    events, failed, written = run.stdout.strip().rsplit(" ", 2)
    # the 8 frames of the event: some went into the segment before the limit broke it, the rest were refused
    assert events == "[(None, 8)]" and failed == "8" and int(written) >= 2, run.stdout


def test_an_event_is_written_in_arrival_order_whatever_the_stamps_say(tmp_path):
    """Evidence was ordered, timed and paired by header stamps: zero or repeated stamps let outputs of frames that
    were not in the event in, a looped bag came out scrambled, a frame a year ahead stretched the bag over a year,
    and one negative stamp broke the segment (the event lost, the bag unreadable). Here: keys are arrival counts,
    log times the arrival clock (set back once), the stamps every kind of wrong."""
    def odd(pixel: int, sec: int) -> Image:
        return Image(header=Header(stamp=Time(sec=sec, nanosec=0), frame_id="cam"), height=4, width=6,
                     encoding="rgb8", is_bigendian=0, step=18, data=np.full(72, pixel, np.uint8))

    ticks = iter([10**9 * t for t in (5, 6, 4, 7, *range(8, 60))])  # the wall clock set back at the third message
    evidence = EvidenceCapture(EvidenceSettings(str(tmp_path), 3, 3), STORE, serialize, clock=lambda: next(ticks))
    year = 365 * 86400
    plan = [("f", 1, 0), ("o", 1), ("f", 2, 0), ("o", 2), ("f", 3, -5), ("f", 4, year), ("o", 3), "trigger",
            ("f", 5, 3), ("o", 4), ("f", 6, 3), ("o", 5), ("f", 7, 2), ("o", 6), ("f", 8, 1), ("o", 7), ("o", 8)]
    for step in plan:
        if step == "trigger":
            assert evidence.trigger(CAMERA)
        elif step[0] == "f":
            evidence.frame(CAMERA, CAMERA, IMAGE, step[1], odd(10 + step[1], step[2]))
        else:
            evidence.output(CAMERA, "/routing", STRING, step[1], String(data=f"out {step[1]}"))
    for n in range(9, 9 + LINGER_FRAMES):
        evidence.frame(CAMERA, CAMERA, IMAGE, n, odd(0, 0))
    evidence.close()
    assert evidence.segments == [tmp_path / "cam_image_raw" / "evidence_0001"] and evidence.failed == 0
    written = [bytes(m.data)[0] - 10 if topic == CAMERA else f"o{key}" for topic, key, m in read(evidence.segments[0])]
    # frame 1 left the ring, and its output with it; output 8's frame came after the event
    assert written == [2, "o2", 3, 4, "o3", 5, "o4", 6, "o5", 7, "o6", "o7"]
    with AnyReader([evidence.segments[0]], default_typestore=STORE) as reader:
        assert reader.duration < 60 * 10**9  # the arrival clock's span, not the stamps' year


def test_a_second_node_on_the_same_evidence_folder_and_camera_is_refused_and_leaves_the_first_alone(tmp_path):
    """Two nodes given one evidence.dir and one camera topic: the second's budget removed the first's open segment
    (the event lost), their numbering collided, and a node starting beside a writing one called its open segment
    "killed while writing". Folders are now held by the recorder writing them."""
    from adaptive_perception.errors import ConfigError

    first = EvidenceCapture(EvidenceSettings(str(tmp_path), 1, 5), STORE, serialize, cameras=[CAMERA])
    send_frame(first, 1)
    first.trigger(CAMERA)
    send_frame(first, 2)
    first.flush()  # an event being written: its segment open
    with pytest.raises(ConfigError, match="cam_image_raw is being recorded into by another running recorder"):
        EvidenceCapture(EvidenceSettings(str(tmp_path), 1, 5), STORE, serialize, cameras=[CAMERA])
    beside = EvidenceCapture(EvidenceSettings(str(tmp_path), 1, 5), STORE, serialize, cameras=["/rear"])
    assert beside.unclosed == []  # the first's open segment is not a killed one
    beside.close()
    for n in range(3, 7 + LINGER_FRAMES):
        send_frame(first, n)
    first.close()
    assert [key for _, key, _ in read(first.segments[0])] == [1, 2, 3, 4, 5, 6]
    again = EvidenceCapture(EvidenceSettings(str(tmp_path), 1, 5), STORE, serialize, cameras=[CAMERA])
    again.close()  # closed, the folder is free for the next configure


def test_a_wall_clock_step_during_an_event_leaves_its_log_times_alone(tmp_path, monkeypatch):
    """Log times read the wall clock per message: an NTP step during an event (a robot without a real-time clock,
    just after boot) stretched the bag by the step, or squeezed the rest 1 ns apart."""
    from adaptive_perception import evidence as evidence_module

    evidence = capture(tmp_path, pre=1, post=3)
    started = time.time_ns()
    send_frame(evidence, 1)
    evidence.trigger(CAMERA)
    send_frame(evidence, 2)
    monkeypatch.setattr(evidence_module.time, "time_ns", lambda: started + 86_400 * 10**9)  # a day forward
    time.sleep(0.05)
    for n in range(3, 5 + LINGER_FRAMES):
        send_frame(evidence, n)
    evidence.close()
    with AnyReader(evidence.segments, default_typestore=STORE) as reader:
        times = [t for _, t, _ in reader.messages()]
    assert len(times) == 4 and times == sorted(times)
    assert times[-1] - times[0] >= 50_000_000 and times[-1] - started < 60 * 10**9  # the 50 ms that passed, no day


def test_a_late_output_of_a_frame_before_the_event_stays_out_of_it(tmp_path):
    """While an event recorded, outputs of frames that had left the ring before the trigger were written into it."""
    evidence = capture(tmp_path, pre=1, post=2)
    for n in (1, 2):
        send_frame(evidence, n)  # the ring keeps frame 2 only
    evidence.trigger(CAMERA)
    send_output(evidence, 1)  # processing lags: frame 1's output arrives now
    send_output(evidence, 2)
    send_frame(evidence, 3)
    send_output(evidence, 3)
    send_frame(evidence, 4)
    for n in range(5, 5 + LINGER_FRAMES):
        send_frame(evidence, n)
    evidence.close()
    assert [(topic, key) for topic, key, _ in read(evidence.segments[0])] == [
        (CAMERA, 2), ("/routing", 2), (CAMERA, 3), ("/routing", 3), (CAMERA, 4)]


def test_a_capture_without_a_folder_or_budget_is_refused_and_closes_as_a_context(tmp_path, monkeypatch):
    """Default settings (capture off, no folder) wrote into the working directory; a budget of 0 or less left one
    byte, so every message was cut."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"no folder given \(EvidenceSettings.folder, the node's evidence.dir\)"):
        EvidenceCapture(EvidenceSettings(), STORE, serialize, cameras=["/front/image"])
    for budget in (0.0, -1.0):
        with pytest.raises(ValueError, match=f"budget_mb {budget} > 0"):
            EvidenceCapture(EvidenceSettings(str(tmp_path / "ev"), 1, 2, budget_mb=budget), STORE, serialize)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, here or in a folder of its own
    with capture(tmp_path / "ev", 1, 2) as evidence:
        assert evidence._thread.is_alive()
    assert not evidence._thread.is_alive()
