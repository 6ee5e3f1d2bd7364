"""The command line refuses numbers it cannot use before any work starts (argparse exit 2, naming the option)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from adaptive_perception.cli import main


@pytest.mark.parametrize("argv, says", [
    # nan waited for ever in lock-step; 0 counted every frame as a timeout
    (["replay", "bag", "--timeout", "nan"], "argument --timeout: nan is not a number > 0"),
    (["train", "profile", "--tracking-uri", "file:/tmp/runs"], "argument --tracking-uri: 'file:/tmp/runs' is a folder; "
     "MLflow 3 keeps runs in a database or on a server: give sqlite:///PATH/mlflow.db"),
    (["replay", "bag", "--mode", "recorded", "--rate", "0"], "argument --rate: 0 is not a number > 0"),
    # 0 ended in an IndexError, nan in a ValueError, -1 ran for -60 seconds and wrote a report
    (["bench", "soak", "--minutes", "-1"], "argument --minutes: -1 is not a number > 0"),
    (["bench", "cost", "--fps", "inf"], "argument --fps: inf is not a number > 0"),  # printed $nan/month
    (["bench", "cost", "--price", "-2"], "argument --price: -2 is not a number > 0"),
    (["train", "all", "--ppo-steps", "0"], "argument --ppo-steps: 0 is not a whole number >= 1"),  # ran 0 steps
    (["train", "all", "--lambdas", "0.1", "nan"], "argument --lambdas: nan is not a number >= 0"),
    (["train", "retrain", "--segment-frames", "-3"], "argument --segment-frames: -3 is not a whole number >= 1"),
    (["bench", "drift", "--in-sequences", "0"], "argument --in-sequences: 0 is not a whole number >= 1"),
    (["bench", "throughput", "--frames", "2.5"], "argument --frames: '2.5' is not a whole number >= 1"),
    (["record", "--out", "x", "--camera", "/c", "--live-port", "70000"], "argument --live-port: 70000 is not a TCP port"),
    (["record", "--out", "x", "--camera", "/c", "--duration", "nan"], "argument --duration: nan is not a number >= 0"),
    (["policy", "drift-reference", "p.onnx", "--calibration-sequences", "-1"],
     "argument --calibration-sequences: -1 is not a whole number >= 0"),
    (["bench", "heldout", "--frames", "0"], "argument --frames: 0 is not a whole number >= 1"),
    (["train", "all", "--seeds", "-1"], "argument --seeds: -1 is not a whole number >= 1"),
    (["bench", "overhead", "--iterations", "0"], "argument --iterations: 0 is not a whole number >= 1"),  # IndexError
    (["demo", "--sequence", "-2"], "argument --sequence: -2 is not a whole number >= 1"),
    # an unknown world failed only after the policy and the tiers were loaded
    (["bench", "heldout", "--generator-version", "3.0.0"], "argument --generator-version: invalid choice: '3.0.0'"),
    (["bench", "drift", "--generator-version", "2.0"], "argument --generator-version: invalid choice: '2.0'"),
    # topic names ROS refuses: a traceback once the replay had started; record's error named no option
    (["replay", "bag", "--output-topic", "bad topic!"], "argument --output-topic: 'bad topic!' is not a ROS topic name"),
    (["record", "--out", "x", "--camera", "bad topic!"], "argument --camera: 'bad topic!' is not a ROS topic name"),
])
def test_unusable_numbers_are_refused_naming_the_option(argv, says, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2 and says in capsys.readouterr().err


@pytest.mark.parametrize("argv, says", [
    # --rate was ignored outside --mode recorded, without a word
    (["replay", "bag", "--rate", "5"], "replay: --rate paces --mode recorded; --mode lockstep sends each frame after"),
    (["replay", "bag", "--mode", "fast", "--max-gap", "3"], "replay: --max-gap caps the waits of --mode recorded; --mode fast waits for none"),
    (["replay", "bag", "--mode", "fast", "--rate", "0.5"], "--mode fast sends frames back to back"),
    # refused after the whole replay, its summary lost
    (["replay", "bag", "--json", "/no/such/folder/out.json"], "--json /no/such/folder/out.json: folder "
                                                              "/no/such/folder does not exist"),
    # a typo of a mode waited for the node's services (10 s without a node), then for its refusal
    (["set-routing", "fixed:huge"], "argument mode: routing mode 'fixed:huge' is unknown; use one of learned"),
    (["bench", "overhead", "--iterations", "1"], "argument --iterations: 1 is not a whole number >= 100"),
    # retraining's options on another stage were ignored
    (["train", "all", "--bags", "ev", "--store", "s"], "train all: --bags, --store belong to `train retrain`"),
    (["train", "profile", "--cand", "x.onnx"], "train profile: --candidate belongs to `train retrain`"),  # abbreviated
    # everything after --ros-args was dropped without a word (a report for 1,000 robots, not 5)
    (["bench", "cost", "--ros-args", "--robots", "5"], "--ros-args: only `node` takes ROS arguments"),
    (["replay", "bag", "--ros-args", "-p", "use_sim_time:=true"], "--ros-args: only `node` takes ROS arguments"),
])
def test_replay_options_that_cannot_apply_are_refused_before_it_starts(argv, says, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2 and says in capsys.readouterr().err


def test_record_of_two_nodes_is_refused_naming_how(tmp_path, capsys):
    """Two --node: the last was taken and the first node's topics silently left out."""
    assert main(["record", "--out", str(tmp_path / "o"), "--node", "/front/perception_node", "--node",
                 "/rear/perception_node"]) == 2
    assert "--node given 2 times: record follows one node's topics; for several nodes list them all with --topics" in \
        capsys.readouterr().err and not (tmp_path / "o").exists()


