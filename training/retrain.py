"""`adaptive-perception train retrain`: evidence bags without labels -> a candidate policy -> the gate -> promotion.

1. Profile the evidence bags (the node's drift evidence, or any recording) with truth from the reference tier
   (`--truth reference`: the large tier's published detections). Each bag's camera is cut into time segments of
   `segment_frames` frames, the unit of the gate's bootstrap; every `holdout_every`-th segment is held out.
2. Training data: the original router split's profile plus the evidence's training segments (`profile_router`);
   validation and test stay the original ones (the operating point and the drift reference come from them).
3. Labels, BC, PPO and export, as `train all` runs them, in a work folder of its own.
4. Matched cost (`match_cost`): reference truth rewards routing more to large, so the candidate's cost weight is
   set where its routing of the evidence's training segments costs what the current policy's does there; the
   candidate is written at that weight (a policy id of its own, its drift reference recomputed at it).
5. The gate (`gate.py`): candidate and current policy on the held-out segments (its cost may exceed the current's
   by at most 5 % there), with a paired bootstrap over segments, and the loss on the original test split.
6. With `--store`, a promoted candidate becomes the store's current policy and is loaded into the running node.
Everything is logged to MLflow (one run, nested stage runs) naming the bags; the decision with its numbers goes
to `<work>/retrain.json`.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from adaptive_perception.bag import BAG_FILES, expand_bags, never_closed, unclosed_inside
from adaptive_perception.errors import AdaptivePerceptionError
from adaptive_perception.policy import Policy
from adaptive_perception.router import Router
from adaptive_perception.training.profile import Profile, frame_sizes

SEGMENT_FRAMES = 30  # 1 s at 30 Hz: the gate's resampling unit
HOLDOUT_EVERY = 3  # every third segment of the recording (numbered on across its bags) is held out for the gate
FEW_SEGMENTS = 10  # fewer held-out segments than this: the gate warns that its interval is coarse


def subset(profile: Profile, frames: np.ndarray) -> Profile:
    """The profile of `frames` (indices, kept in order), detections and truth renumbered."""
    frames = np.sort(np.asarray(frames, np.int64))
    remap = np.full(len(profile), -1, np.int64)
    remap[frames] = np.arange(len(frames))

    def rows(table: np.ndarray) -> np.ndarray:
        kept = table[remap[table[:, 0].astype(np.int64)] >= 0].copy()
        kept[:, 0] = remap[kept[:, 0].astype(np.int64)]
        return kept

    return Profile(profile.features[frames], profile.latency_ms[frames], profile.sequence[frames],
                   profile.stamp_ns[frames], profile.regime[frames], rows(profile.detections), rows(profile.truth),
                   dict(profile.meta), profile.veil[frames] if profile.veil is not None else None)


def concat(profiles: list[Profile]) -> Profile:
    """One profile of several, in order; sequence ids are renumbered so no two sources share one."""
    offset, sequence_offset, parts = 0, 0, []
    sizes = {tuple(p.meta["frame_hw"]) for p in profiles}
    if len(sizes) > 1:
        raise AdaptivePerceptionError(f"recordings of different frame sizes ({sorted(sizes)}) cannot train one router "
                                      "(its context measures box sizes against the frame); retrain per camera resolution")
    for profile in profiles:
        _, sequence = np.unique(profile.sequence, return_inverse=True)
        detections, truth = profile.detections.copy(), profile.truth.copy()
        detections[:, 0] += offset
        truth[:, 0] += offset
        parts.append((profile, sequence + sequence_offset, detections, truth))
        offset += len(profile)
        sequence_offset += int(sequence.max()) + 1 if len(profile) else 0
    return Profile(np.concatenate([p.features for p, *_ in parts]), np.concatenate([p.latency_ms for p, *_ in parts]),
                   np.concatenate([s for _, s, *_ in parts]).astype(np.int64),
                   np.concatenate([p.stamp_ns for p, *_ in parts]), np.concatenate([p.regime for p, *_ in parts]),
                   np.concatenate([d for *_, d, _ in parts]), np.concatenate([t for *_, t in parts]),
                   {**profiles[0].meta, "sources": [p.meta.get("truth") for p in profiles]},
                   np.concatenate([p.veil for p in profiles]) if all(p.veil is not None for p in profiles) else None)


def segment(profile: Profile, segment_frames: int = SEGMENT_FRAMES) -> Profile:
    """Renumber sequences as time segments: each source sequence (a bag's camera) cut every `segment_frames` frames."""
    segments = np.empty(len(profile), np.int64)
    next_id = 0
    for frames in profile.sequences():
        local = np.arange(len(frames)) // segment_frames
        segments[frames] = next_id + local
        next_id += int(local.max()) + 1
    return replace(profile, sequence=segments)


def split_segments(profile: Profile, holdout_every: int = HOLDOUT_EVERY) -> tuple[Profile, Profile]:
    """(training, held-out): every `holdout_every`-th segment held out, so both span the whole recording."""
    ids = np.unique(profile.sequence)
    if len(ids) < 2 * holdout_every:
        raise AdaptivePerceptionError(f"the evidence holds {len(ids)} segments of frames; the gate needs at least "
                                      f"{2 * holdout_every} (record longer, or lower --segment-frames)")
    held = np.isin(profile.sequence, ids[holdout_every - 1::holdout_every])
    return subset(profile, np.flatnonzero(~held)), subset(profile, np.flatnonzero(held))


def match_cost(candidate: Policy, current: Policy, split, costs, work: Path, out: Path) -> tuple[Policy, dict]:
    """The candidate at the smallest cost weight whose per-frame routing of `split` (the evidence's training
    segments) costs at most what the current policy's routing of it does, written to `out` with a policy id of its
    own and its drift reference recomputed at that weight from the profiles in `work`. A policy without a cost
    weight (tier logits) comes back as it is."""
    from adaptive_perception.training.learn import calibrate_weight
    from adaptive_perception.training.pipeline import refresh_drift_reference
    from adaptive_perception.training.policy_export import rewrite_metadata
    from adaptive_perception.training.report import _router_chooser, learned_chooser
    from adaptive_perception.training.simulate import rollout

    budget = rollout(split, costs, _router_chooser(Router("learned", current)), False).busy_ms / len(split.profile)
    info = {"budget_ms": budget, "trained_weight": None, "weight": None}
    if candidate.value_head is None:
        info["note"] = "the candidate outputs tier logits: no cost weight to match"
        return candidate, info
    weight = calibrate_weight(lambda w: learned_chooser(candidate, w), split, costs, budget)
    info.update(trained_weight=float(candidate.value_head.cost_weight), weight=float(weight))
    rewrite_metadata(candidate.path, out, {
        "cost_weight": repr(float(weight)), "policy_id": f"{candidate.policy_id}-m{weight:.4g}",
        "description": f"{candidate.info.description}; cost weight {weight:.4g} (trained {info['trained_weight']:.4g}): "
                       f"on the evidence it costs what policy '{current.policy_id}' does ({budget:.2f} ms a frame)"})
    refresh_drift_reference(work, out, out)
    return Policy(out), info


def score_policy(split, costs, policy: Policy, resamples: int, seed: int) -> dict:
    """mAP50-95 of `policy` routing `split` per frame (paired replicates for the same resamples and seed) and its
    mean cost per frame."""
    from adaptive_perception.training.evaluate import Scorer, cost_columns
    from adaptive_perception.training.report import _router_chooser
    from adaptive_perception.training.simulate import rollout

    trace = rollout(split, costs, _router_chooser(Router("learned", policy)), False)
    row = Scorer(split).score(trace, resamples, seed)
    columns = cost_columns(split, trace, costs)
    return {**row, "mean_cost_ms": columns["mean_cost_ms"], "mix": columns["mix"]}


def retrain(settings, bags: list[Path], original_work: Path, current: str | None = None, candidate: str | None = None,
            segment_frames: int = SEGMENT_FRAMES, holdout_every: int = HOLDOUT_EVERY, store: Path | None = None,
            node: str = "") -> dict:
    """Run the retraining and the gate; returns the decision (also written to <work>/retrain.json). `current`:
    the policy the node runs (default: the store's current policy with a store, else embedded:policy); the tier
    costs are the original training's (`<original_work>/costs.json`) unless `settings.latency` names others."""
    from adaptive_perception.config import resolve_model
    from adaptive_perception.training import gate
    from adaptive_perception.training import pipeline
    from adaptive_perception.training.profile import bag_frames, profile
    from adaptive_perception.training.simulate import Split

    given = [Path(b) for b in bags]
    bags = expand_bags(given)  # an evidence folder stands for its segments
    # a segment whose writer was killed (kill -9, power loss) has its MCAP but no metadata.yaml: left out, said,
    # whether named or inside a named folder
    unclosed = list(dict.fromkeys([b for b in bags if never_closed(b)] +
                                  [b for folder in given for b in unclosed_inside(folder)]))
    if unclosed:
        bags = [b for b in bags if b not in unclosed]
        print(f"[retrain] left out {[str(b) for b in unclosed]}: never closed (an MCAP without its footer or "
              f"metadata.yaml: its writer was killed while recording); {len(bags)} other recordings read", flush=True)
    missing = [str(b) for b in bags if not ((b / "metadata.yaml").is_file() or (b.is_file() and b.suffix in BAG_FILES))]
    if not bags:
        raise AdaptivePerceptionError("--bags: name the recordings to retrain on (rosbag2 folders, e.g. the node's "
                                      "evidence segments <evidence.dir>/<camera>/evidence_*)")
    if missing:
        raise AdaptivePerceptionError(f"--bags: {missing} are not rosbag2 recordings (a folder with metadata.yaml, or "
                                      "its .mcap / .db3 file); pass the evidence segments, e.g. "
                                      "<evidence.dir>/<camera>/evidence_*")
    originals = {split: pipeline._profile_path(replace(settings, work=original_work), split) for split in pipeline.SPLITS}
    absent = [str(p) for p in originals.values() if not p.is_file()]
    if absent:
        raise AdaptivePerceptionError(
            f"the original training data's profiles {absent} are missing: --original-work (now {original_work}) names "
            "the work folder the current policy was trained in: build/train-v3 for the embedded policy (made by "
            "`train all --benchmark build/benchmark-v2 --work build/train-v3 --latency "
            "training/latency/cpu-2core-family2-wide.json`, README 'Drift monitoring'), the --work of your own "
            f"`train all` for a policy you trained; or profile it with `adaptive-perception train profile --work "
            f"{original_work}`")
    deployed = Path(store) / "current.onnx" if store is not None else None
    if deployed is not None and not deployed.is_file():
        raise AdaptivePerceptionError(f"--store {store} holds no current.onnx; start it with `adaptive-perception "
                                      "policy store-init --store DIR` first")
    current = current or (str(deployed) if deployed is not None else "embedded:policy")
    current_policy = Policy(resolve_model(current))
    deployed_id = Policy(str(deployed)).policy_id if deployed is not None else current_policy.policy_id
    if deployed_id != current_policy.policy_id:
        raise AdaptivePerceptionError(
            f"--current '{current}' is policy '{current_policy.policy_id}' but --store {store} deploys "
            f"'{deployed_id}': the gate must compare the candidate with the policy it would replace; leave --current "
            "out to use the store's")
    if candidate is not None:  # checked before the evidence is profiled (minutes), not after
        Policy(resolve_model(candidate))
    from adaptive_perception.bag import camera_counts

    # from the bags' indexes: a short recording is refused before profiling
    counts = [n for b in bags for n in camera_counts(b).values()]
    segments = sum(-(-n // segment_frames) for n in counts)  # as `segment` cuts them, the last one short
    if segments < 2 * holdout_every:
        raise AdaptivePerceptionError(
            f"--bags hold {sum(counts)} frames ({', '.join(map(str, counts))} per bag and camera): {segments} "
            f"segments of {segment_frames} frames, and the gate needs at least {2 * holdout_every} (record longer, or "
            "lower --segment-frames)")
    trained_at = tuple(Profile.meta_of(originals[pipeline.TRAIN_SPLIT]).get("frame_hw") or ())
    other = [(b, c, size) for b, c, size in frame_sizes(bags) if trained_at and tuple(size) != trained_at]
    if other:  # before the evidence is profiled (minutes), not after
        raise AdaptivePerceptionError(
            f"the current policy was trained on {trained_at[1]}x{trained_at[0]} frames (--original-work "
            f"{original_work}), and the evidence holds " + "; ".join(f"bag '{b}' {c}: {w}x{h}" for b, c, (h, w) in
                                                                    other[:3]) +
            ("; ..." if len(other) > 3 else "") + ": one router is trained at one camera resolution (its context "
            "measures box sizes against the frame); retrain on original data at the camera's resolution: profile "
            "recordings of this camera into a work folder of their own (`adaptive-perception train all --source bags "
            "--truth reference --benchmark DIR --work DIR`) and pass it as --original-work")
    if settings.latency is None and (original_work / "costs.json").is_file():
        settings = replace(settings, latency=original_work / "costs.json")  # the costs the original was trained at
    settings = replace(settings, data=f"{original_work}'s router split + evidence bags {[str(b) for b in bags]} "
                                      "(truth reference: the large tier)")
    work = settings.work
    work.mkdir(parents=True, exist_ok=True)
    import mlflow

    mlflow.set_tracking_uri(settings.uri())
    with pipeline.tracked(settings, "retrain", {"bags": [str(b) for b in bags], "original_work": str(original_work),
                                                "current_policy": current_policy.policy_id,
                                                "candidate": candidate or "trained here",
                                                "segment_frames": segment_frames, "holdout_every": holdout_every}
                          ) as mlflow:
        read = []
        evidence = profile(bag_frames(bags, None, False, read), sum(counts), "reference", settings.models,
                           settings.teacher, desc="profile evidence")
        pipeline.log_bags_read(mlflow, read, "evidence")
        train_part, held_out = split_segments(segment(evidence, segment_frames), holdout_every)
        held_segments = len(np.unique(held_out.sequence))
        used = "to train on and to match the candidate's cost on" if candidate is None else \
            "to match the candidate's cost on (--candidate given: none trained on)"
        print(f"[retrain] evidence: {len(evidence)} frames from {len(bags)} bags; {len(np.unique(train_part.sequence))} "
              f"segments {used}, {held_segments} held out for the gate")
        warnings = [] if held_segments >= FEW_SEGMENTS else [
            f"only {held_segments} held-out segments: the bootstrap interval over them is coarse; record more evidence "
            f"(one {segment_frames}-frame segment in {holdout_every} is held out)"]
        for warning in warnings:
            print(f"[gate] warning: {warning}")
        held_out.save(work / "evidence_held_out.npz")
        if candidate is None:
            concat([Profile.load(originals[pipeline.TRAIN_SPLIT]), train_part]).save(
                pipeline._profile_path(settings, pipeline.TRAIN_SPLIT))
            for split in ("val", "test"):
                shutil.copyfile(originals[split], pipeline._profile_path(settings, split))
            for stage in ("labels", "bc", "ppo", "export"):
                getattr(pipeline, f"stage_{stage}")(settings)
            candidate_path = pipeline._policy_path(settings, "ppo", 0)
        else:
            for split in pipeline.SPLITS:  # the gate scores on the original test split with the original costs
                shutil.copyfile(originals[split], pipeline._profile_path(settings, split))
            pipeline.stage_labels(settings)
            candidate_path = Path(resolve_model(candidate))
        costs = pipeline._load_costs(settings)
        candidate_policy, matched = match_cost(Policy(str(candidate_path)), current_policy, Split.build(train_part),
                                               costs, work, work / "candidate_matched.onnx")
        if matched["weight"] is not None:
            candidate_path = Path(candidate_policy.path)
            print(f"[retrain] candidate at cost weight {matched['weight']:.4g} (trained at "
                  f"{matched['trained_weight']:.4g}): on the evidence's training segments it costs at most the current "
                  f"policy's {matched['budget_ms']:.2f} ms a frame -> {candidate_path}")
        new_split, test = Split.build(held_out), pipeline.load_split(settings, "test")
        rows = {name: {"new": score_policy(new_split, costs, policy, settings.resamples, 0),
                       "original": score_policy(test, costs, policy, settings.resamples, 0)}
                for name, policy in (("candidate", candidate_policy), ("current", current_policy))}
        decision = gate.decide(rows["candidate"]["new"], rows["current"]["new"], rows["candidate"]["original"],
                               rows["current"]["original"])
        decision.update(candidate={"path": str(candidate_path), "policy_id": candidate_policy.policy_id,
                                   "mix_new": rows["candidate"]["new"]["mix"], "matched_cost": matched},
                        current={"path": current_policy.path, "policy_id": current_policy.policy_id,
                                 "mix_new": rows["current"]["new"]["mix"]},
                        bags=[str(b) for b in bags], held_out_frames=len(held_out),
                        held_out_segments=held_segments, resamples=settings.resamples, warnings=warnings,
                        costs={"device": costs.device, "tiers_ms": costs.ms.round(3).tolist()})
        mlflow.log_metrics({"promote": float(decision["promote"]), "new_difference": decision["new_data"]["difference"],
                            "new_difference_ci_low": decision["new_data"]["difference_ci"][0],
                            "cost_ratio": decision["new_data"]["cost_ratio"],
                            "original_loss": decision["original"]["loss"]})
        (work / "retrain.json").write_text(json.dumps(decision, indent=2))
        mlflow.log_artifact(str(work / "retrain.json"))
        verdict = "PROMOTE" if decision["promote"] else "KEEP the current policy: " + "; ".join(decision["reasons"])
        print(f"[gate] candidate '{candidate_policy.policy_id}' against '{current_policy.policy_id}': new data "
              f"{decision['new_data']['difference']:+.2f} mAP50-95 [{decision['new_data']['difference_ci'][0]:+.2f}, "
              f"{decision['new_data']['difference_ci'][1]:+.2f}] at cost x{decision['new_data']['cost_ratio']:.2f}; "
              f"original test split {-decision['original']['loss']:+.2f}. {verdict}")
        if decision["promote"] and store is not None:
            from adaptive_perception.policy_store import PolicyStore

            path = PolicyStore(store).promote(candidate_path, decision)
            print(f"[gate] promoted to {path}")
            if node:
                from adaptive_perception.ros.session import load_policy

                print(f"[gate] {node} runs policy '{load_policy(node, str(path.resolve()))}'")
    return decision
