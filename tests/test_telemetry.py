"""Telemetry, health levels, the error log and the Prometheus exporter, without ROS (values by hand)."""
from __future__ import annotations

import math
from types import SimpleNamespace
import urllib.request

import pytest

from adaptive_perception.errors import ConfigError
from adaptive_perception.metrics import PrometheusMetrics
from adaptive_perception.telemetry import ERROR, OK, TIER_FAILURE, WARN, ErrorLog, HealthSettings, Telemetry
from rosgraph import wait_until

TIERS = ("nano", "small", "large")


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_camera_report_counts_shares_percentiles_and_warns_past_the_frame_budget() -> None:
    clock = Clock()
    telemetry = Telemetry(["a", "b"], TIERS, clock=clock)
    for i in range(10):
        clock.t = i * 0.1
        telemetry.arrived("a", i + 1)
    for ms in (10, 12, 14, 16, 18, 20):
        telemetry.processed("a", "nano", ms, 0.3, 40.0)
    for ms in (90, 110):
        telemetry.processed("a", "large", ms, 0.5, 150.0)
    telemetry.dropped("a")
    telemetry.dropped("a")
    clock.t = 1.0
    report = telemetry.camera_report("a")
    assert (report["frames_received"], report["frames_processed"], report["frames_dropped"]) == (10, 8, 2)
    assert report["fps"] == pytest.approx(8.0)  # 8 frames over the 1 s since start
    assert report["nano_share"] == 0.75 and report["large_share"] == 0.25 and report["small_share"] == 0.0
    assert report["nano_ms_p50"] == pytest.approx(15.0) and report["large_ms_p50"] == pytest.approx(100.0)
    assert math.isnan(report["small_ms_p50"])
    # sorted [10 12 14 16 18 20 90 110]: p95 at rank 0.95 * 7 = 6.65 -> 90 + 0.65 * 20
    assert report["node_ms_p95"] == pytest.approx(103.0)
    assert report["frame_age_ms_p50"] == pytest.approx(40.0)
    assert report["drop_share"] == pytest.approx(0.2)  # 2 of 10: at the limit, not past it
    assert report["level"] == WARN
    assert report["message"] == "node time p95 103.0 ms exceeds the frame budget 33.3 ms"
    assert telemetry.camera_report("b")["level"] == OK and telemetry.camera_report("b")["message"] == "no frames yet"


def test_frames_without_a_usable_stamp_have_no_age_and_are_named() -> None:
    """A driver that sends stamp 0 made every age 57 years (a p95 of 1.8e12 ms), a camera clock an hour ahead made
    it -3,600,000 ms on /diagnostics while Prometheus left it out."""
    from adaptive_perception.telemetry import frame_age_ms

    now = 1_700_000_000 * 10**9
    assert frame_age_ms(now - 40_500_000, now) == pytest.approx(40.5)
    assert frame_age_ms(now, now) == 0.0
    # a bag's /clock ticks at 40 Hz behind the frames it plays: a stamp up to 100 ms ahead is age 0, not unknown
    assert frame_age_ms(now + 25_000_000, now) == 0.0 and frame_age_ms(now + 100_000_000, now) == 0.0
    assert math.isnan(frame_age_ms(now + 100_000_001, now))
    assert math.isnan(frame_age_ms(0, now)) and math.isnan(frame_age_ms(now + 3_600 * 10**9, now))
    assert math.isnan(frame_age_ms(-5 * 10**9, now))
    clock = Clock()
    telemetry = Telemetry(["a"], TIERS, HealthSettings(window_s=10.0), clock=clock)
    for age in (40.0, 60.0, math.nan, 20.0, math.nan):
        telemetry.arrived("a", None)
        telemetry.processed("a", "nano", 5.0, 0.1, age)
    clock.t = 1.0
    report = telemetry.camera_report("a")
    assert report["frame_age_ms_p50"] == pytest.approx(40.0) and report["frame_age_ms_p95"] == pytest.approx(58.0)
    assert report["frames_age_unknown"] == 2 and report["level"] == WARN
    assert report["message"].startswith("2 recent frames carry a header stamp of 0 or one ahead of this node's clock")


