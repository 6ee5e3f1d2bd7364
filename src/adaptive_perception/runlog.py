"""One MLflow run per node session, written from a background thread (ROS-free).

Parameters at start, snapshots of the telemetry over time, a `final.*` summary at the end. Every call from
the node only enqueues; a thread of its own talks to the tracking store, so a slow or unreachable store never
delays a frame. Needs only the light client: `pip install adaptive_perception[mlflow]` (mlflow-skinny, plus
SQLAlchemy and Alembic for a local sqlite:/// store)."""
from __future__ import annotations

import contextlib
import math
import queue
import threading
import time
from pathlib import Path
from typing import Iterator, Mapping

from adaptive_perception.errors import ConfigError, file_lock


def quiet_mlflow_setup() -> None:
    """Before MLflow is imported: its INFO lines ("Creating initial MLflow database tables...", "Updating database
    tables") interleaved with a command's own output whenever a store was new. Its warnings stay; an
    MLFLOW_LOGGING_LEVEL already set wins."""
    import os

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")


_END = object()
SNAPSHOT_KEYS = ("fps", "drop_share", "node_ms_p50", "node_ms_p95", "router_overhead_ms_p95", "frame_age_ms_p50",
                 "frames_received", "frames_processed", "frames_dropped", "frames_failed", "frames_lost_before_node")


def snapshot_metrics(camera_reports: Mapping[str, Mapping[str, object]], tiers: tuple[str, ...]) -> dict[str, float]:
    """MLflow metrics of one moment: `<camera>.<figure>` for the finite figures of each camera's report
    (camera = its topic without slashes at the ends, inner slashes as '_')."""
    out = {}
    for camera, report in camera_reports.items():
        name = camera.strip("/").replace("/", "_")
        for key in (*SNAPSHOT_KEYS, *(f"{tier}_share" for tier in tiers)):
            value = report.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                out[f"{name}.{key}"] = float(value)
    return out


def redact_uri(uri: str) -> str:
    """`uri` with the password of its user info replaced by *** (`http://bot:s3cret@host/` -> `http://bot:***@host/`):
    what the node logs, puts in /diagnostics and records in the run's parameters."""
    return _redacted(uri, uri)


def _redacted(text: str, uri: str) -> str:
    """`text` (an error naming `uri`, perhaps in a library's own words) with `uri`'s user info `user:password@`,
    as written or percent-decoded, shown as `user:***@` (a bare password could be any short string: "25")."""
    from urllib.parse import unquote, urlsplit

    try:
        parts = urlsplit(uri)
    except ValueError:
        return text
    if parts.password is None:
        return text
    userinfo = parts.netloc.rsplit("@", 1)[0]
    for written in {userinfo, unquote(userinfo)}:
        text = text.replace(f"{written}@", f"{parts.username}:***@")
    return text


START_ATTEMPTS = 3  # tries at creating the run, 1 and 2 s apart


@contextlib.contextmanager
def _creating(uri: str) -> Iterator[None]:
    """For an SQLite store, an exclusive lock beside its database while a client sets it up and creates the run:
    two nodes starting at once on a new store ran MLflow's table migrations together, which left it broken for
    both (`table _alembic_tmp_latest_metrics already exists`) and each without a run. Other stores: nothing."""
    if not uri.startswith("sqlite:///") or uri == "sqlite:///:memory:":
        yield
        return
    database = Path(uri[len("sqlite:///"):])
    if not database.parent.is_dir():  # a folder that is not there: MLflow's own error says so
        yield
        return
    with file_lock(f"{database}.lock"):
        yield


