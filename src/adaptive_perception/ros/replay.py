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
from rclpy.duration import Duration
from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from vision_msgs.msg import Detection2DArray

from adaptive_perception.bag import IMAGE_TYPE, BagImage, bag_image_rgb, camera_topics, image_topics, read_images
from adaptive_perception.errors import AdaptivePerceptionError, BagError, ImageDecodeError

# Lock-step resends the frame it waits on, until the node's first output arrives, this often. Discovery matches each
# side's endpoints on its own schedule: the node's detections writer can publish the first output before it has
# matched this process's reader, and that output never arrives (seen on a loaded CI host: 30 s lost on frame 0).
FIRST_OUTPUT_RESEND_S = 2.0
DETECTIONS_TYPE = "vision_msgs/msg/Detection2DArray"
# A reader matches a new publisher when its own process has discovered it, which can come later than the publisher
# sees the reader (measured: a recorder 1.9 s after the node). Replay waits up to this long for every reliable reader
# to acknowledge a topic's first frame, and before it removes a publisher; best-effort readers acknowledge nothing.
ACK_WAIT_S = 5.0
MAX_GAP_S = 10.0  # recorded: the longest wait between two frames (after --rate); a longer jump is not waited out


class ReplayMode(Enum):
    """How frames are paced."""

    RECORDED = "recorded"  # bag timestamps, scaled by the rate
    FAST = "fast"  # back to back; the node drops what it cannot keep up with
    LOCKSTEP = "lockstep"  # the next frame only after the output of the previous one arrived