def test_the_session_report_keeps_what_the_window_forgets() -> None:
    """The MLflow run's final summary: totals, tier shares, drop share and mean rate over the whole session."""
    clock = Clock()
    telemetry = Telemetry(["a"], TIERS, HealthSettings(window_s=10.0), clock=clock)
    for t, sequence, tier in ((1.0, 1, "nano"), (2.0, 2, "small"), (3.0, 5, None), (4.0, 6, "large")):
        clock.t = t
        telemetry.arrived("a", sequence)  # 5 after 2: frames 3 and 4 lost before the node
        if tier is None:
            telemetry.dropped("a")
        else:
            clock.t = t + 0.5 if tier != "large" else 5.0
            telemetry.processed("a", tier, 20.0, 0.3, 30.0)
    clock.t = 40.0  # all of it out of the 10 s window
    window = telemetry.camera_report("a")
    assert window["fps"] == 0.0 and window["nano_share"] == 0.0 and window["drop_share"] == 0.0
    session = telemetry.session_report("a")
    assert (session["frames_received"], session["frames_processed"], session["frames_dropped"],
            session["frames_lost_before_node"]) == (4, 3, 1, 2)
    assert session["nano_share"] == session["small_share"] == session["large_share"] == pytest.approx(1 / 3)
    assert session["drop_share"] == pytest.approx(3 / 6)  # 1 dropped + 2 lost of the 6 published since the first
    assert session["fps"] == pytest.approx(3 / 4.0)  # 3 outputs from the first arrival (1 s) to the last output (5 s)
    assert math.isnan(Telemetry(["b"], TIERS).session_report("b")["fps"])  # nothing yet


def test_old_events_leave_the_window_and_a_stall_while_frames_arrive_is_an_error() -> None:
    clock = Clock()
    telemetry = Telemetry(["a"], TIERS, HealthSettings(stall_s=3.0, window_s=10.0), clock=clock)
    telemetry.arrived("a", 1)
    telemetry.processed("a", "large", 200.0, 0.4, 0.0)
    clock.t = 2.0
    telemetry.arrived("a", 2)  # arriving, the last output 2 s ago: not yet a stall
    assert telemetry.camera_report("a")["level"] == WARN  # only the 200 ms p95
    clock.t = 12.5
    telemetry.arrived("a", 3)
    report = telemetry.camera_report("a")
    assert math.isnan(report["node_ms_p95"]) and report["fps"] == 0.0  # the processed frame left the window
    assert report["frames_processed"] == 1  # totals stay
    assert report["level"] == ERROR
    assert report["message"] == "frames arrive but none was processed for 12.5 s"
    clock.t = 16.0  # nothing arrives any more: a warning, not an error
    report = telemetry.camera_report("a")
    assert report["level"] == WARN and report["message"] == "no frame for 3.5 s: has the camera stopped publishing?"


def test_frames_that_never_get_processed_stall_from_the_first_arrival() -> None:
    clock = Clock()
    telemetry = Telemetry(["a"], TIERS, HealthSettings(stall_s=3.0), clock=clock)
    clock.t = 1.0
    telemetry.arrived("a", 1)
    clock.t = 3.9
    telemetry.arrived("a", 2)
    assert telemetry.camera_report("a")["level"] == OK
    clock.t = 4.1
    assert telemetry.camera_report("a")["level"] == ERROR


