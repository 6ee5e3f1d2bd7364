"""`adaptive-perception record`: the node's topics to segmented MCAP (and, optionally, a live Foxglove server).

Subscribes to camera frames, detections, routing decisions, debug images and /diagnostics as serialized bytes
(no conversion on the way), and hands them to `recording.SegmentedRecorder` and `live.LiveServer`."""
from __future__ import annotations

import importlib
import sys
import signal
import threading
import time
from pathlib import Path

from rclpy.node import Node
from rclpy.clock import Clock, ClockType
from rclpy.qos import QoSProfile, ReliabilityPolicy

from adaptive_perception.errors import ConfigError
from adaptive_perception.progress import counted
from adaptive_perception.recording import SegmentedRecorder
from adaptive_perception.telemetry import ErrorLog
from adaptive_perception.ros import DEBUG_IMAGE_TOPICS, MARKER_TOPIC

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
MISSING_AFTER_S = 5.0  # discovery on a quiet localhost graph takes well under a second
SAY_FAILURES_EVERY_S = 5.0


def default_topics(cameras: list[str] | None, node_name: str) -> list[str]:
    """Camera frames, the node's outputs (in its namespace: `/robot1/perception_node` publishes `/robot1/detections`),
    its boxes as an ImageMarker (Foxglove overlays them on the camera), its compressed debug image (beside them) and
    /diagnostics;
    with several cameras, each camera's own detections, routing, marker and debug image instead of the combined
    marker and debug image (which show the cameras in turn)."""
    node = "/" + node_name.strip("/")
    namespace = node.rsplit("/", 1)[0]  # "" at the root
    cameras = cameras or [f"{namespace}/image"]  # the node's default camera, `image`, in its namespace
    topics = [*cameras, f"{namespace}/detections", f"{namespace}/routing"]
    if len(cameras) > 1:
        topics += [f"{node}/{camera.strip('/')}/{leaf}" for camera in cameras
                   for leaf in ("detections", "routing", MARKER_TOPIC, DEBUG_IMAGE_TOPICS[1])]
    else:
        topics += [f"{namespace}/{MARKER_TOPIC}", f"{namespace}/{DEBUG_IMAGE_TOPICS[1]}"]
    return [*topics, "/diagnostics"]


def message_class(msgtype: str):
    """The Python class of `pkg/msg/Type`."""
    package, _, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{package}.msg"), name)


