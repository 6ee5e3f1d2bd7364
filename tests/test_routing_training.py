"""The training pipeline's building blocks on hand-made profiles: F1 labels, oracles, the streaming simulator,
the PPO environment and the bootstrap's re-accumulation of COCOeval."""
from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest

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


def _profile(frames: int, sequences: int = 1) -> Profile:
    rng = np.random.default_rng(0)
    per = frames // sequences
    return Profile(features=rng.normal(size=(frames, IMAGE_FEATURES)).astype(np.float32),
                   latency_ms=np.tile([10.0, 40.0, 100.0], (frames, 1)).astype(np.float32),
                   sequence=np.repeat(np.arange(sequences), per), stamp_ns=np.arange(frames) * 33_333_333,
                   regime=np.zeros(frames, np.int64),
                   detections=np.array([[f, t, *BOX, 0.5 + 0.1 * t, 1] for f in range(frames) for t in range(3)
                                        if t >= f % 3], np.float32),
                   truth=np.array([[f, *BOX, 1, 0] for f in range(frames)], np.float32), meta={"truth": "sidecar", "frame_hw": [100, 160]})


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
    stale = [None, None, 2, 2, 3, 3, 2, 2, 3, 3, 2, 3]
    for frame, k in enumerate(stale):
        expected = split.empty[frame] if k is None else split.quality[trace.shown[frame, 0], 1, k]
        assert trace.quality[frame] == pytest.approx(expected)
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
    from types import SimpleNamespace

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
def test_ppo_critic_warmup_leaves_the_bc_actor_alone(warmup):
    from adaptive_perception.training.learn import Network, train_bc, train_ppo

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
