"""Train, export and evaluate the embedded detector tiers (nano, small, large) on the scene benchmark.

The family is one YOLOv8n-architecture network (5 classes) trained from scratch on the benchmark's
train split, exported at three input sizes: on this 2-core machine input resolution is what separates
the tiers (dense scenes need pixels, sparse ones do not), and one training run fits the CPU budget.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adaptive_perception.errors import AdaptivePerceptionError, read_json
from adaptive_perception.progress import progress as progress_bar
from adaptive_perception.training import crops
from adaptive_perception.training.crops import CropPlan
from adaptive_perception.training.yolo import _offline_ultralytics, export_onnx

# tier -> (height, width) of the exported network input; 4:3 like the 640x480 camera, multiples of 32
TIER_INPUTS: dict[str, tuple[int, int]] = {"nano": (192, 256), "small": (320, 416), "large": (480, 640)}
TRAIN_IMGSZ = 320
ARCHITECTURE = "yolov8n.yaml"


@dataclass(frozen=True)
class Network:
    """One network of the tier family: YOLOv8's architecture at a width and depth, trained on crops."""

    name: str
    depth: float  # Ultralytics depth multiple (yolov8n: 0.33)
    width: float  # Ultralytics width multiple (yolov8n: 0.25, yolov8s: 0.50)
    crops: CropPlan
    start: str | None = None  # a fine-tune: the network whose committed last.pt gives the starting weights
    recipe: tuple[tuple[str, object], ...] = ()  # Ultralytics training arguments that differ from the defaults below


# How a network that starts from another's weights trains (the Ultralytics arguments that differ from the defaults)
FINE_TUNE = (("mosaic", 0.0), ("optimizer", "AdamW"), ("lr0", 0.0005), ("warmup_epochs", 0.0))

# Tier family 2: `base` (yolov8n's width) trained on crops at the scales of all three tier inputs (256, 416 and
# 640 px wide = 0.4, 0.65 and 1.0 of the frame), and `narrow` (half yolov8n's width) at nano's scale only.
NETWORKS = {
    "base": Network("base", 0.33, 0.25, CropPlan(scales=(0.4, 0.65, 1.0), size=320)),
    "narrow": Network("narrow", 0.33, 0.125, CropPlan(scales=(0.4,), size=256)),
    # base fine-tuned so the native scale sees near objects whole (mosaic off, since it would cut them again): a
    # candidate for `base`'s large tier scoring 21 mAP50 on objects of 128 px and more where nano scores 57. Tried,
    # not adopted: it did not move that figure on the test split (training/README.md)
    "base-near": Network("base-near", 0.33, 0.25, CropPlan(scales=(0.4, 0.65, 1.0), size=320, near_share=0.75),
                         start="base", recipe=FINE_TUNE),
    # the large tier as a wider network (1.5x yolov8n's width, 2.1x its parameters), as real tiers differ in width,
    # not only in input size: `base` widened without changing its output (training/widen.py), then trained at the
    # large tier's scale only, near objects whole in 3 of 4 windows (training/README.md)
    "wide": Network("wide", 0.33, 0.375, CropPlan(scales=(1.0,), size=320, near_share=0.75), start="base",
                    recipe=FINE_TUNE),
    # YOLOv8s's width (2x yolov8n's, 11.2 M parameters): `wide` widened again without changing its output, trained
    # the same way; at 480x640 it costs 5.5x the small tier, where real YOLOv8l costs 5.1x YOLOv8s. Tried, not
    # adopted: 12 epochs left it at wide's validation mAP50-95 (training/README.md)
    "wider": Network("wider", 0.33, 0.5, CropPlan(scales=(1.0,), size=320, near_share=0.75), start="wide",
                     recipe=FINE_TUNE),
    # base fine-tuned at one tier's scale only, as `wide` was at large's: does a network that serves one input
    # instead of three do better there, at the same cost? (training/README.md, "Scale specialists")
    "base-small": Network("base-small", 0.33, 0.25, CropPlan(scales=(0.65,), size=320), start="base", recipe=FINE_TUNE),
    "base-nano": Network("base-nano", 0.33, 0.25, CropPlan(scales=(0.4,), size=320), start="base", recipe=FINE_TUNE),
}


# The embedded tiers (src/adaptive_perception/models): which network each is exported from, and its checkpoint.
# nano and small are `base` at two input sizes; large is `wide` (training/README.md, "`wide`").
EMBEDDED_WEIGHTS: dict[str, tuple[str, Path]] = {
    "nano": ("base", Path("training/checkpoints/tiers-v2/base/last.pt")),
    "small": ("base", Path("training/checkpoints/tiers-v2/base/last.pt")),
    "large": ("wide", Path("training/checkpoints/tiers-v2/wide/final.pt")),
}