def test_an_option_before_the_command_is_named(capsys):
    """`adaptive-perception --bogus` said only that the command was required."""
    with pytest.raises(SystemExit) as exited:
        main(["--bogus", "replay"])
    assert exited.value.code == 2 and "unrecognized option --bogus: the command comes first" in capsys.readouterr().err


def test_a_remap_to_a_name_ros_refuses_is_an_error_line(capsys):
    assert main(["replay", "no-such-bag", "--remap", "/camera/image_raw:=bad topic!"]) == 2
    assert "--remap '/camera/image_raw:=bad topic!': 'bad topic!' is not a ROS topic name" in capsys.readouterr().err


def test_usable_numbers_pass(capsys):
    from adaptive_perception.cli import _parser

    args = _parser().parse_args(["bench", "cost", "--fps", "15", "--price", "0.5", "--robots", "3"])
    assert (args.fps, args.price, args.robots) == (15.0, 0.5, 3) and type(args.robots) is int
    assert _parser().parse_args(["train", "all", "--critic-warmup", "0"]).critic_warmup == 0


def test_a_report_path_that_is_a_folder_is_refused_before_the_run(tmp_path, capsys):
    """`--report DIR` raised IsADirectoryError after the whole run, losing its results."""
    assert main(["bench", "cost", "--report", str(tmp_path)]) == 2
    assert f"--report {tmp_path} is a folder; give the file to write, e.g. {tmp_path / 'report.json'}" in \
        capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    # a folder nobody can write (/proc: not even root) was found only when the results were written, after the run
    assert main(["bench", "cost", "--report", "/proc/cost.json"]) == 2
    assert "--report /proc/cost.json cannot be written (" in capsys.readouterr().err
    assert main(["replay", str(tmp_path / "no-bag-needed"), "--json", "/proc/replay.json"]) == 2
    assert "--json /proc/replay.json cannot be written (" in capsys.readouterr().err
    # a folder that does not exist under one nobody can write, for the policy a whole training run makes: it was
    # found after every stage had run
    assert main(["train", "all", "--preset", "small", "--work", str(tmp_path / "w"), "--policy-out",
                 "/proc/nope/policy.onnx"]) == 2
    assert "--policy-out /proc/nope/policy.onnx cannot be written (" in capsys.readouterr().err
    assert main(["models", "evaluate", "--card", str(tmp_path)]) == 2
    assert f"--card {tmp_path} is a folder; give the file to write, e.g. {tmp_path / 'MODEL_CARD.md'}" in \
        capsys.readouterr().err
    assert main(["bench", "cost", "--report", str(tmp_path / "cost.json")]) == 0  # a writable one: written
    assert json.loads((tmp_path / "cost.json").read_text()) and [p.name for p in tmp_path.iterdir()] == ["cost.json"]


