"""Stage 1, profile: every frame through the node's decode and feature code and all three tiers.

Per frame it stores the 1024 image features, the frame's haze veil (`drift.veil`), each tier's detections
(score over PROFILE_CONF, enough for COCO mAP; the node publishes those over its conf_threshold) and each tier's
measured latency (with the node's thresholds: preprocess, inference, decode and NMS of what it publishes), plus
the ground truth: `sidecar` (the benchmark's records or a bag's ground_truth.json), or `reference`
(the large tier's or a teacher ONNX's published detections, for recordings without labels).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from adaptive_perception.bag import bag_image_rgb, camera_topics, image_topics, read_images, said_left_out
from adaptive_perception.config import NodeConfig, resolve_model
from adaptive_perception.detector import TIERS, DetectorTier
from adaptive_perception.drift import veil
from adaptive_perception.errors import AdaptivePerceptionError, ImageDecodeError, read_json
from adaptive_perception.features import image_features
from adaptive_perception.image import decode_compressed
from adaptive_perception.progress import counted, progress
from adaptive_perception.scenes.sequence import Regime

PROFILE_CONF = 0.01  # detections kept for mAP
PUBLISH_CONF = NodeConfig().conf_threshold  # what the node publishes: context features and per-frame F1 use these
MAX_DETECTIONS = 100
TRUTH_MODES = ("sidecar", "reference")


@dataclass
class Profile:
    """One split's profile. Frames are ordered by (sequence, frame)."""

    features: np.ndarray  # (N, 1024) float32
    latency_ms: np.ndarray  # (N, 3) float32, measured detect() time per tier
    sequence: np.ndarray  # (N,) int64
    stamp_ns: np.ndarray  # (N,) int64
    regime: np.ndarray  # (N,) int64 index into Regime (from the truth's valid object count)
    detections: np.ndarray  # (M, 8) float32: frame, tier, x0, y0, x1, y1, score, class
    truth: np.ndarray  # (G, 7) float32: frame, x0, y0, x1, y1, class, ignore
    meta: dict  # truth, models, profile_conf, device, frame_hw ([height, width] of every frame)
    veil: np.ndarray | None = None  # (N,) float32 `drift.veil` per frame; None in profiles written before 2026-12-04

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, features=self.features, latency_ms=self.latency_ms, sequence=self.sequence,
                            stamp_ns=self.stamp_ns, regime=self.regime, detections=self.detections, truth=self.truth,
                            meta=np.array(json.dumps(self.meta)),
                            **({"veil": self.veil} if self.veil is not None else {}))
        return path

    @staticmethod
    def meta_of(path: Path) -> dict:
        """A saved profile's meta (frame size, models, truth) without loading its arrays."""
        with np.load(path) as data:
            return json.loads(str(data["meta"]))

    @staticmethod
    def load(path: Path) -> "Profile":
        if not Path(path).is_file():
            raise AdaptivePerceptionError(f"profile '{path}' does not exist; run `adaptive-perception train profile "
                                          f"--work {Path(path).parent}` first (or `train all`)")
        data = np.load(path)
        meta = json.loads(str(data["meta"]))
        if "frame_hw" not in meta:
            raise AdaptivePerceptionError(f"profile '{path}' was written before profiles recorded the frame size (the "
                                          "router's context measures box sizes against it); rerun `adaptive-perception "
                                          f"train profile --work {Path(path).parent} --force`")
        return Profile(**{k: data[k] for k in ("features", "latency_ms", "sequence", "stamp_ns", "regime", "detections",
                                                "truth")}, meta=meta,
                       veil=data["veil"] if "veil" in data.files else None)

    def tier_detections(self, tier: int, min_score: float = 0.0) -> list[np.ndarray]:
        """Per frame, that tier's (K, 6) boxes x0 y0 x1 y1 score class with score > min_score (as the node publishes
        those over its conf_threshold)."""
        rows = self.detections[(self.detections[:, 1] == tier) & (self.detections[:, 6] > min_score)]
        return _split_by_frame(rows[:, [0, 2, 3, 4, 5, 6, 7]], len(self))

    def frame_truth(self) -> list[np.ndarray]:
        """Per frame, (G, 6) ground truth x0 y0 x1 y1 class ignore."""
        return _split_by_frame(self.truth, len(self))

    def check_truth(self, name: str) -> None:
        """Refuse a profile whose truth holds no object: every tier scores alike on it, so routing has nothing to learn
        (and mAP is undefined)."""
        if len(self) and not (self.truth[:, 6] == 0).any():
            reference = self.meta.get("truth", "").startswith("reference")
            raise AdaptivePerceptionError(
                f"{name}: the truth ({self.meta.get('truth')}) holds no object in {len(self)} frames, so every tier "
                "scores alike and routing has nothing to learn; " + (
                    "with --truth reference the large tier (or --teacher) must detect the camera's objects at its "
                    "publish threshold: random-weight models, or models of another domain, find nothing"
                    if reference else "the recording's ground truth must hold objects"))

    def sequences(self) -> list[np.ndarray]:
        """Frame indices of each sequence, in order."""
        return [np.flatnonzero(self.sequence == s) for s in np.unique(self.sequence)]


