"""`adaptive-perception bench soak`: does the node hold for a long run? Two cameras of raw 640x480 at 30 Hz.

Real processes on localhost, on the shipped defaults (config/perception.yaml: learned routing, embedded tiers
and policy, best-effort depth-10 subscriptions, the shipped Fast DDS profile): a camera process publishes a
rendered 30-frame sequence in a loop on two topics, perception_node routes them, and this process listens to
`/routing` and `/diagnostics` and samples the node's resident memory every 5 s. Figures (a run of D minutes,
window W = D / 6: 5 minutes of a 30-minute run):
- memory growth: resident memory at the end minus at the end of the first window (bar: <= 50 MB);
- node time p95 of the last window against the first (bar: within 10 %);
- stalls: a gap between two outputs of one camera longer than the slowest tier's p99 node time + 100 ms
  (bar: none), timed at the node's publish (frame stamp + frame_age_ms); the gaps as this listener received
  them are reported beside, since the listener's own scheduling on the shared cores adds to them;
- crashes: the node process exiting before the end (bar: none); drops and losses from /diagnostics;
- where the CPU went, every 5 s (`host_sample`): the CPU time of the node, the camera, the node's child process (the
  audit) and this listener, the machine's idle and stolen time, and a fixed reference workload's CPU time, which
  rises when the host's cores run slower; per window in the report, and the p95 change at constant host speed.
Prints a table, writes JSON and a PNG (memory, node time and output rate over time).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from adaptive_perception.detector import TIERS
from adaptive_perception.progress import progress

TOPICS = ("/soak/camera0/image_raw", "/soak/camera1/image_raw")
RATE_HZ = 30.0
LOOP_FRAMES = 30
SEED = 4243  # the demo's generated sequence: realistic frames outside the benchmark
MEMORY_BAR_MB = 50.0
P95_BAR = 0.10
STALL_MARGIN_MS = 100.0
CAMERA_GAP_S = 0.1  # the camera process reports its own publishing gaps longer than this (3 frame periods)
SAMPLE_S = 5.0
SAMPLE_TOLERANCE_S = 1.0
REFERENCE_VALUES = 1_000_000  # the reference work: 8-10 ms of CPU on this machine's cores (8 MB: past the caches)
CONFIG = Path(__file__).resolve().parents[1] / "config" / "perception.yaml"


def resident_mb(pid: int) -> float | None:
    """Resident memory of a process in MB (VmRSS), None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def process_cpu_s(pid: int) -> float | None:
    """CPU time a process has used so far, user + system, in seconds (None once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14 and 15


def host_jiffies() -> tuple[int, int, int]:
    """The machine's CPU time so far in clock ticks, from /proc/stat: (all, idle + iowait, steal)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return sum(values), values[3] + values[4], values[7]


@functools.cache
def _reference() -> np.ndarray:
    return np.random.default_rng(SEED).random(REFERENCE_VALUES)


def reference_ms() -> float:
    """CPU time of a fixed single-threaded piece of work (sorting REFERENCE_VALUES numbers), in ms: it rises when
    the host's cores run slower (clock, caches, memory bandwidth shared with neighbours), not when they are busy."""
    begin = time.thread_time()
    np.sort(_reference(), kind="quicksort")
    return (time.thread_time() - begin) * 1e3