def test_a_path_of_the_wrong_kind_is_an_error_line_not_a_traceback(tmp_path, capsys):
    """A file where an output folder belongs ended in a NotADirectoryError traceback."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["scenes", "generate", "--out", str(afile)]) == 2
    assert f"adaptive-perception scenes: error: [Errno 20] Not a directory: '{afile}" in capsys.readouterr().err


@pytest.mark.parametrize("content, says", [
    ("", "is not valid JSON (Expecting value: line 1 column 1 (char 0)); expected a `bench throughput` report"),
    ("[1, 2]", "lacks a JSON object; expected a `bench throughput` report"),
    ('{"runs": 1}', "lacks modes, comparisons, bars, run_id, machine; expected a `bench throughput` report"),
])
def test_a_broken_json_input_is_named_with_what_it_should_be(tmp_path, capsys, content, says):
    """An empty, non-object or keyless throughput report ended in JSONDecodeError / TypeError / KeyError."""
    throughput = tmp_path / "throughput.json"
    throughput.write_text(content)
    assert main(["bench", "cost", "--throughput", str(throughput), "--report", str(tmp_path / "cost.json")]) == 2
    assert f"{throughput} {says}" in capsys.readouterr().err
    assert not (tmp_path / "cost.json").exists()


def test_a_broken_manifest_is_named(tmp_path, capsys):
    manifest = tmp_path / "manifest.json"
    manifest.write_text('{"generator_version": "2.0.0"}')
    assert main(["scenes", "check", "--out", str(tmp_path), "--manifest", str(manifest)]) == 2
    assert f"{manifest} lacks content_hash; expected a frozen benchmark manifest" in capsys.readouterr().err


@pytest.mark.parametrize("version, frozen", [("1.0.0", "training/benchmark/manifest.json"),
                                              ("2.0.0", "training/benchmark/v2/manifest.json")])
def test_scenes_check_compares_with_the_frozen_manifest_of_the_benchmarks_own_version(tmp_path, capsys, version, frozen):
    """`scenes check` compared every folder with generator 1.0.0's manifest unless told otherwise."""
    (tmp_path / "manifest.json").write_text(json.dumps({"generator_version": version}))
    (tmp_path / "frames.json").write_text('{"test": []}')  # a test split that matches neither manifest
    assert main(["scenes", "check", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"but the frozen manifest '{frozen}' says" in err and f"(generator {version})" in err


def test_scenes_check_without_a_manifest_in_the_folder_takes_the_embedded_tiers_world(tmp_path, capsys):
    (tmp_path / "frames.json").write_text('{"test": []}')
    assert main(["scenes", "check", "--out", str(tmp_path)]) == 2
    assert "but the frozen manifest 'training/benchmark/v2/manifest.json' says" in capsys.readouterr().err
    (tmp_path / "manifest.json").write_text('{"generator_version": "9.9.9"}')
    assert main(["scenes", "check", "--out", str(tmp_path)]) == 2
    assert "names generator version '9.9.9', which has no frozen manifest (1.0.0, 2.0.0); pass --manifest" \
        in capsys.readouterr().err


def test_generated_benchmarks_go_where_their_readers_look_and_drift_variants_beside_them():
    from adaptive_perception.cli import generated_out

    assert generated_out("2.0.0", "none") == Path("build/benchmark-v2")  # train, models evaluate, bench throughput
    assert generated_out("1.0.0", "none") == Path("build/benchmark")
    assert generated_out("2.0.0", "night") == Path("build/benchmark-v2-night")  # never over the benchmark itself
    assert generated_out("1.0.0", "small_objects") == Path("build/benchmark-small_objects")


def test_train_reads_the_embedded_tiers_world_by_default(tmp_path, monkeypatch, capsys):
    """`train` defaulted to build/benchmark, where `scenes generate` put generator 1.0.0: a policy for another world."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", "profile", "--work", str(tmp_path / "work")]) == 2
    assert "'build/benchmark-v2' holds no generated benchmark (frames.json missing); run `adaptive-perception " \
           "scenes generate --out build/benchmark-v2`" in capsys.readouterr().err


def test_the_parser_needs_no_ros_messages_and_knows_replays_modes():
    """Building the parser imported the replay module and with it vision_msgs: where the stand-in was not built,
    every command (`scenes`, `train`, `policy`) ended in a ModuleNotFoundError traceback."""
    import os
    import subprocess
    import sys

    from adaptive_perception.cli import REPLAY_MODES
    from adaptive_perception.ros.replay import ReplayMode

    assert sorted(REPLAY_MODES) == sorted(m.value for m in ReplayMode)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                                      if "test_interfaces" not in p))
    assert subprocess.run([sys.executable, "-c", "import vision_msgs"], env=env, capture_output=True).returncode != 0
    for command in (["scenes", "generate", "--help"], ["train", "all", "--help"], ["replay", "--help"]):
        run = subprocess.run([sys.executable, "-m", "adaptive_perception.cli", *command], env=env, capture_output=True,
                             text=True, timeout=60)
        assert run.returncode == 0 and run.stdout.startswith("usage: "), run.stderr[-2000:]


def test_train_labels_without_a_profile_names_the_profile_command_of_this_benchmark(tmp_path, capsys):
    """It named `train profile --work W` without the run's --benchmark (which profiles the default one), after it had
    created the work folder's MLflow store and a failed run."""
    work, benchmark = tmp_path / "work", tmp_path / "bench"
    assert main(["train", "labels", "--benchmark", str(benchmark), "--work", str(work)]) == 2
    assert (f"--work {work} lacks the profile (profile_router.npz, profile_val.npz, profile_test.npz missing): run "
            f"`adaptive-perception train profile --benchmark {benchmark} --work {work}` first") in capsys.readouterr().err
    assert not (work / "mlflow.db").exists()
    # the options that choose what is profiled come along
    assert main(["train", "labels", "--benchmark", str(benchmark), "--work", str(work), "--source", "bags", "--truth",
                 "reference", "--model", "large=/m/large.onnx"]) == 2
    assert (f"`adaptive-perception train profile --benchmark {benchmark} --work {work} --source bags --truth reference "
            "--model large=/m/large.onnx` first") in capsys.readouterr().err


@pytest.mark.parametrize("source, says", [("dataset", "holds no generated benchmark (frames.json missing)"),
                                          ("bags", "no bags under")])
def test_train_all_refuses_a_missing_benchmark_before_it_writes_anything(tmp_path, capsys, source, says):
    """Found by a new user: `train all` created its MLflow store and logged before it found no benchmark."""
    work = tmp_path / "work"
    argv = ["train", "all", "--preset", "small", "--source", source, "--benchmark", str(tmp_path / "none"),
            "--work", str(work)]
    assert main(argv) == 2
    assert says in capsys.readouterr().err
    assert not work.exists()


def test_train_from_bags_reads_bag_files_and_refuses_an_empty_split_or_mixed_sizes_before_profiling(tmp_path, capsys):
    """A split holding .mcap files was "no bags under" it (files were skipped); an empty val split said only "the
    profile source yielded no frames" after the router split was profiled (now the bag is named before), and frames of another size were refused
    only when the profile reached them, naming neither bag nor topic."""
    import numpy as np

    from adaptive_perception.bag import write_image_bag

    def frames(height: int, width: int):
        return [(10**9 + i * 33_333_333, np.full((height, width, 3), 30 * i, np.uint8)) for i in range(3)]

    bench, work = tmp_path / "bench", tmp_path / "work"
    write_image_bag(tmp_path / "r", frames(240, 320), "/cam/image_raw")
    (bench / "bags" / "router").mkdir(parents=True)
    router = next((tmp_path / "r").glob("*.mcap")).rename(bench / "bags" / "router" / "drive.mcap")
    write_image_bag(bench / "bags" / "val" / "empty", [], "/cam/image_raw")
    write_image_bag(bench / "bags" / "test" / "t", frames(240, 320), "/cam/image_raw")
    argv = ["train", "all", "--preset", "small", "--source", "bags", "--truth", "reference", "--benchmark", str(bench),
            "--work", str(work)]
    assert main(argv) == 2
    assert (f"bag '{bench / 'bags' / 'val' / 'empty'}' holds no camera pictures: /cam/image_raw (no messages)"
            in capsys.readouterr().err)
    (bench / "bags" / "val" / "empty").rename(tmp_path / "empty")
    write_image_bag(bench / "bags" / "val" / "hd", frames(720, 1280), "/front/image_raw")
    assert main(argv) == 2
    assert (f"and these recordings hold several: bag '{router}' /cam/image_raw: 320x240; bag "
            f"'{bench / 'bags' / 'val' / 'hd'}' /front/image_raw: 1280x720; bag '{bench / 'bags' / 'test' / 't'}' "
            "/cam/image_raw: 320x240: profile each resolution from a benchmark folder of its own"
            in capsys.readouterr().err)
    assert not work.exists()  # nothing profiled, no MLflow store


def test_a_benchmark_index_cut_short_is_named_not_a_traceback(tmp_path, capsys):
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "frames.json").write_text('{"router": [')
    assert main(["train", "profile", "--benchmark", str(tmp_path / "bench"), "--work", str(tmp_path / "w")]) == 2
    assert (f"{tmp_path / 'bench' / 'frames.json'} is not valid JSON" in capsys.readouterr().err)


def test_an_export_size_of_three_values_or_under_the_stride_is_refused(tmp_path, capsys):
    """`--imgsz 1 2 3` dropped the third value and exported 32x32, without a word."""
    (tmp_path / "w.pt").write_bytes(b"")
    assert main(["models", "export", "--weights", str(tmp_path / "w.pt"), "--imgsz", "1", "2", "3", "--out",
                 str(tmp_path / "w.onnx")]) == 2 and not (tmp_path / "w.onnx").exists()
    assert "--imgsz 1 2 3: give S or H W, each at least 32" in capsys.readouterr().err


def test_the_callers_sigterm_handler_is_back_after_a_command(tmp_path):
    """main() left its SIGTERM handler installed: a program (or pytest) calling it lost its own."""
    import signal

    def own(*_):
        pass

    previous = signal.signal(signal.SIGTERM, own)
    try:
        assert main(["bench", "cost", "--report", str(tmp_path / "cost.json")]) == 0
        assert signal.getsignal(signal.SIGTERM) is own
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_the_generator_choices_are_the_generators_worlds():
    from adaptive_perception.cli import GENERATORS
    from adaptive_perception.scenes.sequence import WORLDS

    assert GENERATORS == tuple(WORLDS)


def test_a_bad_latency_file_is_refused_before_profiling(tmp_path, capsys):
    """`train profile --latency X` profiled for minutes and the labels stage refused X afterwards."""
    latency = tmp_path / "latency.json"
    latency.write_text('{"device": "orin", "tiers_ms": {"nano": 4.1}}')
    assert main(["train", "profile", "--latency", str(latency), "--benchmark", str(tmp_path / "no-benchmark"),
                 "--work", str(tmp_path / "work")]) == 2
    err = capsys.readouterr().err
    assert f"latency file '{latency}' needs a device name and tiers_ms with a number for each of nano, small, large" in err
    assert not (tmp_path / "work").exists()


def test_a_bad_retrain_candidate_is_refused_before_the_evidence_is_profiled(tmp_path, capsys):
    bag = tmp_path / "evidence_0"
    bag.mkdir()
    (bag / "metadata.yaml").write_text("not a bag the reader could open")
    original = tmp_path / "original"
    original.mkdir()
    for split in ("router", "val", "test"):
        (original / f"profile_{split}.npz").write_text("")
    candidate = tmp_path / "candidate.onnx"
    candidate.write_text("not onnx")
    assert main(["train", "retrain", "--bags", str(bag), "--original-work", str(original), "--candidate", str(candidate),
                 "--work", str(tmp_path / "work")]) == 2
    assert str(candidate) in capsys.readouterr().err
    assert not (tmp_path / "work" / "mlflow.db").exists()


def test_a_garbage_results_csv_is_named(tmp_path, capsys):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "results.csv").write_text("epoch,loss\n1,0.5\n")
    assert main(["models", "curve", "--keep", str(tmp_path), "--out", str(tmp_path / "curve.png")]) == 2
    assert (f"'{tmp_path / 'base' / 'results.csv'}' is not an Ultralytics results.csv: every row needs a whole 'epoch' "
            "and a number in 'metrics/mAP50-95(B)'") in capsys.readouterr().err
    assert not (tmp_path / "curve.png").exists()


