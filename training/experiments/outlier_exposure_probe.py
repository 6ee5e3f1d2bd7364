"""Experiment (not part of the package; kept so the README's figures can be reproduced): can the drift monitor learn
what the training grounds look like, by telling them from grounds it will never meet (outlier exposure)?

    python training/experiments/outlier_exposure_probe.py [--work build/train-v3]   # ~9 min on 2 cores

The 1024 image features already separate one scene's ground from another's, yet a new ground sits inside the range
of new in-distribution scenes for every unsupervised statistic measured (PSI, kNN, texture energy and novelty). Here
a linear classifier (logistic regression on standardised features, balanced classes) learns in-distribution frames
(the router split's 3,000, from `--work`'s profile) against frames of the same generator whose ground is one of six
other photographs bundled with scikit-image, chosen before any result and used neither as a ground nor as clutter
anywhere else (OUTLIER_GROUNDS; 4 sequences each, every 3rd frame). Per 150-frame scene (a drift window), the mean
of its decision function. In range: the validation and test splits' 16 scenes and 24 new in-distribution scenes
(HELD_SEED); to catch: new_domain's grounds (moon, text) and small objects (10 scenes each, seed 919191,
plus the drift report's 2), and, to see, night and fog (4 each). Also each outlier ground left out of training in
turn, scored as a new ground (the check that the classifier learned "a training ground", not "these six"). No
preset's frame is seen in training or in choosing anything; every regularisation tried is printed.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from adaptive_perception.features import IMAGE_FEATURES, image_features
from adaptive_perception.progress import progress
from adaptive_perception.scenes import render, sequence
from adaptive_perception.scenes.benchmark import camera_pixels
from adaptive_perception.scenes.sequence import Drift, SequenceSpec, render_sequence
from adaptive_perception.training.drift_report import stream_specs
from adaptive_perception.training.pipeline import Settings, _profile_path
from adaptive_perception.training.profile import Profile

ROOT = Path(__file__).resolve().parents[2]
VERSION, WINDOW, STEP = "2.0.0", 150, 3
OUTLIER_GROUNDS = ("cell.png", "hubble_deep_field.jpg", "ihc.png", "microaneurysms.png", "retina.jpg",
                   "clock_motion.png")
OUTLIER_SEED, HELD_SEED, TARGET_SEED = 616161, 737373, 919191
C_GRID = (0.01, 0.1, 1.0)


GROUNDS_USED: list[str] = []  # the ground photograph of each sequence rendered, in order


def scene_features(spec: SequenceSpec, ground: str | None = None) -> np.ndarray:
    """(frames, 1024) image features of every STEP-th frame as a camera delivers it; `ground`: render the sequence
    as a new-domain one on that photograph."""
    saved, load = render.GROUND_TEXTURES["new_domain"], sequence.photo
    if ground is not None:
        render.GROUND_TEXTURES["new_domain"] = (ground,)
    grounds = set(render.GROUND_TEXTURES["train"] + render.GROUND_TEXTURES["new_domain"])
    sequence.photo = lambda name: (GROUNDS_USED.append(name) if name in grounds else None) or load(name)
    try:
        return np.stack([image_features(camera_pixels(frame.rgb))
                         for i, frame in enumerate(render_sequence(spec)) if i % STEP == 0])
    finally:
        render.GROUND_TEXTURES["new_domain"], sequence.photo = saved, load


def profile_scenes(work: Path, split: str) -> list[np.ndarray]:
    profile = Profile.load(_profile_path(Settings(work=work), split))
    return [profile.features[frames, :IMAGE_FEATURES] for frames in profile.sequences()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "build/train-v3")
    args = parser.parse_args()
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    inside = np.concatenate(profile_scenes(args.work, "router"))
    outliers = {ground: [scene_features(SequenceSpec(OUTLIER_SEED, 10 * k + i, WINDOW, drift=Drift.NEW_DOMAIN,
                                                     version=VERSION), ground) for i in range(4)]
                for k, ground in enumerate(progress(OUTLIER_GROUNDS, desc="outlier grounds", unit="ground"))}
    held = profile_scenes(args.work, "val") + profile_scenes(args.work, "test") + [
        scene_features(SequenceSpec(HELD_SEED, i, WINDOW, version=VERSION))
        for i in progress(range(24), desc="held-out scenes", unit="scene")]
    targets = {}
    for preset, count in ((Drift.NEW_DOMAIN, 10), (Drift.SMALL_OBJECTS, 10), (Drift.NIGHT, 4), (Drift.FOG, 4)):
        specs = [SequenceSpec(TARGET_SEED + len(targets), i, WINDOW, drift=preset, version=VERSION)
                 for i in range(count)]
        if preset in (Drift.NEW_DOMAIN, Drift.SMALL_OBJECTS):
            specs += stream_specs(preset, 5, 2, WINDOW, VERSION)[1]
        start = len(GROUNDS_USED)
        targets[preset.value] = [scene_features(s) for s in progress(specs, desc=preset.value, unit="scene")]
        if preset is Drift.NEW_DOMAIN:
            new_grounds = GROUNDS_USED[start:]
            assert len(new_grounds) == len(specs), "one ground per sequence"

    def fit(grounds: list[str], c: float):
        x = np.concatenate([inside, *(f for g in grounds for f in outliers[g])])
        y = np.r_[np.zeros(len(inside)), np.ones(len(x) - len(inside))]
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000)
                             ).fit(x, y)

    def scores(model, scenes: list[np.ndarray]) -> np.ndarray:
        return np.array([model.decision_function(s).mean() for s in scenes])

    print("\nper-scene mean decision function; 'above' = scenes over the held-out in-distribution maximum")
    print("| C | held-out in-distribution (40 scenes) min / median / max | " + " | ".join(targets)
          + " | left-out outlier grounds above (of 4 each) |")
    print("|---|---|" + "---|" * len(targets) + "---|")
    details = []
    for c in C_GRID:
        model = fit(list(OUTLIER_GROUNDS), c)
        inside_scores = scores(model, held)
        top = inside_scores.max()
        cells = []
        for scenes in targets.values():
            s = scores(model, scenes)
            cells.append(f"{(s > top).sum()} of {len(s)} above ({s.min():+.2f} to {s.max():+.2f})")
        left = []
        for ground in OUTLIER_GROUNDS:
            rest = fit([g for g in OUTLIER_GROUNDS if g != ground], c)
            top_rest = scores(rest, held).max()
            left.append(f"{ground.split('.')[0]} {(scores(rest, outliers[ground]) > top_rest).sum()}")
        print(f"| {c:g} | {inside_scores.min():+.2f} / {np.median(inside_scores):+.2f} / {top:+.2f} | "
              + " | ".join(cells) + " | " + ", ".join(left) + " |")
        details.append(f"C {c:g}, new_domain scenes (the drift report's two last), held-out max {top:+.2f}: " + ", ".join(
            f"{g.split('.')[0]} {v:+.2f}" for g, v in zip(new_grounds, scores(model, targets["new_domain"]))))
    print("\n".join(details))


if __name__ == "__main__":
    main()
