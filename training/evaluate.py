"""Stage 7, evaluate: routed detections scored by pycocotools over a whole split, per frame and streaming.

mAP point estimates come from pycocotools' COCOeval. The 95% intervals resample sequences with
replacement and re-accumulate COCOeval's own per-image matches (no re-matching), so each interval is
the same metric on a resampled split.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np

from adaptive_perception.detector import TIERS
from adaptive_perception.scenes.render import CLASSES
from adaptive_perception.training.labels import Costs
from adaptive_perception.training.simulate import Split, Trace

RECALL_POINTS = np.linspace(0, 1, 101)


def coco_truth(split: Split) -> dict:
    images = [{"id": f, "width": 640, "height": 480} for f in range(len(split.profile))]
    annotations = []
    for f, rows in enumerate(split.profile.frame_truth()):
        for x0, y0, x1, y1, cls, ignore in rows.tolist():
            annotations.append({"id": len(annotations) + 1, "image_id": f, "category_id": int(cls),
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": int(ignore)})
    return {"images": images, "annotations": annotations, "categories": [{"id": i, "name": n} for i, n in enumerate(CLASSES)]}


class Scorer:
    """COCO mAP of routing traces on one split (the truth is indexed once)."""

    def __init__(self, split: Split) -> None:
        from pycocotools.coco import COCO

        self.split = split
        self.detections = [split.profile.tier_detections(t) for t in range(len(TIERS))]
        with contextlib.redirect_stdout(io.StringIO()):
            self.gt = COCO()
            self.gt.dataset = coco_truth(split)
            self.gt.createIndex()

    def _evaluator(self, trace: Trace):
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        results = []
        for target, (source, tier) in enumerate(trace.shown.tolist()):
            if source < 0:  # nothing shown yet (a stream's first frames)
                continue
            for x0, y0, x1, y1, score, cls in self.detections[tier][source].tolist():
                results.append({"image_id": target, "category_id": int(cls), "bbox": [x0, y0, x1 - x0, y1 - y0],
                                "score": score})
        with contextlib.redirect_stdout(io.StringIO()):
            if results:
                found = self.gt.loadRes(results)
            else:  # nothing shown: pycocotools' loadRes cannot take an empty list
                found = COCO()
                found.dataset = {"images": self.gt.dataset["images"], "categories": self.gt.dataset["categories"],
                                 "annotations": []}
                found.createIndex()
            evaluator = COCOeval(self.gt, found, "bbox")
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        return evaluator

    def score(self, trace: Trace, resamples: int = 0, seed: int = 0) -> dict:
        """mAP50-95 and mAP50 (percent), with `resamples` bootstrap replicates over sequences."""
        evaluator = self._evaluator(trace)
        out = {"map50_95": float(evaluator.stats[0] * 100), "map50": float(evaluator.stats[1] * 100)}
        if resamples:
            out["replicates"] = bootstrap_maps(evaluator, self.split.profile.sequences(), resamples, seed)
        return out


def _per_image(evaluator) -> dict[int, list]:
    """Per category, per image: (scores, matches (T, D), dt ignore (T, D), valid truth count) for area all, 100 dets."""
    params = evaluator.params
    n_images, n_areas = len(params.imgIds), len(params.areaRng)
    table = {}
    for c, _ in enumerate(params.catIds):
        rows = []
        for i in range(n_images):
            entry = evaluator.evalImgs[c * n_areas * n_images + i]  # area index 0 = all
            if entry is None:
                rows.append(None)
                continue
            order = np.argsort(-np.asarray(entry["dtScores"]), kind="mergesort")[:params.maxDets[-1]]
            rows.append((np.asarray(entry["dtScores"])[order], entry["dtMatches"][:, order] > 0,
                         entry["dtIgnore"][:, order].astype(bool), int((np.asarray(entry["gtIgnore"]) == 0).sum())))
        table[c] = rows
    return table


def _accumulate(table: dict[int, list], images: np.ndarray, iou_thresholds: np.ndarray) -> tuple[float, float]:
    precisions = []  # (T,) per category with truth
    for rows in table.values():
        chosen = [rows[i] for i in images if rows[i] is not None]
        positives = sum(r[3] for r in chosen)
        if positives == 0:
            continue
        scores = np.concatenate([r[0] for r in chosen])
        order = np.argsort(-scores, kind="mergesort")
        matches = np.concatenate([r[1] for r in chosen], axis=1)[:, order]
        ignore = np.concatenate([r[2] for r in chosen], axis=1)[:, order]
        tp = np.cumsum(matches & ~ignore, axis=1)
        fp = np.cumsum(~matches & ~ignore, axis=1)
        per_threshold = []
        for t in range(len(iou_thresholds)):
            recall = tp[t] / positives
            precision = tp[t] / np.maximum(tp[t] + fp[t], np.spacing(1))
            precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
            index = np.searchsorted(recall, RECALL_POINTS, side="left")
            sampled = np.zeros(len(RECALL_POINTS))
            valid = index < len(precision)
            sampled[valid] = precision[index[valid]]
            per_threshold.append(sampled.mean())
        precisions.append(per_threshold)
    if not precisions:
        return 0.0, 0.0
    table_ap = np.asarray(precisions)
    return float(table_ap.mean() * 100), float(table_ap[:, 0].mean() * 100)


def bootstrap_maps(evaluator, sequences: list[np.ndarray], resamples: int, seed: int) -> list[tuple[float, float]]:
    """(mAP50-95, mAP50) on `resamples` splits drawn by sequence with replacement."""
    table = _per_image(evaluator)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(resamples):
        picked = rng.integers(len(sequences), size=len(sequences))
        out.append(_accumulate(table, np.concatenate([sequences[i] for i in picked]), evaluator.params.iouThrs))
    return out


def accumulate_all(evaluator, frames: int) -> tuple[float, float]:
    """The re-accumulation on the unresampled split (equals COCOeval's stats; a self-check)."""
    return _accumulate(_per_image(evaluator), np.arange(frames), evaluator.params.iouThrs)


def cost_columns(split: Split, trace: Trace, costs: Costs) -> dict:
    """Mean cost per frame (ms on the named device), p95/p99 of the per-inference latency, mix, switches."""
    measured_mean = split.profile.latency_ms.mean(axis=0)
    tiers = np.asarray(trace.processed_tiers)
    frames = np.asarray(trace.processed_frames)
    latency = split.profile.latency_ms[frames, tiers] * (costs.ms[tiers] / measured_mean[tiers])
    n = len(split.profile)
    return {"mean_cost_ms": float(trace.busy_ms / n), "p95_latency_ms": float(np.percentile(latency, 95)),
            "p99_latency_ms": float(np.percentile(latency, 99)),
            "mix": dict(zip(TIERS, np.round(trace.mix(), 4).tolist())),
            "switches_per_100_frames": 100.0 * trace.switches / n, "processed_frames": int(len(tiers))}


def interval(values: list[float]) -> list[float]:
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]
