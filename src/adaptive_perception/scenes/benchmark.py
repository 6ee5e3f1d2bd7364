"""Write a scene benchmark: YOLO dataset, COCO ground truth, rosbag2 MCAP bags, contact sheet, manifest."""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import shutil
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from adaptive_perception.errors import AdaptivePerceptionError, read_json
from adaptive_perception.progress import progress
from adaptive_perception.scenes.render import CLASSES
from adaptive_perception.scenes.sequence import (
    FRAME_RATE_HZ,
    HEIGHT,
    WIDTH,
    Drift,
    Frame,
    Regime,
    SequenceSpec,
    render_sequence,
)

# train: the detector tiers' training set; val, test: evaluation; router: the routing policy's training split,
# sequences the tiers never saw (a router trained on the tiers' own training frames learns how good they are on
# memorised images, not on the world). Sequence indices run in this order, so adding a split changes no earlier one.
SPLITS = ("train", "val", "test", "router")
SIZE_BINS = (0, 8, 16, 32, 64, 128, 256, 100000)  # sqrt(visible box area), px
JPEG_QUALITY = 92
STAMP_BASE_NS = 1_700_000_000_000_000_000
BAG_TOPIC = "/camera/image_raw"
SEED_CI = 17  # chosen so that every split holds sparse and dense frames
SEQUENCE_STRIDE_NS = 1_000_000_000_000  # 1000 s between sequences' clocks


class ManifestMismatch(AdaptivePerceptionError):
    """The benchmark on disk is not the frozen one."""


@dataclass(frozen=True)
class BenchmarkConfig:
    """What to generate. Sequences are split by sequence, never by frame."""

    seed: int = 2026
    sequences: tuple[int, int, int, int] = (40, 6, 14, 20)  # train, val, test, router
    frames_per_sequence: int = 150
    train_stride: int = 3  # every n-th train frame goes into the YOLO training set
    val_stride: int = 3
    drift: Drift = Drift.NONE
    bags: str = "eval"  # none | eval (val+test) | all
    version: str = "1.0.0"  # generator version (scenes.sequence.WORLDS); frozen manifests in training/benchmark/

    def specs(self) -> dict[str, list[SequenceSpec]]:
        out, start = {}, 0
        for split, count in zip(SPLITS, self.sequences):
            out[split] = [SequenceSpec(self.seed, start + i, self.frames_per_sequence, drift=self.drift,
                                       version=self.version) for i in range(count)]
            start += count
        return out


PRESETS = {
    "benchmark": BenchmarkConfig(),
    "tiny": BenchmarkConfig(seed=7, sequences=(2, 1, 1, 1), frames_per_sequence=30, train_stride=1, val_stride=1, bags="all"),
    # the routing pipeline's CI run: every split holds sparse and dense frames
    "ci": BenchmarkConfig(seed=SEED_CI, sequences=(4, 2, 4, 8), frames_per_sequence=45, train_stride=1, val_stride=1,
                          bags="all"),
}


def _stamp(sequence: int, frame: int) -> int:
    return STAMP_BASE_NS + sequence * SEQUENCE_STRIDE_NS + frame * 1_000_000_000 // FRAME_RATE_HZ


def _as_camera_jpeg(rgb: np.ndarray) -> tuple[bytes, np.ndarray]:
    """JPEG bytes and the decoded pixels: the dataset images, the bags and evaluation all see these."""
    data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1]
    return data.tobytes(), cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def camera_pixels(rgb: np.ndarray) -> np.ndarray:
    """A rendered frame as the benchmark's images and bags deliver it (the JPEG round trip)."""
    return _as_camera_jpeg(rgb)[1]


def _frame_record(frame: Frame, name: str) -> dict:
    return {
        "file": name, "sequence": frame.sequence, "frame": frame.index, "stamp_ns": _stamp(frame.sequence, frame.index),
        "regime": frame.regime.value, "valid_objects": len(frame.valid), "clutter": frame.clutter,
        "objects": [{"id": t.object_id, "class_id": t.class_id, "box": [round(v, 2) for v in t.box],
                     "visible": round(t.visible_fraction, 4), "ignore": t.ignore} for t in frame.truths],
    }


