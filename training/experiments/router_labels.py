"""Experiment (not part of the package; kept so the README's figures can be reproduced): do better labels, or an
average of several BC networks, move the learned router at 40 % of always-large's cost?

The labels' per-frame quality (true positives - 0.3 x false positives over IoU 0.50:0.95, published detections
only) is a proxy for what a frame's routed output adds to the split's mAP50-95. Candidates, each trained with
the shipped BC recipe (context inputs, tier values, weight calibrated on validation to 40 % of large's cost):
- the proxy with other false-positive weights;
- marginal labels: each tier's exact change of the split's pooled mAP50-95 (pycocotools' per-image matches,
  every detection the scorer sees) when that one frame's output is swapped into a baseline routing (the proxy's
  budget oracle at 40 %);
- an ensemble: the mean tier values of several BC networks (one MLP with block-diagonal layers, so still a
  dense chain the node runs in numpy);
- another statistic of the previous output in the mean score's context slot (the context stays 4 values);
- and, as a ceiling of the recipe rather than a router, each seed's weight calibrated on the test split itself.

    python training/experiments/router_labels.py [--work build/train-v3] [--seeds 3]   # ~12 min on 2 cores
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np

from adaptive_perception.detector import TIERS
from adaptive_perception.training.evaluate import Scorer, _accumulate, _per_image
from adaptive_perception.training.labels import FP_WEIGHT, IOU_THRESHOLDS, Costs, budget_oracle, match_counts
from adaptive_perception.training.learn import Network, calibrate_cost_weight, context_dataset, train_bc
from adaptive_perception.training.pipeline import Settings, load_split
from adaptive_perception.training.profile import PUBLISH_CONF
from adaptive_perception.training.simulate import Split, rollout

# statistics of a tier's detections (score >= 0.01, the profile's) that can stand in the mean score's context slot
SLOT_STATISTICS = {
    "log1p(count at score >= 0.05)": lambda scores: np.log1p((scores >= 0.05).sum()),
    "log1p(count at score >= 0.10)": lambda scores: np.log1p((scores >= 0.10).sum()),
    "log1p(summed score)": lambda scores: np.log1p(scores.sum()),
}

ROOT = Path(__file__).resolve().parents[2]


def counts(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) true and false positives of each tier's published detections, averaged over IoU 0.50:0.95."""
    truth = split.profile.frame_truth()
    tp = np.zeros((len(truth), len(TIERS)))
    fp = np.zeros_like(tp)
    for tier in range(len(TIERS)):
        for f, dets in enumerate(split.profile.tier_detections(tier, PUBLISH_CONF)):
            t, p = match_counts(dets, truth[f])
            tp[f, tier], fp[f, tier] = t.mean(), p.mean()
    return tp, fp


def with_quality(split: Split, quality: np.ndarray) -> Split:
    """The split with its per-frame quality (column k = 0, what per-frame routing and BC read) replaced."""
    out = np.array(split.quality, copy=True)
    out[:, :, 0] = quality
    clone = copy.copy(split)  # shallow: the profile and the output tables are shared, not recomputed
    clone.quality = out
    return clone


def marginal(split: Split, scorer: Scorer, costs: Costs, baseline: np.ndarray) -> np.ndarray:
    """(N, 3) the change of the split's mAP50-95 (points x N, so a frame's share is near 1) when frame f alone
    shows tier t's output in the per-frame routing `baseline` (N,) tiers; 0 at the baseline's own tier."""
    tables = [_per_image(scorer._evaluator(rollout(split, costs, lambda *_, t=t: t, False))) for t in range(len(TIERS))]
    n = len(split.profile)
    categories = list(tables[0].keys())
    routed = {c: [tables[baseline[i]][c][i] for i in range(n)] for c in categories}
    images = np.arange(n)
    base = _accumulate(routed, images, IOU_THRESHOLDS)[0]
    out = np.zeros((n, len(TIERS)))
    for f in range(n):
        for tier in range(len(TIERS)):
            if tier == baseline[f]:
                continue
            saved = {c: routed[c][f] for c in categories}
            for c in categories:
                routed[c][f] = tables[tier][c][f]
            out[f, tier] = (_accumulate(routed, images, IOU_THRESHOLDS)[0] - base) * n
            for c in categories:
                routed[c][f] = saved[c]
    return out


def with_slot(split: Split, statistic) -> Split:
    """The split with `statistic(scores)` of each tier's detections where the context reads the mean score."""
    table = np.zeros_like(split.mean_scores)
    for tier in range(len(TIERS)):
        for f, dets in enumerate(split.profile.tier_detections(tier)):
            table[f, tier] = statistic(dets[:, 4])
    clone = copy.copy(split)
    clone.mean_scores = table
    return clone


