"""Prometheus exporter of the node's telemetry (ROS-free; prometheus-client, its own registry).

Names and labels (all prefixed `adaptive_perception_`):

| metric | type | labels |
|---|---|---|
| `frames_received_total` | counter | camera |
| `frames_lost_before_node_total` | counter | camera (gaps in the publisher's sequence numbers) |
| `frames_dropped_total` | counter | camera (replaced by a newer frame before the worker took it) |
| `frames_processed_total` | counter | camera, tier |
| `frames_failed_total` | counter | camera, kind (bad_size, truncated, ..., tier_failed:<tier>) |
| `node_seconds` | histogram | camera, tier (decode to detections, per processed frame) |
| `router_overhead_seconds` | histogram | camera (what routing costs before the tier starts: the features the decision reads + the policy) |
| `frame_age_seconds` | histogram | camera (header stamp to publication) |
| `qos_incompatible_total` | counter | topic (publishers whose QoS cannot reach this node) |
| `drift_state`, `drift_score` | gauge | camera (state 0 unknown, 1 ok, 2 warn, 3 drift) |
| `audits_total` | counter | camera (frames handed to the audit worker) |
| `policy_info` | info | policy_id, mode |
| `node_info` | info | node (the node's fully qualified name: which node serves this endpoint) |
| `active` | gauge | - (1 while the node is lifecycle-active: subscribed and processing) |
| `camera_level` | gauge | camera (its /diagnostics level: 0 OK, 1 WARN, 2 ERROR) |
| `status_timestamp_seconds` | gauge | - (Unix time of the latest /diagnostics update, 1 Hz: a stuck node stops it) |

`camera` is the image topic after remapping (`/camera/image_raw` for `image:=/camera/image_raw`), as in /diagnostics.
"""
from __future__ import annotations

import ipaddress
import math
import socket
import threading
import time
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, make_wsgi_app

PREFIX = "adaptive_perception"
STATUS_STALE_S = 10.0  # `check_health`: a status older than this means the node stopped updating it
_NODE_BUCKETS = (0.005, 0.01, 0.02, 0.0333, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025)
_AGE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The endpoint's limits: a connection is closed DEADLINE_S after it was accepted, whatever it sent (a byte every
# few seconds kept one open without end), and at most MAX_CONNECTIONS from other machines and LOCAL_CONNECTIONS from
# this one are served at once (more are closed at once): a scrape from this machine (the container's healthcheck)
# is never crowded out by connections from elsewhere. prometheus_client's own server kept 700 half-sent requests
# open for minutes, a thread each.
DEADLINE_S = 10.0
MAX_CONNECTIONS = 32
LOCAL_CONNECTIONS = 8


class _QuietHandler(WSGIRequestHandler):
    def setup(self) -> None:
        super().setup()
        self._deadline = threading.Timer(DEADLINE_S, self._expire)
        self._deadline.daemon = True
        self._deadline.start()

    def _expire(self) -> None:
        try:
            self.connection.shutdown(socket.SHUT_RDWR)  # a read or write still waiting returns at once
        except OSError:
            pass  # already closed

    def finish(self) -> None:
        self._deadline.cancel()
        super().finish()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass  # a request is no log line


def _is_local(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


class _MetricsServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True

    def __init__(self, *args, **kwargs) -> None:
        self._slots = {True: threading.BoundedSemaphore(LOCAL_CONNECTIONS),
                       False: threading.BoundedSemaphore(MAX_CONNECTIONS)}
        self.serving = 0  # connections being served now
        self._count = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address) -> None:
        slots = self._slots[_is_local(client_address[0])]
        if not slots.acquire(blocking=False):
            self.shutdown_request(request)  # over the limit: closed, never queued
            return
        with self._count:
            self.serving += 1
        try:
            super().process_request(request, client_address)
        except BaseException:  # the thread did not start: its slot is free again
            self._release(slots)
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(self._slots[_is_local(client_address[0])])

    def _release(self, slots: threading.BoundedSemaphore) -> None:
        with self._count:
            self.serving -= 1
        slots.release()

    def handle_error(self, request, client_address) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], OSError):  # a client that timed out or went away: nothing to report
            super().handle_error(request, client_address)  # (socketserver printed a traceback for each)


