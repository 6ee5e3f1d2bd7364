"""Experiment (not part of the package; kept so training/README.md's "8-bit tiers" can be reproduced): the embedded
tiers with 8-bit weights and activations, and what that does to their accuracy, their speed and the router's room.

    python training/experiments/int8_tiers.py          # ~2 min: quantize, validation mAP, latency -> build/int8/
    adaptive-perception train profile --benchmark build/benchmark-v2 --work build/train-int8 \\
        --model nano=build/int8/tiers/nano.onnx --model small=build/int8/tiers/small.onnx \\
        --model large=build/int8/tiers/large.onnx          # ~9 min
    adaptive-perception train labels --benchmark build/benchmark-v2 --work build/train-int8 --model ... (the same)
    # build/train-int8/latency.json: the int8 costs this script measured; then the routing ceilings:
    python training/experiments/tier_sizes.py build/train-v4 build/train-int8
    python training/experiments/int8_tiers.py --mix build/train-int8 build/train-v3 build/train-mixed   # seconds:
        # the int8 profile's nano and small beside the fp32 profile's large, costs from build/int8/report.json

Quantization: `adaptive-perception models quantize`'s (`training/quantize.py`), calibrated on 64 frames of the train
split (the tiers' own training frames; the router, validation and test splits stay unseen).
Latency: each family's three tiers in turn per frame, as `train profile` times them, with the node's onnxruntime
settings (threads sleep between work), 60 validation frames in blocks of 20 alternating between the families, 4
rounds, so a busy host slows both alike. Writes build/int8/report.json.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from adaptive_perception.config import resolve_model
from adaptive_perception.detector import TIERS, DetectorTier
from adaptive_perception.training.quantize import quantize_model
from adaptive_perception.training.tiers import _coco_eval, _split, detect_split

ROOT = Path(__file__).resolve().parents[2]

BENCHMARK = ROOT / "build/benchmark-v2"
OUT = ROOT / "build/int8"


def calibration_frames(count: int = 64) -> list[np.ndarray]:
    import cv2

    images = sorted((BENCHMARK / "images" / "train").glob("*.jpg"))
    if not images:
        raise SystemExit(f"no train images in {BENCHMARK}: run `adaptive-perception scenes generate "
                         f"--generator-version 2.0.0 --out {BENCHMARK}` first")
    step = max(1, len(images) // count)
    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in images[::step][:count]]


def family_latency(families: dict[str, dict[str, Path]], frames: list[np.ndarray], rounds: int = 4,
                   block: int = 20) -> dict[str, dict[str, float]]:
    detectors = {f: {t: DetectorTier(p, name=t) for t, p in tiers.items()} for f, tiers in families.items()}
    for tiers in detectors.values():
        for detector in tiers.values():
            detector.warmup(3)
    times = {f: {t: [] for t in TIERS} for f in families}
    order = list(families)
    for round_ in range(rounds):
        for start in range(0, len(frames), block):
            for family in (order if round_ % 2 == 0 else order[::-1]):
                for frame in frames[start:start + block]:
                    for tier, detector in detectors[family].items():
                        begin = time.perf_counter()
                        detector.detect(frame)
                        times[family][tier].append((time.perf_counter() - begin) * 1e3)
    return {f: {t: round(float(np.mean(v)), 3) for t, v in tiers.items()} for f, tiers in times.items()}


def mix(int8_work: Path, fp32_work: Path, out: Path) -> None:
    """Profiles of int8 nano and small beside the fp32 large tier (same frames, same order), with their costs."""
    from adaptive_perception.training.pipeline import SPLITS, Settings, _profile_path
    from adaptive_perception.training.profile import Profile

    for split in SPLITS:
        cheap, large = (Profile.load(_profile_path(Settings(work=w), split)) for w in (int8_work, fp32_work))
        if not (np.array_equal(cheap.sequence, large.sequence) and np.array_equal(cheap.stamp_ns, large.stamp_ns)):
            raise SystemExit(f"{split}: the two profiles hold different frames")
        column = TIERS.index("large")
        detections = np.concatenate([cheap.detections[cheap.detections[:, 1] != column],
                                     large.detections[large.detections[:, 1] == column]])
        latency = cheap.latency_ms.copy()
        latency[:, column] = large.latency_ms[:, column]
        Profile(features=cheap.features, latency_ms=latency, sequence=cheap.sequence, stamp_ns=cheap.stamp_ns,
                regime=cheap.regime, detections=detections[np.lexsort((detections[:, 1], detections[:, 0]))],
                truth=cheap.truth, meta={**cheap.meta, "models": {**cheap.meta["models"],
                                                                   "large": large.meta["models"]["large"]}},
                veil=cheap.veil).save(_profile_path(Settings(work=out), split))
    costs = json.loads((OUT / "report.json").read_text())["mean_latency_ms"]
    (out / "latency.json").write_text(json.dumps({
        "device": "onnxruntime CPU, 2 cores: int8 nano and small, fp32 large (int8_tiers.py)",
        "tiers_ms": {"nano": costs["int8"]["nano"], "small": costs["int8"]["small"], "large": costs["fp32"]["large"]},
        "host_cores": 2}, indent=2))
    print(f"wrote {out}; next: adaptive-perception train labels --benchmark {BENCHMARK} --work {out} "
          f"--latency {out / 'latency.json'}")


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--mix":
        mix(*map(Path, sys.argv[2:]))
        return
    calibration = calibration_frames()
    fp32 = {t: Path(resolve_model(f"embedded:{t}")) for t in TIERS}
    int8 = {t: quantize_model(fp32[t], OUT / "tiers" / f"{t}.onnx", calibration) for t in TIERS}
    gt, image_dir, frames = _split(BENCHMARK, "val", 60)
    ids = [image["id"] for image in gt["images"]]
    accuracy = {family: {t: _coco_eval(gt, detect_split(path, image_dir, gt, progress=False), ids)[0]
                         for t, path in models.items()} for family, models in (("fp32", fp32), ("int8", int8))}
    latency = family_latency({"fp32": fp32, "int8": int8}, frames)
    report = {"what": __doc__.split("\n\n")[0], "command": "python training/experiments/int8_tiers.py",
              "val_map50_95": accuracy, "mean_latency_ms": latency,
              "int8_over_fp32": {t: round(latency["int8"][t] / latency["fp32"][t], 3) for t in TIERS},
              "share_of_large_cost": {f: {t: round(latency[f][t] / latency[f]["large"], 3) for t in TIERS}
                                      for f in latency}}
    (OUT / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (OUT / "latency.json").write_text(json.dumps({
        "device": "onnxruntime CPU, 2 cores, batch 1 (this machine), int8 tiers, the node's settings",
        "tiers_ms": latency["int8"], "host_cores": 2,
        "note": "measured by training/experiments/int8_tiers.py beside the fp32 tiers in alternating blocks"}, indent=2))
    print("| tier | val mAP50-95 fp32 / int8 | mean ms fp32 / int8 | int8 / fp32 | cost / large's, fp32 / int8 |")
    print("|---|---|---|---|---|")
    for t in TIERS:
        print(f"| {t} | {accuracy['fp32'][t]:.1f} / {accuracy['int8'][t]:.1f} | {latency['fp32'][t]:.1f} / "
              f"{latency['int8'][t]:.1f} | {report['int8_over_fp32'][t]:.2f} | "
              f"{report['share_of_large_cost']['fp32'][t]:.3f} / {report['share_of_large_cost']['int8'][t]:.3f} |")
    print(f"wrote {OUT / 'report.json'} and {OUT / 'latency.json'} (copy it into the int8 work folder)")


if __name__ == "__main__":
    main()