def architecture(network: Network, folder: Path) -> Path:
    """Write YOLOv8's architecture (from the installed Ultralytics) at the network's scale; returns the yaml."""
    import yaml
    from ultralytics.nn.tasks import yaml_model_load

    cfg = yaml_model_load(ARCHITECTURE)
    cfg.pop("yaml_file", None)
    cfg["scales"] = {"n": [network.depth, network.width, 1024]}
    path = Path(folder) / f"yolov8n-{network.name}.yaml"  # the name tells Ultralytics to use scale "n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _optimizer_tensors(ckpt: dict, dtype) -> None:
    """Cast the optimizer state's floating tensors in place (bfloat16 keeps float32's range, so Adam's tiny second
    moments do not underflow as they would in float16)."""
    import torch

    for state in (ckpt.get("optimizer") or {}).get("state", {}).values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point() and value.ndim > 0:
                state[key] = value.to(dtype)


def compact_checkpoint(source: Path, target: Path) -> None:
    """Write an Ultralytics last.pt with its optimizer state in bfloat16 (about 18 instead of 30 MB for `base`),
    atomically: what is committed after each working block."""
    import torch

    ckpt = torch.load(source, map_location="cpu", weights_only=False)
    _optimizer_tensors(ckpt, torch.bfloat16)
    torch.save(ckpt, target.parent / f".{target.name}.tmp")
    os.replace(target.parent / f".{target.name}.tmp", target)


def _checkpoint_to(run: Path, keep: Path) -> None:
    """Keep last.pt (compacted) and results.csv in `keep` after every saved epoch, so a killed run loses at most one;
    and best.pt without its optimizer state whenever it changed (a resumed run only rewrites it when it improves)."""
    from ultralytics.utils.torch_utils import strip_optimizer

    keep.mkdir(parents=True, exist_ok=True)
    if (run / "weights" / "last.pt").exists():
        compact_checkpoint(run / "weights" / "last.pt", keep / "last.pt")
    best = run / "weights" / "best.pt"
    if best.exists() and (not (keep / "best.pt").exists() or best.stat().st_mtime > (keep / "best.pt").stat().st_mtime):
        strip_optimizer(best, str(keep / ".best.pt.tmp"))
        os.replace(keep / ".best.pt.tmp", keep / "best.pt")
    if (run / "results.csv").exists():
        shutil.copy(run / "results.csv", keep / ".results.csv.tmp")
        os.replace(keep / ".results.csv.tmp", keep / "results.csv")


def _relocate(checkpoint: Path, run: Path, data_yaml: Path) -> None:
    """Point a committed checkpoint's stored paths at this checkout, so Ultralytics resumes here."""
    import torch

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    _optimizer_tensors(ckpt, torch.float32)
    args = ckpt["train_args"]
    args.update(data=str(data_yaml.resolve()), project=str(run.parent.resolve()), name=run.name,
                save_dir=str(run.resolve()), model=str((run / "weights" / "last.pt").resolve()))
    (run / "weights").mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, run / "weights" / "last.pt")


def start_checkpoint(network: Network, keep: Path | None) -> Path:
    """The committed weights a fine-tune starts from: its start network's last.pt beside `keep`, else that network's
    final.pt (the last epoch's weights without the optimizer state, as `wide`'s is committed)."""
    folder = Path(keep).parent / str(network.start) if keep is not None else None
    for name in ("last.pt", "final.pt"):
        if folder is not None and (folder / name).is_file():
            return folder / name
    raise AdaptivePerceptionError(f"network '{network.name}' starts from '{network.start}''s committed checkpoint; "
                                  f"pass --keep <folder>/{network.name} with <folder>/{network.start}/last.pt (or "
                                  f"final.pt) beside it" + (f" (none in '{folder}')" if folder is not None else ""))


def _ultralytics_trainer() -> None:
    """Ultralytics set up to train here: offline, every core, and no MLflow callback."""
    _offline_ultralytics()
    import ultralytics.utils.torch_utils as torch_utils
    from ultralytics.utils import SETTINGS

    torch_utils.NUM_THREADS = os.cpu_count() or 1  # Ultralytics leaves one core idle; on 2 cores that halves speed
    SETTINGS.update({"mlflow": False})  # its callback wrote mlflow.db and mlruns/ into the working directory


