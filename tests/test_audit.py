"""Audit sampling without ROS: agreement by hand, the sampling schedule, and the worker's bounds."""
from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from adaptive_perception.audit import AuditSettings, AuditWorker, agreement
from adaptive_perception.detector import DetectorTier, Detections
from adaptive_perception.errors import ConfigError

NAMES = ("car", "person")


def _dets(*boxes: tuple[float, float, float, float, int]) -> Detections:
    array = np.array([b[:4] for b in boxes], np.float32).reshape(-1, 4)
    return Detections(array, np.full(len(boxes), 0.9, np.float32), np.array([b[4] for b in boxes], np.int64), NAMES)


def test_agreement_is_f1_at_iou_half_one_to_one_and_class_aware():
    reference = _dets((0, 0, 10, 10, 0), (50, 50, 60, 60, 1))
    # one car matches (IoU 81/100 = 0.81), the person is far from any: TP 1 -> 2 * 1 / (2 + 2)
    assert agreement(_dets((1, 1, 10, 10, 0), (100, 100, 110, 110, 1)), reference) == 0.5
    # IoU of (0,0,10,10) and (5,0,15,10) is 50/150 = 0.33 < 0.5: no match
    assert agreement(_dets((5, 0, 15, 10, 0)), _dets((0, 0, 10, 10, 0))) == 0.0
    assert agreement(_dets((0, 0, 10, 10, 1)), _dets((0, 0, 10, 10, 0))) == 0.0  # same box, other class
    # two routed boxes on one reference box: only one matches -> 2 * 1 / (2 + 1)
    assert agreement(_dets((0, 0, 10, 10, 0), (0, 0, 10, 9, 0)), _dets((0, 0, 10, 10, 0))) == pytest.approx(2 / 3)
    assert agreement(_dets(), _dets()) == 1.0 and agreement(_dets(), reference) == 0.0


def test_every_nth_frame_of_each_camera_is_due():
    worker = AuditWorker(lambda rgb: _dets(), lambda *a: None, AuditSettings(every=3))
    try:
        due = [(camera, worker.due(camera)) for camera in ["a", "a", "b", "a", "a", "b", "b", "a"]]
        assert [d for c, d in due if c == "a"] == [True, False, False, True, False]
        assert [d for c, d in due if c == "b"] == [True, False, False]
    finally:
        worker.close()
    off = AuditWorker(lambda rgb: _dets(), lambda *a: None, AuditSettings(every=0))
    assert not off.due("a") and not off.due("a")
    off.close()


def test_the_worker_runs_the_reference_tier_off_the_caller_and_skips_when_busy_or_over_its_share(peer_model):
    tier = DetectorTier(peer_model)
    frame = np.random.default_rng(0).integers(0, 256, (240, 320, 3), np.uint8)
    results, release = [], threading.Event()

    def slow_reference(rgb):
        release.wait(10)  # holds the worker until the test lets it go
        return tier.detect(rgb)

    worker = AuditWorker(slow_reference, lambda key, score, ref: results.append((key, score, len(ref))),
                         AuditSettings(every=1, max_share=1.0))
    try:
        full = tier.detect(frame)
        assert len(full) == 4
        # the routed output found two of the reference's four boxes: F1 = 2 * 2 / (2 + 4), scored against what the
        # reference tier found on the frame offered (1.0 if it scored the reference against itself, 0 against none)
        routed = Detections(full.boxes[:2], full.scores[:2], full.class_ids[:2], full.class_names)
        started = time.perf_counter()
        assert worker.offer("f1", frame, routed)
        assert time.perf_counter() - started < 1.0  # returns at once: the reference tier is held for 10 s
        assert not worker.offer("f2", frame, _dets())  # still auditing f1
        assert worker.skipped_busy == 1
        release.set()
        deadline = time.monotonic() + 10
        while not results and time.monotonic() < deadline:
            time.sleep(0.01)
        assert results == [("f1", pytest.approx(2 / 3), 4)]
        assert worker.audited == 1
    finally:
        worker.close()
    def reference_of_50_ms(rgb):  # at least 50 ms whatever the host: this tier alone ran in 9.4 ms on a fast one
        time.sleep(0.05)
        return tier.detect(rgb)

    stingy = AuditWorker(reference_of_50_ms, lambda *a: None, AuditSettings(every=1, max_share=0.001, window_s=10))
    try:
        assert stingy.offer("g1", frame, _dets())
        deadline = time.monotonic() + 10
        while stingy.audited == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stingy.busy_share() > 0.001  # one audit (>= 50 ms) is more than 10 ms of the last 10 s
        assert not stingy.offer("g2", frame, _dets()) and stingy.skipped_share == 1
    finally:
        stingy.close()


