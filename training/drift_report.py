"""`adaptive-perception bench drift`: does the drift monitor notice each drift preset, and stay quiet otherwise?

For each preset (night, fog, new_domain, small_objects) one camera stream: `in_sequences` newly seeded
in-distribution sequences of the policy's generator version (regime changes inside each; seeds no benchmark,
reference or calibration used), then `drift_sequences` sequences of the preset. Every frame goes the node's
per-frame path without ROS: features, the policy's routing (with the context from the previous routed output),
the chosen tier, one frame in `audit_every` audited against the large tier (F1 at IoU 0.5), and a
`DriftMonitor` per stream with the node's defaults. The node audits in a background process and the result
reaches the monitor a few frames later; here it arrives at once (the only difference).
Figures per preset: detection delay (frames from the change to the first DRIFT; bar <= 150), false alarms
(entries into DRIFT on in-distribution frames, and per 1,000 of them; bar: none over >= 3,000 in total), WARN
frames before the change; per statistic the largest ratio to its threshold before and after the change.
Where the monitor fired and the original training work folder is there: retraining on the evidence, as the node
and `train retrain` would do it. The frames the node records around the event (`evidence.pre_frames` up to the
DRIFT frame, `post_frames` after it) go into a rosbag2 bag; `train retrain` (short: the `small` preset) turns
it into a candidate without labels (`--truth reference`) and gates it against the current policy. Before and
after: the current and the candidate policy routing newly seeded sequences of the preset (no stream, evidence or
calibration used them), scored against the generator's own ground truth, with each one's cost per frame.
Writes JSON, a Markdown table and a plot of the drift score over each stream with the change marked.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
from pathlib import Path

import numpy as np

from adaptive_perception.config import resolve_model
from adaptive_perception.detector import TIERS
from adaptive_perception.drift import DRIFT, WARN, DriftMonitor
from adaptive_perception.errors import AdaptivePerceptionError
from adaptive_perception.policy import Policy
from adaptive_perception.scenes.sequence import Drift, SequenceSpec, render_sequence
from adaptive_perception.training.drift_reference import cpu_detectors, node_stream

PRESETS = [d for d in Drift if d is not Drift.NONE]
REPORT_SEED = 515151  # in-distribution sequences no benchmark split, reference or calibration ever used
AFTER_SEED = REPORT_SEED + 100  # the preset sequences that score the policies before and after retraining
DELAY_BAR = 150
FALSE_ALARM_FRAMES_BAR = 3000


def stream_specs(preset: Drift, in_sequences: int, drift_sequences: int, frames: int, version: str
                 ) -> tuple[list[SequenceSpec], list[SequenceSpec]]:
    """The preset's in-distribution sequences (distinct per preset) and its drift sequences."""
    k = PRESETS.index(preset)
    clean = [SequenceSpec(REPORT_SEED, k * in_sequences + i, frames, version=version) for i in range(in_sequences)]
    drifted = [SequenceSpec(REPORT_SEED + 1 + k, i, frames, drift=preset, version=version)
               for i in range(drift_sequences)]
    return clean, drifted


def run_stream(frames, detectors: dict, policy: Policy, audit_every: int, confirm: int, desc: str) -> dict:
    """The node's per-frame path over `frames` (rgb, stamp_ns) and its monitor: per frame the state, score and
    statistics (the monitor takes a frame, then that frame's audit, as the node's worker would deliver it)."""
    features, tiers, agreements, veils = node_stream(policy, frames, detectors, audit_every, desc)
    monitor = DriftMonitor(policy.drift_reference, confirm)
    rows = []
    for vector, tier, audit, frame_veil in zip(features, tiers, agreements, veils):
        state, score = monitor.update(vector, int(tier), frame_veil)
        if np.isfinite(audit):
            monitor.audit(float(audit))
        rows.append((state, score, dict(monitor.statistics), int(tier)))
    return {"states": [r[0] for r in rows], "scores": [r[1] for r in rows],
            "statistics": [r[2] for r in rows], "tiers": [r[3] for r in rows]}


