"""Experiment (not part of the package; kept so the README's figures can be reproduced): is `make demo`'s recall
comparison (one test sequence) what the whole test split shows?

    python training/experiments/demo_recall_split.py [--work build/train-v3]   # ~1 min; after `train profile`

`make demo` replays test sequence 49 in lock step (every frame processed) and compares the learned mode at the
per-frame weight with the heuristic by recall@0.5 per scene regime; its moderate regime holds 23 frames. Here the
same modes route every frame of the test profile (each tier's detections already recorded, published at the
node's conf_threshold) and the same recall is counted per regime, on sequence 49 (to check the profile reproduces the
demo) and on all 14 test sequences, with each mode's mean inference cost from the profile's latencies.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from adaptive_perception.config import NodeConfig, resolve_model
from adaptive_perception.policy import Policy
from adaptive_perception.router import RouterSettings
from adaptive_perception.ros.demo import DEMO_SEQUENCE, PER_FRAME_WEIGHT, recall_at_50
from adaptive_perception.scenes.sequence import Regime
from adaptive_perception.training.labels import Costs
from adaptive_perception.training.pipeline import Settings, load_split
from adaptive_perception.training.report import heuristic_chooser, learned_chooser
from adaptive_perception.training.simulate import rollout

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "build/train-v3")
    args = parser.parse_args()
    settings = Settings(work=args.work)
    test = load_split(settings, "test")
    profile = test.profile
    costs = Costs.load(settings.work / "costs.json")
    policy = Policy(resolve_model("embedded:policy"))
    detections = [profile.tier_detections(t, NodeConfig().conf_threshold) for t in range(3)]
    truth = profile.frame_truth()
    modes = {f"learned:{PER_FRAME_WEIGHT}": learned_chooser(policy, PER_FRAME_WEIGHT),
             "heuristic (3, 8)": heuristic_chooser(RouterSettings().heuristic_thresholds)}
    scopes = {f"sequence {DEMO_SEQUENCE}": profile.sequence == DEMO_SEQUENCE,
              "all test sequences": np.ones(len(profile), bool)}
    print("| mode | frames | inference mean (ms) | recall@0.5 sparse / moderate / dense | frames per regime |")
    print("|---|---|---|---|---|")
    for mode, chooser in modes.items():
        trace = rollout(test, costs, chooser, False)
        tiers = np.empty(len(profile), int)
        tiers[np.asarray(trace.processed_frames)] = np.asarray(trace.processed_tiers)
        for scope, mask in scopes.items():
            found = np.zeros((len(Regime), 2))
            for f in np.flatnonzero(mask):
                boxes = detections[tiers[f]][f][:, :4].astype(np.float64)
                found[profile.regime[f]] += recall_at_50([tuple(g[:4]) for g in truth[f] if not g[5]], boxes)
            frames = np.bincount(profile.regime[mask], minlength=len(Regime))
            recall = " / ".join(f"{h / t:.2f}" if t else "-" for h, t in found)
            print(f"| {mode}, {scope} | {mask.sum()} | {costs.ms[tiers[mask]].mean():.1f} | {recall} | "
                  f"{' / '.join(map(str, frames))} |")


if __name__ == "__main__":
    main()