@pytest.mark.parametrize("content, remap, says", [
    ("other_node:\n  ros__parameters:\n    routing_mode: fixed:nano\n", [], "holds parameters for /other_node only"),
    ("just text\n", [], "holds no <node>: ros__parameters: entry"),
    ("/**/perception_node:\n  ros__parameters: {}\n", ["-r", "__node:=front"],
     "holds parameters for /**/perception_node only, none for /front: the node would start on its defaults; key them by "
     "this node's name (/**/front: ros__parameters: ...), or by /** for any node"),
    # keyed for a node of the same name in another namespace (or, unqualified, in the root): ROS leaves them out
    ("/rear/perception_node:\n  ros__parameters: {}\n", ["-r", "__ns:=/front"],
     "holds parameters for /rear/perception_node only, none for /front/perception_node"),
    ("perception_node:\n  ros__parameters: {}\n", ["-r", "__ns:=/front"],
     "holds parameters for /perception_node only, none for /front/perception_node"),
    ("/ns:\n  perception_node:\n    ros__parameters: {}\n", [], "holds parameters for /ns/perception_node only"),
])
def test_a_params_file_with_nothing_for_this_node_is_refused(tmp_path, capsys, content, remap, says):
    """ROS started the node on its defaults, silently, with a params file keyed for another node."""
    params = tmp_path / "params.yaml"
    params.write_text(content)
    assert main(["node", "--params-file", str(params), "--ros-args", *remap]) == 2
    assert f"--params-file '{params}' {says}" in capsys.readouterr().err