def summarise_stream(states: list[int], scores: list[float], statistics: list[dict], change: int,
                     thresholds: dict[str, float]) -> dict:
    """Delay, false alarms and the statistics' peaks of one stream whose drift starts at frame `change`."""
    entries = [i for i in range(len(states)) if states[i] == DRIFT and (i == 0 or states[i - 1] != DRIFT)]
    first = next((i for i in range(change, len(states)) if states[i] == DRIFT), None)

    def peaks(part: range) -> dict:
        return {name: max((s[name] / limit for i in part if (s := statistics[i]) and name in s), default=None)
                for name, limit in thresholds.items()}

    return {"in_distribution_frames": change, "drift_frames": len(states) - change,
            "false_alarms": sum(i < change for i in entries),
            "warn_frames_before_change": sum(s == WARN for s in states[:change]),
            "detection_delay_frames": None if first is None else first - change,
            "peak_ratio_before_change": peaks(range(change)), "peak_ratio_after_change": peaks(range(change, len(states))),
            "max_score_before_change": float(np.nanmax(scores[:change])) if np.isfinite(scores[:change]).any() else None}


def evidence_frames(stream: list, trigger: int, settings=None) -> list:
    """The (rgb, stamp_ns) frames the node records for a DRIFT at stream index `trigger`: its ring's last
    `pre_frames` (the DRIFT frame the last of them) and the `post_frames` after it (fewer where the stream ends)."""
    from adaptive_perception.evidence import EvidenceSettings

    settings = settings or EvidenceSettings()
    return stream[max(0, trigger + 1 - settings.pre_frames):trigger + 1 + settings.post_frames]


def retrain_on_evidence(evidence: list, preset: Drift, policy_spec: str, original_work: Path, work: Path,
                        eval_sequences: int, frames: int, version: str) -> dict:
    """`train retrain` (small preset) on the evidence frames, then the current and the candidate policy on new
    sequences of the preset against the generator's ground truth."""
    from dataclasses import replace

    from adaptive_perception.bag import write_image_bag
    from adaptive_perception.training.heldout import _frames
    from adaptive_perception.training.labels import Costs
    from adaptive_perception.training.pipeline import PRESETS as TRAIN_PRESETS
    from adaptive_perception.training.profile import profile
    from adaptive_perception.training.retrain import retrain, score_policy
    from adaptive_perception.training.simulate import Split

    bag = work / "evidence" / "evidence_0001"
    if bag.exists():
        shutil.rmtree(bag)
    bag.parent.mkdir(parents=True, exist_ok=True)
    write_image_bag(bag, [(stamp, rgb) for rgb, stamp in evidence], "/camera/image_raw", "camera")
    # the original training's tier costs, so the candidate's operating point is comparable with the current one's
    latency = original_work / "costs.json"
    settings = replace(TRAIN_PRESETS["small"], work=work / "retrain", reports=work / "retrain" / "reports", force=True,
                       latency=latency if latency.is_file() else None)
    decision = retrain(settings, [bag], original_work, policy_spec)
    k = PRESETS.index(preset)
    specs = [SequenceSpec(AFTER_SEED + k, i, frames, drift=preset, version=version) for i in range(eval_sequences)]
    split = Split.build(profile(_frames(specs), eval_sequences * frames, "sidecar", {t: f"embedded:{t}" for t in TIERS},
                                desc=f"scoring {preset.value} before and after"))
    costs = Costs.load(settings.work / "costs.json")
    rows = {}
    for name, path in (("before", resolve_model(policy_spec)), ("after", decision["candidate"]["path"])):
        policy = Policy(path)
        row = score_policy(split, costs, policy, 0, 0)
        rows[name] = {"policy_id": policy.policy_id, "map50_95": row["map50_95"], "map50": row["map50"],
                      "mean_cost_ms": row["mean_cost_ms"], "mix": row["mix"]}
    return {"evidence_frames": len(evidence), "evidence_bag": str(bag), "scored_frames": len(split.profile),
            "scored_seed": AFTER_SEED + k, "costs": costs.device, **rows,
            "gate": {"promote": decision["promote"], "reasons": decision["reasons"],
                     "new_data_difference": decision["new_data"]["difference"],
                     "new_data_difference_ci": decision["new_data"]["difference_ci"],
                     "cost_ratio": decision["new_data"]["cost_ratio"], "original_loss": decision["original"]["loss"],
                     "held_out_segments": decision["held_out_segments"],
                     "matched_cost": decision["candidate"]["matched_cost"]}}


