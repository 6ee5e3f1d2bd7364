"""Publish a bag's camera frames to a running node at recorded rate, as fast as possible, or in lock-step."""
from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from vision_msgs.msg import Detection2DArray

from adaptive_perception.bag import IMAGE_TYPE, image_topics, read_images
from adaptive_perception.errors import AdaptivePerceptionError, BagError

# Lock-step resends the frame it waits on, until the node's first output arrives, this often. Discovery matches each
# side's endpoints on its own schedule: the node's detections writer can publish the first output before it has
# matched this process's reader, and that output never arrives (seen on a loaded CI host: 30 s lost on frame 0).
FIRST_OUTPUT_RESEND_S = 2.0


class ReplayMode(Enum):
    """How frames are paced."""

    RECORDED = "recorded"  # bag timestamps, scaled by the rate
    FAST = "fast"  # back to back; the node drops what it cannot keep up with
    LOCKSTEP = "lockstep"  # the next frame only after the output of the previous one arrived


@dataclass
class ReplayReport:
    """What one replay published and got back."""

    frames_published: int = 0
    outputs_received: int = 0
    timeouts: int = 0
    resent: int = 0  # lock-step: the first frame published again while the node had answered nothing
    detections: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0

    def summary(self) -> dict[str, float | int]:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.asarray([np.nan])
        return {
            "frames_published": self.frames_published,
            "outputs_received": self.outputs_received,
            "timeouts": self.timeouts,
            "resent": self.resent,
            "detections": self.detections,
            "latency_p50_ms": float(np.percentile(lat, 50)),
            "latency_p95_ms": float(np.percentile(lat, 95)),
            "fps": self.outputs_received / self.wall_s if self.wall_s > 0 else 0.0,
            # lock-step: frames per second of round trips after the first (which also pays one-time warm-up)
            "steady_fps": (1e3 * (len(self.latencies_ms) - 1) / sum(self.latencies_ms[1:])
                           if len(self.latencies_ms) > 1 else 0.0),
            "wall_s": self.wall_s,
        }


def replay_bag(
    node: Node,
    bag: str | Path,
    mode: ReplayMode = ReplayMode.LOCKSTEP,
    rate: float = 1.0,
    topics: Sequence[str] | None = None,
    remap: Mapping[str, str] | None = None,
    output_topic: str = "detections",
    timeout_s: float = 10.0,
    wait_for_subscriber_s: float = 15.0,
    on_output: Callable[[Detection2DArray], None] | None = None,
    on_frame: Callable[[int], None] | None = None,
) -> ReplayReport:
    """Replay image topics of `bag` through `node`'s publishers; the caller spins `node` in another thread.

    `remap` maps a bag topic to the topic to publish on (default: the bag's own name).
    """
    if rate <= 0:
        raise AdaptivePerceptionError(f"replay rate {rate} must be > 0")
    remap = dict(remap or {})
    available = image_topics(bag)
    chosen = list(topics) if topics else sorted(available)
    frames = read_images(bag, chosen)  # streamed: validates the topics before anything is published
    first = next(frames, None)

    report = ReplayReport()
    cond = threading.Condition()
    sent_at: dict[tuple[int, int, str], float] = {}
    answered: set[tuple[int, int, str]] = set()

    def received(msg: Detection2DArray) -> None:
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id)
        now = time.perf_counter()
        with cond:
            first_answer = key in sent_at and key not in answered
            if first_answer:
                answered.add(key)
                report.outputs_received += 1
                report.detections += len(msg.detections)
                report.latencies_ms.append((now - sent_at[key]) * 1e3)
            cond.notify_all()
        if first_answer and on_output is not None:
            on_output(msg)

    # the reader first: the node learns of it before the first frame reaches it, as far as discovery's order allows
    subscription = node.create_subscription(
        Detection2DArray, output_topic, received, QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    publishers = {
        topic: node.create_publisher(Image if available[topic] == IMAGE_TYPE else CompressedImage,
                                     remap.get(topic, topic), 10)
        for topic in chosen
    }
    try:
        _wait_for_subscribers(publishers, wait_for_subscriber_s)
        _wait_for_publisher(subscription, wait_for_subscriber_s)
        started = time.perf_counter()
        first_bag_ns = first.bag_time_ns if first else 0
        for index, frame in enumerate(itertools.chain([first] if first else [], frames)):
            key = (frame.stamp_sec, frame.stamp_nanosec, frame.frame_id)
            if key in sent_at and mode is ReplayMode.LOCKSTEP:
                raise BagError(f"bag '{bag}': frame {index} on '{frame.topic}' repeats header stamp {key[0]}.{key[1]:09d} "
                               f"(frame_id '{key[2]}'); lock-step pairs outputs with frames by stamp, so it needs "
                               "unique stamps: use --mode fast or recorded for this bag")
            if mode is ReplayMode.RECORDED:
                delay = (frame.bag_time_ns - first_bag_ns) / 1e9 / rate - (time.perf_counter() - started)
                if delay > 0:
                    time.sleep(delay)
            with cond:
                sent_at[key] = time.perf_counter()
            publishers[frame.topic].publish(frame.cdr)
            report.frames_published += 1
            if on_frame is not None:
                on_frame(index)
            if mode is ReplayMode.LOCKSTEP:
                deadline = time.perf_counter() + timeout_s
                while True:
                    resend = report.outputs_received == 0  # the node's writer may not have matched this reader yet
                    left = deadline - time.perf_counter()
                    with cond:
                        if cond.wait_for(lambda: key in answered,
                                         max(0.0, min(left, FIRST_OUTPUT_RESEND_S) if resend else left)):
                            break
                    if not resend or time.perf_counter() >= deadline:
                        report.timeouts += 1
                        break
                    publishers[frame.topic].publish(frame.cdr)
                    report.resent += 1
        if report.frames_published == 0:
            raise BagError(f"bag '{bag}' has no messages on {chosen}")
        if mode is not ReplayMode.LOCKSTEP:  # collect late outputs
            with cond:
                cond.wait_for(lambda: len(answered) >= len(sent_at), timeout_s)
        report.wall_s = time.perf_counter() - started
    finally:
        node.destroy_subscription(subscription)
        for publisher in publishers.values():
            node.destroy_publisher(publisher)
    return report


def _wait_for_publisher(subscription, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while subscription.get_publisher_count() == 0:
        if time.monotonic() > deadline:
            raise AdaptivePerceptionError(
                f"nobody publishes on '{subscription.topic_name}', where replay waits for the node's outputs, after "
                f"{wait_s:.0f} s; name the node's Detection2DArray topic with --output-topic")
        time.sleep(0.05)


def _wait_for_subscribers(publishers: Mapping[str, object], wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    for topic, publisher in publishers.items():
        while publisher.get_subscription_count() == 0:
            if time.monotonic() > deadline:
                raise AdaptivePerceptionError(
                    f"nobody subscribes to '{publisher.topic_name}' (bag topic '{topic}') after {wait_s:.0f} s; "
                    "start the node and activate it, or remap the topic with --remap BAG_TOPIC:=NODE_TOPIC")
            time.sleep(0.05)
