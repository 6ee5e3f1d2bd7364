"""The `perception_node` lifecycle node: thin glue between ROS topics and the core detector runtime."""
from __future__ import annotations

import errno
import gc
import itertools
import logging
import math
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import rclpy
from adaptive_perception_msgs.msg import RoutingDecision
from adaptive_perception_msgs.srv import LoadPolicy, SetRoutingMode
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.parameter import Parameter
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import serialize_message
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image
from vision_msgs.msg import Detection2DArray
from visualization_msgs.msg import ImageMarker

from adaptive_perception.config import NodeConfig, resolve_model
from adaptive_perception.detector import (TIERS, AcceleratorSettings, Detections, DetectorTier, class_list_mismatch,
                                          other_files, tier_order_mismatch)
from adaptive_perception.audit import AuditSettings, ReferenceProcess
from adaptive_perception.drawing import draw_routed
from adaptive_perception.drift import DRIFT, STATE_NAMES, UNKNOWN, WINDOW, DriftMonitor, DriftWatch, weight_text
from adaptive_perception.evidence import EvidenceCapture, EvidenceSettings
from adaptive_perception.errors import AdaptivePerceptionError, ConfigError, ImageDecodeError, TierFailure
from adaptive_perception.features import RoutingContext, next_context
from adaptive_perception.frames import CameraCounters, LatestFrameSlot
from adaptive_perception.ros import DEBUG_IMAGE_TOPICS, MARKER_TOPIC
from adaptive_perception.metrics import PrometheusMetrics
from adaptive_perception.policy import Policy
from adaptive_perception.recording import ros_typestore
from adaptive_perception.runlog import NodeRun, quiet_mlflow_setup, redact_uri, snapshot_metrics
from adaptive_perception.router import Router, RouterSettings, check_mode, tiers_needed
from adaptive_perception.ros.parameters import PARAMETERS, check_params_file, params_files, unknown_parameters
from adaptive_perception.ros.convert import (ReceivedImage, detections_cdr, image_to_rgb, marker_cdr, parse_image,
                                             rgb_to_compressed, rgb_to_msg)
from adaptive_perception.telemetry import (ERROR, OK, TIER_FAILURE, WARN, ErrorLog, HealthSettings, Telemetry,
                                           frame_age_ms, key_values)
from adaptive_perception.transport import apply_defaults as apply_transport_defaults

NODE_NAME = "perception_node"
_WORKER_POLL_S = 0.1


