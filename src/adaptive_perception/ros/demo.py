"""`adaptive-perception demo`: bag of generated frames -> perception_node process -> lock-step replay -> summary."""
from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from adaptive_perception.bag import write_image_bag
from adaptive_perception.ros.replay import ReplayMode, replay_bag
from adaptive_perception.ros.session import node_process, spun_node

CAMERA_TOPIC = "/camera/image_raw"
FRAME_RATE_HZ = 30


def demo_frames(count: int, seed: int = 0, size: tuple[int, int] = (480, 640)) -> list[tuple[int, np.ndarray]]:
    """(stamp_ns, RGB frame) pairs: shapes moving over a textured gradient, 30 Hz stamps."""
    rng = np.random.default_rng(seed)
    height, width = size
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([90 + xs * 80 // width, 110 + ys * 60 // height, np.full_like(xs, 70)], axis=2)
    base = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    shapes = [(rng.uniform(0, width), rng.uniform(0, height), rng.uniform(-6, 6), rng.uniform(-4, 4),
               int(rng.integers(12, 70)), tuple(int(c) for c in rng.integers(0, 256, 3)), int(rng.integers(0, 3)))
              for _ in range(8)]
    frames = []
    for index in range(count):
        frame = base.copy()
        for x, y, vx, vy, radius, colour, kind in shapes:
            cx, cy = int((x + vx * index) % width), int((y + vy * index) % height)
            if kind == 0:
                cv2.circle(frame, (cx, cy), radius, colour, -1)
            elif kind == 1:
                cv2.rectangle(frame, (cx - radius, cy - radius // 2), (cx + radius, cy + radius // 2), colour, -1)
            else:
                triangle = np.array([[cx, cy - radius], [cx - radius, cy + radius], [cx + radius, cy + radius]])
                cv2.fillPoly(frame, [triangle], colour)
        frames.append((1_700_000_000_000_000_000 + index * 1_000_000_000 // FRAME_RATE_HZ, frame))
    return frames


def run_demo(out_dir: Path, frames: int = 60, model: Path | None = None) -> dict[str, object]:
    """Run the whole slice and return (and print) what came out."""
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    generated = demo_frames(frames)
    if model is None:
        model = out_dir / "yolov8n_random_320.onnx"
        if not model.exists():
            print(f"building yolov8n (random weights, 320 px) from its architecture yaml -> {model}")
            from adaptive_perception.training.yolo import export_random_yolov8

            calibration = np.stack([frame for _, frame in demo_frames(60)[::4]])
            export_random_yolov8(model, variant="n", imgsz=320, seed=0, score_spread=0.05, calibration=calibration)
    bag = out_dir / "demo_bag"
    if bag.exists():
        import shutil

        shutil.rmtree(bag)
    written = write_image_bag(bag, tqdm(generated, desc="writing bag", unit="frame"), CAMERA_TOPIC)
    print(f"wrote {written} frames (640x480 rgb8, {FRAME_RATE_HZ} Hz) to {bag}")

    routing: list[object] = []
    log_path = out_dir / "node.log"
    parameters = {"models.nano": str(model), "image_topics": [CAMERA_TOPIC], "routing_mode": "fixed:nano",
                  "providers": ["CPUExecutionProvider"], "qos.reliability": "reliable"}
    with node_process(parameters, log_path) as process, spun_node("demo_replay") as helper:
        from adaptive_perception_msgs.msg import RoutingDecision

        helper.create_subscription(RoutingDecision, "routing", routing.append, 100)
        with tqdm(total=written, desc="replaying (lock-step)", unit="frame") as bar:
            try:
                report = replay_bag(helper, bag, ReplayMode.LOCKSTEP, timeout_s=30.0, wait_for_subscriber_s=60.0,
                                    on_frame=lambda _: bar.update())
            except Exception:
                if process.poll() is not None:
                    raise RuntimeError(f"perception_node exited with code {process.returncode}; "
                                       f"see {log_path}:\n{log_path.read_text()[-2000:]}") from None
                raise
        time.sleep(0.2)  # the last RoutingDecision travels just behind its detections
    inference = np.array([r.inference_ms for r in routing]) if routing else np.array([np.nan])
    summary = {
        **report.summary(),
        "model": str(model),
        "tier": "nano (fixed)",
        "node_inference_p50_ms": float(np.median(inference)),
        "node_total_p50_ms": float(np.median([r.total_ms for r in routing])) if routing else float("nan"),
        "detections_per_frame": report.detections / max(report.outputs_received, 1),
        "demo_wall_s": time.perf_counter() - started,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print_summary(summary)
    print(f"node log: {log_path}   summary: {out_dir / 'summary.json'}")
    return summary


def print_summary(summary: dict[str, object]) -> None:
    rows = [
        ("frames in (published)", f"{summary['frames_published']}"),
        ("Detection2DArray out", f"{summary['outputs_received']}  (timeouts: {summary['timeouts']})"),
        ("detections (boxes)", f"{summary['detections']}  ({summary['detections_per_frame']:.1f} per frame)"),
        ("tier", str(summary["tier"])),
        ("node inference p50", f"{summary['node_inference_p50_ms']:.1f} ms"),
        ("node total p50", f"{summary['node_total_p50_ms']:.1f} ms (decode + inference + NMS)"),
        ("round trip p50 / p95", f"{summary['latency_p50_ms']:.1f} / {summary['latency_p95_ms']:.1f} ms"),
        ("throughput (lock-step)", f"{summary['fps']:.1f} frames/s"),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n| " + "what".ljust(width) + " | value |\n|" + "-" * (width + 2) + "|-------|")
    for key, value in rows:
        print(f"| {key.ljust(width)} | {value} |")
    print("\nThe model has random weights (no downloads here): the boxes are meaningless; the plumbing and"
          " the latency are real.\n")