def children(pid: int) -> list[int]:
    """The process ids of a process's children (the node's: the audit's reference process)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(p) for p in task.read_text().split()]
        except OSError:
            continue
    return found


def host_sample(elapsed: float, node_pid: int, camera_pid: int) -> list[float] | None:
    """[s since the first frame, node CPU s, camera CPU s, host ticks, idle ticks, steal ticks, reference ms, CPU s
    of the node's child processes (the audit), this process's CPU s (the listener)]."""
    node, camera = process_cpu_s(node_pid), process_cpu_s(camera_pid)
    if node is None or camera is None:
        return None
    audit = sum(filter(None, (process_cpu_s(child) for child in children(node_pid))))
    return [elapsed, node, camera, *host_jiffies(), reference_ms(), audit, process_cpu_s(os.getpid())]


def host_figures(samples: list[list[float]], times: list[float], a: float, b: float, cpus: int) -> dict | None:
    """Where the CPU went from the first to the last `host_sample` row inside [a, b] s, with `times` the node's
    publish times of every output and `cpus` the machine's cores: the node's CPU per output it published (ms), the
    cores the node, the camera, the node's child processes (the audit's reference tier) and this listener used and
    the busy cores left to every other process on the machine, the host's shares of idle and of stolen time (a
    virtual machine's hypervisor giving the cores to someone else), and the reference work's median CPU ms; None
    with fewer than two rows inside."""
    # a sample is taken on the first pass of the listener's loop at or after each multiple of SAMPLE_S, a few ms
    # late: a window's edges take samples up to SAMPLE_TOLERANCE_S after them
    rows = [r for r in samples if a <= r[0] <= b + SAMPLE_TOLERANCE_S]
    if len(rows) < 2:
        return None
    first, last = rows[0], rows[-1]
    wall, ticks = last[0] - first[0], last[3] - first[3]
    node, camera, idle = (last[1] - first[1]) / wall, (last[2] - first[2]) / wall, (last[4] - first[4]) / ticks
    audit, listener = (last[7] - first[7]) / wall, (last[8] - first[8]) / wall
    published = sum(first[0] <= t < last[0] for t in times)
    return {"node_cpu_ms_per_output": node * wall * 1e3 / published if published else None,
            "node_cores": node, "camera_cores": camera, "audit_cores": audit, "listener_cores": listener,
            "other_cores": cpus * (1.0 - idle) - node - camera - audit - listener,
            "host_idle_share": idle, "host_steal_share": (last[5] - first[5]) / ticks,
            "reference_ms": float(np.median([r[6] for r in rows]))}


def stalls(arrivals: list[float], limit_s: float) -> list[tuple[float, float]]:
    """(start, gap) of every gap between consecutive outputs longer than `limit_s` (seconds)."""
    gaps = np.diff(np.asarray(arrivals, np.float64))
    return [(float(arrivals[i]), float(g)) for i, g in enumerate(gaps) if g > limit_s]


def longest_gap_ms(times: list[float]) -> float | None:
    return float(np.diff(times).max() * 1e3) if len(times) > 1 else None


def summarise(duration_s: float, outputs: dict[str, list[tuple[float, float, str]]], memory: list[tuple[float, float]],
              counters: dict[str, dict[str, int]], crashed: bool, published: dict[str, int],
              received: dict[str, list[float]] | None = None, camera_gaps: list[list[float]] | None = None,
              host: list[list[float]] | None = None, cpus: int | None = None) -> dict:
    """The soak's figures and bars from what was measured: outputs per camera as (node publish time s, node ms,
    tier), memory as (time s, MB), and optionally when the listener received each output (s) and the camera's
    own publishing gaps ([start s, gap ms]); times count from the first frame published. Stalls count on the node's publish times: the listener shares the cores, so its
    own scheduling delays are reported beside them but are not the node's."""
    window = duration_s / 6.0
    cpus = cpus or os.cpu_count() or 1
    every = [o for camera in outputs.values() for o in camera]
    tier_p99 = {t: float(np.percentile([ms for _, ms, tier in every if tier == t], 99))
                for t in TIERS if sum(tier == t for _, _, tier in every) >= 20}
    limit_ms = max(tier_p99.values(), default=0.0) + STALL_MARGIN_MS
    first = [ms for t, ms, _ in every if t < window]
    last = [ms for t, ms, _ in every if t >= duration_s - window]
    p95_first = float(np.percentile(first, 95)) if first else None
    p95_last = float(np.percentile(last, 95)) if last else None
    after_first = [mb for t, mb in memory if t >= window]
    growth = after_first[-1] - after_first[0] if len(after_first) >= 2 else None
    camera_stalls = {camera: stalls([t for t, _, _ in rows], limit_ms / 1e3) for camera, rows in outputs.items()}
    silent = [(start, start + ms / 1e3) for start, ms in camera_gaps or []]  # the camera published nothing

    def own(start: float, gap: float) -> float:  # the part of an output gap when the camera was publishing
        return gap - sum(max(0.0, min(start + gap, b) - max(start, a)) for a, b in silent)
    p95_change = (p95_last / p95_first - 1.0) if p95_first and p95_last else None
    windows = None
    if host is not None:
        times = [t for t, _, _ in every]
        windows = {"first_window": host_figures(host, times, 0.0, window, cpus),
                   "last_window": host_figures(host, times, duration_s - window, duration_s, cpus)}
    adjusted = None
    if p95_change is not None and windows and windows["first_window"] and windows["last_window"]:
        adjusted = (p95_change + 1.0) * windows["first_window"]["reference_ms"] / windows["last_window"]["reference_ms"] - 1.0
    cameras = list(outputs)

    def inside(start: float, gap: float) -> list[list]:  # what the node published, any camera, during a stall
        return [[round((t - start) * 1e3, 1), cameras.index(camera), tier, round(ms, 1)]
                for camera, rows in outputs.items() for t, ms, tier in rows if start < t <= start + gap]
    return {
        "duration_s": duration_s, "window_s": window, "rate_hz": RATE_HZ, "cameras": cameras,
        "published": published,
        "processed": {camera: len(rows) for camera, rows in outputs.items()},
        "mix": {camera: {t: sum(tier == t for _, _, tier in rows) / max(len(rows), 1) for t in TIERS}
                for camera, rows in outputs.items()},
        "node_counters": counters,
        "tier_p99_ms": tier_p99, "stall_limit_ms": limit_ms,
        "stalls": {camera: len(found) for camera, found in camera_stalls.items()},
        "stall_gaps": {camera: [[round(t, 3), round(g * 1e3, 1)] for t, g in found]  # [start s, gap ms]
                       for camera, found in camera_stalls.items()},
        # per stall, sorted by publish time: [ms after the stall's start, camera index, tier, node ms] of every
        # output published until the stalled camera's next one (its own next output is the last row)
        "stall_outputs": {camera: [sorted(inside(t, g)) for t, g in found] for camera, found in camera_stalls.items()},
        "camera_gaps": camera_gaps,
        "stalls_outside_camera_gaps": {camera: sum(own(t, g) > limit_ms / 1e3 for t, g in found)
                                       for camera, found in camera_stalls.items()},
        "longest_gap_ms": {camera: longest_gap_ms([t for t, _, _ in rows]) for camera, rows in outputs.items()},
        "listener": None if received is None else {
            "stalls": {camera: len(stalls(times, limit_ms / 1e3)) for camera, times in received.items()},
            "longest_gap_ms": {camera: longest_gap_ms(times) for camera, times in received.items()},
            # outputs the node counted but the listener never got: its reliable reader fell more than the node's
            # 10-deep output queue behind while starved of CPU (a measurement loss, not the node's)
            "missed": {camera: counters[camera]["processed"] - len(outputs[camera])
                       for camera in outputs if "processed" in counters.get(camera, {})}},
        "memory_mb": {"start_of_run": memory[0][1] if memory else None,
                      "end_of_first_window": after_first[0] if after_first else None,
                      "end": memory[-1][1] if memory else None, "growth_after_first_window": growth},
        # the p95 change, and the same with the host's speed taken out: each window's p95 over its reference work's
        # CPU ms (a figure beside the bar, not the bar)
        "node_p95_ms": {"first_window": p95_first, "last_window": p95_last, "change": p95_change,
                        "change_at_constant_host_speed": adjusted},
        # where the CPU went in those two windows: is a change of the node's p95 the node's or the host's?
        "host": windows,
        "crashes": int(crashed),
        "bars": {"memory_growth_le_50mb": growth is not None and growth <= MEMORY_BAR_MB,
                 "p95_within_10pct": p95_change is not None and abs(p95_change) <= P95_BAR,
                 "no_stall": not any(camera_stalls.values()) and all(outputs.values()),
                 "no_crash": not crashed},
    }


