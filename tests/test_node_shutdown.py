"""The node process stopped by a signal: it closes with its ROS context still valid, so what it logs while closing
reaches /rosout (rclpy's own signal handlers shut the context down first: "Failed to publish log message to rosout")."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from rcl_interfaces.msg import Log
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from rosgraph import wait_until


@pytest.mark.parametrize("signum,ignored", [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=["SIGINT", "SIGTERM", "SIGINT-ignored-at-start"])
def test_a_signalled_node_finishes_its_run_and_says_so_on_rosout(context, tmp_path, signum, ignored):
    """`ignored`: started with SIGINT ignored, as a script's background job is (`node &`): it stayed running."""
    name = f"shutdown_node_{signum}_{int(ignored)}"
    log_path = tmp_path / "node.log"
    listener = Node(f"rosout_listener_{signum}_{int(ignored)}", context=context)
    heard: list[Log] = []
    listener.create_subscription(Log, "/rosout", lambda m: heard.append(m) if m.name == name else None, QoSProfile(
        depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=context)
    executor.add_node(listener)
    with open(log_path, "w") as log:
        node = subprocess.Popen(
            [sys.executable, "-m", "adaptive_perception.ros.node", "--ros-args", "-r", f"__node:={name}",
             "-p", "autostart:=true", "-p", "warmup_runs:=0", "-p", "metrics.port:=0",
             "-p", f"mlflow.tracking_uri:=sqlite:///{tmp_path / 'mlflow.db'}"],
            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ),
            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignored else None)
        try:
            def active() -> bool:
                executor.spin_once(timeout_sec=0.1)
                return any(m.msg.startswith("active: ") for m in heard)

            assert wait_until(active, 60), log_path.read_text()[-3000:]
            node.send_signal(signum)
            assert node.wait(60) == 0, log_path.read_text()[-3000:]
        finally:
            if node.poll() is None:
                node.kill()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(m.msg.endswith(" finished") for m in heard):
        executor.spin_once(timeout_sec=0.1)
    executor.shutdown()
    listener.destroy_node()
    text = log_path.read_text()
    assert "Failed to publish log message" not in text and "Traceback" not in text, text[-3000:]
    finished = [m.msg for m in heard if m.msg.startswith("MLflow run ") and m.msg.endswith(" finished")]
    assert len(finished) == 1, ([m.msg for m in heard], text[-3000:])  # logged while closing, delivered on /rosout
    assert finished[0] in text  # and on the console
    # a closing record of the session, MLflow or not (no frames were sent)
    assert "shutting down; since configure '/image' 0 received, 0 processed, 0 dropped, 0 failed, 0 lost before the node" in text