def run_report(report_path: Path, policy_spec: str = "embedded:policy", in_sequences: int = 5,
               drift_sequences: int = 2, frames: int = 150, audit_every: int = 30, confirm: int = 15,
               presets: list[Drift] | None = None, version: str = "2.0.0", original_work: Path | None = None,
               work: Path = Path("build/drift-report"), eval_sequences: int = 2) -> dict:
    """`version`: the generator version of the world the policy and its tiers were trained on; `original_work`:
    the policy's training work folder (its profiles), for retraining on the evidence (None: no retraining)."""
    if original_work is not None and not (original_work / "profile_router.npz").is_file():
        print(f"[drift] {original_work}/profile_router.npz is missing: no retraining on the evidence (make the "
              "profiles with `adaptive-perception train profile`; training/README.md)", flush=True)
        original_work = None
    policy = Policy(resolve_model(policy_spec))
    if policy.drift_reference is None or not policy.drift_reference.thresholds:
        raise AdaptivePerceptionError(f"policy {policy_spec} carries no calibrated drift reference; re-export it with "
                                      "`adaptive-perception train export`")
    detectors = cpu_detectors()
    result = {"policy_id": policy.policy_id, "generator_version": version, "thresholds": policy.drift_reference.thresholds,
              "window": policy.drift_reference.window, "confirm_frames": confirm, "audit_every": audit_every,
              "seed": REPORT_SEED, "presets": {}, "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}
    series = {}
    for preset in presets or PRESETS:
        clean, drifted = stream_specs(preset, in_sequences, drift_sequences, frames, version)
        stream = [(f.rgb, f.stamp_ns) for spec in clean + drifted for f in render_sequence(spec)]
        change = sum(spec.frames for spec in clean)
        run = run_stream(stream, detectors, policy, audit_every, confirm, f"drift stream {preset.value}")
        result["presets"][preset.value] = summarise_stream(run["states"], run["scores"], run["statistics"], change,
                                                           policy.drift_reference.thresholds)
        result["presets"][preset.value]["tier_mix_before_after"] = [
            np.bincount(run["tiers"][:change], minlength=3).tolist(), np.bincount(run["tiers"][change:], minlength=3).tolist()]
        series[preset.value] = {"scores": run["scores"], "states": run["states"], "change": change}
        delay = result["presets"][preset.value]["detection_delay_frames"]
        if delay is None:
            result["presets"][preset.value]["retraining"] = {"skipped": "not detected: the node records no evidence"}
        elif original_work is None:
            result["presets"][preset.value]["retraining"] = {"skipped": "no original training work folder"}
        else:
            result["presets"][preset.value]["retraining"] = retrain_on_evidence(
                evidence_frames(stream, change + delay), preset, policy_spec, original_work, work / preset.value,
                eval_sequences, frames, version)
    result.update(totals(result["presets"]))
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(result, indent=1))
    report_path.with_suffix(".md").write_text(markdown(result))
    plot(result, series, report_path.with_suffix(".png"))
    print(markdown(result))
    print(f"wrote {report_path}, {report_path.with_suffix('.md')} and {report_path.with_suffix('.png')}")
    return result


def totals(presets: dict[str, dict]) -> dict:
    """Over every preset's stream (`summarise_stream` rows): false alarms per 1,000 in-distribution frames and the
    issue's bars (no false alarm over at least 3,000 such frames; each preset detected within 150 frames)."""
    in_frames = sum(r["in_distribution_frames"] for r in presets.values())
    alarms = sum(r["false_alarms"] for r in presets.values())
    return {"false_alarms_per_1000": 1000.0 * alarms / in_frames if in_frames else None,
            "bars": {"no_false_alarm": alarms == 0 and in_frames >= FALSE_ALARM_FRAMES_BAR,
                     "in_distribution_frames": in_frames,
                     "detected_within_150": {k: r["detection_delay_frames"] is not None and
                                             r["detection_delay_frames"] <= DELAY_BAR for k, r in presets.items()}}}


