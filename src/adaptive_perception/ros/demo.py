"""`adaptive-perception demo`: a generated scene sequence -> bag -> perception_node per tier -> lock-step replay."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from adaptive_perception.bag import write_image_bag
from adaptive_perception.detector import TIERS
from adaptive_perception.ros.replay import ReplayMode, replay_bag
from adaptive_perception.ros.session import node_process, spun_node
from adaptive_perception.scenes.render import Truth
from adaptive_perception.scenes.sequence import FRAME_RATE_HZ, Regime, SequenceSpec, render_sequence

CAMERA_TOPIC = "/camera/image_raw"
DEMO_SEED = 4243  # not a benchmark seed: the demo never shows a test frame; all three regimes in 120 frames
STAMP_BASE_NS = 1_800_000_000_000_000_000


def _iou(box: tuple[float, float, float, float], boxes: np.ndarray) -> np.ndarray:
    if boxes.size == 0:
        return np.zeros(0)
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    return inter / (area + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter)


def recall_at_50(truths: list[Truth], boxes: np.ndarray) -> tuple[int, int]:
    """(found, total) valid objects that some detection overlaps with IoU >= 0.5."""
    found = sum(1 for t in truths if (_iou(t.box, boxes) >= 0.5).any())
    return found, len(truths)


def run_demo(out_dir: Path, frames: int = 120, tiers: tuple[str, ...] = TIERS) -> dict[str, object]:
    """Replay one generated sequence through perception_node once per fixed tier and compare them."""
    from adaptive_perception.config import EMBEDDED_DIR
    from adaptive_perception.errors import AdaptivePerceptionError

    missing = [t for t in tiers if not (EMBEDDED_DIR / f"{t}.onnx").is_file()]
    if missing:
        raise AdaptivePerceptionError(f"embedded tier files {missing} are missing from {EMBEDDED_DIR}; a source "
                                      "checkout builds them with `adaptive-perception models export-tiers`")
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    sequence = list(tqdm(render_sequence(SequenceSpec(DEMO_SEED, 0, frames)), total=frames, desc="rendering", unit="frame"))
    truth_by_stamp = {STAMP_BASE_NS + f.stamp_ns: f for f in sequence}
    bag = out_dir / "demo_bag"
    if bag.exists():
        shutil.rmtree(bag)
    write_image_bag(bag, [(STAMP_BASE_NS + f.stamp_ns, f.rgb) for f in sequence], CAMERA_TOPIC)
    regimes = {r.value: sum(f.regime is r for f in sequence) for r in Regime}
    print(f"wrote {frames} frames (640x480 rgb8, {FRAME_RATE_HZ} Hz; sparse {regimes['sparse']}, "
          f"moderate {regimes['moderate']}, dense {regimes['dense']}) to {bag}")

    rows = {}
    for tier in tiers:
        from adaptive_perception_msgs.msg import RoutingDecision

        outputs, routing = [], []
        parameters = {"image_topics": [CAMERA_TOPIC], "routing_mode": f"fixed:{tier}",
                      "providers": ["CPUExecutionProvider"], "qos.reliability": "reliable"}
        log_path = out_dir / f"node_{tier}.log"
        with node_process(parameters, log_path) as process, spun_node("demo_replay") as helper:
            helper.create_subscription(RoutingDecision, "routing", routing.append, 100)
            with tqdm(total=frames, desc=f"replaying, fixed:{tier}", unit="frame") as bar:
                try:
                    report = replay_bag(helper, bag, ReplayMode.LOCKSTEP, timeout_s=30.0, wait_for_subscriber_s=60.0,
                                        on_output=outputs.append, on_frame=lambda _: bar.update())
                except Exception:
                    if process.poll() is not None:
                        raise RuntimeError(f"perception_node exited with code {process.returncode}; see {log_path}:\n"
                                           f"{log_path.read_text()[-2000:]}") from None
                    raise
            time.sleep(0.2)  # the last RoutingDecision travels just behind its detections
        found = {r.value: [0, 0] for r in Regime}
        for msg in outputs:
            frame = truth_by_stamp.get(msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec)
            if frame is None:
                continue
            boxes = np.array([[d.bbox.center.position.x - d.bbox.size_x / 2, d.bbox.center.position.y - d.bbox.size_y / 2,
                               d.bbox.center.position.x + d.bbox.size_x / 2, d.bbox.center.position.y + d.bbox.size_y / 2]
                              for d in msg.detections]).reshape(-1, 4)
            hit, total = recall_at_50(frame.valid, boxes)
            found[frame.regime.value][0] += hit
            found[frame.regime.value][1] += total
        rows[tier] = {
            **report.summary(),
            "inference_p50_ms": float(np.median([r.inference_ms for r in routing])) if routing else float("nan"),
            "total_p50_ms": float(np.median([r.total_ms for r in routing])) if routing else float("nan"),
            "boxes_per_frame": report.detections / max(report.outputs_received, 1),
            "recall50": {k: (v[0] / v[1] if v[1] else float("nan")) for k, v in found.items()},
        }
    summary = {"frames": frames, "regime_frames": regimes, "tiers": rows, "demo_wall_s": time.perf_counter() - started}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print_summary(summary)
    print(f"node logs: {out_dir}/node_<tier>.log   summary: {out_dir / 'summary.json'}")
    return summary


def print_summary(summary: dict) -> None:
    print("\n| tier | frames in / out | inference p50 (ms) | node total p50 (ms) | round trip p50 (ms) | boxes/frame "
          "| recall@0.5 sparse / moderate / dense |")
    print("|---|---|---|---|---|---|---|")
    for tier, row in summary["tiers"].items():
        recall = " / ".join(f"{row['recall50'][r.value]:.2f}" for r in Regime)
        print(f"| {tier} | {row['frames_published']} / {row['outputs_received']} | {row['inference_p50_ms']:.1f} | "
              f"{row['total_p50_ms']:.1f} | {row['latency_p50_ms']:.1f} | {row['boxes_per_frame']:.1f} | {recall} |")
    print("\nEach tier is the embedded detector (trained on the project's synthetic scene benchmark), run as a "
          "fixed tier; the learned router that picks one per frame comes next.\n")
