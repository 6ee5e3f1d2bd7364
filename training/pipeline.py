"""`adaptive-perception train profile|labels|bc|ppo|export|evaluate|all`: from recordings to a policy and its report.

Every stage writes its output under the work folder, skips itself when that output exists for the same
settings (`--force` reruns it), shows progress and logs to MLflow (parameters, metrics, artifacts).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from adaptive_perception.bag import expand_bags, recordings_in
from adaptive_perception.config import tier_models
from adaptive_perception.detector import TIERS, other_files
from adaptive_perception.errors import AdaptivePerceptionError

# the router trains on the benchmark's router split: sequences the detector tiers never saw (their own training
# frames would teach it how good the tiers are on memorised images)
TRAIN_SPLIT = "router"
SPLITS = (TRAIN_SPLIT, "val", "test")
STAGES = ("profile", "labels", "bc", "ppo", "export", "evaluate")
EXPERIMENT = "adaptive_perception.routing"


@dataclass(frozen=True)
class Settings:
    benchmark: Path = Path("build/benchmark-v2")  # generator 2.0.0: the embedded tiers' world
    source: str = "dataset"  # dataset (the benchmark's images) | bags (benchmark/bags/<split>/*)
    truth: str = "sidecar"  # sidecar | reference | topic
    teacher: str | None = None
    models: dict = field(default_factory=lambda: {t: f"embedded:{t}" for t in TIERS})
    latency: Path | None = None  # device latency JSON; default: this machine's profile measurements
    work: Path = Path("build/train")
    reports: Path = Path("training/reports")
    policy_out: Path | None = None  # where the chosen BC + PPO policy (seed 0) is copied
    tracking_uri: str = ""  # default sqlite:///<work>/mlflow.db
    seeds: int = 3
    lambdas: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5, 0.8)
    lam: float | None = None  # fixed operating point; default: chosen on validation
    cost_bar: float = 0.4  # the operating point's cost target, fraction of always-large (chosen on validation)
    bc_loss: str = "values"  # values: regress each tier's gain, cost weight calibrated on validation | balanced | regret
    policy_inputs: str = "context"  # context: the 4 context features (image features weighted 0) | all: 1028
    ppo_steps: int = 30000
    critic_warmup: int = 4096  # PPO steps that train the critic alone before the actor moves
    switch_penalty: float = 0.0
    resamples: int = 200
    force: bool = False
    data: str = ""  # what the policy file's description says it was trained on (default: benchmark, source, truth)

    def uri(self) -> str:
        return self.tracking_uri or f"sqlite:///{(self.work / 'mlflow.db').resolve()}"


PRESETS = {
    "full": Settings(),
    "small": Settings(seeds=3, lambdas=(0.0, 0.3), ppo_steps=2048, critic_warmup=1024, resamples=20),
}


# ---- MLflow and caching ---------------------------------------------------------------------------------
@contextlib.contextmanager
def tracked(settings: Settings, stage: str, params: dict):
    """An MLflow run for one stage (nested under an open parent run), yielding a logger."""
    import mlflow

    mlflow.set_tracking_uri(settings.uri())
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        artifacts = (settings.work / "mlartifacts").resolve()
        mlflow.create_experiment(EXPERIMENT, artifact_location=artifacts.as_uri())
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run(run_name=stage, nested=mlflow.active_run() is not None) as run:
        # MLflow keeps 500 characters of a parameter: a long one (many evidence bags) is cut there and whole in
        # the run's params.json
        mlflow.log_params({k: str(v) if len(str(v)) <= 500 else str(v)[:480] + " ... (params.json)"
                           for k, v in params.items()})
        if any(len(str(v)) > 500 for v in params.values()):
            mlflow.log_dict({k: v if isinstance(v, (int, float, bool, type(None))) else str(v) for k, v in params.items()},
                            "params.json")
        yield mlflow
        print(f"[{stage}] logged to MLflow run {run.info.run_id} ({settings.uri()})")


def log_bags_read(mlflow, read: list[dict], name: str) -> None:
    """Name in the run the recordings a profile read (`profile.bag_frames`' entries: per bag and camera, the frames
    used and those left out as undecodable): artifact bags_<name>.json, metric <name>_undecodable_frames."""
    mlflow.log_dict(read, f"bags_{name}.json")
    mlflow.log_metric(f"{name}_undecodable_frames", sum(entry["undecodable"] for entry in read))


def _fingerprint(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _mtimes(paths: list[Path]) -> str:
    return _fingerprint({str(p): p.stat().st_mtime_ns if p.exists() else None for p in paths})


def _cached(settings: Settings, stage: str, params: dict, outputs: list[Path]) -> bool:
    """The stage ran with these parameters and its outputs are there, and (where `_done` recorded them: files
    outside the work folder, which another run or a checkout can replace) still the files it wrote."""
    stamp = settings.work / f"{stage}.done.json"
    if settings.force or not stamp.is_file() or not all(p.exists() for p in outputs):
        return False
    record, written = json.loads(stamp.read_text()), _mtimes(outputs)
    return record.get("fingerprint") == _fingerprint(params) and record.get("outputs", written) == written


def _done(settings: Settings, stage: str, params: dict, outputs: list[Path] | None = None) -> None:
    record = {"fingerprint": _fingerprint(params), "params": params}
    if outputs is not None:
        record["outputs"] = _mtimes(outputs)
    (settings.work / f"{stage}.done.json").write_text(json.dumps(record, default=str, indent=2))


# ---- stages ---------------------------------------------------------------------------------------------
def _profile_path(settings: Settings, split: str) -> Path:
    return settings.work / f"profile_{split}.npz"


def _tier_digests(models: dict) -> dict:
    """{tier: `detector.file_digest` of its file}: what the tiers are, whatever path they were given at."""
    from adaptive_perception.config import resolve_model
    from adaptive_perception.detector import file_digest

    return {tier: file_digest(resolve_model(spec)) for tier, spec in models.items()}


def _profile_params(settings: Settings) -> dict:
    # the tiers' (and the teacher's) content, not only their paths: a tier file replaced at the same path reused the
    # old profile, and the policy trained on it was stamped with the new file's digest
    teacher = _tier_digests({"teacher": settings.teacher})["teacher"] if settings.teacher else None
    return {"benchmark": str(settings.benchmark.resolve()), "source": settings.source, "truth": settings.truth,
            "teacher": settings.teacher, "models": settings.models, "digests": _tier_digests(settings.models),
            "teacher_digest": teacher, "format": 2}  # 2: with each frame's veil


def _profile_cached(settings: Settings) -> bool:
    return _cached(settings, "profile", _profile_params(settings), [_profile_path(settings, s) for s in SPLITS])


def profiled_with(work: Path) -> dict:
    """The parameters the work folder's profile stage recorded (benchmark, models, ...); {} when it recorded none."""
    stamp = Path(work) / "profile.done.json"
    return json.loads(stamp.read_text()).get("params", {}) if stamp.is_file() else {}


