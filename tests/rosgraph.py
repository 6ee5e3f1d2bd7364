"""A real rclpy graph for tests: the node under test plus a driver node, spun in a background thread."""
from __future__ import annotations

import itertools
import threading
import time
from typing import Callable

import numpy as np
import rclpy
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import Log
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from vision_msgs.msg import Detection2DArray

from adaptive_perception.ros.node import NODE_NAME, PerceptionNode
from adaptive_perception_msgs.msg import RoutingDecision

TRANSITIONS = {
    "configure": Transition.TRANSITION_CONFIGURE,
    "activate": Transition.TRANSITION_ACTIVATE,
    "deactivate": Transition.TRANSITION_DEACTIVATE,
    "cleanup": Transition.TRANSITION_CLEANUP,
}


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def image_msg(rgb: np.ndarray, sec: int, nanosec: int = 0, frame_id: str = "cam") -> Image:
    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", step=rgb.shape[1] * 3)
    msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id = sec, nanosec, frame_id
    msg.data = rgb.tobytes()
    return msg


class Graph:
    """PerceptionNode + driver on one single-threaded executor; the driver calls lifecycle services and records outputs.
    Metrics are off (metrics.port 0) unless the parameters name a port, so parallel runs never collide.

    Every graph renames its node (perception_node_<n>): rcl keeps one /rosout publisher per node name,
    so a same-named node from an earlier test could swallow this one's log messages."""

    _count = itertools.count()

    def __init__(self, context: rclpy.context.Context, parameters: dict[str, object], camera: str = "image",
                 namespace: str = "") -> None:
        """`camera`: where the node's `image` topic is remapped to (the driver publishes there); `namespace`: the
        node's and the driver's (`/robot1`; the root by default)."""
        self.name = f"{NODE_NAME}_{next(Graph._count)}"
        remap = ["-r", f"image:={camera}"] if camera != "image" else []
        remap += ["-r", f"__ns:={namespace}"] if namespace else []
        self.node = PerceptionNode(
            context=context, cli_args=["--ros-args", "-r", f"__node:={self.name}", *remap],
            parameter_overrides=[Parameter(k, value=v) for k, v in {"metrics.port": 0, **parameters}.items()])
        self.driver = Node("test_driver", context=context, namespace=namespace or None)
        self.fqn = f"{namespace}/{self.name}"  # the node's name as the graph lists it
        self.detections: list[Detection2DArray] = []
        self.routing: list[RoutingDecision] = []
        self.logs: list[Log] = []
        self.diagnostics: list[DiagnosticArray] = []
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.driver.create_subscription(Detection2DArray, "detections", self.detections.append, reliable)
        self.driver.create_subscription(RoutingDecision, "routing", self.routing.append, reliable)
        # /rosout keeps a transient-local history: a late match still receives what was logged before it
        self.driver.create_subscription(Log, "/rosout", self.logs.append, QoSProfile(
            depth=1000, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.driver.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, reliable)
        self.image_pub = self.driver.create_publisher(Image, camera, reliable)
        self.compressed_pub = self.driver.create_publisher(CompressedImage, "image/compressed", reliable)
        self._change = self.driver.create_client(ChangeState, f"{self.fqn}/change_state")
        self._get = self.driver.create_client(GetState, f"{self.fqn}/get_state")
        # one thread, as the node's own main spins: rclpy's MultiThreadedExecutor busy-loops (ros2/rclpy#1547),
        # taking the CPU the tiers need, so the node fell behind its own job times on a loaded 2-core machine
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.driver)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()
        assert self._change.wait_for_service(timeout_sec=10) and self._get.wait_for_service(timeout_sec=10)

    def transition(self, name: str) -> bool:
        """Request a lifecycle transition through the node's change_state service; True on success."""
        future = self._change.call_async(ChangeState.Request(transition=Transition(id=TRANSITIONS[name])))
        assert wait_until(future.done, 60), f"change_state({name}) did not answer"
        return future.result().success

    def state(self) -> str:
        future = self._get.call_async(GetState.Request())
        assert wait_until(future.done, 10)
        return future.result().current_state.label

    def call(self, service_type, name: str, request):
        """Call one of the node's own services (~/name) and return the response."""
        client = self.driver.create_client(service_type, f"{self.fqn}/{name}")
        try:
            assert client.wait_for_service(timeout_sec=10), f"service {name} not offered"
            future = client.call_async(request)
            assert wait_until(future.done, 30), f"{name} did not answer"
            return future.result()
        finally:
            self.driver.destroy_client(client)

    def wait_for_image_subscriber(self, publisher=None) -> None:
        publisher = publisher or self.image_pub
        assert wait_until(lambda: publisher.get_subscription_count() > 0, 10), "node did not subscribe"

    def send_lockstep(self, msg: Image | CompressedImage, publisher=None, timeout: float = 20.0) -> bool:
        """Publish one frame and wait for its Detection2DArray and RoutingDecision (matched by header; the node
        publishes the detections first); True if both came."""
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id)
        (publisher or self.image_pub).publish(msg)
        return wait_until(lambda: all(any((m.header.stamp.sec, m.header.stamp.nanosec, m.header.frame_id) == key
                                          for m in received) for received in (self.detections, self.routing)), timeout)

    def status(self, suffix: str, predicate: Callable[[dict[str, str]], bool] = lambda values: True,
               timeout: float = 5.0):
        """The newest DiagnosticStatus of this node whose name ends with `suffix` (e.g. "camera /image",
        "tier nano", "routing") and whose values satisfy `predicate`; waits for the 1 Hz publication."""
        def find():
            for array in reversed(list(self.diagnostics)):
                for status in array.status:
                    if status.name == f"{self.fqn}: {suffix}" and predicate({kv.key: kv.value for kv in status.values}):
                        return status
            return None

        assert wait_until(lambda: find() is not None, timeout), f"no status '{suffix}' as expected"
        return find()

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5)
        self._thread.join(timeout=5)  # before the nodes go: a spin thread building a wait set on them would die
        self.node._stop_processing()
        self.node.destroy_node()
        self.driver.destroy_node()