def _split_by_frame(rows: np.ndarray, frames: int) -> list[np.ndarray]:
    order = np.argsort(rows[:, 0], kind="stable")
    rows = rows[order]
    bounds = np.searchsorted(rows[:, 0], np.arange(frames + 1))
    return [rows[bounds[i]:bounds[i + 1], 1:] for i in range(frames)]


# ---- sources: (rgb, sequence id, stamp_ns, truth objects or None) in order --------------------------------------
def dataset_records(benchmark: Path, split: str) -> list[dict]:
    """The records of a split's dataset frames (those with an image file), by (sequence, frame)."""
    frames_path = Path(benchmark) / "frames.json"
    if not frames_path.is_file():
        raise AdaptivePerceptionError(f"'{benchmark}' holds no generated benchmark (frames.json missing); run "
                                      f"`adaptive-perception scenes generate --out {benchmark}`")
    splits = read_json(frames_path, "the benchmark's frame index, written by `adaptive-perception scenes generate` "
                       "(regenerate it)")
    if split not in splits:
        raise AdaptivePerceptionError(f"'{benchmark}' has no {split} split (generated before it existed); regenerate it "
                                      f"with `adaptive-perception scenes generate --out {benchmark}` (the other splits "
                                      "come out identical)")
    records = [r for r in splits[split] if r.get("in_dataset")]
    return sorted(records, key=lambda r: (r["sequence"], r["frame"]))


def dataset_images(benchmark: Path, split: str, records: list[dict]) -> Iterator[tuple[dict, np.ndarray]]:
    """Each record with its image's RGB pixels, decoded by the node's own decoder (the benchmark's JPEG as a
    CompressedImage's payload)."""
    for record in records:
        path = Path(benchmark) / "images" / split / record["file"]
        try:
            rgb = decode_compressed(path.read_bytes(), "jpeg")
        except (OSError, ImageDecodeError) as exc:
            raise AdaptivePerceptionError(f"cannot read image {record['file']} of {benchmark} ({exc}); regenerate it "
                                          f"with `adaptive-perception scenes generate --out {benchmark}`") from None
        yield record, rgb


def benchmark_frames(benchmark: Path, split: str, records: list[dict]
                     ) -> Iterator[tuple[np.ndarray, int, int, list[dict] | None]]:
    """The generated dataset's images of a split with their records' truth (records from dataset_records)."""
    for record, rgb in dataset_images(benchmark, split, records):
        yield rgb, record["sequence"], record["stamp_ns"], record["objects"]


def _cameras(bag: Path, topic: str | None, say: bool = False) -> list[str]:
    """The camera topics of a bag that training reads: `topic`, or every camera (`bag.camera_topics`)."""
    if topic:
        return [topic]
    cameras, left_out = camera_topics(bag, image_topics(bag))
    if left_out and say:  # said, so a depth or copied stream that should have been read is noticed
        print(f"bag '{bag}': reading {', '.join(cameras)}; left out {said_left_out(left_out)}")
    return cameras


def frame_sizes(bags: list[Path], topic: str | None = None) -> list[tuple[Path, str, tuple[int, int]]]:
    """(bag, camera, (height, width) of its first frame the node's decoder takes) for each bag and camera training
    reads (a camera without such a frame is left out)."""
    sizes = []
    for bag in bags:
        for camera in _cameras(bag, topic):
            for image in read_images(bag, [camera]):
                try:
                    sizes.append((bag, camera, bag_image_rgb(image).shape[:2]))
                    break
                except ImageDecodeError:
                    continue
    return sizes


def bag_frames(bags: list[Path], topic: str | None, need_sidecar: bool, read: list[dict] | None = None
               ) -> Iterator[tuple[np.ndarray, int, int, list[dict] | None]]:
    """Every camera image of each bag through the node's decoder, with the sidecar truth: one sequence per bag and
    camera topic (`topic`, or its cameras: `bag.camera_topics`), so a previous frame is always the
    same camera's. `read`, when given, gets one entry per bag and camera read to its end: the frames used and the
    frames left out (for the MLflow run that names what it trained on)."""
    sequence = 0
    for bag in bags:
        truth = None
        sidecar = Path(bag) / "ground_truth.json"
        if need_sidecar:
            if not sidecar.is_file():
                raise AdaptivePerceptionError(f"bag '{bag}' has no ground_truth.json sidecar; use --truth reference "
                                              "(score tiers against the large tier) for recordings without labels")
            truth = json.loads(sidecar.read_text())["frames"]
        for camera in _cameras(bag, topic, say=True):
            used, skipped, first_skipped = 0, 0, ""
            for index, image in enumerate(read_images(bag, [camera])):
                try:
                    rgb = bag_image_rgb(image)
                except ImageDecodeError as exc:  # as the node does: the frame is skipped, the next one goes on
                    skipped += 1
                    first_skipped = first_skipped or f"message {index}: {exc}"
                    continue
                stamp = image.stamp_sec * 1_000_000_000 + image.stamp_nanosec
                objects = None
                if truth is not None:
                    if str(stamp) not in truth:
                        raise AdaptivePerceptionError(f"bag '{bag}': no ground truth for the frame stamped {stamp} in "
                                                      f"{sidecar}")
                    objects = truth[str(stamp)]["objects"]
                used += 1
                yield rgb, sequence, stamp, objects
            if read is not None:
                read.append({"bag": str(bag), "camera": camera, "frames": used, "undecodable": skipped})
            if skipped:
                print(f"bag '{bag}', camera '{camera}': {counted(skipped, 'frame')} the node's decoder refuses left "
                      f"out, as the node skips them (first: {first_skipped})", flush=True)
            sequence += 1


