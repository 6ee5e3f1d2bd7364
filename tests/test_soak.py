"""The soak benchmark: its figures from hand-made series, and a 2-minute run through real processes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from adaptive_perception.training.soak import (TOPICS, children, host_figures, process_cpu_s, stalls, summarise,
                                                  table)


def test_soak_figures_from_a_hand_made_run():
    # camera a: one output a second for 60 s; node time 10..19 ms in the first 10-s window, 15 ms, then 20..29 ms
    a = [(float(t), float(10 + t if t < 10 else 15 if t < 50 else 20 + t - 50), "nano") for t in range(60)]
    # camera b: four outputs of the large tier (too few for its p99 to count), one gap of 250 ms
    b = [(0.0, 90.0, "large"), (0.1, 90.0, "large"), (0.35, 90.0, "large"), (0.45, 90.0, "large")]
    memory = [(0.0, 300.0), (5.0, 310.0), (10.0, 320.0), (30.0, 330.0), (60.0, 345.0)]
    # the listener received b's outputs late and unevenly: its gaps 100, 50 and 300 ms are not the node's
    received = {"a": [t + 0.01 for t, _, _ in a], "b": [0.05, 0.15, 0.2, 0.5]}
    # the node counted 61 outputs of a (the listener got 60); b's counters never came
    # host samples [s, node CPU s, camera CPU s, host ticks, idle ticks, stolen ticks, reference ms, audit CPU s,
    # listener CPU s]; the one at 62 s falls more than the sampling's 1-s tolerance after the run, the one at 30 s
    # in neither window
    host = [[0.0, 0.0, 0.0, 0, 0, 0, 7.0, 0.0, 0.0], [5.0, 0.3, 0.1, 1000, 100, 0, 8.0, 0.1, 0.0],
            [10.0, 0.5, 0.2, 2000, 300, 100, 9.0, 0.2, 0.3],
            [30.0, 1.0, 0.5, 6000, 600, 300, 50.0, 0.5, 0.5],
            [50.0, 2.0, 1.0, 10000, 1000, 500, 10.0, 1.0, 1.0], [55.0, 2.4, 1.0, 11000, 1000, 700, 14.0, 1.0, 1.0],
            [60.0, 3.0, 1.5, 12000, 1000, 900, 11.0, 1.0, 2.0], [62.0, 9.0, 9.0, 99999, 1000, 99999, 99.0, 9.0, 9.0]]
    report = summarise(60.0, {"a": a, "b": b}, memory, {"a": {"processed": 61}}, False, {"a": 60, "b": 4}, received,
                       host=host, cpus=2)
    # first window, 0 to 10 s: 0.5 CPU s over a's 10 outputs and b's 4; 300 of 2000 ticks idle, 100 stolen; of the
    # 2 x 0.85 busy cores the node used 0.05, the camera 0.02, the audit 0.02, the listener 0.03, the rest 1.58
    assert report["host"]["first_window"] == {
        "node_cpu_ms_per_output": pytest.approx(500 / 14), "node_cores": pytest.approx(0.05),
        "camera_cores": pytest.approx(0.02), "audit_cores": pytest.approx(0.02),
        "listener_cores": pytest.approx(0.03), "other_cores": pytest.approx(1.58), "host_idle_share": pytest.approx(0.15),
        "host_steal_share": pytest.approx(0.05), "reference_ms": 8.0}
    # last window, 50 to 60 s: 1.0 CPU s over a's 10 outputs (50..59 s); none idle, 400 of 2000 ticks stolen
    assert report["host"]["last_window"] == {
        "node_cpu_ms_per_output": pytest.approx(100.0), "node_cores": pytest.approx(0.1),
        "camera_cores": pytest.approx(0.05), "audit_cores": 0.0, "listener_cores": pytest.approx(0.1),
        "other_cores": pytest.approx(1.75), "host_idle_share": 0.0, "host_steal_share": pytest.approx(0.2),
        "reference_ms": 11.0}
    # the reference work took 8 ms in the first window and 11 in the last: at the first window's speed the p95 of
    # 28.55 ms would have been 28.55 * 8 / 11 = 20.76 ms, 76.9 % under the first window's 90 ms
    assert report["node_p95_ms"]["change_at_constant_host_speed"] == pytest.approx(28.55 * 8 / 11 / 90.0 - 1)
    assert "| p95 change at the host's speed of the first window (each p95 over the reference work's ms) | -76.9 % |" \
        in table(report)
    assert "| node CPU per output, first / last window (ms) | 35.7 / 100.0 |" in table(report)
    assert "| host idle; stolen by the hypervisor, first / last window (%) | 15.0 / 0.0; 5.0 / 20.0 |" in table(report)
    assert host_figures(host, [], 20.0, 40.0, 2) is None  # one sample inside: nothing to difference
    # samples come a few ms after each multiple of 5 s: the one at 10.004 s still closes the window 0-10 s
    late = [[0.003, 0.0, 0.0, 0, 0, 0, 7.0, 0.0, 0.0], [10.004, 0.5, 0.0, 2000, 0, 0, 7.0, 0.0, 0.0]]
    assert host_figures(late, [], 0.0, 10.0, 2)["node_cores"] == pytest.approx(0.5 / 10.001)
    assert report["window_s"] == 10.0
    # nano p99 over 60 values: rank 0.99 * 59 = 58.41 between 28 and 29 ms; the limit adds 100 ms
    assert report["tier_p99_ms"] == {"nano": pytest.approx(28.41)} and report["stall_limit_ms"] == pytest.approx(128.41)
    assert report["stalls"] == {"a": 59, "b": 1}  # each of a's 59 one-second gaps, and b's 250 ms gap
    assert report["stall_gaps"]["b"] == [[0.1, 250.0]] and report["stall_gaps"]["a"][0] == [0.0, 1000.0]
    assert report["longest_gap_ms"]["b"] == pytest.approx(250.0)
    assert report["mix"] == {"a": {"nano": 1.0, "small": 0.0, "large": 0.0}, "b": {"nano": 0.0, "small": 0.0, "large": 1.0}}
    # what was published during each stall, up to the stalled camera's next output: [ms in, camera, tier, node ms]
    assert report["stall_outputs"]["b"] == [[[250.0, 1, "large", 90.0]]]
    assert report["stall_outputs"]["a"][0] == [[100.0, 1, "large", 90.0], [350.0, 1, "large", 90.0],
                                               [450.0, 1, "large", 90.0], [1000.0, 0, "nano", 11.0]]
    assert report["stall_outputs"]["a"][1] == [[1000.0, 0, "nano", 12.0]]  # b had stopped
    assert "stall on camera 1 at 0.1 s (250 ms); published meanwhile (ms after its start: camera tier node-ms): " \
           "+250: 1 large 90" in table(report)
    assert report["listener"]["stalls"] == {"a": 59, "b": 1} and report["listener"]["missed"] == {"a": 1}
    assert report["listener"]["longest_gap_ms"] == {"a": pytest.approx(1000.0), "b": pytest.approx(300.0)}
    # both cameras pooled: the first window holds a's 10..19 and b's four 90s; rank 0.95 * 13 = 12.35 -> 90
    assert report["node_p95_ms"]["first_window"] == pytest.approx(90.0)
    assert report["node_p95_ms"]["last_window"] == pytest.approx(28.55)  # a's 20..29: 20 + 0.95 * 9
    assert report["node_p95_ms"]["change"] == pytest.approx(28.55 / 90.0 - 1)
    assert report["memory_mb"]["growth_after_first_window"] == 25.0  # 345 at the end - 320 at 10 s
    assert report["bars"] == {"memory_growth_le_50mb": True, "p95_within_10pct": False, "no_stall": False,
                              "no_crash": True}


def test_stalls_are_the_gaps_over_the_limit():
    assert stalls([0.0, 0.1, 0.35, 0.45, 1.0], 0.2) == [(0.1, pytest.approx(0.25)), (0.45, pytest.approx(0.55))]
    assert stalls([0.0, 0.2], 0.2) == []  # a gap equal to the limit is not a stall


def test_a_two_minute_soak_of_two_cameras_through_the_node(tmp_path):
    report_path = tmp_path / "soak.json"
    run = subprocess.run(["adaptive-perception", "bench", "soak", "--quick", "--report", str(report_path)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode in (0, 1), run.stdout[-2000:] + run.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["duration_s"] == 120.0 and report["crashes"] == 0
    assert (run.returncode == 0) == all(report["bars"].values())
    for camera in TOPICS:
        published, counters = report["published"][camera], report["node_counters"][camera]
        assert published >= 0.95 * 120 * 30  # the camera kept 30 Hz
        # every frame accounted for: processed, dropped by the newest-frame rule, or lost before the node; a loss
        # of the stream's first or last frame leaves no gap in the sequence numbers the node sees, so those two
        # may go uncounted
        accounted = counters["processed"] + counters["dropped"] + counters["lost_before_node"]
        assert published - 2 <= accounted <= published, (published, counters)
        assert report["processed"][camera] >= 0.3 * published  # neither camera starved
        # the listener shares two cores with the node and the camera: it may miss a few of the node's outputs
        assert 0 <= report["listener"]["missed"][camera] <= 0.005 * published
    assert len(report["series"]["memory"]) >= 20  # a sample every 5 s
    assert len(report["series"]["host"]) >= 20
    for window in ("first_window", "last_window"):
        figures = report["host"][window]
        # the node was busy on two cameras at 30 Hz: its CPU per output is a nano or small inference and more
        assert figures["node_cores"] > 0.3 and 5.0 < figures["node_cpu_ms_per_output"] < 200.0, figures
        assert 0.0 <= figures["host_idle_share"] < 1.0 and figures["reference_ms"] > 0.5, figures
        assert figures["audit_cores"] > 0.0 and figures["listener_cores"] > 0.0, figures  # both were found
    assert report["memory_mb"]["end"] > 100  # three tiers and onnxruntime are resident
    assert (tmp_path / "soak.png").stat().st_size > 10_000
    assert "| crashes (bar 0) | 0 |" in run.stdout


def test_a_soak_parameter_without_a_value_is_refused_with_the_form_to_use():
    run = subprocess.run(["adaptive-perception", "bench", "soak", "--quick", "--param", "audit.every"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "use NAME=VALUE, e.g. audit.every=0" in run.stderr


def test_soak_parameters_take_the_declared_type_and_unknown_names_are_refused():
    from adaptive_perception.errors import AdaptivePerceptionError
    from adaptive_perception.ros.parameters import parse_override

    # ROS refuses an integer for a double parameter: 1 must reach the node as 1.0
    assert parse_override("routing.cost_weight=1") == ("routing.cost_weight", 1.0)
    assert type(parse_override("routing.cost_weight=1")[1]) is float
    assert [type(v) for v in parse_override("routing.random_mix=[1, 0, 2]")[1]] == [float, float, float]
    assert parse_override("audit.every=0") == ("audit.every", 0) and type(parse_override("audit.every=0")[1]) is int
    assert parse_override("routing.heuristic_thresholds=[2, 9]") == ("routing.heuristic_thresholds", [2, 9])
    assert parse_override("evidence.dir=123") == ("evidence.dir", "123")  # a string parameter keeps the text
    assert parse_override("tensorrt.fp16=true") == ("tensorrt.fp16", True)
    with pytest.raises(AdaptivePerceptionError, match=r"audit.every takes a whole number, e.g. audit.every=30"):
        parse_override("audit.every=abc")  # the node would refuse it and the soak wait for it for ever
    with pytest.raises(AdaptivePerceptionError, match="routing.cost_weight takes a number"):
        parse_override("routing.cost_weight=[1]")
    with pytest.raises(AdaptivePerceptionError, match="tensorrt.fp16 takes true or false"):
        parse_override("tensorrt.fp16=1")
    with pytest.raises(AdaptivePerceptionError, match="no parameter 'audit.evry'; did you mean audit.every"):
        parse_override("audit.evry=0")
    run = subprocess.run(["adaptive-perception", "bench", "soak", "--quick", "--param", "routing.costweight=1"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "did you mean routing.cost_weight" in run.stderr


def test_process_cpu_time_counts_a_busy_child_and_not_a_sleeping_one():
    busy = subprocess.Popen(["python3", "-c", "import time\nend = time.process_time() + 0.6\n"
                             "while time.process_time() < end: pass\ntime.sleep(30)"])
    idle = subprocess.Popen(["python3", "-c", "import time; time.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        while (process_cpu_s(busy.pid) or 0.0) < 0.6 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert 0.6 <= process_cpu_s(busy.pid) < 1.5
        assert process_cpu_s(idle.pid) < 0.3  # the interpreter's start only
    finally:
        busy.kill(), idle.kill()
        busy.wait(), idle.wait()
    assert process_cpu_s(busy.pid) is None  # reaped: gone


def test_children_are_found_and_a_gone_process_has_none():
    parent = subprocess.Popen(["python3", "-c", "import subprocess, time\n"
                               "child = subprocess.Popen(['sleep', '30'])\nprint(child.pid, flush=True)\ntime.sleep(30)"],
                              stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        assert children(parent.pid) == [child]
        assert children(child) == []
    finally:
        os.kill(child, signal.SIGKILL)
        parent.kill()
        parent.wait()
    assert children(parent.pid) == []
