"""The training pipeline's building blocks on hand-made profiles: F1 labels, oracles, the streaming simulator,
the PPO environment and the bootstrap's re-accumulation of COCOeval."""
from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace
from fractions import Fraction

import numpy as np
import pytest

from adaptive_perception.errors import AdaptivePerceptionError
from adaptive_perception.features import IMAGE_FEATURES
from adaptive_perception.training.labels import Costs, budget_oracle, frame_value, optimal_tiers, streaming_labels
from adaptive_perception.training.profile import Profile
from adaptive_perception.training.evaluate import cost_columns
from adaptive_perception.training.simulate import Split, Stream, WorkerClock, rollout

BOX = [10.0, 10.0, 50.0, 50.0]


def test_frame_value_counts_true_and_false_positives_over_iou_thresholds():
    truth = np.array([[*BOX, 1, 0]])
    assert frame_value(np.array([[*BOX, 0.9, 1]]), truth) == 1.0
    assert frame_value(np.array([[*BOX, 0.9, 2]]), truth) == pytest.approx(-0.3)  # wrong class: a false positive
    shifted = np.array([[10.0, 10.0, 50.0, 58.0, 0.9, 1]])  # IoU 40*40 / (40*48) = 0.833: a TP at 0.50-0.80 (7 of 10)
    assert frame_value(shifted, truth) == pytest.approx(0.7 - 0.3 * 0.3)
    assert frame_value(np.zeros((0, 6)), np.zeros((0, 6))) == 0.0
    assert frame_value(np.zeros((0, 6)), truth) == 0.0
    with_ignore = np.array([[*BOX, 1, 0], [100.0, 100.0, 140.0, 140.0, 1, 1]])
    two = np.array([[*BOX, 0.9, 1], [100.0, 100.0, 140.0, 140.0, 0.8, 1]])
    assert frame_value(two, with_ignore) == 1.0  # the detection on the ignore region counts neither way
    assert frame_value(two, truth) == pytest.approx(0.7)  # without it, that detection is a false positive
    crowd = np.array([[x, 10.0, x + 40.0, 50.0, 1, 0] for x in (0.0, 100.0, 200.0)])
    found = np.array([[x, 10.0, x + 40.0, 50.0, 0.8, 1] for x in (0.0, 100.0, 200.0)])
    assert frame_value(found, crowd) == 3.0  # pooled like mAP: three objects found weigh three times one


def _profile(frames: int, sequences: int = 1, step: float = 0.0) -> Profile:
    """One box a frame, seen by tier t on frame f where t >= f % 3; `step`: the box moves that many pixels right
    per frame (detections and truth alike), so an output shown k frames late overlaps its truth less."""
    rng = np.random.default_rng(0)
    per = frames // sequences

    def box(f: int) -> list[float]:
        return [BOX[0] + step * f, BOX[1], BOX[2] + step * f, BOX[3]]

    return Profile(features=rng.normal(size=(frames, IMAGE_FEATURES)).astype(np.float32),
                   latency_ms=np.tile([10.0, 40.0, 100.0], (frames, 1)).astype(np.float32),
                   sequence=np.repeat(np.arange(sequences), per), stamp_ns=np.arange(frames) * 33_333_333,
                   regime=np.zeros(frames, np.int64),
                   detections=np.array([[f, t, *box(f), 0.5 + 0.1 * t, 1] for f in range(frames) for t in range(3)
                                        if t >= f % 3], np.float32),
                   truth=np.array([[f, *box(f), 1, 0] for f in range(frames)], np.float32), meta={"truth": "sidecar", "frame_hw": [100, 160]})


def test_oracles_pick_the_best_tier_per_frame_and_respect_the_budget():
    quality = np.array([[0.2, 0.6, 0.9], [0.5, 0.5, 0.55], [0.0, 0.1, 0.8], [0.9, 0.9, 0.9]])
    costs = Costs("test device", np.array([10.0, 40.0, 100.0]))
    assert optimal_tiers(quality, costs, 0.0).tolist() == [2, 2, 2, 0]  # ties go to the cheaper tier
    assert optimal_tiers(quality, costs, 0.3).tolist() == [2, 0, 2, 0]
    assert optimal_tiers(quality, costs, 0.5).tolist() == [1, 0, 2, 0]  # small and large tie on frame 0
    # against every one of the 81 assignments: the best total within each mean-cost budget, by hand 1.6 (all nano:
    # 0.2 + 0.5 + 0.0 + 0.9), 2.4 (frame 2 on large: 130 ms of 130), 3.1, 3.15 (large where it is best)
    import itertools

    def best(budget: float) -> float:
        return max(sum(quality[f, t] for f, t in enumerate(choice)) for choice in itertools.product(range(3), repeat=4)
                   if costs.ms[list(choice)].mean() <= budget + 1e-9)

    assert [round(best(b), 6) for b in (10.0, 32.5, 55.0, 100.0)] == [1.6, 2.4, 3.1, 3.15]
    for budget in (10.0, 32.5, 55.0, 100.0):
        tiers = budget_oracle(quality, costs, budget)
        total = quality[np.arange(4), tiers].sum()
        assert costs.ms[tiers].mean() <= budget + 1e-9
        if budget == 32.5:  # the greedy fill's known miss: frame 0's upgrade gains most per ms (0.7 for 90 ms),
            # after which frame 2's bigger one (0.8 for 90 ms) no longer fits
            assert tiers.tolist() == [2, 0, 0, 0] and total == pytest.approx(2.3)
        else:
            assert total == pytest.approx(best(budget)), budget


