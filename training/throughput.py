"""`adaptive-perception bench throughput`: frames per second through the node's whole per-frame path, in-process.

Per frame, from the recorded CDR bytes of a benchmark test bag to serialized output messages, the node's steps in
its order: read the serialized sensor_msgs/Image (`parse_image`, as the node's raw subscription does), decode
(`image_to_rgb`), `Router.route` (the routing features the decision reads, the decision), the chosen tier
(letterbox, onnxruntime `session.run`, decode + NMS), the Detection2DArray's CDR (`detections_cdr`, what the
node publishes, first: the node overhead bar ends at it), the next frame's context, the image statistics
when the decision did not read them (a context-only policy, the rules), the drift monitor's update (the frame's
veil, the window statistics: one monitor per mode, kept across sequences as a camera's is; the audits, 1 frame in
30 through the large tier in the node's background worker, are not in these figures), and the RoutingDecision
serialized. One worker, frames back to back:
throughput = frames / the summed per-frame times. Every mode runs every sequence (context reset per sequence);
the order of the modes rotates per sequence, so machine load hits all modes alike. Accuracy of each mode's
published detections (the node's thresholds) is scored with pycocotools against the bags' ground truth in the
same run. Speed-up and latency reduction are against always-large, from this run's timings only. The tiers run
with the node's settings (thresholds, `spin_wait`, `preprocess_in_graph`); a `+spin` mode suffix runs them with
spin-waiting threads, `+nospin` with sleeping ones, `+hostpre` with the host converting the frame to float (the
model files' own graphs), `+int8` with the tiers in 8 bits (`models quantize`, calibrated on the router split,
cached by source digest; `fixed:large+int8` is the buyer's other always-large, never the ratios' baseline).

Operating points of the learned router: its calibrated weight (`learned`, the node's default), any
`learned:<weight>`, and, given the training work folder (validation profile), `learned@90`: the cheapest weight
whose validation mAP50-95 keeps >= 90 % of always-large's, picked on validation before the run. With a latency
file for real YOLOv8 n/s/l (`bench latency`), a projection re-picks both operating points for those costs on
validation (as `train --latency` would), routes the test profile with them (accuracy of the embedded tiers) and
adds this run's measured per-frame work outside inference: a projection, labelled so.
"""
from __future__ import annotations

import json
import os
import platform
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from adaptive_perception.config import NodeConfig, resolve_model
from adaptive_perception.detector import TIERS, DetectorTier
from adaptive_perception.drift import DriftMonitor
from adaptive_perception.errors import AdaptivePerceptionError, ConfigError
from adaptive_perception.features import RoutingContext, next_context
from adaptive_perception.policy import Policy
from adaptive_perception.progress import progress
from adaptive_perception.router import Router, RouterSettings, weighted_mode

FRAME_BUDGET_MS = 1000.0 / 30  # 30 FPS
ACCURACY_SHARE = 0.90  # the operating point keeps >= 90 % of always-large's mAP50-95
BARS = {"speedup": 2.5, "projected_speedup": 3.0, "router_share_of_nano_p50": 0.03, "node_overhead_p95_ms": 3.0}
WARMUP_FRAMES = 3  # per mode, untimed, before the run
NOSPIN = "+nospin"  # a mode suffix: tiers whose onnxruntime threads sleep between work (spin_wait false)
SPIN = "+spin"  # a mode suffix: tiers whose onnxruntime threads spin-wait for work (spin_wait true)
HOSTPRE = "+hostpre"  # a mode suffix: the host converts the frame to float (preprocess_in_graph false)
INT8 = "+int8"  # a mode suffix: the embedded tiers in 8 bits (`models quantize`); never the ratios' baseline
INT8_CALIBRATION_FRAMES = 64
QUICK = {"sequences": 2, "frames": 40}
GENERATOR = "2.0.0"
EMBEDDED_COSTS = Path(__file__).resolve().parent / "latency" / "cpu-2core-family2-wide.json"  # the policy's calibration
WEIGHT_STEPS = 24  # operating-point grid: 0 and 23 geometric steps up to 2x the policy's weight


# ---- frames -------------------------------------------------------------------------------------------
@dataclass
class Sequence:
    name: str
    cdr: list[bytes]
    records: list[dict]  # ground truth per frame (the bag's ground_truth.json)
    whole: bool = True  # every frame of the sequence (not cut by --frames)