def test_losses_drops_bad_frames_and_tier_failures_set_levels_and_kinds() -> None:
    clock = Clock()
    telemetry = Telemetry(["a"], TIERS, clock=clock)
    for sequence in (1, 2, 5):  # 3 and 4 were lost before the node
        telemetry.arrived("a", sequence)
    telemetry.processed("a", "nano", 10.0, 0.2, 5.0)
    telemetry.failed("a", "truncated")
    report = telemetry.camera_report("a")
    assert report["frames_lost_before_node"] == 2
    assert report["drop_share"] == pytest.approx(2 / 5)
    assert report["level"] == WARN
    assert report["message"] == ("40% of frames dropped or lost (limit 20%); 2 frames lost before the node: check the "
                                 "camera driver's DDS profile (README, Transport); bad frames (truncated)")
    telemetry.failed("a", TIER_FAILURE, tier="small")
    report = telemetry.camera_report("a")
    assert report["level"] == ERROR and report["message"].startswith("tier small failed on recent frames")
    assert report["failures_by_kind"] == {"truncated": 1, "tier_failed:small": 1}
    assert telemetry.tier_report("small")["level"] == ERROR and telemetry.tier_report("small")["failures"] == 1
    nano = telemetry.tier_report("nano")
    assert (nano["level"], nano["frames"], nano["node_ms_p50"]) == (OK, 1, 10.0)


def test_health_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="frame_budget_ms"):
        Telemetry(["a"], TIERS, HealthSettings(frame_budget_ms=0.0))
    with pytest.raises(ConfigError, match="stall_s"):
        HealthSettings(stall_s=-1.0).validate()


def test_error_log_admits_each_new_kind_at_once_and_throttles_repeats() -> None:
    clock = Clock()
    log = ErrorLog(interval_s=5.0, clock=clock)
    assert log.admit("a", "truncated") == 0
    clock.t = 1.0
    assert log.admit("a", "truncated") is None
    assert log.admit("a", "truncated") is None
    assert log.admit("a", "bad_size") == 0  # a new kind is never hidden by the throttle
    assert log.admit("b", "truncated") == 0  # nor the same kind on another camera
    clock.t = 4.999
    assert log.admit("a", "truncated") is None
    clock.t = 5.0  # interval_s after the last log: logged, with the three suppressed since
    assert log.admit("a", "truncated") == 3
    clock.t = 5.5
    assert log.admit("a", "truncated") is None  # the interval counts from that log