def test_perception_node_itself_refuses_a_params_file_for_another_node(tmp_path, capsys):
    """`ros2 launch` runs the perception_node executable with --params-file: the check lived only in the CLI, so the
    launch path started the node on its defaults."""
    from adaptive_perception.ros.node import main as node_main

    params = tmp_path / "params.yaml"
    params.write_text("perception:\n  ros__parameters:\n    routing_mode: fixed:nano\n")
    assert node_main(["perception_node", "--ros-args", "-r", "__node:=perception_node", "--params-file", str(params)]) == 2
    assert f"--params-file '{params}' holds parameters for /perception only, none for /perception_node" in \
        capsys.readouterr().err
    assert node_main(["perception_node", "--ros-args", "--params-file", str(tmp_path / "missing.yaml")]) == 2
    assert f"--params-file '{tmp_path / 'missing.yaml'}' cannot be read: No such file or directory" in capsys.readouterr().err


@pytest.mark.parametrize("content, remap", [
    (None, []),  # the shipped config/perception.yaml
    ("/ns:\n  perception_node:\n    ros__parameters:\n      routing_mode: fixed:nano\n", ["-r", "__ns:=/ns"]),
    ("/**:\n  ros__parameters:\n    routing_mode: fixed:nano\n", []),
    ("front:\n  ros__parameters:\n    routing_mode: fixed:nano\n", ["-r", "__node:=front"]),
    ("/*/perception_node:\n  ros__parameters: {}\n", ["-r", "__ns:=/front"]),
    ("/**/perception_node:\n  ros__parameters: {}\n", ["-r", "__ns:=/robot/front"]),
    (None, ["-r", "__ns:=/robot/front"]),  # the shipped file, in any namespace
])
def test_params_files_for_this_node_pass_the_check(tmp_path, content, remap):
    from adaptive_perception.ros.parameters import check_params_file

    params = Path(__file__).resolve().parents[1] / "config" / "perception.yaml"
    if content is not None:
        params = tmp_path / "params.yaml"
        params.write_text(content)
    check_params_file(params, remap)


