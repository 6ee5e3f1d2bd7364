"""Experiment (not part of the package; kept so the README's figures can be reproduced): is the learned router
short of data or of information? Two questions on the shipped BC recipe (tier values, calibrated on validation
to 40 % of always-large's cost):

1. the learning curve of the context-only policy (the shipped `--policy-inputs context`) over 5, 10 and 20 of
   the router split's sequences;
2. whether the 1024 image features help once the router sees many scenes: `--scenes` newly seeded
   generator-2.0.0 sequences (seed 515151, used by nothing else) are rendered, profiled with the embedded tiers
   (cached in `--cache`) and added to the router split; BC with `context` against `all` inputs.

    python training/experiments/router_scenes.py [--scenes 60] [--work build/train-v3]
    # ~25 min the first time (rendering and profiling 150-frame sequences through the three tiers), then ~5 min

Every row is scored on the validation split (where its weight was calibrated) and on the test split, mean of
`--seeds` BC seeds.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from adaptive_perception.scenes.benchmark import _stamp, camera_pixels
from adaptive_perception.scenes.sequence import SequenceSpec, render_sequence
from adaptive_perception.training.evaluate import Scorer
from adaptive_perception.training.labels import Costs
from adaptive_perception.training.learn import calibrate_cost_weight, context_dataset, train_bc
from adaptive_perception.training.pipeline import Settings, load_split
from adaptive_perception.training.profile import Profile, profile
from adaptive_perception.training.simulate import Split, rollout

ROOT = Path(__file__).resolve().parents[2]
SEED = 515151
FIRST_SEQUENCE = 100_000  # ids far from the benchmark's


def _frames(scenes: int):
    for index in range(scenes):
        for frame in render_sequence(SequenceSpec(SEED, index, 150, version="2.0.0")):
            sequence = FIRST_SEQUENCE + index
            yield (camera_pixels(frame.rgb), sequence, _stamp(sequence, frame.index),
                   [{"box": list(t.box), "class_id": t.class_id, "ignore": t.ignore} for t in frame.truths])


def extra_split(scenes: int, cache: Path, models: dict) -> Split:
    path = cache / f"profile_seed{SEED}_{scenes}.npz"
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        profile(_frames(scenes), scenes * 150, "sidecar", models, desc=f"profile {scenes} new scenes").save(path)
    return Split.build(Profile.load(path))


def _rows_by_sequence(split: Split) -> list[np.ndarray]:
    """context_dataset's rows of each sequence (1 + 3 x (frames - 1) each, in order)."""
    sizes = [1 + 3 * (len(q) - 1) for q in split.profile.sequences()]
    bounds = np.cumsum([0] + sizes)
    return [np.arange(bounds[i], bounds[i + 1]) for i in range(len(sizes))]


def _score(data, inputs, seeds, val, test, costs, budget, scorers) -> tuple[float, float, float]:
    vdata = context_dataset(val)
    out = []
    for seed in range(seeds):
        network, _ = train_bc(data, vdata, seed=seed, loss="values", inputs=inputs, progress=False)
        network = calibrate_cost_weight(network, val, costs, budget)
        row = []
        for split, scorer in zip((val, test), scorers):
            trace = rollout(split, costs, network.choose, streaming=False)
            row += [scorer.score(trace)["map50_95"]]
        row.append(trace.busy_ms / len(test.profile))
        out.append(row)
    return tuple(np.mean(out, axis=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "build/train-v3")
    parser.add_argument("--latency", type=Path, default=ROOT / "training/latency/cpu-2core-family2-wide.json")
    parser.add_argument("--scenes", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=ROOT / "build/extra-scenes")
    args = parser.parse_args()
    settings = Settings(work=args.work)
    costs = Costs.load(args.latency)
    budget = 0.4 * float(costs.ms[-1])
    router, val, test = (load_split(settings, s) for s in ("router", "val", "test"))
    scorers = Scorer(val), Scorer(test)
    large = [s.score(rollout(sp, costs, lambda *_: 2, False))["map50_95"] for sp, s in zip((val, test), scorers)]
    print(f"always-large: validation {large[0]:.2f}, test {large[1]:.2f}; budget {budget:.1f} ms")
    print("| router data | inputs | validation mAP50-95 | test mAP50-95 (share of large) | test cost (ms) |\n"
          "|---|---|---|---|---|", flush=True)
    x, y, u = context_dataset(router)
    rows = _rows_by_sequence(router)
    rng = np.random.default_rng(0)
    for n in (5, 10, 20):
        picks = [np.arange(20)] if n == 20 else [rng.choice(20, n, replace=False) for _ in range(3)]
        results = []
        for pick in picks:
            keep = np.concatenate([rows[i] for i in pick])
            results.append(_score((x[keep], y[keep], u[keep]), "context", args.seeds, val, test, costs, budget, scorers))
        v, t, c = np.mean(results, axis=0)
        print(f"| {n} router sequences{' (3 draws)' if n < 20 else ''} | context | {v:.2f} | {t:.2f} "
              f"({t / large[1]:.1%}) | {c:.1f} |", flush=True)
    extra = extra_split(args.scenes, args.cache, settings.models)
    ex, ey, eu = context_dataset(extra)
    both = np.concatenate([x, ex]), np.concatenate([y, ey]), np.concatenate([u, eu])
    for name, data in ((f"20 router + {args.scenes} new sequences", both),):
        for inputs in ("context", "all"):
            v, t, c = _score(data, inputs, args.seeds, val, test, costs, budget, scorers)
            print(f"| {name} | {inputs} | {v:.2f} | {t:.2f} ({t / large[1]:.1%}) | {c:.1f} |", flush=True)
    v, t, c = _score((x, y, u), "all", args.seeds, val, test, costs, budget, scorers)
    print(f"| 20 router sequences | all | {v:.2f} | {t:.2f} ({t / large[1]:.1%}) | {c:.1f} |", flush=True)


if __name__ == "__main__":
    main()