class _RosLogBridge(logging.Handler):
    """What the core modules log (Python `logging`, e.g. an execution provider falling back) goes to a node's logger:
    /rosout and the console with the node's name and severity, not a bare line on stderr. One handler per process;
    with several nodes in it (tests, a composed process), the newest one still alive says it, once."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.loggers: list = []  # the live nodes' rclpy loggers, oldest first

    def attach(self, ros_logger) -> None:
        self.loggers.append(ros_logger)
        logging.getLogger("adaptive_perception").addHandler(self)  # a no-op when it is there already

    def detach(self, ros_logger) -> None:
        if ros_logger in self.loggers:
            self.loggers.remove(ros_logger)
        if not self.loggers:
            logging.getLogger("adaptive_perception").removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if not self.loggers:
                return
            ros = self.loggers[-1]
            message = f"{record.name.removeprefix('adaptive_perception.')}: {record.getMessage()}"
            if record.levelno >= logging.ERROR:
                ros.error(message)
            elif record.levelno >= logging.WARNING:
                ros.warning(message)
            elif record.levelno >= logging.INFO:
                ros.info(message)
            else:
                ros.debug(message)
        except Exception:  # a logging failure must never reach the frame that logged
            self.handleError(record)


_LOG_BRIDGE = _RosLogBridge()


class PerceptionNode(LifecycleNode):
    """Subscribes to camera images, runs the chosen detector tier, publishes detections and routing decisions."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(NODE_NAME, **kwargs)
        for name, (default, descriptor) in PARAMETERS.items():
            self.declare_parameter(name, default, descriptor)
        self.config: NodeConfig | None = None
        self.detectors: dict[str, DetectorTier] = {}
        self.router: Router | None = None
        self._contexts: dict[str, RoutingContext] = {}  # camera -> what its previous routed output said
        self.telemetry: Telemetry | None = None  # per camera and tier, since configure
        self.metrics: PrometheusMetrics | None = None
        self._metrics_state = "off"
        self.run: NodeRun | None = None
        self.drift: DriftWatch | None = None
        self.evidence: EvidenceCapture | None = None
        self._evidence_off = ""  # why evidence capture asked for is off
        self._tier_warnings: list[str] = []  # what configure found wrong with the tiers together (class lists, order)
        self._policy_mismatches: list[str] = []  # tiers whose loaded file is not the one the policy was trained with
        self._twin_said = False  # another node with this name was seen (and logged) on the last diagnostics tick
        self._drift_states: dict[str, int] = {}
        self._drift_routing_off = ""  # why the drift monitors leave out the tier mix and audit agreement
        self._run_timer = None
        self._configured_at = 0.0
        self._error_log = ErrorLog()
        self._slot: LatestFrameSlot[ReceivedImage] | None = None
        self._workers: list[threading.Thread] = []
        # the camera subscriptions (not `_subscriptions`: that is rclpy's own list of every subscription, the clock's
        # for use_sim_time included; replacing it left /clock unread and a deactivate destroyed it)
        self._camera_subscriptions: list[object] = []
        self._arrivals = itertools.count(1)  # numbers the frames as they arrive (`ReceivedImage.arrival`)
        self._det_pub = None
        self._marker_pub = None  # the boxes as an ImageMarker, for Foxglove's Image panel (only when subscribed)
        self._routing_pub = None
        # several cameras: camera -> (detections, routing, debug image, compressed debug image, marker) of its own
        self._camera_pubs: dict[str, tuple[object, ...]] = {}
        self._debug_pubs: tuple[object, object] | None = None  # (Image, CompressedImage)
        self._debug_slot: LatestFrameSlot | None = None
        self._renderer: threading.Thread | None = None
        self.debug_rendered = 0  # debug images drawn since configure (none while nobody subscribes)
        self._diag_pub = None
        self._diag_timer = None
        self._wrong_types_said: set[tuple] = set()  # (topic, publishers) already logged by `_wrong_type_publishers`
        self.active = False  # subscribed and processing (lifecycle state active)
        self._setting_own = False  # the node sets routing_mode / policy itself after a live switch
        self._param_log = ErrorLog()  # "applies at the next configure": once per parameter every 5 s
        self.add_on_set_parameters_callback(self._on_set_parameters)
        # ROS keeps a params-file or -p value whose name the node never declares, and says nothing: a misspelt key
        # leaves its parameter at the default
        self.unknown_parameters = unknown_parameters(self._parameter_overrides)
        if self.unknown_parameters:
            self.get_logger().warning(
                f"perception_node has no parameter {', '.join(self.unknown_parameters)}: ignored, from the "
                "--params-file or -p overrides (names: README, Parameters; ros2 param list)")
        self._routing_services = [self.create_service(SetRoutingMode, "~/set_routing_mode", self._on_set_routing_mode),
                          self.create_service(LoadPolicy, "~/load_policy", self._on_load_policy)]
        _LOG_BRIDGE.attach(self.get_logger())  # last: a constructor that failed leaves nothing attached

    # ---- lifecycle -------------------------------------------------------------------------
    def read_config(self, pending: dict[str, object] | None = None) -> NodeConfig:
        """The parameters as a validated NodeConfig; `pending`: name -> value about to be set, read in their place."""
        pending = pending or {}

        def p(name: str) -> object:
            return pending[name] if name in pending else self.get_parameter(name).value
        return NodeConfig(
            image_topics=tuple(p("image_topics")),
            routing_mode=p("routing_mode"),
            policy=p("policy"),
            router=RouterSettings(tuple(p("routing.heuristic_thresholds")), tuple(p("routing.random_mix")),
                                  p("routing.random_seed"), p("routing.hysteresis"),
                                  p("routing.cost_weight")),
            models={tier: p(f"models.{tier}") for tier in TIERS},
            providers=tuple(p("providers")),
            accelerator=AcceleratorSettings(p("tensorrt.engine_cache_dir"), p("tensorrt.fp16"),
                                            p("cuda.device_id")),
            conf_threshold=p("conf_threshold"),
            iou_threshold=p("iou_threshold"),
            max_detections=p("max_detections"),
            intra_op_threads=p("intra_op_threads"),
            workers=p("workers"),
            spin_wait=p("spin_wait"),
            preprocess_in_graph=p("preprocess_in_graph"),
            graph_cache_dir=p("graph_cache_dir"),
            warmup_runs=p("warmup_runs"),
            qos_reliability=p("qos.reliability"),
            qos_depth=p("qos.depth"),
            health=HealthSettings(p("diagnostics.frame_budget_ms"), p("diagnostics.max_drop_share"),
                                  p("diagnostics.stall_s"), p("diagnostics.window_s")),
            metrics_port=p("metrics.port"),
            metrics_bind=p("metrics.bind"),
            mlflow_uri=p("mlflow.tracking_uri"),
            mlflow_experiment=p("mlflow.experiment"),
            mlflow_interval_s=p("mlflow.interval_s"),
            audit=AuditSettings(p("audit.every"), p("audit.max_share")),
            drift_confirm=p("drift.confirm_frames"),
            evidence=EvidenceSettings(p("evidence.dir"), p("evidence.pre_frames"),
                                      p("evidence.post_frames"), p("evidence.budget_mb")),
        ).validate()

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            return self._configure()
        except Exception as exc:  # past the checks (a timer, a run, a folder): named here, then on_error releases
            self.get_logger().error(f"configure failed: {type(exc).__name__}: {exc}")
            raise

    def _configure(self) -> TransitionCallbackReturn:
        self._policy_mismatches = []
        try:
            config = self.read_config()
            self._check_cameras(config.image_topics)
            detectors = {}
            for tier, path in config.model_paths().items():
                started = time.perf_counter()
                detector = DetectorTier(path, config.providers, config.conf_threshold, config.iou_threshold,
                                        config.max_detections, config.session_threads, tier, config.accelerator,
                                        spin_wait=config.spin_wait, preprocess_in_graph=config.preprocess_in_graph,
                                        graph_cache_dir=config.graph_cache_dir)
                detector.warmup(config.warmup_runs)
                detectors[tier] = detector
                self.get_logger().info(
                    f"tier {tier}: {path} ({detector.info.input_size[1]}x{detector.info.input_size[0]}, "
                    f"{len(detector.class_names)} classes, {detector.info.precision}, digest {detector.digest}) "
                    "loaded and warm in "
                    f"{(time.perf_counter() - started) * 1e3:.0f} ms on {detector.providers[0]}"
                    + ("" if detector.providers[0] == detector.requested[0] else
                       f" (requested {detector.requested[0]}: not available here)")
                    + ("; uint8 input normalised in the graph" if detector.in_graph else "; float input from the host"))
            tier_warnings = [w for w in (class_list_mismatch({t: d.class_names for t, d in detectors.items()}),
                                         tier_order_mismatch({t: d.info.input_size for t, d in detectors.items()}))
                             if w]
            for warning in tier_warnings:
                self.get_logger().warning(warning)
            policy = Policy(resolve_model(config.policy)) if config.policy else None
            router = Router(config.routing_mode, policy, config.router)
            if policy is not None:
                self.get_logger().info(f"policy '{policy.policy_id}' loaded from {policy.path}")
                self._check_policy_fits(policy, detectors)
        except Exception as exc:  # a failed configure must report, never raise
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        self.config, self.detectors, self.router = config, detectors, router
        self._tier_warnings = tier_warnings  # on /diagnostics (routing) until the next configure
        self._start_metrics(config)
        self.telemetry = Telemetry(config.image_topics, tuple(detectors), config.health, sink=self.metrics)
        self._set_active(False)  # configured: subscribed only once active
        self._error_log = ErrorLog()
        self._configured_at = time.monotonic()
        self._start_run(config)
        reference_tier = None
        if "large" in detectors and config.audit.every:  # a one-thread session in a niced process: see audit.py
            try:
                reference_tier = ReferenceProcess(detectors["large"].path, config.providers, config.conf_threshold,
                                                  config.iou_threshold, config.max_detections, 1, "large (audit)",
                                                  config.accelerator)
            except Exception as exc:  # the audit is optional: perception goes on without it
                self.get_logger().error(f"audit off: {exc}")
        self.drift = DriftWatch(config.image_topics, policy.drift_reference if policy is not None else None,
                                reference_tier, config.audit, config.drift_confirm)
        self._drift_states = {camera: 0 for camera in config.image_topics}
        self._drift_routing_off = ""
        self._compare_drift_routing()
        self._start_evidence(config)
        if policy is not None and policy.drift_reference is None:
            self.get_logger().info(_no_reference(policy))
        self._contexts = {}
        self._det_pub = self.create_lifecycle_publisher(Detection2DArray, "detections", 10)
        self._routing_pub = self.create_lifecycle_publisher(RoutingDecision, "routing", 10)
        self._marker_pub = self.create_lifecycle_publisher(ImageMarker, MARKER_TOPIC, 10)
        if len(config.image_topics) > 1:
            self._camera_pubs = {camera: (
                self.create_lifecycle_publisher(Detection2DArray, f"{camera_namespace(self, camera)}/detections", 10),
                self.create_lifecycle_publisher(RoutingDecision, f"{camera_namespace(self, camera)}/routing", 10),
                self.create_lifecycle_publisher(Image, f"{camera_namespace(self, camera)}/{DEBUG_IMAGE_TOPICS[0]}", 1),
                self.create_lifecycle_publisher(CompressedImage,
                                                f"{camera_namespace(self, camera)}/{DEBUG_IMAGE_TOPICS[1]}", 1),
                self.create_lifecycle_publisher(ImageMarker, f"{camera_namespace(self, camera)}/{MARKER_TOPIC}", 10))
                for camera in config.image_topics}
        # beside `detections` (DESIGN's topic table): remappable, in the node's namespace
        self._debug_pubs = (self.create_lifecycle_publisher(Image, DEBUG_IMAGE_TOPICS[0], 1),
                            self.create_lifecycle_publisher(CompressedImage, DEBUG_IMAGE_TOPICS[1], 1))
        self.debug_rendered = 0
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        # on the steady clock: with use_sim_time a paused or stopped bag stops ROS time, and the heartbeat that
        # `health` judges by wall time must go on
        self._diag_timer = self.create_timer(1.0, self._publish_diagnostics,
                                             clock=Clock(clock_type=ClockType.STEADY_TIME))
        # What is loaded now (tiers, policy, libraries) stays until cleanup: frozen, the collector's full passes
        # skip it. Unfrozen, each full pass walked ~78,000 objects for ~24 ms on the 2-core machine, a pause
        # inside whichever frame was being processed (frozen: ~17,000, no full pass in 600 frames).
        gc.collect()
        gc.freeze()
        return TransitionCallbackReturn.SUCCESS

    def _check_cameras(self, topics: tuple[str, ...]) -> None:
        """Refuse a name ROS refuses (configure went on to raise where the metrics resolved it: an ERROR transition
        with the metrics port left bound) and a camera listed twice (after remapping: `image` and `/image` are one
        topic): its frames would be processed and published twice, its counters split."""
        resolved = []
        for topic in topics:
            try:
                resolved.append(self.resolve_topic_name(topic))
            except Exception as exc:
                raise ConfigError(f"image_topics: '{topic}' is not a ROS topic name ({str(exc).splitlines()[0]})") \
                    from None
        repeated = sorted({name for name in resolved if resolved.count(name) > 1})
        if repeated:
            raise ConfigError(f"image_topics {list(topics)} name {', '.join(repeated)} more than once (after "
                              "remapping); list each camera once")

    def _start_evidence(self, config: NodeConfig) -> None:
        self.evidence, self._evidence_off = None, ""
        if not config.evidence.enabled:
            return
        try:
            self.evidence = EvidenceCapture(config.evidence, ros_typestore(), _serialize,
                                            on_event=self._evidence_written,
                                            cameras=[self.resolve_topic_name(c) for c in config.image_topics])
        except Exception as exc:  # evidence is optional: perception goes on without it
            self._evidence_off = f"{config.evidence.folder} cannot be used ({exc})" + (
                "" if isinstance(exc, ConfigError) else "; set evidence.dir to a writable folder")
            self.get_logger().error(f"evidence capture off: {self._evidence_off}")
            return
        if self.evidence.unclosed:
            self.get_logger().warning(
                "evidence: segments an earlier run never closed (killed while writing: no metadata.yaml), left as "
                "they are until the budget removes them as the oldest, and left out by `train retrain`: "
                f"{', '.join(map(str, self.evidence.unclosed))}")
        self._evidence_topics = {camera: self.resolve_topic_name(camera) for camera in config.image_topics}
        self._topic_types = {"detections": ("vision_msgs/msg/Detection2DArray", self.resolve_topic_name("detections")),
                             "routing": ("adaptive_perception_msgs/msg/RoutingDecision",
                                         self.resolve_topic_name("routing"))}

    def _evidence_written(self, topic: str, segment: Path | None, cut: int, failed: int) -> None:
        if failed:  # a full disk (or an unwritable folder since configure): the operator must hear of it
            evidence = self.evidence
            self.get_logger().error(
                f"drift evidence of camera '{topic}': {failed} messages could not be written "
                f"({evidence.last_error if evidence is not None else ''}); "
                + (f"the rest is in {segment}" if segment is not None else "no segment of this event was closed "
                   "(retraining leaves an unclosed one out)")
                + f"; check free space and permissions under {self.config.evidence.folder}")
        elif segment is None:
            self.get_logger().warning(f"drift evidence of camera '{topic}' not written: its first message alone is "
                                      f"over evidence.budget_mb {self.config.evidence.budget_mb:g} ({cut} messages "
                                      "left out; raise the budget)")
        elif cut:  # the event alone outgrew evidence.budget_mb: its beginning is kept, the rest left out
            self.get_logger().warning(f"drift evidence of camera '{topic}' written to {segment}, cut at "
                                      f"evidence.budget_mb {self.config.evidence.budget_mb:g}: {cut} later messages "
                                      "left out (raise the budget to keep whole events)")
        else:
            self.get_logger().info(f"drift evidence of camera '{topic}' written to {segment}")

    def _start_metrics(self, config: NodeConfig) -> None:
        """Serve Prometheus metrics; a port that cannot be bound costs the metrics, never the perception."""
        self.metrics, self._metrics_state = None, "off (metrics.port 0)"
        if not config.metrics_port:
            return
        metrics = PrometheusMetrics(self.get_fully_qualified_name())
        try:
            metrics.serve(config.metrics_port, config.metrics_bind)
        except OSError as exc:
            self._metrics_state = f"not served: {config.metrics_bind}:{config.metrics_port}: {exc.strerror or exc}"
            # an address this machine does not have (or no address at all) is metrics.bind's, anything else the port's
            bad_address = isinstance(exc, socket.gaierror) or exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)
            self.get_logger().error(f"metrics {self._metrics_state}; " + (
                "set metrics.bind to an address of this machine (0.0.0.0: every interface, 127.0.0.1: this machine "
                "only)" if bad_address else "set metrics.port to a free port (0 = off)"))
            return
        metrics.prepare({camera: self.resolve_topic_name(camera) for camera in config.image_topics},
                        tuple(self.detectors))
        metrics.policy_changed(self.router.policy_id, self.router.mode)
        self.metrics = metrics
        self._metrics_state = f"http://{config.metrics_bind}:{config.metrics_port}/metrics"
        self.get_logger().info(f"metrics on {self._metrics_state}")

    def _start_run(self, config: NodeConfig) -> None:
        """One MLflow run per configured session, if mlflow.tracking_uri is set."""
        if not config.mlflow_uri:
            return
        params = {name: self.get_parameter(name).value for name in PARAMETERS}
        name = self.get_fully_qualified_name()
        try:
            self.run = NodeRun(config.mlflow_uri, config.mlflow_experiment, f"{name} {time.strftime('%Y-%m-%d %H:%M:%S')}",
                               params, tags={"node": name, "policy_id": self.router.policy_id})
        except AdaptivePerceptionError as exc:
            self.get_logger().error(f"{exc}; running without an MLflow run")
            return
        self._run_timer = self.create_timer(config.mlflow_interval_s, self._log_run,
                                            clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.get_logger().info(f"MLflow run of this session starting in {redact_uri(config.mlflow_uri)}, experiment "
                               f"{config.mlflow_experiment} (a failure is logged when it happens)")

    def _snapshot(self) -> dict[str, float]:
        telemetry = self.telemetry
        return snapshot_metrics({self._topic_name(c): telemetry.camera_report(c) for c in telemetry.cameras},
                                telemetry.tiers)

    def _log_run(self) -> None:
        run = self.run
        if run is not None and run.error and self._run_timer is not None:  # the store failed: say so now, once
            self.get_logger().warning(f"{run.error}; running without an MLflow run")
            self.destroy_timer(self._run_timer)
            self._run_timer = None
            return
        if run is not None and self.telemetry is not None:
            run.log(int(time.monotonic() - self._configured_at), self._snapshot())

    def _end_run(self) -> bool:
        """Finish this session's MLflow run; True when there was one (and a line about it was logged)."""
        run, timer, self.run, self._run_timer = self.run, self._run_timer, None, None
        if run is not None:
            telemetry = self.telemetry  # the summary covers the session, the snapshots their windows
            finished = run.close(snapshot_metrics({self._topic_name(c): telemetry.session_report(c)
                                                   for c in telemetry.cameras}, telemetry.tiers)
                                 if telemetry is not None else {})
            if run.error and timer is None:
                pass  # logged when it failed
            elif run.error or not finished:
                self.get_logger().warning(run.error or f"MLflow run {run.run_id} did not finish writing in time")
            else:
                self.get_logger().info(f"MLflow run {run.run_id} finished")
        if timer is not None:
            try:
                self.destroy_timer(timer)
            except Exception:  # the context may already be shut down (SIGINT): nothing left to stop
                pass
        return run is not None

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        assert self.config is not None
        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=self.config.qos_depth,
            reliability=ReliabilityPolicy.BEST_EFFORT if self.config.qos_reliability == "best_effort"
            else ReliabilityPolicy.RELIABLE,
        )
        result = super().on_activate(state)  # lifecycle publishers first, so no output is dropped
        self._slot = LatestFrameSlot()
        self._contexts = {}  # the previous output of an earlier activation says nothing about this one
        try:
            for topic in self.config.image_topics:
                compressed = self._reads_compressed(topic)
                events = SubscriptionEventCallbacks(
                    incompatible_qos=lambda event, camera=topic: self._on_incompatible_qos(camera, event))
                # serialized bytes: `parse_image` reads the header and views the pixels, nothing is copied
                self._camera_subscriptions.append(self.create_subscription(
                    CompressedImage if compressed else Image, topic, lambda cdr, info, camera=topic, compressed=compressed: self._on_image(
                        camera, cdr, compressed, info), qos, event_callbacks=events, raw=True))
        except Exception as exc:  # e.g. an invalid topic name: report, never raise out of a callback
            self.get_logger().error(f"activate failed: image_topics {list(self.config.image_topics)}: {exc}")
            self._stop_processing()
            super().on_deactivate(state)
            return TransitionCallbackReturn.FAILURE
        self._workers = [threading.Thread(target=self._work, args=(self._slot,), name=f"perception-worker-{i}",
                                          daemon=True) for i in range(self.config.worker_count)]
        for worker in self._workers:
            worker.start()
        self._debug_slot = LatestFrameSlot()
        self._renderer = threading.Thread(target=self._render, args=(self._debug_slot,), name="debug-image", daemon=True)
        self._renderer.start()
        workers = len(self._workers)
        self.get_logger().info(f"active: {self.router.mode} on "
                               f"{[self.resolve_topic_name(t) for t in self.config.image_topics]}, {workers} worker"
                               + ("" if workers == 1 else f"s ({self.config.session_threads} onnxruntime thread(s) "
                                                          "per inference)"))
        self._set_active(True)
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        self._set_active(False)
        self.get_logger().info("inactive: no longer subscribed to the cameras (activate to process frames again)")
        return super().on_deactivate(state)

    def _set_active(self, active: bool) -> None:
        self.active = active
        if self.telemetry is not None:
            self.telemetry.set_active(active)
        if self.metrics is not None:
            self.metrics.active.set(1.0 if active else 0.0)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release("cleaning up")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        self._release("shutting down")
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error while in state '{state.label}': releasing everything")
        self._stop_processing()
        self._release("releasing after an error")
        return TransitionCallbackReturn.SUCCESS

    def _topic_name(self, topic: str) -> str:
        """The topic after remapping, or as configured when it is no valid name (activate refused it)."""
        try:
            return self.resolve_topic_name(topic)
        except Exception:
            return topic

    def destroy_node(self) -> None:
        try:
            self._close()
        finally:
            _LOG_BRIDGE.detach(self.get_logger())
            super().destroy_node()

    def _log_totals(self, doing: str) -> None:
        """A record of the session (since configure) in the log, MLflow or not, before its telemetry goes."""
        if self.telemetry is not None and self.context.ok():
            totals = {self._topic_name(c): self.telemetry.session_report(c) for c in self.telemetry.cameras}
            self.get_logger().info(f"{doing}; since configure " + "; ".join(
                f"'{camera}' {r['frames_received']:.0f} received, {r['frames_processed']:.0f} processed, "
                f"{r['frames_dropped']:.0f} dropped, {r['frames_failed']:.0f} failed, {r['frames_lost_before_node']:.0f} "
                "lost before the node"
                for camera, r in totals.items()))

    def _close(self) -> None:
        self._log_totals("shutting down")
        logged = self._end_run()
        if self.evidence is not None:  # never leave recorded evidence unclosed
            self.evidence.close()
            self.evidence = None
        if self.metrics is not None:  # frees the port even when the node goes without a cleanup transition
            self.metrics.close()
            self.metrics = None
        if logged and self.context.ok():
            # the node's /rosout writer goes with it, and a reliable writer destroyed before its readers acknowledged
            # drops what it holds: give what was just logged while closing time to reach them (seen once in CI)
            time.sleep(ROSOUT_LINGER_S)

    def _stop_processing(self) -> None:
        for sub in self._camera_subscriptions:
            self.destroy_subscription(sub)
        self._camera_subscriptions = []
        for slot, threads in ((self._slot, self._workers), (self._debug_slot, [self._renderer])):
            discarded = slot.close() if slot is not None else []
            if slot is self._slot and self.telemetry is not None:
                for camera in discarded:  # frames still waiting for a worker: dropped (the counts add up)
                    self.telemetry.dropped(camera)
            for thread in threads:
                if thread is not None:
                    thread.join()
        self._slot, self._workers, self._debug_slot, self._renderer = None, [], None, None

    def _release(self, doing: str) -> None:
        self._log_totals(doing)  # the session's totals go with its telemetry: a later configure starts anew
        extra = [pub for pair in [*self._camera_pubs.values(), self._debug_pubs or ()] for pub in pair]
        for pub in (self._det_pub, self._routing_pub, self._marker_pub, *extra):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self._camera_pubs, self._debug_pubs = {}, None
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self.destroy_publisher(self._diag_pub)
        self._det_pub = self._routing_pub = self._marker_pub = self._diag_pub = self._diag_timer = None
        self._end_run()
        if self.drift is not None:
            self.drift.close()
            self.drift = None
        if self.evidence is not None:
            self.evidence.close()  # closes an event being written: its segment stays readable
            self.evidence = None
        if self.metrics is not None:
            self.metrics.close()
        self.metrics, self.telemetry = None, None
        self.detectors = {}  # drops the onnxruntime sessions
        self.router = None
        self.config = None
        gc.unfreeze()  # what configure loaded can be collected again (a configure after this freezes anew)

    # ---- per frame -------------------------------------------------------------------------
    @property
    def counters(self) -> dict[str, CameraCounters]:
        """Per camera topic: where its frames went since configure."""
        return {camera: stats.counters for camera, stats in self.telemetry.cameras.items()} if self.telemetry else {}

    def totals(self) -> CameraCounters:
        """The per-camera counters added up."""
        total = CameraCounters()
        for counters in self.counters.values():
            for name, value in counters.as_dict().items():
                setattr(total, name, getattr(total, name) + value)
        return total

    def _on_image(self, camera: str, cdr: bytes, compressed: bool, info: dict) -> None:
        self.telemetry.arrived(camera, info.get("publication_sequence_number"))
        try:
            msg = parse_image(cdr, compressed, next(self._arrivals))
        except ImageDecodeError as exc:  # counted and logged like a frame that does not decode
            self._skipped(camera, exc)
            return
        evidence = self.evidence  # read once: cleanup may clear it from another thread
        if evidence is not None:
            topic = self._evidence_topics[camera]  # its folder is named after the topic after remapping
            evidence.frame(topic, topic, IMAGE_TYPES[compressed], msg.arrival, msg)
        if self._slot is not None and self._slot.put(camera, msg):
            self.telemetry.dropped(camera)

    def _on_incompatible_qos(self, camera: str, event: object) -> None:
        self.telemetry.incompatible_qos(camera)
        policy = getattr(event, "last_policy_kind", None)
        self.get_logger().warning(
            f"a publisher on '{self.resolve_topic_name(camera)}' offers a QoS this node's subscription cannot accept "
            f"({getattr(policy, 'name', policy)}; node: qos.reliability={self.config.qos_reliability}): its frames never "
            "arrive. Match the publisher's QoS or set qos.reliability to best_effort")

    def _reads_compressed(self, camera: str) -> bool:
        """Whether a camera's topic is read as CompressedImage: its name after remapping ends in 'compressed' (so
        image:=.../compressed counts)."""
        return self.resolve_topic_name(camera).rstrip("/").endswith("compressed")

    def _wrong_type_publishers(self, camera: str) -> str:
        """'' or what publishes another message type on a camera's topic than the one the node reads there (a
        CompressedImage on a topic whose name does not end in 'compressed', say); logged once per topic and type."""
        topic = self.resolve_topic_name(camera)
        expected = IMAGE_TYPES[self._reads_compressed(camera)]
        others = sorted({(info.topic_type, info.node_name or "_unnamed") for info in
                         self.get_publishers_info_by_topic(topic) if info.topic_type != expected})
        if not others:
            return ""
        fix = ("raw frames: name the camera's topic without the 'compressed' ending, or publish "
               "sensor_msgs/msg/CompressedImage there" if expected == IMAGE_TYPES[True] else
               "compressed frames: remap the camera to its .../compressed topic, or publish sensor_msgs/msg/Image there")
        text = (", ".join(f"node {name} publishes {kind}" for kind, name in others) + f" on {topic}, "
                f"where this node reads {expected} (a topic whose name ends in 'compressed' is read as CompressedImage, "
                f"any other as Image; for {fix})")
        if (topic, tuple(others)) not in self._wrong_types_said:
            self._wrong_types_said.add((topic, tuple(others)))
            self.get_logger().error(text)
        return text

    def _publish_diagnostics(self) -> None:
        """One status per camera and per tier, levels from `telemetry`, and one for the node (policy, metrics)."""
        telemetry, router = self.telemetry, self.router
        if telemetry is None or router is None:
            return
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        node = self.get_fully_qualified_name()
        levels = {}
        for camera in telemetry.cameras:
            report = telemetry.camera_report(camera)
            state = self._drift_states.get(camera, 0)
            monitor = self.drift.monitors.get(camera) if self.drift is not None else None
            agreements = self.drift.agreements.get(camera, []) if self.drift is not None else []
            report["drift_state"] = STATE_NAMES[state] if monitor is not None else "off (the policy has no reference)"
            report["drift_score"] = monitor.score if monitor is not None else math.nan
            report["audit_agreement"] = sum(agreements) / len(agreements) if agreements else math.nan
            if state == DRIFT:
                report["level"] = max(report["level"], WARN)
                report["message"] = (f"drift: the scene differs from the policy's training data (score {monitor.score:.2f})"
                                     + ("" if report["message"] == "frames processed" else f"; {report['message']}"))
            wrong = self._wrong_type_publishers(camera) if self.active and report["message"].startswith("no frame") else ""
            if wrong:  # frames of another type never reach the subscription, and DDS says nothing about it
                report["level"] = max(report["level"], ERROR)
                report["message"] = f"{wrong}; {report['message']}"
            levels[camera] = report["level"]
            array.status.append(_status(f"{node}: camera {self.resolve_topic_name(camera)}", node, report))
        for tier, detector in self.detectors.items():
            report = telemetry.tier_report(tier) | {"provider": detector.providers[0],
                                                    "requested_provider": detector.requested[0], "model": str(detector.path),
                                                    "precision": detector.info.precision, "digest": detector.digest}
            array.status.append(_status(f"{node}: tier {tier}", node, report))
        failing = [f"metrics {self._metrics_state}"] if self._metrics_state.startswith("not served") else []
        failing += self._tier_warnings
        twins = self._same_name_nodes()
        if twins:
            failing.append(twins)
        mismatched = self._policy_mismatches if router.mode == "learned" else []
        if mismatched:  # the log names both digests of each; the operator view must show it too
            failing.append(f"policy '{router.policy_id}' was trained with other {', '.join(mismatched)} tier files than "
                           "those loaded (the log names both digests): its choices fit those; load its tiers or "
                           "retrain it on these (`adaptive-perception train all --model TIER=FILE ...`)")
        if self.run is not None and self.run.error:
            failing.append(self.run.error)
        if self._evidence_off:
            failing.append(f"evidence capture off: {self._evidence_off}")
        evidence = self.evidence
        lost = evidence.event_failures() if evidence is not None else {}
        if lost:  # until an event of that camera writes whole again
            failing.append("drift evidence not written: " + ", ".join(
                f"{n} messages of the latest event of camera '{self.resolve_topic_name(c)}'" for c, n in lost.items())
                + f" ({evidence.last_error})")
        array.status.append(_status(f"{node}: routing", node, {
            "level": WARN if failing or not self.active else OK,
            "message": ("" if self.active else "inactive (lifecycle activate to process frames): ") + f"{router.mode}"
                       + (f", policy {router.policy_id}" if router.policy_id else "")
                       + "".join(f"; {reason}" for reason in failing),
            "mode": router.mode, "policy_id": router.policy_id,
            "drift_state": STATE_NAMES[max(self._drift_states.values(), default=0)],
            "drift_routing_statistics": ("no drift monitor" if self.drift is None or self.drift.reference is None else
                                         f"off: {self._drift_routing_off}" if self._drift_routing_off else "on"),
            "metrics": self._metrics_state,
            "mlflow_run": (self.run.error or self.run.run_id or "starting") if self.run is not None else "off",
            **self._evidence_report()}))
        self._diag_pub.publish(array)
        if self.metrics is not None:
            self.metrics.status(levels, time.time())

    def _same_name_nodes(self) -> str:
        """A warning while another node on the graph has this node's name and namespace, else "" (logged once per
        episode): its services and parameters answer to either, so `set-routing` and `policy promote --node` reach
        one of them at random."""
        me = (self.get_name(), self.get_namespace())
        count = sum(1 for entry in self.get_node_names_and_namespaces() if entry == me)
        said = (f"{count - 1} other node(s) on the ROS graph are also named {self.get_fully_qualified_name()}: its "
                "services and parameters answer to either, so set-routing and policy promote reach one at random; "
                "give each node its own namespace (launch namespace:=...) or name") if count > 1 else ""
        if said and not self._twin_said:
            self.get_logger().error(said)
        self._twin_said = bool(said)
        return said

    def _evidence_report(self) -> dict[str, object]:
        evidence = self.evidence
        if evidence is None:
            return {"evidence": f"off: {self._evidence_off}" if self._evidence_off else "off"}
        return {"evidence": str(evidence.root), "evidence_events": evidence.events,
                "evidence_segments": len(evidence.segments), "evidence_messages_written": evidence.written,
                "evidence_messages_skipped": evidence.skipped, "evidence_messages_failed": evidence.failed,
                "evidence_messages_cut_at_budget": evidence.cut_at_budget,
                "evidence_last_error": evidence.last_error}

    def _work(self, slot: LatestFrameSlot[ReceivedImage]) -> None:
        for camera, msg in slot.items(_WORKER_POLL_S):
            try:
                self._process(camera, msg)
            except Exception as exc:  # a bad frame is logged and skipped; the node keeps running
                self._skipped(camera, exc)

    def _skipped(self, camera: str, exc: Exception) -> None:
        kind = exc.kind if isinstance(exc, ImageDecodeError) else (
            TIER_FAILURE if isinstance(exc, TierFailure) else f"error:{type(exc).__name__}")
        self.telemetry.failed(camera, kind, getattr(exc, "tier", None))
        suppressed = self._error_log.admit(camera, f"{kind}:{getattr(exc, 'tier', '')}")
        if suppressed is not None:
            more = f" ({suppressed} more like it since the last report)" if suppressed else ""
            # what a publisher wrote (an encoding string, a format) with its control characters escaped: a newline
            # and a terminal escape in an encoding field printed a fake FATAL line into the log
            said = _shown(str(exc), 1000)
            self.get_logger().warning(f"frame from camera '{self.resolve_topic_name(camera)}' skipped "
                                      f"({kind}): {said}{more}")

    def _process(self, camera: str, msg: ReceivedImage) -> None:
        assert self.config is not None and self.router is not None
        started = time.perf_counter()
        rgb = image_to_rgb(msg)
        context = self._contexts.get(camera, RoutingContext())
        generation = self.drift.routing_generation  # read before routing: a change after it leaves this frame out
        routed = self.router.route(rgb, context)
        decision = routed.decision
        inference_start = time.perf_counter()
        try:
            detections = self.detectors[decision.tier_name].detect(rgb)
        except Exception as exc:
            raise TierFailure(decision.tier_name, exc) from exc
        inferred = time.perf_counter()
        stamp = msg.stamp_ns
        # the detections leave first, serialized once for every publisher: what a consumer waits for; the drift
        # monitor's work and the RoutingDecision follow them
        detections_msg = detections_cdr(detections, msg.sec, msg.nanosec, msg.frame_id)
        # counted before the detections are published (whoever sees an output sees its frame counted), with the
        # node time a consumer waits for: message in to detections out
        self.telemetry.processed(camera, decision.tier_name, (time.perf_counter() - started) * 1e3,
                                 routed.feature_ms + routed.policy_ms,
                                 frame_age_ms(stamp, self.get_clock().now().nanoseconds))
        evidence = self.evidence  # the evidence ring sees each output before anyone can answer it
        if evidence is not None:
            evidence.output(self._evidence_topics[camera], self._topic_types["detections"][1],
                            self._topic_types["detections"][0], msg.arrival, detections_msg)
        self._det_pub.publish(detections_msg)
        camera_pubs = self._camera_pubs.get(camera)
        if camera_pubs is not None:
            camera_pubs[0].publish(detections_msg)
        header = msg.header
        self._contexts[camera] = next_context(detections.boxes, detections.scores, decision.tier, rgb.shape[:2])
        feature_ms = routed.feature_ms
        if self.drift.monitoring(camera):  # image statistics the decision did not need; the monitor does
            feature_ms += routed.complete(rgb)
        audited, drift_state, drift_score = self.drift.frame(camera, routed.features, decision.tier, rgb, detections,
                                                             generation)
        done = time.perf_counter()  # RoutingDecision.total_ms: every step on the frame, the drift update included
        out = RoutingDecision(header=header, tier=decision.tier, tier_name=decision.tier_name,
                              mode=decision.mode, policy_id=decision.policy_id, audited=audited,
                              drift_state=drift_state, drift_score=drift_score)
        out.probabilities = decision.probabilities.tolist()
        out.feature_ms = feature_ms
        out.policy_ms = routed.policy_ms
        out.inference_ms = (inferred - inference_start) * 1e3
        out.total_ms = (done - started) * 1e3
        out.frame_age_ms = frame_age_ms(stamp, self.get_clock().now().nanoseconds)
        if evidence is not None:  # a drift event below records this frame's outputs with it
            evidence.output(self._evidence_topics[camera], self._topic_types["routing"][1],
                            self._topic_types["routing"][0], msg.arrival, out)
        self._drift_changed(camera, drift_state, drift_score)
        self._routing_pub.publish(out)
        if camera_pubs is not None:
            camera_pubs[1].publish(out)
        markers = [pub for pub in (self._marker_pub, *(camera_pubs or ())[4:]) if pub.get_subscription_count()]
        if markers:  # built only for a viewer
            marker = marker_cdr(detections, decision.tier_name, msg.sec, msg.nanosec, msg.frame_id)
            for pub in markers:
                pub.publish(marker)
        if self.metrics is not None:
            if audited:
                self.metrics.audited(camera)
            if math.isfinite(drift_score):
                self.metrics.drift_scored(camera, drift_score)
        debug_slot, debug_pubs = self._debug_slot, [*self._debug_pubs, *(camera_pubs or ())[2:4]]
        if debug_slot is not None and any(pub.get_subscription_count() for pub in debug_pubs):
            # the newest frame of each camera (one camera's frames never displace another's)
            debug_slot.put(camera, (rgb, detections, decision.tier_name, out.total_ms, header))

    def _drift_changed(self, camera: str, state: int, score: float) -> None:
        previous = self._drift_states.get(camera, 0)
        if state == previous:
            return
        self._drift_states[camera] = state
        if self.metrics is not None:
            self.metrics.drift_state_changed(camera, state)
        text = (f"drift on camera '{self.resolve_topic_name(camera)}': {STATE_NAMES[previous]} -> {STATE_NAMES[state]} "
                f"(score {score:.2f}; {', '.join(f'{k} {v:.3f}' for k, v in self.drift.monitors[camera].statistics.items())})")
        if state == DRIFT:  # one call site per severity: rclpy refuses to change it between calls
            self.get_logger().warning(text)
        else:
            self.get_logger().info(text)
        evidence = self.evidence
        if state == DRIFT and evidence is not None and evidence.trigger(self._evidence_topics[camera]):
            self.get_logger().info(f"recording drift evidence of camera '{self.resolve_topic_name(camera)}': the "
                                   f"last {self.config.evidence.pre_frames} frames and the next "
                                   f"{self.config.evidence.post_frames}, under {self.config.evidence.folder}")

    def _render(self, slot: LatestFrameSlot) -> None:
        """Draw and publish the newest routed frame for the debug image subscribers, off the processing path."""
        for camera, (rgb, detections, tier, total_ms, header) in slot.items(_WORKER_POLL_S):
            try:
                self._publish_debug(camera, rgb, detections, tier, total_ms, header)
            except Exception as exc:  # drawing must never take the node down
                self.get_logger().warning(f"debug image not published: {exc}", throttle_duration_sec=5.0)

    def _publish_debug(self, camera: str, rgb, detections: Detections, tier: str, total_ms: float, header) -> None:
        """Drawn once for the combined topics (every camera's frames in turn) and the camera's own (several)."""
        pubs = [*self._debug_pubs, *self._camera_pubs.get(camera, ())[2:4]]
        raws, compressed = [p for p in pubs[::2] if p.get_subscription_count()], \
            [p for p in pubs[1::2] if p.get_subscription_count()]
        if not raws and not compressed:
            return
        picture = draw_routed(rgb, detections, tier, f"{total_ms:.1f} ms")
        if raws:
            message = rgb_to_msg(picture, header)
            for pub in raws:
                pub.publish(message)
        if compressed:
            message = rgb_to_compressed(picture, header)
            for pub in compressed:
                pub.publish(message)
        self.debug_rendered += 1

    # ---- services --------------------------------------------------------------------------
    def _on_set_routing_mode(self, request: SetRoutingMode.Request, response: SetRoutingMode.Response):
        """Validate, then switch between two frames; refused modes leave the running one in force."""
        try:
            if len(request.mode) > MAX_MODE_CHARS:  # refused before anything echoes it (20 MB came back twice)
                raise AdaptivePerceptionError(f"{len(request.mode)} characters are no routing mode")
            mode = check_mode(request.mode.strip())
            loaded = self.detectors if self.router is not None else [  # unconfigured: what configure will load
                t for t in TIERS if self.get_parameter(f"models.{t}").value]
            missing = [t for t in tiers_needed(mode) if t not in loaded]
            if missing:
                raise AdaptivePerceptionError(f"tiers {missing} are not loaded (models.<tier> is empty)")
            if self.router is not None:
                self.router.set_mode(mode)
                if self.metrics is not None:
                    self.metrics.policy_changed(self.router.policy_id, self.router.mode)
                self._compare_drift_routing()
            self._set_own(Parameter("routing_mode", value=mode))  # the next configure keeps it
        except AdaptivePerceptionError as exc:
            response.success, response.message = False, f"mode '{_shown(request.mode)}' refused: {_shown(str(exc))}"
            self.get_logger().warning(response.message)
            return response
        response.success, response.message = True, f"routing mode is now '{mode}'"
        self.get_logger().info(response.message)
        return response

    def _on_load_policy(self, request: LoadPolicy.Request, response: LoadPolicy.Response):
        """Load and validate the file completely, then swap it in between two frames; on failure keep the old one."""
        try:
            if not request.path.strip():
                raise AdaptivePerceptionError("no path given: name a policy ONNX file or embedded:policy")
            if len(request.path) > MAX_PATH_CHARS:
                raise AdaptivePerceptionError(f"a path of {len(request.path)} characters, longer than any file's "
                                              f"({MAX_PATH_CHARS}), was given: name a policy ONNX file")
            policy = Policy(resolve_model(request.path.strip()))
            if policy.drift_reference is not None and policy.drift_reference.thresholds:
                DriftMonitor(policy.drift_reference)  # what the swap builds per camera: refused here, before it
        except Exception as exc:  # PolicyFileError, or anything else a hostile file provokes
            response.success, response.message = False, f"{_shown(str(exc), 2000)}; the running policy stays"
            self.get_logger().error(response.message)
            return response
        if self.router is not None:
            self.router.set_policy(policy)
            if self.metrics is not None:
                self.metrics.policy_changed(self.router.policy_id, self.router.mode)
            if self.run is not None:  # the run's tag names the policy routing now, not the one at configure
                self.run.tag("policy_id", policy.policy_id)
            if self.drift is not None:
                self.drift.set_reference(policy.drift_reference)
                self._compare_drift_routing()
                reference = self.drift.reference
                why = (f"its drift monitor starts over, unknown until {reference.window} frames fill its window"
                       if reference is not None else "it carries no drift reference: drift monitoring is off")
                if policy.drift_reference is None:  # said as at configure, whatever the cameras' states were
                    self.get_logger().info(_no_reference(policy))
                for camera, state in self._drift_states.items():  # the new policy's monitors start over
                    self._drift_states[camera] = UNKNOWN
                    if self.metrics is not None:
                        self.metrics.drift_state_changed(camera, UNKNOWN)
                        self.metrics.drift_scored(camera, math.nan)
                    if state != UNKNOWN:  # an operator watching DRIFT must see why it went
                        self.get_logger().info(f"drift on camera '{self._topic_name(camera)}': "
                                               f"{STATE_NAMES[state]} -> unknown (policy '{policy.policy_id}' "
                                               f"loaded: {why})")
        self._set_own(Parameter("policy", value=request.path.strip()))
        response.success, response.message = True, policy.policy_id
        self.get_logger().info(f"policy '{policy.policy_id}' loaded from {policy.path}")
        response.warnings = self._check_policy_fits(policy, self.detectors)  # the caller sees them too
        return response

    def _set_own(self, parameter: Parameter) -> None:
        """Record a switch a service made live, so the next configure keeps it (no 'applies at configure' warning)."""
        self._setting_own = True
        try:
            self.set_parameters([parameter])
        finally:
            self._setting_own = False

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """routing.cost_weight applies to a configured node at once (between two frames); others at configure,
        which a configured node says in a warning. A change that would make the next configure fail (an unknown
        routing_mode, a qos.reliability out of its choices, a model file that does not exist, ...) is refused at
        once, with configure's reason; while the parameters already hold such a value, changes are taken as they
        come (so they can be mended one at a time) and configure names what is still wrong."""
        def check(pending: dict[str, object] | None = None) -> None:
            config = self.read_config(pending)
            self._check_cameras(config.image_topics)  # a camera named twice after remapping: configure refuses it

        try:
            check({parameter.name: parameter.value for parameter in parameters})
        except AdaptivePerceptionError as exc:
            try:
                check()
            except AdaptivePerceptionError:
                pass  # already broken before this change: configure will say what is still wrong
            else:
                return self._refused(parameters, str(exc))
        for parameter in parameters:  # checked above unless the parameters were already broken (a moved model file):
            if parameter.name == "routing.cost_weight":  # a weight the router refuses would raise in this callback
                try:
                    RouterSettings(cost_weight=parameter.value).validate()
                except ConfigError as exc:
                    return self._refused(parameters, str(exc))
        for parameter in parameters:
            if parameter.name != "routing.cost_weight" and self.config is not None and not self._setting_own:
                suppressed = self._param_log.admit("parameter", parameter.name)  # a script's loop: a line per call
                if suppressed is not None:
                    live = {"routing_mode": "; ~/set_routing_mode switches a running node",
                            "policy": "; ~/load_policy swaps a running node's policy"}.get(parameter.name, "")
                    more = f" ({suppressed} earlier changes of it not logged)" if suppressed else ""
                    self.get_logger().warning(f"parameter {parameter.name} = {parameter.value!r} is set but applies at "
                                              f"the next configure (lifecycle cleanup, then configure){live}{more}")
            if parameter.name == "routing.cost_weight":
                value = parameter.value
                if self.router is not None:
                    self.router.set_cost_weight(value)
                    applies = ("the operating point moves from the next frame" if self.router.mode == "learned" else
                               f"it applies in the learned mode (routing now {self.router.mode})")
                    self.get_logger().info(f"routing.cost_weight = {value:g}" + (" (the policy's own weight)" if value < 0
                                           else "") + f": {applies}")
                    self._compare_drift_routing()
        return SetParametersResult(successful=True)

    def _refused(self, parameters: list[Parameter], reason: str) -> SetParametersResult:
        """A refused change, told to the caller and in the node's log (an operator watching the log saw nothing)."""
        self.get_logger().warning("parameter change refused ("
                                  + ", ".join(f"{p.name} = {p.value!r}" for p in parameters) + f"): {reason}")
        return SetParametersResult(successful=False, reason=reason)

    def _compare_drift_routing(self) -> None:
        """Tell the drift monitors how frames are routed now, and say when the tier mix and audit agreement stop or
        start counting: they describe the routing as much as the world, so they count only while the node routes as
        the policy's drift reference measured them (`drift.routing_difference`)."""
        if self.drift is None or self.router is None:
            return
        mode, weight, hysteresis = self.router.operating_point()
        reason = self.drift.set_routing(mode, weight, hysteresis)
        reference = self.drift.reference
        changed, self._drift_routing_off = reason != self._drift_routing_off, reason
        if not changed or reference is None:  # without a reference there is nothing to say
            return
        if reason:
            measured_at = "" if reference.cost_weight is None else f" at cost weight {weight_text(reference.cost_weight)}"
            option = (f"--cost-weight {weight_text(weight)}" if reason.startswith("the cost weight") else
                      f"--hysteresis {hysteresis:g}" if reason.startswith("the hysteresis") else "")
            fix = (f"; to compare them here, recompute the reference for this routing: adaptive-perception policy "
                   f"drift-reference <policy file> --work <its train folder> {option} --out <new file>, then load the "
                   "new file (load_policy) with the same routing parameters" if option else "")
            text = (f"drift monitor: the tier mix and audit agreement are left out while {reason} (the policy's drift "
                    f"reference measured them in the learned mode{measured_at}, hysteresis {reference.hysteresis:g}); the "
                    f"image statistics still count{fix}")
        else:
            text = "drift monitor: the tier mix and audit agreement count again (routing as the drift reference measured it)"
        self.get_logger().info(text)

    def _check_policy_fits(self, policy: Policy, detectors: dict[str, DetectorTier]) -> list[str]:
        """Warn, naming both files' digests, for every loaded tier the policy was not trained with; and when its drift
        thresholds were calibrated on too few scenes to stay quiet on new in-distribution ones. The warnings given."""
        if not policy.info.tier_digests:
            self.get_logger().info(f"policy '{policy.policy_id}' does not name the tier files it was trained with, "
                                   "so they cannot be checked")
        warnings = policy.tier_mismatches({t: (d.digest, str(d.path)) for t, d in detectors.items()})
        self._policy_mismatches = other_files(policy.info.tier_digests, {t: d.digest for t, d in detectors.items()})
        thin = policy.drift_reference.thin_calibration() if policy.drift_reference is not None else ""
        warnings += [f"policy '{policy.policy_id}': {thin}"] if thin else []
        for warning in warnings:
            self.get_logger().warning(warning)
        return warnings