def ensemble(networks: list[Network]) -> Network:
    """One MLP computing the mean of the networks' outputs (same normalisation): hidden layers side by side
    (block-diagonal), the last layer's weights divided by their count and stacked."""
    first = networks[0]
    layers = []
    for i in range(len(first.layers)):
        ws = [n.layers[i][0] for n in networks]
        bs = [n.layers[i][1] for n in networks]
        if i == 0:
            w = np.concatenate(ws, axis=1)
        elif i == len(first.layers) - 1:
            w = np.concatenate(ws, axis=0) / len(networks)
        else:
            w = np.zeros((sum(x.shape[0] for x in ws), sum(x.shape[1] for x in ws)), ws[0].dtype)
            r = c = 0
            for x in ws:
                w[r:r + x.shape[0], c:c + x.shape[1]] = x
                r, c = r + x.shape[0], c + x.shape[1]
        b = np.mean(bs, axis=0) if i == len(first.layers) - 1 else np.concatenate(bs)
        layers.append((w, b))
    return Network(layers, first.mean, first.std, first.head)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "build/train-v3")
    parser.add_argument("--latency", type=Path, default=ROOT / "training/latency/cpu-2core-family2-wide.json")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--fp-weights", type=float, nargs="*", default=[0.0, 0.15, 0.6, 1.0])
    parser.add_argument("--report", type=Path, default=ROOT / "build/router_labels.json")
    args = parser.parse_args()
    costs = Costs.load(args.latency)
    budget = 0.4 * float(costs.ms[-1])
    settings = Settings(work=args.work)
    splits = {name: load_split(settings, name) for name in ("router", "val", "test")}
    scorers = {name: Scorer(splits[name]) for name in ("val", "test")}
    large = {name: scorers[name].score(rollout(splits[name], costs, lambda *_: 2, False))["map50_95"]
             for name in scorers}
    print(f"always-large: validation {large['val']:.2f}, test {large['test']:.2f}; budget {budget:.1f} ms", flush=True)
    cache = args.work / "router_labels_cache.npz"
    if cache.is_file():
        stored = dict(np.load(cache))
    else:
        stored = {}
        for name in ("router", "val"):
            split = splits[name]
            started = time.monotonic()
            stored[f"tp_{name}"], stored[f"fp_{name}"] = counts(split)
            baseline = budget_oracle(split.quality[:, :, 0], costs, budget)
            scorer = scorers.get(name) or Scorer(split)
            stored[f"marginal_{name}"] = marginal(split, scorer, costs, baseline)
            print(f"{name}: labels in {time.monotonic() - started:.0f} s", flush=True)
        np.savez(cache, **stored)
    unit = {name: float(splits[name].quality[:, :, 0].std()) for name in ("router", "val")}

    def labelled(kind: str, weight: float) -> dict[str, Split]:
        out = dict(splits)
        for name in ("router", "val"):
            if kind == "proxy":
                q = stored[f"tp_{name}"] - weight * stored[f"fp_{name}"]
            else:
                q = stored[f"marginal_{name}"]
            q = q / q.std() * unit[name]
            out[name] = with_quality(splits[name], q)
        return out

    def evaluate(network: Network, on: dict[str, Split] = splits) -> dict:
        calibrated = calibrate_cost_weight(network, on["val"], costs, budget)
        row = {"weight": calibrated.head.cost_weight}
        for name in ("val", "test"):
            trace = rollout(on[name], costs, calibrated.choose, streaming=False)
            row[name] = scorers[name].score(trace)["map50_95"]
            row[f"{name}_cost_ms"] = trace.busy_ms / len(on[name].profile)
        ceiling = calibrate_cost_weight(network, on["test"], costs, budget)
        row["test_calibrated"] = scorers["test"].score(rollout(on["test"], costs, ceiling.choose, streaming=False))["map50_95"]
        return row

    def report(name: str, label: str, rows: list[dict]) -> None:
        v, t, c, ceiling = (float(np.mean([r[k] for r in rows])) for k in ("val", "test", "test_cost_ms", "test_calibrated"))
        results.append({"variant": name, "bc": label, "validation": v, "test": t, "test_cost_ms": c,
                        "test_calibrated_on_test": ceiling, "seeds": rows})
        print(f"| {name} | {label} | {v:.2f} | {t:.2f} ({t / large['test']:.1%}) | {c:.1f} | {ceiling:.2f} "
              f"({ceiling / large['test']:.1%}) |", flush=True)

    variants = [("proxy", FP_WEIGHT)] + [("proxy", w) for w in args.fp_weights] + [("marginal", 0.0)]
    results = []
    print("| variant | BC | validation | test (share of large) | test cost (ms) | test, weight calibrated on test |\n"
          "|---|---|---|---|---|---|", flush=True)
    for kind, weight in variants:
        data = labelled(kind, weight)
        train, val = context_dataset(data["router"]), context_dataset(data["val"])
        name = f"proxy, FP weight {weight}" if kind == "proxy" else "marginal mAP"
        singles, ensembles = [], []
        for seed in range(args.seeds):
            ensembled = kind == "marginal" or weight == FP_WEIGHT  # the shipped labels and the marginal ones
            members = [train_bc(train, val, seed=seed * 100 + m, loss="values", inputs="context", progress=False)[0]
                       for m in range(args.members if ensembled else 1)]
            singles.append(evaluate(members[0]))
            if len(members) > 1:
                ensembles.append(evaluate(ensemble(members)))
        for label, rows in (("single", singles), (f"mean of {args.members}", ensembles)):
            if rows:
                report(name, label, rows)
    for name, statistic in SLOT_STATISTICS.items():
        slotted = {key: with_slot(split, statistic) for key, split in splits.items()}
        train, val = context_dataset(slotted["router"]), context_dataset(slotted["val"])
        rows = [evaluate(train_bc(train, val, seed=seed * 100, loss="values", inputs="context", progress=False)[0],
                         slotted) for seed in range(args.seeds)]
        report(f"{name} in the mean score's slot", "single", rows)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps({"always_large": large, "budget_ms": budget, "rows": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