class TopicRecorder:
    """Subscribes to each topic once its type is known on the graph; every message goes to the sinks."""

    def __init__(self, node: Node, topics: list[str], recorder: SegmentedRecorder | None = None, live=None) -> None:
        # names as the graph lists them: a relative `camera/image_raw` is `/camera/image_raw` (it was compared as
        # written and never matched), resolved by ROS itself (`~/x` too); each once
        self.node, self.recorder, self.live = node, recorder, live
        self.topics = list(dict.fromkeys(node.resolve_topic_name(t) for t in topics))
        self.types: dict[str, str] = {}
        self.counts: dict[str, int] = {topic: 0 for topic in self.topics}
        self.failed, self.last_error = 0, ""  # messages the recorder could not write (a full disk), the latest why
        self.close_error = ""  # the recorder's final close failed (the last segment then counts as lost)
        self._failure_log = ErrorLog(SAY_FAILURES_EVERY_S)  # said at once, then at most every 5 s
        self._stopped = False
        self._writing = threading.Lock()  # stop() returns with no message half-written
        # on the steady clock: on /clock's time (use_sim_time) no topic was found before the bag played
        self._timer = node.create_timer(0.5, self.discover, clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.discover()

    def discover(self) -> None:
        """Subscribe to the listed topics that have appeared on the graph (types read from the graph)."""
        known = dict(self.node.get_topic_names_and_types())
        for topic in self.topics:
            if topic in self.types or topic not in known:
                continue
            msgtype = known[topic][0]
            reliability = ReliabilityPolicy.BEST_EFFORT if msgtype in IMAGE_TYPES else ReliabilityPolicy.RELIABLE
            self.node.create_subscription(
                message_class(msgtype), topic, lambda raw, t=topic, m=msgtype: self._on_message(t, m, raw),
                QoSProfile(depth=30, reliability=reliability), raw=True)
            self.types[topic] = msgtype
            if self.live is not None:
                self.live.advertise(topic, msgtype)

    def _on_message(self, topic: str, msgtype: str, raw: bytes) -> None:
        with self._writing:
            if self._stopped:
                return
            stamp = self.node.get_clock().now().nanoseconds
            written = True
            if self.recorder is not None:
                try:
                    self.recorder.write(topic, msgtype, stamp, raw)
                except Exception as exc:  # a full disk: counted and said, and the recording goes on when it can
                    self._write_failed(exc)
                    written = False
            if self.live is not None:
                self.live.log(topic, msgtype, raw, stamp)
            self.counts[topic] += written

    def _write_failed(self, exc: Exception) -> None:
        self.failed += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self._failure_log.admit("record", "write") is not None:
            fix = ("recording goes on when the disk takes them again (free space, or lower --budget-mb)"
                   if isinstance(exc, OSError) else "this topic's messages cannot be recorded here")
            print(f"NOT RECORDED: {self.failed} messages so far could not be written ({self.last_error}); {fix}",
                  file=sys.stderr, flush=True)

    def stop(self) -> None:
        """Stop recording: later messages are left out (the sinks stay open: close them once the executor has
        stopped). The subscriptions go with the node after its executor: one destroyed while an executor in another
        thread builds its wait set kills that executor (their QoS-event handlers, an rclpy race)."""
        with self._writing:
            self._stopped = True
        self.node.destroy_timer(self._timer)


def _interrupt(signum, _frame) -> None:
    # once: a second Ctrl-C or kill while the open segment is being closed must not cut that short
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def _print_closed(recorder: SegmentedRecorder | None, printed: int) -> int:
    """One line per segment closed since the first `printed`; returns how many are printed now."""
    if recorder is None:
        return printed
    for path in recorder.closed_segments[printed:]:
        print(f"closed {path}", file=sys.stderr, flush=True)
    return len(recorder.closed_segments)


def run_record(out: Path | None, topics: list[str], segment_mb: float, segment_s: float, budget_mb: float,
               duration_s: float, live_port: int | None, live_host: str, use_sim_time: bool = False) -> int:
    """Record until Ctrl-C (or `duration_s` > 0); prints one line per closed segment. Log times are the
    recorder's clock when a message arrives: /clock's time with `use_sim_time` (a bag played with --clock)."""
    from adaptive_perception.live import LiveServer
    from adaptive_perception.recording import ros_typestore
    from adaptive_perception.ros.session import spun_node

    if out is None and live_port is None:
        raise ConfigError("nothing to do: give --out DIR (MCAP segments) and/or --live (Foxglove server)")
    if out is not None and out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give the folder the segments go in (created when missing)")
    store = ros_typestore()
    recorder = SegmentedRecorder(out, store, "recording", int(segment_mb * 2**20), segment_s,
                                 int(budget_mb * 2**20)) if out is not None else None
    live = LiveServer(store, live_host, live_port) if live_port is not None else None
    where = [f"MCAP segments in {out}"] if out else []
    where += [f"Foxglove live on ws://{live_host}:{live.port}"] if live else []
    with spun_node("adaptive_perception_recorder", use_sim_time) as node:
        # SIGTERM (docker stop, systemd) stops like Ctrl-C: the open segment is closed, not lost (set after rclpy's
        # own handlers, which would only shut the context down)
        signal.signal(signal.SIGTERM, _interrupt)
        # and SIGINT: a shell's background job (`record ... &`) starts with it ignored, and Python then gives it no
        # handler, so `kill -INT` did nothing
        signal.signal(signal.SIGINT, _interrupt)
        recording = TopicRecorder(node, topics, recorder, live)
        stops = f"stops after {duration_s:g} s or at Ctrl-C" if duration_s else "Ctrl-C stops"
        print(f"recording {recording.topics}: {', '.join(where)}; {stops}", file=sys.stderr, flush=True)
        closed = 0
        started = time.monotonic()
        said_missing = False
        try:
            while duration_s <= 0 or time.monotonic() - started < duration_s:
                time.sleep(0.2)
                closed = _print_closed(recorder, closed)
                if not said_missing and time.monotonic() - started >= MISSING_AFTER_S:
                    said_missing = True  # said once, early: not only in the summary at the end of a long recording
                    missing = [t for t in recording.topics if t not in recording.types]
                    if missing:
                        print(f"not on the graph after {MISSING_AFTER_S:.0f} s: {missing}; recorded once they appear "
                              "(`ros2 topic list` shows the names there)", file=sys.stderr, flush=True)
        except KeyboardInterrupt:
            pass
        finally:
            recording.stop()
    for sink in (recorder, live):
        if sink is not None:
            try:
                sink.close()
            except Exception as exc:  # the last segment's index on a full disk: counted below, never a traceback
                recording.close_error = f"closing {type(sink).__name__}: {type(exc).__name__}: {exc}"
    if recorder is not None:
        recorder.release()
    _print_closed(recorder, closed)  # the one open until now
    missing = [t for t in recording.topics if t not in recording.types]
    print(f"{'recorded' if recorder is not None else 'served'} {counted(sum(recording.counts.values()), 'message')}: " +
          ", ".join(f"{t} {n}" for t, n in recording.counts.items()) +
          (f"; never seen on the graph: {missing}" if missing else ""), file=sys.stderr)
    lost = recorder.lost if recorder is not None else 0
    if recording.failed or lost or recording.close_error:
        broken = recorder.broken_segments if recorder is not None else []
        print(f"NOT RECORDED: {recording.failed} messages could not be written"
              + (f" and {lost} written before a failure are in segments it left unclosed (no index: rosbags and "
                 f"ros2 bag do not open them): {[str(p) for p in broken]}" if lost or broken else "")
              + f" (last error: {recording.close_error or recording.last_error})", file=sys.stderr)
        return 1
    if recorder is not None and not sum(recording.counts.values()):  # a script must not take this for a recording
        print("NOTHING RECORDED: no message came on any of the topics (is the camera / node running, on this "
              "ROS_DOMAIN_ID? `ros2 topic list` shows what is published)", file=sys.stderr)
        return 1
    return 0