def test_a_params_file_value_of_the_wrong_type_is_named_with_the_file(tmp_path, capsys):
    """ROS refused `conf_threshold: 1` (an integer for a double) naming neither the file nor what to write, after the
    process had started; each such value is now named with its file before anything starts, nested keys too."""
    from adaptive_perception.ros.node import main as node_main

    params = tmp_path / "robot.yaml"
    params.write_text("/**/perception_node:\n  ros__parameters:\n    conf_threshold: 1\n    warmup_runs: 2\n"
                      "    audit:\n      every: 30.0\n    routing:\n      random_mix: [1, 1.0, 1.0]\n"
                      "    image_topics: [/front/image_raw]\n    policy: embedded:policy\n")
    assert main(["node", "--params-file", str(params)]) == 2
    assert (f"--params-file '{params}': conf_threshold: 1 is not a number with a decimal point (e.g. 0.25); "
            "audit.every: 30.0 is not a whole number (e.g. 30); routing.random_mix: [1, 1.0, 1.0] is not a list of "
            "numbers with a decimal point (e.g. [1.0, 1.0, 1.0]); ROS converts no type") in capsys.readouterr().err
    other = tmp_path / "other.yaml"  # another node's wrong types are not this node's business
    other.write_text("perception_node:\n  ros__parameters:\n    image_topics: [image]\n"
                     "recorder:\n  ros__parameters:\n    conf_threshold: 1\n")
    from adaptive_perception.ros.parameters import check_params_file
    check_params_file(other, [])
    params.write_text("perception_node:\n  ros__parameters:\n    image_topics: image\n    models:\n      nano: 5\n"
                      "    providers: []\n")
    assert node_main(["perception_node", "--ros-args", "--params-file", str(params)]) == 2
    assert (f"--params-file '{params}': image_topics: \"image\" is not a list of strings (e.g. [\"image\"]); "
            "models.nano: 5 is not a string (e.g. \"embedded:nano\"); providers: [] is empty, which ROS leaves unset "
            "(e.g. [\"TensorrtExecutionProvider\"") in capsys.readouterr().err
    # what ROS's own reader takes, typed as it types them (YAML 1.1 would call 4e3 a string, ~ a null, 2024-06-01 a
    # date, 1_000 a number): passed
    params.write_text("perception_node:\n  ros__parameters:\n    evidence:\n      budget_mb: 4e3\n"
                      "    routing:\n      cost_weight: 1.0e6\n    mlflow:\n      experiment: 2024-06-01\n"
                      "      tracking_uri: ~\n    policy: 1_000\n    conf_threshold: .5\n    warmup_runs: 0x2\n"
                      "    autostart: yes\n    evidence.dir: '12'\n")
    check_params_file(params, [])


def test_policy_inspect_says_how_the_policy_routes_and_what_it_monitors(tmp_path, capsys):
    """inspect printed the id and the description only: not the cost weight a value policy runs at, nor whether
    the drift monitor will run with it."""
    from policies import constant_policy, drifting_policy

    assert main(["policy", "inspect", "embedded:policy"]) == 0
    out = capsys.readouterr().out
    assert "policy_id bc-ppo-l0.251734-s0-0051389b, tiers ['nano', 'small', 'large']" in out
    assert "outputs: tier values, cost weight 0.280172 (routing.cost_weight < 0 runs at it" in out
    # the 4 context values (the image features weigh 0), through numpy's matrix products
    assert "inputs read: 4 of 1028; runs in numpy (its dense layers, checked against onnxruntime at load)" in out
    assert "drift reference: thresholds agreement_drop 0.535, feature_psi 3.9, image_quality 1.25, mix_tvd 0.707, " \
        "veil 3.37" in out  # the README's drift thresholds
    # the embedded reference predates references naming their weight: read at the policy's own, and said so
    assert "; image quality a peak per direction; veil on; tier mix and audits measured at cost weight 0.280172 (not " \
        "recorded: an earlier layout, read as the policy's own), hysteresis 0" in out
    assert "trained with tiers: nano " in out
    logits = constant_policy(tmp_path / "logits.onnx", (0.2, 0.3, 0.5), "const")
    assert main(["policy", "inspect", str(logits)]) == 0
    out = capsys.readouterr().out
    assert "outputs: tier logits" in out and "drift reference: none (the node's drift monitor is off" in out
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (48, 64, 3), np.uint8) for _ in range(40)]
    assert main(["policy", "inspect", str(drifting_policy(tmp_path / "weighted.onnx", frames, 10, cost_weight=0.5))]) == 0
    out = capsys.readouterr().out  # built without image quality and veil statistics, its weight recorded
    assert "; image quality none; veil none (the monitor runs without it); tier mix and audits measured at cost " \
        "weight 0.5, hysteresis 0; calibrated on 40 held-out frames\nwarning: its drift thresholds were calibrated on " \
        "40 held-out frames, fewer than 3000" in out
    # the embedded policy's reference predates the record: nothing said of it
    assert main(["policy", "inspect", "embedded:policy"]) == 0
    assert "calibrated on" not in capsys.readouterr().out


