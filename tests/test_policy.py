"""Policy runtime (real ONNX files through onnxruntime) and the router's four modes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from adaptive_perception.config import resolve_model
from adaptive_perception.errors import ConfigError
from adaptive_perception.features import FEATURE_SIZE, RoutingContext, routing_features
from adaptive_perception.policy import Policy, PolicyFileError
from adaptive_perception.router import Router, RouterSettings
from adaptive_perception.training.policy_export import write_policy
from policies import constant_policy, two_frame_policy, value_policy

ROOT = Path(__file__).resolve().parents[1]


def test_policy_output_is_the_mlp_on_normalised_features(tmp_path):
    rng = np.random.default_rng(3)
    layers = [(rng.normal(0, 0.05, (FEATURE_SIZE, 16)).astype(np.float32), rng.normal(0, 0.1, 16).astype(np.float32)),
              (rng.normal(0, 0.5, (16, 3)).astype(np.float32), rng.normal(0, 0.1, 3).astype(np.float32))]
    mean, std = rng.normal(0, 1, FEATURE_SIZE), rng.uniform(0.5, 2.0, FEATURE_SIZE)
    policy = Policy(write_policy(tmp_path / "mlp.onnx", layers, mean, std, "mlp-7", "two layers"))
    assert policy.policy_id == "mlp-7" and policy.info.description == "two layers"
    x = rng.normal(0, 1, FEATURE_SIZE).astype(np.float32)
    hidden = np.maximum(((x - mean) / std).astype(np.float32) @ layers[0][0] + layers[0][1], 0)
    expected = hidden @ layers[1][0] + layers[1][1]
    np.testing.assert_allclose(policy.logits(x), expected, rtol=1e-4, atol=1e-5)
    probabilities = policy.probabilities(x)
    assert probabilities.dtype == np.float32 and probabilities.sum() == pytest.approx(1.0, abs=1e-6)
    assert int(np.argmax(probabilities)) == int(np.argmax(expected))


def test_a_policy_is_fed_only_the_inputs_its_first_layer_reads(tmp_path):
    import onnxruntime as ort

    rng = np.random.default_rng(5)
    first = np.zeros((FEATURE_SIZE, 8), np.float32)
    first[[7, 300, 1024, 1025, 1026, 1027]] = rng.normal(0, 0.3, (6, 8))  # two image statistics and the context
    layers = [(first, rng.normal(0, 0.1, 8).astype(np.float32)),
              (rng.normal(0, 0.5, (8, 3)).astype(np.float32), rng.normal(0, 0.1, 3).astype(np.float32))]
    mean, std = rng.normal(0, 1, FEATURE_SIZE), rng.uniform(0.5, 2.0, FEATURE_SIZE)
    path = write_policy(tmp_path / "sparse.onnx", layers, mean, std, "sparse")
    policy = Policy(path)
    assert policy.inputs_read.tolist() == [7, 300, 1024, 1025, 1026, 1027] and policy.reads_image
    full = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # the file as written: 1028 inputs
    for _ in range(5):
        x = rng.normal(0, 2, FEATURE_SIZE).astype(np.float32)
        expected = full.run(None, {full.get_inputs()[0].name: ((x - mean) / std).astype(np.float32)[None]})[0][0]
        np.testing.assert_allclose(policy.logits(x), expected, rtol=1e-5, atol=1e-6)
        moved = x.copy()
        moved[8] += 5.0  # an input with zero weight moves nothing
        np.testing.assert_array_equal(policy.logits(moved), policy.logits(x))
        moved[300] += 5.0  # a read one does
        assert not np.allclose(policy.logits(moved), policy.logits(x))
    # the context alone: the image statistics are not read at all
    first[[7, 300]] = 0.0
    context_only = Policy(write_policy(tmp_path / "context.onnx", layers, mean, std, "context"))
    assert context_only.inputs_read.tolist() == [1024, 1025, 1026, 1027] and not context_only.reads_image
    # every input read (a dense first layer): the file runs as it is
    dense = Policy(write_policy(tmp_path / "dense.onnx", [(rng.normal(0, 0.05, (FEATURE_SIZE, 3)).astype(np.float32),
                                                           np.zeros(3, np.float32))], mean, std, "dense"))
    assert len(dense.inputs_read) == FEATURE_SIZE and dense.reads_image


def _edited_policy(path: Path, source: Path, edit) -> Path:
    """The policy file `source` with `edit(graph)` applied to its graph (metadata kept)."""
    import onnx

    model = onnx.load(str(source))
    edit(model.graph)
    onnx.save(model, str(path))
    return path


def test_dense_layers_run_in_numpy_and_any_other_graph_in_onnxruntime(tmp_path):
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(11)
    first = np.zeros((FEATURE_SIZE, 8), np.float32)
    first[[5, 1024, 1025, 1026, 1027]] = rng.normal(0, 0.5, (5, 8))
    layers = [(first, rng.normal(0, 0.1, 8).astype(np.float32)),
              (rng.normal(0, 0.5, (8, 6)).astype(np.float32), rng.normal(0, 0.1, 6).astype(np.float32)),
              (rng.normal(0, 0.5, (6, 3)).astype(np.float32), rng.normal(0, 0.1, 3).astype(np.float32))]
    mean, std = rng.normal(0, 1, FEATURE_SIZE), rng.uniform(0.5, 2.0, FEATURE_SIZE)
    source = write_policy(tmp_path / "mlp.onnx", layers, mean, std, "mlp")
    x = rng.normal(0, 2, (6, FEATURE_SIZE)).astype(np.float32)
    hidden = ((x - mean) / std).astype(np.float32)
    for weight, bias in layers[:-1]:
        hidden = np.maximum(hidden @ weight + bias, 0)
    expected = hidden @ layers[-1][0] + layers[-1][1]  # by hand: two ReLU layers, then the logits

    policy = Policy(source)
    assert policy.engine == "numpy" and policy.inputs_read.tolist() == [5, 1024, 1025, 1026, 1027]
    np.testing.assert_allclose(np.stack([policy.logits(row) for row in x]), expected, rtol=1e-4, atol=1e-5)

    def transposed(graph):  # the second layer's weights stored (units, inputs) with transB = 1: the same MLP
        weights = next(t for t in graph.initializer if t.name == "W1")
        weights.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(layers[1][0].T), "W1"))
        graph.node[2].attribute.append(helper.make_attribute("transB", 1))

    policy = Policy(_edited_policy(tmp_path / "transposed.onnx", source, transposed))
    assert policy.engine == "numpy"
    np.testing.assert_allclose(np.stack([policy.logits(row) for row in x]), expected, rtol=1e-4, atol=1e-5)

    def scaled(graph):  # alpha = 2 on the last Gemm: not a plain dense layer, onnxruntime runs it
        graph.node[-1].attribute.append(helper.make_attribute("alpha", 2.0))

    def no_relu(graph):  # the second ReLU taken out: the last Gemm reads the second layer's output directly
        graph.node[-1].input[0] = graph.node[2].output[0]
        del graph.node[3]

    def squashed(graph):  # a Sigmoid after the logits
        graph.node[-1].output[0] = "raw"
        graph.node.append(helper.make_node("Sigmoid", ["raw"], [graph.output[0].name]))

    last = hidden @ layers[-1][0]
    before_last = np.maximum(((x - mean) / std).astype(np.float32) @ layers[0][0] + layers[0][1], 0) @ layers[1][0] \
        + layers[1][1]
    for name, edit, engine, want in (
            ("scaled", scaled, "onnxruntime", 2 * last + layers[-1][1]),
            ("no_relu", no_relu, "numpy", before_last @ layers[-1][0] + layers[-1][1]),
            ("squashed", squashed, "onnxruntime", 1 / (1 + np.exp(-expected)))):
        path = _edited_policy(tmp_path / f"{name}.onnx", source, edit)
        onnx.checker.check_model(str(path))
        policy = Policy(path)
        assert policy.engine == engine, name
        got = np.stack([policy.logits(row) for row in x])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=name)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        direct = session.run(None, {session.get_inputs()[0].name: ((x - mean) / std).astype(np.float32)})[0]
        np.testing.assert_allclose(got, direct, rtol=1e-5, atol=1e-5, err_msg=name)


def test_the_shipped_policy_runs_in_numpy_with_onnxruntimes_logits():
    import onnxruntime as ort

    policy = Policy(resolve_model("embedded:policy"))
    assert policy.engine == "numpy" and not policy.reads_image
    session = ort.InferenceSession(policy.path, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(4)
    x = np.zeros((200, FEATURE_SIZE), np.float32)
    x[:, 1024:] = np.stack([np.log1p(rng.integers(0, 30, 200)), rng.uniform(0, 1, 200), rng.integers(0, 4, 200) / 3,
                            rng.uniform(0, 0.4, 200)], axis=1)
    meta = session.get_modelmeta().custom_metadata_map
    mean, std = (np.asarray(json.loads(meta[f"adaptive_perception.feature_{k}"]), np.float32) for k in ("mean", "std"))
    normalised = ((x - mean) / std).astype(np.float32)
    direct = session.run(None, {session.get_inputs()[0].name: normalised})[0]
    got = np.stack([policy.logits(row) for row in x])
    np.testing.assert_allclose(got, direct, rtol=1e-5, atol=1e-5)


def test_a_policy_takes_only_the_inputs_it_reads_and_the_router_passes_the_right_ones(tmp_path, regime_frames):
    rng = np.random.default_rng(21)
    first = np.zeros((FEATURE_SIZE, 6), np.float32)
    first[[1025, 1027]] = rng.normal(0, 2.0, (2, 6))  # the mean score and the median box size only
    layers = [(first, rng.normal(0, 0.1, 6).astype(np.float32)),
              (rng.normal(0, 1.0, (6, 3)).astype(np.float32), rng.normal(0, 0.1, 3).astype(np.float32))]
    mean, std = rng.normal(0, 0.1, FEATURE_SIZE), rng.uniform(0.1, 0.3, FEATURE_SIZE)
    policy = Policy(write_policy(tmp_path / "two.onnx", layers, mean, std, "two"))
    assert policy.inputs_read.tolist() == [1025, 1027] and not policy.reads_image
    rgb = regime_frames["dense"]
    router = Router("learned", policy)
    chosen = set()
    for count, score, tier, size in [(0, 0.0, -1, 0.0), (3, 0.9, 0, 0.05), (12, 0.3, 2, 0.3), (7, 0.6, 1, 0.15),
                                     (1, 0.1, 1, 0.4), (20, 0.95, 2, 0.01)]:
        context = RoutingContext(count, score, tier, size)
        full = routing_features(rgb, context)
        np.testing.assert_array_equal(policy.logits(full[[1025, 1027]]), policy.logits(full))
        routed = router.route(rgb, context)
        expected = router.decide(full, context)
        assert routed.decision.tier == expected.tier
        np.testing.assert_array_equal(routed.decision.probabilities, expected.probabilities)
        chosen.add(routed.decision.tier)
        # the 1028 features are built after the decision, for whoever needs them (the drift monitor)
        np.testing.assert_array_equal(routed.features[1024:], full[1024:])
        assert not routed.features[:1024].any()
    assert len(chosen) > 1  # the contexts moved the decision: the read inputs were the right ones
    with pytest.raises(ValueError, match="expected 1028 features or the 2 inputs this policy reads, got shape \\(4,\\)"):
        policy.logits(np.zeros(4, np.float32))


def test_one_policy_serves_frames_from_several_threads(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    # the session runs through buffers bound once; two threads must never see each other's frame
    rng = np.random.default_rng(8)
    first = np.zeros((FEATURE_SIZE, 16), np.float32)
    first[1024:] = rng.normal(0, 1, (4, 16))
    layers = [(first, np.zeros(16, np.float32)), (rng.normal(0, 1, (16, 3)).astype(np.float32), np.zeros(3, np.float32))]
    policy = Policy(write_policy(tmp_path / "p.onnx", layers, np.zeros(FEATURE_SIZE), np.ones(FEATURE_SIZE), "p"))
    inputs = rng.normal(0, 1, (400, FEATURE_SIZE)).astype(np.float32)
    alone = [policy.logits(x) for x in inputs]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(policy.logits, inputs))
    np.testing.assert_array_equal(np.stack(together), np.stack(alone))


def test_route_computes_the_image_statistics_first_only_for_a_decision_that_reads_them(tmp_path, regime_frames):
    from adaptive_perception.features import image_features

    rgb = regime_frames["dense"]
    context = RoutingContext(prev_count=6, prev_mean_score=0.7, prev_tier=1, prev_median_size=0.08)
    full = routing_features(rgb, context)
    rng = np.random.default_rng(2)
    first = np.zeros((FEATURE_SIZE, 3), np.float32)
    first[1024:] = rng.normal(0, 1, (4, 3))
    mean, std = np.zeros(FEATURE_SIZE), np.ones(FEATURE_SIZE)
    context_policy = Policy(write_policy(tmp_path / "c.onnx", [(first, np.zeros(3, np.float32))], mean, std, "c"))
    first = first.copy()
    first[:1024] = rng.normal(0, 0.2, (1024, 3))
    image_policy = Policy(write_policy(tmp_path / "i.onnx", [(first, np.zeros(3, np.float32))], mean, std, "i"))
    routed = Router("learned", context_policy).route(rgb, context)
    assert not routed.image_read and not routed.features[:1024].any()
    np.testing.assert_array_equal(routed.features[1024:], full[1024:])
    np.testing.assert_allclose(routed.decision.probabilities, context_policy.probabilities(full), rtol=1e-6)
    assert routed.complete(rgb) > 0  # what the drift monitor gets after the tier
    np.testing.assert_array_equal(routed.features, full)
    routed = Router("learned", image_policy).route(rgb, context)
    assert routed.image_read and routed.feature_ms > 0 and routed.policy_ms > 0
    np.testing.assert_array_equal(routed.features, full)
    assert routed.complete(rgb) == 0.0  # nothing left to add
    np.testing.assert_allclose(routed.decision.probabilities, image_policy.probabilities(full), rtol=1e-6)
    # zero image statistics would have given another answer: the image policy's decision really read them
    assert not np.allclose(image_policy.probabilities(np.concatenate([np.zeros(1024, np.float32), full[1024:]])),
                           routed.decision.probabilities, atol=1e-3)
    for mode in ("heuristic", "fixed:large"):  # the rules read the context only
        routed = Router(mode, None).route(rgb, context)
        assert not routed.image_read and not routed.features[:1024].any()
        assert routed.decision.tier_name == ("small" if mode == "heuristic" else "large")
    assert image_features(rgb).any()
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        Router("heuristic", None).route(rgb[..., 0], context)


def test_a_policy_names_the_tier_files_it_was_trained_with(tmp_path, tier_models):
    from adaptive_perception.detector import file_digest

    digests = {t: file_digest(p) for t, p in tier_models.items()}
    assert len(set(digests.values())) == 3 and all(len(d) == 16 for d in digests.values())
    policy = Policy(constant_policy(tmp_path / "p.onnx", (0.2, 0.3, 0.5), "trained-here", digests))
    assert policy.info.tier_digests == digests
    loaded = {t: (digests[t], str(p)) for t, p in tier_models.items()}
    assert policy.tier_mismatches(loaded) == []
    # the small tier swapped for the large file: one warning naming the tier, both digests and the file
    loaded["small"] = (digests["large"], str(tier_models["large"]))
    [warning] = policy.tier_mismatches(loaded)
    assert f"the small tier {tier_models['large']} has digest {digests['large']}, trained with {digests['small']}" \
        in warning and "trained-here" in warning and "nano tier" not in warning and "large tier" not in warning
    assert warning.endswith("(`adaptive-perception train all --model small=...`)")
    # and the nano tier too: still one warning, naming both tiers and both --model options
    loaded["nano"] = (digests["small"], str(tier_models["small"]))
    [warning] = policy.tier_mismatches(loaded)
    assert f"the nano tier {tier_models['small']} has digest {digests['small']}, trained with {digests['nano']}; " \
        f"the small tier {tier_models['large']}" in warning
    assert warning.endswith("(`adaptive-perception train all --model nano=... --model small=...`)")
    # a policy that names no tiers cannot be checked, and says so by naming none
    assert Policy(constant_policy(tmp_path / "old.onnx", (0.2, 0.3, 0.5))).tier_mismatches(loaded) == []
    bad = _edit_metadata(tmp_path / "p.onnx", "tier_digests", "[1, 2]")
    with pytest.raises(PolicyFileError, match="tier_digests"):
        Policy(bad)


def test_a_tier_values_policy_trades_predicted_value_against_cost_by_its_weight(tmp_path):
    # values 0 / 0.5 / 0.8 at relative costs 0.2 / 0.5 / 1: weight 0 -> large (0.8), 1 -> small (0.5 - 0.5 = 0 beats
    # 0.8 - 1 = -0.2 and 0 - 0.2), 3 -> nano (-0.6 beats -1.0 and -2.2)
    policy = Policy(value_policy(tmp_path / "v.onnx", (0.0, 0.5, 0.8), (0.2, 0.5, 1.0), cost_weight=1.0,
                                 temperature=0.5))
    x = np.zeros(FEATURE_SIZE, np.float32)
    np.testing.assert_allclose(policy.logits(x), [0.0, 0.5, 0.8], atol=1e-6)
    np.testing.assert_allclose(policy.scores(x), [-0.4, 0.0, -0.4], atol=1e-6)  # the policy's own weight, / 0.5
    routed = {w: Router("learned", policy, RouterSettings(cost_weight=w)).decide(x, RoutingContext()).tier_name
              for w in (0.0, 1.0, 3.0, -1.0)}
    assert routed == {0.0: "large", 1.0: "small", 3.0: "nano", -1.0: "small"}
    probabilities = policy.probabilities(x, 3.0)
    np.testing.assert_allclose(probabilities, np.exp([-1.2, -2.0, -4.4]) / np.exp([-1.2, -2.0, -4.4]).sum(), rtol=1e-5)
    router = Router("learned", policy)
    router.set_cost_weight(0.0)
    assert router.decide(x, RoutingContext()).tier_name == "large"
    with pytest.raises(ConfigError, match="cost_weight"):
        router.set_cost_weight(float("nan"))
    for key, value, needle in (("output", "votes", "output 'votes' is unknown"), ("temperature", "0", "temperature"),
                               ("tier_cost", "[1, 2]", "tier_cost"), ("cost_weight", None, "needs tier_cost")):
        with pytest.raises(PolicyFileError, match=needle):
            Policy(_edit_metadata(value_policy(tmp_path / f"{key}.onnx", (0, 0.5, 0.8), (0.2, 0.5, 1), 1.0), key, value))


def _edit_metadata(path: Path, key: str, value: str | None) -> Path:
    import onnx

    model = onnx.load(path)
    entries = {e.key: e.value for e in model.metadata_props}
    if value is None:
        entries.pop(f"adaptive_perception.{key}")
    else:
        entries[f"adaptive_perception.{key}"] = value
    del model.metadata_props[:]
    for k, v in entries.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("damage,needle", [
    ("missing", "does not exist"),
    ("garbage", "is not an ONNX model"),
    ("truncated", "is not an ONNX model"),
    ("detector", "uses operators ["),  # a YOLO graph: Resize, Split, ... (before its missing metadata)
    # a crafted graph ran inside the node's executor at load: a Loop of 10^15 turns hung it, deaf to SIGTERM, and
    # ConstantOfShape asked for 6 GB
    ("alloc", "uses operators ['ConstantOfShape']"),
    # and within the allowed operators: a 100 KB file whose product is [10000, 10000] (866 MB), a sparse tensor of
    # a few KB expanded at load, 8,000 operators (17 s to load, 1.5 s a frame)
    ("product", "'big' (MatMul) holds 100,000,000 elements for one frame, more than a routing policy's"),
    ("sparse", "holds sparse tensors"),
    ("chain", "has 1001 operators, more than a routing policy's 1000"),
    ("long_id", "policy_id (300 characters) must be printable and at most 128 characters"),  # 4 MB went into every
    ("escape_id", "policy_id (12 characters) must be printable"),  # metrics scrape, decision and log line
    # a drift window of -1 passed the checks and raised inside load_policy's callback: the node died
    ("drift_window", "is not usable: window -1 must be a whole number in [1, 9000]"),
    ("drift_nan", "is not usable: mean must be a list of finite numbers"),
    ("version", "was trained on features 'grad32-log1p+ctx4/1'"),
    ("tiers", "routes to tiers ['large', 'small', 'nano']"),
    ("std", "std > 0"),
    ("mean", "shapes (5,)"),
    ("id", "policy_id is empty"),
    ("bad_text", "its metadata is not valid text"),  # was a bare UnicodeDecodeError (a traceback in the CLI)
])
def test_bad_policy_files_are_refused_naming_the_file_and_the_problem(damage, needle, tmp_path, peer_model):
    path = constant_policy(tmp_path / "policy.onnx", (0.2, 0.3, 0.5))
    if damage == "missing":
        path = tmp_path / "nope.onnx"
    elif damage == "garbage":
        path.write_bytes(b"\x00not an onnx file at all")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "detector":
        path = peer_model
    elif damage == "alloc":
        import onnx
        from onnx import helper, numpy_helper

        model = onnx.load(path)
        model.graph.initializer.append(numpy_helper.from_array(np.array([1_500_000_000], np.int64), "big_shape"))
        model.graph.node.append(helper.make_node("ConstantOfShape", ["big_shape"], ["big"]))
        onnx.save(model, path)
    elif damage in ("product", "sparse", "chain"):
        import onnx
        from onnx import helper, numpy_helper

        model = onnx.load(path)
        graph = model.graph
        if damage == "product":
            graph.initializer.extend([numpy_helper.from_array(np.ones((10000, 1), np.float32), "column"),
                                      numpy_helper.from_array(np.ones((1, 10000), np.float32), "row")])
            graph.node.append(helper.make_node("MatMul", ["column", "row"], ["big"]))
        elif damage == "sparse":
            values = numpy_helper.from_array(np.ones(1, np.float32), "v")
            indices = numpy_helper.from_array(np.zeros((1, 2), np.int64), "i")
            graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [10000, 10000]))
            graph.sparse_initializer[0].values.name = "huge"
        else:
            for index in range(1000):
                graph.node.append(helper.make_node("Identity", [graph.output[0].name if index == 0 else f"c{index - 1}"],
                                                   [f"c{index}"]))
        onnx.save(model, path)
    elif damage == "long_id":
        _edit_metadata(path, "policy_id", "x" * 300)
    elif damage == "escape_id":
        _edit_metadata(path, "policy_id", "ok\x1b[2J\nFATAL")
    elif damage in ("drift_window", "drift_nan"):
        from adaptive_perception.drift import BINS, PROJECTIONS, DriftReference

        reference = DriftReference(mean=[0.0] * 4, std=[1.0] * 4, edges=[list(map(float, range(1, BINS)))] * PROJECTIONS,
                                   tier_mix=[0.5, 0.3, 0.2], agreement=0.8, thresholds={"feature_psi": 1.0},
                                   window=10)
        assert DriftReference.from_json(reference.to_json()).window == 10  # as written, it is read
        if damage == "drift_window":
            reference.window = -1
        else:
            reference.mean[2] = float("nan")
        _edit_metadata(path, "drift", reference.to_json())
    elif damage == "version":
        _edit_metadata(path, "feature_version", "grad32-log1p+ctx4/1")
    elif damage == "tiers":
        _edit_metadata(path, "tiers", json.dumps(["large", "small", "nano"]))
    elif damage == "std":
        _edit_metadata(path, "feature_std", json.dumps([0.0] * FEATURE_SIZE))
    elif damage == "mean":
        _edit_metadata(path, "feature_mean", json.dumps([0.0] * 5))
    elif damage == "id":
        _edit_metadata(path, "policy_id", " ")
    elif damage == "bad_text":  # one byte of a metadata value damaged, the graph intact
        _edit_metadata(path, "policy_id", "ZZZZ")
        path.write_bytes(path.read_bytes().replace(b"ZZZZ", b"Z\xb5ZZ"))
    with pytest.raises(PolicyFileError) as error:
        Policy(path)
    assert str(path) in str(error.value) and needle in str(error.value)


def test_learned_mode_sends_a_dense_and_a_sparse_frame_to_different_tiers(regime_frames, regime_policy, tmp_path):
    router = Router("learned", Policy(regime_policy))
    decide = {k: router.decide(routing_features(rgb, RoutingContext()), RoutingContext()) for k, rgb in regime_frames.items()}
    assert (decide["dense"].tier_name, decide["sparse"].tier_name) == ("large", "nano")
    assert decide["dense"].policy_id == "dense-to-large" and decide["dense"].mode == "learned"
    assert decide["dense"].probabilities[2] > 0.5 > decide["sparse"].probabilities[2]
    router.set_policy(Policy(two_frame_policy(tmp_path / "reverse.onnx", regime_frames, "reverse", reverse=True)))
    flipped = router.decide(routing_features(regime_frames["dense"], RoutingContext()), RoutingContext())
    assert (flipped.tier_name, flipped.policy_id) == ("nano", "reverse")


def test_hysteresis_keeps_the_previous_tier_unless_the_margin_is_beaten(tmp_path):
    policy = Policy(constant_policy(tmp_path / "c.onnx", (0.30, 0.45, 0.25)))
    x = np.zeros(FEATURE_SIZE, np.float32)
    from_nano = RoutingContext(prev_count=1, prev_tier=0)
    assert Router("learned", policy).decide(x, from_nano).tier_name == "small"
    assert Router("learned", policy, RouterSettings(hysteresis=0.1)).decide(x, from_nano).tier_name == "small"
    assert Router("learned", policy, RouterSettings(hysteresis=0.2)).decide(x, from_nano).tier_name == "nano"
    # no previous tier on a camera's first frame: nothing to stick to
    assert Router("learned", policy, RouterSettings(hysteresis=0.2)).decide(x, RoutingContext()).tier_name == "small"


def test_heuristic_follows_the_previous_routed_count():
    router = Router("heuristic", None, RouterSettings(heuristic_thresholds=(3, 8)))
    x = np.zeros(FEATURE_SIZE, np.float32)
    assert router.decide(x, RoutingContext()).tier_name == "large"  # first frame of a camera
    tiers = [router.decide(x, RoutingContext(prev_count=n, prev_tier=1)).tier_name for n in (0, 2, 3, 7, 8, 40)]
    assert tiers == ["nano", "nano", "small", "small", "large", "large"]
    decision = router.decide(x, RoutingContext(prev_count=5, prev_tier=0))
    assert decision.probabilities.tolist() == [0.0, 1.0, 0.0] and decision.policy_id == ""


def test_random_mode_is_seeded_and_draws_the_given_mix():
    x, context = np.zeros(FEATURE_SIZE, np.float32), RoutingContext()
    settings = RouterSettings(random_mix=(6.0, 3.0, 1.0), random_seed=11)
    router_a, router_b = Router("random", None, settings), Router("random", None, settings)
    draws = [router_a.decide(x, context).tier for _ in range(4000)]
    assert draws == [router_b.decide(x, context).tier for _ in range(4000)]
    np.testing.assert_allclose(np.bincount(draws, minlength=3) / 4000, [0.6, 0.3, 0.1], atol=0.025)
    assert router_a.decide(x, context).probabilities.tolist() == pytest.approx([0.6, 0.3, 0.1])
    other = Router("random", None, RouterSettings(random_mix=(6.0, 3.0, 1.0), random_seed=12))
    assert [other.decide(x, context).tier for _ in range(4000)] != draws


def test_fixed_modes_and_refused_modes(tmp_path):
    x, context = np.zeros(FEATURE_SIZE, np.float32), RoutingContext(prev_count=30, prev_tier=2)
    router = Router("fixed:small", None)
    assert router.decide(x, context).tier_name == "small"
    with pytest.raises(ConfigError, match="needs a policy"):
        router.set_mode("learned")
    assert router.mode == "fixed:small"
    with pytest.raises(ConfigError, match="'fixed:huge' is unknown; use one of learned, heuristic, random, fixed:nano"):
        router.set_mode("fixed:huge")
    router.set_policy(Policy(constant_policy(tmp_path / "c.onnx", (0.1, 0.1, 0.8))))
    router.set_mode("learned")
    assert router.decide(x, context).tier_name == "large"
    with pytest.raises(ConfigError, match="random_mix"):
        RouterSettings(random_mix=(0.0, 0.0, 0.0)).validate()
    with pytest.raises(ConfigError, match="heuristic_thresholds"):
        RouterSettings(heuristic_thresholds=(8, 3)).validate()
    with pytest.raises(ConfigError, match=r"heuristic_thresholds \[3, 8, 12\] must be two counts"):
        RouterSettings(heuristic_thresholds=(3, 8, 12)).validate()
    with pytest.raises(ConfigError, match="random_seed -1 must be >= 0"):
        RouterSettings(random_seed=-1).validate()


def test_embedded_policy_is_the_one_the_reports_evaluate():
    """The embedded policy is the routing report's BC + PPO seed 0, and the held-out, throughput, drift, router
    overhead and streaming-operating-point reports measure that same file (a policy swapped without re-measuring
    them, or a report run on another policy, fails here)."""
    policy = Policy(resolve_model("embedded:policy"))
    reports = ROOT / "training" / "reports"
    assert json.loads((reports / "routing.json").read_text())["policies"]["ppo"][0] == policy.policy_id
    for name in ("heldout.json", "throughput.json", "drift.json", "overhead.json"):
        assert json.loads((reports / name).read_text())["policy_id"] == policy.policy_id, name
    streaming = json.loads((reports / f"streaming_weight_{policy.policy_id}.json").read_text())
    assert f"{policy.policy_id}, own weight" in streaming["rows"]
    signal = json.loads((reports / "regime_signal.json").read_text())
    assert signal["test"]["balanced_accuracy"] > signal["majority_baseline"]["balanced_accuracy"]


def test_a_reference_written_before_it_named_its_weight_is_read_at_the_policys_own_weight():
    """The embedded policy's drift reference was measured at the policy's own cost weight before references recorded
    it; the loader fills it in, so a node routing at another weight knows its tier mix is not comparable."""
    import onnx

    from adaptive_perception.config import EMBEDDED_DIR
    from adaptive_perception.drift import METADATA_KEY

    path = EMBEDDED_DIR / "policy.onnx"
    stored = json.loads(next(e.value for e in onnx.load(str(path)).metadata_props if e.key == METADATA_KEY))
    assert "cost_weight" not in stored
    policy = Policy(path)
    own = policy.value_head.cost_weight
    assert policy.drift_reference.cost_weight == own and 0.0 < own < 1.0
    assert Router("learned", policy).operating_point() == ("learned", own, 0.0)
    assert Router("learned", policy, RouterSettings(cost_weight=0.5, hysteresis=0.1)).operating_point() == \
        ("learned", 0.5, 0.1)
    assert Router("heuristic", policy).operating_point()[0] == "heuristic"


def test_regime_scores_by_hand_and_the_softmax_fit_separates_separable_regimes():
    from adaptive_perception.training.regime import fit_softmax, scores

    # sparse twice (one called moderate), moderate once (right), dense once (called moderate)
    result = scores(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]))
    assert result["confusion"]["counts"] == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]
    assert result["recall"] == {"sparse": 0.5, "moderate": 1.0, "dense": 0.0}
    assert result["accuracy"] == 0.5 and result["balanced_accuracy"] == 0.5
    # a class absent from the truth is left out of the balanced accuracy: (1 + 0.5) / 2
    assert scores(np.array([0, 1, 1]), np.array([0, 1, 0]))["balanced_accuracy"] == 0.75
    # three clusters on three axes, 1:4:2 (class-balanced weights): every point on its own regime
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], [20, 80, 40])
    x = np.eye(3)[y] * 3 + rng.normal(0, 0.3, (len(y), 3))
    w, b = fit_softmax(x, y, l2=1e-3, steps=300)
    assert (np.argmax(x @ w + b, axis=1) == y).all()


def test_what_the_router_cannot_route_by_is_refused_not_sent_to_nano(tmp_path):
    """Non-finite inputs gave NaN probabilities, whose argmax routed to nano without a word; a context out of range
    fed the policy values it never saw; a path where a Policy belongs failed on an attribute deep inside."""
    policy = Policy("embedded:policy")  # the node's parameter value works in the library too
    assert policy.path == resolve_model("embedded:policy")
    router = Router("learned", policy)
    with pytest.raises(ValueError, match=r"gave probabilities \[nan, nan, nan\] for this frame \(1028 non-finite"):
        router.decide(np.full(FEATURE_SIZE, np.inf, np.float32), RoutingContext())
    for bad in ({"prev_tier": 5}, {"prev_tier": -2}, {"prev_count": -1}, {"prev_mean_score": float("nan")},
                {"prev_median_size": float("inf")}):
        with pytest.raises(ValueError, match="routing context"):
            RoutingContext(**bad)
    with pytest.raises(TypeError, match=r"the router takes a loaded Policy, not str 'p.onnx'"):
        Router("learned", "p.onnx")
    with pytest.raises(ConfigError, match="routing mode 'learned' needs a policy"):
        router.set_policy(None)
    assert router.policy is policy  # left as it was
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(PolicyFileError, match=r"is empty \(0 bytes\)"):
        Policy(tmp_path / "empty.onnx")


def test_a_tie_with_the_previous_tier_keeps_it(tmp_path):
    policy = Policy(constant_policy(tmp_path / "tie.onnx", (0.4, 0.4, 0.2)))
    x = np.zeros(FEATURE_SIZE, np.float32)
    # argmax picks nano (first of the tie); the margin over small is 0, not more than the hysteresis 0: stay on small
    assert Router("learned", policy).decide(x, RoutingContext(prev_count=1, prev_tier=1)).tier_name == "small"


def test_an_explicit_cost_weight_of_zero_is_the_operating_point(tmp_path):
    policy = Policy(value_policy(tmp_path / "v.onnx", (0.0, 0.5, 0.8), (0.2, 0.5, 1.0), cost_weight=1.0))
    assert Router("learned", policy, RouterSettings(cost_weight=0.0)).operating_point() == ("learned", 0.0, 0.0)


def test_equal_heuristic_thresholds_are_a_two_tier_rule():
    """[5, 5]: below 5 nano, from 5 large (no small band); 0 <= low <= high allows it (report's grid uses them)."""

    settings = RouterSettings(heuristic_thresholds=(5, 5)).validate()
    router = Router("heuristic", None, settings)
    x = np.zeros(FEATURE_SIZE, np.float32)
    tiers = [router.decide(x, RoutingContext(prev_count=n, prev_tier=0)).tier_name for n in (0, 4, 5, 9)]
    assert tiers == ["nano", "nano", "large", "large"]


def test_a_tier_of_weight_zero_in_the_random_mix_is_never_drawn():
    """random_mix [1, 1, 0]: half nano, half small, never large; its probabilities are [0.5, 0.5, 0]."""

    router = Router("random", None, RouterSettings(random_mix=(1.0, 1.0, 0.0), random_seed=4))
    x, context = np.zeros(FEATURE_SIZE, np.float32), RoutingContext()
    draws = [router.decide(x, context).tier for _ in range(600)]
    assert 2 not in draws and set(draws) == {0, 1}
    assert router.decide(x, context).probabilities.tolist() == [0.5, 0.5, 0.0]


def test_a_model_whose_metadata_kind_is_not_a_policy_is_refused(tmp_path):


    path = _edit_metadata(constant_policy(tmp_path / "p.onnx", (0.2, 0.3, 0.5)), "kind", "detector")
    with pytest.raises(PolicyFileError, match="metadata kind is 'detector'"):
        Policy(path)


def test_a_non_finite_feature_mean_is_refused_at_load(tmp_path):
    """mean[7] = NaN: every frame's normalised input would be NaN; refused naming feature 7, 1 bad in all."""

    mean = [0.0] * FEATURE_SIZE
    mean[7] = float("nan")
    path = _edit_metadata(constant_policy(tmp_path / "p.onnx", (0.2, 0.3, 0.5)), "feature_mean", json.dumps(mean))
    with pytest.raises(PolicyFileError, match=r"must be finite with std > 0 \(not at feature 7, 1 in all\)"):
        Policy(path)


def test_a_negative_tier_cost_is_refused(tmp_path):


    path = _edit_metadata(value_policy(tmp_path / "v.onnx", (0.0, 0.5, 0.8), (0.2, 0.5, 1.0), 1.0), "tier_cost",
                          "[-1, 0.5, 1]")
    with pytest.raises(PolicyFileError, match=r"tier_cost \[-1.0, 0.5, 1.0\] must be 3 non-negative numbers"):
        Policy(path)


def test_a_policy_calibrated_to_weight_zero_loads_and_routes_by_value_alone(tmp_path):
    """calibrate_weight returns 0 when weight 0 fits the budget: such a file must load. Values (0, 0.5, 0.8) at
    weight 0: argmax is large (index 2)."""

    policy = Policy(value_policy(tmp_path / "v0.onnx", (0.0, 0.5, 0.8), (0.2, 0.5, 1.0), 0.0))
    assert policy.value_head.cost_weight == 0.0
    assert Router("learned", policy).decide(np.zeros(FEATURE_SIZE, np.float32), RoutingContext()).tier_name == "large"