def test_the_random_baseline_holds_the_mix_exactly_by_largest_remainder():
    from adaptive_perception.training.report import _exact_mix_chooser

    # 7 frames at 50/30/20 %: 3.5, 2.1 and 1.4 frames; floors 3, 2, 1 and the one left over to the largest
    # remainder (nano's 0.5): 4, 2, 1
    orders = []
    for seed in (0, 1, 2):
        choose = _exact_mix_chooser({"nano": 0.5, "small": 0.3, "large": 0.2}, 7, seed)
        order = [choose(frame) for frame in range(7)]
        assert np.bincount(order, minlength=3).tolist() == [4, 2, 1]
        with pytest.raises(StopIteration):  # one decision per frame, no more
            choose(7)
        orders.append(order)
    assert len({tuple(o) for o in orders}) > 1  # shuffled per seed


def test_evidence_is_cut_into_segments_per_bag_and_every_third_segment_of_the_recording_is_held_out():
    from adaptive_perception.training.retrain import segment, split_segments

    # two bags of 35 and 40 frames, 10-frame segments: bag 0 -> segments 0-3 (the last 5 frames long), bag 1 -> 4-7
    profile = replace(_profile(75), sequence=np.repeat([0, 1], [35, 40]))
    cut = segment(profile, 10)
    assert cut.sequence.tolist() == [0] * 10 + [1] * 10 + [2] * 10 + [3] * 5 + [4] * 10 + [5] * 10 + [6] * 10 + [7] * 10
    # segments 2 and 5 (every third, counted over the whole recording) are held out: frames 20-29 and 45-54
    training, held = split_segments(cut, 3)
    assert held.stamp_ns.tolist() == [f * 33_333_333 for f in [*range(20, 30), *range(45, 55)]]
    assert len(training) == 55 and not set(training.stamp_ns.tolist()) & set(held.stamp_ns.tolist())
    with pytest.raises(AdaptivePerceptionError, match="the gate needs at least 8"):
        split_segments(segment(profile, 20), 4)  # 4 segments: too few to hold out every fourth twice


def test_streaming_labels_score_each_tier_on_the_frame_its_output_lands_on():
    # quality[f, t, k] = 100 t + k: the label tells which staleness k was read for tier t
    quality = np.tile(100.0 * np.arange(3)[:, None] + np.arange(7)[None, :], (2, 1, 1))
    costs = Costs("test device", np.array([16.5, 33.4, 100.0]))
    # at 30 Hz (33.33 ms): 16.5 ms lands before frame f + 1, 33.4 ms just after it (frame f + 2), 100 ms exactly
    # as frame f + 3 arrives, which then shows it
    assert streaming_labels(quality, costs, 30.0)[0].tolist() == [1.0, 102.0, 203.0]
    # at 12 Hz (83.33 ms): 16.5 and 33.4 ms land before frame f + 1, 100 ms before frame f + 2
    assert streaming_labels(quality, costs, 12.0)[0].tolist() == [1.0, 101.0, 202.0]
    # slower than the stored staleness: the last stored column (what the simulator also uses)
    assert streaming_labels(quality, Costs("slow", np.array([16.5, 33.4, 400.0])), 30.0)[0, 2] == 206.0


def _processed(cost_ms: float, frames: int) -> list[int]:
    clock = WorkerClock(frames)
    processed = []
    while not clock.done:
        processed.append(clock.run(Fraction(str(cost_ms)) / 1000)[0])
    return processed


# Worked by hand on a 30 Hz clock (frame i arrives at i x 33.33 ms; the worker takes the newest frame arrived
# by the end of its job, a frame arriving exactly then included, or waits for the next one).
HAND_SCHEDULES = {
    20.0: list(range(13)),  # done before the next frame arrives: every frame
    # 0-40, 1: 40-80, 2: 80-120, 3: 120-160, 4: 160-200; frame 6 arrives at 200 exactly and replaces 5
    40.0: [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 12],
    # 0-46, 1: 46-92, 2: 92-138, 4: 138-184 (3 replaced at 133.3), 5: 184-230, 6: 230-276, 8: 276-322, ...
    46.0: [0, 1, 2, 4, 5, 6, 8, 9, 11, 12, 13, 15, 16, 17, 19],
    # job k ends at 101.5 k ms: 3 frames on, but the 1.5 ms a job carries add up; by 2334.5 ms (k = 23)
    # frame 70 (2333.3 ms) has arrived, so 67-69 are all skipped: 66 -> 70, not 66 -> 69
    101.5: [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33, 36, 39, 42, 45, 48, 51, 54, 57, 60, 63, 66, 70, 73, 76],
}


@pytest.mark.parametrize("cost_ms", sorted(HAND_SCHEDULES))
def test_worker_clock_matches_hand_computed_schedules(cost_ms):
    expected = HAND_SCHEDULES[cost_ms]
    assert _processed(cost_ms, expected[-1] + 1) == expected