def work_mismatches(work: Path, policy) -> list[str]:
    """One line per tier the profiles in `work` ran that is not the file `policy` was trained with (by the digests
    the policy file records); [] when they match, or when the work folder does not record its tiers. The digests
    the profile stage recorded when it ran, or for a work folder profiled before it recorded them, its files' now."""
    from adaptive_perception.config import resolve_model
    from adaptive_perception.detector import file_digest

    params, loaded = profiled_with(work), {}
    for tier, spec in (params.get("models") or {}).items():
        recorded = (params.get("digests") or {}).get(tier)
        try:
            loaded[tier] = (recorded, spec) if recorded else (file_digest(resolve_model(spec)), resolve_model(spec))
        except (AdaptivePerceptionError, OSError):
            continue  # a file no longer there: nothing to compare
    return [f"--work {work}: {line}" for line in policy.tier_mismatches(loaded)]


def _check_profile_inputs(settings: Settings) -> None:
    """Refuse a benchmark the profile stage cannot read, before anything (an MLflow store included) is written."""
    for split in SPLITS:
        if settings.source == "dataset" and not (settings.benchmark / "frames.json").is_file():
            raise AdaptivePerceptionError(f"'{settings.benchmark}' holds no generated benchmark (frames.json missing); "
                                          f"run `adaptive-perception scenes generate --out {settings.benchmark}`, or "
                                          "use --source bags for recordings")
        if settings.source == "bags" and not recordings_in(settings.benchmark / "bags" / split):
            raise AdaptivePerceptionError(f"no bags under {settings.benchmark / 'bags' / split}; put each split's "
                                          "recordings in <benchmark>/bags/{router,val,test}/ (scenes generate --bags all "
                                          "writes them)")
    if settings.source == "bags":  # every split's recordings, before the first is profiled (minutes each)
        from adaptive_perception.training.profile import frame_sizes

        sizes = []
        for split in SPLITS:
            bags = expand_bags(recordings_in(settings.benchmark / "bags" / split))
            found = frame_sizes(bags)  # a bag without camera topics is refused here, by name
            if not found:
                raise AdaptivePerceptionError(f"the {split} split's recordings {[str(b) for b in bags]} hold no frame "
                                              "the node's decoder takes (the README's \"Topics and services\" lists "
                                              "the encodings it reads)")
            sizes += found
        if len({size for *_, size in sizes}) > 1:
            raise AdaptivePerceptionError(
                "one router is trained at one camera resolution (its context measures box sizes against the frame), "
                "and these recordings hold several: " + "; ".join(f"bag '{b}' {c}: {w}x{h}" for b, c, (h, w) in sizes)
                + ": profile each resolution from a benchmark folder of its own")