def _thumb_digest(rgb: np.ndarray) -> str:
    """Coarse content digest of an RGB frame, robust to last-bit differences between OpenCV builds."""
    small = cv2.resize(rgb, (16, 12), interpolation=cv2.INTER_AREA)
    return hashlib.sha256((small // 32).astype(np.uint8).tobytes()).hexdigest()[:16]


def _render_one(job: tuple[SequenceSpec, str, int, str, bool]) -> list[dict]:
    """Render a sequence, write its images (every `stride`-th frame) and optional bag; return frame records."""
    spec, split, stride, out, write_bag = job
    root = Path(out)
    records, bag_frames = [], []
    for frame in render_sequence(spec):
        jpeg, pixels = _as_camera_jpeg(frame.rgb)
        name = f"seq{spec.index:03d}_{frame.index:04d}.jpg"
        record = _frame_record(frame, name)
        record["digest"] = _thumb_digest(pixels)
        if frame.index % stride == 0:
            (root / "images" / split / name).write_bytes(jpeg)
            _write_yolo_label(root / "labels" / split / name.replace(".jpg", ".txt"), frame)
            record["in_dataset"] = True
        if write_bag:
            bag_frames.append((record["stamp_ns"], pixels))
        records.append(record)
    if write_bag:
        _write_bag(root / "bags" / split / f"seq{spec.index:03d}", bag_frames, records)
    return records


def _write_bag(bag: Path, frames: list[tuple[int, np.ndarray]], records: list[dict]) -> None:
    """The sequence's camera frames as a rosbag2 MCAP, with ground_truth.json (records by stamp) beside it."""
    from adaptive_perception.bag import write_image_bag

    if bag.exists():
        shutil.rmtree(bag)
    write_image_bag(bag, frames, BAG_TOPIC, "camera")
    (bag / "ground_truth.json").write_text(json.dumps(
        {"classes": list(CLASSES), "frames": {str(r["stamp_ns"]): r for r in records}}))


def sequence_bag(spec: SequenceSpec, bag: Path, desc: str = "") -> list[dict]:
    """Render one sequence to a bag exactly as `generate` writes its bags (same pixels, stamps and ground truth)."""
    records, frames = [], []
    for frame in progress(render_sequence(spec), total=spec.frames, desc=desc or f"rendering seq{spec.index:03d}",
                      unit="frame"):
        _, pixels = _as_camera_jpeg(frame.rgb)
        records.append(_frame_record(frame, f"seq{spec.index:03d}_{frame.index:04d}.jpg"))
        frames.append((records[-1]["stamp_ns"], pixels))
    _write_bag(bag, frames, records)
    return records


def _write_yolo_label(path: Path, frame: Frame) -> None:
    lines = []
    for truth in frame.valid:  # ignore regions are not training targets
        x0, y0, x1, y1 = truth.box
        lines.append(f"{truth.class_id} {(x0 + x1) / 2 / WIDTH:.6f} {(y0 + y1) / 2 / HEIGHT:.6f} "
                     f"{(x1 - x0) / WIDTH:.6f} {(y1 - y0) / HEIGHT:.6f}")
    path.write_text("\n".join(lines) + ("\n" if lines else ""))


def coco_ground_truth(records: Iterable[dict], only_dataset: bool = False) -> dict:
    """COCO detection ground truth; ignore regions become iscrowd=1 (the evaluator ignores matches to them)."""
    images, annotations = [], []
    for image_id, record in enumerate(r for r in records if r.get("in_dataset") or not only_dataset):
        images.append({"id": image_id, "file_name": record["file"], "width": WIDTH, "height": HEIGHT,
                       "regime": record["regime"], "sequence": record["sequence"], "frame": record["frame"],
                       "stamp_ns": record["stamp_ns"]})
        for obj in record["objects"]:
            x0, y0, x1, y1 = obj["box"]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": obj["class_id"],
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                                "iscrowd": int(obj["ignore"])})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": i, "name": n} for i, n in enumerate(CLASSES)]}