def test_streaming_shows_the_output_standing_at_each_frame_and_never_exceeds_a_full_duty_cycle():
    split = Split.build(_profile(12))
    costs = Costs("test", np.array([10.0, 46.0, 101.5]))
    trace = rollout(split, costs, lambda *_: 1, streaming=True)
    assert trace.processed_frames == [0, 1, 2, 4, 5, 6, 8, 9, 11]
    # outputs published at 46 (frame 0), 92 (1), 138 (2), 184 (4), 230 (5), 276 (6), 322 (8), 368 (9):
    # frames 0 and 1 arrive before the first output; frame 8 (266.7) still shows frame 5's output
    assert trace.shown[:, 0].tolist() == [-1, -1, 0, 1, 1, 2, 4, 5, 5, 6, 8, 8]
    # each frame scores the output it shows against its own truth, k frames after the frame that output is of:
    # k = [-, -, 2, 2, 3, 3, 2, 2, 3, 3, 2, 3]. The box moves 4 px a frame, so k frames late a 40 x 40 box overlaps
    # its truth by IoU (40 - 4k) x 40 / (3200 - (40 - 4k) x 40): k=1 0.818 (a hit at 7 of 10 IoU thresholds:
    # 0.7 - 0.3 x 0.3 = 0.61), k=2 0.667 (4 of 10: 0.22), k=3 0.538 (1: -0.17), k>=4 below 0.5 (-0.3)
    moving = Split.build(_profile(12, step=4.0))
    assert moving.quality[0, 1, :].tolist() == pytest.approx([1.0, 0.61, 0.22, -0.17, -0.3, -0.3, -0.3])
    assert moving.quality[10, 1, 2:].tolist() == pytest.approx([0.61] * 5)  # truth ends at frame 11: it repeats
    # small finds the box on frames f % 3 < 2 only: frames 5, 7, 8, 10 and 11 show an empty output of frame 2, 5
    # or 8 (0: a miss, no false positive)
    shown = rollout(moving, costs, lambda *_: 1, streaming=True)
    assert shown.quality.tolist() == pytest.approx([0, 0, .22, .22, -.17, 0, .22, 0, 0, -.17, 0, 0])
    large = rollout(split, costs, lambda *_: 2, streaming=True)
    assert large.processed_frames == [0, 3, 6, 9]
    assert large.busy_ms == pytest.approx(400.0)  # 4 x 101.5 ms, the last job cut at the clip's end (400 ms)
    assert cost_columns(split, large, costs)["mean_cost_ms"] == pytest.approx(400.0 / 12)  # 100 % duty cycle
    per_frame = rollout(split, costs, lambda *_: 2, streaming=False)
    assert per_frame.shown[:, 0].tolist() == list(range(12)) and per_frame.busy_ms == pytest.approx(12 * 101.5)


def test_stream_step_returns_the_frames_its_predecessor_covered():
    split = Split.build(_profile(9))
    costs = Costs("test", np.array([10.0, 40.0, 100.0]))
    stream = Stream(split, np.arange(9), costs, streaming=True)
    covered, quality = stream.step(2)  # frame 0 on large: published at 100 ms, when frame 3 arrives
    assert covered == [(0, -1, -1), (1, -1, -1), (2, -1, -1)]
    assert quality == pytest.approx(float(split.empty[:3].sum()))
    # frame 0's large output: one 40 x 40 box on the 160 x 100 frame -> sqrt(1600 / 16000)
    assert stream.frame == 3 and stream.context.prev_tier == 2 and stream.context.prev_count == 1
    assert stream.context.prev_median_size == pytest.approx(np.sqrt(0.1))
    covered, _ = stream.step(0)  # frame 3 on nano: 100-110 ms; frame 3 showed frame 0's output
    assert covered == [(3, 0, 2)] and stream.frame == 4
    assert stream.context.prev_tier == 0 and stream.context.prev_count == 1  # frame 3 % 3 == 0: nano found it


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
    # large publishes at 100 ms: the first three frames showed nothing, and the step is charged large's cost
    assert info["frames"] == 3 and not done
    assert reward == pytest.approx(float(split.empty[env.stream.frames[:3]].sum()) - 0.2)
    next_observation, *_ = env.step(0)
    assert observation[1026] == 0.0 and env.stream.context.prev_tier == 0


def test_bootstrap_reaccumulation_equals_cocoeval():
    """Three sequences of three frames, one box each. Large (frames 0-2) finds all three at score 0.7; nano
    (frames 3-8) finds frames 3 and 6 at 0.5. A false positive of the box's class sits on frame 4."""
    from adaptive_perception.training.evaluate import Scorer, accumulate_all

    costs = Costs("test", np.array([10.0, 40.0, 100.0]))

    def scored(false_positive_score: float, resamples: int) -> tuple[dict, tuple[float, float]]:
        profile = _profile(9, sequences=3)
        profile.detections = np.concatenate(
            [profile.detections, [[4, 0, 100, 60, 140, 90, false_positive_score, 1]]]).astype(np.float32)
        split = Split.build(profile)
        scorer = Scorer(split)
        trace = rollout(split, costs, lambda f, *_: 2 if f < 3 else 0, streaming=False)
        return scorer.score(trace, resamples=resamples, seed=1), accumulate_all(scorer._evaluator(trace), 9)

    # above the nano hits: precision 3/4 after it, 5/6 at the last hit (recall 5/9); COCO's envelope gives
    # precision 1 at the 34 recall points <= 3/9 and 5/6 at the 22 up to 5/9: (34 + 22 x 5/6) / 101
    result, again = scored(0.6, 0)
    assert result["map50_95"] == pytest.approx(100 * (34 + 22 * 5 / 6) / 101) == result["map50"]
    assert again == pytest.approx((result["map50_95"], result["map50"]), abs=1e-9)
    # below every hit it costs nothing: recall 5/9 at precision 1, 56 of 101 points; a replicate draws the three
    # sequences with replacement, and each copy of sequence 0 (three hits) in place of another adds 2/9 recall
    result, again = scored(0.3, 40)
    assert result["map50_95"] == pytest.approx(100 * 56 / 101) and again[0] == pytest.approx(result["map50_95"])
    possible = [100 * 34 / 101, 100 * 56 / 101, 100 * 78 / 101, 100.0]  # 0, 1, 2 or 3 copies of sequence 0
    for map50_95, map50 in result["replicates"]:
        assert map50 == pytest.approx(map50_95) and min(abs(map50_95 - v) for v in possible) < 1e-6, map50_95
    assert len({round(m, 6) for m, _ in result["replicates"]}) >= 3  # sequences are really resampled


