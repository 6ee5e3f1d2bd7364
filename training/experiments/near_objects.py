"""Experiment (not part of the package; kept so the README's figures can be reproduced): what does a tier do with
the near objects (at least 128 px a side) it scores badly on: miss them, box them wrongly, or name them wrongly?

    python training/experiments/near_objects.py build/train-v2/profile_test.npz [more profiles]   # seconds

Per profile (`train profile` output: every tier's detections with score >= 0.01) and tier: for each valid
ground-truth object of at least 128 px a side, the detection overlapping it most (any class, any score): its IoU,
whether its class is the object's, and its score. A tier that finds the object's extent but names another class
scores at IoU 0.5 as a miss plus a false positive.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from adaptive_perception.detector import TIERS, box_iou
from adaptive_perception.training.profile import Profile

NEAR_SIDE = 128.0


def best_overlaps(profile: Profile, tier: int) -> np.ndarray:
    """(K, 3) per near object: best IoU, class right (0/1), that detection's score (zeros where none)."""
    rows = []
    for truth, found in zip(profile.frame_truth(), profile.tier_detections(tier, 0.01)):
        for box in truth[truth[:, 5] == 0]:
            if np.sqrt((box[2] - box[0]) * (box[3] - box[1])) < NEAR_SIDE:
                continue
            if len(found) == 0:
                rows.append((0.0, 0.0, 0.0))
                continue
            iou = box_iou(found[:, :4].astype(np.float64), box[None, :4].astype(np.float64))[:, 0]
            k = int(np.argmax(iou))
            rows.append((float(iou[k]), float(found[k, 5] == box[4]), float(found[k, 4])))
    return np.asarray(rows).reshape(-1, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profiles", type=Path, nargs="+")
    args = parser.parse_args()
    print("| profile | tier | near objects | best IoU >= 0.5 | of those, right class | their median score | "
          "right class and IoU >= 0.5 |\n|---|---|---|---|---|---|---|")
    for path in args.profiles:
        profile = Profile.load(path)
        for tier, name in enumerate(TIERS):
            rows = best_overlaps(profile, tier)
            boxed = rows[:, 0] >= 0.5
            right = rows[boxed, 1].mean() if boxed.any() else 0.0
            score = np.median(rows[boxed, 2]) if boxed.any() else 0.0
            print(f"| {path} | {name} | {len(rows)} | {boxed.mean():.0%} | {right:.0%} | {score:.2f} | "
                  f"{(boxed & (rows[:, 1] == 1)).mean():.0%} |")


if __name__ == "__main__":
    main()
