"""`adaptive-perception demo`: a benchmark test sequence -> bag -> perception_node per routing mode -> lock-step replay."""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from adaptive_perception.detector import TIERS, box_iou
from adaptive_perception.progress import progress
from adaptive_perception.ros.replay import ReplayMode, replay_bag
from adaptive_perception.ros.session import node_process, spun_node
from adaptive_perception.scenes.benchmark import BAG_TOPIC, PRESETS, sequence_bag
from adaptive_perception.scenes.sequence import FRAME_RATE_HZ, Regime

DEMO_SEED = 4243  # a sequence outside the benchmark (tests and the overhead benchmark render it)
DEMO_SEQUENCE = 49  # frozen test sequence: 49 sparse, 43 moderate, 58 dense frames
SEQUENCE_FRAMES = 150
DEMO_MODES = ("learned", "heuristic", "fixed:nano", "fixed:large")


def recall_at_50(truths: list[tuple[float, float, float, float]], boxes: np.ndarray) -> tuple[int, int]:
    """(found, total) ground-truth boxes (x0, y0, x1, y1) that some detection overlaps with IoU >= 0.5."""
    if not truths:
        return 0, 0
    found = int((box_iou(np.asarray(truths, np.float64), boxes) >= 0.5).any(axis=1).sum())
    return found, len(truths)