IMAGE_TYPES = {False: "sensor_msgs/msg/Image", True: "sensor_msgs/msg/CompressedImage"}  # by `compressed`


def _no_reference(policy: Policy) -> str:
    return (f"policy '{policy.policy_id}' carries no drift reference: drift monitoring is off (`adaptive-perception "
            "policy drift-reference` adds one from `train profile` output of held-out recordings of at least one "
            f"drift window, {WINDOW} frames, each)")


def _serialize(message: object) -> bytes:
    """CDR of an output message; a received frame and the detections (`detections_cdr`) are their own bytes."""
    if isinstance(message, bytes):
        return message
    return message.cdr if isinstance(message, ReceivedImage) else serialize_message(message)


def camera_namespace(node: PerceptionNode, camera: str) -> str:
    """Private namespace of one camera's outputs: ~/ plus its image topic after remapping, without the leading
    slash (image topic /front/image_raw -> ~/front/image_raw/detections and ~/front/image_raw/routing)."""
    return "~/" + node.resolve_topic_name(camera).strip("/")


def _status(name: str, hardware_id: str, report: dict[str, object]) -> DiagnosticStatus:
    values = [KeyValue(key=k, value=v) for k, v in key_values(report)]
    return DiagnosticStatus(level=bytes([report["level"]]), name=name, message=report["message"],
                            hardware_id=hardware_id, values=values)