def stage_profile(settings: Settings) -> None:
    from adaptive_perception.training.profile import bag_frames, benchmark_frames, dataset_records, profile

    params, outputs = _profile_params(settings), [_profile_path(settings, s) for s in SPLITS]
    if _cached(settings, "profile", params, outputs):
        print("[profile] cached: " + ", ".join(map(str, outputs)))
        return
    before = {} if settings.force else profiled_with(settings.work)
    if before.get("benchmark", params["benchmark"]) != params["benchmark"]:
        raise AdaptivePerceptionError(
            f"--work {settings.work} holds the profile of '{before['benchmark']}' (profile.done.json); profiling "
            f"'{params['benchmark']}' there would replace it and what was trained on it: pass another --work, or "
            "--force to replace it")
    _check_profile_inputs(settings)
    settings.work.mkdir(parents=True, exist_ok=True)
    with tracked(settings, "profile", params) as mlflow:
        for split in SPLITS:
            if settings.source == "dataset":
                records = dataset_records(settings.benchmark, split)
                total, frames = len(records), benchmark_frames(settings.benchmark, split, records)
            elif settings.source == "bags":
                bags = expand_bags(recordings_in(settings.benchmark / "bags" / split))
                read = []
                total, frames = None, bag_frames(bags, None, settings.truth == "sidecar", read)
            else:
                raise AdaptivePerceptionError(f"--source {settings.source}: use dataset or bags")
            result = profile(frames, total, settings.truth, settings.models, settings.teacher, desc=f"profile {split}")
            if settings.source == "bags":  # the run names the recordings it read, and what it left out of them
                log_bags_read(mlflow, read, split)
            result.save(_profile_path(settings, split))
            result.check_truth(f"split '{split}' ({_profile_path(settings, split)})")  # saved: the frames are kept
            mlflow.log_metrics({f"{split}_frames": len(result),
                                **{f"{split}_{t}_latency_ms": float(result.latency_ms[:, i].mean())
                                   for i, t in enumerate(TIERS)}})
            print(f"[profile] {split}: {len(result)} frames, truth {result.meta['truth']}, mean latency "
                  + ", ".join(f"{t} {result.latency_ms[:, i].mean():.1f} ms" for i, t in enumerate(TIERS)))
    _done(settings, "profile", params)


