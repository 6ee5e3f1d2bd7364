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
from adaptive_perception.router import LEARNED_AT, weighted_mode
from adaptive_perception.scenes.benchmark import BAG_TOPIC, PRESETS, sequence_bag
from adaptive_perception.scenes.sequence import FRAME_RATE_HZ, Regime

DEMO_SEED = 4243  # a sequence outside the benchmark (tests and the overhead benchmark render it)
DEMO_GENERATOR = "2.0.0"  # the world the embedded tiers were trained for (training/benchmark/v2/SPEC.md)
DEMO_SEQUENCE = 49  # frozen test sequence of generator 2.0.0: 69 sparse, 23 moderate, 58 dense frames
SEQUENCE_FRAMES = 150
# The embedded policy's per-frame operating point: its cost weight calibrated on the validation split to 40 % of
# always-large's cost (`train all`, the routing report's seed 0, training/reports/routing.json), where the routing
# report states its bars. Lock-step replay processes every frame, the per-frame setting, so the demo shows the
# policy there beside the node's default weight (the file's own: BC's calibration, at which BC + PPO spends about
# 30 % of large's cost). A test pins it to the committed report: retraining the embedded policy means updating it.
PER_FRAME_WEIGHT = 0.087276
DEMO_MODES = ("learned", f"{LEARNED_AT}{PER_FRAME_WEIGHT}", "heuristic", "fixed:nano", "fixed:large")


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
    test_specs = {spec.index: spec for spec in replace(PRESETS["benchmark"], version=DEMO_GENERATOR).specs()["test"]}
    if sequence not in test_specs:
        raise AdaptivePerceptionError(f"--sequence {sequence} is not a test sequence of the benchmark; use one of "
                                      f"{sorted(test_specs)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    spec = replace(test_specs[sequence], frames=frames)
    bag = out_dir / "demo_bag"
    records = sequence_bag(spec, bag, f"rendering test sequence {sequence} (generator {DEMO_GENERATOR})")
    truth = {r["stamp_ns"]: r for r in records}
    regimes = {r.value: sum(rec["regime"] == r.value for rec in records) for r in Regime}
    print(f"wrote {bag}: benchmark test sequence {sequence} (generator {DEMO_GENERATOR}), {frames} frames (640x480 rgb8, {FRAME_RATE_HZ} Hz; "
          f"sparse {regimes['sparse']}, moderate {regimes['moderate']}, dense {regimes['dense']})"
          + ("" if frames == SEQUENCE_FRAMES else f"; a shortened render, not the {SEQUENCE_FRAMES}-frame benchmark bag"))

    _prepare_mlflow(out_dir)
    rows, outputs = {}, {}
    for mode in modes:
        rows[mode], outputs[mode] = _replay_mode(mode, bag, frames, truth, out_dir)
    pictures, strip_tiers = write_pictures(out_dir, bag, outputs, truth)
    summary = {"sequence": sequence, "frames": frames, "regime_frames": regimes, "modes": rows,
               "pictures": [str(p) for p in pictures], "strip_tiers": strip_tiers, "mlflow": _mlflow_uri(out_dir),
               "demo_wall_s": time.perf_counter() - started}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print_summary(summary)
    print(f"node logs: {out_dir}/node_<mode>.log   summary: {out_dir / 'summary.json'}")
    print(f"pictures: {', '.join(str(p) for p in pictures)}")
    print(f"MLflow: one run per mode (experiment 'demo'): mlflow ui --backend-store-uri {summary['mlflow']}\n"
          "        (the UI needs the full mlflow package, which `make train-deps` installs; the demo writes with mlflow-skinny)")
    return summary


def _mlflow_uri(out_dir: Path) -> str:
    return f"sqlite:///{(out_dir / 'mlflow.db').resolve()}"


def _prepare_mlflow(out_dir: Path) -> None:
    """Create the demo's MLflow store and experiment before any node runs: the node of the first mode created the
    database's tables in the background while it processed its first frames, which ran up to 3x slower on 2 cores
    and made that mode look costlier than the others."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(_mlflow_uri(out_dir))
    if client.get_experiment_by_name("demo") is None:
        client.create_experiment("demo")


STRIP_FRAMES = 6  # routed frames in the strip: two per scene regime where the sequence has them


def write_pictures(out_dir: Path, bag: Path, outputs: dict[str, dict],
                   truth: dict[int, dict]) -> tuple[list[Path], list[str]]:
    """`routed_strip.png`: frames of the first routed (non-fixed) mode with its boxes and chosen tier (returned
    in the strip's order, row by row);
    `node_time.png`: per-frame node time of every mode over the sequence, the routed mode's points coloured
    by the tier it chose."""
    import cv2

    from adaptive_perception.bag import bag_image_rgb, read_images
    from adaptive_perception.drawing import draw_routed
    from adaptive_perception.ros.convert import msg_to_detections

    routed = next((m for m in outputs if not m.startswith("fixed:")), next(iter(outputs)))
    detections, decisions = outputs[routed]["detections"], outputs[routed]["routing"]
    chosen = []
    for regime in Regime:
        stamps = [s for s in sorted(decisions) if truth.get(s, {}).get("regime") == regime.value and s in detections]
        chosen += stamps[len(stamps) // 4::max(len(stamps) // 2, 1)][:2]
    tiles, tiers = [], []
    for image in read_images(bag):
        stamp = image.stamp_sec * 1_000_000_000 + image.stamp_nanosec
        if stamp in chosen:
            decision = decisions[stamp]
            regime = truth[stamp]["regime"]
            picture = draw_routed(bag_image_rgb(image), msg_to_detections(detections[stamp]), decision.tier_name,
                                  f"{decision.total_ms:.0f} ms, {regime}")
            tiles.append(cv2.resize(picture, (320, 240), interpolation=cv2.INTER_AREA))
            tiers.append(decision.tier_name)
    paths = []
    if tiles:
        tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % 3)
        strip = np.vstack([np.hstack(tiles[i:i + 3]) for i in range(0, len(tiles), 3)])
        paths.append(out_dir / "routed_strip.png")
        cv2.imwrite(str(paths[-1]), strip[:, :, ::-1])
    paths.append(_plot_node_time(out_dir / "node_time.png", outputs, routed))
    return paths, tiers


def _plot_node_time(path: Path, outputs: dict[str, dict], routed: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from adaptive_perception.drawing import tier_colour

    fig, ax = plt.subplots(figsize=(9, 3.6), dpi=110)
    other_colours = iter(["tab:blue", "tab:purple", "tab:brown", "tab:pink", "tab:cyan"])
    for mode, out in outputs.items():
        stamps = sorted(out["routing"])
        times = [out["routing"][s].total_ms for s in stamps]
        if mode == routed:
            ax.plot(range(len(times)), times, color="0.6", lw=0.8, zorder=1)
            for tier in TIERS:
                index = [i for i, s in enumerate(stamps) if out["routing"][s].tier_name == tier]
                ax.scatter(index, [times[i] for i in index], s=12, zorder=2, label=f"{mode}: {tier}",
                           color=np.array(tier_colour(tier)) / 255)
        else:  # a fixed mode in its tier's colour (as the routed mode's points), any other in one no tier has
            colour = (np.array(tier_colour(mode.split(":", 1)[1])) / 255 if mode.startswith("fixed:")
                      else next(other_colours))
            ax.plot(range(len(times)), times, lw=1.0, label=mode, alpha=0.8, color=colour)
    ax.axhline(1000 / FRAME_RATE_HZ, color="k", ls="--", lw=0.8, label=f"{FRAME_RATE_HZ} Hz frame budget")
    ax.set_xlabel("frame of the sequence")
    ax.set_ylabel("node time (ms)")
    ax.set_title("Per-frame node time: the routed mode's points coloured by the tier it chose")
    ax.legend(fontsize=7, ncol=3, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _stamp_ns(header) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def _replay_mode(mode: str, bag: Path, frames: int, truth: dict[int, dict], out_dir: Path) -> tuple[dict, dict]:
    """One node process in `mode`, the bag in lock-step, outputs scored against the ground truth."""
    from adaptive_perception_msgs.msg import RoutingDecision

    from adaptive_perception.ros.convert import msg_to_detections

    outputs: list = []
    routing: dict[int, RoutingDecision] = {}  # by stamp: a frame replay resent is decided twice
    routing_mode, weight = weighted_mode(mode)
    parameters = {"image_topics": [BAG_TOPIC], "routing_mode": routing_mode, "providers": ["CPUExecutionProvider"],
                  "qos.reliability": "reliable", "mlflow.tracking_uri": _mlflow_uri(out_dir),
                  "mlflow.experiment": "demo", "mlflow.interval_s": 2.0}
    if weight is not None:
        parameters["routing.cost_weight"] = weight
    log_path = out_dir / f"node_{mode.replace(':', '_')}.log"
    with node_process(parameters, log_path) as process, spun_node("demo_replay") as helper:
        helper.create_subscription(RoutingDecision, "routing", lambda r: routing.setdefault(_stamp_ns(r.header), r), 100)
        with progress(total=frames, desc=f"replaying, {mode}", unit="frame") as bar:
            try:
                report = replay_bag(helper, bag, ReplayMode.LOCKSTEP, timeout_s=30.0, wait_for_subscriber_s=60.0,
                                    on_output=outputs.append, on_frame=lambda _: bar.update())
            except Exception:
                if process.poll() is not None:
                    raise RuntimeError(f"perception_node exited with code {process.returncode}; see {log_path}:\n"
                                       f"{log_path.read_text()[-2000:]}") from None
                raise
        if report.interrupted:  # Ctrl-C ends the demo, not only this mode's replay
            raise KeyboardInterrupt
        if report.stopped:
            raise RuntimeError(report.stopped)
        deadline = time.monotonic() + 2.0  # the last RoutingDecision travels just behind its detections
        while len(routing) < len(outputs) and time.monotonic() < deadline:
            time.sleep(0.02)
    found = {r.value: [0, 0] for r in Regime}
    for msg in outputs:
        record = truth.get(_stamp_ns(msg.header))
        if record is None:
            continue
        boxes = msg_to_detections(msg).boxes.astype(np.float64)
        hit, total = recall_at_50([o["box"] for o in record["objects"] if not o["ignore"]], boxes)
        found[record["regime"]][0] += hit
        found[record["regime"]][1] += total
    by_regime = {r.value: np.zeros(len(TIERS)) for r in Regime}
    for decision in routing.values():
        record = truth.get(_stamp_ns(decision.header))
        if record is not None:
            by_regime[record["regime"]][decision.tier] += 1
    kept = {"detections": {_stamp_ns(m.header): m for m in outputs}, "routing": routing}
    return {
        **report.summary(),
        "decisions": len(routing),
        "policy_id": next(iter(routing.values())).policy_id if routing else "",
        "inference_mean_ms": float(np.mean([r.inference_ms for r in routing.values()])) if routing else None,
        "routing_mean_ms": float(np.mean([r.feature_ms + r.policy_ms for r in routing.values()])) if routing else None,
        "total_mean_ms": float(np.mean([r.total_ms for r in routing.values()])) if routing else None,
        "boxes_per_frame": report.detections / max(report.outputs_received, 1),
        "recall50": {k: (v[0] / v[1] if v[1] else None) for k, v in found.items()},  # None: no such frames
        "routing_by_regime": {k: dict(zip(TIERS, v.astype(int).tolist())) for k, v in by_regime.items()},
    }, kept


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
          "benchmark's router split, sequences the tiers never saw (report: training/reports/routing.md); `learned` "
          "at the node's default cost weight (the policy file's own), `learned:<w>` at `routing.cost_weight` w "
          f"({LEARNED_AT}{PER_FRAME_WEIGHT}: the per-frame operating point, 40 % of always-large's cost on the "
          "validation split, where the routing report states its bars).\n")
