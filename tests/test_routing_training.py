"""The training pipeline's building blocks on hand-made profiles: F1 labels, oracles, the streaming simulator,
the PPO environment and the bootstrap's re-accumulation of COCOeval."""
from __future__ import annotations

import json

import numpy as np
import pytest

from adaptive_perception.features import IMAGE_FEATURES
from adaptive_perception.training.labels import Costs, budget_oracle, frame_f1, optimal_tiers
from adaptive_perception.training.profile import Profile
from adaptive_perception.training.simulate import FRAME_PERIOD_S, Split, Stream, rollout

BOX = [10.0, 10.0, 50.0, 50.0]


def test_frame_f1_averages_over_iou_thresholds_and_skips_ignore_regions():
    truth = np.array([[*BOX, 1, 0]])
    assert frame_f1(np.array([[*BOX, 0.9, 1]]), truth) == 1.0
    assert frame_f1(np.array([[*BOX, 0.9, 2]]), truth) == 0.0  # wrong class: one FP and one FN
    shifted = np.array([[10.0, 10.0, 50.0, 58.0, 0.9, 1]])  # IoU 40*40 / (40*48) = 0.833: matched up to 0.80
    assert frame_f1(shifted, truth) == pytest.approx(0.7)
    assert frame_f1(np.zeros((0, 6)), np.zeros((0, 6))) == 1.0
    assert frame_f1(np.zeros((0, 6)), truth) == 0.0
    with_ignore = np.array([[*BOX, 1, 0], [100.0, 100.0, 140.0, 140.0, 1, 1]])
    two = np.array([[*BOX, 0.9, 1], [100.0, 100.0, 140.0, 140.0, 0.8, 1]])
    assert frame_f1(two, with_ignore) == 1.0  # the detection on the ignore region counts neither way
    assert frame_f1(two, truth) == pytest.approx(2 / 3)  # without it, that detection is a false positive


def _profile(frames: int, sequences: int = 1) -> Profile:
    rng = np.random.default_rng(0)
    per = frames // sequences
    return Profile(features=rng.normal(size=(frames, IMAGE_FEATURES)).astype(np.float32),
                   latency_ms=np.tile([10.0, 40.0, 100.0], (frames, 1)).astype(np.float32),
                   sequence=np.repeat(np.arange(sequences), per), stamp_ns=np.arange(frames) * 33_333_333,
                   regime=np.zeros(frames, np.int64),
                   detections=np.array([[f, t, *BOX, 0.5 + 0.1 * t, 1] for f in range(frames) for t in range(3)
                                        if t >= f % 3], np.float32),
                   truth=np.array([[f, *BOX, 1, 0] for f in range(frames)], np.float32), meta={"truth": "sidecar"})


def test_oracles_pick_the_best_tier_per_frame_and_respect_the_budget():
    quality = np.array([[0.2, 0.6, 0.9], [0.5, 0.5, 0.55], [0.0, 0.1, 0.8], [0.9, 0.9, 0.9]])
    costs = Costs("test device", np.array([10.0, 40.0, 100.0]))
    assert optimal_tiers(quality, costs, 0.0).tolist() == [2, 2, 2, 0]  # ties go to the cheaper tier
    assert optimal_tiers(quality, costs, 0.3).tolist() == [2, 0, 2, 0]
    assert optimal_tiers(quality, costs, 0.5).tolist() == [1, 0, 2, 0]  # small and large tie on frame 0
    for budget in (10.0, 32.5, 55.0, 100.0):
        tiers = budget_oracle(quality, costs, budget)
        assert costs.ms[tiers].mean() <= budget + 1e-9
        # no single swap to another tier improves quality without breaking the budget
        for f in range(len(quality)):
            for t in range(3):
                swapped = tiers.copy()
                swapped[f] = t
                if costs.ms[swapped].mean() <= budget:
                    assert quality[np.arange(4), swapped].sum() <= quality[np.arange(4), tiers].sum() + 1e-9