def train_network(network: Network, benchmark_dir: Path, out_dir: Path, epochs: int = 80, batch: int = 16,
                  seed: int = 0, keep: Path | None = None) -> Path:
    """Train (or resume) one network of the family; returns best.pt.

    Resumes from `out_dir/<name>/run/weights/last.pt`, else from `keep/last.pt` (a committed checkpoint),
    else starts fresh. After every epoch last.pt and results.csv are copied to `keep`."""
    _ultralytics_trainer()
    from ultralytics import YOLO

    home = Path(out_dir) / network.name
    data_yaml = home / "crops" / "data.yaml"
    if not data_yaml.exists():
        print(f"{network.name}: cutting training crops {network.crops}")
        crops.build(benchmark_dir, home / "crops", network.crops)
    run = home / "run"
    last = run / "weights" / "last.pt"
    if not last.exists() and keep is not None and (Path(keep) / "last.pt").exists():
        print(f"{network.name}: continuing from the committed checkpoint {Path(keep) / 'last.pt'}")
        _relocate(Path(keep) / "last.pt", run, data_yaml)
        if (Path(keep) / "best.pt").exists():
            shutil.copy(Path(keep) / "best.pt", run / "weights" / "best.pt")
        if (Path(keep) / "results.csv").exists():
            shutil.copy(Path(keep) / "results.csv", run / "results.csv")
    if (run / "weights" / "done").exists():
        return run / "weights" / "best.pt"
    if last.exists():
        model = YOLO(str(last))
    elif network.start is not None:
        start = start_checkpoint(network, keep)
        if NETWORKS[network.start].width != network.width:
            from adaptive_perception.training.widen import widen

            print(f"{network.name}: widening {start} from width {NETWORKS[network.start].width} to {network.width}")
            start = widen(start, architecture(network, home), home / "start.pt")
        print(f"{network.name}: starting from {start}")
        model = YOLO(str(start))
    else:
        model = YOLO(str(architecture(network, home)))
    if keep is not None:
        model.add_callback("on_model_save", lambda trainer: _checkpoint_to(run, Path(keep)))
    if last.exists():
        print(f"{network.name}: resuming from {last}")
        model.train(resume=True)
    else:
        model.train(data=str(data_yaml), imgsz=network.crops.size, epochs=epochs, batch=batch, workers=2,
                    device="cpu", project=str(home.resolve()), name="run", exist_ok=True, seed=seed,
                    deterministic=False, cache="ram", plots=True, patience=0, scale=0.25, verbose=True,
                    **dict(network.recipe))
    (run / "weights" / "done").write_text("training finished\n")
    return run / "weights" / "best.pt"


def train(data_yaml: Path, out_dir: Path, epochs: int = 20, batch: int = 16, seed: int = 0,
          imgsz: int = TRAIN_IMGSZ, fraction: float = 1.0) -> Path:
    """Train (or resume) the tier network with Ultralytics' default recipe; returns best.pt."""
    _ultralytics_trainer()
    from ultralytics import YOLO

    run = Path(out_dir) / "base"
    last = run / "weights" / "last.pt"
    if last.exists() and not (run / "weights" / "done").exists():
        print(f"resuming from {last}")
        YOLO(str(last)).train(resume=True)
    elif not last.exists():
        YOLO(ARCHITECTURE).train(
            data=str(data_yaml), imgsz=imgsz, epochs=epochs, batch=batch, workers=2, device="cpu",
            project=str(Path(out_dir).resolve()), name="base", exist_ok=True, seed=seed, deterministic=False,
            cache="ram", plots=True, fraction=fraction, patience=0, verbose=True)
    (run / "weights" / "done").write_text("training finished\n")
    return run / "weights" / "best.pt"


def export_tiers(weights: Path | dict[str, Path] | None, out_dir: Path,
                 inputs: dict[str, tuple[int, int]] = TIER_INPUTS) -> dict[str, Path]:
    """Export trained weights once per tier input size to `out_dir/<tier>.onnx` (names in metadata): one checkpoint
    for every tier, one per tier (tier -> checkpoint), or None: the embedded tiers' (EMBEDDED_WEIGHTS)."""
    _offline_ultralytics()
    from ultralytics import YOLO

    if weights is None:
        weights = {tier: checkpoint for tier, (_, checkpoint) in EMBEDDED_WEIGHTS.items()}
    per_tier = weights if isinstance(weights, dict) else dict.fromkeys(inputs, weights)
    missing = [tier for tier in inputs if not Path(per_tier.get(tier, "")).is_file()]
    if missing:
        raise AdaptivePerceptionError(f"no checkpoint for tier(s) {', '.join(missing)}: "
                                      + ", ".join(f"{t} '{per_tier.get(t)}'" for t in missing)
                                      + "; train them with `adaptive-perception models train-tiers --network ...`")
    # resolved: export_onnx works in a temporary directory
    return {tier: export_onnx(YOLO(str(Path(per_tier[tier]).resolve())), size, Path(out_dir) / f"{tier}.onnx")
            for tier, size in inputs.items()}