def run_demo(out_dir: Path, frames: int = SEQUENCE_FRAMES, modes: tuple[str, ...] = DEMO_MODES,
             sequence: int = DEMO_SEQUENCE) -> dict[str, object]:
    """Replay one frozen benchmark test sequence through perception_node once per routing mode and compare."""
    from adaptive_perception.config import EMBEDDED_DIR
    from adaptive_perception.errors import AdaptivePerceptionError

    missing = [name for name in (*TIERS, "policy") if not (EMBEDDED_DIR / f"{name}.onnx").is_file()]
    if missing:
        raise AdaptivePerceptionError(f"embedded files {missing} are missing from {EMBEDDED_DIR}; a source checkout "
                                      "builds them with `adaptive-perception models export-tiers` and "
                                      "`adaptive-perception policy fit-regime`")
    test_specs = {spec.index: spec for spec in PRESETS["benchmark"].specs()["test"]}
    if sequence not in test_specs:
        raise AdaptivePerceptionError(f"--sequence {sequence} is not a test sequence of the benchmark; use one of "
                                      f"{sorted(test_specs)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    spec = replace(test_specs[sequence], frames=frames)
    bag = out_dir / "demo_bag"
    records = sequence_bag(spec, bag, f"rendering test sequence {sequence}")
    truth = {r["stamp_ns"]: r for r in records}
    regimes = {r.value: sum(rec["regime"] == r.value for rec in records) for r in Regime}
    print(f"wrote {bag}: benchmark test sequence {sequence}, {frames} frames (640x480 rgb8, {FRAME_RATE_HZ} Hz; "
          f"sparse {regimes['sparse']}, moderate {regimes['moderate']}, dense {regimes['dense']})"
          + ("" if frames == SEQUENCE_FRAMES else f"; a shortened render, not the {SEQUENCE_FRAMES}-frame benchmark bag"))

    rows = {}
    for mode in modes:
        rows[mode] = _replay_mode(mode, bag, frames, truth, out_dir)
    summary = {"sequence": sequence, "frames": frames, "regime_frames": regimes, "modes": rows,
               "demo_wall_s": time.perf_counter() - started}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print_summary(summary)
    print(f"node logs: {out_dir}/node_<mode>.log   summary: {out_dir / 'summary.json'}")
    return summary


def _stamp_ns(header) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def _replay_mode(mode: str, bag: Path, frames: int, truth: dict[int, dict], out_dir: Path) -> dict:
    """One node process in `mode`, the bag in lock-step, outputs scored against the ground truth."""
    from adaptive_perception_msgs.msg import RoutingDecision

    outputs, routing = [], []
    parameters = {"image_topics": [BAG_TOPIC], "routing_mode": mode, "providers": ["CPUExecutionProvider"],
                  "qos.reliability": "reliable"}
    log_path = out_dir / f"node_{mode.replace(':', '_')}.log"
    with node_process(parameters, log_path) as process, spun_node("demo_replay") as helper:
        helper.create_subscription(RoutingDecision, "routing", routing.append, 100)
        with progress(total=frames, desc=f"replaying, {mode}", unit="frame") as bar:
            try:
                report = replay_bag(helper, bag, ReplayMode.LOCKSTEP, timeout_s=30.0, wait_for_subscriber_s=60.0,
                                    on_output=outputs.append, on_frame=lambda _: bar.update())
            except Exception:
                if process.poll() is not None:
                    raise RuntimeError(f"perception_node exited with code {process.returncode}; see {log_path}:\n"
                                       f"{log_path.read_text()[-2000:]}") from None
                raise
        deadline = time.monotonic() + 2.0  # the last RoutingDecision travels just behind its detections
        while len(routing) < len(outputs) and time.monotonic() < deadline:
            time.sleep(0.02)
    found = {r.value: [0, 0] for r in Regime}
    for msg in outputs:
        record = truth.get(_stamp_ns(msg.header))
        if record is None:
            continue
        boxes = np.array([[d.bbox.center.position.x - d.bbox.size_x / 2, d.bbox.center.position.y - d.bbox.size_y / 2,
                           d.bbox.center.position.x + d.bbox.size_x / 2, d.bbox.center.position.y + d.bbox.size_y / 2]
                          for d in msg.detections]).reshape(-1, 4)
        hit, total = recall_at_50([o["box"] for o in record["objects"] if not o["ignore"]], boxes)
        found[record["regime"]][0] += hit
        found[record["regime"]][1] += total
    by_regime = {r.value: np.zeros(len(TIERS)) for r in Regime}
    for decision in routing:
        record = truth.get(_stamp_ns(decision.header))
        if record is not None:
            by_regime[record["regime"]][decision.tier] += 1
    return {
        **report.summary(),
        "decisions": len(routing),
        "policy_id": routing[0].policy_id if routing else "",
        "inference_mean_ms": float(np.mean([r.inference_ms for r in routing])) if routing else None,
        "routing_mean_ms": float(np.mean([r.feature_ms + r.policy_ms for r in routing])) if routing else None,
        "total_mean_ms": float(np.mean([r.total_ms for r in routing])) if routing else None,
        "boxes_per_frame": report.detections / max(report.outputs_received, 1),
        "recall50": {k: (v[0] / v[1] if v[1] else None) for k, v in found.items()},  # None: no such frames
        "routing_by_regime": {k: dict(zip(TIERS, v.astype(int).tolist())) for k, v in by_regime.items()},
    }


def print_summary(summary: dict) -> None:
    labels = {"sparse": "sparse (<= 2)", "moderate": "moderate (3-7)", "dense": "dense (>= 8)"}
    for mode, row in summary["modes"].items():
        if mode.startswith("fixed:"):
            continue
        who = f", policy {row['policy_id']}" if row["policy_id"] else ""
        print(f"\nRouting by scene complexity, mode {mode}{who}:\n")
        print("| scene (objects) | frames | nano % | small % | large % |\n|---|---|---|---|---|")
        for regime, counts in row["routing_by_regime"].items():
            n = sum(counts.values())
            shares = " | ".join(f"{100 * counts[t] / n:.0f}" if n else "-" for t in TIERS)
            print(f"| {labels[regime]} | {n} | {shares} |")
    print("\n| mode | frames in / out | inference mean (ms) | routing mean (ms) | node total mean (ms) "
          "| round trip p50 (ms) | lock-step throughput (fps) | recall@0.5 sparse / moderate / dense |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, row in summary["modes"].items():
        recall = " / ".join("-" if row["recall50"][r.value] is None else f"{row['recall50'][r.value]:.2f}"
                            for r in Regime)
        ms = {k: "-" if row[k] is None else f"{row[k]:.{digits}f}"
              for k, digits in (("inference_mean_ms", 1), ("routing_mean_ms", 2), ("total_mean_ms", 1))}
        print(f"| {mode} | {row['frames_published']} / {row['outputs_received']} | {ms['inference_mean_ms']} | "
              f"{ms['routing_mean_ms']} | {ms['total_mean_ms']} | {row['latency_p50_ms']:.1f} | "
              f"{row['steady_fps']:.1f} | {recall} |")
    large = summary["modes"].get("fixed:large")
    for mode, row in summary["modes"].items():
        if large is not None and not mode.startswith("fixed:") and row["total_mean_ms"] and large["total_mean_ms"]:
            print(f"\n{mode} against always-large on the same {summary['frames']} frames: node time "
                  f"{row['total_mean_ms']:.1f} vs {large['total_mean_ms']:.1f} ms per frame "
                  f"({row['total_mean_ms'] / large['total_mean_ms']:.0%}), throughput {row['steady_fps']:.1f} vs "
                  f"{large['steady_fps']:.1f} fps (lock-step replay, round trip included, first frame's warm-up "
                  "excluded).")
    print("\nThe learned mode runs the embedded policy: BC + PPO from `adaptive-perception train all` on the scene "
          "benchmark's router split, sequences the tiers never saw (report: training/reports/routing.md).\n")