SPIN_WAKE_S = 0.2  # the longest a signal waits for the main thread while nothing else wakes the executor
ROSOUT_LINGER_S = 0.3  # after logging while closing, before the node's /rosout writer is destroyed


MAX_MODE_CHARS = 64  # a set_routing_mode request longer than this is no mode (the longest, fixed:small, has 11)
MAX_PATH_CHARS = 4096  # PATH_MAX: a load_policy path longer than this names no file


def _shown(text: str, limit: int = 200) -> str:
    """What a publisher or a caller sent, fit for one log line: control characters escaped (a newline and a terminal
    escape in an encoding field printed a fake FATAL line), cut at `limit` characters with the length said."""
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text)} characters)"
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """Run the node until interrupted; with parameter autostart:=true it configures and activates itself."""
    apply_transport_defaults()
    quiet_mlflow_setup()
    argv = list(argv if argv is not None else sys.argv)
    ros_args = argv[argv.index("--ros-args") + 1:] if "--ros-args" in argv else []
    try:
        for path in params_files(ros_args):
            check_params_file(path, ros_args)
    except AdaptivePerceptionError as exc:
        print(f"perception_node: error: {exc}", file=sys.stderr)
        return 2
    # SIGINT (Ctrl-C, `ros2 launch`) and SIGTERM (docker stop, systemd) end the spin below as KeyboardInterrupt, and
    # the node shuts down with its ROS context still valid: rclpy's own handlers shut the context down first, so
    # what the node logs while closing (its MLflow run, evidence) failed to reach /rosout with an rcl error
    rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    # SIGINT too, explicitly: a process started in the background of a script inherits SIGINT as ignored, and such a
    # node stayed deaf to `kill -INT` (and to `ros2 launch`'s shutdown) until it was sent SIGTERM
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        node = PerceptionNode()
    except Exception as exc:  # bad --params-file or parameter override: say which, without a traceback
        print(f"perception_node: error: {exc}. Check the -p overrides and the --params-file against "
              "config/perception.yaml (types matter: conf_threshold:=1.0, not 1)", file=sys.stderr)
        rclpy.shutdown()
        return 2
    executor = rclpy.executors.SingleThreadedExecutor()
    executor.add_node(node)
    status = 0
    try:
        if node.get_parameter("autostart").value:
            for transition in (node.trigger_configure, node.trigger_activate):
                if transition() != TransitionCallbackReturn.SUCCESS:
                    node.get_logger().fatal(f"autostart: {transition.__name__[8:]} failed; see the error above")
                    status = 1
                    break
        while status == 0 and rclpy.ok():
            executor.spin_once(timeout_sec=SPIN_WAKE_S)  # wakes to let a signal's KeyboardInterrupt through
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    finally:
        node._stop_processing()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return status


if __name__ == "__main__":
    sys.exit(main())