def test_prometheus_exporter_receives_every_event_and_serves_them_over_http(free_port: int) -> None:
    metrics = PrometheusMetrics()
    metrics.prepare({"cam": "/robot/cam"}, TIERS)  # labelled with the topic after remapping
    telemetry = Telemetry(["cam"], TIERS, sink=metrics)
    for sequence in (1, 2, 4):
        telemetry.arrived("cam", sequence)
    telemetry.dropped("cam")
    telemetry.processed("cam", "small", 30.0, 0.4, 120.0)
    telemetry.processed("cam", "small", 60.0, 0.4, -5.0)  # negative age: not observed
    telemetry.failed("cam", TIER_FAILURE, tier="large")
    telemetry.incompatible_qos("cam")
    assert telemetry.camera_report("cam")["qos_incompatible"] == 1
    metrics.policy_changed("p-1", "learned")
    value = metrics.registry.get_sample_value
    assert value("adaptive_perception_frames_received_total", {"camera": "/robot/cam"}) == 3
    assert value("adaptive_perception_frames_lost_before_node_total", {"camera": "/robot/cam"}) == 1
    assert value("adaptive_perception_frames_dropped_total", {"camera": "/robot/cam"}) == 1
    assert value("adaptive_perception_frames_processed_total", {"camera": "/robot/cam", "tier": "small"}) == 2
    assert value("adaptive_perception_frames_processed_total", {"camera": "/robot/cam", "tier": "nano"}) == 0
    assert value("adaptive_perception_frames_failed_total", {"camera": "/robot/cam", "kind": "tier_failed:large"}) == 1
    assert value("adaptive_perception_node_seconds_bucket", {"camera": "/robot/cam", "tier": "small", "le": "0.0333"}) == 1
    assert value("adaptive_perception_node_seconds_sum", {"camera": "/robot/cam", "tier": "small"}) == pytest.approx(0.09)
    assert value("adaptive_perception_frame_age_seconds_count", {"camera": "/robot/cam"}) == 1
    assert value("adaptive_perception_qos_incompatible_total", {"topic": "/robot/cam"}) == 1
    assert value("adaptive_perception_camera_level", {"camera": "/robot/cam"}) == 0  # prepared
    # drift: unknown (0) and no score from the start, as after a policy swap resets the monitor (the series was absent)
    assert value("adaptive_perception_drift_state", {"camera": "/robot/cam"}) == 0
    assert math.isnan(value("adaptive_perception_drift_score", {"camera": "/robot/cam"}))
    metrics.audited("cam")  # the node's audit and drift figures carry the remapped name too
    metrics.drift_scored("cam", 1.25)
    metrics.drift_state_changed("cam", 3)
    assert value("adaptive_perception_audits_total", {"camera": "/robot/cam"}) == 1
    assert value("adaptive_perception_drift_score", {"camera": "/robot/cam"}) == 1.25
    assert value("adaptive_perception_drift_state", {"camera": "/robot/cam"}) == 3
    metrics.status({"cam": ERROR}, 1234.5)
    assert value("adaptive_perception_camera_level", {"camera": "/robot/cam"}) == ERROR
    assert value("adaptive_perception_status_timestamp_seconds") == 1234.5
    metrics.serve(free_port)
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{free_port}/metrics", timeout=5).read().decode()
    finally:
        metrics.close()
    assert 'adaptive_perception_frames_processed_total{camera="/robot/cam",tier="small"} 2.0' in text
    assert 'adaptive_perception_policy_info{mode="learned",policy_id="p-1"} 1.0' in text


def test_an_inactive_node_and_a_silent_topic_warn_and_a_reactivation_starts_the_clocks_again() -> None:
    clock = Clock()
    telemetry = Telemetry(["a", "b"], TIERS, HealthSettings(stall_s=3.0, window_s=10.0), clock=clock)
    telemetry.set_active(False)
    clock.t = 1.0
    assert telemetry.camera_report("a")["message"] == "node inactive: not subscribed to this camera (lifecycle activate)"
    assert telemetry.camera_report("a")["level"] == WARN
    telemetry.set_active(True)  # at t = 1
    clock.t = 3.5
    telemetry.arrived("a", 1)
    telemetry.processed("a", "nano", 10.0, 0.2, 5.0)
    assert telemetry.camera_report("b")["level"] == OK  # 2.5 s since the activation: not yet
    clock.t = 4.25
    report = telemetry.camera_report("b")
    assert report["level"] == WARN  # a misspelled topic, or nobody publishing
    assert report["message"] == ("no frame in 3.2 s since activation: is anything publishing on this topic "
                                 "(ros2 topic info)?")
    assert telemetry.camera_report("a")["level"] == OK
    telemetry.set_active(False)
    clock.t = 40.0
    telemetry.set_active(True)  # hours later: neither the old output nor the old arrival makes a stall
    clock.t = 41.0
    telemetry.arrived("a", 2)
    clock.t = 42.5
    telemetry.arrived("a", 3)
    report = telemetry.camera_report("a")
    assert report["level"] == OK and report["message"] == "frames processed"
    clock.t = 44.1  # 3.1 s since the first frame after the reactivation, none processed: a stall now
    telemetry.arrived("a", 4)
    assert telemetry.camera_report("a")["message"] == "frames arrive but none was processed for 3.1 s"