def _host_rows(host: dict | None) -> list[tuple[str, str]]:
    """The table's rows on where the CPU went, first / last window."""
    if not host or not host.get("first_window") or not host.get("last_window"):
        return []
    first, last = host["first_window"], host["last_window"]

    def pair(key: str, scale: float = 1.0, digits: int = 1) -> str:
        return " / ".join("-" if w[key] is None else f"{scale * w[key]:.{digits}f}" for w in (first, last))
    return [("node CPU per output, first / last window (ms)", pair("node_cpu_ms_per_output")),
            ("cores used by the node; the camera; the audit process; the listener; every other process, first / "
             "last window", "; ".join(pair(f"{who}_cores", digits=2)
                                      for who in ("node", "camera", "audit", "listener", "other"))),
            ("host idle; stolen by the hypervisor, first / last window (%)",
             f"{pair('host_idle_share', 100)}; {pair('host_steal_share', 100)}"),
            ("reference work (fixed sort), median CPU ms, first / last window", pair("reference_ms", digits=2))]


def table(report: dict) -> str:
    m, p = report["memory_mb"], report["node_p95_ms"]
    fmt = lambda v, d=1: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    rows = [("cameras x rate", f"{len(report['cameras'])} x {report['rate_hz']:.0f} Hz raw 640x480"),
            ("duration (min)", fmt(report["duration_s"] / 60)),
            ("published / processed per camera", ", ".join(
                f"{report['published'].get(c, 0)} / {report['processed'][c]}" for c in report["cameras"])),
            ("tier mix per camera (nano / small / large %)", ", ".join(
                " / ".join(f"{100 * report['mix'][c][t]:.0f}" for t in TIERS) for c in report["cameras"])),
            ("dropped / lost before node per camera", ", ".join(
                f"{report['node_counters'].get(c, {}).get('dropped', '-')} / "
                f"{report['node_counters'].get(c, {}).get('lost_before_node', '-')}" for c in report["cameras"])),
            ("resident MB: start, end of first window, end", f"{fmt(m['start_of_run'])}, "
             f"{fmt(m['end_of_first_window'])}, {fmt(m['end'])}"),
            ("memory growth after the first window (MB, bar <= 50)", fmt(m["growth_after_first_window"])),
            ("node time p95 first / last window (ms)", f"{fmt(p['first_window'])} / {fmt(p['last_window'])}"),
            ("p95 change (bar within 10 %)", "-" if p["change"] is None else f"{100 * p['change']:+.1f} %"),
            *([("p95 change at the host's speed of the first window (each p95 over the reference work's ms)",
                f"{100 * p['change_at_constant_host_speed']:+.1f} %")]
              if p.get("change_at_constant_host_speed") is not None else []),
            *_host_rows(report.get("host")),
            ("stall limit (ms): slowest tier p99 + 100", fmt(report["stall_limit_ms"])),
            ("stalls per camera (bar 0)", ", ".join(str(report["stalls"][c]) for c in report["cameras"])),
            ("stalls left when the camera's own publishing gaps are taken out", ", ".join(
                str(report["stalls_outside_camera_gaps"][c]) for c in report["cameras"])),
            ("camera's publishing gaps over 100 ms; longest (ms)", f"{len(report['camera_gaps'] or [])}; " + fmt(
                max((g for _, g in report["camera_gaps"] or []), default=None))),
            ("longest gap per camera (ms)", ", ".join(fmt(report["longest_gap_ms"][c]) for c in report["cameras"])),
            *([("as received by the listener: stalls; longest gap (ms); outputs missed", ", ".join(
                f"{report['listener']['stalls'][c]}; {fmt(report['listener']['longest_gap_ms'][c])}; "
                f"{report['listener'].get('missed', {}).get(c, '-')}"
                for c in report["cameras"]))] if report.get("listener") else []),
            ("crashes (bar 0)", str(report["crashes"]))]
    lines = ["| figure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    for c in report["cameras"]:
        for (start, gap), rows in zip(report["stall_gaps"][c], report.get("stall_outputs", {}).get(c, [])):
            lines.append(f"stall on camera {report['cameras'].index(c)} at {start:.1f} s ({gap:.0f} ms); published "
                         "meanwhile (ms after its start: camera tier node-ms): "
                         + ", ".join(f"+{at:.0f}: {cam} {tier} {ms:.0f}" for at, cam, tier, ms in rows))
    lines.append("bars: " + ", ".join(f"{k} {'met' if ok else 'NOT MET'}" for k, ok in report["bars"].items()))
    return "\n".join(lines)


def plot(report: dict, series: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True, dpi=100)
    memory = np.asarray(series["memory"]).reshape(-1, 2)
    axes[0].plot(memory[:, 0] / 60, memory[:, 1], color="tab:purple")
    axes[0].set_ylabel("node resident MB")
    minute = 60.0 if report["duration_s"] >= 600 else 10.0
    for camera, rows in series["outputs"].items():
        rows = np.asarray([(t, ms) for t, ms, _ in rows if t < report["duration_s"]]).reshape(-1, 2)
        if not len(rows):
            continue
        bins = np.floor(rows[:, 0] / minute)
        edges = np.unique(bins)
        p95 = [np.percentile(rows[bins == b, 1], 95) for b in edges]
        rate = [np.sum(bins == b) / minute for b in edges]
        axes[1].plot((edges + 0.5) * minute / 60, p95, marker=".", label=camera)
        axes[2].plot((edges + 0.5) * minute / 60, rate, marker=".", label=camera)
    axes[1].set_ylabel(f"node time p95 (ms)\nper {minute:.0f} s")
    axes[2].set_ylabel("outputs per second")
    # where the CPU went, per bin: the node's CPU per output and the reference work against the host's stolen time
    times = [t for rows in series["outputs"].values() for t, _, _ in rows]
    bins = [(b * minute, (b + 1) * minute) for b in range(int(np.ceil(report["duration_s"] / minute)))]
    cpus = report.get("machine", {}).get("cpus") or os.cpu_count() or 1
    figures = [(a, b, f) for a, b in bins if (f := host_figures(series.get("host") or [], times, a, b, cpus))]
    centres = [(a + b) / 120 for a, b, _ in figures]
    axes[3].plot(centres, [f["node_cpu_ms_per_output"] for _, _, f in figures], marker=".", color="tab:blue",
                 label="node CPU per output (ms)")
    axes[3].plot(centres, [f["reference_ms"] for _, _, f in figures], marker=".", color="tab:green",
                 label="reference work, CPU ms")
    axes[3].set_ylabel("ms")
    steal = axes[3].twinx()
    steal.plot(centres, [100 * f["host_steal_share"] for _, _, f in figures], color="tab:red",
               label="host time stolen (%)")
    steal.set_ylabel("stolen (%)", color="tab:red")
    steal.set_ylim(0, max([5.0] + [120 * f["host_steal_share"] for _, _, f in figures]))
    steal.legend(fontsize=7, loc="upper right")
    axes[3].set_xlabel("minutes since the first frame")
    for ax in axes[1:]:
        ax.legend(fontsize=7, loc="upper left" if ax is axes[3] else "best")
    overrides = "".join(f", {name}={value}" for name, value in report.get("overrides", {}).items())
    fig.suptitle(f"Soak: {len(report['cameras'])} cameras x {report['rate_hz']:.0f} Hz raw 640x480, shipped defaults"
                 + overrides)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_soak(minutes: float, report_path: Path, domain: int | None = None,
             overrides: dict[str, object] | None = None) -> int:
    """Run the soak (node parameters `overrides` on top of the shipped defaults); 0 when every bar is met."""
    import rclpy
    from adaptive_perception_msgs.msg import RoutingDecision
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from adaptive_perception.ros.session import node_process
    from adaptive_perception.transport import apply_defaults

    duration = minutes * 60.0
    work = report_path.parent / f"{report_path.stem}_logs"
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if domain is not None:
        env["ROS_DOMAIN_ID"] = str(domain)
    apply_defaults(env)
    os.environ.update(env)  # this process listens on the same domain and transport
    outputs: dict[str, list[tuple[float, float, str]]] = {topic: [] for topic in TOPICS}
    counters: dict[str, dict[str, int]] = {}
    memory: list[tuple[float, float]] = []
    host: list[list[float]] = []
    crashed = False
    parameters = {"image_topics": list(TOPICS), "metrics.port": 0, **(overrides or {})}
    print(f"soak: {len(TOPICS)} cameras x {RATE_HZ:.0f} Hz for {minutes:g} min; logs in {work}", file=sys.stderr)
    context = rclpy.context.Context()
    rclpy.init(context=context)
    listener = rclpy.create_node("soak_listener", context=context)
    executor = rclpy.executors.SingleThreadedExecutor(context=context)
    executor.add_node(listener)
    clock = {"start": None, "start_ns": None}
    received: dict[str, list[float]] = {topic: [] for topic in TOPICS}

    def routed(msg: RoutingDecision) -> None:
        if msg.header.frame_id in outputs and clock["start"] is not None:
            # the node's publish time: the frame's stamp (the camera's wall clock) plus its age at publish
            stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            published_s = (stamp_ns - clock["start_ns"]) / 1e9 + msg.frame_age_ms / 1e3
            outputs[msg.header.frame_id].append((published_s, msg.total_ms, msg.tier_name))
            received[msg.header.frame_id].append(time.monotonic() - clock["start"])

    def diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            for topic in TOPICS:
                if status.name.endswith(f"camera {topic}"):
                    counters[topic] = {kv.key.removeprefix("frames_"): int(kv.value) for kv in status.values
                                       if kv.key.startswith("frames_")}

    reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    listener.create_subscription(RoutingDecision, "/routing", routed, reliable)
    listener.create_subscription(DiagnosticArray, "/diagnostics", diagnostics, reliable)
    with node_process(parameters, work / "node.log", params_file=CONFIG) as node:
        camera = subprocess.Popen([sys.executable, "-m", "adaptive_perception.training.soak", "publish",
                                   "--seconds", str(duration)], env=env, stdout=subprocess.PIPE, text=True,
                                  stderr=open(work / "camera.log", "w"))
        try:
            start_line = camera.stdout.readline()  # the camera prints "start <wall ns>" with its first frame
            if not start_line.startswith("start"):
                raise RuntimeError(f"camera process failed; see {work / 'camera.log'}")
            clock["start"], clock["start_ns"] = time.monotonic(), int(start_line.split()[1])
            next_sample = 0.0
            with progress(total=int(duration), desc="soak", unit="second") as bar:
                while (elapsed := time.monotonic() - clock["start"]) < duration + 2.0:
                    executor.spin_once(timeout_sec=0.05)
                    if elapsed >= next_sample:
                        mb = resident_mb(node.pid)
                        if mb is not None:
                            memory.append((elapsed, mb))
                        if (sample := host_sample(elapsed, node.pid, camera.pid)) is not None:
                            host.append(sample)
                        next_sample += SAMPLE_S
                        bar.n = min(int(elapsed), int(duration))
                        bar.refresh()
                    if node.poll() is not None:
                        crashed = True
                        print(f"soak: the node exited with code {node.returncode} after {elapsed:.0f} s; see "
                              f"{work / 'node.log'}", file=sys.stderr)
                        break
            camera_report = json.loads(camera.communicate(timeout=60)[0].strip().splitlines()[-1])
            deadline = time.monotonic() + 2.5  # one more /diagnostics after the last frame
            while time.monotonic() < deadline:
                executor.spin_once(timeout_sec=0.05)
        finally:
            if camera.poll() is None:
                camera.kill()
    executor.shutdown()
    listener.destroy_node()
    rclpy.shutdown(context=context)
    report = summarise(duration, outputs, memory, counters, crashed, camera_report["sent"], received,
                       camera_report["gaps"], host)
    report["camera_slowest_publish_ms"] = camera_report["slowest_publish_ms"]
    report["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform()}
    report["overrides"] = overrides or {}
    print(table(report))
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps({**report, "series": {"memory": memory, "host": host}}, indent=1))
    plot(report, {"memory": memory, "outputs": outputs, "host": host}, report_path.with_suffix(".png"))
    print(f"wrote {report_path} and {report_path.with_suffix('.png')}")
    return 0 if all(report["bars"].values()) else 1


def _publish(args: argparse.Namespace) -> None:
    """Publish a rendered loop of frames on every camera topic at RATE_HZ for `seconds`; print counts as JSON."""
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from adaptive_perception.scenes.sequence import SequenceSpec, render_sequence
    from adaptive_perception.transport import apply_defaults

    apply_defaults()
    frames = [f.rgb for f in render_sequence(SequenceSpec(SEED, 0, LOOP_FRAMES))]
    rclpy.init()
    node = rclpy.create_node("soak_camera")
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)  # a camera driver's sensor-data QoS
    publishers = {topic: node.create_publisher(Image, topic, qos) for topic in TOPICS}
    messages = []
    for rgb in frames:
        msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", step=rgb.shape[1] * 3)
        msg.data = rgb.tobytes()
        messages.append(msg)
    deadline = time.monotonic() + 120  # the node loads and warms three tiers first
    while any(p.get_subscription_count() < 1 for p in publishers.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # let discovery settle
    sent = {topic: 0 for topic in TOPICS}
    gaps, slowest_ms = [], 0.0  # the camera's own late rounds: [start s, gap ms] beyond CAMERA_GAP_S
    start_ns = time.time_ns()
    print(f"start {start_ns}", flush=True)
    start = time.perf_counter()
    index, previous = 0, None
    while (now := time.perf_counter()) - start < args.seconds:
        delay = start + index / RATE_HZ - now
        if delay > 0:
            time.sleep(delay)
        msg = messages[index % len(messages)]
        stamp = time.time_ns()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        if previous is not None and (stamp - previous) / 1e9 > CAMERA_GAP_S:
            gaps.append([round((previous - start_ns) / 1e9, 3), round((stamp - previous) / 1e6, 1)])
        previous = stamp
        for topic, publisher in publishers.items():
            msg.header.frame_id = topic
            begin = time.perf_counter()
            publisher.publish(msg)
            slowest_ms = max(slowest_ms, (time.perf_counter() - begin) * 1e3)
            sent[topic] += 1
        index += 1
    print(json.dumps({"sent": sent, "gaps": gaps, "slowest_publish_ms": round(slowest_ms, 1)}), flush=True)
    # a best-effort frame lives in this process's shared-memory segment until the node reads it: the last ones would
    # go with the segment if the process left at once (3 of 3,601 frames of a camera went so in a CI run)
    time.sleep(1.0)
    node.destroy_node()
    rclpy.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="adaptive_perception.training.soak")
    parser.add_argument("role", choices=["publish"])
    parser.add_argument("--seconds", type=float, required=True)
    _publish(parser.parse_args())