def test_a_routing_that_shows_nothing_scores_zero_and_a_truth_without_objects_is_refused(tmp_path):
    """Tiers that find nothing (random weights) scored a crash inside pycocotools; a reference truth without objects
    gave every tier the same value, and the pipeline trained on it until the scorer crashed."""
    from adaptive_perception.training.evaluate import Scorer
    from adaptive_perception.training.pipeline import Settings, stage_labels

    costs = Costs("test", np.array([10.0, 40.0, 100.0]))
    profile = _profile(6)
    profile.meta["device"] = "test"
    split = Split.build(profile)
    seen_by_small_and_large = profile.detections[profile.detections[:, 1] > 0]
    nano_blind = Split.build(Profile(**{**profile.__dict__, "detections": seen_by_small_and_large}))
    assert Scorer(nano_blind).score(rollout(nano_blind, costs, lambda *_: 0, streaming=False))["map50_95"] == 0.0
    assert Scorer(split).score(rollout(split, costs, lambda *_: 2, streaming=False))["map50_95"] == pytest.approx(100.0)
    empty = Profile(**{**profile.__dict__, "truth": np.zeros((0, 7), np.float32),
                       "meta": {**profile.meta, "truth": "reference (large tier)"}})
    for split_name in ("router", "val", "test"):
        (profile if split_name != "val" else empty).save(tmp_path / f"profile_{split_name}.npz")
    with pytest.raises(AdaptivePerceptionError, match=r"split 'val' \(.*profile_val.npz\): the truth \(reference "
                       r"\(large tier\)\) holds no object in 6 frames.*the large tier \(or --teacher\) must detect"):
        stage_labels(Settings(work=tmp_path, latency=None))
    assert not (tmp_path / "quality_val.npy").exists()


def test_latency_file_is_validated(tmp_path):
    good = tmp_path / "jetson.json"
    good.write_text(json.dumps({"device": "Jetson Orin NX", "tiers_ms": {"nano": 4.0, "small": 8.0, "large": 20.0}}))
    costs = Costs.load(good)
    assert costs.device == "Jetson Orin NX" and costs.relative.tolist() == [0.2, 0.4, 1.0]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"device": "x", "tiers_ms": {"nano": 4.0}}))
    with pytest.raises(Exception, match="latency file .*bad.json.*tiers_ms"):
        Costs.load(bad)


def test_a_tier_value_network_is_calibrated_to_a_budget_and_survives_the_trip_through_ppos_logits():
    from adaptive_perception.training.learn import Network, _as_logits, _from_logits, calibrate_cost_weight

    split = Split.build(_profile(12))
    costs = Costs("test", np.array([10.0, 40.0, 100.0]))  # relative 0.1 / 0.4 / 1
    # constant values 0 / 0.5 / 0.8: large while w < 0.5 (0.8 - w > 0.5 - 0.4 w), small until w = 5/3
    # (0.5 - 0.4 w > -0.1 w), then nano
    network = Network([(np.zeros((1028, 3), np.float32), np.array([0.0, 0.5, 0.8], np.float32))],
                      np.zeros(1028, np.float32), np.ones(1028, np.float32))
    for budget, weight, tier in ((200.0, 0.0, 2), (50.0, 0.5, 1), (39.9, 5 / 3, 0)):
        calibrated = calibrate_cost_weight(network, split, costs, budget)
        assert calibrated.head.cost_weight == pytest.approx(weight, abs=1e-4), budget
        assert calibrated.choose(0, np.zeros(1028, np.float32), None) == tier
    calibrated = calibrate_cost_weight(network, split, costs, 50.0)
    logits = _as_logits(calibrated)
    # PPO samples softmax(logits): the same choice, and the way back restores the values
    assert int(np.argmax(logits[-1][1])) == calibrated.choose(0, np.zeros(1028, np.float32), None)
    back = _from_logits(logits, calibrated)
    np.testing.assert_allclose(back.layers[-1][1], [0.0, 0.5, 0.8], atol=1e-6)
    np.testing.assert_allclose(back.layers[-1][0], network.layers[-1][0])