def _costs(settings: Settings):
    from adaptive_perception.training.labels import Costs
    from adaptive_perception.training.profile import Profile

    if settings.latency is not None:
        costs = Costs.load(settings.latency)
        profiled = profiled_with(settings.work).get("digests") or {}
        other = other_files(profiled, costs.digests or {})
        if other:  # the labels would price these tiers at another file's latency
            print(f"warning: --latency {settings.latency} timed other {', '.join(other)} tier files than the profiles "
                  "ran; time these tiers (`bench latency --model ...`)", file=sys.stderr, flush=True)
        return costs
    return Costs.measured([Profile.load(_profile_path(settings, s)) for s in SPLITS])


def stage_labels(settings: Settings) -> None:
    from adaptive_perception.training.labels import optimal_tiers
    from adaptive_perception.training.profile import Profile
    from adaptive_perception.training.simulate import Split

    missing = [_profile_path(settings, s).name for s in SPLITS if not _profile_path(settings, s).is_file()]
    if missing:  # before the MLflow store and a failed run are written
        default = Settings()
        options = [f"--benchmark {settings.benchmark}", f"--work {settings.work}"]
        options += [f"--source {settings.source}"] if settings.source != default.source else []
        options += [f"--truth {settings.truth}"] if settings.truth != default.truth else []
        options += [f"--teacher {settings.teacher}"] if settings.teacher else []
        options += [f"--model {t}={m}" for t, m in settings.models.items() if m != default.models[t]]
        raise AdaptivePerceptionError(
            f"--work {settings.work} lacks the profile ({', '.join(missing)} missing): run `adaptive-perception train "
            f"profile {' '.join(options)}` first, or `train all`")
    params = {"profiles": _mtimes([_profile_path(settings, s) for s in SPLITS]), "latency": str(settings.latency)}
    outputs = [settings.work / f"quality_{s}.npy" for s in SPLITS] + [settings.work / "costs.json"]
    if _cached(settings, "labels", params, outputs):
        print("[labels] cached")
        return
    costs = _costs(settings)  # a bad --latency file fails here, before anything is written
    with tracked(settings, "labels", params) as mlflow:
        costs.save(settings.work / "costs.json")
        for split in SPLITS:
            loaded = Profile.load(_profile_path(settings, split))
            loaded.check_truth(f"split '{split}' ({_profile_path(settings, split)})")
            table = Split.build(loaded)
            np.save(settings.work / f"quality_{split}.npy", table.quality)
            for lam in settings.lambdas:
                mix = np.bincount(optimal_tiers(table.quality[:, :, 0], costs, lam), minlength=3) / len(table.profile)
                mlflow.log_metrics({f"{split}_label_mix_{t}_lambda{lam}": float(m) for t, m in zip(TIERS, mix)})
            mlflow.log_metrics({f"{split}_quality_{t}": float(table.quality[:, i, 0].mean()) for i, t in enumerate(TIERS)})
        mlflow.log_artifact(str(settings.work / "costs.json"))
        print(f"[labels] costs on {costs.device}: " + ", ".join(f"{t} {m:.1f} ms" for t, m in zip(TIERS, costs.ms)))
    _done(settings, "labels", params)


def load_split(settings: Settings, split: str):
    from adaptive_perception.training.labels import empty_quality
    from adaptive_perception.training.profile import Profile
    from adaptive_perception.training.simulate import Split

    path = settings.work / f"quality_{split}.npy"
    if not path.is_file():
        raise AdaptivePerceptionError(f"{path} is missing; run `adaptive-perception train labels --work {settings.work}` "
                                      "first (or `train all`)")
    profile = Profile.load(_profile_path(settings, split))
    return Split(profile, np.load(path), empty_quality(profile))


def _load_costs(settings: Settings):
    from adaptive_perception.training.labels import Costs

    path = settings.work / "costs.json"
    if not path.is_file():
        raise AdaptivePerceptionError(f"{path} is missing; run `adaptive-perception train labels --work {settings.work}` "
                                      "first (or `train all`)")
    return Costs.load(path)