def test_a_quiet_camera_with_an_incompatible_publisher_says_so_instead_of_asking_whether_anything_publishes() -> None:
    """The only publisher's QoS was incompatible, and the status asked 'is anything publishing on this topic?'."""
    clock = Clock()
    telemetry = Telemetry(["a", "b"], TIERS, HealthSettings(stall_s=3.0), clock=clock)
    telemetry.incompatible_qos("a")
    clock.t = 4.0
    assert telemetry.camera_report("a")["message"] == (
        "no frame in 4.0 s since activation: 1 publisher(s) on this topic offer a QoS this subscription cannot "
        "accept, so their frames never arrive (match qos.reliability to the camera's)")
    assert telemetry.camera_report("b")["message"] == ("no frame in 4.0 s since activation: is anything publishing "
                                                       "on this topic (ros2 topic info)?")


def test_an_mlflow_password_stays_out_of_the_log_the_error_and_the_runs_parameters(monkeypatch):
    """`mlflow.tracking_uri:=http://bot:S3cret@host/` was logged whole to /rosout, kept in the run's parameters and
    repeated in the error /diagnostics shows."""
    from adaptive_perception.runlog import NodeRun, redact_uri

    assert redact_uri("http://fleetbot:S3cretT0ken@mlflow.local:5000/api") == "http://fleetbot:***@mlflow.local:5000/api"
    assert redact_uri("sqlite:///build/mlflow.db") == "sqlite:///build/mlflow.db"  # nothing to hide: unchanged
    assert redact_uri("http://only-user@host/") == "http://only-user@host/"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    uri = "http://fleetbot:S3cretT0ken@127.0.0.1:9/"  # nothing listens on port 9
    run = NodeRun(uri, "exp", "run", {"mlflow.tracking_uri": uri, "conf_threshold": 0.25})
    assert run.wait_started(60) and run.error
    assert "S3cretT0ken" not in run.error and "fleetbot:***@127.0.0.1:9" in run.error
    assert run._params == {"mlflow.tracking_uri": "http://fleetbot:***@127.0.0.1:9/", "conf_threshold": "0.25"}
    run.close({})
    # a password that is also a short number elsewhere leaves the other parameters alone (0.25 read 0.***)
    run = NodeRun("http://bot:25@127.0.0.1:9/", "exp", "run", {"mlflow.tracking_uri": "http://bot:25@127.0.0.1:9/",
                                                                "conf_threshold": 0.25})
    assert run.wait_started(60) and "bot:***@127.0.0.1:9" in run.error and ":25@" not in run.error
    assert run._params == {"mlflow.tracking_uri": "http://bot:***@127.0.0.1:9/", "conf_threshold": "0.25"}
    run.close({})


def test_two_nodes_starting_on_one_new_mlflow_store_each_get_their_run(tmp_path):
    """Two node processes started at once on a new shared store: MLflow's setup of the database (or of the
    experiment) failed part-way in one of them, which then ran its whole session without a run."""
    import subprocess
    import sys

    script = ("import sys; from adaptive_perception.runlog import NodeRun; "
              "run = NodeRun(sys.argv[1], 'perception_node', sys.argv[2], {'camera': sys.argv[2]}); "
              "run.wait_started(120); print(run.error or 'run ' + run.run_id); run.close({'frames': 1.0})")
    for store in range(3):
        (tmp_path / f"store{store}").mkdir()
        uri = f"sqlite:///{tmp_path / f'store{store}' / 'mlflow.db'}"
        nodes = [subprocess.Popen([sys.executable, "-c", script, uri, name], stdout=subprocess.PIPE, text=True)
                 for name in ("front", "rear")]
        said = [node.communicate(timeout=180)[0].strip() for node in nodes]
        assert all(line.startswith("run ") for line in said) and said[0] != said[1], said