@pytest.mark.parametrize("cost_bar, weight", [(1.0, 0.0), (0.4, 0.5), (0.39, 5 / 3)])
def test_the_report_calibrates_each_learned_policy_per_frame_and_keeps_its_own_weight_streaming(tmp_path, cost_bar,
                                                                                               weight):
    """Per frame the bars are stated at a cost bar: every learned row runs at the weight whose validation routing
    costs at most the bar (the same constant-value policy as above, written as ONNX and run by the Router);
    streaming, the node's default, the file's own weight."""

    from adaptive_perception.policy import Policy
    from adaptive_perception.training.learn import Network, calibrate_cost_weight
    from adaptive_perception.training.policy_export import write_policy
    from adaptive_perception.training.report import operating_points

    split = Split.build(_profile(12))
    costs = Costs("test", np.array([10.0, 40.0, 100.0]))
    network = Network([(np.zeros((1028, 3), np.float32), np.array([0.0, 0.5, 0.8], np.float32))],
                      np.zeros(1028, np.float32), np.ones(1028, np.float32))
    own = calibrate_cost_weight(network, split, costs, 1000.0).with_weight(2.0)  # its own point: always nano
    write_policy(tmp_path / "values.onnx", own.layers, own.mean, own.std, "values", "constant tier values", None,
                 own.head)
    policy = Policy(tmp_path / "values.onnx")
    points = operating_points(SimpleNamespace(cost_bar=cost_bar), {"ppo": [policy, policy]}, split, costs)
    assert points["per_frame"]["ppo"] == pytest.approx([weight, weight], abs=1e-4)
    assert points["streaming"]["ppo"] == pytest.approx([2.0, 2.0])


@pytest.mark.parametrize("loss", ["balanced", "regret", "values"])
def test_every_bc_loss_learns_which_frames_are_worth_large(loss):
    from adaptive_perception.training.learn import train_bc

    # busy frames (the first 64 features shifted up) are worth 1 more on large, the rest 1 less: every loss must
    # learn to tell them apart (a broken objective, e.g. a sign error, ends up far below 80 %)
    rng = np.random.default_rng(1)
    busy = rng.random(400) < 0.5
    x = rng.normal(size=(400, 1028)).astype(np.float32)
    x[:, :64] += np.where(busy, 1.0, -1.0)[:, None]
    utility = np.zeros((400, 3), np.float32)
    utility[:, 1] = -0.5  # small is never worth its cost here
    utility[:, 2] = np.where(busy, 1.0, -1.0)
    labels = np.where(busy, 2, 0)
    network, info = train_bc((x[:300], labels[:300], utility[:300]), (x[300:], labels[300:], utility[300:]),
                             seed=0, loss=loss, max_epochs=30, progress=False)
    chosen = np.argmax(network.logits(x[300:].astype(np.float64)), axis=1)
    assert (chosen == labels[300:]).mean() > 0.8, (loss, info["epochs"])


def test_context_inputs_ignore_the_image_features_and_still_learn_from_the_context():
    from adaptive_perception.training.learn import train_bc

    # the busy signal sits only in the context's count (1024) while the image features carry a decoy that
    # predicts the training frames' labels perfectly but is noise on validation: all 1028 inputs learn the decoy,
    # the context-only network cannot see it and learns the count
    rng = np.random.default_rng(2)
    busy = rng.random(600) < 0.5
    x = rng.normal(size=(600, 1028)).astype(np.float32)
    x[:, 1024] = np.where(busy, 2.5, 0.5) + rng.normal(0, 0.6, 600)
    x[:400, :64] += np.where(busy[:400], 3.0, -3.0)[:, None]  # the decoy: on training frames only
    utility = np.zeros((600, 3), np.float32)
    utility[:, 1] = -0.5  # small is never worth it
    utility[:, 2] = np.where(busy, 1.0, -1.0)
    labels = np.where(busy, 2, 0)
    train, val = (x[:400], labels[:400], utility[:400]), (x[400:], labels[400:], utility[400:])
    context, _ = train_bc(train, val, seed=0, loss="values", max_epochs=300, progress=False, inputs="context")
    assert not context.layers[0][0][:IMAGE_FEATURES].any() and context.layers[0][0][IMAGE_FEATURES:].any()
    moved = x[400:].copy()
    moved[:, :IMAGE_FEATURES] = rng.normal(size=(200, IMAGE_FEATURES)) * 10
    np.testing.assert_array_equal(context.logits(moved.astype(np.float64)), context.logits(x[400:].astype(np.float64)))
    accuracy = (np.argmax(context.logits(x[400:].astype(np.float64)), axis=1) == labels[400:]).mean()
    assert accuracy > 0.85, accuracy
    everything, _ = train_bc(train, val, seed=0, loss="values", max_epochs=300, progress=False, inputs="all")
    assert (np.argmax(everything.logits(x[400:].astype(np.float64)), axis=1) == labels[400:]).mean() < accuracy - 0.1
    with pytest.raises(ValueError, match="inputs 'pixels'"):
        train_bc(train, val, seed=0, loss="values", max_epochs=1, progress=False, inputs="pixels")