def timed_detect(detector: DetectorTier, rgb: np.ndarray):
    """(milliseconds, published, found): one inference timed as the node runs it (letterbox, session, decode at the
    publish threshold), and the same inference's detections down to PROFILE_CONF for mAP."""
    start = time.perf_counter()
    tensor, box = detector.preprocess(rgb)
    raw = detector.infer(tensor)
    published = detector.postprocess(raw, box)
    ms = (time.perf_counter() - start) * 1e3
    return ms, published, detector.postprocess(raw, box, PROFILE_CONF, MAX_DETECTIONS)


def profile(frames: Iterator[tuple[np.ndarray, int, int, list[dict] | None]], total: int | None, truth_mode: str,
            models: dict[str, str], teacher: str | None = None, desc: str = "profile") -> Profile:
    """Run the features and all tiers over `frames`; ground truth by `truth_mode`."""
    if truth_mode not in TRUTH_MODES:
        raise AdaptivePerceptionError(f"--truth {truth_mode}: use one of {', '.join(TRUTH_MODES)}")
    # deployed settings (the node's defaults), so the measured latency is the node's
    detectors = [DetectorTier(resolve_model(models[t]), ("CPUExecutionProvider",), name=t) for t in TIERS]
    for detector in detectors:
        detector.warmup(2)
    reference = None
    if truth_mode == "reference" and teacher:
        reference = DetectorTier(resolve_model(teacher), ("CPUExecutionProvider",), conf_threshold=PUBLISH_CONF,
                                 name="teacher")
    features, veils, latency, sequences, stamps, regimes, dets, truth = [], [], [], [], [], [], [], []
    frame_hw = None
    for index, (rgb, sequence, stamp, objects) in enumerate(progress(frames, total=total, desc=desc, unit="frame")):
        frame_hw = frame_hw or rgb.shape[:2]
        if rgb.shape[:2] != frame_hw:
            raise AdaptivePerceptionError(f"frame {index} is {rgb.shape[1]}x{rgb.shape[0]}, earlier frames "
                                          f"{frame_hw[1]}x{frame_hw[0]}: profile one camera resolution at a time (the "
                                          "router's context measures box sizes against the frame)")
        features.append(image_features(rgb))
        veils.append(veil(rgb))
        row = []
        for tier, detector in enumerate(detectors):
            ms, published, found = timed_detect(detector, rgb)
            row.append(ms)
            dets += [[index, tier, *box, score, cls] for box, score, cls in
                     zip(found.boxes.tolist(), found.scores.tolist(), found.class_ids.tolist())]
            if truth_mode == "reference" and reference is None and tier == len(TIERS) - 1:
                objects = [{"box": b, "class_id": int(c), "ignore": False}
                           for b, c in zip(published.boxes.tolist(), published.class_ids.tolist())]
        if reference is not None:
            found = reference.detect(rgb)
            objects = [{"box": b, "class_id": int(c), "ignore": False}
                       for b, c in zip(found.boxes.tolist(), found.class_ids.tolist())]
        latency.append(row)
        sequences.append(sequence)
        stamps.append(stamp)
        truth += [[index, *o["box"], o["class_id"], float(o["ignore"])] for o in objects]
        regimes.append(list(Regime).index(Regime.of(sum(1 for o in objects if not o["ignore"]))))
    if not features:
        raise AdaptivePerceptionError(f"{desc}: the source yielded no frame the node's decoder takes")
    return Profile(
        features=np.stack(features).astype(np.float32), latency_ms=np.asarray(latency, np.float32),
        sequence=np.asarray(sequences, np.int64), stamp_ns=np.asarray(stamps, np.int64),
        regime=np.asarray(regimes, np.int64), detections=np.asarray(dets, np.float32).reshape(-1, 8),
        truth=np.asarray(truth, np.float32).reshape(-1, 7), veil=np.asarray(veils, np.float32),
        meta={"truth": truth_mode if truth_mode == "sidecar" else f"reference ({teacher or 'large tier'})",
              "models": {t: resolve_model(models[t]) for t in TIERS}, "profile_conf": PROFILE_CONF,
              "frame_hw": list(frame_hw),
              "device": f"onnxruntime CPU, {os.cpu_count()} cores, batch 1 (this machine)"})