def split_summary(records: list[dict]) -> dict:
    """Regime mix and per-regime object-size histograms of a split."""
    mix = Counter(r["regime"] for r in records)
    histograms = {}
    for regime in Regime:
        sizes = [np.sqrt((o["box"][2] - o["box"][0]) * (o["box"][3] - o["box"][1]))
                 for r in records if r["regime"] == regime.value for o in r["objects"] if not o["ignore"]]
        histograms[regime.value] = np.histogram(sizes, bins=SIZE_BINS)[0].tolist()
    total = max(len(records), 1)
    return {"frames": len(records), "regime_mix": {k.value: round(mix[k.value] / total, 4) for k in Regime},
            "size_bins_px": list(SIZE_BINS), "size_histograms": histograms,
            "objects": sum(len([o for o in r["objects"] if not o["ignore"]]) for r in records),
            "ignore_regions": sum(len([o for o in r["objects"] if o["ignore"]]) for r in records)}


def content_hash(records: list[dict]) -> str:
    """Hash of the ground truth and coarse image digests of a split (what the evaluation checks)."""
    digest = hashlib.sha256()
    for record in sorted(records, key=lambda r: (r["sequence"], r["frame"])):
        digest.update(json.dumps({k: record[k] for k in ("file", "regime", "objects", "digest")}, sort_keys=True).encode())
    return digest.hexdigest()


def fresh_dataset_folders(root: Path, split: str) -> None:
    """Empty (or create) a YOLO dataset's images/<split> and labels/<split> under `root`."""
    for kind in ("images", "labels"):
        folder = Path(root) / kind / split
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)