def test_context_dataset_holds_every_frame_under_each_tiers_previous_output():
    from adaptive_perception.training.learn import context_dataset

    split = Split.build(_profile(6, sequences=2))  # frames 0-2 and 3-5; tier t finds the box where t >= frame % 3
    x, best, utility = context_dataset(split)
    assert len(x) == 2 * (1 + 3 * 2)  # per sequence: its first frame once, each later frame under 3 contexts
    frames = [0, 1, 1, 1, 2, 2, 2, 3, 4, 4, 4, 5, 5, 5]
    np.testing.assert_array_equal(x[:, :IMAGE_FEATURES], split.profile.features[frames])
    np.testing.assert_array_equal(utility, split.quality[frames, :, 0])
    assert best.tolist() == np.argmax(split.quality[frames, :, 0], axis=1).tolist()
    assert x[0, IMAGE_FEATURES:].tolist() == [0.0, 0.0, 0.0, 0.0]  # nothing before a sequence's first frame
    size = np.sqrt(0.1)  # the 40 x 40 box on the 160 x 100 frame
    # frame 2 after frame 1: nano (1 % 3 = 1 > 0) found nothing there; small (score 0.6) and large (0.7) did
    np.testing.assert_allclose(x[4:7, IMAGE_FEATURES:], [[0, 0, 1 / 3, 0], [np.log1p(1), 0.6, 2 / 3, size],
                                                         [np.log1p(1), 0.7, 1, size]], rtol=1e-6)


@pytest.mark.parametrize("warmup", [0, 256])
def test_ppo_critic_warmup_leaves_the_bc_actor_alone(warmup, tmp_path, monkeypatch):
    import tempfile

    from adaptive_perception.training.learn import Network, train_bc, train_ppo

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where stable-baselines3 puts a logger's folder

    split = Split.build(_profile(60, sequences=2))
    costs = Costs("test", np.array([10.0, 40.0, 100.0]))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 1028)).astype(np.float32)
    utility = rng.normal(size=(90, 3)).astype(np.float32)
    bc, _ = train_bc((x[:60], np.argmax(utility[:60], 1), utility[:60]), (x[60:], np.argmax(utility[60:], 1),
                     utility[60:]), seed=0, loss="balanced", max_epochs=2, progress=False)
    ppo, info = train_ppo(split, costs, 0.1, bc, seed=0, steps=256, critic_warmup=warmup)
    assert info["critic_warmup"] == warmup
    unchanged = all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(ppo.layers, bc.layers))
    # all 256 steps in warm-up: the actor is BC's exactly; without warm-up PPO's 256 steps move it
    assert unchanged == (warmup == 256)
    assert isinstance(ppo, Network)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("SB3-")]  # each learn() left one in /tmp (280 here)


def test_a_stage_run_keeps_a_parameter_too_long_for_mlflow_whole_in_its_params_json(tmp_path):
    """MLflow keeps 500 characters of a parameter: the bag list of a retraining on many evidence segments was cut."""
    import json as _json

    import mlflow

    from adaptive_perception.training.pipeline import Settings, tracked

    bags = [f"/data/evidence/camera_image_raw/evidence_{i:04d}" for i in range(40)]
    with tracked(Settings(work=tmp_path), "retrain", {"bags": bags, "segment_frames": 30}):
        run_id = mlflow.active_run().info.run_id
    client = mlflow.tracking.MlflowClient(f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}")
    logged = client.get_run(run_id).data.params
    assert logged["segment_frames"] == "30" and logged["bags"].endswith(" ... (params.json)")
    assert len(logged["bags"]) <= 500
    path = client.download_artifacts(run_id, "params.json", str(tmp_path))
    assert _json.loads(open(path).read())["bags"] == str(bags)