def stage_bc(settings: Settings) -> None:
    from adaptive_perception.training.evaluate import Scorer
    from adaptive_perception.training.learn import expert_dataset, train_bc
    from adaptive_perception.training.simulate import rollout

    params = {"lambdas": settings.lambdas, "lam": settings.lam, "seeds": settings.seeds, "loss": settings.bc_loss,
              "cost_bar": settings.cost_bar, "inputs": settings.policy_inputs, "labels": _mtimes([settings.work / f"quality_{s}.npy" for s in SPLITS])}
    outputs = [settings.work / "bc" / f"seed{s}.npz" for s in range(settings.seeds)] + [settings.work / "bc" / "lambda.json"]
    if _cached(settings, "bc", params, outputs):
        print("[bc] cached")
        return
    costs = _load_costs(settings)
    train, val = load_split(settings, TRAIN_SPLIT), load_split(settings, "val")
    if settings.bc_loss == "values":
        return _bc_values(settings, params, costs, train, val)
    with tracked(settings, "bc", params) as mlflow:
        sweep, datasets, val_scorer = [], {}, Scorer(val)
        (settings.work / "bc").mkdir(parents=True, exist_ok=True)
        candidates = [settings.lam] if settings.lam is not None else list(settings.lambdas)
        large_cost = float(costs.ms[-1])
        for lam in candidates:
            datasets[lam] = expert_dataset(train, costs, lam), expert_dataset(val, costs, lam)
            network, info = train_bc(*datasets[lam], seed=0, loss=settings.bc_loss, inputs=settings.policy_inputs)
            network.save(settings.work / "bc" / f"sweep_lambda{lam:g}.npz")
            trace = rollout(val, costs, network.choose, streaming=False)
            cost = float(costs.ms[np.asarray(trace.processed_tiers)].sum() / len(val.profile))
            sweep.append({"lambda": lam, "val_map50_95": val_scorer.score(trace)["map50_95"], "val_cost_ms": cost,
                          "val_cost_share": cost / large_cost, "epochs": info["epochs"]})
            mlflow.log_metrics({"val_map50_95": sweep[-1]["val_map50_95"], "val_cost_share": cost / large_cost},
                               step=int(lam * 1000))
        feasible = [s for s in sweep if s["val_cost_share"] <= settings.cost_bar]
        chosen = max(feasible, key=lambda s: s["val_map50_95"]) if feasible else min(sweep, key=lambda s: s["val_cost_ms"])
        lam = chosen["lambda"]
        print(f"[bc] operating point lambda = {lam} (validation: mAP50-95 {chosen['val_map50_95']:.1f}, cost "
              f"{chosen['val_cost_share']:.0%} of always-large; rule: best validation mAP50-95 at <= "
              f"{settings.cost_bar:.0%} of large's cost{'' if feasible else ', none met it: the cheapest'})")
        (settings.work / "bc" / "lambda.json").write_text(json.dumps({"lambda": lam, "sweep": sweep,
                                                                       "cost_bar": settings.cost_bar}, indent=2))
        for seed in range(settings.seeds):
            network, info = train_bc(*datasets[lam], seed=seed, loss=settings.bc_loss, inputs=settings.policy_inputs)
            network.save(settings.work / "bc" / f"seed{seed}.npz")
            mlflow.log_metrics({f"seed{seed}_best_val_loss": info["best_val_loss"], f"seed{seed}_epochs": info["epochs"]})
        mlflow.log_param("chosen_lambda", lam)
        mlflow.log_artifact(str(settings.work / "bc" / "lambda.json"))
    _done(settings, "bc", params)


