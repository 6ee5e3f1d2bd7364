"""Experiment (not part of the package; kept so the README's figures can be reproduced): do the 1024 image
features predict a frame's object count on new scenes when a regression sees more scenes than the router
split's 20, and does that add to the previous frame's nano count, which the router already has?

    python training/experiments/image_features_scenes.py [--scenes 240] [--work build/train-v2]   # ~15 min

Renders `--scenes` new generator-2.0.0 sequences of 45 frames (seed 909090, used by nothing else; every 3rd
frame, through the camera's JPEG round trip), fits a ridge regression from the standardised features to
log1p(objects) on them, on the router split's profile (`--work`, from `train profile`) and on both, picks the L2
strength on the validation split and reports correlations with log1p(objects) on the test split; then a linear
fit (on validation) of log1p(objects) from the previous frame's nano detections and the image prediction.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from adaptive_perception.features import image_features
from adaptive_perception.scenes.benchmark import camera_pixels
from adaptive_perception.scenes.sequence import SequenceSpec, render_sequence
from adaptive_perception.training.profile import PUBLISH_CONF, Profile


def _profile(work: Path, split: str):
    profile = Profile.load(work / f"profile_{split}.npz")
    objects = np.array([int((truth[:, 5] == 0).sum()) for truth in profile.frame_truth()])
    nano = np.array([len(rows) for rows in profile.tier_detections(0, PUBLISH_CONF)], float)
    previous = np.zeros_like(nano)
    for frames in profile.sequences():
        previous[frames[1:]] = nano[frames[:-1]]
    return profile.features[:, :1024].astype(np.float64), objects, np.log1p(previous)


def _ridge(features, objects, l2):
    mean, scale = features.mean(0), features.std(0) + 1e-6
    z = (features - mean) / scale
    target = np.log1p(objects)
    weights = np.linalg.solve(z.T @ z + l2 * len(z) * np.eye(z.shape[1]), z.T @ (target - target.mean()))
    return lambda new: ((new - mean) / scale) @ weights + target.mean()


def _corr(a, b) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=240)
    parser.add_argument("--work", type=Path, default=Path("build/train-v2"))
    args = parser.parse_args()
    features, objects = [], []
    for index in range(args.scenes):
        for k, frame in enumerate(render_sequence(SequenceSpec(909090, index, 45, version="2.0.0"))):
            if k % 3 == 0:
                features.append(image_features(camera_pixels(frame.rgb)))
                objects.append(sum(not t.ignore for t in frame.truths))
    many = (np.asarray(features, np.float64), np.asarray(objects))
    router, val, test = (_profile(args.work, s) for s in ("router", "val", "test"))
    sets = {"router split (20 scenes)": router[:2], f"{args.scenes} new scenes": many,
            "both": (np.vstack([router[0], many[0]]), np.r_[router[1], many[1]])}
    for name, (x, y) in sets.items():
        score, l2 = max((_corr(_ridge(x, y, l2)(val[0]), np.log1p(val[1])), l2) for l2 in (0.01, 0.1, 1, 10, 100))
        test_corr = _corr(_ridge(x, y, l2)(test[0]), np.log1p(test[1]))
        print(f"{name}: {len(x)} frames, L2 {l2}: validation {score:.3f}, test {test_corr:.3f}")
    image = _ridge(*many, max((_corr(_ridge(*many, l2)(val[0]), np.log1p(val[1])), l2)
                              for l2 in (0.01, 0.1, 1, 10, 100))[1])
    design = lambda split: np.c_[split[2], image(split[0]), np.ones(len(split[1]))]  # noqa: E731
    coef = np.linalg.lstsq(design(val), np.log1p(val[1]), rcond=None)[0]
    print(f"test: previous nano count {_corr(test[2], np.log1p(test[1])):.3f}, image {_corr(image(test[0]), np.log1p(test[1])):.3f}, "
          f"both {_corr(design(test) @ coef, np.log1p(test[1])):.3f}")


if __name__ == "__main__":
    main()
