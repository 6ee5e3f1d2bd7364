"""Experiment (kept so the README's figure can be reproduced): does the drift monitor call a fixed-tier baseline
drift on in-distribution scenes? It did before the tier mix and audit agreement were left out of the score while
the node routes otherwise than the drift reference measured them (`drift.routing_difference`).

    python training/experiments/baseline_mode_drift.py [--work build/train-v3]   # seconds; after `train profile`

The embedded policy's reference; the validation and test profiles' frames (in distribution, scenes the reference
never saw) back to back per split, every frame routed to one tier, the monitor fed as the node feeds it (no audits).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from adaptive_perception.detector import TIERS
from adaptive_perception.drift import DRIFT, DriftMonitor, routing_difference
from adaptive_perception.policy import Policy
from adaptive_perception.training.pipeline import Settings, load_split

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "build/train-v3")
    args = parser.parse_args()
    reference = Policy(ROOT / "src/adaptive_perception/models/policy.onnx").drift_reference
    print("| split | frames | mode | mix and audits | first DRIFT (frame) | frames in DRIFT |\n|---|---|---|---|---|---|")
    for name in ("val", "test"):
        profile = load_split(Settings(work=args.work), name).profile
        for tier, tier_name in enumerate(TIERS):
            mode = f"fixed:{tier_name}"
            for reason in ("", routing_difference(reference, mode, None, 0.0)):
                monitor = DriftMonitor(reference)
                monitor.set_routing_difference(reason)
                states = [monitor.update(features, tier, veil)[0] for features, veil in zip(profile.features, profile.veil)]
                first = states.index(DRIFT) + 1 if DRIFT in states else "-"
                print(f"| {name} | {len(states)} | {mode} | {'left out' if reason else 'compared'} | {first} | "
                      f"{int(np.sum(np.asarray(states) == DRIFT))} |")


if __name__ == "__main__":
    main()