def test_streaming_drops_frames_while_a_slow_tier_runs_and_scores_them_stale():
    split = Split.build(_profile(9))
    costs = Costs("test", np.array([10.0, 40.0, 100.0]))  # at 30 Hz: nano 1 frame, small 1, large 3
    stream = Stream(split, np.arange(9), costs, streaming=True)
    covered, quality = stream.step(2)
    assert [c[0] for c in covered] == [0, 1, 2] and all(c[1:] == (0, 2) for c in covered)
    assert quality == pytest.approx(split.quality[0, 2, 0] + split.quality[0, 2, 1] + split.quality[0, 2, 2])
    assert stream.frame == 3 and stream.context.prev_tier == 2
    assert stream.context.dt_s == pytest.approx(3 * FRAME_PERIOD_S) and stream.context.prev_count == 1
    per_frame = rollout(split, costs, lambda *_: 2, streaming=False)
    streaming = rollout(split, costs, lambda *_: 2, streaming=True)
    assert len(per_frame.processed_tiers) == 9 and len(streaming.processed_tiers) == 3
    assert streaming.shown[:, 0].tolist() == [0, 0, 0, 3, 3, 3, 6, 6, 6]


def test_context_in_the_observation_follows_the_chosen_tier():
    split = Split.build(_profile(6))
    costs = Costs("test", np.array([10.0, 20.0, 30.0]))
    contexts = []
    rollout(split, costs, lambda f, obs, ctx: contexts.append(obs[IMAGE_FEATURES:].copy()) or f % 3, streaming=False)
    # frame f routed to tier f % 3 publishes the detections of tiers >= f % 3 made for it: exactly one
    assert contexts[0].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert contexts[1][2] == pytest.approx(1 / 3) and contexts[2][2] == pytest.approx(2 / 3)
    assert contexts[1][0] == pytest.approx(np.log1p(1)) and contexts[1][3] == pytest.approx(FRAME_PERIOD_S)


def test_routing_env_passes_the_gymnasium_checker_and_is_sequential():
    from gymnasium.utils.env_checker import check_env

    from adaptive_perception.training.learn import Network, make_env

    split = Split.build(_profile(12, sequences=2))
    costs = Costs("test", np.array([10.0, 40.0, 100.0]))
    network = Network([(np.zeros((1028, 3), np.float32), np.zeros(3, np.float32))], np.zeros(1028, np.float32),
                      np.ones(1028, np.float32))
    env = make_env(split, costs, 0.2, network)
    check_env(env, skip_render_check=True)
    observation, _ = env.reset(seed=3)
    _, reward, done, _, info = env.step(2)
    assert info["frames"] == 3 and not done
    assert reward == pytest.approx(sum(split.quality[env.stream.frames[0], 2, :3]) - 0.2)
    next_observation, *_ = env.step(0)
    assert observation[1026] == 0.0 and env.stream.context.prev_tier == 0


def test_bootstrap_reaccumulation_equals_cocoeval():
    from adaptive_perception.training.evaluate import Scorer, accumulate_all

    profile = _profile(9, sequences=3)
    profile.detections = np.concatenate([profile.detections, [[4, 0, 200, 200, 240, 240, 0.3, 2]]]).astype(np.float32)
    split = Split.build(profile)
    costs = Costs("test", np.array([10.0, 40.0, 100.0]))
    scorer = Scorer(split)
    trace = rollout(split, costs, lambda f, *_: f % 3, streaming=False)
    evaluator = scorer._evaluator(trace)
    reaccumulated = accumulate_all(evaluator, len(profile))
    assert reaccumulated == pytest.approx((evaluator.stats[0] * 100, evaluator.stats[1] * 100), abs=1e-9)
    scored = scorer.score(trace, resamples=5)
    assert len(scored["replicates"]) == 5 and all(0 <= m <= 100 for m, _ in scored["replicates"])


def test_latency_file_is_validated(tmp_path):
    good = tmp_path / "jetson.json"
    good.write_text(json.dumps({"device": "Jetson Orin NX", "tiers_ms": {"nano": 4.0, "small": 8.0, "large": 20.0}}))
    costs = Costs.load(good)
    assert costs.device == "Jetson Orin NX" and costs.relative.tolist() == [0.2, 0.4, 1.0]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"device": "x", "tiers_ms": {"nano": 4.0}}))
    with pytest.raises(Exception, match="latency file .*bad.json.*tiers_ms"):
        Costs.load(bad)