def _read_bag(bag: Path, frames: int | None) -> Sequence:
    from adaptive_perception.bag import read_images

    truth_path = bag / "ground_truth.json"
    if not truth_path.is_file():
        raise AdaptivePerceptionError(f"{bag} has no ground_truth.json; bench throughput reads the benchmark's test "
                                      "bags (`adaptive-perception scenes generate`), which carry it")
    truth = json.loads(truth_path.read_text())["frames"]
    cdr, records = [], []
    for index, image in enumerate(read_images(bag)):
        stamp = image.stamp_sec * 1_000_000_000 + image.stamp_nanosec
        if image.malformed or str(stamp) not in truth:
            raise AdaptivePerceptionError(
                f"{bag}: frame {index} on '{image.topic}' " + ("is a malformed message (no Image can be read from it)"
                                                             if image.malformed else f"(stamp {stamp}) is not in its "
                                                             "ground_truth.json") + "; bench throughput reads the "
                "benchmark's test bags as `adaptive-perception scenes generate` wrote them: generate them again")
        cdr.append(image.cdr)
        records.append(truth[str(stamp)])
        if frames is not None and len(cdr) == frames:
            break
    return Sequence(bag.name, cdr, records, whole=len(cdr) == len(truth))


def split_bags(benchmark: Path, sequences: int | None, frames: int | None,
               cache: Path) -> tuple[list[Sequence], bool]:
    """The benchmark's test bags (`<benchmark>/bags/test/`), or, where none were generated, the same frozen test
    sequences rendered into bags under `cache` exactly as `scenes generate` writes them; and whether they are the
    whole split (no sequence or frame left out by `sequences` / `frames`)."""
    folder = benchmark / "bags" / "test"
    if folder.is_dir() and any(folder.iterdir()):
        every = sorted(p for p in folder.iterdir() if p.is_dir())
        bags = every[:sequences]
        print(f"[throughput] test bags from {folder} ({len(bags)} sequences)", flush=True)
        out = [_read_bag(b, frames) for b in bags]
    else:
        from adaptive_perception.scenes.benchmark import PRESETS, sequence_bag

        out, every = [], replace(PRESETS["benchmark"], version=GENERATOR).specs()["test"]
        for spec in every[:sequences]:
            cut = replace(spec, frames=min(frames or spec.frames, spec.frames))  # a sequence's frames, no more
            bag = cache / f"seq{cut.index:03d}-{cut.frames}"
            if not (bag / "ground_truth.json").is_file():
                sequence_bag(cut, bag, f"rendering test sequence {cut.index} (generator {GENERATOR}) -> {bag}")
            out.append(replace(_read_bag(bag, None), whole=cut.frames == spec.frames))
    if not out:
        raise AdaptivePerceptionError(f"{folder} holds no bag folders; put the test split's bags there (`adaptive-"
                                      "perception scenes generate --bags eval` or `--bags all` writes them), or leave it empty to "
                                      "render the frozen test sequences")
    shortest = min(len(s.cdr) for s in out)
    if (sequences or 0) > len(out) or (frames or 0) > shortest:  # said, not silently fewer
        print(f"[throughput] asked for {sequences or 'all'} sequences of {frames or 'all'} frames: the test split has "
              f"{len(out)} sequences of {shortest}-{max(len(s.cdr) for s in out)} frames; all of them are used", flush=True)
    return out, len(out) == len(every) and all(s.whole for s in out)


# ---- the per-frame path -------------------------------------------------------------------------------
@dataclass
class ModeRun:
    mode: str
    weight: float | None = None
    total_ms: list[float] = field(default_factory=list)  # bytes in to every message serialized, the drift update included
    detections_ms: list[float] = field(default_factory=list)  # bytes in to the detections serialized (published first)
    routing_ms: list[float] = field(default_factory=list)  # before the tier starts: features the decision reads + policy
    # image statistics the decision did not read, computed after the tier for the drift monitor (frames it ran on)
    deferred_feature_ms: list[float] = field(default_factory=list)
    session_ms: list[float] = field(default_factory=list)  # onnxruntime session.run of the chosen tier
    tiers: list[int] = field(default_factory=list)
    detections: list[dict] = field(default_factory=list)  # COCO results, image_id = frame index of the run
    monitor: DriftMonitor | None = None  # the node's drift monitor for this mode's stream (None: policy without one)


def make_router(mode: str, policy: Policy | None, weight: float | None) -> Router:
    settings = RouterSettings(cost_weight=-1.0 if weight is None else weight)
    return Router(mode, policy if mode == "learned" else None, settings)