def generate(config: BenchmarkConfig, out: Path, workers: int = 2) -> dict:
    """Generate everything under `out`; returns the manifest (also written to out/manifest.json)."""
    out = Path(out)
    # gone until the end: a run interrupted after emptying the image folders leaves no benchmark that `check` passes
    for written_last in ("manifest.json", "frames.json"):
        (out / written_last).unlink(missing_ok=True)
    for split in SPLITS:
        fresh_dataset_folders(out, split)
    (out / "coco").mkdir(parents=True, exist_ok=True)
    specs = config.specs()
    strides = {"train": config.train_stride, "val": config.val_stride, "test": 1, "router": 1}
    bag_splits = {"none": (), "eval": ("val", "test"), "all": SPLITS}[config.bags]
    jobs = [(spec, split, strides[split], str(out), split in bag_splits) for split in SPLITS for spec in specs[split]]
    records: dict[str, list[dict]] = {split: [] for split in SPLITS}
    with multiprocessing.get_context("spawn").Pool(max(1, workers)) as pool:
        for job, result in zip(jobs, progress(pool.imap(_render_one, jobs), total=len(jobs), desc="sequences", unit="seq")):
            records[job[1]].extend(result)
    for split in SPLITS:
        (out / "coco" / f"{split}.json").write_text(json.dumps(coco_ground_truth(records[split], only_dataset=True)))
    (out / "frames.json").write_text(json.dumps(records))
    (out / "data.yaml").write_text(
        f"path: {out.resolve()}\ntrain: images/train\nval: images/val\ntest: images/test\n"
        f"names:\n" + "".join(f"  {i}: {n}\n" for i, n in enumerate(CLASSES)))
    manifest = {
        "generator_version": config.version,
        "config": {"seed": config.seed, "sequences": dict(zip(SPLITS, config.sequences)),
                   "frames_per_sequence": config.frames_per_sequence, "train_stride": config.train_stride,
                   "val_stride": config.val_stride, "drift": config.drift.value},
        "frame": {"width": WIDTH, "height": HEIGHT, "rate_hz": FRAME_RATE_HZ, "jpeg_quality": JPEG_QUALITY},
        "classes": list(CLASSES),
        "sequence_ids": {split: [s.index for s in specs[split]] for split in SPLITS},
        "splits": {split: split_summary(records[split]) for split in SPLITS},
        "content_hash": {split: content_hash(records[split]) for split in SPLITS},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    contact_sheet(records["test"], out / "images" / "test", out / "contact_sheet.png")
    return manifest


FROZEN_OPENCV = "5.0.0"  # the OpenCV that rendered the frozen manifests (pinned in setup.py's `scenes` extra)


def check_against(out: Path, frozen_manifest: Path, splits: Iterable[str] = ("test",)) -> None:
    """Raise ManifestMismatch unless the benchmark under `out` has the frozen content hash per split and every
    dataset image of those splits is on disk with the content its record names (the coarse digest of its pixels)."""
    frozen = read_json(frozen_manifest, "a frozen benchmark manifest", ("content_hash", "generator_version"))
    records_path = Path(out) / "frames.json"
    if not records_path.exists():
        raise ManifestMismatch(f"'{out}' holds no generated benchmark (frames.json missing); "
                               f"run `adaptive-perception scenes generate --generator-version "
                               f"{frozen['generator_version']} --out {out}`")
    records = json.loads(records_path.read_text())
    for split in splits:
        got = content_hash(records[split])
        if got != frozen["content_hash"][split]:
            raise ManifestMismatch(
                f"the {split} split under '{out}' has content hash {got[:12]}..., but the frozen manifest "
                f"'{frozen_manifest}' says {frozen['content_hash'][split][:12]}... (generator "
                f"{frozen['generator_version']}); regenerate with the frozen settings instead of changing the benchmark"
                + ("" if cv2.__version__ == FROZEN_OPENCV else f", with OpenCV {FROZEN_OPENCV} (this machine has "
                   f"{cv2.__version__}; its drawing and JPEG codec change a few frames; `make setup` installs "
                   f"{FROZEN_OPENCV})"))
        bad = [record["file"] for record in records[split] if record.get("in_dataset")
               and not _image_matches(Path(out) / "images" / split / record["file"], record["digest"])]
        if bad:
            raise ManifestMismatch(
                f"{len(bad)} of the {split} split's dataset images under '{out}' are missing or differ from their "
                f"records (first: {bad[0]}); regenerate with `adaptive-perception scenes generate --generator-version "
                f"{frozen['generator_version']} --out {out}`")


def _image_matches(path: Path, digest: str) -> bool:
    pixels = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
    return pixels is not None and \
        _thumb_digest(cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)) == digest


def contact_sheet(records: list[dict], image_dir: Path, path: Path, per_regime: int = 4) -> None:
    """A PNG grid of test frames per regime with ground truth drawn (green: object, red: ignore region)."""
    tiles = []
    for regime in Regime:
        chosen = [r for r in records if r["regime"] == regime.value]
        step = max(len(chosen) // per_regime, 1)
        row = []
        for record in chosen[::step][:per_regime]:
            image = cv2.imread(str(image_dir / record["file"]))
            for obj in record["objects"]:
                x0, y0, x1, y1 = (int(round(v)) for v in obj["box"])
                cv2.rectangle(image, (x0, y0), (x1, y1), (0, 0, 255) if obj["ignore"] else (0, 220, 0), 2)
            cv2.putText(image, f"{regime.value}: {record['valid_objects']} objects", (10, 30),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.9, (255, 255, 255), 2, cv2.LINE_AA)
            row.append(cv2.resize(image, (WIDTH // 2, HEIGHT // 2), interpolation=cv2.INTER_AREA))
        row += [np.zeros((HEIGHT // 2, WIDTH // 2, 3), np.uint8)] * (per_regime - len(row))
        tiles.append(np.hstack(row))
    cv2.imwrite(str(path), np.vstack(tiles))


def with_drift(config: BenchmarkConfig, drift: Drift) -> BenchmarkConfig:
    """The same benchmark settings under a drift preset (a different seed, so no frame is shared)."""
    return replace(config, drift=drift, seed=config.seed + 1000 * (list(Drift).index(drift)))