class PrometheusMetrics:
    """Counters and histograms fed by `Telemetry`; `serve` exposes them over HTTP."""

    def __init__(self, node: str = "") -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        Info(f"{PREFIX}_node", "The node serving these metrics", registry=r).info({"node": node})
        self.received = Counter(f"{PREFIX}_frames_received", "Frames delivered to the node", ["camera"], registry=r)
        self.lost = Counter(f"{PREFIX}_frames_lost_before_node", "Frames published but never delivered",
                            ["camera"], registry=r)
        self.dropped_frames = Counter(f"{PREFIX}_frames_dropped", "Frames replaced by a newer one before processing",
                                      ["camera"], registry=r)
        self.processed_frames = Counter(f"{PREFIX}_frames_processed", "Frames routed and detected",
                                        ["camera", "tier"], registry=r)
        self.failed_frames = Counter(f"{PREFIX}_frames_failed", "Frames that produced no output",
                                     ["camera", "kind"], registry=r)
        self.node_seconds = Histogram(f"{PREFIX}_node_seconds", "Node time per processed frame",
                                      ["camera", "tier"], buckets=_NODE_BUCKETS, registry=r)
        self.overhead_seconds = Histogram(f"{PREFIX}_router_overhead_seconds",
                                          "Routing before the tier starts (features the decision reads + policy)",
                                          ["camera"], buckets=_OVERHEAD_BUCKETS, registry=r)
        self.frame_age_seconds = Histogram(f"{PREFIX}_frame_age_seconds", "Header stamp to publication",
                                           ["camera"], buckets=_AGE_BUCKETS, registry=r)
        self.qos_incompatible = Counter(f"{PREFIX}_qos_incompatible", "Publishers whose QoS cannot reach the node",
                                        ["topic"], registry=r)
        self.drift_state = Gauge(f"{PREFIX}_drift_state", "Drift monitor state: 0 unknown, 1 ok, 2 warn, 3 drift",
                                 ["camera"], registry=r)
        self.drift_score = Gauge(f"{PREFIX}_drift_score", "Latest drift score (1 = at the calibrated threshold)",
                                 ["camera"], registry=r)
        self.audits = Counter(f"{PREFIX}_audits", "Frames audited against the reference tier", ["camera"], registry=r)
        self.policy = Info(f"{PREFIX}_policy", "Routing policy and mode in force", registry=r)
        self.active = Gauge(f"{PREFIX}_active", "1 while the node is active (subscribed and processing)", registry=r)
        self.camera_level = Gauge(f"{PREFIX}_camera_level", "Camera's diagnostics level: 0 OK, 1 WARN, 2 ERROR",
                                  ["camera"], registry=r)
        self.status_time = Gauge(f"{PREFIX}_status_timestamp_seconds", "Unix time of the latest diagnostics update",
                                 registry=r)
        self._names: dict[str, str] = {}
        self._server = None

    def prepare(self, cameras: dict[str, str], tiers: list[str] | tuple[str, ...]) -> None:
        """Label each camera (a key of `cameras`) with its topic name after remapping (the value), and create every
        camera/tier series at zero, so a rate query works before the first event."""
        self._names = dict(cameras)
        for camera in self._names.values():
            for metric in (self.received, self.lost, self.dropped_frames):
                metric.labels(camera)
            for tier in tiers:
                self.processed_frames.labels(camera, tier)
            self.camera_level.labels(camera)
            self.drift_state.labels(camera).set(0)  # unknown until the monitor's window fills, as after a reset
            self.drift_score.labels(camera).set(math.nan)

    def _name(self, camera: str) -> str:
        """A camera's label: its topic after remapping."""
        return self._names.get(camera, camera)

    def status(self, levels: dict[str, int], now: float) -> None:
        """Each camera's diagnostics level, and when they were computed (Unix seconds)."""
        for camera, level in levels.items():
            self.camera_level.labels(self._name(camera)).set(level)
        self.status_time.set(now)

    # ---- the Telemetry sink interface ---------------------------------------------------------
    def arrived(self, camera: str, lost: int) -> None:
        self.received.labels(self._name(camera)).inc()
        if lost:
            self.lost.labels(self._name(camera)).inc(lost)

    def dropped(self, camera: str) -> None:
        self.dropped_frames.labels(self._name(camera)).inc()

    def processed(self, camera: str, tier: str, node_ms: float, overhead_ms: float, frame_age_ms: float) -> None:
        camera = self._name(camera)
        self.processed_frames.labels(camera, tier).inc()
        self.node_seconds.labels(camera, tier).observe(node_ms / 1e3)
        self.overhead_seconds.labels(camera).observe(overhead_ms / 1e3)
        if frame_age_ms >= 0:  # a publisher clock ahead of ours gives a negative age: not an age
            self.frame_age_seconds.labels(camera).observe(frame_age_ms / 1e3)

    def failed(self, camera: str, kind: str) -> None:
        self.failed_frames.labels(self._name(camera), kind).inc()

    def incompatible_qos(self, camera: str) -> None:
        self.qos_incompatible.labels(self._name(camera)).inc()

    def audited(self, camera: str) -> None:
        self.audits.labels(self._name(camera)).inc()

    def drift_scored(self, camera: str, score: float) -> None:
        self.drift_score.labels(self._name(camera)).set(score)

    def drift_state_changed(self, camera: str, state: int) -> None:
        self.drift_state.labels(self._name(camera)).set(state)

    def policy_changed(self, policy_id: str, mode: str) -> None:
        self.policy.info({"policy_id": policy_id, "mode": mode})

    # ---- HTTP -----------------------------------------------------------------------------------
    def serve(self, port: int, bind: str = "127.0.0.1") -> None:
        """Serve the metrics over HTTP on bind:port (any path; Prometheus scrapes /metrics)."""
        class Server(_MetricsServer):  # an IPv6 bind (metrics.bind '::') needs its own address family
            address_family = socket.getaddrinfo(bind, port, type=socket.SOCK_STREAM)[0][0]

        self._server = make_server(bind, port, make_wsgi_app(self.registry), Server, handler_class=_QuietHandler)
        threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True).start()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def url_problem(url: str) -> str:
    """Why `url` cannot be a metrics endpoint to ask ("" when it can be)."""
    if not url.lower().startswith(("http://", "https://")):
        return f"--url {url!r} is not an http(s) URL; give the node's endpoint, e.g. http://127.0.0.1:9464/metrics"
    return ""