def markdown(result: dict) -> str:
    fmt = lambda v, d=2: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    keys = [k for k in ("feature_psi", "mix_tvd", "agreement_drop", "image_quality", "veil") if k in result["thresholds"]]
    names = " / ".join({"feature_psi": "PSI", "mix_tvd": "mix", "agreement_drop": "agreement",
                        "image_quality": "image quality", "veil": "veil"}[k] for k in keys)
    lines = [f"Drift monitor on policy `{result['policy_id']}` (generator {result['generator_version']}, window "
             f"{result['window']} frames, DRIFT after {result['confirm_frames']} frames above 1, one audit in "
             f"{result['audit_every']}); command: `adaptive-perception bench drift`.", "",
             "| preset | in-distribution frames | false alarms | WARN frames before | detection delay (frames, bar <= 150) "
             f"| peak ratio before: {names} | after: {names} |", "|---|---|---|---|---|---|---|"]
    for name, r in result["presets"].items():
        before, after = r["peak_ratio_before_change"], r["peak_ratio_after_change"]
        lines.append(f"| {name} | {r['in_distribution_frames']} | {r['false_alarms']} | {r['warn_frames_before_change']} | "
                     f"{'not detected' if r['detection_delay_frames'] is None else r['detection_delay_frames']} | "
                     + " / ".join(fmt(before.get(k)) for k in keys) + " | " + " / ".join(fmt(after.get(k)) for k in keys) + " |")
    bars = result["bars"]
    lines += ["", f"False alarms per 1,000 in-distribution frames: {fmt(result['false_alarms_per_1000'])} over "
              f"{bars['in_distribution_frames']} frames (bar: none over >= {FALSE_ALARM_FRAMES_BAR}: "
              f"{'met' if bars['no_false_alarm'] else 'NOT MET'}); detected within {DELAY_BAR} frames: "
              + ", ".join(f"{k} {'met' if ok else 'NOT MET'}" for k, ok in bars["detected_within_150"].items())]
    lines += ["", "Retraining on the evidence (`train retrain`, small preset, truth from the large tier), then the current "
              "and the candidate policy on new sequences of the preset against the generator's ground truth:", "",
              "| preset | evidence frames | mAP50-95 before / after | cost per frame before / after (ms) | candidate's "
              "cost weight: trained -> matched | gate: candidate - current on held-out evidence [95 % CI], cost "
              "ratio, loss on the original test split | decision |", "|---|---|---|---|---|---|---|"]
    for name, r in result["presets"].items():
        t = r.get("retraining", {"skipped": "not run"})
        if "skipped" in t:
            lines.append(f"| {name} | - | - | - | - | - | {t['skipped']} |")
            continue
        g = t["gate"]
        ci = g["new_data_difference_ci"]
        before, after = t["before"], t["after"]
        lines.append(f"| {name} | {t['evidence_frames']} | {before['map50_95']:.1f} / {after['map50_95']:.1f} | "
                     f"{before['mean_cost_ms']:.1f} / {after['mean_cost_ms']:.1f} | {_weights(g.get('matched_cost'))} | "
                     f"{g['new_data_difference']:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}], x{g['cost_ratio']:.2f}, "
                     f"{g['original_loss']:+.2f} | " + ("promote" if g["promote"] else "keep the current policy: "
                                                       + "; ".join(g["reasons"])) + " |")
    return "\n".join(lines)


def _weights(matched: dict | None) -> str:
    if not matched or matched.get("weight") is None:
        return "-"
    return f"{matched['trained_weight']:.4g} -> {matched['weight']:.4g}"


def plot(result: dict, series: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(series), 1, figsize=(9, 2.2 * len(series)), sharex=True, dpi=100, squeeze=False)
    for ax, (name, s) in zip(axes[:, 0], series.items()):
        scores = np.asarray(s["scores"], np.float64)
        states = np.asarray(s["states"])
        ax.plot(scores, color="tab:blue", linewidth=0.8, label="drift score")
        ax.axhline(1.0, color="grey", linestyle=":", linewidth=0.8)
        ax.axvline(s["change"], color="tab:red", linewidth=1.2, label="drift starts")
        ax.fill_between(np.arange(len(states)), 0, np.nanmax(scores[np.isfinite(scores)], initial=1.0),
                        where=states == DRIFT, color="tab:red", alpha=0.12, step="mid", label="state DRIFT")
        ax.set_ylabel(f"{name}\nscore", fontsize=8)
        ax.set_ylim(0, max(1.2, 1.1 * float(np.nanmax(scores, initial=0.0))))
    axes[0, 0].legend(fontsize=7, loc="upper left")
    axes[-1, 0].set_xlabel("frame (30 Hz)")
    fig.suptitle(f"Drift score per preset stream (policy {result['policy_id']}); dotted: threshold")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