def test_benchmark_frames_reach_training_through_the_nodes_decoder(tmp_path):
    """Training read the benchmark's JPEGs with its own reader, where the node decodes CompressedImage payloads:
    one decoder for both (RGB out), and a broken file named with the command that mends it."""
    import cv2

    from adaptive_perception.training.profile import dataset_images

    (tmp_path / "images" / "val").mkdir(parents=True)
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[:, :32] = (230, 20, 20)  # red on the left, blue on the right
    rgb[:, 32:] = (20, 20, 230)
    cv2.imwrite(str(tmp_path / "images" / "val" / "a.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    (tmp_path / "images" / "val" / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    frames = dataset_images(tmp_path, "val", [{"file": "a.jpg"}, {"file": "b.jpg"}])
    record, pixels = next(frames)
    assert record == {"file": "a.jpg"} and pixels.shape == (48, 64, 3)
    assert pixels[24, 8, 0] > 200 and pixels[24, 8, 2] < 50 and pixels[24, 56, 2] > 200 and pixels[24, 56, 0] < 50
    with pytest.raises(AdaptivePerceptionError, match=r"cannot read image b.jpg of .*could not be decoded.*; regenerate "
                                                       r"it with `adaptive-perception scenes generate --out "):
        next(frames)


def test_training_keeps_the_boxes_the_node_publishes_at_its_threshold_exactly():
    """The node publishes a box whose score is over conf_threshold; training counted one at it too (>=), so a
    profile's context and labels could hold a box the node never shows."""
    from adaptive_perception.detector import DetectorTier
    from adaptive_perception.training.profile import PUBLISH_CONF

    at, over = np.float32(PUBLISH_CONF), np.nextafter(np.float32(PUBLISH_CONF), np.float32(1))
    nano = DetectorTier("embedded:nano", conf_threshold=PUBLISH_CONF)
    raw = np.zeros((4 + len(nano.class_names), 2), np.float32)
    raw[:4] = [[10, 30], [10, 30], [4, 4], [4, 4]]
    raw[4, :] = [at, over]
    _, scores, _ = nano.candidates(raw)
    assert scores.tolist() == [over]
    profile = Profile(**{**_profile(3).__dict__, "detections": np.array(
        [[0, 0, 8, 8, 12, 12, at, 0], [0, 0, 28, 28, 32, 32, over, 0]], np.float32)})
    assert [rows[:, 4].tolist() for rows in profile.tier_detections(0, PUBLISH_CONF)] == [[over], [], []]


def test_a_tier_faster_than_a_frame_period_waits_for_the_next_frame_to_arrive():
    clock = WorkerClock(3)
    assert clock.run(Fraction(1, 100)) == (0, 0, Fraction(1, 100))
    # frame 1 arrives at 1/30 s: the worker, free since 10 ms, starts it then
    assert clock.run(Fraction(1, 100)) == (1, Fraction(1, 30), Fraction(1, 30) + Fraction(1, 100))
    trace = rollout(Split.build(_profile(12)), Costs("t", np.array([10.0, 40.0, 100.0])), lambda *_: 0, True)
    assert trace.shown[:, 0].tolist() == [-1] + list(range(11))  # frame f shows f-1's output, never a later frame's


def test_an_output_six_or_more_frames_old_reads_the_last_stored_staleness():
    split = Split.build(_profile(12, step=1.0))
    stream = Stream(split, np.arange(12), Costs("t", np.array([10.0, 40.0, 100.0])), True)
    # frame 0's large box on frame 6's truth: shifted 6 px, IoU 34*40 / (3200 - 1360) = 0.739: a hit at
    # 0.50..0.70 (5 of 10): 0.5 - 0.3 * 0.5 = 0.35; 5 px (k = 5) would be IoU 0.778, 6 of 10: 0.48
    assert stream.shown_quality(6, 0, 2) == pytest.approx(0.35)
    assert stream.shown_quality(11, 0, 2) == pytest.approx(0.35)  # 11 frames stale: treated as MAX_STALE = 6


def test_a_routing_that_never_changes_tier_has_no_switches():
    split = Split.build(_profile(12))
    costs = Costs("t", np.array([10.0, 40.0, 100.0]))
    assert rollout(split, costs, lambda *_: 1, False).switches == 0
    assert rollout(split, costs, lambda frame, *_: frame % 2, False).switches == 11


def test_an_iou_of_exactly_half_is_a_hit_at_050_as_in_cocoeval():
    truth = np.array([[0.0, 0.0, 40.0, 80.0, 1, 0]])
    # 40x40 inside 40x80: IoU 1600 / 3200 = 0.5 exactly: a TP at 0.50 only: 0.1 - 0.3 * 0.9
    assert frame_value(np.array([[0.0, 0.0, 40.0, 40.0, 0.9, 1]]), truth) == pytest.approx(-0.17)


def test_ignore_regions_are_not_objects_in_the_quality_unit():
    base = _profile(3)
    ignore = np.array([[f, 100.0, 80.0, 140.0, 95.0, 1, 1] for f in range(3)], np.float32)
    truth = np.concatenate([base.truth, ignore])
    profile = replace(base, truth=truth[np.argsort(truth[:, 0], kind="stable")])
    split = Split.build(profile)
    # one valid object per frame: large's exact box on its own frame is worth 1.0 (one object)
    assert split.quality[:, 2, 0].tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_the_reports_paired_interval_touching_zero_does_not_beat():
    from adaptive_perception.training.report import _paired
    better = {"map50_95": 1.0, "_replicates": np.array([0.0, 0.0, 1.0, 2.0])}
    worse = {"map50_95": 0.0, "_replicates": np.zeros(4)}
    out = _paired(better, worse)
    assert out["difference_ci"][0] == 0.0 and out["beats"] is False


def test_the_first_decision_of_an_episode_is_no_switch():
    from adaptive_perception.training.learn import Network, make_env
    split = Split.build(_profile(12, sequences=2))
    costs = Costs("test", np.array([10.0, 40.0, 100.0]))
    network = Network([(np.zeros((1028, 3), np.float32), np.zeros(3, np.float32))], np.zeros(1028, np.float32),
                      np.ones(1028, np.float32))
    env = make_env(split, costs, 0.0, network, switch_penalty=1.0)
    env.reset(seed=3)
    _, reward, *_ = env.step(0)  # nano publishes at 10 ms: frame 0 showed nothing (0), no cost weight, no switch
    assert reward == 0.0
    # frame 1 on small (33.3-73.3 ms): frames 1 and 2 show frame 0's nano box, still on the truth (1.0 each),
    # and the switch from nano costs 1: 2.0 - 1.0
    _, reward, *_ = env.step(1)
    assert reward == pytest.approx(1.0)


def test_the_heuristic_grid_spans_thresholds_up_to_15_and_31():
    """low 0..15, high from low to 31 in steps of 2: for low = 2k and 2k+1 the count is 16 - k, so
    2 x (16 + 15 + ... + 9) = 200 rules, plus always-nano (1000, 1000)."""
    from adaptive_perception.training.report import HEURISTIC_GRID

    assert len(HEURISTIC_GRID) == 201 and HEURISTIC_GRID[-1] == (1000, 1000)
    assert {(0, 0), (8, 14), (15, 15), (15, 31), (14, 30)} <= set(HEURISTIC_GRID)
    assert max(low for low, _ in HEURISTIC_GRID[:-1]) == 15 and max(high for _, high in HEURISTIC_GRID[:-1]) == 31


def test_the_tuned_heuristic_is_the_best_validation_rule_within_5_percent_of_the_cost(monkeypatch):
    """At 10 ms: rule (1, 2) costs 10.2 (2 % off), val 0.5; rule (2, 3) costs 9.8 (2 % off), val 0.7; rule (3, 4)
    costs 12 (20 % off), val 0.9. Within 5 %: (1, 2) and (2, 3), the better on validation is (2, 3)."""
    from adaptive_perception.training import report

    table = {(1, 2): (10.2, 0.5), (2, 3): (9.8, 0.7), (3, 4): (12.0, 0.9)}
    val, test = SimpleNamespace(profile=[0] * 4, name="val"), SimpleNamespace(profile=[0] * 10, name="test")

    def rollout(split, costs, rule, streaming):
        cost, quality = table[rule]
        return SimpleNamespace(quality=np.full(len(split.profile), quality), busy_ms=cost * len(split.profile))

    monkeypatch.setattr(report, "HEURISTIC_GRID", list(table))
    monkeypatch.setattr(report, "heuristic_chooser", tuple)
    monkeypatch.setattr(report, "rollout", rollout)
    assert report._tune_heuristic(val, test, None, False, 10.0) == [(2, 3)]


def test_bracketing_takes_the_best_rule_on_each_side_not_the_nearest():
    """At 10 ms: below (8.0, 0.6, (1, 1)), (9.5, 0.5, (2, 2)); above (10.5, 0.55, (3, 3)), (14, 0.8, (4, 4)):
    the best below is (1, 1), the best above (4, 4), cheaper first."""
    from adaptive_perception.training.report import bracketing_rules

    candidates = [(8.0, 0.6, (1, 1)), (9.5, 0.5, (2, 2)), (10.5, 0.55, (3, 3)), (14.0, 0.8, (4, 4))]
    assert bracketing_rules(candidates, 10.0) == [(1, 1), (4, 4)]


def _row(map50_95: float) -> dict:
    return {"map50_95": map50_95, "map50": 50.0, "mean_cost_ms": 12.0, "p95_latency_ms": 20.0, "p99_latency_ms": 25.0,
            "mix": {"nano": 0.5, "small": 0.25, "large": 0.25}, "gap_recovered": 0.75, "switches_per_100_frames": 4.0}


def test_the_markdown_table_has_one_separator_cell_per_column_in_the_documented_order():
    from adaptive_perception.training.report import markdown

    rows = {"always-nano": _row(31.0), "BC only": {**_row(32.0), "cost_weights": [None]},
            "BC + PPO": {**_row(33.0), "cost_weights": [None]},
            "heuristic (tuned, matched cost)": {**_row(30.0), "thresholds": [3, 8]}}
    result = {"test_frames": 10, "test_sequences": 2, "truth": "generated", "device": "cpu",
              "tier_cost_ms": {"nano": 1.0, "small": 2.0, "large": 3.0}, "lambda": 0.5, "seeds": 1,
              "settings": {"per_frame": rows, "streaming": rows}, "bars": {}, "routing_by_regime": {},
              "classifier": {"bc_accuracy": 0.5, "majority_class_accuracy": 0.4, "prior_matched_random_accuracy": 0.3}}
    lines = markdown(result).splitlines()
    header = ("| row | mAP50-95 | mAP50 | mean cost (ms) | p95 (ms) | p99 (ms) | router overhead (ms) | "
              "mix nano / small / large | gap recovered | switches / 100 frames | KL from BC |")
    at = lines.index(header)
    assert lines[at + 1] == "|---" * 11 + "|"  # 10 columns and the row name
    assert lines[at + 2] == "| always-nano | 31.0 | 50.0 | 12.0 | 20.0 | 25.0 | - | 50% / 25% / 25% | 75% | 4.0 | - |"


def test_streaming_choice_is_the_best_validation_map_among_own_and_grid(monkeypatch):
    """Own weight 0.3 first, then GRID's 8: 9 candidates; mAP peaks at 0.75 (40.0)."""
    from adaptive_perception.training import operating_point, report, simulate

    scores = {0.3: 31.0, 0.1: 25.0, 0.2: 28.0, 0.35: 33.0, 0.5: 36.0, 0.75: 40.0, 1.0: 38.0, 1.5: 30.0, 2.5: 20.0}
    monkeypatch.setattr(report, "learned_chooser", lambda policy, weight: weight)
    monkeypatch.setattr(simulate, "rollout", lambda split, costs, weight, streaming: SimpleNamespace(
        weight=weight, busy_ms=10.0 * len(split.profile), mix=lambda: np.array([1.0, 0.0, 0.0])))
    scorer = SimpleNamespace(score=lambda trace: {"map50_95": scores[trace.weight]})
    policy = SimpleNamespace(value_head=SimpleNamespace(cost_weight=0.3))
    chosen, grid = operating_point.streaming_choice(policy, SimpleNamespace(profile=[0] * 5), scorer, None, show=False)
    assert chosen == 0.75
    assert [row["weight"] for row in grid] == [0.3, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5]


@pytest.mark.parametrize("share", [1.5, 0.0])
def test_a_cost_share_outside_0_to_1_is_refused_before_anything_is_read(tmp_path, share):
    from policies import value_policy

    from adaptive_perception.policy import Policy
    from adaptive_perception.training.operating_point import choose

    policy = Policy(value_policy(tmp_path / "v.onnx", (0.0, 0.5, 0.8), (0.2, 0.5, 1.0), 1.0))
    with pytest.raises(AdaptivePerceptionError, match=rf"--cost-share {share}: give a share of always-large's cost"):
        choose(policy, tmp_path / "no-work", cost_share=share)
