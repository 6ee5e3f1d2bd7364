"""`bench latency`, `bench throughput` and `bench cost` in their quick modes (what CI runs), on the real embedded
tiers, real YOLOv8 graphs from Ultralytics' yaml, real rosbag2 files and real onnxruntime sessions; the cost model
by hand; onnxruntime's thread spinning as a tier option."""
from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from adaptive_perception.config import NodeConfig, resolve_model
from adaptive_perception.detector import TIERS, DetectorTier
from adaptive_perception.drift import _QUALITY_INDEX, DriftMonitor, quality_shift, veil
from adaptive_perception.errors import AdaptivePerceptionError, ConfigError
from adaptive_perception.features import image_features
from adaptive_perception.policy import Policy
from adaptive_perception.training import fleet_cost, throughput
from adaptive_perception.training.labels import Costs

FRAMES = throughput.QUICK["frames"] * throughput.QUICK["sequences"]


def _cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["adaptive-perception", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def quick_throughput(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("throughput")
    # no generated benchmark there: the frozen test sequences are rendered into bags, as on a fresh clone
    run = _cli("bench", "throughput", "--quick", "--benchmark", str(root / "no-benchmark"),
               "--modes", "learned,fixed:nano,fixed:large,fixed:large+spin,fixed:large+hostpre", "--report", str(root / "throughput.json"))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return {"root": root, "stdout": run.stdout, "report": json.loads((root / "throughput.json").read_text())}


def test_a_share_of_large_that_cannot_be_scored_is_said_in_words(quick_throughput):
    """A one-sequence, five-frame run printed "measured 8.38 at nan% of large's mAP50-95"."""

    report = copy.deepcopy(quick_throughput["report"])
    point = report["bars"]["operating_point"]
    assert point and "map_share_of_large" in report["bars"]["speedup"]
    report["bars"]["speedup"]["map_share_of_large"] = float("nan")
    line = next(line for line in throughput.table(report).splitlines() if line.startswith("- speedup:"))
    assert "nan" not in line and "(its share of large's mAP50-95 cannot be scored on these frames" in line, line


def test_quick_throughput_runs_every_mode_over_the_rendered_test_bags(quick_throughput):
    report = quick_throughput["report"]
    assert report["frames"] == FRAMES and report["sequences"] == ["seq046-40", "seq047-40"]
    modes = report["modes"]
    assert list(modes) == ["learned", "fixed:nano", "fixed:large", "fixed:large+spin", "fixed:large+hostpre"]
    for row in modes.values():
        assert len(row["samples"]["total_ms"]) == FRAMES == row["frames"]
        assert abs(sum(row["mix"].values()) - 1) < 1e-9
        assert row["drift_monitor_frames"] == FRAMES  # every mode's path ran the node's drift monitor on every frame
        # none of these decisions reads the image statistics (the embedded policy reads the context): the monitor's
        # are computed after the tier, so every feature + policy takes longer than the routing before the tier
        assert all(a > r for a, r in zip(row["samples"]["all_features_ms"], row["samples"]["routing_ms"]))
    assert modes["fixed:nano"]["mix"] == {"nano": 1.0, "small": 0.0, "large": 0.0}
    assert modes["fixed:large"]["mix"] == {"nano": 0.0, "small": 0.0, "large": 1.0}
    # the tiers really differ: large finds what nano misses on the same frames (tier family 2: 48 vs 19 on test)
    assert modes["fixed:large"]["map50_95"] > modes["fixed:nano"]["map50_95"] + 10
    assert modes["fixed:large"]["map50_95"] == pytest.approx(modes["fixed:large+spin"]["map50_95"])
    # the graph normalising the uint8 frame itself publishes what the host's float conversion gave, to the bit
    assert modes["fixed:large"]["map50_95"] == modes["fixed:large+hostpre"]["map50_95"]
    # the node overhead (the bar) ends when the detections are serialized: the drift update and the
    # RoutingDecision follow on every frame, and count in the work outside inference (throughput pays them)
    for row in modes.values():
        samples = row["samples"]
        assert all(s < d < t for s, d, t in zip(samples["session_ms"], samples["detections_ms"], samples["total_ms"]))
        assert row["node_overhead"]["mean_ms"] == pytest.approx(
            np.mean(np.subtract(samples["detections_ms"], samples["session_ms"])), rel=1e-3)
        assert row["work_outside_inference"]["mean_ms"] == pytest.approx(
            np.mean(np.subtract(samples["total_ms"], samples["session_ms"])), rel=1e-3)
        assert row["work_outside_inference"]["mean_ms"] > row["node_overhead"]["mean_ms"] + 0.1
    # a quick run's verdicts are marked as such; the whole split's are not
    assert "Bars at the operating point 'learned' (a run limited by --sequences / --frames, 80 frames a mode: " \
           "indicative only; the bars are judged on the whole test split):" in quick_throughput["stdout"]
    assert "Bars at the operating point 'learned':" in throughput.table({**quick_throughput["report"], "limited": False})


def test_quick_throughput_ratios_come_from_this_runs_samples(quick_throughput):
    report = quick_throughput["report"]
    base = throughput.baseline(report["modes"])
    assert report["comparisons"][base]["speedup_vs_large"] == pytest.approx(1.0)
    throughput.check_ratios(report)
    tampered = copy.deepcopy(report)  # a ratio carried over from another run no longer matches the samples
    tampered["comparisons"]["fixed:nano"]["speedup_vs_large"] *= 1.01
    with pytest.raises(AdaptivePerceptionError, match="fixed:nano.speedup_vs_large"):
        throughput.check_ratios(tampered)
    tampered = copy.deepcopy(report)
    tampered["modes"]["learned"]["samples"]["total_ms"][0] += 50.0
    with pytest.raises(AdaptivePerceptionError, match="learned"):
        throughput.check_ratios(tampered)


def test_more_sequences_or_frames_than_the_split_holds_are_said_not_silently_fewer(tmp_path, capsys):
    from adaptive_perception.bag import write_image_bag

    frames = [(10**9 + i * 33_000_000, np.full((48, 64, 3), 40 * i, np.uint8)) for i in range(3)]
    for name in ("seq046", "seq047"):
        write_image_bag(tmp_path / "bags" / "test" / name, frames)
        (tmp_path / "bags" / "test" / name / "ground_truth.json").write_text(
            json.dumps({"frames": {str(stamp): {"objects": []} for stamp, _ in frames}}))
    def lengths(sequences, frames):
        data, whole = throughput.split_bags(tmp_path, sequences, frames, tmp_path / "cache")
        return [len(s.cdr) for s in data], whole
    # asking for exactly what the split holds is the whole split (its verdicts are not marked indicative)
    assert lengths(2, 3) == ([3, 3], True)
    assert "asked for" not in capsys.readouterr().out
    assert lengths(99, 500) == ([3, 3], True)
    assert "asked for 99 sequences of 500 frames: the test split has 2 sequences of 3-3 frames; all of them are " \
           "used" in capsys.readouterr().out
    assert lengths(1, None) == ([3], False) and lengths(None, 2) == ([2, 2], False)
    empty = tmp_path / "files-only"
    (empty / "bags" / "test").mkdir(parents=True)
    (empty / "bags" / "test" / "notes.txt").write_text("not a bag")  # failed in max() of nothing
    with pytest.raises(AdaptivePerceptionError, match="holds no bag folders"):
        throughput.split_bags(empty, None, None, tmp_path / "cache")


def test_a_test_bag_frame_without_ground_truth_is_named_not_a_key_error(tmp_path):
    from adaptive_perception.bag import write_image_bag

    frames = [(10**9 + i * 33_000_000, np.full((48, 64, 3), 40 * i, np.uint8)) for i in range(3)]
    bag = tmp_path / "bags" / "test" / "seq046"
    write_image_bag(bag, frames)
    (bag / "ground_truth.json").write_text(json.dumps({"frames": {str(s): {"objects": []} for s, _ in frames[:2]}}))
    with pytest.raises(AdaptivePerceptionError, match=rf"seq046: frame 2 on '/camera/image_raw' \(stamp {frames[2][0]}\) is "
                                                      r"not in its ground_truth.json; .* generate them again"):
        throughput.split_bags(tmp_path, None, None, tmp_path / "cache")
    assert len(throughput.split_bags(tmp_path, None, 2, tmp_path / "cache")[0][0].cdr) == 2  # the frames before


def test_the_per_frame_path_publishes_the_chosen_tiers_detections():
    bags, whole = throughput.split_bags(Path("no-benchmark"), 1, throughput.QUICK["frames"], Path("build/bench/test-bags"))
    assert not whole  # rendered: 1 of the frozen test sequences, cut short
    sequence = throughput.Sequence(bags[0].name, bags[0].cdr[:3], bags[0].records[:3])
    from adaptive_perception.bag import BagImage, bag_image_rgb

    frames = [bag_image_rgb(BagImage("/camera", "sensor_msgs/msg/Image", 0, c, 0, 0, "")) for c in sequence.cdr]
    detectors = {t: DetectorTier(resolve_model(f"embedded:{t}"), name=t) for t in TIERS}
    boxes = {}
    for tier in ("nano", "large"):
        run = throughput.ModeRun(f"fixed:{tier}")
        throughput.run_sequence(run, throughput.make_router(f"fixed:{tier}", None, None), detectors, sequence, 100)
        expected = [detectors[tier].detect(rgb) for rgb in frames]
        assert run.tiers == [TIERS.index(tier)] * 3
        assert [d["image_id"] for d in run.detections] == [100 + i for i, e in enumerate(expected) for _ in range(len(e))]
        got = np.array([d["bbox"] for d in run.detections]).reshape(-1, 4)
        want = np.concatenate([e.boxes for e in expected])
        assert np.allclose(got[:, :2], want[:, :2], atol=1e-3) and np.allclose(got[:, 2:], want[:, 2:] - want[:, :2], atol=1e-3)
        boxes[tier] = got
    # the two tiers' boxes differ, so the comparison with each tier's own output above would catch the wrong tier
    assert boxes["nano"].shape != boxes["large"].shape or not np.allclose(boxes["nano"], boxes["large"], atol=1.0)
    # the drift monitor is on the path as in the node: each frame enters it with its veil, and it carries on
    # across sequences (a camera's stream); with a 2-frame window the veil statistic is the last two frames'
    reference = Policy(resolve_model("embedded:policy")).drift_reference
    run = throughput.ModeRun("fixed:nano", monitor=DriftMonitor(replace(reference, window=2)))
    for first in (0, 3):
        throughput.run_sequence(run, throughput.make_router("fixed:nano", None, None), detectors, sequence, first)
    assert run.monitor.frames == 6
    last_two = np.mean([veil(frames[1]), veil(frames[2])])
    assert run.monitor.statistics["veil"] == pytest.approx((last_two - reference.veil_mean) / reference.veil_std)
    # the rule read no image statistics; they were computed after the tier, and the monitor got the frames' own
    quality = np.stack([image_features(f)[_QUALITY_INDEX] for f in frames[1:]]).astype(np.float64)
    assert run.monitor.statistics["image_quality"] == pytest.approx(quality_shift(run.monitor.reference, quality))
    assert len(run.deferred_feature_ms) == 6 and min(run.deferred_feature_ms) > 0


def _mode_row(frame_ms: float, map50_95: float, frames: int = 200) -> dict:
    """A throughput report's mode row whose every frame took `frame_ms`."""
    return {"busy_s": frame_ms * frames / 1e3, "frames": frames, "fps": 1e3 / frame_ms, "map50_95": map50_95,
            "samples": {"total_ms": [frame_ms] * frames, "session_ms": [frame_ms - 1.25] * frames}}


def _throughput_report() -> dict:
    modes = {"learned": _mode_row(16.85, 32.0), "fixed:large": _mode_row(63.0, 50.0),
             "fixed:large+spin": _mode_row(65.0, 50.0)}
    # the projection by hand: 1.25 ms outside inference in the learned mode's samples; always-large 248.75 + 1.25;
    # the accuracy point 0.6 x 10 + 0.2 x 30 + 0.2 x 248.75 = 61.75 ms of inference, 63.0 a frame, 250 / 63 faster
    accuracy = {"mix": {"nano": 0.6, "small": 0.2, "large": 0.2}, "inference_ms": 61.75, "frame_ms": 63.0,
                "speedup": 250.0 / 63.0, "map50_95": 45.0, "map_share_of_large": 0.9}
    return {"run_id": "abc", "machine": {"cores": 2}, "bars": {"operating_point": "learned"},
            "comparisons": throughput.comparisons(modes), "modes": modes,
            "projection": {"tiers_ms": {"nano": 10.0, "small": 30.0, "large": 248.75}, "outside_inference_ms": 1.25,
                           "always_large": {"frame_ms": 250.0, "map50_95": 50.0},
                           "points": {"accuracy": accuracy, "cost_bar": None}}}


def test_cost_model_by_hand(tmp_path):
    report = _throughput_report()
    path = tmp_path / "throughput.json"
    path.write_text(json.dumps(report))
    # 7 robots x 12.5 FPS x 10 h/day: 7 * 12.5 * 36,000 * 30.4375 = 95,878,125 frames a month
    out = fleet_cost.run(path, robots=7, fps=12.5, price=0.8, hours_per_day=10, report_path=tmp_path / "cost.json")
    assert out["baseline"] == "fixed:large"  # the faster always-large (0.063 s against 0.065 s a frame)
    learned, large = out["modes"]["learned"], out["modes"]["fixed:large"]
    assert learned["frames_per_month"] == pytest.approx(95_878_125)
    # 95,878,125 x 0.01685 s / 3600 = 448.76289 device-hours; large: x 0.063 s = 1677.86719
    assert learned["device_hours_per_month"] == pytest.approx(448.76289, rel=1e-6)
    assert large["device_hours_per_month"] == pytest.approx(1677.86719, rel=1e-6)
    assert learned["cost_per_month_usd"] == pytest.approx(359.01031, rel=1e-6)
    assert learned["saving_per_month_usd"] == pytest.approx(983.28344, rel=1e-6)
    assert learned["cost_reduction"] == pytest.approx(1 - 0.01685 / 0.063, rel=1e-6)
    assert learned["devices_per_robot"] == pytest.approx(0.210625) and learned["one_device_keeps_up"]
    assert large["devices_per_robot"] == pytest.approx(0.7875) and large["one_device_keeps_up"]
    assert not fleet_cost.monthly(0.05, 1, 30.0, 1.0, 24)["one_device_keeps_up"]  # 1.5 devices per robot
    # the claim is the origin's fleet's, whatever fleet was asked for: 1,000 x 30 FPS x 86,400 s x 30.4375 days =
    # 78,894,000,000 frames a month; x (0.063 - 0.01685) s / 3600 = 1,011,371.75 device-hours saved; $72,000 / that
    assert out["ours_at_operating_point"]["price_for_origin_saving"] == pytest.approx(0.07119005, rel=1e-6)
    projected = out["projection"]["learned (accuracy point)"]
    assert projected["cost_reduction"] == pytest.approx(1 - 63.0 / 250.0)
    assert list(out["projection"]) == ["always-large", "learned (accuracy point)"]  # no row for a missing point
    assert json.loads((tmp_path / "cost.json").read_text())["modes"]["learned"]["device_s_per_frame"] == \
        pytest.approx(0.01685, rel=1e-12)
    # every row beside its accuracy (learned keeps 32 of large's 50), the baseline marked
    printed = fleet_cost.table(out)
    assert "| learned | 64% | 16.9 | 0.21 | 449 | $359 | 73% ($983) |" in printed
    assert "| fixed:large (the baseline) | 100% | 63.0 |" in printed and "| fixed:large+spin | 100% | 65.0 |" in printed
    assert "| PROJECTION (real YOLOv8 costs) learned (accuracy point) | 90% | 63.0 |" in printed
    assert (fleet_cost.dollars(983.28344), fleet_cost.dollars(-28705.4), fleet_cost.dollars(-0.3)) == \
        ("$983", "-$28,705", "$0")  # printed "$-28,705"
    with pytest.raises(ConfigError, match="--robots 0"):
        fleet_cost.fleet(report, 0, 30, 1.0, 24)
    with pytest.raises(AdaptivePerceptionError, match="bench throughput"):
        fleet_cost.run(tmp_path / "missing.json", 1, 30, 1.0, 24, tmp_path / "x.json")


@pytest.mark.parametrize("edit,says", [
    (lambda r: r["modes"]["learned"].update(busy_s=33.7), "busy_s 33.7 are not the count and the sum"),
    (lambda r: r["comparisons"]["learned"].update(speedup_vs_large=9.0), "ratio learned.speedup_vs_large = 9.0"),
    (lambda r: [r["modes"].pop(k) for k in ("fixed:large", "fixed:large+spin")], "no fixed:large mode"),
    (lambda r: r["bars"].update(operating_point=None), "no learned mode to price"),
    (lambda r: r["modes"]["learned"].update(frames=0), "frames 0"),
    # the projection's rows follow from its tier costs, its mixes and the run's samples (a buyer's edit priced a
    # projected frame at 100 ms without a word)
    (lambda r: r["projection"]["points"]["accuracy"].update(frame_ms=100.0), "projection.points.accuracy.frame_ms = 100.0"),
    (lambda r: r["projection"]["points"]["accuracy"].update(speedup=3.5), "projection.points.accuracy.speedup = 3.5"),
    (lambda r: r["projection"]["always_large"].update(frame_ms=400.0), "projection.always_large.frame_ms = 400.0"),
    (lambda r: r["projection"]["points"]["accuracy"]["mix"].update(nano=0.7, small=0.1),
     "projection.points.accuracy.inference_ms = 61.75 but"),
    (lambda r: r["projection"]["tiers_ms"].update(large=100.0), "projection.always_large.frame_ms = 250.0 but"),
    (lambda r: r["projection"].update(outside_inference_ms=0.5), "projection.outside_inference_ms = 0.5"),
    (lambda r: r["projection"]["points"]["accuracy"].update(map_share_of_large=0.95),
     "projection.points.accuracy.map_share_of_large = 0.95"),
])
def test_the_cost_model_refuses_a_throughput_report_it_cannot_trust(tmp_path, edit, says):
    report = _throughput_report()
    edit(report)
    path = tmp_path / "throughput.json"
    path.write_text(json.dumps(report))
    with pytest.raises(AdaptivePerceptionError, match=f"{path}: .*{re.escape(says)}.*unedited report"):
        fleet_cost.run(path, 1000, 30, 1.0, 24, tmp_path / "cost.json")
    assert not (tmp_path / "cost.json").exists()


def test_cost_of_another_throughput_report_is_not_written_over_the_committed_one(tmp_path):
    (tmp_path / "throughput.json").write_text(json.dumps(_throughput_report()))
    run = subprocess.run(["adaptive-perception", "bench", "cost", "--throughput", "throughput.json"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "build/bench/cost.json").is_file() and not (tmp_path / "training").exists()
    # the committed throughput report, priced for a buyer's own fleet: not written over the README's cost report
    committed = tmp_path / "checkout" / "training" / "reports"
    committed.mkdir(parents=True)
    shutil.copy(Path("training/reports/throughput.json"), committed / "throughput.json")
    (committed / "cost.json").write_text("the committed one")
    run = subprocess.run(["adaptive-perception", "bench", "cost", "--robots", "250", "--fps", "15"],
                         cwd=tmp_path / "checkout", capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert (committed / "cost.json").read_text() == "the committed one" and "wrote build/bench/cost.json" in run.stdout
    assert json.loads((tmp_path / "checkout/build/bench/cost.json").read_text())["inputs"]["robots"] == 250
    run = subprocess.run(["adaptive-perception", "bench", "cost", "--price", "2"], cwd=tmp_path / "checkout",
                         capture_output=True, text=True, timeout=120)  # another price alone: not the README's either
    assert run.returncode == 0 and "wrote build/bench/cost.json" in run.stdout, run.stderr
    assert (committed / "cost.json").read_text() == "the committed one"
    run = subprocess.run(["adaptive-perception", "bench", "cost"], cwd=tmp_path / "checkout", capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0 and "wrote training/reports/cost.json" in run.stdout, run.stderr


def test_quick_latency_times_embedded_and_real_yolov8_graphs(tmp_path):
    report_path, latency_out = tmp_path / "latency.json", tmp_path / "yolov8.json"
    run = _cli("bench", "latency", "--quick", "--iterations", "5", "--graphs", "build/yolov8-random",
               "--report", str(report_path), "--latency-out", str(latency_out))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(report_path.read_text())
    models = report["models"]
    assert {name: row["input_hw"] for name, row in models.items()} == {
        "nano@embedded": [192, 256], "small@embedded": [320, 416], "large@embedded": [480, 640],
        "nano@320": [320, 320], "small@320": [320, 320], "large@320": [320, 320]}
    for row in models.values():
        assert row["samples"] == 5 and row["provider"] == "CPUExecutionProvider"
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
    # the real architectures, not stand-ins: YOLOv8n/s/l carry 3.2 M / 11.2 M / 43.7 M parameters
    parameters = {t: sum(int(np.prod(i.dims)) for i in onnx.load(models[f"{t}@320"]["file"]).graph.initializer)
                  for t in ("nano", "small", "large")}
    assert 3.0e6 < parameters["nano"] < 3.4e6 and 10.9e6 < parameters["small"] < 11.4e6
    assert 43.0e6 < parameters["large"] < 44.5e6
    # YOLOv8l's weights alone are 175 MB; the embedded tiers are three 12 MB files
    assert report["memory"]["yolov8@320"]["tiers_rss_mb"] > 175 > report["memory"]["embedded"]["tiers_rss_mb"]
    assert report["ratios"]["large_over_nano_p50@320"] == pytest.approx(
        models["large@320"]["p50_ms"] / models["nano@320"]["p50_ms"])
    costs = Costs.load(latency_out)  # what `train --latency` and the projection read
    assert costs.ms.tolist() == pytest.approx([round(models[f"{t}@320"]["mean_ms"], 3) for t in TIERS])
    assert "YOLOv8l | 320x320" in run.stdout
    assert "| embedded nano | 192x256 |" in run.stdout  # height x width, as `models compare` and the README write it


def test_latency_of_ones_own_tier_files_makes_their_latency_file_without_the_training_extra(tmp_path):
    """A robot's own tiers had no way to the `--latency` file `policy operating-point` reads but writing it by hand.
    The files given in another order than their sizes: each tier's row must be the file named for it."""
    files = {"nano": resolve_model("embedded:large"), "small": resolve_model("embedded:nano"),
             "large": resolve_model("embedded:small")}
    run = subprocess.run(["adaptive-perception", "bench", "latency", "--iterations", "5",
                          *[f"--model={t}={p}" for t, p in files.items()]],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((tmp_path / "build/bench/latency-own.json").read_text())  # never the committed reports
    models = report["models"]
    assert {name: (row["input_hw"], row["file"]) for name, row in models.items()} == {
        "nano@own": ([480, 640], files["nano"]), "small@own": ([192, 256], files["small"]),
        "large@own": ([320, 416], files["large"])}
    assert list(report["memory"]) == ["own"] and "YOLOv8" not in run.stdout  # no graphs built: no torch needed
    costs = Costs.load(tmp_path / "build/bench/latency-tiers.json")
    assert costs.ms.tolist() == pytest.approx([round(models[f"{t}@own"]["mean_ms"], 3) for t in TIERS])
    # timed as named: the large file (given as nano) is the slowest, the nano file (given as small) the fastest
    assert costs.ms[0] > costs.ms[2] > costs.ms[1]
    assert f"| nano: {files['nano']} | 480x640 |" in run.stdout
    # the files' digests travel with the timings: the embedded policy was trained with other files in each slot
    from adaptive_perception.detector import file_digest

    assert costs.digests == {t: file_digest(p) for t, p in files.items()}
    policy = Policy(resolve_model("embedded:policy"))
    said = costs.mismatches(policy)
    assert len(said) == 3 and said[0] == f"nano (timed {file_digest(files['nano'])}, policy trained with " \
        f"{policy.info.tier_digests['nano']})"
    assert Costs("d", costs.ms, {t: file_digest(resolve_model(f"embedded:{t}")) for t in TIERS}).mismatches(policy) == []
    partial = subprocess.run(["adaptive-perception", "bench", "latency", "--model", f"nano={files['nano']}"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert partial.returncode == 2 and "--model names nano: name all three tiers" in partial.stderr
    folder = subprocess.run(["adaptive-perception", "bench", "latency", "--quick", "--latency-out", str(tmp_path)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)  # refused before the run
    assert folder.returncode == 2 and f"--latency-out {tmp_path} is a folder" in folder.stderr


def test_mode_suffixes_set_the_tier_settings():
    assert throughput.tier_settings("learned:0.2") == ("learned:0.2", False, True)  # the node's defaults
    assert throughput.tier_settings("fixed:large+nospin") == ("fixed:large", False, True)
    assert throughput.tier_settings("fixed:large+spin") == ("fixed:large", True, True)
    assert throughput.tier_settings("learned:0.05+spin+hostpre") == ("learned:0.05", True, False)
    assert throughput.tier_settings("fixed:large+hostpre+nospin") == ("fixed:large", False, False)
    assert throughput.tier_settings("heuristic+nospin+hostpre") == ("heuristic", False, False)


def test_tier_sessions_spin_only_when_asked():
    entry = "session.intra_op.allow_spinning"
    model = resolve_model("embedded:nano")
    # sleeping threads: onnxruntime's spinning ones took the cores the node's own threads and neighbours needed
    assert NodeConfig().spin_wait is False
    # a tier built without saying (the training profile that measures the routing costs, the latency benches) runs
    # as the node does: costs measured with spinning threads were not the node's (small 23.8 against 18.1 ms)
    assert DetectorTier(model).session.get_session_options().get_session_config_entry(entry) == "0"
    assert DetectorTier(model, spin_wait=True).session.get_session_options().get_session_config_entry(entry) == "1"


def test_throughput_int8_mode_runs_the_8_bit_tiers_beside_the_32_bit_baseline(tmp_path):
    """`+int8`: the buyer's other always-large, measured in the same run and never the ratios' baseline."""
    import cv2

    from adaptive_perception.detector import file_digest
    from adaptive_perception.scenes.sequence import SequenceSpec, render_sequence

    router = tmp_path / "bench" / "images" / "router"
    router.mkdir(parents=True)
    for frame in render_sequence(SequenceSpec(11, 5, 8)):
        cv2.imwrite(str(router / f"seq005_{frame.index:04d}.jpg"), cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR))
    report_path = tmp_path / "t.json"

    def bench(*args: str) -> subprocess.CompletedProcess:  # in tmp_path: its own cache of bags and 8-bit tiers
        return subprocess.run(["adaptive-perception", "bench", "throughput", "--quick", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)

    run = bench("--benchmark", str(tmp_path / "bench"), "--modes", "fixed:large,fixed:large+int8", "--report",
                str(report_path))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(report_path.read_text())
    float_large, int8_large = report["modes"]["fixed:large"], report["modes"]["fixed:large+int8"]
    assert int8_large["mix"] == {"nano": 0.0, "small": 0.0, "large": 1.0} and int8_large["frames"] == FRAMES
    # other weights, nearly the same detections: a run of the 32-bit file again would score the same to the bit
    assert int8_large["map50_95"] != float_large["map50_95"]
    assert abs(int8_large["map50_95"] - float_large["map50_95"]) < 6
    assert report["comparisons"]["fixed:large"]["speedup_vs_large"] == 1.0  # the baseline: the 32-bit large tier
    digest = file_digest(resolve_model("embedded:large"))
    assert f"large in 8 bits -> build/bench/test-bags/int8/large-{digest}.onnx" in run.stdout
    assert (tmp_path / "build/bench/test-bags/int8" / f"large-{digest}.onnx").is_file()
    # without a router split to calibrate on (and no 8-bit tiers made before), the mode is refused naming what is
    # missing, before any bag is rendered or frame timed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = subprocess.run(["adaptive-perception", "bench", "throughput", "--quick", "--benchmark", str(tmp_path / "none"),
                          "--modes", "fixed:large,fixed:nano+int8", "--report", str(tmp_path / "u.json")],
                         cwd=elsewhere, capture_output=True, text=True, timeout=600)
    assert run.returncode == 2 and "no router split in" in run.stderr, run.stderr[-2000:]
    assert not (tmp_path / "u.json").exists() and not (elsewhere / "build").exists()
    # a router split without images: named as this mode's, with this mode's fix (not `models quantize`'s --images)
    (tmp_path / "hollow" / "images" / "router").mkdir(parents=True)
    run = subprocess.run(["adaptive-perception", "bench", "throughput", "--quick", "--benchmark",
                          str(tmp_path / "hollow"), "--modes", "fixed:large,fixed:nano+int8", "--report",
                          str(tmp_path / "u.json")], cwd=elsewhere, capture_output=True, text=True, timeout=600)
    assert run.returncode == 2, run.stderr[-2000:]
    assert f"mode suffix +int8: the router split '{tmp_path / 'hollow' / 'images' / 'router'}' holds no" in run.stderr
    assert "drop the +int8 modes" in run.stderr and "--images" not in run.stderr


def test_throughput_without_a_learned_mode_writes_its_report_without_bars(tmp_path):
    run = _cli("bench", "throughput", "--modes", "heuristic,fixed:large", "--benchmark", str(tmp_path / "none"),
               "--sequences", "1", "--frames", "3", "--work", str(tmp_path / "no-work"), "--report",
               str(tmp_path / "t.json"))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    report = json.loads((tmp_path / "t.json").read_text())
    assert list(report["modes"]) == ["heuristic", "fixed:large"] and report["bars"] == {"operating_point": None}
    assert "No bars: they are about the learned router" in run.stdout
    throughput.check_ratios(report)
    assert "--real-latency" not in run.stdout
    # --quick reads no work folder: a --real-latency named there is said to go unread (it was ignored silently)
    run = _cli("bench", "throughput", "--quick", "--modes", "heuristic,fixed:large", "--benchmark",
               str(tmp_path / "none"), "--sequences", "1", "--frames", "3", "--real-latency", str(tmp_path / "mine.json"),
               "--report", str(tmp_path / "q.json"))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert f"--real-latency {tmp_path / 'mine.json'} is not read: the projection needs the work folder" in run.stdout


def test_an_unknown_throughput_mode_is_named_as_unknown():
    run = _cli("bench", "throughput", "--modes", "learned@90,fixed:large", "--sequences", "1", "--frames", "3")
    assert run.returncode == 2 and "routing mode 'learned@90' is unknown" in run.stderr, run.stderr
    assert "weight after learned" not in run.stderr


def test_overhead_is_read_against_nanos_session_run_at_the_p95():
    from adaptive_perception.training import overhead

    report = overhead.measure("embedded:policy", 100)
    for tier in ("nano", "large"):  # session.run is part of the whole call, timed apart
        assert report["tier_session_640x480"][tier]["p50_ms"] < report["tier_inference_640x480"][tier]["p50_ms"]
    routing = report["routing"]["640x480"]["features_plus_policy"]
    share = report["overhead_p95_share_of_nano_session_p50"]
    # the bar's definition (p95 over session.run) reads higher than the p50 over the whole call it replaced
    assert share > routing["p50_ms"] / report["tier_inference_640x480"]["nano"]["p50_ms"]
    assert share * report["tier_session_640x480"]["nano"]["p50_ms"] == pytest.approx(routing["p95_ms"])
    assert "of nano's session.run p50 (bar 3 %: " in overhead.table(report)


def test_one_device_keeps_up_at_exactly_one_device_per_robot():
    """2 FPS x 0.5 device-s a frame = 1.0 device per robot: documented as keeping up (<= 1)."""

    row = fleet_cost.monthly(0.5, 1, 2.0, 1.0, 24)
    assert row["devices_per_robot"] == 1.0 and row["one_device_keeps_up"] is True


def _mode(total_ms: list[float], map50_95: float) -> dict:
    return {"fps": len(total_ms) / (sum(total_ms) / 1e3), "map50_95": map50_95, "samples": {"total_ms": total_ms}}


def test_ratios_against_always_large_by_hand():
    """large: nine frames of 40 ms and one of 140: 500 ms for 10 frames = 20 FPS, mean 50 ms, p95 at rank 8.55
    -> 40 + 0.55 x 100 = 95 ms. learned: ten frames of 20 ms = 50 FPS. Speed-up 50 / 20 = 2.5; mean latency
    1 - 20/50 = 0.6 lower; p95 1 - 20/95 = 15/19 lower; mAP share 45 / 50 = 0.9."""

    modes = {"learned": _mode([20.0] * 10, 45.0), "fixed:large": _mode([40.0] * 9 + [140.0], 50.0)}
    out = throughput.comparisons(modes)["learned"]
    assert out["speedup_vs_large"] == pytest.approx(2.5)
    assert out["latency_reduction_mean"] == pytest.approx(0.6)
    assert out["latency_reduction_p95"] == pytest.approx(15 / 19)
    assert out["map_share_of_large"] == pytest.approx(0.9)


def test_the_share_of_frames_over_the_30_fps_budget(monkeypatch):
    """Frames of 10, 40, 20, 34, 50 ms against 1000/30 = 33.3 ms: 40, 34 and 50 are over -> 3/5 = 0.6."""
    from adaptive_perception.training import throughput, tiers

    monkeypatch.setattr(tiers, "_coco_eval", lambda *_: (0.0, 0.0))
    total = [10.0, 40.0, 20.0, 34.0, 50.0]
    run = throughput.ModeRun("fixed:nano", total_ms=total, detections_ms=[t - 1.0 for t in total],
                             routing_ms=[0.1] * 5, session_ms=[t - 2.0 for t in total], tiers=[0] * 5)
    row = throughput.summarise(run, {}, 5)
    assert row["over_frame_budget_share"] == pytest.approx(0.6)