def run_sequence(run: ModeRun, router: Router, detectors: dict[str, DetectorTier], sequence: Sequence,
                 first_image_id: int) -> None:
    """The node's per-frame steps over one sequence, each frame timed from bytes in to serialized messages out."""
    from adaptive_perception_msgs.msg import RoutingDecision
    from rclpy.serialization import serialize_message

    from adaptive_perception.ros.convert import detections_cdr, image_to_rgb, parse_image

    context = RoutingContext()
    for offset, cdr in enumerate(sequence.cdr):
        started = time.perf_counter()
        msg = parse_image(cdr, False)
        rgb = image_to_rgb(msg)
        routed = router.route(rgb, context)
        decision = routed.decision
        detector = detectors[decision.tier_name]
        tensor, box = detector.preprocess(rgb)
        session_start = time.perf_counter()
        raw = detector.infer(tensor)
        session_end = time.perf_counter()
        detections = detector.postprocess(raw, box)
        detections_cdr(detections, msg.sec, msg.nanosec, msg.frame_id)  # the node publishes the detections first
        detected = time.perf_counter()
        header = msg.header
        context = next_context(detections.boxes, detections.scores, decision.tier, rgb.shape[:2])
        drift_state, drift_score = 0, float("nan")
        if run.monitor is not None:  # as the node: image statistics the decision did not read, for the monitor
            run.deferred_feature_ms.append(routed.complete(rgb))
            drift_state, drift_score = run.monitor.observe(routed.features, decision.tier, rgb)
        out = RoutingDecision(header=header, tier=decision.tier, tier_name=decision.tier_name, mode=decision.mode,
                              policy_id=decision.policy_id, drift_state=drift_state, drift_score=drift_score)
        out.probabilities = decision.probabilities.tolist()
        serialize_message(out)
        done = time.perf_counter()
        run.total_ms.append((done - started) * 1e3)
        run.detections_ms.append((detected - started) * 1e3)
        run.routing_ms.append(routed.feature_ms + routed.policy_ms)
        run.session_ms.append((session_end - session_start) * 1e3)
        run.tiers.append(decision.tier)
        for (x0, y0, x1, y1), score, cls in zip(detections.boxes.tolist(), detections.scores.tolist(),
                                                detections.class_ids.tolist()):
            run.detections.append({"image_id": first_image_id + offset, "category_id": int(cls),
                                   "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score)})


# ---- operating points picked on validation ------------------------------------------------------------
def policy_for_costs(policy_path: Path, costs) -> Policy:
    """The policy with its value head's tier costs replaced by `costs` (relative to large): what `train --latency`
    would calibrate against; the tier values (accuracy of the embedded tiers) are the policy's own."""
    policy = Policy(policy_path)
    if policy.value_head is None:
        raise ConfigError(f"policy {policy_path} has no tier_values head; operating points need one")
    policy.value_head = replace(policy.value_head, tier_cost=costs.relative.astype(np.float32))
    return policy


def _sweep(policy: Policy, split, scorer, costs) -> list[dict]:
    from adaptive_perception.training.report import learned_chooser
    from adaptive_perception.training.simulate import rollout

    top = 2 * policy.value_head.cost_weight
    weights = [0.0, *np.geomspace(top / 2 ** 10, top, WEIGHT_STEPS - 1).tolist()]
    rows = []
    for weight in weights:
        trace = rollout(split, costs, learned_chooser(policy, weight), False)
        rows.append({"weight": weight, "map50_95": scorer.score(trace)["map50_95"],
                     "cost_ms": trace.busy_ms / len(split.profile)})
    return rows


def pick_weights(policy: Policy, val, costs, cost_bar: float = 0.40) -> dict:
    """On validation: `accuracy`, the largest weight (cheapest routing) whose mAP50-95 keeps >= 90 % of
    always-large's; `cost_bar`, the smallest weight whose cost is <= `cost_bar` of always-large's (train's rule)."""
    from adaptive_perception.training.evaluate import Scorer
    from adaptive_perception.training.report import _fixed
    from adaptive_perception.training.simulate import rollout

    scorer = Scorer(val)
    large = scorer.score(rollout(val, costs, _fixed(len(TIERS) - 1), False))["map50_95"]
    rows = _sweep(policy, val, scorer, costs)
    keeps = [r for r in rows if r["map50_95"] >= ACCURACY_SHARE * large]
    cheap = [r for r in rows if r["cost_ms"] <= cost_bar * costs.ms[-1]]
    return {"val_large_map50_95": large, "sweep": rows,
            "accuracy": max(keeps, key=lambda r: r["weight"]) if keeps else None,
            "cost_bar": min(cheap, key=lambda r: r["weight"]) if cheap else None}


def project(policy_path: Path, work: Path, real_latency: Path, outside_ms: float) -> dict:
    """Real YOLOv8 n/s/l costs, embedded tiers' accuracy: operating points re-picked on validation, test routed
    per frame by the simulator, plus the measured per-frame work outside inference."""
    from adaptive_perception.training.evaluate import Scorer
    from adaptive_perception.training.labels import Costs
    from adaptive_perception.training.pipeline import Settings, load_split
    from adaptive_perception.training.report import _fixed, learned_chooser
    from adaptive_perception.training.simulate import rollout

    costs = Costs.load(real_latency)
    settings = Settings(work=work)
    val, test = load_split(settings, "val"), load_split(settings, "test")
    policy = policy_for_costs(policy_path, costs)
    picked = pick_weights(policy, val, costs, cost_bar=1 / BARS["projected_speedup"])  # the 3x bar's cost share
    scorer = Scorer(test)
    large_trace = rollout(test, costs, _fixed(len(TIERS) - 1), False)
    large = {"map50_95": scorer.score(large_trace)["map50_95"], "frame_ms": float(costs.ms[-1]) + outside_ms}
    points = {}
    for rule in ("accuracy", "cost_bar"):
        if picked[rule] is None:
            points[rule] = None
            continue
        trace = rollout(test, costs, learned_chooser(policy, picked[rule]["weight"]), False)
        cost = trace.busy_ms / len(test.profile)
        tiers = np.asarray(trace.processed_tiers)
        points[rule] = {"weight": picked[rule]["weight"], "val_map50_95": picked[rule]["map50_95"],
                        "val_inference_ms": picked[rule]["cost_ms"],
                        "map50_95": scorer.score(trace)["map50_95"], "inference_ms": cost,
                        "frame_ms": cost + outside_ms, "mix": {t: float(np.mean(tiers == i)) for i, t in enumerate(TIERS)}}
        points[rule]["map_share_of_large"] = points[rule]["map50_95"] / large["map50_95"]
        points[rule]["speedup"] = large["frame_ms"] / points[rule]["frame_ms"]
    return {"what": "PROJECTION: costs of real YOLOv8 n/s/l graphs (random weights) from the latency file, accuracy "
                    "of the embedded tiers (test profile, simulator, per frame); frame time = mean inference of the "
                    "routed tiers + this run's measured work outside inference",
            "latency_file": str(real_latency), "tiers_ms": dict(zip(TIERS, costs.ms.tolist())),
            "outside_inference_ms": outside_ms, "always_large": large, "points": points,
            "val_large_map50_95": picked["val_large_map50_95"]}


# ---- the run ------------------------------------------------------------------------------------------
def _stats(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"mean_ms": float(a.mean()), "p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "p99_ms": float(np.percentile(a, 99))}


def summarise(run: ModeRun, gt: dict, frames: int) -> dict:
    from adaptive_perception.training.tiers import _coco_eval

    total = np.asarray(run.total_ms)
    outside = total - np.asarray(run.session_ms)
    to_detections = np.asarray(run.detections_ms) - np.asarray(run.session_ms)
    map50_95, map50 = _coco_eval(gt, run.detections, list(range(frames)))
    tiers = np.asarray(run.tiers)
    return {"mode": run.mode, "cost_weight": run.weight, "frames": int(total.size),
            "busy_s": float(total.sum() / 1e3), "fps": float(total.size / (total.sum() / 1e3)),
            "latency": _stats(run.total_ms), "over_frame_budget_share": float(np.mean(total > FRAME_BUDGET_MS)),
            "routing_overhead": _stats(run.routing_ms),
            # the bar: message in to detections out, minus session.run
            "node_overhead": _stats(to_detections.tolist()),
            # every step but session.run, the drift update and the RoutingDecision after the detections included:
            # what the worker spends outside inference per frame (throughput pays it)
            "work_outside_inference": _stats(outside.tolist()),
            "session": _stats(run.session_ms),
            "drift_monitor_frames": run.monitor.frames if run.monitor is not None else 0,  # frames the monitor took
            "mix": {t: float(np.mean(tiers == i)) for i, t in enumerate(TIERS)},
            "map50_95": map50_95, "map50": map50,
            "samples": {"total_ms": [round(v, 4) for v in run.total_ms],
                        "detections_ms": [round(v, 4) for v in run.detections_ms],
                        "session_ms": [round(v, 4) for v in run.session_ms],
                        "routing_ms": [round(v, 4) for v in run.routing_ms],
                        # every routing feature + policy, wherever in the path the features were computed
                        "all_features_ms": [round(a + b, 4) for a, b in zip(run.routing_ms, run.deferred_feature_ms
                                                                             or [0.0] * len(run.routing_ms))]}}


def baseline(modes: dict[str, dict]) -> str:
    """The always-large run every ratio is against: the fastest one of the 32-bit tiers (whatever their thread and
    input settings; an `+int8` run is a mode of its own)."""
    runs = [name for name in modes if INT8 not in name and tier_settings(name)[0] == "fixed:large"]
    return max(runs, key=lambda name: modes[name]["fps"])


def tier_settings(mode: str) -> tuple[str, bool, bool]:
    """(mode without its suffixes, spin_wait, preprocess_in_graph): the node's settings unless a suffix says."""
    config, name = NodeConfig(), mode
    spin, in_graph = config.spin_wait, config.preprocess_in_graph
    while name.endswith((NOSPIN, SPIN, HOSTPRE)):
        if name.endswith(NOSPIN):
            name, spin = name[:-len(NOSPIN)], False
        elif name.endswith(SPIN):
            name, spin = name[:-len(SPIN)], True
        else:
            name, in_graph = name[:-len(HOSTPRE)], False
    return name, spin, in_graph


def int8_tiers(benchmark: Path, cache: Path) -> dict[str, Path]:
    """The embedded tiers in 8 bits, made once per source file (cached under its digest), calibrated as `models
    quantize` does on frames spread over the benchmark's router split (the policy's training frames, not the test
    bags this bench times)."""
    from adaptive_perception.detector import file_digest
    from adaptive_perception.training.quantize import image_folder_frames, quantize_model

    files, frames = {}, None
    for tier in TIERS:
        source = Path(resolve_model(f"embedded:{tier}"))
        files[tier] = Path(cache) / "int8" / f"{tier}-{file_digest(source)}.onnx"
        if not files[tier].is_file():
            images = Path(benchmark) / "images" / "router"
            if not images.is_dir():
                raise ConfigError(f"mode suffix {INT8}: no router split in {benchmark} to calibrate the 8-bit tiers on "
                                  f"({images}); generate the benchmark or drop the {INT8} modes")
            frames = frames or image_folder_frames(
                images, INT8_CALIBRATION_FRAMES, f"mode suffix {INT8}: the router split",
                f"generate the benchmark again or drop the {INT8} modes")
            print(f"[throughput] {tier} in 8 bits -> {files[tier]}", flush=True)
            quantize_model(source, files[tier], frames)
    return files


def comparisons(modes: dict[str, dict]) -> dict:
    """Every ratio of the report, from the per-frame samples recorded in it (this run's and nothing else)."""
    def fps(row):
        return len(row["samples"]["total_ms"]) / (sum(row["samples"]["total_ms"]) / 1e3)

    large = modes[baseline(modes)]
    large_mean = float(np.mean(large["samples"]["total_ms"]))
    large_p95 = float(np.percentile(large["samples"]["total_ms"], 95))
    out = {}
    for name, row in modes.items():
        total = row["samples"]["total_ms"]
        out[name] = {"speedup_vs_large": fps(row) / fps(large),
                     "latency_reduction_mean": 1 - float(np.mean(total)) / large_mean,
                     "latency_reduction_p95": 1 - float(np.percentile(total, 95)) / large_p95,
                     "map_share_of_large": row["map50_95"] / large["map50_95"] if large["map50_95"] else float("nan")}
    if "fixed:nano" in modes:
        nano_p50 = float(np.percentile(modes["fixed:nano"]["samples"]["session_ms"], 50))
        for name, row in modes.items():
            if name.startswith("learned"):
                samples = row["samples"]
                out[name]["router_p95_share_of_nano_p50"] = float(np.percentile(samples["routing_ms"], 95)) / nano_p50
                out[name]["all_features_p95_share_of_nano_p50"] = \
                    float(np.percentile(samples["all_features_ms"], 95)) / nano_p50
    return out


def check_ratios(report: dict) -> None:
    """Fail unless every ratio in the report equals the one its recorded per-frame samples give (CI's check that
    the run's ratios come from numbers measured in the run)."""
    again = comparisons(report["modes"])
    for name, row in report["comparisons"].items():
        for key, value in row.items():
            if not np.isclose(value, again[name][key], rtol=1e-9, equal_nan=True):
                raise AdaptivePerceptionError(f"ratio {name}.{key} = {value} but this run's samples give "
                                              f"{again[name][key]}")
    for name, row in report["modes"].items():
        samples = row["samples"]["total_ms"]
        if not np.isclose(row["fps"], len(samples) / (sum(samples) / 1e3), rtol=1e-4):
            raise AdaptivePerceptionError(f"{name}: fps {row['fps']} is not frames / summed frame times of this run")
        if row["frames"] != len(samples) or not np.isclose(row["busy_s"], sum(samples) / 1e3, rtol=1e-4):
            raise AdaptivePerceptionError(f"{name}: frames {row['frames']} / busy_s {row['busy_s']} are not the count "
                                          "and the sum of this run's frame times")
    if report.get("projection"):
        _check_projection(report["projection"], report["modes"])


def projection_mode(names: list[str]) -> str:
    """The mode whose work outside inference the projection adds to the real graphs' costs."""
    return "learned@90" if "learned@90" in names else names[0]


def _check_projection(projection: dict, modes: dict) -> None:
    """Fail unless the projection's frame times, speed-ups and shares follow from its tier costs, its routing mixes
    and the work outside inference measured in this run (its accuracy comes from the simulator, not from samples)."""
    point = modes[projection_mode(list(modes))]
    outside = float(np.mean(np.subtract(point["samples"]["total_ms"], point["samples"]["session_ms"])))
    large = projection["always_large"]
    checks = [("outside_inference_ms", projection["outside_inference_ms"], outside),
              ("always_large.frame_ms", large["frame_ms"], projection["tiers_ms"]["large"] + outside)]
    for rule, row in projection["points"].items():
        if row is None:
            continue
        inference = sum(share * projection["tiers_ms"][tier] for tier, share in row["mix"].items())
        checks += [(f"points.{rule}.inference_ms", row["inference_ms"], inference),
                   (f"points.{rule}.frame_ms", row["frame_ms"], inference + outside),
                   (f"points.{rule}.speedup", row["speedup"], large["frame_ms"] / row["frame_ms"]),
                   (f"points.{rule}.map_share_of_large", row["map_share_of_large"], row["map50_95"] / large["map50_95"])]
    for key, value, expected in checks:
        if not np.isclose(value, expected, rtol=1e-4):
            raise AdaptivePerceptionError(f"projection.{key} = {value} but its own costs, mix and this run's samples "
                                          f"give {expected}")


def operating_point(modes) -> str | None:
    """The mode the bars are read at: learned@90, else learned, else the first other learned mode; None without."""
    for name in ("learned@90", "learned"):
        if name in modes:
            return name
    return next((name for name in modes if name.startswith("learned")), None)


def bars(report: dict) -> dict:
    comp, modes = report["comparisons"], report["modes"]
    point = operating_point(modes)
    if point is None:
        return {"operating_point": None}
    share = comp[point]["map_share_of_large"]
    speed = comp[point]["speedup_vs_large"]
    out = {"operating_point": point,
           "speedup": {"need": f">= {BARS['speedup']}x always-large at >= {ACCURACY_SHARE:.0%} of its mAP50-95",
                       "measured": speed, "map_share_of_large": share,
                       "met": bool(speed >= BARS["speedup"] and share >= ACCURACY_SHARE)}}
    if "router_p95_share_of_nano_p50" in comp[point]:
        value = comp[point]["router_p95_share_of_nano_p50"]
        out["router_overhead"] = {"need": f"routing before the tier starts (the features the decision reads + policy) "
                                          f"p95 <= {BARS['router_share_of_nano_p50']:.0%} of nano's session p50",
                                  "measured": value, "met": bool(value <= BARS["router_share_of_nano_p50"]),
                                  # every feature + policy, the image statistics included wherever they ran
                                  "all_features": comp[point]["all_features_p95_share_of_nano_p50"]}
    value = modes[point]["node_overhead"]["p95_ms"]
    out["node_overhead"] = {"need": f"p95 <= {BARS['node_overhead_p95_ms']} ms (message in to detections out, minus "
                                    "session.run), 640x480", "measured": value,
                            "met": bool(value <= BARS["node_overhead_p95_ms"])}
    projection = report.get("projection")
    if projection and projection["points"]["accuracy"]:
        p = projection["points"]["accuracy"]
        out["projected_speedup"] = {"need": f">= {BARS['projected_speedup']}x in the real-graph projection at >= "
                                            f"{ACCURACY_SHARE:.0%} of always-large's mAP50-95",
                                    "measured": p["speedup"], "map_share_of_large": p["map_share_of_large"],
                                    "met": bool(p["speedup"] >= BARS["projected_speedup"]
                                                and p["map_share_of_large"] >= ACCURACY_SHARE)}
    return out


def measure(policy_path: str, benchmark: Path, work: Path | None, real_latency: Path | None, modes: list[str],
            sequences: int | None, frames: int | None, cache: Path) -> dict:
    from adaptive_perception.scenes.benchmark import coco_ground_truth

    path = resolve_model(policy_path)
    policy = Policy(path)
    # name -> (router mode, cost weight, the tiers' (spin_wait, preprocess_in_graph, 8-bit))
    plans: dict[str, tuple[str, float | None, tuple[bool, bool, bool]]] = {}
    for mode in modes:
        name, spin, in_graph = tier_settings(mode.replace(INT8, ""))
        try:
            base, weight = weighted_mode(name)
        except ConfigError as exc:
            raise ConfigError(f"--modes: {exc} (learned:<weight> sets a cost weight; suffixes {NOSPIN}, {SPIN}, {HOSTPRE}, {INT8}; "
                              "learned@90 is the row the run adds itself when --work has a validation profile)") from None
        plans[mode] = (base, weight, (spin, in_graph, INT8 in mode))
    if not any(mode == "fixed:large" and not tiers[2] for mode, _, tiers in plans.values()):
        raise ConfigError("--modes must include fixed:large (its 32-bit tiers): every ratio is against it")
    picked = None
    if work is not None:
        from adaptive_perception.training.labels import Costs
        from adaptive_perception.training.pipeline import Settings, load_split

        picked = pick_weights(policy, load_split(Settings(work=work), "val"), Costs.load(EMBEDDED_COSTS))
        if picked["accuracy"] is not None:
            plans["learned@90"] = ("learned", picked["accuracy"]["weight"], (*tier_settings("learned")[1:], False))
            print(f"[throughput] learned@90: weight {picked['accuracy']['weight']:.4f} keeps "
                  f"{picked['accuracy']['map50_95']:.1f} of always-large's {picked['val_large_map50_95']:.1f} "
                  "mAP50-95 on validation", flush=True)
    # before the bags: a missing calibration split is refused before anything is rendered or timed
    eight_bit = int8_tiers(benchmark, cache) if any(tiers[2] for _, _, tiers in plans.values()) else {}
    data, whole_split = split_bags(benchmark, sequences, frames, cache)
    config = NodeConfig()  # the node's thresholds; tier settings per mode (the node's defaults unless a suffix says)
    detectors = {}
    for spin, in_graph, int8 in sorted({settings for _, _, settings in plans.values()}):
        files = eight_bit if int8 else {t: resolve_model(f"embedded:{t}") for t in TIERS}
        detectors[spin, in_graph, int8] = {
            t: DetectorTier(files[t], ("CPUExecutionProvider",), config.conf_threshold,
                            config.iou_threshold, config.max_detections, name=t, spin_wait=spin,
                            preprocess_in_graph=in_graph, graph_cache_dir=config.graph_cache_dir) for t in TIERS}
        for detector in detectors[spin, in_graph, int8].values():
            detector.warmup(2)
    reference = policy.drift_reference
    runs = {name: ModeRun(name, weight, monitor=DriftMonitor(reference, config.drift_confirm)
                          if reference is not None and reference.thresholds else None)
            for name, (_, weight, _) in plans.items()}
    routers = {name: make_router(mode, policy, weight) for name, (mode, weight, _) in plans.items()}
    names = list(plans)
    # every mode's whole path once before timing (the first message serialised, the policy's first run, the
    # drift monitor's first window): otherwise the mode that runs first pays the process's cold start
    warm = Sequence(data[0].name, data[0].cdr[:WARMUP_FRAMES], data[0].records[:WARMUP_FRAMES])
    for name in names:
        spare = ModeRun(name, monitor=DriftMonitor(reference, config.drift_confirm) if runs[name].monitor else None)
        run_sequence(spare, make_router(plans[name][0], policy, plans[name][1]), detectors[plans[name][2]], warm, 0)
    first = 0
    for index, sequence in enumerate(progress(data, desc="throughput: sequences x modes", unit="sequence")):
        for name in names[index % len(names):] + names[:index % len(names)]:
            run_sequence(runs[name], routers[name], detectors[plans[name][2]], sequence, first)
        first += len(sequence.cdr)
    records = [r for s in data for r in s.records]
    gt = coco_ground_truth(records)
    report = {
        "what": "in-process per-frame path (read the serialized frame, decode, features, policy, chosen tier, post-processing, "
                "the drift monitor's update (not the audits), messages serialized), one worker, frames back to back; accuracy of the published detections "
                "(node thresholds) against the bags' ground truth",
        "run_id": uuid.uuid4().hex, "policy_id": policy.policy_id, "frames": first,
        "sequences": [s.name for s in data], "frame_size": [640, 480],
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version()},
        "modes": {name: summarise(runs[name], gt, first) for name in names},
    }
    if picked is not None:
        report["validation_pick"] = picked
    report["comparisons"] = comparisons(report["modes"])
    if work is not None and real_latency is not None:
        outside = report["modes"][projection_mode(names)]["work_outside_inference"]["mean_ms"]
        report["projection"] = project(path, work, real_latency, outside)
    report["limited"] = not whole_split  # --sequences / --frames (--quick among them) left part of the split out
    report["bars"] = bars(report)
    return report


def _pct(value: float) -> str:
    return f"{value:.0%}"


def table(report: dict) -> str:
    lines = [f"{report['frames']} frames ({len(report['sequences'])} test sequences), policy {report['policy_id']}", "",
             "| mode | FPS | speed-up vs large | latency mean / p95 (ms) | reduction mean / p95 | > 33.3 ms | "
             "node overhead p95 (ms): to detections / all work | mix n/s/l | mAP50-95 (share of large) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, row in report["modes"].items():
        c = report["comparisons"][name]
        mix = "/".join(_pct(row["mix"][t]) for t in TIERS)
        label = name if row["cost_weight"] is None else f"{name} (w {row['cost_weight']:.3f})"
        lines.append(f"| {label} | {row['fps']:.1f} | {c['speedup_vs_large']:.2f}x | {row['latency']['mean_ms']:.1f} / "
                     f"{row['latency']['p95_ms']:.1f} | {_pct(c['latency_reduction_mean'])} / "
                     f"{_pct(c['latency_reduction_p95'])} | {_pct(row['over_frame_budget_share'])} | "
                     f"{row['node_overhead']['p95_ms']:.2f} / {row['work_outside_inference']['p95_ms']:.2f} | {mix} | {row['map50_95']:.1f} "
                     f"({_pct(c['map_share_of_large'])}) |")
    projection = report.get("projection")
    if projection:
        lines += ["", "PROJECTION, real YOLOv8 n/s/l costs (" + ", ".join(
            f"{t} {v:.1f} ms" for t, v in projection["tiers_ms"].items()) + f") + {projection['outside_inference_ms']:.1f} "
            "ms measured outside inference, embedded tiers' accuracy (test profile):"]
        lines.append(f"- always-large: {projection['always_large']['frame_ms']:.1f} ms/frame, mAP50-95 "
                     f"{projection['always_large']['map50_95']:.1f}")
        for rule, point in projection["points"].items():
            if point is None:
                lines.append(f"- {rule}: no weight on the grid meets the rule on validation")
                continue
            lines.append(f"- {rule} (w {point['weight']:.4f}): {point['frame_ms']:.1f} ms/frame, speed-up "
                         f"{point['speedup']:.2f}x, mAP50-95 {point['map50_95']:.1f} ({_pct(point['map_share_of_large'])} "
                         "of large), mix " + "/".join(_pct(point["mix"][t]) for t in TIERS))
    lines.append("")
    for name, bar in report["bars"].items():
        if name == "operating_point":
            lines.append((f"Bars at the operating point '{bar}'" + (
                f" (a run limited by --sequences / --frames, {report['frames']} frames a mode: indicative only; the "
                "bars are judged on the whole test split)" if report.get("limited") else "") + ":") if bar else
                         "No bars: they are about the learned router, and --modes holds no learned mode.")
            continue
        value = bar["measured"]
        shown = f"{value:.2%}" if name == "router_overhead" else f"{value:.2f}"
        share = bar.get("map_share_of_large")
        extra = ("" if share is None else f" at {_pct(share)} of large's mAP50-95" if np.isfinite(share) else
                 " (its share of large's mAP50-95 cannot be scored on these frames: too few, or no objects)")
        if "all_features" in bar:
            extra = f" (every feature + policy, the image statistics after the tier included: {bar['all_features']:.2%})"
        lines.append(f"- {name}: {bar['need']}: measured {shown}{extra}: " + ("met" if bar["met"] else "NOT met"))
    return "\n".join(lines)


def run(policy_path: str, benchmark: Path, work: Path | None, real_latency: Path | None, modes: list[str],
        sequences: int | None, frames: int | None, cache: Path, report_path: Path) -> dict:
    if work is not None and not (work / "profile_val.npz").is_file():
        print(f"[throughput] {work}/profile_val.npz is missing: no learned@90 operating point and no projection "
              "(make them with `adaptive-perception train profile` and `train labels`; see training/README.md)",
              flush=True)
        work = None
    if work is not None:
        from adaptive_perception.policy import Policy
        from adaptive_perception.training.pipeline import profiled_with, work_mismatches

        recorded = profiled_with(work).get("benchmark")
        if recorded is not None and recorded != str(Path(benchmark).resolve()):
            mismatch = f"--work {work} was profiled from '{recorded}'"
            if Path(recorded).exists():  # another scene set's splits
                raise AdaptivePerceptionError(f"{mismatch}, not from --benchmark {benchmark}: its validation pick and "
                                              "projection would describe another scene set; pass the work folder "
                                              "profiled from this benchmark")
            print(f"[throughput] warning: {mismatch} (that folder is gone: moved?), not from --benchmark {benchmark}",
                  flush=True)
        for problem in work_mismatches(work, Policy(resolve_model(policy_path))):
            print(f"[throughput] warning: {problem}", flush=True)
    if real_latency is not None and not real_latency.is_file():
        print(f"[throughput] {real_latency} is missing: no real-graph projection (make it with "
              "`adaptive-perception bench latency`)", flush=True)
        real_latency = None
    report = measure(policy_path, benchmark, work, real_latency, modes, sequences, frames, cache)
    check_ratios(report)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=1) + "\n")
    print(table(report))
    print(f"wrote {report_path}")
    return report
