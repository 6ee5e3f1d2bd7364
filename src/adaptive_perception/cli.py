"""`adaptive-perception`: one command with subcommands (node, replay, record, set-routing, health, scenes, models,
policy, train, bench, demo)."""
from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import signal
import sys
import textwrap
import threading
from dataclasses import replace
from pathlib import Path

from adaptive_perception.errors import AdaptivePerceptionError, read_json
from adaptive_perception.training import fleet_cost


WORK_V3 = Path("build/train-v3")  # the embedded policy's training work folder (`train all --work build/train-v3`)


def _number(kind: type, low: float, inclusive: bool, what: str):
    """An argparse type: a finite `kind` above `low` (or at it, if `inclusive`), refused with what it must be."""
    import math

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not math.isfinite(value) or value < low or (value == low and not inclusive):
            raise argparse.ArgumentTypeError(f"{text} is not {what}")
        return value
    return parse


_positive = _number(float, 0.0, False, "a number > 0")
_non_negative = _number(float, 0.0, True, "a number >= 0")
_count = _number(int, 1, True, "a whole number >= 1")
_count0 = _number(int, 0, True, "a whole number >= 0")
_finite = _number(float, -float("inf"), False, "a finite number")
# ros.replay.ReplayMode's values, written out: building the parser imported the ROS messages, and every command,
# `scenes` and `train` included, failed where they were missing
REPLAY_MODES = ["recorded", "fast", "lockstep"]