@dataclass
class ReplayReport:
    """What one replay published and got back."""

    frames_published: int = 0
    outputs_received: int = 0  # answers to published frames (lock-step: within the timeout)
    timeouts: int = 0  # lock-step: frames whose answer did not come within the timeout
    late: int = 0  # lock-step: answers that came after their frame's timeout (not in outputs or latencies)
    resent: int = 0  # lock-step: frames published again while the node had answered nothing yet
    skipped_repeats: int = 0  # lock-step: the previous frame on its topic again, stamp and bytes (not published)
    gaps_cut: int = 0  # recorded: jumps in the bag's clock longer than max_gap_s, not waited out
    undecodable: int = 0  # lock-step: frames the node's decoder refuses (not published: no answer would come)
    detections: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0  # first frame published to the last frame published or the last answer, whichever is later
    mode: ReplayMode = ReplayMode.LOCKSTEP
    skipped_topics: dict[str, str] = field(default_factory=dict)  # image topics of the bag left out by default: why
    stopped: str = ""  # why the replay ended before the bag did (the numbers cover what was published until then)
    interrupted: bool = False  # stopped by Ctrl-C

    def summary(self) -> dict[str, float | int | None]:
        """The replay's numbers; latencies are None when no answer came, `steady_fps` None outside lock-step."""
        lat = np.asarray(self.latencies_ms)
        lockstep = self.mode is ReplayMode.LOCKSTEP
        return {
            "frames_published": self.frames_published,
            "outputs_received": self.outputs_received,
            "unanswered": self.frames_published - self.outputs_received,
            "timeouts": self.timeouts,
            "late": self.late,
            "resent": self.resent,
            "skipped_repeats": self.skipped_repeats,
            "gaps_cut": self.gaps_cut,
            "undecodable": self.undecodable,
            "detections": self.detections,
            "latency_p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
            "latency_p95_ms": float(np.percentile(lat, 95)) if lat.size else None,
            "fps": self.outputs_received / self.wall_s if self.wall_s > 0 else 0.0,
            # lock-step: frames per second of round trips after the first (which also pays one-time warm-up); in
            # the other modes frames overlap, so a round trip is no rate
            "steady_fps": (1e3 * (len(self.latencies_ms) - 1) / sum(self.latencies_ms[1:])
                           if lockstep and len(self.latencies_ms) > 1 else None),
            "wall_s": self.wall_s,
            "stopped_early": self.stopped or None,
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
    subscribers: int = 1,
    max_gap_s: float = MAX_GAP_S,
) -> ReplayReport:
    """Replay image topics of `bag` through `node`'s publishers; the caller spins `node` in another thread.

    `remap` maps a bag topic to the topic to publish on (default: the bag's own name). Without `topics`, every
    image topic but the node's own debug images (`bag.DEBUG_IMAGE_TOPICS`: a recording of a node holds them, and
    replaying them back means nothing). `on_output` sees each published frame's first answer. Frames go out once
    each image topic has `subscribers` matched readers: a reader that matches a publisher later (discovery runs on
    each process's own schedule) never gets the frames published before. In `recorded`, each frame waits its gap
    in the bag's log times after the one before, divided by `rate`: a gap longer than `max_gap_s` (a frame logged a
    day ahead, a log time of 0) is not waited out, and a gap backwards (a looped recording) is none.
    """
    if rate <= 0 or not max_gap_s > 0:
        raise AdaptivePerceptionError(f"replay rate {rate} and max gap {max_gap_s} s must be > 0")
    remap = dict(remap or {})
    available = image_topics(bag)
    report = ReplayReport(mode=mode)
    if topics:
        chosen = list(topics)
    else:
        chosen, report.skipped_topics = camera_topics(bag, available)
    unknown = sorted(set(remap) - set(available))
    if unknown:
        raise BagError(f"--remap names {unknown}, which bag '{bag}' has no image topic of; its image topics are "
                       f"{sorted(available)} (write the bag's topic exactly, with its leading '/')")
    frames = read_images(bag, chosen)  # streamed: validates the topics before anything is published
    first = next(frames, None)
    if first is None:
        raise BagError(f"bag '{bag}' has no messages on {chosen}")

    cond = threading.Condition()
    sent_at: dict[tuple[int, int, str], float] = {}
    sends: dict[tuple[int, int, str], int] = {}  # how often each stamp went out (recorded and fast may repeat one)
    answers: dict[tuple[int, int, str], int] = {}
    timed_out: set[tuple[int, int, str]] = set()
    last_event = [0.0]  # the latest publish or counted answer

    def received(msg: Detection2DArray) -> None:
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id)
        now = time.perf_counter()
        with cond:
            counted = answers.get(key, 0) < sends.get(key, 0) and key not in timed_out
            if counted:
                answers[key] = answers.get(key, 0) + 1
                report.outputs_received += 1
                report.detections += len(msg.detections)
                report.latencies_ms.append((now - sent_at[key]) * 1e3)
                last_event[0] = max(last_event[0], now)
            elif key in timed_out and answers.get(key, 0) == 0:
                answers[key] = 1
                report.late += 1
            cond.notify_all()
        if counted and answers[key] == 1 and on_output is not None:
            on_output(msg)

    # the reader first: the node learns of it before the first frame reaches it, as far as discovery's order allows.
    # No QoS-event handlers: rclpy adds them to the node's executor as waitables, and an executor spinning in another
    # thread dies (InvalidHandle) when one is destroyed while it builds its wait set, as these are destroyed below.
    # Their default callbacks only log an incompatible QoS or type, which the waits for a match below report as errors.
    subscription = node.create_subscription(
        Detection2DArray, output_topic, received, QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE),
        event_callbacks=SubscriptionEventCallbacks(use_default_callbacks=False))
    publishers = {
        topic: node.create_publisher(Image if available[topic] == IMAGE_TYPE else CompressedImage,
                                     remap.get(topic, topic), 10,
                                     event_callbacks=PublisherEventCallbacks(use_default_callbacks=False))
        for topic in chosen
    }
    try:
        _wait_for_subscribers(node, publishers, available, wait_for_subscriber_s, subscribers)
        _wait_for_publisher(node, subscription, wait_for_subscriber_s)
        started = time.perf_counter()
        # recorded: when each frame is due after the first, which went out and was acknowledged at `paced_from`
        previous_bag_ns, due_s, paced_from = first.bag_time_ns, 0.0, None
        newest: dict[str, tuple[tuple[int, int, str], BagImage]] = {}  # per topic, the frame published last
        try:
            for index, frame in enumerate(itertools.chain([first], frames)):
                key = (frame.stamp_sec, frame.stamp_nanosec, frame.frame_id)
                if mode is ReplayMode.LOCKSTEP and key in sends:
                    last = newest.get(frame.topic)
                    if last is not None and last[0] == key and last[1].cdr == frame.cdr:  # the same frame again (a
                        # recording of a resend): nothing new
                        report.skipped_repeats += 1
                        continue
                    report.stopped = (f"bag '{bag}': frame {index} on '{frame.topic}' repeats header stamp "
                                      f"{key[0]}.{key[1]:09d} (frame_id '{key[2]}') of an earlier frame; lock-step "
                                      "pairs outputs with frames by stamp, so it needs unique stamps: use --mode fast "
                                      "or recorded for this bag")
                    break
                if mode is ReplayMode.LOCKSTEP and not _decodable(frame):
                    report.undecodable += 1  # the node would skip it without an answer: lock-step would only wait
                    continue
                if mode is ReplayMode.RECORDED:
                    gap_s = (frame.bag_time_ns - previous_bag_ns) / 1e9 / rate
                    previous_bag_ns = frame.bag_time_ns
                    if gap_s > max_gap_s:  # a jump in the bag's clock: not waited out
                        report.gaps_cut += 1
                    else:
                        due_s += max(gap_s, 0.0)
                    delay = due_s - (time.perf_counter() - paced_from) if paced_from is not None else 0.0
                    if delay > 0:
                        time.sleep(delay)
                with cond:
                    sent_at[key] = last_event[0] = time.perf_counter()
                    sends[key] = sends.get(key, 0) + 1
                first_on_topic = frame.topic not in newest
                if not frame.malformed:  # the node answers no malformed message: the end waits for a real frame's
                    newest[frame.topic] = key, frame
                publishers[frame.topic].publish(frame.cdr)
                if first_on_topic:  # every reliable reader has it: each has matched this publisher on its own side too
                    publishers[frame.topic].wait_for_all_acked(Duration(seconds=min(timeout_s, ACK_WAIT_S)))
                if paced_from is None:
                    paced_from = time.perf_counter()
                report.frames_published += 1
                if on_frame is not None:
                    on_frame(index)
                if mode is ReplayMode.LOCKSTEP:
                    deadline = time.perf_counter() + timeout_s
                    while True:
                        resend = report.outputs_received == 0  # the node's writer may not have matched this reader yet
                        left = deadline - time.perf_counter()
                        with cond:
                            if cond.wait_for(lambda: answers.get(key, 0) > 0,
                                             max(0.0, min(left, FIRST_OUTPUT_RESEND_S) if resend else left)):
                                break
                            if not resend or time.perf_counter() >= deadline:
                                report.timeouts += 1
                                timed_out.add(key)
                                break
                        publishers[frame.topic].publish(frame.cdr)
                        report.resent += 1
                    if key in timed_out and not publishers[frame.topic].get_subscription_count():
                        report.stopped = (f"nobody reads '{publishers[frame.topic].topic_name}' any more (after frame {index}'s --timeout): "
                                          "the node exited, was deactivated or lost its camera subscription; each "
                                          "frame left would only wait out its --timeout")
                        break
        except KeyboardInterrupt:  # Ctrl-C: the report covers what went out until then
            report.stopped, report.interrupted = "interrupted (Ctrl-C or SIGTERM)", True
        if mode is not ReplayMode.LOCKSTEP and not report.interrupted:
            # the node always processes a camera's newest frame (older ones it may drop on purpose): its answer is
            # the last to come; the wait for it is not counted in wall_s. A last frame the node cannot decode gets no
            # answer (and may have displaced the one before): nothing to wait for on that topic (decoded once here)
            try:
                last = [k for k, frame in newest.values() if _decodable(frame)]
                with cond:
                    cond.wait_for(lambda: all(answers.get(k, 0) > 0 for k in last), timeout_s)
            except KeyboardInterrupt:  # while the last answers were awaited: the report is whole but for them
                report.stopped, report.interrupted = "interrupted (Ctrl-C or SIGTERM)", True
        with cond:
            report.wall_s = max(last_event[0] - started, 0.0)  # nothing published: no time
    finally:
        node.destroy_subscription(subscription)
        ack_wait = Duration(seconds=0.5 if report.interrupted else ACK_WAIT_S)  # Ctrl-C: the summary, promptly
        for publisher in publishers.values():
            publisher.wait_for_all_acked(ack_wait)  # nothing in flight is dropped with it
            node.destroy_publisher(publisher)
    return report


