"""The features' signal check: a linear classifier of scene regime (it was the interim routing policy).

`adaptive-perception policy fit-regime` fits a class-balanced softmax regression from the 1024 image
features to the frame's regime (sparse <= 2 valid objects, moderate 3-7, dense >= 8) on the benchmark's
train split, picks the L2 strength on the validation split, scores the frozen test split once, and writes

- the report (`training/reports/regime_signal.json`): balanced accuracy and accuracy next to the
  majority-regime baseline, per-regime recall and the confusion matrix;
- the same classifier as a policy file (default `build/regime_policy.onnx`), read as a router: sparse ->
  nano, moderate -> small, dense -> large; its 4 context weights are zero. It was the embedded policy
  until the trained one (`adaptive-perception train all`) replaced it; it routes by how busy the scene
  looks, not by what each tier costs or gains.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from adaptive_perception.features import FEATURE_SIZE, IMAGE_FEATURES, image_features
from adaptive_perception.progress import progress
from adaptive_perception.scenes.sequence import Regime

REGIMES = tuple(r.value for r in Regime)  # sparse, moderate, dense = nano, small, large
L2_GRID = (1e-2, 1e-1, 1.0, 10.0)
STEPS = 400


def split_features(benchmark: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image features, regime index and sequence id of every frame of a split that has an image file."""
    from adaptive_perception.training.profile import dataset_images, dataset_records

    records = dataset_records(benchmark, split)
    features, regimes, sequences = [], [], []
    for record, rgb in progress(dataset_images(benchmark, split, records), total=len(records),
                            desc=f"features, {split}", unit="frame"):
        features.append(image_features(rgb))
        regimes.append(REGIMES.index(record["regime"]))
        sequences.append(record["sequence"])
    return np.stack(features), np.array(regimes), np.array(sequences)


def fit_softmax(x: np.ndarray, y: np.ndarray, l2: float, steps: int = STEPS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced multinomial logistic regression on standardised x, full-batch Adam. Returns (W, b)."""
    n, d = x.shape
    k = len(REGIMES)
    counts = np.bincount(y, minlength=k).astype(np.float64)
    sample_weight = (n / (k * np.maximum(counts, 1)))[y] / n
    onehot = np.eye(k)[y]
    rng = np.random.default_rng(seed)
    w, b = rng.normal(0, 1e-3, (d, k)), np.zeros(k)
    m, v = [np.zeros_like(w), np.zeros_like(b)], [np.zeros_like(w), np.zeros_like(b)]
    for step in range(1, steps + 1):
        logits = x @ w + b
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        g = (p - onehot) * sample_weight[:, None]
        grads = [x.T @ g + l2 * w, g.sum(axis=0)]
        for i, (param, grad) in enumerate(zip((w, b), grads)):
            m[i] = 0.9 * m[i] + 0.1 * grad
            v[i] = 0.999 * v[i] + 0.001 * grad * grad
            param -= 0.02 * (m[i] / (1 - 0.9 ** step)) / (np.sqrt(v[i] / (1 - 0.999 ** step)) + 1e-8)
    return w, b


def scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    k = len(REGIMES)
    confusion = np.zeros((k, k), int)
    np.add.at(confusion, (y_true, y_pred), 1)
    recall = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    present = confusion.sum(axis=1) > 0
    return {"accuracy": float((y_true == y_pred).mean()), "balanced_accuracy": float(recall[present].mean()),
            "recall": dict(zip(REGIMES, recall.round(4).tolist())),
            "confusion": {"rows_true_cols_predicted": list(REGIMES), "counts": confusion.tolist()}}


def fit_regime_policy(benchmark: Path, policy_out: Path, report_out: Path) -> dict:
    from adaptive_perception.training.policy_export import write_policy

    data = {split: split_features(benchmark, split) for split in ("train", "val", "test")}
    x_train, y_train, _ = data["train"]
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6
    standard = {split: ((x - mean) / std, y) for split, (x, y, _) in data.items()}

    def predict(params: tuple[np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
        return np.argmax(x @ params[0] + params[1], axis=1)

    search = {}
    for l2 in progress(L2_GRID, desc="L2 on validation", unit="fit"):
        params = fit_softmax(*standard["train"], l2)
        search[l2] = (scores(standard["val"][1], predict(params, standard["val"][0]))["balanced_accuracy"], params)
    best_l2 = max(search, key=lambda l2: search[l2][0])
    params = search[best_l2][1]
    test_x, test_y = standard["test"]
    majority = int(np.bincount(y_train, minlength=len(REGIMES)).argmax())
    report = {
        "what": "linear (softmax) classifier of regime from the 1024 image features; fitted on train, L2 chosen on "
                "val, test scored once",
        "frames": {split: int(len(y)) for split, (_, y) in standard.items()},
        "l2": best_l2, "val_balanced_accuracy": {str(k): round(v[0], 4) for k, v in search.items()},
        "test": scores(test_y, predict(params, test_x)),
        "majority_baseline": {"regime": REGIMES[majority], **{k: v for k, v in scores(
            test_y, np.full_like(test_y, majority)).items() if k in ("accuracy", "balanced_accuracy")}},
        "chance_balanced_accuracy": 1 / len(REGIMES),
    }
    # the router form: normalisation in the metadata, context inputs with zero weight (mean 0, std 1)
    weight = np.zeros((FEATURE_SIZE, len(REGIMES)), np.float32)
    weight[:IMAGE_FEATURES] = params[0]
    full_mean = np.concatenate([mean, np.zeros(FEATURE_SIZE - IMAGE_FEATURES)])
    full_std = np.concatenate([std, np.ones(FEATURE_SIZE - IMAGE_FEATURES)])
    digest = hashlib.sha256(weight.tobytes() + params[1].astype(np.float32).tobytes()).hexdigest()[:8]
    policy_id = f"regime-linear-{digest}"
    write_policy(policy_out, [(weight, params[1])], full_mean, full_std, policy_id,
                 "linear regime classifier on the image features (sparse->nano, moderate->small, "
                 "dense->large), fitted by `adaptive-perception policy fit-regime` on the scene benchmark's train "
                 "split; context weights are zero")
    report["policy_id"] = policy_id
    report_out.parent.mkdir(parents=True, exist_ok=True)
    report_out.write_text(json.dumps(report, indent=2) + "\n")
    return report