def _port(text: str) -> int:
    port = _count(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a TCP port (1-65535)")
    return port


def _routing_mode(text: str) -> str:
    """A routing mode the node knows (checked here: a typo waited for the node's services, then for its refusal)."""
    from adaptive_perception.router import check_mode

    try:
        return check_mode(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _tracking_uri(text: str) -> str:
    """An MLflow store MLflow 3 opens: a database or a server, not a plain folder (its file store is refused there with
    a traceback)."""
    scheme = text.partition("://")[0].lower() if "://" in text else ""
    if text and text != "databricks" and (not scheme or scheme == "file"):
        raise argparse.ArgumentTypeError(f"'{text}' is a folder; MLflow 3 keeps runs in a database or on a server: "
                                         "give sqlite:///PATH/mlflow.db or http(s)://HOST:PORT")
    return text


def _topic(text: str) -> str:
    """A ROS topic name (ROS's own rules, checked before anything starts: it was a traceback mid-run)."""
    from rclpy.validate_topic_name import validate_topic_name

    try:
        validate_topic_name(text)
    except Exception as exc:
        raise argparse.ArgumentTypeError(f"'{text}' is not a ROS topic name ({str(exc).splitlines()[0]})") from None
    return text


GENERATORS = ("1.0.0", "2.0.0")  # scenes generator versions: the keys of scenes.sequence.WORLDS (kept light to import)
# where each version's benchmark goes by default, and its frozen manifest; 2.0.0 is the embedded tiers' world
BENCHMARKS = {"1.0.0": Path("build/benchmark"), "2.0.0": Path("build/benchmark-v2")}
FROZEN_MANIFESTS = {"1.0.0": Path("training/benchmark/manifest.json"),
                    "2.0.0": Path("training/benchmark/v2/manifest.json")}


def generated_out(version: str, drift: str) -> Path:
    """`scenes generate`'s default folder: the version's benchmark folder, or beside it for a drift variant (which
    must not land where `train` and `models evaluate` read the benchmark)."""
    base = BENCHMARKS[version]
    return base if drift == "none" else base.with_name(f"{base.name}-{drift}")


COMMITTED_THROUGHPUT = Path("training/reports/throughput.json")  # `bench throughput`'s report
REAL_LATENCY = Path("training/latency/cpu-2core-yolov8-640.json")  # the YOLOv8 graphs' costs the projection reads
# `bench cost`'s defaults (robots, fps, price per device-hour, hours a day): the origin's fleet at $1 an hour
COST_SCENARIO = (fleet_cost.ORIGIN["robots"], float(fleet_cost.ORIGIN["fps"]), 1.0,
                 float(fleet_cost.ORIGIN["hours_per_day"]))
QUICK_REPORTS = "build/bench/quick"  # a --quick run's reports: partial runs never replace the committed ones


def _bench_out(args: argparse.Namespace, committed: str) -> Path:
    """The report a bench command writes: --report, else (--quick) one under build/, else the committed one."""
    if args.report is not None:
        return args.report
    return Path(QUICK_REPORTS) / Path(committed).name if args.quick else Path(committed)


def _has_default(action: argparse.Action) -> bool:
    """An option whose default is worth printing (0 is; None, a flag's False, an empty list are not)."""
    default = action.default
    return bool(action.option_strings) and default is not None and default is not False \
        and default != argparse.SUPPRESS and default != []


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help shows its default (unless the text already speaks of one), and a long path or name is
    never broken (a help line is copied into a shell)."""

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and _has_default(action):  # argparse prints no help line for an option without text
            action = copy.copy(action)
            action.help = "default: %(default)s"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if _has_default(action) and "default" not in text:
            text = f"{text} (default: %(default)s)" if text else "default: %(default)s"
        return text

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False, break_long_words=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:  # a description or epilog, as whole
        return "\n".join(indent + line for line in self._split_lines(text, width - len(indent)))


class _Subcommands(argparse._SubParsersAction):
    """A subcommand's own --help opens with the line its parent's list gives it (it had none of its own)."""

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        if kwargs.get("help"):
            kwargs.setdefault("description", kwargs["help"])
        return super().add_parser(name, **kwargs)


class _Parser(argparse.ArgumentParser):
    """The command's parsers (subcommands inherit the class, so the help formatter too)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", _Subcommands)


def _version() -> str:
    """The installed package's version (setup.py's, which package.xml repeats for colcon)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("adaptive_perception")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed: pip install -e .)"


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="adaptive-perception", description=__doc__)
    parser.add_argument("--version", action="version", version=f"adaptive-perception {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    node = sub.add_parser("node", help="run perception_node (lifecycle node)")
    node.add_argument("--autostart", action="store_true", help="configure and activate on start-up")
    node.add_argument("--params-file", type=Path, help="ROS parameter YAML (e.g. config/perception.yaml)")
    node.epilog = ("Everything after --ros-args goes to ROS, e.g. "
                   "--ros-args -p routing_mode:=fixed:large -r image:=/camera/image_raw")

    replay = sub.add_parser("replay", help="publish a bag's image topics to a running node")
    replay.add_argument("bag", type=Path, nargs="?", help="rosbag2 folder or .mcap/.db3 file")
    replay.add_argument("--bag", type=Path, dest="bag_option", metavar="BAG",
                        help="the same, as an option (like `models quantize --bag`)")
    replay.add_argument("--mode", choices=REPLAY_MODES, default="lockstep",
                        help="lockstep (default: next frame after the previous output), recorded (bag timing "
                             "scaled by --rate) or fast (back to back; the node drops what it cannot keep up with)")
    replay.add_argument("--rate", type=_positive, default=1.0, help="speed factor for --mode recorded")
    replay.add_argument("--max-gap", type=_positive, metavar="S",
                        help="--mode recorded: a jump in the bag's log times longer than S seconds (after --rate) is "
                        "not waited out (default 10; counted as gaps_cut)")
    replay.add_argument("--topic", action="append", dest="topics",
                        help="image topic to replay (repeatable; default: the camera topics, not debug images, depth, "
                             "compressed copies or silent topics)")
    replay.add_argument("--remap", action="append", default=[], metavar="BAG_TOPIC:=TOPIC",
                        help="publish a bag topic under another name (repeatable)")
    replay.add_argument("--output-topic", type=_topic, default="detections", help="Detection2DArray topic to wait for")
    replay.add_argument("--timeout", type=_positive, default=10.0, help="seconds to wait for each output in lock-step; in the other modes, for the newest frame's after the last")
    replay.add_argument("--subscribers", type=_count, default=1,
                        help="start once each image topic has this many subscribers (default 1, the node; 2 with a "
                             "`record` running: frames published before a subscriber has matched never reach it)")
    replay.add_argument("--json", type=Path, help="also write the summary to this JSON file")

    scenes = sub.add_parser("scenes", help="the project's synthetic scene benchmark")
    scenes_sub = scenes.add_subparsers(dest="scenes_command", required=True)
    generate = scenes_sub.add_parser("generate", help="YOLO dataset + COCO ground truth + MCAP bags + contact sheet")
    generate.add_argument("--out", type=Path, help="output folder (default build/benchmark-v2 for generator 2.0.0, "
                          "build/benchmark for 1.0.0; with --drift D, the same name + '-D')")
    generate.add_argument("--preset", choices=["benchmark", "tiny", "ci"], default="benchmark",
                          help="benchmark: the frozen evaluation benchmark; tiny: a 5-sequence smoke set; ci: the "
                               "routing pipeline's 18-sequence test set")
    generate.add_argument("--drift", choices=["none", "night", "fog", "new_domain", "small_objects"], default="none",
                          help="render a drift variant (different seed, never in training)")
    generate.add_argument("--bags", choices=["none", "eval", "all"], help="which splits get MCAP bags (preset default)")
    generate.add_argument("--generator-version", choices=GENERATORS, default="2.0.0",
                          help="1.0.0: the first benchmark (training/benchmark/manifest.json); 2.0.0: the product's "
                               "world, near objects in simple scenes (training/benchmark/v2/)")
    generate.add_argument("--workers", type=_count, default=2, help="parallel sequence renderers")
    check = scenes_sub.add_parser("check", help="verify a generated benchmark against the frozen manifest")
    check.add_argument("--out", type=Path, default=BENCHMARKS["2.0.0"])
    check.add_argument("--manifest", type=Path, help="the frozen manifest (default: the one of the generator version "
                       "the benchmark under --out was generated with)")
    check.add_argument("--splits", nargs="+", choices=["train", "val", "test", "router", "all"], default=["test"],
                       help="the splits whose records and images are checked (default: test, the one every "
                            "evaluation reads; `train profile` reads router, val and test)")

    models = sub.add_parser("models", help="detector tiers: export Ultralytics weights, train/evaluate the embedded tiers")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    export = models_sub.add_parser("export", help="Ultralytics weights -> YOLOv8 ONNX for any tier (train extra)")
    export.add_argument("--weights", required=True,
                        help="a .pt file, a name like yolov8l.pt (downloaded by Ultralytics: connected machines "
                             "only) or an architecture yaml like yolov8n.yaml (offline, random weights)")
    export.add_argument("--imgsz", type=_count, nargs="+", default=[640], help="input size: S or H W")
    export.add_argument("--out", type=Path, required=True, help="ONNX file to write, or a folder to write it into")
    train_tiers = models_sub.add_parser("train-tiers", help="train the embedded tier network on the benchmark")
    train_tiers.add_argument("--benchmark", type=Path, help="default build/benchmark-v2 with --network (tier "
                             "family 2's world), build/benchmark without (family 1's)")
    train_tiers.add_argument("--out", type=Path, default=Path("build/tiers"), help="Ultralytics run folder")
    train_tiers.add_argument("--epochs", type=_count, default=20)
    train_tiers.add_argument("--batch", type=_count, default=16)
    train_tiers.add_argument("--network", choices=["base", "narrow", "base-near", "wide", "wider", "base-small",
                                                     "base-nano"],
                             help="tier family 2 (generator 2.0.0): train one network on crops at its tiers' scales "
                                  "into OUT/<network>, resuming from --keep (base-near: base fine-tuned on windows "
                                  "that hold near objects whole; wide: base widened 1.5x, trained at the large "
                                  "tier's scale; wider: wide widened to yolov8s's width, trained the same way; "
                                  "base-small, base-nano: base fine-tuned at that tier's scale only; these start "
                                  "from their start network's checkpoint beside --keep); "
                                  "without it, the family-1 network")
    train_tiers.add_argument("--keep", type=Path, help="checkpoint folder (last.pt, results.csv) updated after every "
                                                       "epoch and resumed from; commit it at the end of a working block")
    curve = models_sub.add_parser("curve", help="validation mAP50-95 per epoch of the tier networks (PNG) and the "
                                                "plateau check (< 0.5 points over 10 epochs)")
    curve.add_argument("--keep", type=Path, default=Path("training/checkpoints/tiers-v2"),
                       help="folder with one <network>/results.csv per network")
    curve.add_argument("--out", type=Path, default=Path("training/reports/tiers_v2_curve.png"),
                       help="the PNG to write (default: the committed one, training/reports/tiers_v2_curve.png)")
    export_tiers = models_sub.add_parser("export-tiers", help="export the trained networks at the tiers' input sizes")
    export_tiers.add_argument("--weights", type=Path,
                              help="one Ultralytics checkpoint for all three tiers (default: the embedded tiers' "
                                   "committed checkpoints, base's final epoch for nano and small, wide's for large)")
    export_tiers.add_argument("--out", type=Path, default=Path("src/adaptive_perception/models"),
                              help="folder for nano.onnx, small.onnx and large.onnx (default: "
                                   "src/adaptive_perception/models, replacing the embedded tiers)")
    evaluate = models_sub.add_parser("evaluate", help="mAP per regime + latency of the tiers on the frozen test split")
    evaluate.add_argument("--benchmark", type=Path, default=BENCHMARKS["2.0.0"])
    evaluate.add_argument("--models", type=Path, default=Path("src/adaptive_perception/models"))
    evaluate.add_argument("--manifest", type=Path, default=FROZEN_MANIFESTS["2.0.0"])
    evaluate.add_argument("--report", type=Path, default=Path("training/reports/tiers.json"))
    evaluate.add_argument("--family1-run", type=Path,
                          help="model card: the tiers were exported from the family-1 network of this Ultralytics "
                               "run folder (default: the embedded family-2 checkpoints, base for nano and small, "
                               "wide for large)")
    evaluate.add_argument("--card", type=Path, help="model card to write (default: MODELS/MODEL_CARD.md)")
    compare = models_sub.add_parser("compare", help="tier candidates (weights at an input size) on the validation "
                                                    "split: mAP all / sparse / dense and latency in one run")
    compare.add_argument("--candidate", action="append", required=True, metavar="NAME=WEIGHTS@HxW",
                         help="e.g. base-nano=training/checkpoints/tiers-v2/base/last.pt@192x256 (repeatable)")
    compare.add_argument("--benchmark", type=Path, default=BENCHMARKS["2.0.0"])
    compare.add_argument("--split", default="val", choices=["val", "test"])
    compare.add_argument("--report", type=Path, default=Path("training/reports/tier_candidates.json"))
    quantize = models_sub.add_parser("quantize", help="8-bit tiers for CPU robots: static quantization calibrated on "
                                                      "the camera's own frames (runtime packages only)")
    quantize.add_argument("--model", action="append", default=[], metavar="TIER=ONNX",
                          help="a tier to quantize (repeatable; default: the three embedded tiers), e.g. "
                               "large=/models/yolov8l.onnx")
    source = quantize.add_mutually_exclusive_group(required=True)
    source.add_argument("--bag", type=Path, help="a recording of the robot's camera (rosbag2 folder): calibration "
                                                 "frames spread over its image messages")
    source.add_argument("--images", type=Path, help="a folder of the camera's frames (jpg/png), e.g. "
                                                    "build/benchmark-v2/images/train for the embedded tiers")
    quantize.add_argument("--topic", action="append", help="with --bag: only this image topic (repeatable)")
    quantize.add_argument("--frames", type=_count, default=64, help="calibration frames (10 others check the result)")
    quantize.add_argument("--out", type=Path, required=True, help="folder for <tier>.onnx (never the sources' own)")
    quantize.add_argument("--replace", action="store_true", help="write over <tier>.onnx files --out already holds")
    pilot = models_sub.add_parser("pilot", help="early checkpoint at the three tier sizes on the validation split")
    pilot.add_argument("--weights", type=Path, default=Path("build/tiers/base/weights/last.pt"))
    pilot.add_argument("--benchmark", type=Path, default=Path("build/benchmark"))
    pilot.add_argument("--report", type=Path, default=Path("training/reports/pilot.json"))

    policy = sub.add_parser("policy", help="routing policies: inspect a file; the regime classifier (features' signal check)")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    inspect = policy_sub.add_parser("inspect", help="validate a policy ONNX and print its metadata")
    inspect.add_argument("path", help="policy ONNX file or embedded:policy")
    wrap = policy_sub.add_parser("wrap", help="make a model of your own (float32 [N, 1028] features -> float32 "
                                 "[N, 3] per-tier scores, before any softmax) a routing policy: adds the metadata")
    wrap.add_argument("model", help="your ONNX model")
    wrap.add_argument("--out", type=Path, required=True, help="the policy file to write")
    wrap.add_argument("--id", dest="policy_id", required=True, help="its policy id (published in every decision)")
    wrap.add_argument("--normalisation", metavar="POLICY", help="a policy file (or embedded:policy) whose feature "
                      "mean and std your model was trained behind; default: none, the features as they are")
    wrap.add_argument("--description", default="", help="free text: how it was made")
    store_help = "policy store folder (the node's `policy` parameter points at <store>/current.onnx)"
    store_init = policy_sub.add_parser("store-init", help="start a policy store from a policy (default: the "
                                       "embedded one) unless it holds one already")
    store_init.add_argument("--store", type=Path, required=True, help=store_help)
    store_init.add_argument("--from", dest="source", help="policy ONNX or embedded:policy (default embedded:policy; "
                            "on an existing store: refused unless it is the current policy)")
    promote = policy_sub.add_parser("promote", help="make a policy current in a store (the current one is kept for "
                                    "rollback) and load it into the running node")
    promote.add_argument("candidate", help="policy ONNX file")
    promote.add_argument("--store", type=Path, required=True, help=store_help)
    promote.add_argument("--node", default="/perception_node", help="node to load it into (default /perception_node; '' = none)")
    promote.add_argument("--timeout", type=_positive, default=30.0, help="seconds to wait for the node's service (default 30)")
    rollback = policy_sub.add_parser("rollback", help="swap the store's current and previous policies and load the "
                                     "restored one into the running node")
    rollback.add_argument("--store", type=Path, required=True, help=store_help)
    rollback.add_argument("--node", default="/perception_node", help="node to load it into (default /perception_node; '' = none)")
    rollback.add_argument("--timeout", type=_positive, default=30.0, help="seconds to wait for the node's service (default 30)")
    history = policy_sub.add_parser("history", help="the store's promotions and rollbacks")
    history.add_argument("--store", type=Path, required=True, help=store_help)
    refresh = policy_sub.add_parser("drift-reference", help="recompute a policy's drift reference with this version's "
                                    "statistics from `train profile` output; weights, id and other metadata unchanged "
                                    "(train extra)")
    refresh.add_argument("policy", help="policy ONNX file or embedded:policy")
    refresh.add_argument("--work", type=Path, required=True, help="a `train` work folder holding the router, val and test "
                         "profiles and labels the policy was trained with")
    refresh.add_argument("--out", type=Path, help="where to write the policy (default: over the input file)")
    refresh.add_argument("--calibration-sequences", type=_count0, default=0, metavar="N",
                         help="also calibrate the thresholds on N newly rendered in-distribution sequences through "
                              "the node's per-frame path (embedded tiers; ~12 s each on 2 cores)")
    refresh.add_argument("--generator-version", choices=GENERATORS, default="2.0.0", help="the policy's world, for those sequences")
    refresh.add_argument("--cost-weight", type=float, default=-1.0, metavar="W",
                         help="route at this cost weight (the node's routing.cost_weight; negative, the default: the "
                              "policy's own): the node compares the tier mix and audit agreement only at the weight "
                              "the reference was measured at")
    refresh.add_argument("--hysteresis", type=float, default=0.0, metavar="H",
                         help="route with this hysteresis (the node's routing.hysteresis), for the same reason")
    point = policy_sub.add_parser("operating-point", help="the routing.cost_weight to run a tier_values policy at: "
                                  "chosen on a train work folder's validation split, scored on its test split "
                                  "(train extra)")
    point.add_argument("policy", help="policy ONNX file or embedded:policy")
    point.add_argument("--work", type=Path, required=True, help="a `train` work folder with the val and test profiles "
                       "and labels (build/train-v3 for the embedded policy)")
    point.add_argument("--latency", type=Path, help="the tiers' latencies on the target device, JSON as `train "
                       "--latency` takes it (default: the work folder's costs.json)")
    point.add_argument("--streaming", action="store_true", help="best streaming mAP50-95 at 30 Hz over a grid of "
                       "weights (default: per frame, the smallest weight within --cost-share of always-large's cost)")
    point.add_argument("--cost-share", type=float, default=0.4, help="per frame: the budget as a share of always-large's "
                       "cost per frame (default 0.4)")
    point.add_argument("--report", type=Path, help="also write the result as JSON here")
    fit = policy_sub.add_parser("fit-regime", help="the features' signal report: a linear regime classifier "
                                "(train extra); also written as a policy")
    fit.add_argument("--benchmark", type=Path, default=BENCHMARKS["1.0.0"],
                     help="its committed report is of generator 1.0.0's benchmark (default build/benchmark)")
    fit.add_argument("--out", type=Path, default=Path("build/regime_policy.onnx"),
                     help="where to write the regime classifier as a policy (it was the embedded policy until the "
                          "trained one replaced it)")
    fit.add_argument("--report", type=Path, default=Path("training/reports/regime_signal.json"))

    train = sub.add_parser("train", help="train a routing policy from recordings: profile -> labels -> BC -> PPO -> "
                           "export -> evaluate (train extra)")
    train.add_argument("stage", choices=["profile", "labels", "bc", "ppo", "export", "evaluate", "all", "retrain"],
                       help="one stage (its inputs must exist) or all of them in order; finished stages are skipped. "
                            "retrain: evidence bags (--bags) + the original training data -> a candidate policy at "
                            "the current policy's cost on the evidence -> the promotion gate (-> --store)")
    train.add_argument("--preset", choices=["full", "small"], default="full",
                       help="full: the report's settings; small: a few-minute run (CI)")
    train.add_argument("--benchmark", type=Path, help="generated benchmark folder (default build/benchmark-v2: "
                       "generator 2.0.0, the embedded tiers' world)")
    train.add_argument("--source", choices=["dataset", "bags"], help="dataset: the benchmark's images per split "
                       "(default); bags: every bag under <benchmark>/bags/<split>/ for the splits router (training), val and test")
    train.add_argument("--truth", choices=["sidecar", "reference"],
                       help="sidecar (default: the recording's ground_truth.json / records), reference (agreement with "
                            "the large tier or --teacher, for unlabelled recordings)")
    train.add_argument("--model", action="append", default=[], metavar="TIER=ONNX",
                       help="a tier's detector (repeatable; default embedded:<tier>), e.g. large=/models/yolov8l.onnx")
    train.add_argument("--teacher", help="teacher detector ONNX for --truth reference (default: the large tier)")
    train.add_argument("--latency", type=Path, help="device latency JSON {device, tiers_ms: {nano, small, large}} "
                       "(default: this machine, measured while profiling)")
    train.add_argument("--work", type=Path, help="work folder for the stages' outputs (default build/train; "
                       "retrain: build/retrain)")
    train.add_argument("--reports", type=Path, help="report folder (default training/reports; with --preset small, <work>/reports)")
    train.add_argument("--policy-out", type=Path, help="also copy the BC + PPO policy (seed 0) here")
    train.add_argument("--tracking-uri", type=_tracking_uri,
                       help="MLflow tracking URI: sqlite:///PATH or http(s)://HOST (default sqlite:///<work>/mlflow.db)")
    train.add_argument("--seeds", type=_count, help="training seeds (default 3)")
    train.add_argument("--lambda", dest="lam", type=_non_negative, help="operating point; default: chosen on validation")
    train.add_argument("--lambdas", type=_non_negative, nargs="+",
                       help="lambda sweep (full: 0 0.1 0.2 0.3 0.5 0.8; small: 0 0.3)")
    train.add_argument("--ppo-steps", type=_count, help="PPO environment steps per seed (full 30000, small 2048)")
    train.add_argument("--bc-loss", choices=["values", "balanced", "regret"],
                       help="values (default): regress each tier's value gain and calibrate a cost weight on validation "
                            "(the policy's operating point, movable at run time); or classify the lambda-optimal tier: "
                            "class-balanced cross-entropy or expected regret")
    train.add_argument("--policy-inputs", choices=["context", "all"],
                       help="context (default): the 4 context features, the 1024 image features weighted 0 (they "
                            "identify the scene, not its difficulty: see training/README.md); all: 1028")
    train.add_argument("--critic-warmup", type=_count0, help="PPO steps training only the critic first (full 4096, small 1024)")
    train.add_argument("--switch-penalty", type=_non_negative, help="PPO reward penalty per tier switch (default 0)")
    train.add_argument("--resamples", type=_count, help="bootstrap resamples for the intervals (full 200, small 20)")
    retrain = train.add_argument_group("retrain")
    retrain.add_argument("--bags", type=Path, nargs="+", help="evidence bags (rosbag2 folders) without labels: truth "
                         "from the large tier")
    retrain.add_argument("--original-work", type=Path, default=RETRAIN_ONLY["original_work"],
                         help="work folder of the original training (default build/train): its profiles are the "
                              "original data, its costs.json the tier costs unless --latency is given")
    retrain.add_argument("--current", help="the policy the node runs now (default: --store's current.onnx, else "
                         "embedded:policy; with --store, it must be the store's)")
    retrain.add_argument("--candidate", help="gate this policy file instead of training one (a tier_values policy "
                                             "is gated at the cost weight that matches the current policy's cost)")
    retrain.add_argument("--segment-frames", type=_count, default=RETRAIN_ONLY["segment_frames"], help="frames per time segment (the gate's unit)")
    retrain.add_argument("--store", type=Path, help="policy store to promote into when the gate says so")
    retrain.add_argument("--node", default="", help="running node to load a promoted policy into, e.g. /perception_node "
                         "(default: none; the store changes and a restarted node loads it)")
    train.add_argument("--force", action="store_true", help="rerun stages even when their output is cached")

    bench = sub.add_parser("bench", help="benchmarks that print a table and write JSON")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    overhead = bench_sub.add_parser("overhead", help="router overhead: feature extraction + policy, p50/p95")
    overhead.add_argument("--policy", default="embedded:policy", help="policy ONNX file or embedded:policy")
    overhead.add_argument("--iterations", type=_number(int, 100, True, "a whole number >= 100 (p95 needs them)"),
                          default=2000, help="timed calls per resolution (at least 100)")
    overhead.add_argument("--report", type=Path, default=Path("training/reports/overhead.json"),
                          help="JSON to write (default: the committed report the README quotes)")
    transport = bench_sub.add_parser("transport", help="frames delivered across processes at 30 Hz, Fast DDS "
                                                       "defaults against the shipped profile, bare and through the node")
    transport.add_argument("--seconds", type=_positive, default=60.0, help="frames per bare-subscriber pass, in seconds")
    transport.add_argument("--node-seconds", type=_positive, default=20.0, help="frames per node pass, in seconds")
    transport.add_argument("--rate", type=_positive, default=30.0, help="frames per second per camera")
    transport.add_argument("--quick", action="store_true", help="raw 640x480 only (skip 1280x720 and jpeg)")
    transport.add_argument("--report", type=Path, help="JSON to write (default: the committed report the README "
                           f"quotes, training/reports/transport.json; with --quick {QUICK_REPORTS}/transport.json)")

    drift = bench_sub.add_parser("drift", help="the drift monitor on each drift preset after newly seeded "
                                 "in-distribution frames: detection delay, false alarms, score plot")
    drift.add_argument("--policy", default="embedded:policy", help="policy ONNX (with a drift reference)")
    drift.add_argument("--generator-version", choices=GENERATORS, default="2.0.0", help="the policy's world (scenes generator version)")
    drift.add_argument("--in-sequences", type=_count, default=5, help="in-distribution sequences per preset (150 frames)")
    drift.add_argument("--drift-sequences", type=_count, default=2, help="drift sequences per preset")
    drift.add_argument("--preset", action="append", choices=["night", "fog", "new_domain", "small_objects"],
                       help="only these presets (repeatable; default all four)")
    drift.add_argument("--original-work", type=Path, default=WORK_V3,
                       help="the policy's training work folder (its profiles): retrain on each detected preset's "
                            "evidence and score before and after (skipped, said so, when missing)")
    drift.add_argument("--no-retrain", action="store_true", help="detection and false alarms only")
    drift.add_argument("--work", type=Path, default=Path("build/drift-report"), help="evidence bags and retraining")
    drift.add_argument("--report", type=Path, default=Path("training/reports/drift.json"))
    probe = bench_sub.add_parser("drift-probe", help="candidate drift statistics on the drift report's streams, "
                                 "calibrated on the held-out splits (none shipped; training/drift_probe.py)")
    probe.add_argument("--benchmark", type=Path, default=BENCHMARKS["2.0.0"],
                       help="the policy's generated benchmark (router split: reference; val + test: calibration)")
    probe.add_argument("--report", type=Path, default=Path("training/reports/drift_probe.json"))
    heldout = bench_sub.add_parser("heldout", help="the policy against the heuristic at its own cost on newly seeded "
                                   "scenes and on each drift preset (per frame, paired intervals; no bar)")
    heldout.add_argument("--policy", default="embedded:policy", help="policy ONNX file or embedded:policy")
    heldout.add_argument("--latency", type=Path, default=Path("training/latency/cpu-2core-family2-wide.json"),
                         help="tier costs JSON (default: the embedded tiers on the 2-core machine, idle)")
    heldout.add_argument("--generator-version", choices=GENERATORS, default="2.0.0", help="the policy's world (scenes generator version)")
    heldout.add_argument("--set", dest="sets", action="append",
                         choices=["in_distribution", "night", "fog", "new_domain", "small_objects"],
                         help="only these sets (repeatable; default all five)")
    heldout.add_argument("--sequences", type=_count, default=4, help="sequences per set")
    heldout.add_argument("--frames", type=_count, default=150, help="frames per sequence (30 Hz)")
    heldout.add_argument("--resamples", type=_count, default=200, help="bootstrap resamples for the intervals")
    heldout.add_argument("--report", type=Path, default=Path("training/reports/heldout.json"))
    latency = bench_sub.add_parser("latency", help="onnxruntime p50/p95/p99 of the embedded tiers and of real YOLOv8 "
                                   "n/s/l graphs at 320 and 640 (built with the training extra: `make train-deps`), "
                                   "or of your own three tier files (--model); peak memory with three tiers loaded")
    latency.add_argument("--provider", action="append", default=None, metavar="NAME",
                         help="execution provider in order of preference (repeatable; default CPUExecutionProvider; "
                              "e.g. --provider TensorrtExecutionProvider --provider CUDAExecutionProvider)")
    latency.add_argument("--iterations", type=_count, help="timed calls per model (default 40; --quick 8)")
    latency.add_argument("--quick", action="store_true", help="320 only and 8 calls per model (what CI runs, under a minute)")
    latency.add_argument("--model", action="append", default=[], metavar="TIER=PATH",
                         help="time these tier files instead of the embedded tiers and the YOLOv8 graphs (all three "
                              "tiers; no training extra needed): their latency file is --latency-out's")
    latency.add_argument("--graphs", type=Path, default=Path("build/yolov8-random"),
                         help="where the YOLOv8 graphs are built once and reused (the training extra builds them: "
                              "`make train-deps`)")
    latency.add_argument("--report", type=Path, help="JSON to write (default: training/reports/latency.json; with "
                         f"--quick {QUICK_REPORTS}/latency.json; with --model build/bench/latency-own.json)")
    latency.add_argument("--latency-out", type=Path,
                         help="the YOLOv8 graphs' costs as a `train --latency` file (the largest size measured; default: "
                              "training/latency/cpu-2core-yolov8-640.json; with --quick, 320 only, "
                              f"{QUICK_REPORTS}/cpu-2core-yolov8-320.json; with --model, those files' costs, "
                              "build/bench/latency-tiers.json)")
    throughput = bench_sub.add_parser("throughput", help="frames per second through the whole per-frame path, "
                                      "learned routing against always-large and always-nano, in one run")
    throughput.epilog = ("The whole run takes about 12 min on 2 cores (--quick under a minute). With --work, the mode "
                         "learned@90 is added: the learned router at the cheapest cost weight whose validation "
                         "mAP50-95 keeps 90 % of always-large's, picked before the run; the bars are read there.")
    throughput.add_argument("--policy", default="embedded:policy", help="policy ONNX file or embedded:policy")
    throughput.add_argument("--benchmark", type=Path, default=BENCHMARKS["2.0.0"],
                            help="benchmark whose bags/test/ to read; where it has none, the frozen test sequences "
                                 "are rendered into bags under build/bench/test-bags")
    throughput.add_argument("--work", type=Path, default=WORK_V3,
                            help="training work folder: its validation profile picks the 90 %%-of-large operating "
                                 "point and feeds the projection (skipped, with a note, when missing)")
    throughput.add_argument("--real-latency", type=Path, default=REAL_LATENCY,
                            help="YOLOv8 n/s/l costs from `bench latency`, for the real-graph projection")
    throughput.add_argument("--modes", default="learned,heuristic,fixed:nano,fixed:large",
                            help="comma-separated routing modes (fixed:large is required: the ratios are against it); "
                                 "learned:<weight>: the learned router at that cost weight; a +spin / +nospin "
                                 "suffix: the tiers' onnxruntime threads spin-wait / sleep between work (spin_wait "
                                 "true / false); +hostpre: the host converts the frame to float (preprocess_in_graph "
                                 "false); +int8: the tiers in 8 bits (`models quantize` on the router split, cached)")
    throughput.add_argument("--sequences", type=_count, help="test sequences (default all 14; --quick 2)")
    throughput.add_argument("--frames", type=_count, help="frames per sequence (default all 150; --quick 40)")
    throughput.add_argument("--quick", action="store_true",
                            help="2 sequences of 40 frames, no training work folder unless --work names one "
                                 "(what CI runs)")
    throughput.add_argument("--report", type=Path, help="JSON to write (default: training/reports/throughput.json; "
                            f"with --quick {QUICK_REPORTS}/throughput.json)")
    cost = bench_sub.add_parser("cost", help="fleet cost per month from the measured device time per frame and "
                                "routing mix (bench throughput's report)")
    cost.epilog = ("cost per month = robots x fps x 3600 x hours per day x 365.25/12 x device-seconds per frame / 3600 "
                   "x price per device-hour; a mode's device-seconds per frame = its mean frame time in the throughput "
                   "run; savings are against that run's faster always-large (the baseline). See the README's "
                   "'Speed and cost against always-large'.")
    cost.add_argument("--throughput", type=Path, default=COMMITTED_THROUGHPUT,
                      help="bench throughput's JSON (its measured seconds per frame per mode)")
    cost.add_argument("--robots", type=_count, default=COST_SCENARIO[0], help="robots in the fleet")
    cost.add_argument("--fps", type=_positive, default=COST_SCENARIO[1], help="frames per second per robot")
    cost.add_argument("--price", type=_positive, default=COST_SCENARIO[2],
                      help="price per device-hour in dollars (an input, not a quote: pass your own)")
    cost.add_argument("--hours-per-day", type=_positive, default=COST_SCENARIO[3],
                      help="operating hours per robot per day")
    cost.add_argument("--report", type=Path, help="JSON to write (default: training/reports/cost.json for the "
                      "committed throughput report at the default fleet, else build/bench/cost.json)")
    soak = bench_sub.add_parser("soak", help="two cameras of raw 640x480 at 30 Hz through the node on the shipped "
                                             "defaults: memory, node-time drift, stalls, crashes")
    soak.add_argument("--minutes", type=_positive, default=30.0, help="run length (30 for the README's figures)")
    soak.add_argument("--quick", action="store_true", help="a 2-minute run (what CI runs)")
    soak.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                      help="node parameter over the shipped defaults (repeatable), e.g. audit.every=0")
    soak.add_argument("--report", type=Path, help="JSON to write, with a PNG beside it (default: the committed "
                      f"report the README quotes, training/reports/soak.json; with --quick {QUICK_REPORTS}/soak.json)")

    record = sub.add_parser("record", help="the node's topics to segmented MCAP files (Foxglove, rosbags) and/or a "
                                           "live Foxglove WebSocket server")
    record.add_argument("--out", type=Path, help="folder of MCAP segments (recording_0001/, ...)")
    record.add_argument("--camera", action="append", default=None, type=_topic,
                        help="camera topic to record (repeatable; default the node's `image` in its namespace: /image)")
    record.add_argument("--node", action="append", metavar="NODE",
                        help="the node's name with its namespace (default perception_node; /robot1/perception_node): "
                             "where its outputs and debug images are published")
    record.add_argument("--topics", nargs="+", type=_topic, help="record exactly these topics instead of the defaults (cameras, "
                                                    "<namespace>/detections, <namespace>/routing, "
                                                    "<namespace>/debug_image/compressed (several cameras: each camera's "
                                                    "own outputs and debug image), /diagnostics)")
    record.add_argument("--segment-mb", type=_positive, default=1024.0, help="close a segment at this size")
    record.add_argument("--segment-s", type=_positive, default=300.0, help="close a segment after this many seconds")
    record.add_argument("--budget-mb", type=_positive, default=20480.0,
                        help="remove the oldest segments beyond this total (raw 640x480 at 30 Hz is about 27 MB/s)")
    record.add_argument("--duration", type=_non_negative, default=0.0, help="seconds to record; 0 = until Ctrl-C")
    record.add_argument("--use-sim-time", action="store_true", help="log times from /clock (a bag played with "
                        "--clock), as the node's with use_sim_time; default: this machine's clock")
    record.add_argument("--live", action="store_true", help="also serve the topics live to Foxglove (foxglove-sdk)")
    record.add_argument("--live-port", type=_port, default=8765)
    record.add_argument("--live-host", default="127.0.0.1", help="0.0.0.0 to serve other machines")

    routing = sub.add_parser("set-routing", help="switch a running node's routing mode and/or its cost weight between "
                             "two frames (its ~/set_routing_mode service and routing.cost_weight; no `ros2` needed)")
    routing.add_argument("mode", nargs="?", type=_routing_mode,
                         help="learned | heuristic | random | fixed:nano | fixed:small | fixed:large")
    routing.add_argument("--cost-weight", type=_finite, help="routing.cost_weight: the learned mode's operating point "
                         "(higher: cheaper; negative: the policy's own)")
    routing.add_argument("--node", default="/perception_node", help="the node's name (as `ros2 node list` shows it)")
    routing.add_argument("--timeout", type=_positive, default=10.0, help="seconds to wait for the node's services")

    health = sub.add_parser("health", help="exit 0 when the node's metrics say it is healthy (container healthcheck)")
    health.add_argument("--url", default="http://127.0.0.1:9464/metrics", help="the node's metrics endpoint")

    demo = sub.add_parser("demo", help="end-to-end demo on generated frames, no downloads")
    demo.add_argument("--sequence", type=_count, default=49, help="frozen benchmark test sequence to replay (46-59)")
    demo.add_argument("--frames", type=_count, default=150,
                      help="frames to render (150 = the whole sequence, identical to the benchmark's bag)")
    demo.add_argument("--out", type=Path, default=Path("build/demo"), help="working folder")
    demo.add_argument("--modes", default=None,
                      help="comma-separated routing modes, one node process and replay each; learned:<w> is the "
                           "learned mode at routing.cost_weight w (default: learned, learned at the per-frame "
                           "operating point, heuristic, fixed:nano, fixed:large)")
    return parser


def _unwritable(path: Path) -> str | None:
    """Why `path` could not be written, probed by writing beside it, or in the nearest folder above it that exists
    (the commands that write it make the folders missing); None when it can."""
    from adaptive_perception.errors import write_probe

    if path.exists() and not os.access(path, os.W_OK):
        return "the file is read-only"
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is a file, not a folder"
    try:
        write_probe(folder, path.name)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _parse_remaps(items: list[str]) -> dict[str, str]:
    remaps = {}
    for item in items:
        if ":=" not in item:
            raise AdaptivePerceptionError(f"--remap '{item}' must look like BAG_TOPIC:=TOPIC")
        source, target = item.split(":=", 1)
        for name in (source, target):
            try:
                _topic(name)
            except argparse.ArgumentTypeError as exc:
                raise AdaptivePerceptionError(f"--remap '{item}': {exc}") from None
        remaps[source] = target
    return remaps


def _scenes(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from adaptive_perception.scenes import benchmark
    from adaptive_perception.scenes.sequence import Drift

    if args.scenes_command == "check":
        manifest = args.manifest
        if manifest is None:  # the frozen manifest of the version the folder says it was generated with
            own = args.out / "manifest.json"
            # benchmarks generated before the generator had versions are 1.0.0's
            version = read_json(own, "a generated benchmark's manifest").get("generator_version", "1.0.0") \
                if own.is_file() else "2.0.0"
            if version not in FROZEN_MANIFESTS:
                raise AdaptivePerceptionError(f"'{own}' names generator version {version!r}, which has no frozen "
                                              f"manifest ({', '.join(GENERATORS)}); pass --manifest")
            manifest = FROZEN_MANIFESTS[version]
        splits = benchmark.SPLITS if "all" in args.splits else tuple(dict.fromkeys(args.splits))
        benchmark.check_against(args.out, manifest, splits)
        print(f"{args.out}: {', '.join(splits)} (records and images) match the frozen manifest {manifest}")
        return 0
    config = benchmark.PRESETS[args.preset]
    if args.drift != "none":
        config = benchmark.with_drift(config, Drift(args.drift))
    if args.bags:
        config = replace(config, bags=args.bags)
    config = replace(config, version=args.generator_version)
    args.out = args.out or generated_out(args.generator_version, args.drift)
    manifest = benchmark.generate(config, args.out, args.workers)
    for split, summary in manifest["splits"].items():
        mix = ", ".join(f"{k} {v:.0%}" for k, v in summary["regime_mix"].items())
        print(f"{split:>5}: {summary['frames']} frames ({mix}), {summary['objects']} objects, "
              f"{summary['ignore_regions']} ignore regions")
    print(f"wrote {args.out} (manifest.json, data.yaml, coco/, images/, labels/, bags/, contact_sheet.png)")
    return 0


def _models(args: argparse.Namespace) -> int:
    if args.models_command == "export":
        from adaptive_perception.training.yolo import export_pretrained

        if len(args.imgsz) > 2 or min(args.imgsz) < 32:  # a third value was dropped, 1x2 became 32x32: both silently
            raise AdaptivePerceptionError(f"--imgsz {' '.join(map(str, args.imgsz))}: give S or H W, each at least 32 "
                                          "(YOLOv8's stride; e.g. --imgsz 640 or --imgsz 480 640)")
        imgsz = args.imgsz[0] if len(args.imgsz) == 1 else tuple(args.imgsz)
        print(f"wrote {export_pretrained(args.weights, imgsz, args.out)}")
        return 0
    if args.models_command == "quantize":
        return _quantize(args)
    from adaptive_perception.training import tiers

    if args.models_command == "train-tiers":
        args.benchmark = args.benchmark or BENCHMARKS["2.0.0" if args.network else "1.0.0"]
    if args.models_command == "train-tiers" and args.network:
        best = tiers.train_network(tiers.NETWORKS[args.network], args.benchmark, args.out, args.epochs, args.batch,
                                   keep=args.keep)
        print(f"best weights: {best}")
    elif args.models_command == "train-tiers":
        print(f"best weights: {tiers.train(args.benchmark / 'data.yaml', args.out, args.epochs, args.batch)}")
    elif args.models_command == "curve":
        runs = {p.parent.name: p for p in sorted(args.keep.glob("*/results.csv"))}
        if not runs:
            raise AdaptivePerceptionError(f"no <network>/results.csv under '{args.keep}'; train with "
                                          "`models train-tiers --network base --keep <folder>/base` first")
        for name, check in tiers.plot_curves(runs, args.out).items():
            gain = "n/a" if check["gain_last_epochs"] is None else f"{check['gain_last_epochs']:+.2f}"
            print(f"{name}: {check['epochs']} epochs, gain over the last 10: {gain} -> "
                  f"{'plateau' if check['reached'] else 'still rising'}")
        print(f"wrote {args.out}")
    elif args.models_command == "export-tiers":
        for tier, path in tiers.export_tiers(args.weights, args.out).items():
            print(f"{tier}: {path}")
    elif args.models_command == "compare":
        candidates = {}
        for spec in args.candidate:
            name, _, rest = spec.partition("=")
            weights, _, size = rest.rpartition("@")
            height, _, width = size.partition("x")
            if not (name and weights and height.isdigit() and width.isdigit()):
                raise AdaptivePerceptionError(f"--candidate {spec!r}: use NAME=WEIGHTS@HxW, e.g. "
                                              "nano=training/checkpoints/tiers-v2/base/last.pt@192x256")
            if not Path(weights).is_file():
                raise AdaptivePerceptionError(f"--candidate {spec!r}: no weights file '{weights}'")
            if Path(weights).suffix != ".pt":  # exported at the candidate's input here, so PyTorch weights
                raise AdaptivePerceptionError(f"--candidate {spec!r}: '{weights}' is not an Ultralytics .pt checkpoint "
                                              "(compare exports each candidate at its input size: give the training "
                                              "weights, e.g. training/checkpoints/tiers-v2/base/last.pt)")
            candidates[name] = (Path(weights), (int(height), int(width)))
        result = tiers.compare_candidates(candidates, args.benchmark, args.report, args.split)
        for name, row in result["candidates"].items():
            print(f"{name:>14} {row['input_hw'][0]}x{row['input_hw'][1]}: mAP50-95 {row['map50_95_all']:.1f}  mAP50 "
                  f"all / sparse / dense {row['map50_all']:.1f} / {row['map50_sparse']:.1f} / {row['map50_dense']:.1f}"
                  f"  latency p50 {row['latency_p50_ms']:.1f} ms")
            print(" " * 15 + "mAP50 by object side: " + "  ".join(
                f"{band.removeprefix('side_')} {value:.1f}" for band, value in row["map50_by_size"].items()))
        print(f"wrote {args.report}")
    elif args.models_command == "pilot":
        for tier, row in tiers.pilot(args.weights, args.benchmark, args.report)["tiers"].items():
            print(f"{tier:>6} {row['input_hw']}: mAP50-95 {row['map50_95']:.1f}  mAP50 {row['map50']:.1f}")
    elif args.models_command == "evaluate":
        models = {t: args.models / f"{t}.onnx" for t in ("nano", "small", "large")}
        report = tiers.evaluate(models, args.benchmark, args.manifest, args.report)
        print(tiers.report_table(report))
        sources = dict.fromkeys(models, (None, args.family1_run)) if args.family1_run else None
        card = tiers.write_model_card(report, args.manifest, args.card or args.models / "MODEL_CARD.md", sources)
        print(f"wrote {args.report} and {card}")
    return 0


def _quantize(args: argparse.Namespace) -> int:
    from adaptive_perception.config import tier_models
    from adaptive_perception.detector import TIERS
    from adaptive_perception.training import quantize

    models = tier_models(args.model) or {t: f"embedded:{t}" for t in TIERS}
    if args.topic and not args.bag:
        raise AdaptivePerceptionError("--topic picks a bag's image topic; give --bag too")
    jobs = quantize.check_jobs(models, args.out, args.replace)  # before any frame is read
    wanted = 2 * args.frames
    frames = (quantize.bag_frames(args.bag, wanted, args.topic) if args.bag
              else quantize.image_folder_frames(args.images, wanted))
    calibration, check = quantize.split_frames(frames, args.frames)
    short = f" (of --frames {args.frames}: {args.bag or args.images} holds {len(frames)})" \
        if len(calibration) < args.frames else ""
    print(f"[quantize] {len(calibration)} calibration frames{short}, {len(check)} check frames from "
          f"{args.bag or args.images}", flush=True)
    rows = quantize.quantize_tiers(jobs, calibration, check)
    print(quantize.table(rows))
    flags = " ".join(f"--model {r.tier}={r.out}" for r in rows)
    print(f"next: retrain the router for these tiers' costs (`adaptive-perception train all {flags} ...`), then run "
          "the node with their paths (parameters " + ", ".join(f"models.{r.tier}" for r in rows) + ")")
    return 0


def _policy_store(args: argparse.Namespace) -> int:
    from adaptive_perception.policy_store import PolicyStore

    store = PolicyStore(args.store)
    if args.policy_command == "history":
        for entry in store.history():
            print(json.dumps(entry))
        return 0
    if args.policy_command == "store-init":
        path = store.init(args.source)
        print(f"{path}: policy_id {store.policy_id(path)}; point the node's policy parameter here")
        return 0
    loaded: dict[str, object] = {}

    def load(path: Path, changed: bool) -> None:  # with the store's lock held: no other change lands first
        loaded["changed"] = changed
        if not changed:  # the store holds it already (an earlier promotion whose node did not follow): it follows now
            print(f"promote: policy '{store.policy_id(path)}' is already current in {store.folder} (the store is "
                  f"unchanged); loading it into {args.node}")
        else:
            print(f"{args.policy_command}: {path} is now policy '{store.policy_id(path)}' (previous: "
                  f"'{store.policy_id(store.previous)}')")
        if args.node:
            from adaptive_perception.ros.session import load_policy

            try:
                loaded["id"] = load_policy(args.node, str(path.resolve()), args.timeout)
            except RuntimeError as exc:
                loaded["error"] = exc

    # the same file as the current one is no change: with --node, the node follows; without, refused
    path = store.promote(args.candidate, then=load, keep_current=bool(args.node)) \
        if args.policy_command == "promote" else store.rollback(then=load)
    unchanged = not loaded["changed"]
    if args.node:
        if "id" in loaded:
            print(f"{args.node} runs policy '{loaded['id']}'")
        else:  # the store changed; only the running node did not follow (exit 4, not 2)
            exc = loaded["error"]
            if unchanged:  # nothing changed at all (2)
                print(f"adaptive-perception policy promote: the store is unchanged and the running node did not "
                      f"load {path}: {exc}", file=sys.stderr)
                return 2
            print(f"adaptive-perception policy {args.policy_command}: the store changed ({path} is policy "
                  f"'{store.policy_id(path)}': a restarted node loads it) but the running node did not: {exc}",
                  file=sys.stderr)
            return 4
    return 0


def _policy(args: argparse.Namespace) -> int:
    from adaptive_perception.config import resolve_model

    if args.policy_command == "inspect":
        from adaptive_perception.drift import weight_text
        from adaptive_perception.features import FEATURE_SIZE
        from adaptive_perception.policy import Policy

        policy = Policy(resolve_model(args.path))
        info, head, reference = policy.info, policy.value_head, policy.drift_reference
        print(f"{info.path}: policy_id {info.policy_id}, tiers {list(info.tiers)}\n{info.description}")
        print("outputs: " + ("tier logits (the most probable tier runs)" if head is None else
                             f"tier values, cost weight {weight_text(head.cost_weight)} (routing.cost_weight < 0 runs "
                             "at it; `policy operating-point` picks one for a device)"))
        print(f"inputs read: {len(policy.inputs_read)} of {FEATURE_SIZE}; runs in {policy.engine}"
              + (" (its dense layers, checked against onnxruntime at load)" if policy.engine == "numpy" else ""))
        print("drift reference: " + ("none (the node's drift monitor is off with this policy)" if reference is None
              else f"thresholds {', '.join(f'{k} {v:.3g}' for k, v in sorted(reference.thresholds.items()))}; "
                   f"{reference.layout()}; tier mix and audits measured at cost weight "
                   + ("the policy's own" if reference.cost_weight is None else weight_text(reference.cost_weight)
                      + ("" if policy.reference_weight_recorded else " (not recorded: an earlier layout, read as "
                                                                     "the policy's own)"))
                   + f", hysteresis {reference.hysteresis:g}"
                   + (f"; calibrated on {reference.calibration_frames} held-out frames" if reference.calibration_frames
                      else "")))
        thin = reference.thin_calibration() if reference is not None else ""
        if thin:
            print(f"warning: {thin}")
        if info.tier_digests:
            print("trained with tiers: " + ", ".join(f"{t} {d}" for t, d in info.tier_digests.items()))
        return 0
    if args.policy_command in ("store-init", "promote", "rollback", "history"):
        return _policy_store(args)
    if args.policy_command == "wrap":
        from adaptive_perception.training.policy_export import wrap_model

        out = wrap_model(args.model, args.out, args.policy_id,
                         resolve_model(args.normalisation) if args.normalisation else None, args.description)
        print(f"wrote {out}: policy '{args.policy_id}' (check it with `adaptive-perception policy inspect {out}`; it "
              "has no drift reference: `policy drift-reference` adds one from `train profile` output)")
        return 0
    if args.policy_command == "operating-point":
        from adaptive_perception.policy import Policy
        from adaptive_perception.training.operating_point import choose, render, write

        result = choose(Policy(resolve_model(args.policy)), args.work, args.latency, args.streaming, args.cost_share)
        if args.report:  # before anything is printed: a reader of stdout that left loses no file
            write(result, args.report)
        print(render(result))
        if args.report:
            print(f"wrote {args.report}")
        return 0
    if args.policy_command == "drift-reference":
        from adaptive_perception.training.pipeline import refresh_drift_reference

        path = Path(resolve_model(args.policy))
        reference = refresh_drift_reference(args.work, path, args.out or path, args.calibration_sequences,
                                            args.generator_version, args.cost_weight, args.hysteresis)
        print(f"wrote {args.out or path}: drift thresholds " + ", ".join(f"{k} {v:.3f}" for k, v in
                                                                          reference.thresholds.items()))
        return 0
    from adaptive_perception.training.regime import fit_regime_policy

    report = fit_regime_policy(args.benchmark, args.out, args.report)
    test, base = report["test"], report["majority_baseline"]
    print(f"test split ({report['frames']['test']} frames): balanced accuracy {test['balanced_accuracy']:.3f} "
          f"(majority '{base['regime']}': {base['balanced_accuracy']:.3f}), accuracy {test['accuracy']:.3f} "
          f"(majority: {base['accuracy']:.3f})")
    print(f"wrote {args.out} (policy_id {report['policy_id']}) and {args.report}")
    return 0


# what setup.py's `train` extra brings (scikit-learn comes with its MLflow): a command that imports one of them
# without it installed says how to install it instead of ending in a traceback
TRAIN_EXTRA_MODULES = frozenset({"torch", "torchvision", "ultralytics", "onnx", "onnxslim", "stable_baselines3",
                                 "gymnasium", "mlflow", "matplotlib", "sklearn"})


# `train`'s retrain group: each option's destination and default (given with another stage: refused)
RETRAIN_ONLY = {"bags": None, "original_work": Path("build/train"), "current": None, "candidate": None,
                "segment_frames": 30, "store": None, "node": ""}


def _terminated(*_signal) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """SIGTERM (`timeout`, docker stop, CI) stops a command as Ctrl-C does: its summary, what it finished, exit 130
    (it was killed outright, exit 143, a replay's summary and JSON lost); `node` and `record` set their own. SIGINT
    too, explicitly: a command started as a script's background job (`replay ... &`) inherits SIGINT ignored, and
    `kill -INT` did nothing (a replay ran to the end of its bag). The caller's handlers are back when it returns."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        return _main(argv)
    previous = {signum: signal.signal(signum, handler) for signum, handler in
                ((signal.SIGTERM, _terminated), (signal.SIGINT, signal.default_int_handler))}
    try:
        return _main(argv)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def _main(argv: list[str] | None) -> int:
    from adaptive_perception.runlog import quiet_mlflow_setup
    from adaptive_perception.transport import apply_defaults

    apply_defaults()  # before any ROS context: camera frames through shared memory (config/fastdds.xml)
    quiet_mlflow_setup()
    argv = list(sys.argv[1:] if argv is None else argv)
    ros_args: list[str] | None = None
    if "--ros-args" in argv:  # ROS arguments are not ours to parse
        ros_args = argv[argv.index("--ros-args") + 1:]
        argv = argv[:argv.index("--ros-args")]
    parser = _parser()
    if ros_args is not None and (not argv or argv[0] != "node"):  # they were dropped without a word
        parser.error("--ros-args: only `node` takes ROS arguments (the other commands have options of their own: "
                     "--help lists them)")
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):  # argparse named only the command
        parser.error(f"unrecognized option {argv[0]}: the command comes first (adaptive-perception COMMAND "
                     "[options]; --help lists the commands)")
    args = parser.parse_args(argv)
    if args.command == "replay":
        if args.bag is not None and args.bag_option is not None:
            parser.error(f"replay: give the bag once, as BAG or --bag (got {args.bag} and {args.bag_option})")
        args.bag = args.bag or args.bag_option
        if args.bag is None:
            parser.error("replay: which bag? adaptive-perception replay BAG (a rosbag2 folder or .mcap/.db3 file)")
        if args.rate != 1.0 and args.mode != "recorded":
            parser.error(f"replay: --rate paces --mode recorded; --mode {args.mode} sends "
                         + ("each frame after the previous one's answer" if args.mode == "lockstep" else
                            "frames back to back") + " (leave --rate out, or add --mode recorded)")
        if args.max_gap is not None and args.mode != "recorded":
            parser.error(f"replay: --max-gap caps the waits of --mode recorded; --mode {args.mode} waits for none")
        if args.json is not None and not args.json.parent.is_dir():  # refused now, not after the replay
            parser.error(f"replay: --json {args.json}: folder {args.json.parent} does not exist")
    if args.command == "train" and args.stage != "retrain":  # they were ignored without a word
        given = [f"--{dest.replace('_', '-')}" for dest, default in RETRAIN_ONLY.items() if getattr(args, dest) != default]
        if given:
            parser.error(f"train {args.stage}: {', '.join(given)} belong{'s' if len(given) == 1 else ''} to `train "
                         "retrain` (retraining from evidence)")
    # refused now, not after the run whose results it would hold: each option with the file it names
    for option, example in (("report", "report.json"), ("json", "report.json"), ("latency_out", "latency.json"),
                            ("policy_out", "policy.onnx"), ("card", "MODEL_CARD.md")):
        path = getattr(args, option, None)
        if not isinstance(path, Path):
            continue
        flag = f"--{option.replace('_', '-')} {path}"
        if path.is_dir():
            print(f"adaptive-perception {args.command}: error: {flag} is a folder; give the file to write, e.g. "
                  f"{path / example}", file=sys.stderr)
            return 2
        if (problem := _unwritable(path)) is not None:
            print(f"adaptive-perception {args.command}: error: {flag} cannot be written ({problem}); give a path in a "
                  "folder you can write", file=sys.stderr)
            return 2
    try:
        if args.command == "node":
            from adaptive_perception.ros.node import main as node_main

            extra = ["--params-file", str(args.params_file)] if args.params_file else []
            if args.autostart:
                extra += ["-p", "autostart:=true"]
            return node_main(["perception_node", "--ros-args", *extra, *(ros_args or [])])
        if args.command == "replay":
            from adaptive_perception.bag import said_left_out
            from adaptive_perception.ros.replay import MAX_GAP_S, ReplayMode, replay_bag
            from adaptive_perception.ros.session import spun_node

            with spun_node("adaptive_perception_replay") as node:
                report = replay_bag(node, args.bag, ReplayMode(args.mode), args.rate, args.topics,
                                    _parse_remaps(args.remap), args.output_topic, args.timeout,
                                    subscribers=args.subscribers,
                                    max_gap_s=MAX_GAP_S if args.max_gap is None else args.max_gap)
            summary = report.summary()
            if args.json:  # before anything is printed: a reader of stdout that left loses no file
                args.json.write_text(json.dumps(summary, indent=2, allow_nan=False))
            if report.skipped_topics:
                print(f"left out {said_left_out(report.skipped_topics)}: not camera pictures (name one with --topic to "
                      "replay it)")
            for key, value in summary.items():
                text = "-" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)
                print(f"{key:>18}: {text}")
            if report.stopped:
                print(f"adaptive-perception replay: stopped after {report.frames_published} frames published: "
                      f"{report.stopped}", file=sys.stderr)
                return 130 if report.interrupted else 2
            if report.undecodable:
                print(f"{report.undecodable} frames of the bag are ones the node's decoder refuses: left out in "
                      "lock-step, where no answer would come (--mode fast or recorded sends them to the node, which "
                      "counts them by kind in /diagnostics)", file=sys.stderr)
            if not report.frames_published:
                print("adaptive-perception replay: no frame published: every frame on the topics replayed is one the "
                      "node's decoder refuses (the README's \"Topics and services\" lists the encodings it reads)",
                      file=sys.stderr)
                return 1
            if report.timeouts:
                print(f"{report.timeouts} of {report.frames_published} frames got no answer within --timeout "
                      f"{args.timeout:g} s: the node's /diagnostics (its camera status counts bad frames by kind) or "
                      "its log says why; a slow tier needs a longer --timeout", file=sys.stderr)
            return 0 if report.timeouts == 0 else 1
        if args.command == "scenes":
            return _scenes(args)
        if args.command == "models":
            return _models(args)
        if args.command == "policy":
            return _policy(args)
        if args.command == "train":
            from adaptive_perception.training.pipeline import run, settings_from

            if args.stage == "retrain":
                from adaptive_perception.training.retrain import retrain

                if args.truth == "sidecar":
                    raise AdaptivePerceptionError("retrain: evidence bags carry no labels; their truth is the large "
                                                  "tier's output (--truth reference), leave --truth out")
                settings = settings_from(args)
                if args.work is None:
                    settings = replace(settings, work=Path("build/retrain"))
                decision = retrain(settings, args.bags or [], args.original_work, args.current, args.candidate,
                                   args.segment_frames, store=args.store, node=args.node)
                return 0 if decision["promote"] else 3
            run(args.stage, settings_from(args))
            return 0
        if args.command == "set-routing":
            from adaptive_perception.ros.session import set_cost_weight, set_routing_mode

            if args.mode is None and args.cost_weight is None:
                raise AdaptivePerceptionError("set-routing: give a MODE, --cost-weight W, or both")
            if args.mode is not None:  # each change is said as it is made: a later refusal leaves it in force
                print(f"{args.node}: {set_routing_mode(args.node, args.mode, args.timeout)}", flush=True)
            if args.cost_weight is not None:
                print(f"{args.node}: {set_cost_weight(args.node, args.cost_weight, args.timeout)}", flush=True)
            return 0
        if args.command == "health":
            from adaptive_perception.metrics import check_health, url_problem

            if url_problem(args.url):  # a usage error (2), not an unhealthy node (1)
                print(f"adaptive-perception health: error: {url_problem(args.url)}", file=sys.stderr)
                return 2
            healthy, why = check_health(args.url)
            print(f"{'healthy' if healthy else 'unhealthy'}: {why}")
            return 0 if healthy else 1
        if args.command == "record":
            from adaptive_perception.ros.record import default_topics, run_record

            if len(args.node or []) > 1:
                raise AdaptivePerceptionError(f"--node given {len(args.node)} times: record follows one node's "
                                              "topics; for several nodes list them all with --topics (or run one "
                                              "record per node, each with its own --out)")
            topics = args.topics or default_topics(args.camera, (args.node or ["perception_node"])[0])
            return run_record(args.out, topics, args.segment_mb, args.segment_s, args.budget_mb, args.duration,
                              args.live_port if args.live else None, args.live_host, args.use_sim_time)
        if args.command == "bench" and args.bench_command == "drift":
            from adaptive_perception.scenes.sequence import Drift
            from adaptive_perception.training.drift_report import run_report

            result = run_report(args.report, args.policy, args.in_sequences, args.drift_sequences,
                                presets=[Drift(p) for p in args.preset] if args.preset else None,
                                version=args.generator_version,
                                original_work=None if args.no_retrain else args.original_work, work=args.work)
            bars = result["bars"]
            return 0 if bars["no_false_alarm"] and all(bars["detected_within_150"].values()) else 1
        if args.command == "bench" and args.bench_command == "drift-probe":
            from adaptive_perception.training.drift_probe import run as run_probe

            run_probe(args.benchmark, args.report)
            return 0
        if args.command == "bench" and args.bench_command == "heldout":
            from adaptive_perception.training.heldout import run as run_heldout

            if args.sequences < 2:  # --frames is >= 1 by its type
                raise AdaptivePerceptionError(f"--sequences {args.sequences}: the intervals resample sequences, so "
                                              "give at least 2 (4 for its bootstrap intervals)")
            run_heldout(args.policy, args.latency, args.sets or ["in_distribution", "night", "fog", "new_domain",
                                                                 "small_objects"],
                        args.sequences, args.frames, args.generator_version, args.resamples, args.report,
                        shlex.join(["adaptive-perception", *argv]))
            return 0
        if args.command == "bench" and args.bench_command == "soak":
            from adaptive_perception.training.soak import run_soak

            from adaptive_perception.ros.parameters import parse_override

            overrides = dict(parse_override(item) for item in args.param)
            return run_soak(2.0 if args.quick else args.minutes, _bench_out(args, "training/reports/soak.json"),
                            overrides=overrides)
        if args.command == "bench" and args.bench_command == "transport":
            from adaptive_perception.training.transport import run_transport

            return run_transport(args.seconds, args.node_seconds, args.rate, args.quick,
                                 _bench_out(args, "training/reports/transport.json"))
        if args.command == "bench" and args.bench_command == "latency":
            from adaptive_perception.training.latency_bench import run as run_latency

            from adaptive_perception.config import tier_models

            own = tier_models(args.model) if args.model else None
            if own:  # a robot's own tiers: never over the committed reports
                latency_out = args.latency_out or Path("build/bench/latency-tiers.json")
                report = args.report or Path("build/bench/latency-own.json")
            else:
                latency_out = args.latency_out or Path(f"{QUICK_REPORTS}/cpu-2core-yolov8-320.json" if args.quick
                                                       else "training/latency/cpu-2core-yolov8-640.json")
                report = _bench_out(args, "training/reports/latency.json")
            run_latency(args.provider or ["CPUExecutionProvider"], args.graphs, args.quick, report, latency_out,
                        args.iterations, own)
            return 0
        if args.command == "bench" and args.bench_command == "throughput":
            from adaptive_perception.training.throughput import QUICK
            from adaptive_perception.training.throughput import run as run_throughput

            # --quick reads no work folder (CI has none) unless one is named
            work = None if args.quick and args.work == WORK_V3 else args.work
            if work is None and args.real_latency != REAL_LATENCY:  # named, but not read: said
                print(f"[throughput] --real-latency {args.real_latency} is not read: the projection needs the work "
                      "folder's profiles, and --quick reads none unless --work names one", flush=True)
            run_throughput(args.policy, args.benchmark, work, None if work is None else args.real_latency,
                           [m for m in args.modes.split(",") if m],
                           args.sequences or (QUICK["sequences"] if args.quick else None),
                           args.frames or (QUICK["frames"] if args.quick else None), Path("build/bench/test-bags"),
                           _bench_out(args, "training/reports/throughput.json"))
            return 0
        if args.command == "bench" and args.bench_command == "cost":
            from adaptive_perception.training.fleet_cost import run as run_cost

            # the committed report is the committed run's at the origin's scenario; any other goes under build/
            committed = args.throughput.resolve() == COMMITTED_THROUGHPUT.resolve() and \
                (args.robots, args.fps, args.price, args.hours_per_day) == COST_SCENARIO
            run_cost(args.throughput, args.robots, args.fps, args.price, args.hours_per_day,
                     args.report or Path("training/reports/cost.json" if committed else "build/bench/cost.json"))
            return 0
        if args.command == "bench":
            from adaptive_perception.training.overhead import run_overhead

            return run_overhead(args.policy, args.iterations, args.report)
        if args.command == "demo":
            from adaptive_perception.ros.demo import DEMO_MODES, run_demo
            from adaptive_perception.router import weighted_mode

            modes = tuple(args.modes.split(",")) if args.modes else DEMO_MODES
            for mode in modes:
                try:
                    weighted_mode(mode)
                except AdaptivePerceptionError as exc:
                    raise AdaptivePerceptionError(f"--modes: {exc}; or learned:<cost weight>") from None
            if args.frames > 150:
                raise AdaptivePerceptionError(f"--frames {args.frames}: use a count from 1 to 150 (a benchmark "
                                              "sequence has 150 frames)")
            summary = run_demo(args.out, args.frames, modes, args.sequence)
            return 0 if all(r["outputs_received"] == r["frames_published"] for r in summary["modes"].values()) else 1
    except ModuleNotFoundError as exc:
        package = (exc.name or "").split(".")[0]
        if package not in TRAIN_EXTRA_MODULES:
            raise
        print(f"adaptive-perception {args.command}: error: this command needs the training extra, and {package} is "
              "not installed: run `make train-deps` in the repository (or `pip install -e '.[train]'`)", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader of stdout left (`| head`): no error to report, and none at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (AdaptivePerceptionError, OSError, RuntimeError) as exc:  # OSError: the path and what is wrong with it
        print(f"adaptive-perception {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: what a command finished (a training stage, a closed segment) stays
        print(f"adaptive-perception {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