def _bc_values(settings: Settings, params: dict, costs, train, val) -> None:
    """BC as regression of each tier's value gain over nano, on every frame under each tier's previous output
    (`context_dataset`); every seed's cost weight is calibrated on validation to the cost bar (its operating
    point), so no lambda sweep is needed: the weight is the operating point, in the labels' lambda units."""
    from adaptive_perception.training.evaluate import Scorer
    from adaptive_perception.training.learn import calibrate_cost_weight, context_dataset, train_bc
    from adaptive_perception.training.simulate import rollout

    budget = settings.cost_bar * float(costs.ms[-1])
    data = context_dataset(train), context_dataset(val)
    (settings.work / "bc").mkdir(parents=True, exist_ok=True)
    seeds, val_scorer = [], Scorer(val)
    with tracked(settings, "bc", params) as mlflow:
        for seed in range(settings.seeds):
            network, info = train_bc(*data, seed=seed, loss="values", inputs=settings.policy_inputs)
            network = calibrate_cost_weight(network, val, costs, budget)
            network.save(settings.work / "bc" / f"seed{seed}.npz")
            trace = rollout(val, costs, network.choose, streaming=False)
            seeds.append({"seed": seed, "cost_weight": network.head.cost_weight, "epochs": info["epochs"],
                          "val_map50_95": val_scorer.score(trace)["map50_95"],
                          "val_cost_share": trace.busy_ms / len(val.profile) / float(costs.ms[-1])})
            mlflow.log_metrics({f"seed{seed}_best_val_loss": info["best_val_loss"], f"seed{seed}_epochs": info["epochs"],
                                f"seed{seed}_cost_weight": network.head.cost_weight})
        print("[bc] tier values; cost weights calibrated on validation to <= "
              f"{settings.cost_bar:.0%} of always-large's cost: " + ", ".join(
                  f"seed {s['seed']} {s['cost_weight']:.3f} (validation mAP50-95 {s['val_map50_95']:.1f} at "
                  f"{s['val_cost_share']:.0%})" for s in seeds))
        lam = float(np.mean([s["cost_weight"] for s in seeds]))  # the oracles' and the report's lambda
        (settings.work / "bc" / "lambda.json").write_text(json.dumps({"lambda": lam, "kind": "values", "seeds": seeds,
                                                                       "cost_bar": settings.cost_bar}, indent=2))
        mlflow.log_param("chosen_lambda", lam)
        mlflow.log_artifact(str(settings.work / "bc" / "lambda.json"))
    _done(settings, "bc", params)


def _lambda(settings: Settings) -> float:
    path = settings.work / "bc" / "lambda.json"
    if not path.is_file():
        raise AdaptivePerceptionError(f"{path} is missing; run `adaptive-perception train bc --work {settings.work}` "
                                      "first (or `train all`)")
    return float(json.loads(path.read_text())["lambda"])


def stage_ppo(settings: Settings) -> None:
    from gymnasium.utils.env_checker import check_env

    from adaptive_perception.training.learn import Network, make_env, train_ppo

    lam = _lambda(settings)
    params = {"lambda": lam, "seeds": settings.seeds, "steps": settings.ppo_steps, "switch_penalty": settings.switch_penalty,
              "critic_warmup": settings.critic_warmup, "inputs": settings.policy_inputs,
              "bc": _mtimes([settings.work / "bc" / f"seed{s}.npz" for s in range(settings.seeds)])}
    outputs = [settings.work / "ppo" / f"seed{s}.npz" for s in range(settings.seeds)]
    if _cached(settings, "ppo", params, outputs):
        print("[ppo] cached")
        return
    costs, train = _load_costs(settings), load_split(settings, TRAIN_SPLIT)
    with tracked(settings, "ppo", params) as mlflow:
        check_env(make_env(train, costs, lam, Network.load(settings.work / "bc" / "seed0.npz"),
                           inputs=settings.policy_inputs), skip_render_check=True)
        (settings.work / "ppo").mkdir(parents=True, exist_ok=True)
        for seed in range(settings.seeds):
            bc = Network.load(settings.work / "bc" / f"seed{seed}.npz")
            started = time.perf_counter()
            network, _ = train_ppo(train, costs, lam, bc, seed, settings.ppo_steps, settings.switch_penalty,
                                   settings.critic_warmup, settings.policy_inputs)
            network.save(settings.work / "ppo" / f"seed{seed}.npz")
            mlflow.log_metrics({f"seed{seed}_train_s": time.perf_counter() - started})
    _done(settings, "ppo", params)


