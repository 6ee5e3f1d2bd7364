"""The command line refuses numbers it cannot use before any work starts (argparse exit 2, naming the option)."""
from __future__ import annotations

import pytest

from adaptive_perception.cli import main


@pytest.mark.parametrize("argv, says", [
    # nan waited for ever in lock-step; 0 counted every frame as a timeout
    (["replay", "bag", "--timeout", "nan"], "argument --timeout: nan is not a number > 0"),
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
])
def test_unusable_numbers_are_refused_naming_the_option(argv, says, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2 and says in capsys.readouterr().err


def test_usable_numbers_pass(capsys):
    from adaptive_perception.cli import _parser

    args = _parser().parse_args(["bench", "cost", "--fps", "15", "--price", "0.5", "--robots", "3"])
    assert (args.fps, args.price, args.robots) == (15.0, 0.5, 3) and type(args.robots) is int
    assert _parser().parse_args(["train", "all", "--critic-warmup", "0"]).critic_warmup == 0


def test_a_report_path_that_is_a_folder_is_refused_before_the_run(tmp_path, capsys):
    """`--report DIR` raised IsADirectoryError after the whole run, losing its results."""
    assert main(["bench", "cost", "--report", str(tmp_path)]) == 2
    assert f"--report {tmp_path} is a folder; give the JSON file to write" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_path_of_the_wrong_kind_is_an_error_line_not_a_traceback(tmp_path, capsys):
    """A file where an output folder belongs ended in a NotADirectoryError traceback."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["scenes", "generate", "--out", str(afile)]) == 2
    assert f"adaptive-perception scenes: error: [Errno 20] Not a directory: '{afile}" in capsys.readouterr().err


@pytest.mark.parametrize("content, says", [
    ("", "is not valid JSON (Expecting value: line 1 column 1 (char 0)); expected a `bench throughput` report"),
    ("[1, 2]", "lacks a JSON object; expected a `bench throughput` report"),
    ('{"runs": 1}', "lacks modes; expected a `bench throughput` report"),
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
