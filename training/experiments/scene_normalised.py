"""Experiment (not part of the package; kept so the README's figures can be reproduced): do the image features say
more about the routing once each camera's own scene is taken out of them?

    python training/experiments/scene_normalised.py [--work build/train-v3]   # ~3 min; after `train labels`

Why: the 1024 image features identify each sequence's ground and lighting, so a network fits the training scenes
and carries nothing to new ones (training/README.md, bc). Objects add edges and colour to a scene whose ground
stays, so the frame's features minus an average of the same camera's earlier frames might track how busy the
scene is now, which the previous output's count only tells one frame late. Causal: frame t sees frames < t only.

Per frame, on the benchmark's profiles (the simulator the report uses), at the router issue's budget (<= 40 % of
always-large's mean inference cost, the embedded tiers' costs): boosted trees (as `router_ceiling.py`: two
regressors for small's and large's value gain over nano, trained on the router split under each tier's previous
output) on the 4 context values; those plus the top principal components of the scene-normalised features
(the frame's features minus their exponential moving average over the camera's earlier frames); and, as a
control, those plus the same number of components of the raw features. Each tuned on validation, scored once
on test (mAP50-95 by pycocotools). Nothing here is shipped.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from router_ceiling import (  # noqa: E402  (a sibling script)
    RULES, WEIGHTS, _fixed, cost_ms, fit_gains, inputs, label_quality, oracle_trace, pick, predicted_values,
    values_chooser,
)

from adaptive_perception.training.evaluate import Scorer  # noqa: E402
from adaptive_perception.training.labels import Costs  # noqa: E402
from adaptive_perception.training.pipeline import Settings, load_split  # noqa: E402
from adaptive_perception.training.simulate import Split, rollout  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def scene_normalised(split: Split, alpha: float) -> np.ndarray:
    """(N, 1024) each frame's image features minus their moving average over the camera's earlier frames (0 on a
    sequence's first frame, which has no history)."""
    features = split.profile.features.astype(np.float64)
    out = np.zeros_like(features)
    for frames in split.profile.sequences():
        mean = features[frames[0]].copy()
        for f in frames[1:]:
            out[f] = features[f] - mean
            mean += alpha * (features[f] - mean)
    return out


def with_components(split: Split, base: np.ndarray, table: np.ndarray, basis: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(N, 3, D + K) the context inputs under each previous tier with the frame's K components appended."""
    centre, axes = basis
    projected = ((table - centre) @ axes.T).astype(np.float32)
    return np.concatenate([base, np.repeat(projected[:, None, :], 3, axis=1)], axis=2)


def pca(table: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    centre = table.mean(0)
    scale = table.std(0) + 1e-6
    _, _, vt = np.linalg.svd((table - centre) / scale, full_matrices=False)
    return centre, vt[:k] / scale  # projections of standardised features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "build/train-v3")
    parser.add_argument("--report", type=Path, default=ROOT / "training/reports/scene_normalised.json")
    parser.add_argument("--latency", type=Path, default=ROOT / "training/latency/cpu-2core-family2-wide.json")
    parser.add_argument("--components", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=0.1, help="moving average's weight of the newest frame")
    args = parser.parse_args()
    splits = {s: load_split(Settings(work=args.work), s) for s in ("router", "val", "test")}
    val, test, costs = splits["val"], splits["test"], Costs.load(args.latency)
    budget, scorer = 0.4 * costs.ms[2], Scorer(test)
    context = {s: inputs(split, [0, 1, 2, 3], False) for s, split in splits.items()}
    tables = {"scene-normalised": {s: scene_normalised(split, args.alpha) for s, split in splits.items()},
              "raw": {s: split.profile.features.astype(np.float64) for s, split in splits.items()}}
    variants = {"4 context values": context}
    for name, table in tables.items():
        basis = pca(table["router"], args.components)
        variants[f"4 context values + {args.components} components of the {name} features"] = {
            s: with_components(splits[s], context[s], table[s], basis) for s in splits}
    rows = {}

    def score(name: str, trace, **extra) -> None:
        rows[name] = {"map50_95": scorer.score(trace)["map50_95"], "cost_ms": cost_ms(test, trace, costs, False),
                      "label_quality": label_quality(test, trace), **extra}
        print(f"{name}: {rows[name]['map50_95']:.2f} at {rows[name]['cost_ms']:.1f} ms", flush=True)

    score("always-large", rollout(test, costs, _fixed(2), False))
    score("previous-frame oracle", oracle_trace(test, costs, budget, True))
    name, factory, *_ = pick(val, costs, budget, RULES)
    score("count rule", rollout(test, costs, factory(), False), thresholds=list(name))
    for variant, x in variants.items():
        models = fit_gains(splits["router"], x["router"])
        values = {s: predicted_values(models, x[s]) for s in ("val", "test")}
        picked = pick(val, costs, budget, [(w, lambda w=w: values_chooser(values["val"], costs.relative, float(w)))
                                           for w in WEIGHTS])
        score(f"boosted trees: {variant}",
              rollout(test, costs, values_chooser(values["test"], costs.relative, float(picked[0])), False),
              weight=float(picked[0]), validation_label_quality=float(picked[2]))
    large = rows["always-large"]["map50_95"]
    for row in rows.values():
        row["map_share_of_large"] = row["map50_95"] / large
    print("\n| row | mAP50-95 | share of large | cost (ms) |\n|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['map50_95']:.1f} | {row['map_share_of_large']:.1%} | {row['cost_ms']:.1f} |")
    args.report.write_text(json.dumps({"what": __doc__.split("\n\n")[0], "command":
                                       "python training/experiments/scene_normalised.py", "alpha": args.alpha,
                                       "components": args.components, "budget_ms": budget, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {args.report}")


if __name__ == "__main__":
    main()