def check_health(url: str = "http://127.0.0.1:9464/metrics", timeout_s: float = 5.0,
                 stale_s: float = STATUS_STALE_S) -> tuple[bool, str]:
    """A container healthcheck from the node's metrics, judged on the node's current status, not on totals: healthy
    when the endpoint answers, the node is active, its 1 Hz status is fresh (a stuck executor stops it) and no camera
    is at ERROR (a tier failing on recent frames, or frames arriving unprocessed); a camera at WARN is named but
    healthy (a camera that stopped publishing is not the node's fault). Returns (healthy, one line saying why)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    if url_problem(url):
        return False, url_problem(url)
    try:
        text = urllib.request.urlopen(url, timeout=timeout_s).read().decode(errors="replace")
    except (OSError, ValueError) as exc:
        return False, (f"metrics endpoint {url} does not answer ({exc}); is perception_node running, configured and "
                       "serving there (its log says 'metrics not served' when it cannot)?")
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError:
        families = []
    if not any(family.name.startswith(PREFIX) for family in families):
        return False, (f"{url} serves no {PREFIX} metrics; point --url at perception_node's endpoint "
                       "(metrics.bind:metrics.port/metrics)")
    received = processed = active = status_time = 0.0
    levels: dict[str, float] = {}
    node = ""
    for family in families:
        for sample in family.samples:
            if sample.name == f"{PREFIX}_node_info":
                node = sample.labels.get("node", "")
            elif sample.name == f"{PREFIX}_frames_received_total":
                received += sample.value
            elif sample.name == f"{PREFIX}_frames_processed_total":
                processed += sample.value
            elif sample.name == f"{PREFIX}_active":
                active = sample.value
            elif sample.name == f"{PREFIX}_status_timestamp_seconds":
                status_time = sample.value
            elif sample.name == f"{PREFIX}_camera_level":
                levels[sample.labels["camera"]] = sample.value
    healthy, why = _judged(received, processed, active, status_time, levels, stale_s)
    return healthy, f"node {node}: {why}" if node else why


def _judged(received: float, processed: float, active: float, status_time: float, levels: dict[str, float],
            stale_s: float) -> tuple[bool, str]:
    if not active:
        return False, "the node is not active (configured but not processing: lifecycle activate, or autostart:=true)"
    age = time.time() - status_time
    if not status_time or age > stale_s:
        return False, ("the node has published no status yet" if not status_time else
                       f"the node's status is {age:.0f} s old (updated every second): is it stuck?")
    totals = f"{processed:.0f} of {received:.0f} frames processed"
    errors = sorted(camera for camera, level in levels.items() if level >= 2)
    if errors:
        return False, (f"camera {', '.join(errors)} at ERROR (a tier failing on recent frames, or frames arriving "
                       f"unprocessed; /diagnostics says which); {totals}")
    warnings = sorted(camera for camera, level in levels.items() if level == 1)
    return True, totals + (f"; camera {', '.join(warnings)} at WARN (see /diagnostics)" if warnings else "")
