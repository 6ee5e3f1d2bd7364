"""`adaptive-perception bench latency`: onnxruntime latency of the tiers, and memory with three tiers loaded.

Times `session.run` (the onnxruntime call, nothing around it) of the embedded tiers at their own input sizes
and of real YOLOv8 n/s/l graphs (Ultralytics' architecture yaml, random weights: latency does not depend on the
weights) at 320x320 and 640x640, on one preprocessed 640x480 scene frame each, with the node's onnxruntime
settings (`spin_wait`). Models are timed in turn, each for all its calls back to back after its warm-up: with
spinning threads, interleaving calls of different sessions would time one session's threads against another's. Peak
resident memory with all three tiers loaded (and each run once) is measured in a fresh process per tier set.
Writes JSON and a latency file in `train --latency`'s format for the real graphs at 640 (the projection's
costs, the input of `train --latency`). With `--model` for all three tiers it times those files instead (no
YOLOv8 graphs built, so no training extra needed), and the latency file is theirs: how a robot's own tiers get
the `--latency` file that `policy operating-point` and `train` read.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np

from adaptive_perception.config import NodeConfig, resolve_model
from adaptive_perception.detector import TIERS, DetectorTier
from adaptive_perception.errors import ConfigError
from adaptive_perception.progress import progress

REAL_SIZES = (320, 640)
REAL_VARIANTS = {"nano": "n", "small": "s", "large": "l"}
GRAPH_SEED = 0
QUICK = {"sizes": (320,), "iterations": 8, "warmup": 2}
FULL = {"sizes": REAL_SIZES, "iterations": 40, "warmup": 3}
SEED = 4243  # the demo's sequence: not a benchmark test frame

# VmHWM (peak resident set) of this process image; unlike ru_maxrss it does not carry the parent's peak over exec
_MEMORY_SCRIPT = r"""
import json, sys
from adaptive_perception.detector import DetectorTier
def hwm_kb():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
paths, providers = json.loads(sys.argv[1]), json.loads(sys.argv[2])
before = hwm_kb()
tiers = [DetectorTier(p, providers, name=n) for n, p in paths.items()]
for tier in tiers:
    tier.warmup(1)
print(json.dumps({"before_kb": before, "peak_kb": hwm_kb()}))
"""


def real_graphs(folder: Path, sizes: tuple[int, ...]) -> dict[str, Path]:
    """YOLOv8 n/s/l ONNX at each size (`<tier>@<size>` -> file), exported once into `folder` and reused."""
    graphs = {}
    for size in sizes:
        for tier, variant in REAL_VARIANTS.items():
            path = folder / f"yolov8{variant}-{size}-seed{GRAPH_SEED}.onnx"
            if not path.is_file():
                from adaptive_perception.training.yolo import export_random_yolov8

                print(f"[latency] building yolov8{variant} at {size}x{size} (random weights) -> {path}", flush=True)
                export_random_yolov8(path, variant, size, seed=GRAPH_SEED)
            graphs[f"{tier}@{size}"] = path
    return graphs


def _percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()), "samples": int(ms.size)}


def time_sessions(models: dict[str, Path], providers: list[str], iterations: int, warmup: int) -> dict[str, dict]:
    """session.run latency of each model on one preprocessed scene frame, one model after the other."""
    from adaptive_perception.scenes.sequence import SequenceSpec, render_sequence

    frame = next(iter(render_sequence(SequenceSpec(SEED, 0, 1)))).rgb
    detectors = {name: DetectorTier(path, providers, name=name, spin_wait=NodeConfig().spin_wait)
                 for name, path in models.items()}
    tensors = {name: d.preprocess(frame)[0] for name, d in detectors.items()}
    samples: dict[str, list[float]] = {name: [] for name in detectors}
    for name in progress(list(detectors), desc=f"latency: {iterations} calls per model", unit="model"):
        detector = detectors[name]
        for _ in range(warmup):
            detector.infer(tensors[name])
        for _ in range(iterations):
            start = time.perf_counter()
            detector.infer(tensors[name])
            samples[name].append(time.perf_counter() - start)
    return {name: {**_percentiles(samples[name]), "input_hw": list(detectors[name].info.input_size),
                   "provider": detectors[name].providers[0], "file": str(models[name])} for name in detectors}


def peak_memory(paths: dict[str, Path], providers: list[str]) -> dict[str, float]:
    """Peak resident memory (MB) of a fresh process that loads the three tiers and runs each once."""
    done = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, json.dumps({k: str(v) for k, v in paths.items()}),
                           json.dumps(providers)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe failed: {done.stderr.strip()[-500:]}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    return {"peak_rss_mb": data["peak_kb"] / 1024, "before_tiers_rss_mb": data["before_kb"] / 1024,
            "tiers_rss_mb": (data["peak_kb"] - data["before_kb"]) / 1024}


def measure(providers: list[str], graphs_dir: Path, quick: bool, iterations: int | None = None,
            own: dict[str, str] | None = None) -> dict:
    """The embedded tiers and the YOLOv8 graphs; or, with `own` (tier -> file, all three), those files alone."""
    mode = QUICK if quick else FULL
    iterations = iterations or mode["iterations"]
    if own:
        models = {f"{t}@own": resolve_model(own[t]) for t in TIERS}
        timed = time_sessions(models, providers, iterations, mode["warmup"])
        memory = {"own": peak_memory({t: models[f"{t}@own"] for t in TIERS}, providers)}
    else:
        embedded = {f"{t}@embedded": resolve_model(f"embedded:{t}") for t in TIERS}
        real = real_graphs(graphs_dir, mode["sizes"])
        timed = time_sessions({**embedded, **real}, providers, iterations, mode["warmup"])
        memory = {"embedded": peak_memory({t: embedded[f"{t}@embedded"] for t in TIERS}, providers)}
        largest = max(mode["sizes"])
        memory[f"yolov8@{largest}"] = peak_memory({t: real[f"{t}@{largest}"] for t in TIERS}, providers)
    report = {
        "what": "onnxruntime session.run latency per model (one 640x480 scene frame, letterboxed; with the node's "
                "default preprocess_in_graph the run includes the uint8 to float conversion), models in turn with the "
                "node's onnxruntime settings; peak resident memory of a fresh process with three tiers loaded (their "
                "uint8-input graphs already cached by the timing, as on every node start after the first)",
        "run_id": uuid.uuid4().hex, "quick": quick, "iterations": iterations,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version()},
        "providers_requested": providers, "models": timed, "memory": memory,
    }
    report["ratios"] = ratios(report)
    return report


def ratios(report: dict) -> dict[str, float]:
    """large/nano p50 of each tier set (embedded, and YOLOv8 at each size) from this report's own timings."""
    models = report["models"]
    sets = sorted({name.split("@")[1] for name in models})
    return {f"large_over_nano_p50@{s}": models[f"large@{s}"]["p50_ms"] / models[f"nano@{s}"]["p50_ms"] for s in sets}