def test_the_share_bound_counts_the_audits_inside_the_last_window_only():
    """On a clock the test moves: each audit takes 2 s; window 10 s, at most 15 % of it (1.5 s)."""
    now = [0.0]

    def two_seconds(rgb):
        now[0] += 2.0
        return _dets()

    def wait_for(count):
        deadline = time.monotonic() + 10
        while worker.audited < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert worker.audited == count

    worker = AuditWorker(two_seconds, lambda *a: None, AuditSettings(every=1, max_share=0.15, window_s=10),
                         clock=lambda: now[0])
    frame = np.zeros((8, 8, 3), np.uint8)
    try:
        assert worker.offer("a", frame, _dets())
        wait_for(1)  # audited from 0 to 2 s
        now[0] = 5.0  # the window is 0-5 (nothing before 0): 2 s of 10 = 0.2 > 0.15
        assert worker.busy_share() == pytest.approx(0.2)
        assert not worker.offer("b", frame, _dets()) and worker.skipped_share == 1
        now[0] = 11.0  # the window 1-11 holds 1 s of it: 0.1
        assert worker.busy_share() == pytest.approx(0.1)
        assert worker.offer("c", frame, _dets())
        wait_for(2)  # audited from 11 to 13 s
        assert now[0] == 13.0 and worker.busy_share() == pytest.approx(0.2)  # 3-13: the first audit has left
        assert not worker.offer("d", frame, _dets()) and worker.skipped_share == 2
        now[0] = 25.0
        assert worker.busy_share() == 0.0 and worker.offer("e", frame, _dets())
        wait_for(3)
        assert worker.skipped_busy == 0
    finally:
        worker.close()


def test_a_failing_reference_is_counted_and_the_worker_keeps_going():
    calls = []

    def flaky(rgb):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("session lost")
        return _dets()

    results = []
    worker = AuditWorker(flaky, lambda *a: results.append(a), AuditSettings(every=1))
    try:
        assert worker.offer(1, np.zeros((4, 4, 3), np.uint8), _dets())
        deadline = time.monotonic() + 5
        while worker.failed == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert worker.offer(2, np.zeros((4, 4, 3), np.uint8), _dets())
        while not results and time.monotonic() < deadline:
            time.sleep(0.01)
        assert worker.failed == 1 and results[0][:2] == (2, 1.0)
    finally:
        worker.close()
    with pytest.raises(ConfigError, match="audit.max_share"):
        AuditSettings(max_share=0.0).validate()