def _policy_path(settings: Settings, kind: str, seed: int) -> Path:
    return settings.work / "policies" / f"{kind}_seed{seed}.onnx"


def stage_export(settings: Settings) -> None:
    from adaptive_perception.training.learn import Network, export

    lam = _lambda(settings)
    # the tiers the profiles ran (recorded by the profile stage, which re-runs when a tier's content changes)
    digests = profiled_with(settings.work).get("digests") or _tier_digests(settings.models)
    networks = [settings.work / kind / f"seed{s}.npz" for kind in ("bc", "ppo") for s in range(settings.seeds)]
    params = {"lambda": lam, "seeds": settings.seeds, "networks": _mtimes(networks), "tiers": digests,
              "policy_out": str(settings.policy_out), "drift_reference": 4}
    outputs = [_policy_path(settings, kind, s) for kind in ("bc", "ppo") for s in range(settings.seeds)]
    written = [settings.policy_out] if settings.policy_out else []  # outside the work folder: recorded as written
    if _cached(settings, "export", params, outputs + written):
        print("[export] cached")
        return
    from adaptive_perception.training.drift_reference import drift_reference

    training, costs = load_split(settings, TRAIN_SPLIT), _load_costs(settings)
    held_out = [load_split(settings, "val"), load_split(settings, "test")]
    with tracked(settings, "export", params) as mlflow:
        for kind in ("bc", "ppo"):
            for seed in range(settings.seeds):
                network = Network.load(settings.work / kind / f"seed{seed}.npz")
                digest = hashlib.sha256(b"".join(w.tobytes() + b.tobytes() for w, b in network.layers)).hexdigest()[:8]
                name = "bc" if kind == "bc" else "bc-ppo"
                path = export(network, _policy_path(settings, kind, seed), f"{name}-l{lam:g}-s{seed}-{digest}",
                              f"{name} routing policy (lambda {lam:g}, seed {seed}) trained by `adaptive-perception "
                              f"train` on " + (settings.data or f"{settings.benchmark} ({settings.source}, truth "
                                               f"{settings.truth})"), digests,
                              lambda policy: drift_reference(policy, training, held_out, costs))
                mlflow.log_artifact(str(path), artifact_path="policies")
        if settings.policy_out is not None:
            settings.policy_out.parent.mkdir(parents=True, exist_ok=True)
            settings.policy_out.write_bytes(_policy_path(settings, "ppo", 0).read_bytes())
            print(f"[export] {settings.policy_out} <- BC + PPO seed 0")
    print(f"[export] ONNX policies agree with PyTorch within 1e-5: {settings.work / 'policies'}")
    _done(settings, "export", params, outputs + written)


def refresh_drift_reference(work: Path, policy_path: Path, out: Path, calibration_sequences: int = 0,
                            version: str = "2.0.0", cost_weight: float = -1.0, hysteresis: float = 0.0):
    """Recompute `policy_path`'s drift reference from the profiles in `work` (as `stage_export` computes it) and
    write the policy to `out` with every other part of the file unchanged: a monitor's statistics can change
    without retraining the policy. `calibration_sequences` new in-distribution sequences of generator `version`
    (`drift_reference.calibration_streams`, the embedded tiers) join the held-out splits for the thresholds. The
    policy routes at `cost_weight` (negative: its own) and `hysteresis`, as the node will run it."""
    from adaptive_perception.drift import METADATA_KEY
    from adaptive_perception.policy import META_PREFIX, Policy
    from adaptive_perception.router import MAX_HYSTERESIS, RouterSettings
    from adaptive_perception.training.drift_reference import calibration_streams, drift_reference
    from adaptive_perception.training.policy_export import rewrite_metadata

    settings = Settings(work=work)
    policy = Policy(policy_path)
    if not math.isfinite(cost_weight) or not 0.0 <= hysteresis <= MAX_HYSTERESIS:
        raise AdaptivePerceptionError(f"--cost-weight {cost_weight} / --hysteresis {hysteresis}: give a finite weight "
                                      f"(negative: the policy's own) and a hysteresis in [0, {MAX_HYSTERESIS}]")
    if cost_weight >= 0 and policy.value_head is None:
        raise AdaptivePerceptionError(f"--cost-weight {cost_weight}: policy '{policy.policy_id}' ({policy_path}) "
                                      "outputs tier logits and has no cost weight; leave --cost-weight out")
    routing = RouterSettings(cost_weight=cost_weight, hysteresis=hysteresis).validate()
    extra = calibration_streams(policy, settings.models, calibration_sequences, version, settings=routing) \
        if calibration_sequences else ()
    reference = drift_reference(policy, load_split(settings, TRAIN_SPLIT),
                                [load_split(settings, "val"), load_split(settings, "test")], _load_costs(settings),
                                extra, routing)
    if reference is None:
        raise AdaptivePerceptionError(f"{work}: the held-out profiles are too short for a drift reference")
    rewrite_metadata(policy_path, out, {METADATA_KEY[len(META_PREFIX):]: reference.to_json()})
    return reference


