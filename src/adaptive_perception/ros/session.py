"""Helpers for command-line tools that talk to a running graph: a spun helper node and a node subprocess."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node


@contextmanager
def spun_node(name: str, use_sim_time: bool = False) -> Iterator[Node]:
    """A plain rclpy node spinning in a background thread, in a context of its own (on /clock's time with
    `use_sim_time`)."""
    from rclpy.parameter import Parameter

    from rclpy.signals import SignalHandlerOptions

    context = rclpy.context.Context()
    # no rclpy signal handlers (rclpy's default for a context of its own, said here): the commands take Ctrl-C and
    # SIGTERM themselves (KeyboardInterrupt: a replay's summary, a closed segment)
    rclpy.init(args=[], context=context, signal_handler_options=SignalHandlerOptions.NO)
    node = Node(name, context=context,
                parameter_overrides=[Parameter("use_sim_time", value=True)] if use_sim_time else [])
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set() and context.ok():
            executor.spin_once(timeout_sec=0.1)

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        yield node
    finally:
        # the spin thread ends before anything it uses is destroyed: shutting the executor down under a running spin
        # destroyed its guard condition mid-task (InvalidHandle, a traceback after a Ctrl-C'd replay's summary)
        stop.set()
        thread.join(timeout=5)
        executor.shutdown(timeout_sec=2)
        node.destroy_node()
        rclpy.shutdown(context=context)


def _ros_value(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_ros_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        # YAML single-quoted: the node gets a string even when it reads as a number, bool or is empty
        return "'" + value.replace("'", "''") + "'"
    return str(value)


@contextmanager
def node_process(parameters: Mapping[str, object], log_path: Path, params_file: Path | None = None) -> Iterator[subprocess.Popen]:
    """Run perception_node in its own process (autostart on), stderr/stdout to `log_path`; SIGINT on exit."""
    args = [sys.executable, "-m", "adaptive_perception.ros.node", "--ros-args"]
    if params_file is not None:
        args += ["--params-file", str(params_file)]
    for name, value in {"autostart": True, **parameters}.items():
        args += ["-p", f"{name}:={_ros_value(value)}"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
        try:
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def call_service(node_name: str, service_type, name: str, request, timeout_s: float):
    """Call `<node_name>/<name>` from a helper node of its own; the response, or RuntimeError saying what failed."""
    service = f"{node_name.rstrip('/')}/{name}"
    with spun_node("adaptive_perception_client") as client_node:
        client = client_node.create_client(service_type, service)
        if not client.wait_for_service(timeout_sec=timeout_s):
            raise RuntimeError(f"no service {service} within {timeout_s:g} s: is the node running, under that name "
                               "(--node; `-r __node:=NAME` renames it)?")
        future = client.call_async(request)
        deadline = time.monotonic() + timeout_s
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not future.done():
            raise RuntimeError(f"{service} did not answer within {timeout_s:g} s (a node built from another version "
                               "of adaptive_perception_msgs gets a request it cannot read and answers nothing: its "
                               "log says whether it acted; see README, Upgrading)")
        return future.result()


def load_policy(node_name: str, path: str, timeout_s: float = 30.0) -> str:
    """Call `<node_name>/load_policy` with `path`; the new policy id, or RuntimeError with the node's answer. What
    the node warned about on loading it (tiers the policy was not trained with, ...) goes to stderr, named as the
    node's, as it went to the node's log."""
    from adaptive_perception_msgs.srv import LoadPolicy

    response = call_service(node_name, LoadPolicy, "load_policy", LoadPolicy.Request(path=str(path)), timeout_s)
    if not response.success:
        raise RuntimeError(f"{node_name.rstrip('/')}/load_policy refused {path}: {response.message}")
    for warning in response.warnings:
        print(f"warning: {node_name.rstrip('/')} loaded it with a warning: {warning}", file=sys.stderr, flush=True)
    return response.message


def set_routing_mode(node_name: str, mode: str, timeout_s: float = 10.0) -> str:
    """Switch a running node's routing mode through `~/set_routing_mode` (as `ros2 service call` would); the node's
    answer, or RuntimeError with its refusal."""
    from adaptive_perception_msgs.srv import SetRoutingMode

    response = call_service(node_name, SetRoutingMode, "set_routing_mode", SetRoutingMode.Request(mode=mode), timeout_s)
    if not response.success:
        raise RuntimeError(response.message)
    return response.message


def set_cost_weight(node_name: str, cost_weight: float, timeout_s: float = 10.0) -> str:
    """Set a running node's `routing.cost_weight` through `set_parameters` (as `ros2 param set` would)."""
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    value = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=float(cost_weight))
    response = call_service(node_name, SetParameters, "set_parameters", SetParameters.Request(
        parameters=[Parameter(name="routing.cost_weight", value=value)]), timeout_s)
    if not response.results[0].successful:
        raise RuntimeError(f"routing.cost_weight {cost_weight:g} refused: {response.results[0].reason}")
    return f"routing.cost_weight is now {cost_weight:g}"