def _coco_evaluated(gt: dict, detections: list[dict], image_ids: list[int] | None = None,
                    area_ranges: dict[str, tuple[float, float]] | None = None):
    """pycocotools' COCOeval of `detections` (all non-empty) on `gt`, evaluated and accumulated, over `image_ids`
    (default: every image) and, when given, these named area ranges instead of COCO's."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(detections), "bbox")
        if image_ids is not None:
            evaluator.params.imgIds = image_ids
        if area_ranges is not None:
            evaluator.params.areaRng = [list(r) for r in area_ranges.values()]
            evaluator.params.areaRngLbl = list(area_ranges)
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator


def _coco_eval(gt: dict, detections: list[dict], image_ids: list[int]) -> tuple[float, float]:
    """(mAP50-95, mAP50) in percent over `image_ids` with pycocotools."""
    import contextlib
    import io

    if not image_ids:
        return float("nan"), float("nan")
    chosen = [d for d in detections if d["image_id"] in set(image_ids)]
    if not chosen:
        return 0.0, 0.0
    evaluator = _coco_evaluated(gt, chosen, image_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.summarize()
    return float(evaluator.stats[0] * 100), float(evaluator.stats[1] * 100)


# visible box side in px (sqrt of the box area): COCO's own bands stop at "large" (> 96 px), but a robot's near
# objects reach a third of the frame, and the tier networks learn sizes from crops (crops.py), so report above 128 too
SIZE_BANDS = {"side_lt_32": (0, 32), "side_32_64": (32, 64), "side_64_128": (64, 128), "side_ge_128": (128, 1e5)}


def size_band_map50(gt: dict, detections: list[dict]) -> dict[str, float]:
    """mAP50 (percent) per SIZE_BANDS band over every image: COCOeval with those area ranges (a detection outside a
    band's range counts there only when it matches an object inside it, as for COCO's small / medium / large)."""
    if not detections:
        return {band: 0.0 for band in SIZE_BANDS}
    evaluator = _coco_evaluated(gt, detections, area_ranges={band: (low ** 2, high ** 2)
                                                            for band, (low, high) in SIZE_BANDS.items()})
    precision = evaluator.eval["precision"][0, :, :, :, -1]  # IoU 0.5, recall points, classes, bands, 100 dets
    out = {}
    for a, band in enumerate(SIZE_BANDS):
        valid = precision[:, :, a][precision[:, :, a] > -1]
        out[band] = float(valid.mean() * 100) if valid.size else float("nan")
    return out


def detect_split(model: Path, image_dir: Path, gt: dict, conf: float = 0.001, progress: bool = True) -> list[dict]:
    """COCO-format detections of one model over every image of a ground-truth file."""
    import cv2
    
    from adaptive_perception.detector import DetectorTier

    detector = DetectorTier(model, ("CPUExecutionProvider",), conf_threshold=conf, iou_threshold=0.7)
    results = []
    for image in progress_bar(gt["images"], desc=f"detect {model.stem}", unit="frame", enabled=progress):
        rgb = cv2.cvtColor(cv2.imread(str(image_dir / image["file_name"])), cv2.COLOR_BGR2RGB)
        found = detector.detect(rgb)
        for (x0, y0, x1, y1), score, cls in zip(found.boxes.tolist(), found.scores.tolist(), found.class_ids.tolist()):
            results.append({"image_id": image["id"], "category_id": int(cls), "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "score": float(score)})
    return results


def measure_latency(models: dict[str, Path], frames: list[np.ndarray], repeats: int = 3) -> dict[str, dict[str, float]]:
    """detect() latency per tier (ms, p50/p95), tiers interleaved frame by frame so load hits all alike."""
    from adaptive_perception.detector import DetectorTier

    detectors = {tier: DetectorTier(path, ("CPUExecutionProvider",)) for tier, path in models.items()}
    for detector in detectors.values():
        detector.warmup(3)
    times: dict[str, list[float]] = {tier: [] for tier in models}
    for _ in range(repeats):
        for frame in frames:
            for tier, detector in detectors.items():
                start = time.perf_counter()
                detector.detect(frame)
                times[tier].append((time.perf_counter() - start) * 1e3)
    return {tier: {"p50_ms": float(np.percentile(t, 50)), "p95_ms": float(np.percentile(t, 95))}
            for tier, t in times.items()}


def _split(benchmark_dir: Path, split: str, latency_frames: int) -> tuple[dict, Path, list[np.ndarray]]:
    """A split's COCO ground truth, its image folder and `latency_frames` of its images spread over it (RGB)."""
    import cv2

    gt = json.loads((Path(benchmark_dir) / "coco" / f"{split}.json").read_text())
    image_dir = Path(benchmark_dir) / "images" / split
    frames = [cv2.cvtColor(cv2.imread(str(image_dir / im["file_name"])), cv2.COLOR_BGR2RGB)
              for im in gt["images"][:: max(len(gt["images"]) // latency_frames, 1)][:latency_frames]]
    return gt, image_dir, frames


def evaluate(models: dict[str, Path], benchmark_dir: Path, manifest: Path, report: Path,
             latency_frames: int = 60) -> dict:
    """mAP (all / sparse / moderate / dense) and latency per tier on the frozen test split -> JSON report."""
    from adaptive_perception.scenes.benchmark import check_against

    check_against(benchmark_dir, manifest)
    gt, image_dir, frames = _split(benchmark_dir, "test", latency_frames)
    by_regime = {regime: [im["id"] for im in gt["images"] if im["regime"] == regime]
                 for regime in ("sparse", "moderate", "dense")}
    latency = measure_latency(models, frames)
    result = {"benchmark_manifest": str(manifest), "test_frames": len(gt["images"]),
              "regime_frames": {k: len(v) for k, v in by_regime.items()},
              "device": f"onnxruntime CPU ({os.cpu_count()} cores), batch 1", "tiers": {}}
    for tier, path in models.items():
        detections = detect_split(path, image_dir, gt)
        row = {"input_hw": list(TIER_INPUTS.get(tier, ())), "file_mb": round(Path(path).stat().st_size / 2**20, 2),
               "latency_p50_ms": latency[tier]["p50_ms"], "latency_p95_ms": latency[tier]["p95_ms"]}
        for name, ids in [("all", [im["id"] for im in gt["images"]]), *by_regime.items()]:
            row[f"map50_95_{name}"], row[f"map50_{name}"] = _coco_eval(gt, detections, ids)
        row["map50_by_size"] = size_band_map50(gt, detections)
        result["tiers"][tier] = row
    if set(result["tiers"]) == {"nano", "small", "large"}:
        result["bars"] = tier_bars(result["tiers"])
    report = Path(report)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(result, indent=2))
    return result


# issue 11's bars on the frozen test split of the generator version in use (mAP in percent points)
LARGE_MIN_MAP = 35.0
TIER_STEP_MAP = 3.0  # small >= nano + 3 and large >= small + 3 (mAP50-95)
SPARSE_NANO_GAP_MAP50 = 3.0  # on sparse frames nano within 3 mAP50 of large
DENSE_LARGE_LEAD_MAP50 = 10.0  # on dense frames large ahead of nano by >= 10 mAP50
LATENCY_RATIO = 4.5  # large / nano p50 in the same run (Ultralytics' published CPU ratio for yolov8l / yolov8n)
FILES_MAX_MB = 80.0


def tier_bars(tiers: dict[str, dict]) -> dict[str, dict]:
    """Each bar's measured value and whether it is met, from the per-tier rows of a report."""
    nano, small, large = tiers["nano"], tiers["small"], tiers["large"]
    at_least, at_most = float.__ge__, float.__le__
    checks = {  # name: (measured value, comparison, bound)
        "large_map50_95_ge_35": (large["map50_95_all"], at_least, LARGE_MIN_MAP),
        "small_ge_nano_plus_3": (small["map50_95_all"] - nano["map50_95_all"], at_least, TIER_STEP_MAP),
        "large_ge_small_plus_3": (large["map50_95_all"] - small["map50_95_all"], at_least, TIER_STEP_MAP),
        "sparse_nano_within_3_map50_of_large": (large["map50_sparse"] - nano["map50_sparse"], at_most,
                                                SPARSE_NANO_GAP_MAP50),
        "dense_large_ahead_of_nano_by_10_map50": (large["map50_dense"] - nano["map50_dense"], at_least,
                                                  DENSE_LARGE_LEAD_MAP50),
        "latency_large_over_nano_ge_4_5": (large["latency_p50_ms"] / nano["latency_p50_ms"], at_least, LATENCY_RATIO),
        "files_le_80_mb": (sum(t["file_mb"] for t in tiers.values()), at_most, FILES_MAX_MB),
    }
    return {name: {"value": round(float(value), 2), "met": bool(compare(float(value), bound))}
            for name, (value, compare, bound) in checks.items()}


def _band_label(band: str) -> str:
    low, high = SIZE_BANDS[band]
    return f"< {high:g} px" if low == 0 else f">= {low:g} px" if high >= 1e5 else f"{low:g}-{high:g} px"


def report_table(report: dict) -> str:
    """Markdown table of a tiers report."""
    lines = ["| tier | input (HxW) | mAP50-95 all | mAP50 all | mAP50 sparse | mAP50 moderate | mAP50 dense "
             "| mAP50-95 dense | latency p50 / p95 (ms) | file (MB) |", "|" + "---|" * 10]
    for tier, row in report["tiers"].items():
        lines.append(f"| {tier} | {row['input_hw'][0]}x{row['input_hw'][1]} | {row['map50_95_all']:.1f} | "
                     f"{row['map50_all']:.1f} | {row['map50_sparse']:.1f} | {row['map50_moderate']:.1f} | "
                     f"{row['map50_dense']:.1f} | {row['map50_95_dense']:.1f} | "
                     f"{row['latency_p50_ms']:.1f} / {row['latency_p95_ms']:.1f} | {row['file_mb']:.1f} |")
    if all("map50_by_size" in row for row in report["tiers"].values()):
        lines += ["", "| tier | " + " | ".join(f"mAP50, objects {_band_label(band)}" for band in SIZE_BANDS) + " |",
                  "|" + "---|" * (len(SIZE_BANDS) + 1)]
        for tier, row in report["tiers"].items():
            lines.append(f"| {tier} | " + " | ".join(f"{row['map50_by_size'][band]:.1f}" for band in SIZE_BANDS) + " |")
    if report.get("bars"):
        lines.append("\nbars: " + ", ".join(f"{name} {bar['value']:g} {'met' if bar['met'] else 'NOT MET'}"
                                          for name, bar in report["bars"].items()))
    return "\n".join(lines)


def pilot(weights: Path, benchmark_dir: Path, report: Path) -> dict:
    """Early-checkpoint check on the validation split: does quality rise nano < small < large?"""
    import tempfile

    gt = json.loads((Path(benchmark_dir) / "coco" / "val.json").read_text())
    image_dir = Path(benchmark_dir) / "images" / "val"
    ids = [im["id"] for im in gt["images"]]
    result = {"weights": str(weights), "split": "val", "frames": len(ids), "tiers": {}}
    with tempfile.TemporaryDirectory() as tmp:
        snapshot = Path(tmp) / "checkpoint.pt"  # training may rewrite the checkpoint meanwhile
        shutil.copy(weights, snapshot)
        for tier, path in export_tiers(snapshot, Path(tmp)).items():
            detections = detect_split(path, image_dir, gt)
            map50_95, map50 = _coco_eval(gt, detections, ids)
            result["tiers"][tier] = {"input_hw": list(TIER_INPUTS[tier]), "map50_95": map50_95, "map50": map50}
    Path(report).parent.mkdir(parents=True, exist_ok=True)
    Path(report).write_text(json.dumps(result, indent=2))
    return result


def _parameters(model: Path) -> float:
    """Millions of weights in an ONNX file (its initializers)."""
    import onnx

    return sum(int(np.prod(t.dims)) for t in onnx.load(str(model)).graph.initializer) / 1e6


def compare_candidates(candidates: dict[str, tuple[Path, tuple[int, int]]], benchmark_dir: Path, report: Path,
                       split: str = "val", latency_frames: int = 40) -> dict:
    """Tier candidates (name -> (Ultralytics weights, input HxW)) on one split, for choosing a tier by accuracy for
    its cost before the test split is touched: mAP50-95 / mAP50 over all, sparse and dense frames, mAP50 by object
    size (SIZE_BANDS), and detect()
    latency p50 with the candidates interleaved frame by frame in one run (so the ratios compare)."""
    import tempfile

    _offline_ultralytics()
    from ultralytics import YOLO

    gt, image_dir, frames = _split(benchmark_dir, split, latency_frames)
    subsets = {"all": [im["id"] for im in gt["images"]],
               **{r: [im["id"] for im in gt["images"] if im["regime"] == r] for r in ("sparse", "dense")}}
    result = {"split": split, "frames": len(gt["images"]), "candidates": {}}
    with tempfile.TemporaryDirectory() as tmp:
        models = {name: export_onnx(YOLO(str(Path(weights).resolve())), size, Path(tmp) / f"{name}.onnx")
                  for name, (weights, size) in candidates.items()}
        latency = measure_latency(models, frames)
        for name, model in models.items():
            detections = detect_split(model, image_dir, gt)
            row = {"weights": str(candidates[name][0]), "input_hw": list(candidates[name][1]),
                   "latency_p50_ms": latency[name]["p50_ms"]}
            for subset, ids in subsets.items():
                row[f"map50_95_{subset}"], row[f"map50_{subset}"] = _coco_eval(gt, detections, ids)
            row["map50_by_size"] = size_band_map50(gt, detections)
            result["candidates"][name] = row
    Path(report).parent.mkdir(parents=True, exist_ok=True)
    Path(report).write_text(json.dumps(result, indent=2))
    return result


def write_model_card(report: dict, manifest: Path, out: Path,
                     sources: dict[str, tuple[str | None, Path]] | None = None) -> Path:
    """MODEL_CARD.md beside the embedded tiers: what they are, what they were trained on, how good and fast.
    `sources`: tier -> (tier-family-2 network, its checkpoint with the training arguments inside), default
    EMBEDDED_WEIGHTS; (None, run folder) for every tier: the family-1 network, its Ultralytics run (args.yaml)."""
    import ultralytics

    sources = sources or EMBEDDED_WEIGHTS
    frozen = read_json(manifest, "a frozen benchmark manifest", ("content_hash", "generator_version", "classes",
                                                                 "config"))
    folder = Path(out).parent
    sizes = ", ".join(f"{t} {h}x{w}" for t, (h, w) in TIER_INPUTS.items())
    if all(network is None for network, _ in sources.values()):
        run = next(iter(sources.values()))[1]
        args = {}
        if (Path(run) / "args.yaml").exists():
            import yaml

            args = yaml.safe_load((Path(run) / "args.yaml").read_text())
        million = _parameters(folder / "large.onnx") if (folder / "large.onnx").exists() else 3.0
        what = f"""One YOLOv8n-architecture network ({ARCHITECTURE}, 5 classes, about {million:.1f} M parameters),
trained from scratch by this project with Ultralytics {ultralytics.__version__} on whole frames at imgsz
{args.get("imgsz", TRAIN_IMGSZ)}, exported to ONNX three times at different input sizes (height x width): {sizes}."""
        recipe = f"""Ultralytics defaults (SGD/auto optimiser, mosaic, HSV and scale augmentation) at
imgsz {args.get("imgsz", TRAIN_IMGSZ)}, batch {args.get("batch", "?")}, {args.get("epochs", "?")} epochs, seed
{args.get("seed", "?")}, CPU (2 cores). Reproduce: `adaptive-perception models train-tiers` then
`adaptive-perception models export-tiers --weights <run>/weights/best.pt` (needs the `train` extra)."""
    else:
        import torch

        groups: dict[tuple[str, Path], list[str]] = {}
        for tier, (network, checkpoint) in sources.items():
            groups.setdefault((network, Path(checkpoint)), []).append(tier)
        whats, recipes = [], []
        for (network, checkpoint), served in groups.items():
            net = NETWORKS[network]
            args = torch.load(checkpoint, map_location="cpu", weights_only=False).get("train_args", {}) \
                if checkpoint.is_file() else {}
            million = _parameters(folder / f"{served[0]}.onnx") if (folder / f"{served[0]}.onnx").exists() else 0.0
            at = " and ".join(f"{t} ({TIER_INPUTS[t][0]}x{TIER_INPUTS[t][1]})" for t in served)
            start = (f", started from `{net.start}` widened without changing its output (`training/widen.py`)"
                     if net.start and net.width > NETWORKS[net.start].width else
                     f", fine-tuned from `{net.start}`" if net.start else ", trained from scratch")
            whats.append(f"""{at}: `{net.name}`, YOLOv8's architecture at depth {net.depth} and width {net.width}
({million:.1f} M parameters){start}, on {net.crops.size}x{net.crops.size} crops at
{", ".join(f"{x:g}" for x in net.crops.scales)} of the 640x480 frame""")
            recipes.append(f"""`{net.name}`: {args.get("optimizer", "auto")} optimiser at lr0 {args.get("lr0", "?")}, mosaic
{args.get("mosaic", "?")}, batch {args.get("batch", "?")}, {args.get("epochs", "?")} epochs, seed {args.get("seed", "?")},
weights `{checkpoint}` (committed; curve in `training/reports/tiers_v2_curve.png`). Reproduce: `adaptive-perception
models train-tiers --network {net.name} --benchmark build/benchmark-v2 --out build/tiers-v2 --epochs
{args.get("epochs", "?")} --keep training/checkpoints/tiers-v2/{net.name}`""")
        what = f"""Networks of YOLOv8's architecture (5 classes) trained by this project with Ultralytics
{ultralytics.__version__} on crops of the benchmark's frames, exported to ONNX at each tier's input size (height x
width): {"; ".join(whats)}."""
        recipe = f"""CPU (2 cores), HSV augmentation, scale 0.25 on the crops. {". ".join(recipes)}. Then
`adaptive-perception models export-tiers` and `adaptive-perception models evaluate` (the `train` extra)."""
    text = f"""# Embedded detector tiers (nano, small, large)

**What they are.** {what} The tiers differ in input resolution (dense scenes of small objects need pixels, sparse
scenes of near objects much less) and, where they come from different networks, in width. They detect the benchmark's classes ({", ".join(frozen["classes"])}),
not COCO; for real cameras export the COCO YOLOv8 n/s/l with `adaptive-perception models export` on a
connected machine.

**Training data.** Scene benchmark generator {frozen["generator_version"]}, seed {frozen["config"]["seed"]},
train split {frozen["config"]["sequences"]["train"]} sequences (every {frozen["config"]["train_stride"]}rd frame),
validation {frozen["config"]["sequences"]["val"]} sequences. Frozen manifest `{manifest}`,
test-split content hash `{frozen["content_hash"]["test"][:16]}`.

**Recipe.** {recipe}

**Quality and cost** on the frozen test split ({report["test_frames"]} frames; {report["device"]}),
measured by `adaptive-perception models evaluate` (pycocotools, ignore regions as crowd):

{report_table(report)}
{_near_note(report)}
**Licence.** The weights were produced with Ultralytics (AGPL-3.0) from its YOLOv8 architecture
definition; treat these ONNX files as AGPL-3.0. The project's own code is Apache-2.0, and the runtime
loads the files with onnxruntime only.
"""
    Path(out).write_text(text)
    return Path(out)


def _near_note(report: dict) -> str:
    """The model card's warning when a cheaper tier beats large on the largest objects (empty otherwise)."""
    rows = report["tiers"]
    if not all("map50_by_size" in rows.get(t, {}) for t in ("nano", "small", "large")):
        return ""
    near = {t: rows[t]["map50_by_size"]["side_ge_128"] for t in ("nano", "small", "large")}
    if near["large"] >= max(near["nano"], near["small"]):
        return ""
    return f"""
**Known limitation: near objects.** On objects at least 128 px a side (over a quarter of the frame's height: near the
camera) the large tier scores {near["large"]:.1f} mAP50 against nano's {near["nano"]:.1f} and small's
{near["small"]:.1f}. It finds such objects but names most of them wrongly: the large tier sees the frame at the finest
input size (a network 1.5x wider than nano's and small's, fine-tuned at that scale), where a near object is larger
than what it learned to see as one shape. Routing a
near-object scene to large loses it.
"""


PLATEAU_EPOCHS = 10
PLATEAU_GAIN = 0.5  # mAP50-95 points: less gained over the last PLATEAU_EPOCHS epochs means a plateau


def validation_curve(results_csv: Path) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, validation mAP50-95 in %) from an Ultralytics results.csv."""
    import csv

    with open(results_csv) as handle:
        rows = [{(k or "").strip(): v for k, v in row.items()} for row in csv.DictReader(handle)]
    try:
        epochs = np.array([int(r["epoch"]) for r in rows])
        curve = np.array([100 * float(r["metrics/mAP50-95(B)"]) for r in rows])
    except (KeyError, TypeError, ValueError):
        raise AdaptivePerceptionError(f"'{results_csv}' is not an Ultralytics results.csv: every row needs a whole "
                                      "'epoch' and a number in 'metrics/mAP50-95(B)'") from None
    if not len(rows):
        raise AdaptivePerceptionError(f"'{results_csv}' holds no epoch yet; train at least one epoch first")
    return epochs, curve


def plateau(curve: np.ndarray, epochs: int = PLATEAU_EPOCHS, gain: float = PLATEAU_GAIN) -> dict:
    """Has the curve gained less than `gain` points over its last `epochs` epochs? (best so far, against the best
    `epochs` earlier, so one noisy epoch neither ends nor extends training)."""
    if len(curve) <= epochs:
        return {"reached": False, "epochs": int(len(curve)), "gain_last_epochs": None}
    recent = float(np.max(curve) - np.max(curve[:-epochs]))
    return {"reached": bool(recent < gain), "epochs": int(len(curve)), "gain_last_epochs": recent}


def plot_curves(runs: dict[str, Path], out: Path) -> dict:
    """Validation mAP50-95 per epoch of each network (results.csv per name) as a PNG; returns the plateau checks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    checks = {}
    for name, csv_path in runs.items():
        epochs, curve = validation_curve(csv_path)
        checks[name] = plateau(curve)
        axis.plot(epochs, curve, marker="o", markersize=3, label=f"{name} (best {curve.max():.1f})")
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation mAP50-95 (%), crops at the tiers' scales")
    axis.set_title(f"Tier training; plateau = < {PLATEAU_GAIN} points over {PLATEAU_EPOCHS} epochs")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return checks