def stage_evaluate(settings: Settings) -> None:
    from adaptive_perception.training import report as reporting

    policies = [_policy_path(settings, kind, s) for kind in ("bc", "ppo") for s in range(settings.seeds)]
    params = {"lambda": _lambda(settings), "seeds": settings.seeds, "resamples": settings.resamples,
              "policies": _mtimes(policies), "reports": str(settings.reports.resolve())}
    outputs = [settings.reports / name for name in ("routing.json", "routing.md", "routing_curve.png")]
    if _cached(settings, "evaluate", params, outputs):
        print(f"[evaluate] cached: {settings.reports / 'routing.md'}")
        return
    with tracked(settings, "evaluate", params) as mlflow:
        result = reporting.evaluate_all(settings, load_split, _load_costs(settings), _lambda(settings), _policy_path)
        paths = reporting.write(result, settings.reports)
        print(f"[evaluate] wrote {', '.join(map(str, paths))}")
        for path in paths:
            mlflow.log_artifact(str(path))
        for setting, rows in result["settings"].items():
            for name, row in rows.items():
                mlflow.log_metrics({re.sub(r"[^A-Za-z0-9_. -]", "_", f"{setting}.{name}.{k}"): float(v) for k, v in row.items()
                                    if isinstance(v, (int, float)) and np.isfinite(v)})
    _done(settings, "evaluate", params, outputs)


def run(stage: str, settings: Settings) -> None:
    stages = STAGES if stage == "all" else (stage,)
    if stage == "all":
        if not _profile_cached(settings):
            _check_profile_inputs(settings)
        import mlflow

        mlflow.set_tracking_uri(settings.uri())
        with tracked(settings, "all", asdict(settings)):
            for name in stages:
                globals()[f"stage_{name}"](settings)
        return
    globals()[f"stage_{stages[0]}"](settings)


def settings_from(args) -> Settings:
    base = PRESETS[args.preset]
    if args.latency is not None:  # a bad file refused now, not after profiling (the labels stage reads it)
        from adaptive_perception.training.labels import Costs

        Costs.load(args.latency)
    changes = {k: v for k, v in {
        "benchmark": args.benchmark, "source": args.source, "truth": args.truth, "teacher": args.teacher,
        "latency": args.latency, "work": args.work, "reports": args.reports, "policy_out": args.policy_out,
        "tracking_uri": args.tracking_uri, "seeds": args.seeds, "lam": args.lam, "ppo_steps": args.ppo_steps,
        "resamples": args.resamples, "bc_loss": args.bc_loss, "switch_penalty": args.switch_penalty,
        "policy_inputs": args.policy_inputs, "critic_warmup": args.critic_warmup,
    }.items() if v is not None}
    changes["force"] = args.force
    if args.preset == "small" and args.reports is None:  # a CI-scale run does not replace the committed report
        changes["reports"] = Path(changes.get("work", base.work)) / "reports"
    if args.model:
        changes["models"] = tier_models(args.model, base.models)
    if args.lambdas:
        changes["lambdas"] = tuple(args.lambdas)
    return replace(base, **changes)