def test_a_reader_that_leaves_early_gets_no_error_message():
    """`policy inspect ... | head -1` once printed "error: [Errno 32] Broken pipe" (the reader had gone)."""
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line: every write fails with EPIPE
    run = subprocess.run([sys.executable, "-u", "-m", "adaptive_perception.cli", "policy", "inspect", "embedded:policy"],
                         stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(write)
    assert (run.returncode, run.stderr) == (1, "")


def test_a_recording_too_short_for_the_gate_is_refused_before_profiling(tmp_path, capsys):
    """Counted from the bag's index now: the refusal came after minutes of profiling the evidence."""
    import numpy as np

    from adaptive_perception.bag import write_image_bag

    frames = [(10**9 + i * 33_333_333, np.zeros((24, 32, 3), np.uint8)) for i in range(40)]
    write_image_bag(tmp_path / "evidence_0001", frames, "/camera/image_raw")
    original = tmp_path / "original"
    original.mkdir()
    for split in ("router", "val", "test"):
        (original / f"profile_{split}.npz").write_text("")
    assert main(["train", "retrain", "--bags", str(tmp_path / "evidence_0001"), "--original-work", str(original),
                 "--work", str(tmp_path / "work")]) == 2
    assert ("--bags hold 40 frames (40 per bag and camera): 2 segments of 30 frames, and the gate needs at least 6"
            in capsys.readouterr().err)
    assert not (tmp_path / "work" / "mlflow.db").exists()
    # two cameras in one bag are two sequences, each cut into segments of its own (as `retrain.segment` cuts them):
    # 40 + 40 frames are 2 + 2 segments, not the 3 of 80 frames counted as one camera
    from rosbags.rosbag2 import StoragePlugin, Writer

    from adaptive_perception.bag import IMAGE_TYPE, TYPESTORE, image_message

    with Writer(tmp_path / "two_cameras", version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connections = [writer.add_connection(t, IMAGE_TYPE, typestore=TYPESTORE) for t in ("/front", "/rear")]
        for stamp, rgb in frames:
            for conn in connections:
                writer.write(conn, stamp, TYPESTORE.serialize_cdr(image_message(rgb, stamp, "cam"), IMAGE_TYPE))
    assert main(["train", "retrain", "--bags", str(tmp_path / "two_cameras"), "--original-work", str(original),
                 "--work", str(tmp_path / "work")]) == 2
    assert "--bags hold 80 frames (40, 40 per bag and camera): 4 segments of 30 frames" in capsys.readouterr().err
    # without bags, and with a work folder that holds no profiles: what to pass, and where the embedded policy's is
    assert main(["train", "retrain", "--original-work", str(original), "--work", str(tmp_path / "work")]) == 2
    assert "--bags: name the recordings to retrain on (rosbag2 folders" in capsys.readouterr().err
    assert main(["train", "retrain", "--bags", str(tmp_path / "evidence_0001"), "--original-work",
                 str(tmp_path / "nowhere"), "--work", str(tmp_path / "work")]) == 2
    err = capsys.readouterr().err
    assert f"--original-work (now {tmp_path / 'nowhere'}) names the work folder the current policy was trained in: " \
        "build/train-v3 for the embedded policy" in err.replace("\n", " ")


@pytest.mark.parametrize("command,committed", [("latency", "training/reports/latency.json"),
                                               ("throughput", "training/reports/throughput.json"),
                                               ("soak", "training/reports/soak.json"),
                                               ("transport", "training/reports/transport.json")])
def test_a_quick_bench_run_never_writes_over_the_committed_reports(command, committed):
    from adaptive_perception.cli import _bench_out, _parser

    parser = _parser()
    assert _bench_out(parser.parse_args(["bench", command]), committed) == Path(committed)
    assert _bench_out(parser.parse_args(["bench", command, "--quick"]), committed) == \
        Path("build/bench/quick") / Path(committed).name
    assert _bench_out(parser.parse_args(["bench", command, "--quick", "--report", "x.json"]), committed) == Path("x.json")


def test_progress_outside_a_terminal_is_one_line_naming_the_stage_and_its_size(capsys):
    from adaptive_perception.progress import progress

    assert list(progress([1, 2, 3], desc="transport passes", unit="pass")) == [1, 2, 3]
    assert list(progress(["a"], desc="rendering", unit="frame")) == ["a"]
    assert list(progress(range(20), desc="scoring", unit="sequence")) == list(range(20))
    assert list(progress(range(200), desc="BC seed 0", unit="epoch")) == list(range(200))  # was "200 epoches"
    list(progress(iter([1]), desc="streaming", unit="frame"))  # no length: the stage alone
    assert capsys.readouterr().err.splitlines() == ["transport passes: 3 passes", "rendering: 1 frame",
                                                    "scoring: 20 sequences", "BC seed 0: 200 epochs", "streaming ..."]


@pytest.mark.parametrize("missing", ["ultralytics", "torch"])
def test_a_training_command_without_the_training_extra_says_how_to_install_it(tmp_path, missing):
    """Found by a new user on the demo's install: `models export` ended in a ModuleNotFoundError traceback. In a
    process of its own, where importing the module fails as if it were not installed."""
    import subprocess
    import sys

    out = tmp_path / "n.onnx"
    script = (f"import sys; sys.modules[{missing!r}] = None\n"
              "from adaptive_perception.cli import main\n"
              f"sys.exit(main(['models', 'export', '--weights', 'yolov8n.yaml', '--imgsz', '320', '--out', {str(out)!r}]))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("adaptive-perception models: error: this command needs the training extra, and "
                                  f"{missing} is not installed: run `make train-deps`"), done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


def test_help_shows_each_default_and_keeps_paths_whole(capsys):
    """A new user read defaults off the README, not `--help`, and copied a path that help had broken at a hyphen."""
    def help_text(*command: str) -> str:
        with pytest.raises(SystemExit) as done:
            main([*command, "--help"])
        assert done.value.code == 0
        return capsys.readouterr().out

    joined = " ".join(help_text("bench", "cost").split())
    assert "--robots ROBOTS robots in the fleet (default: 1000)" in joined
    # a subcommand's own help opens with its line from the parent's list (it had none), and cost's gives its model
    assert "[--report REPORT] fleet cost per month from the measured device time per frame" in joined
    assert "cost per month = robots x fps x 3600 x hours per day x 365.25/12 x device-seconds per frame" in joined
    assert "learned@90 is added: the learned router at the cheapest cost weight" in " ".join(
        help_text("bench", "throughput").split())
    assert "--fps FPS frames per second per robot (default: 30.0)" in joined
    assert "(default: 0)" in " ".join(help_text("policy", "drift-reference").split())  # a 0 is a default too
    text = help_text("models", "compare")
    assert "base-nano=training/checkpoints/tiers-v2/base/last.pt@192x256" in text  # on one line
    assert "--split {val,test}    default: val" in text  # an option without text of its own


def test_models_compare_refuses_an_onnx_candidate_before_exporting_anything(capsys):
    """An exported ONNX (or any file) as a candidate ended in Ultralytics' traceback: compare exports .pt weights."""
    assert main(["models", "compare", "--candidate", "a=src/adaptive_perception/models/nano.onnx@192x256"]) == 2
    assert ("--candidate 'a=src/adaptive_perception/models/nano.onnx@192x256': 'src/adaptive_perception/models/"
            "nano.onnx' is not an Ultralytics .pt checkpoint") in capsys.readouterr().err


def test_replay_takes_its_bag_as_an_argument_or_as_bag_once(tmp_path, capsys):
    """`replay --bag X` ended in argparse's "unrecognized arguments" (the bag was positional only)."""
    missing = tmp_path / "nope"
    for argv in (["replay", str(missing)], ["replay", "--bag", str(missing)]):
        assert main(argv) == 2
        assert f"bag '{missing}' does not exist" in capsys.readouterr().err  # reached the bag either way
    with pytest.raises(SystemExit) as exited:
        main(["replay"])
    assert exited.value.code == 2 and "which bag?" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["replay", "a", "--bag", "b"])
    assert exited.value.code == 2 and "give the bag once, as BAG or --bag (got a and b)" in capsys.readouterr().err


def test_version_is_the_installed_package_and_the_ros_package(capsys):
    """`--version` (it was refused as an option before the command) prints the version setup.py installs, which
    package.xml must repeat for colcon and rosdep: one number for one release."""
    import re
    import xml.etree.ElementTree as ET

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    printed = capsys.readouterr().out.strip()
    root = Path(__file__).resolve().parents[1]
    ros_version = ET.parse(root / "package.xml").getroot().findtext("version")
    setup_version = re.search(r'version="([^"]+)"', (root / "setup.py").read_text()).group(1)
    assert printed == f"adaptive-perception {setup_version}"
    assert ros_version == setup_version