def latency_file(report: dict, size: int | None) -> dict:
    """The YOLOv8 graphs' mean session.run at `size` as a `train --latency` file; size None: the --model files'."""
    from adaptive_perception.detector import file_digest

    models = report["models"]
    if size is None:
        return {"device": f"onnxruntime {models['nano@own']['provider']}, {report['machine']['cores']} cores, batch 1: "
                          f"the tier files given (bench latency, run {report['run_id']})",
                "tiers_ms": {t: round(models[f"{t}@own"]["mean_ms"], 3) for t in TIERS},
                "host_cores": report["machine"]["cores"], "files": {t: models[f"{t}@own"]["file"] for t in TIERS},
                # what the files were, whatever their paths become: `policy operating-point` and `train` compare them
                "digests": {t: file_digest(models[f"{t}@own"]["file"]) for t in TIERS},
                "note": "mean onnxruntime session.run of each tier file on this machine"}
    return {"device": f"onnxruntime {models[f'nano@{size}']['provider']}, {report['machine']['cores']} cores, "
                      f"batch 1: YOLOv8 n/s/l at {size}x{size}, random weights (bench latency, run {report['run_id']})",
            "tiers_ms": {t: round(models[f"{t}@{size}"]["mean_ms"], 3) for t in TIERS},
            "host_cores": report["machine"]["cores"],
            "note": "mean onnxruntime session.run of real YOLOv8 graphs built from Ultralytics' architecture yaml; "
                    "accuracy does not come with them (random weights): routing projections with this file take "
                    "accuracy from the embedded tiers"}


def table(report: dict) -> str:
    lines = ["| model | input (HxW) | provider | p50 (ms) | p95 (ms) | p99 (ms) |", "|---|---|---|---|---|---|"]
    for name, row in report["models"].items():
        tier, where = name.split("@")
        label = {"embedded": f"embedded {tier}", "own": f"{tier}: {row['file']}"}.get(where, f"YOLOv8{REAL_VARIANTS[tier]}")
        h, w = row["input_hw"]
        lines.append(f"| {label} | {h}x{w} | {row['provider']} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} | "
                     f"{row['p99_ms']:.1f} |")
    lines += ["", "large / nano (p50): " + ", ".join(f"{k.split('@')[1]} {v:.1f}x" for k, v in report["ratios"].items()),
              "Peak resident memory, three tiers loaded (fresh process): " + ", ".join(
                  f"{k} {v['peak_rss_mb']:.0f} MB (tiers +{v['tiers_rss_mb']:.0f} MB)" for k, v in report["memory"].items())]
    return "\n".join(lines)


def run(providers: list[str], graphs_dir: Path, quick: bool, report_path: Path, latency_out: Path | None,
        iterations: int | None = None, own: dict[str, str] | None = None) -> dict:
    if iterations is not None and iterations < 5:
        raise ConfigError(f"--iterations {iterations}: use at least 5")
    if own and set(own) != set(TIERS):
        raise ConfigError(f"--model names {', '.join(sorted(own))}: name all three tiers (--model nano=PATH --model "
                          "small=PATH --model large=PATH), whose latencies together make a `--latency` file")
    report = measure(providers, graphs_dir, quick, iterations, own)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"wrote {report_path}")
    if latency_out is not None:
        size = None if own else max(QUICK["sizes"] if quick else FULL["sizes"])
        latency_out.parent.mkdir(parents=True, exist_ok=True)
        latency_out.write_text(json.dumps(latency_file(report, size), indent=2) + "\n")
        print(f"wrote {latency_out} (" + ("the three tier files" if own else f"YOLOv8 n/s/l at {size}")
              + ": input of `train --latency`, `policy operating-point --latency` and `bench throughput`)")
    return report