def test_the_metrics_endpoint_closes_slow_connections_and_caps_how_many_it_serves(free_port, monkeypatch, capfd):
    """700 half-sent requests were held open for minutes, a thread each (24 -> 701 threads in the node); a byte every
    few seconds kept a connection open without end."""
    import socket
    import time

    from adaptive_perception import metrics as metrics_module

    monkeypatch.setattr(metrics_module, "LOCAL_CONNECTIONS", 3)  # this test connects from this machine
    monkeypatch.setattr(metrics_module, "DEADLINE_S", 1.5)
    metrics = PrometheusMetrics()
    metrics.serve(free_port)
    server = metrics._server
    try:
        slow = [socket.create_connection(("127.0.0.1", free_port)) for _ in range(3)]
        assert wait_until(lambda: server.serving == 3, 2)
        started = time.monotonic()
        extra = socket.create_connection(("127.0.0.1", free_port))
        extra.settimeout(2.0)
        assert extra.recv(100) == b"" and time.monotonic() - started < 0.5  # over the cap: closed at once
        closed = [None] * 3
        while time.monotonic() - started < 4.0 and None in closed:  # a byte every 0.2 s, a request never finished
            for index, connection in enumerate(slow):
                if closed[index] is None:
                    try:
                        connection.sendall(b"G")
                    except OSError:
                        closed[index] = time.monotonic() - started
            time.sleep(0.2)
        assert None not in closed and max(closed) < 2.5, closed  # closed at the deadline, dripping or not
        assert wait_until(lambda: server.serving == 0, 2)
        text = urllib.request.urlopen(f"http://127.0.0.1:{free_port}/metrics", timeout=5).read().decode()
        assert "adaptive_perception_status_timestamp_seconds" in text
    finally:
        metrics.close()
    assert "Traceback" not in capfd.readouterr().err  # a timed-out client is no error report


def test_lost_frames_are_counted_each_and_an_age_of_zero_is_an_age():
    metrics = PrometheusMetrics()
    metrics.prepare({"cam": "/cam"}, ("nano", "small", "large"))
    telemetry = Telemetry(["cam"], ("nano", "small", "large"), sink=metrics)
    for sequence in (1, 2, 6):  # 3, 4 and 5 never arrived
        telemetry.arrived("cam", sequence)
    telemetry.processed("cam", "small", 30.0, 0.4, 0.0)
    value = metrics.registry.get_sample_value
    assert value("adaptive_perception_frames_lost_before_node_total", {"camera": "/cam"}) == 3
    assert value("adaptive_perception_frame_age_seconds_count", {"camera": "/cam"}) == 1


def test_a_p95_exactly_at_the_frame_budget_is_not_past_it():
    clock = SimpleNamespace(t=0.0)
    telemetry = Telemetry(["a"], ("nano", "small", "large"), HealthSettings(frame_budget_ms=33.3),
                          clock=lambda: clock.t)
    for i in range(5):
        clock.t = 0.1 * i
        telemetry.arrived("a", i + 1)
        telemetry.processed("a", "nano", 33.3, 0.1, 10.0)  # every frame 33.3 ms: p95 33.3, the budget itself
    clock.t = 0.5
    report = telemetry.camera_report("a")
    assert report["level"] == OK and report["message"] == "frames processed"


def test_the_tiers_p95_are_the_95th_percentile():
    """nano node times 10, 20, ..., 100 ms: p95 at rank 0.95 x 9 = 8.55 -> 90 + 0.55 x 10 = 95.5; p50 55."""

    clock = SimpleNamespace(t=0.0)
    telemetry = Telemetry(["a"], ("nano", "small", "large"), clock=lambda: clock.t)
    for i, ms in enumerate(range(10, 101, 10)):
        clock.t = 0.05 * i
        telemetry.arrived("a", i + 1)
        telemetry.processed("a", "nano", float(ms), 0.1, 10.0)
    clock.t = 0.6
    tier = telemetry.tier_report("nano")
    assert tier["node_ms_p50"] == pytest.approx(55.0) and tier["node_ms_p95"] == pytest.approx(95.5)
    camera = telemetry.camera_report("a")
    assert camera["nano_ms_p95"] == pytest.approx(95.5) and camera["nano_ms_p50"] == pytest.approx(55.0)