class NodeRun:
    """An MLflow run fed from a queue; `error` holds why the store could not be written, if it could not."""

    def __init__(self, tracking_uri: str, experiment: str, run_name: str, params: Mapping[str, object],
                 tags: Mapping[str, str] | None = None, max_pending: int = 1000) -> None:
        try:
            from mlflow.tracking import MlflowClient  # noqa: F401  (fail here, on the caller's thread, if missing)
        except ImportError as exc:
            raise ConfigError(f"mlflow.tracking_uri '{redact_uri(tracking_uri)}' is set but MLflow is not installed "
                              f"({exc}); "
                              "pip install 'adaptive_perception[mlflow]' (mlflow-skinny) or leave it empty") from None
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        self.run_id: str | None = None
        self.error: str | None = None
        self.dropped = 0  # snapshots not logged because the queue was full (the store is too slow)
        self._params = {k: (redact_uri(str(v)) if k == "mlflow.tracking_uri" else str(v))[:6000]
                        for k, v in params.items()}
        self._tags = dict(tags or {})
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mlflow-run", daemon=True)
        self._thread.start()

    def tag(self, key: str, value: str) -> None:
        """Set a tag of the run (the policy now routing); never blocks, like `log`."""
        try:
            self._queue.put_nowait(("tag", key, str(value)))
        except queue.Full:
            self.dropped += 1

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Queue one snapshot; never blocks (a full queue counts the snapshot as dropped)."""
        try:
            self._queue.put_nowait((step, int(time.time() * 1000), dict(metrics)))
        except queue.Full:
            self.dropped += 1

    def close(self, summary: Mapping[str, float], timeout_s: float = 15.0) -> bool:
        """Log `final.<name>` metrics, end the run as FINISHED, and wait for the thread; False if it timed out."""
        try:
            self._queue.put(("final", int(time.time() * 1000), dict(summary)), timeout=timeout_s)
            self._queue.put(_END, timeout=timeout_s)
        except queue.Full:
            return False
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def wait_started(self, timeout_s: float) -> bool:
        """True once the run exists in the store (or creating it failed: see `error`)."""
        return self._started.wait(timeout_s)

    def _run(self) -> None:
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        failure = None
        for attempt in range(START_ATTEMPTS):
            time.sleep(attempt)  # a store that is not there yet (a server starting): the next try may find it
            try:
                with _creating(self.tracking_uri):
                    client = MlflowClient(self.tracking_uri)
                    if self.run_id is None:
                        found = client.get_experiment_by_name(self.experiment)
                        experiment_id = found.experiment_id if found else client.create_experiment(self.experiment)
                        self.run_id = client.create_run(experiment_id, run_name=self.run_name,
                                                        tags=self._tags).info.run_id
                params = [Param(k, v) for k, v in self._params.items()]
                for start in range(0, len(params), 100):
                    client.log_batch(self.run_id, params=params[start:start + 100])
                failure = None
                break
            except Exception as exc:  # unreachable store, bad URI, missing driver: report, never raise
                failure = exc
        if failure is not None:
            self.error = _redacted(f"MLflow run not started at '{self.tracking_uri}': {type(failure).__name__}: "
                                   f"{failure}", self.tracking_uri)
            self._started.set()
            while self._queue.get() is not _END:  # drain so close() returns
                pass
            return
        self._started.set()
        while True:
            item = self._queue.get()
            if item is _END:
                break
            if item[0] == "tag":
                try:
                    client.set_tag(self.run_id, item[1], item[2])
                except Exception as exc:
                    self.error = _redacted(f"MLflow run {self.run_id}: {type(exc).__name__}: {exc}", self.tracking_uri)
                continue
            step, stamp, metrics = item
            final = step == "final"
            batch = [Metric(f"final.{k}" if final else k, v, stamp, 0 if final else step) for k, v in metrics.items()]
            try:
                for start in range(0, len(batch), 1000):
                    client.log_batch(self.run_id, metrics=batch[start:start + 1000])
            except Exception as exc:
                self.error = _redacted(f"MLflow run {self.run_id}: {type(exc).__name__}: {exc}", self.tracking_uri)
        try:
            client.set_terminated(self.run_id, "FINISHED")
        except Exception as exc:
            self.error = _redacted(f"MLflow run {self.run_id} not ended: {type(exc).__name__}: {exc}",
                                   self.tracking_uri)