def _wait(condition, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_a_failing_result_handler_loses_its_result_not_the_worker():
    """A handler that raised killed the worker thread: later offers were accepted and never audited."""
    handled = []

    def handler(key, score, reference):
        if key == 1:
            raise KeyError("camera 'cam1'")
        handled.append((key, score))

    with AuditWorker(lambda rgb: _dets(), handler, AuditSettings(every=1, max_share=1.0)) as worker:
        assert worker.offer(1, np.zeros((4, 4, 3), np.uint8), _dets())
        assert _wait(lambda: worker.failed == 1 and worker.idle)
        assert worker.last_error == "KeyError: \"camera 'cam1'\""
        assert worker.offer(2, np.zeros((4, 4, 3), np.uint8), _dets())
        assert _wait(lambda: handled == [(2, 1.0)]) and worker.audited == 2 and worker.failed == 1
    assert not worker._thread.is_alive()
    assert not worker.offer(3, np.zeros((4, 4, 3), np.uint8), _dets())  # closed: refused, not swallowed
    assert worker.skipped_busy == 0 and worker.skipped_share == 0


def test_the_worker_audits_the_frame_it_was_offered_though_the_caller_reuses_its_buffer():
    """The worker kept the caller's array: a buffer refilled with the next frame was audited in its place."""
    results = []

    def reference(rgb):  # what the reference tier finds: a box where the frame is bright
        time.sleep(0.2)  # the caller refills its buffer meanwhile
        return _dets((0, 0, 10, 10, 0)) if rgb[0, 0, 0] else _dets()

    with AuditWorker(reference, lambda key, score, ref: results.append(score), AuditSettings(every=1)) as worker:
        buffer = np.full((4, 4, 3), 255, np.uint8)
        assert worker.offer("f1", buffer, _dets((0, 0, 10, 10, 0)))  # routed found the box of the bright frame
        buffer[:] = 0
        assert _wait(lambda: results == [1.0]), results  # 0.0 when the dark refill was audited


def test_the_reference_process_answers_like_the_tier_in_process_at_the_lowest_priority(tier_models):
    from adaptive_perception.audit import ReferenceProcess

    args = (str(tier_models["large"]), ("CPUExecutionProvider",), 0.25, 0.45, 100, 1, "large (audit)")
    local = DetectorTier(*args)
    reference = ReferenceProcess(*args)
    try:
        rgb = np.random.default_rng(7).integers(0, 256, (96, 128, 3), np.uint8)
        expected, got = local.detect(rgb), reference(rgb)
        assert got.class_names == expected.class_names and got.class_names[0] == "large-0"
        np.testing.assert_array_equal(got.boxes, expected.boxes)
        np.testing.assert_array_equal(got.class_ids, expected.class_ids)
        # /proc/<pid>/stat: field 19 is the nice value (after the parenthesised command name)
        stat = open(f"/proc/{reference.pid}/stat").read().rsplit(")", 1)[1].split()
        assert int(stat[16]) == 19
        with pytest.raises(RuntimeError, match="reference tier: "):
            reference(np.zeros((0, 5, 3), np.uint8))  # a frame the tier refuses costs that audit only
        np.testing.assert_array_equal(reference(rgb).boxes, expected.boxes)
        # Ctrl-C in a terminal reaches the whole process group: the node shuts the child down, SIGINT does not
        os.kill(reference.pid, signal.SIGINT)
        time.sleep(0.5)
        assert reference._process.is_alive()
        np.testing.assert_array_equal(reference(rgb).boxes, expected.boxes)
    finally:
        reference.close()
    assert not reference._process.is_alive() and reference._process.exitcode == 0


def test_a_reference_process_that_cannot_load_its_tier_says_why(tmp_path):
    from adaptive_perception.audit import ReferenceProcess

    with pytest.raises(RuntimeError, match="failed to load: .*missing.onnx"):
        ReferenceProcess(str(tmp_path / "missing.onnx"), ("CPUExecutionProvider",), 0.25, 0.45, 100, 1, "large")


def test_an_interrupt_while_the_reference_process_starts_takes_the_child_with_it(peer_model):
    """Ctrl-C or SIGTERM during a configure, while the audit's child started, left it loading a tier nobody would
    ask (and, cut mid-start, printing spawn's EOFError traceback into the node's log)."""
    import subprocess
    import sys

    script = (
        "import multiprocessing, os, signal, threading, time\n"
        "from adaptive_perception.audit import ReferenceProcess\n"
        "def interrupt():  # Ctrl-C once the child exists: its interpreter and imports take far longer than this\n"
        "    while not multiprocessing.active_children():\n        time.sleep(0.001)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "threading.Thread(target=interrupt, daemon=True).start()\n"
        "try:\n"
        f"    ReferenceProcess({str(peer_model)!r}, ('CPUExecutionProvider',))\n"
        "    print('started')\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', [p.name for p in multiprocessing.active_children()])\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.stdout.strip() == "interrupted []", run.stdout + run.stderr
    assert "Traceback" not in run.stderr, run.stderr


def test_agreement_matches_at_iou_exactly_half():
    assert agreement(_dets((0, 0, 40, 40, 0)), _dets((0, 0, 40, 80, 0))) == 1.0  # IoU 1600 / 3200


def test_a_share_exactly_at_the_bound_is_still_allowed():
    now = [0.0]

    def two_seconds(rgb):
        now[0] += 2.0
        return _dets()

    worker = AuditWorker(two_seconds, lambda *a: None, AuditSettings(every=1, max_share=0.2, window_s=10),
                         clock=lambda: now[0])
    frame = np.zeros((8, 8, 3), np.uint8)
    try:
        assert worker.offer("a", frame, _dets())
        deadline = time.monotonic() + 10
        while worker.audited < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        now[0] = 10.0  # 2 s of the last 10: 0.2, not more than 0.2
        assert worker.busy_share() == 0.2
        assert worker.offer("b", frame, _dets()) and worker.skipped_share == 0
    finally:
        worker.close()