def _decodable(frame: BagImage) -> bool:
    """Whether the node's decoder takes this frame (the same code: what it refuses, it skips without an answer)."""
    try:
        bag_image_rgb(frame)
    except ImageDecodeError:
        return False
    return True


def _other_types(infos, wanted: str) -> list[str]:
    return sorted({i.topic_type for i in infos if i.topic_type != wanted})


def _wait_for_publisher(node: Node, subscription, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while subscription.get_publisher_count() == 0:
        if time.monotonic() > deadline:
            infos = node.get_publishers_info_by_topic(subscription.topic_name)
            others = _other_types(infos, DETECTIONS_TYPE)
            unmatched = sorted({i.node_name for i in infos if i.topic_type == DETECTIONS_TYPE})
            what = (f"'{subscription.topic_name}' carries {others}, not {DETECTIONS_TYPE}" if others else
                    f"'{subscription.topic_name}' is published by {unmatched} with a QoS a reliable reader cannot "
                    "match (best effort, most likely)" if unmatched else
                    f"nobody publishes on '{subscription.topic_name}'")
            raise AdaptivePerceptionError(
                f"{what}, where replay waits for the node's outputs, after {wait_s:.0f} s; name the node's "
                "Detection2DArray topic with --output-topic")
        time.sleep(0.05)


def _wait_for_subscribers(node: Node, publishers: Mapping[str, object], available: Mapping[str, str],
                          wait_s: float, wanted: int = 1) -> None:
    deadline = time.monotonic() + wait_s
    for topic, publisher in publishers.items():
        while (matched := publisher.get_subscription_count()) < wanted:
            if time.monotonic() > deadline:
                if matched:
                    raise AdaptivePerceptionError(
                        f"'{publisher.topic_name}' (bag topic '{topic}') has {matched} of the {wanted} subscribers "
                        f"asked for (--subscribers) after {wait_s:.0f} s; start the others (a recorder, a viewer) "
                        "first, or ask for fewer")
                others = _other_types(node.get_subscriptions_info_by_topic(publisher.topic_name), available[topic])
                if others:
                    raise AdaptivePerceptionError(
                        f"'{publisher.topic_name}' is read as {others}, but bag topic '{topic}' carries "
                        f"{available[topic]}; the node reads CompressedImage on a topic whose name ends in "
                        "'compressed' and Image elsewhere: remap to such a topic (--remap BAG_TOPIC:=NODE_TOPIC)")
                raise AdaptivePerceptionError(
                    f"nobody subscribes to '{publisher.topic_name}' (bag topic '{topic}') after {wait_s:.0f} s; "
                    "start the node and activate it, or remap the topic with --remap BAG_TOPIC:=NODE_TOPIC")
            time.sleep(0.05)
