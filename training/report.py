"""The routing report: every row on the frozen test split, per frame and streaming, with the bars checked.

Written to `routing.json` (per setting, one object per row keyed by row name, the columns as keys),
`routing.md` and `routing_curve.png` (cost against mAP50-95 over the lambda sweep).
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from adaptive_perception.detector import TIERS
from adaptive_perception.policy import Policy
from adaptive_perception.progress import progress
from adaptive_perception.router import Router, RouterSettings
from adaptive_perception.scenes.sequence import Regime
from adaptive_perception.training.evaluate import Scorer, cost_columns, interval
from adaptive_perception.training.labels import budget_oracle, optimal_tiers, streaming_labels
from adaptive_perception.training.learn import Network, expert_dataset
from adaptive_perception.training.pipeline import TRAIN_SPLIT
from adaptive_perception.training.simulate import FRAME_RATE_HZ, rollout

# count thresholds (nano below low, small below high, else large); (1000, 1000) is always-nano, so the curve
# spans every cost from nano's to large's and can be read at any learned policy's cost. Thresholds up to 15 and
# 31: with tiers that find up to ~30 objects, a grid ending at (6, 14) left the cheap end of the heuristic's
# curve to a straight line from always-nano (time-sharing), 7 mAP50-95 below rules such as (8, 14)
HEURISTIC_GRID = [(low, high) for low in range(0, 16) for high in range(low, 32, 2)] + [(1000, 1000)]
# the router issue's bars: >= 90 % of always-large's mAP50-95 at <= 40 % of its cost; beats the heuristic at its
# own cost by >= 1 point and random at its own mix by >= 3, each with the paired interval excluding 0
BARS = {"keep_share": 0.90, "cost_share": 0.40, "gap_share": 0.70, "beat_heuristic_points": 1.0,
        "beat_random_points": 3.0}


def _router_chooser(router: Router):
    return lambda _frame, observation, context: router.decide(observation, context).tier


def learned_chooser(policy: Policy, weight: float):
    """A simulator chooser routing with `policy` at cost weight `weight` (< 0: the policy's own)."""
    return _router_chooser(Router("learned", policy, RouterSettings(cost_weight=weight)))


def heuristic_chooser(thresholds: tuple[int, int]):
    """A simulator chooser routing with the previous-count rule at `thresholds`."""
    return _router_chooser(Router("heuristic", None, RouterSettings(heuristic_thresholds=tuple(thresholds))))


def _fixed(tier: int):
    return lambda *_: tier


def _table_chooser(tiers: np.ndarray):
    return lambda frame, *_: int(tiers[frame])


def _overhead_ms(reports: Path) -> float | None:
    """Features + policy p50 at 640x480 from `bench overhead` (this report folder's, else the committed one)."""
    for path in (reports / "overhead.json", Path(__file__).resolve().parent / "reports" / "overhead.json"):
        if path.is_file():
            return float(json.loads(path.read_text())["routing"]["640x480"]["features_plus_policy"]["p50_ms"])
    return None


def _exact_mix_chooser(mix: dict, frames: int, seed: int):
    """Random tiers in a shuffled order holding the mix exactly (largest remainder), one per decision."""
    shares = np.asarray([mix[t] for t in TIERS]) * frames
    counts = np.floor(shares).astype(int)
    counts[np.argsort(counts - shares)[: frames - counts.sum()]] += 1
    order = np.random.default_rng(seed).permutation(np.repeat(np.arange(len(TIERS)), counts))
    decisions = iter(order.tolist())
    return lambda *_: next(decisions)


def _row(scorer: Scorer, split, costs, traces: list, resamples: int) -> dict:
    """Mean over seeds (one trace per seed) with bootstrap intervals of the seed mean."""
    scored = [scorer.score(t, resamples, seed=0) for t in traces]  # same resamples for every seed: paired
    columns = [cost_columns(split, t, costs) for t in traces]
    row = {"map50_95": float(np.mean([s["map50_95"] for s in scored])),
           "map50": float(np.mean([s["map50"] for s in scored])),
           "mean_cost_ms": float(np.mean([c["mean_cost_ms"] for c in columns])),
           "p95_latency_ms": float(np.mean([c["p95_latency_ms"] for c in columns])),
           "p99_latency_ms": float(np.mean([c["p99_latency_ms"] for c in columns])),
           "mix": {t: float(np.mean([c["mix"][t] for c in columns])) for t in TIERS},
           "switches_per_100_frames": float(np.mean([c["switches_per_100_frames"] for c in columns])),
           "seeds": len(traces)}
    if resamples:
        replicates = np.mean([np.asarray(s["replicates"]) for s in scored], axis=0)  # (resamples, 2)
        row["map50_95_ci"] = interval(replicates[:, 0].tolist())
        row["map50_ci"] = interval(replicates[:, 1].tolist())
        row["_replicates"] = replicates[:, 0]
    return row


def setting_labels(split, costs, streaming: bool) -> np.ndarray:
    """(N, 3) the labels of a setting: per frame, each tier on its own frame; streaming, on the frame its output
    lands on (`streaming_labels`)."""
    return streaming_labels(split.quality, costs, FRAME_RATE_HZ) if streaming else split.quality[:, :, 0]


def _oracle_at_cost(split, costs, target_ms: float, streaming: bool, steps: int = 14):
    """The labels' budget oracle rolled out at (at most) `target_ms` mean cost in this setting. Streaming, cost is
    busy time over wall time, so the per-frame budget is searched (bisection) until the streamed cost fits."""
    quality = setting_labels(split, costs, streaming)
    if not streaming:
        return rollout(split, costs, _table_chooser(budget_oracle(quality, costs, target_ms)), False)
    low, high = float(costs.ms.min()), float(costs.ms.max())
    best = rollout(split, costs, _table_chooser(budget_oracle(quality, costs, low)), True)
    for _ in range(steps):
        middle = (low + high) / 2
        trace = rollout(split, costs, _table_chooser(budget_oracle(quality, costs, middle)), True)
        if trace.busy_ms / len(split.profile) <= target_ms:
            low, best = middle, trace
        else:
            high = middle
    return best


def _tune_heuristic(val, test, costs, streaming: bool, cost_ms: float) -> list[tuple[int, int]]:
    """Heuristic rules at the learned policy's test cost `cost_ms`, chosen by validation quality: the best rule of
    the grid whose test cost lies within 5 % of it; if none does, the best rule below and the best rule above it
    (the heuristic's cost-mAP curve is then read between them at exactly that cost: `_interpolated`)."""
    candidates = []
    for low, high in HEURISTIC_GRID:
        quality = float(rollout(val, costs, heuristic_chooser((low, high)), streaming).quality.mean())
        cost = rollout(test, costs, heuristic_chooser((low, high)), streaming).busy_ms / len(test.profile)
        candidates.append((cost, quality, (low, high)))
    matched = [c for c in candidates if abs(c[0] - cost_ms) <= 0.05 * cost_ms]
    if matched:
        return [max(matched, key=lambda c: c[1])[2]]
    return bracketing_rules(candidates, cost_ms)


def bracketing_rules(candidates: list[tuple[float, float, tuple[int, int]]], cost_ms: float) -> list[tuple[int, int]]:
    """Of (cost, quality, thresholds) candidates: the best rule costing at most `cost_ms` and the best costing
    more (to be time-shared: `_interpolated`), or the nearest rule alone when all lie on one side."""
    below = [c for c in candidates if c[0] <= cost_ms]
    above = [c for c in candidates if c[0] > cost_ms]
    if not below or not above:
        return [min(candidates, key=lambda c: abs(c[0] - cost_ms))[2]]
    return [max(below, key=lambda c: c[1])[2], max(above, key=lambda c: c[1])[2]]


def _interpolated(cheaper: dict, dearer: dict, cost_ms: float) -> dict:
    """The row of time-sharing two rules so the mean cost is exactly `cost_ms` (a point on the segment between
    them on the cost-mAP plane); mAP replicates are mixed with the same weight, so intervals stay paired."""
    span = dearer["mean_cost_ms"] - cheaper["mean_cost_ms"]
    w = float(np.clip((dearer["mean_cost_ms"] - cost_ms) / span, 0.0, 1.0)) if span > 0 else 1.0
    row = {}
    for key, value in cheaper.items():
        other = dearer.get(key)
        if key == "thresholds":
            continue
        if key == "mix":
            row[key] = {t: w * value[t] + (1 - w) * other[t] for t in value}
        elif isinstance(value, (float, np.ndarray)) and key not in ("map50_95_ci", "map50_ci"):
            row[key] = w * value + (1 - w) * other
        else:
            row[key] = value
    if "_replicates" in row:
        row["map50_95_ci"] = interval(row["_replicates"].tolist())
        row.pop("map50_ci", None)
    row["interpolation"] = {"cheaper": cheaper.get("thresholds"), "dearer": dearer.get("thresholds"),
                            "weight_of_cheaper": w}
    return row


def _kl(ppo: Network, bc: Network, observations: np.ndarray) -> float:
    """KL(PPO || BC) of the distributions PPO samples from: softmax of the logits, or of a tier-value network's
    scores / temperature (its values would give near-uniform softmaxes and hide any change)."""
    def probabilities(network):
        logits = network.scores(observations.astype(np.float64))
        if network.head is not None:
            logits = logits / network.head.temperature
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        return p / p.sum(axis=1, keepdims=True)
    p, q = probabilities(ppo), probabilities(bc)
    return float(np.mean(np.sum(p * (np.log(p + 1e-12) - np.log(q + 1e-12)), axis=1)))


def heuristic_at_cost(scorer: Scorer, split, costs, rules: list[tuple[int, int]], streaming: bool, cost_ms: float,
                      resamples: int) -> tuple[dict, list, list[float] | None]:
    """The count rule's row at mean cost `cost_ms` on `split`, from one rule or from the two that bracket that cost
    (time-shared: `_interpolated`), with its traces (one per rule) and their weights (None for one rule)."""
    traces, found = [], []
    for thresholds in rules:
        traces.append(rollout(split, costs, heuristic_chooser(thresholds), streaming))
        found.append({**_row(scorer, split, costs, traces[-1:], resamples), "thresholds": list(thresholds)})
    if len(found) == 1:
        return found[0], traces, None
    row = _interpolated(*found, cost_ms)
    share = row["interpolation"]["weight_of_cheaper"]
    return row, traces, [share, 1 - share]


def _or_own(weight: float | None) -> float:
    return -1.0 if weight is None else weight  # RouterSettings: < 0 = the policy's own


def operating_points(settings, policies: dict, val, costs) -> dict:
    """Each learned policy's cost weight per setting. Per frame: calibrated on validation to the cost bar
    (`settings.cost_bar` x always-large's cost), the operating point the per-frame bars are stated at; PPO,
    trained streaming, otherwise lands wherever its streaming reward put it. Streaming: the policy file's own
    weight, the node's default (`routing.cost_weight` < 0)."""
    from adaptive_perception.training.learn import calibrate_weight

    budget = settings.cost_bar * float(costs.ms[-1])

    def calibrated(policy: Policy) -> float | None:
        if policy.value_head is None:
            return None  # a logits policy has no weight to move
        return calibrate_weight(lambda w: learned_chooser(policy, w), val, costs, budget)

    return {"per_frame": {kind: [calibrated(p) for p in found] for kind, found in policies.items()},
            "streaming": {kind: [p.value_head.cost_weight if p.value_head else None for p in found]
                          for kind, found in policies.items()}}


def evaluate_all(settings, load_split, costs, lam: float, policy_path) -> dict:
    test, val, train = load_split(settings, "test"), load_split(settings, "val"), load_split(settings, TRAIN_SPLIT)
    scorer = Scorer(test)
    seeds = range(settings.seeds)
    policies = {kind: [Policy(policy_path(settings, kind, s)) for s in seeds] for kind in ("bc", "ppo")}
    result = {"lambda": lam, "device": costs.device, "tier_cost_ms": dict(zip(TIERS, costs.ms.round(3).tolist())),
              "truth": test.profile.meta["truth"], "test_frames": len(test.profile),
              "test_sequences": len(test.profile.sequences()), "seeds": settings.seeds,
              "policies": {kind: [p.policy_id for p in policies[kind]] for kind in policies}, "settings": {}}
    overhead = _overhead_ms(settings.reports)
    operating = operating_points(settings, policies, val, costs)
    for setting, streaming in (("per_frame", False), ("streaming", True)):
        rows, raw = {}, {}

        quality_weights: dict[str, list[float]] = {}

        def add(name: str, traces: list) -> None:
            raw[name] = traces
            rows[name] = _row(scorer, test, costs, traces, settings.resamples)

        with progress(total=9, desc=f"evaluate, {setting}", unit="row") as bar:
            for tier, name in enumerate(TIERS):
                add(f"always-{name}", [rollout(test, costs, _fixed(tier), streaming)])
                bar.update()
            observations = {}
            for kind, name in (("bc", "BC only"), ("ppo", "BC + PPO")):
                traces = []
                for seed, policy in zip(seeds, policies[kind]):
                    seen = []
                    weight = _or_own(operating[setting][kind][seed])
                    router = Router("learned", policy, RouterSettings(cost_weight=weight))

                    def choose(frame, observation, context, router=router, seen=seen):
                        seen.append(observation)
                        return router.decide(observation, context).tier
                    traces.append(rollout(test, costs, choose, streaming))
                    observations[(kind, seed)] = np.asarray(seen)
                add(name, traces)
                rows[name]["cost_weights"] = [operating[setting][kind][seed] for seed in seeds]
                bar.update()
            learned = rows["BC + PPO"]
            add("random (BC + PPO mix)", [rollout(test, costs, _exact_mix_chooser(learned["mix"], len(test.profile), 100 + s),
                                                  streaming) for s in seeds])
            bar.update()
            heuristic = "heuristic (tuned, matched cost)"
            rules = _tune_heuristic(val, test, costs, streaming, learned["mean_cost_ms"])
            rows[heuristic], raw[heuristic], shares = heuristic_at_cost(
                scorer, test, costs, rules, streaming, learned["mean_cost_ms"], settings.resamples)
            if shares:  # an interpolated row's traces are weighted, not averaged
                quality_weights[heuristic] = shares
            bar.update()
            oracle = optimal_tiers(setting_labels(test, costs, streaming), costs, lam)
            add("per-frame oracle", [rollout(test, costs, _table_chooser(oracle), streaming)])
            bar.update()
            add("budget oracle (BC + PPO cost)", [_oracle_at_cost(test, costs, learned["mean_cost_ms"], streaming)])
            bar.update()
        # the labels' check: their budget oracle at the tuned heuristic's own cost on this split
        check = _row(scorer, test, costs, [_oracle_at_cost(test, costs, rows[heuristic]["mean_cost_ms"], streaming)],
                     settings.resamples)
        result.setdefault("_label_check", {})[setting] = {"oracle": check, "heuristic": rows[heuristic]}
        nano, large = rows["always-nano"]["map50_95"], rows["always-large"]["map50_95"]
        for name, row in rows.items():
            row["gap_recovered"] = (row["map50_95"] - nano) / (large - nano) if large != nano else float("nan")
            row["cost_share_of_large"] = row["mean_cost_ms"] / rows["always-large"]["mean_cost_ms"]
            weights = quality_weights.get(name)
            quality = (float(np.average([t.quality.mean() for t in raw[name]], weights=weights)))
            row["utility"] = quality - lam * row["mean_cost_ms"] / costs.ms[-1]
            row["router_overhead_ms"] = overhead if name in ("BC only", "BC + PPO") else None
        rows["BC + PPO"]["kl_from_bc"] = float(np.mean([_kl(Network.load(settings.work / "ppo" / f"seed{s}.npz"),
                                                            Network.load(settings.work / "bc" / f"seed{s}.npz"),
                                                            observations[("ppo", s)]) for s in seeds]))
        result["settings"][setting] = rows
        result.setdefault("_raw", {})[setting] = raw
    result["routing_by_regime"] = _by_regime(test, result["_raw"]["per_frame"]["BC + PPO"][0])
    result["classifier"] = _classifier(settings, train, test, costs, lam)
    result["sweep"] = _sweep(settings, test, costs, scorer)
    result["bars"] = _bars(result)
    return result


def _by_regime(test, trace) -> dict:
    counts = {r.value: np.zeros(len(TIERS), int) for r in Regime}
    for frame, tier in zip(trace.processed_frames, trace.processed_tiers):
        counts[list(Regime)[test.profile.regime[frame]].value][tier] += 1
    return {k: dict(zip(TIERS, v.tolist())) for k, v in counts.items()}


def _classifier(settings, train, test, costs, lam) -> dict:
    x, labels, _ = expert_dataset(test, costs, lam)
    _, train_labels, _ = expert_dataset(train, costs, lam)
    prior_train = np.bincount(train_labels, minlength=3) / len(train_labels)
    prior_test = np.bincount(labels, minlength=3) / len(labels)
    accuracy = [float((np.argmax(Network.load(settings.work / "bc" / f"seed{s}.npz").logits(x.astype(np.float64)),
                                 axis=1) == labels).mean()) for s in range(settings.seeds)]
    return {"bc_accuracy": float(np.mean(accuracy)), "majority_class": TIERS[int(np.argmax(prior_train))],
            "majority_class_accuracy": float(prior_test[np.argmax(prior_train)]),
            "prior_matched_random_accuracy": float(np.sum(prior_train * prior_test)),
            "label_mix_test": dict(zip(TIERS, prior_test.round(4).tolist()))}


def _sweep(settings, test, costs, scorer) -> list[dict]:
    """Cost and mAP50-95 of the per-frame oracle and of BC (seed 0) at every lambda of the sweep (per frame)."""
    points = []
    for lam in settings.lambdas:
        oracle = rollout(test, costs, _table_chooser(optimal_tiers(test.quality[:, :, 0], costs, lam)), False)
        points.append({"row": "per-frame oracle", "lambda": lam, "map50_95": scorer.score(oracle)["map50_95"],
                       "mean_cost_ms": cost_columns(test, oracle, costs)["mean_cost_ms"]})
        path = settings.work / "bc" / f"sweep_lambda{lam:g}.npz"
        if path.is_file():
            network = Network.load(path)
            trace = rollout(test, costs, network.choose, False)
            points.append({"row": "BC only", "lambda": lam, "map50_95": scorer.score(trace)["map50_95"],
                           "mean_cost_ms": cost_columns(test, trace, costs)["mean_cost_ms"]})
    return points


def _paired(better: dict, worse: dict) -> dict:
    """Difference of mAP50-95 with its paired 95 % bootstrap interval (same sequence resamples for both rows);
    "beats" means the interval excludes 0."""
    out = {"difference": better["map50_95"] - worse["map50_95"]}
    if "_replicates" in better and "_replicates" in worse:
        low, high = interval((better["_replicates"] - worse["_replicates"]).tolist())
        out.update(difference_ci=[low, high], beats=bool(low > 0))
    return out


def _bars(result: dict) -> dict:
    per_frame, streaming = result["settings"]["per_frame"], result["settings"]["streaming"]
    learned, large = per_frame["BC + PPO"], per_frame["always-large"]
    keep = learned["map50_95"] / large["map50_95"]
    heuristic = "heuristic (tuned, matched cost)"
    random = per_frame["random (BC + PPO mix)"]
    def by_points(paired: dict, points: float) -> dict:
        return {**paired, "met": bool(paired.get("beats", False) and paired["difference"] >= points)}

    bars = {
        "keeps_90pct_of_large_at_40pct_cost": {"map_share": keep, "cost_share": learned["cost_share_of_large"],
                                               "met": bool(keep >= BARS["keep_share"] and
                                                           learned["cost_share_of_large"] <= BARS["cost_share"])},
        "recovers_70pct_of_gap": {"gap_recovered": learned["gap_recovered"],
                                  "met": bool(learned["gap_recovered"] >= BARS["gap_share"])},
        "beats_random_by_3_points": by_points(_paired(learned, random), BARS["beat_random_points"]),
        "beats_tuned_heuristic_by_1_point_at_matched_cost": {
            **by_points(_paired(learned, per_frame[heuristic]), BARS["beat_heuristic_points"]),
            "heuristic_cost_ms": per_frame[heuristic]["mean_cost_ms"], "learned_cost_ms": learned["mean_cost_ms"]},
    }
    for setting, check in result["_label_check"].items():
        # the labels' check: their budget oracle at the tuned heuristic's own cost beats the heuristic
        paired = _paired(check["oracle"], check["heuristic"])
        bars[f"label_budget_oracle_beats_heuristic_{setting}"] = {
            **paired, "oracle_map50_95": check["oracle"]["map50_95"], "oracle_cost_ms": check["oracle"]["mean_cost_ms"],
            "heuristic_cost_ms": check["heuristic"]["mean_cost_ms"], "met": paired.get("beats", False)}
    for other, name in (("BC only", "ppo_beats_bc_streaming"), ("always-large", "beats_always_large_streaming")):
        check = _paired(streaming["BC + PPO"], streaming[other])
        bars[name] = {**check, "met": check.get("beats", False)}
    return bars


def _clean(value):
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


COLUMNS = [("map50_95", "mAP50-95"), ("map50", "mAP50"), ("mean_cost_ms", "mean cost (ms)"),
           ("p95_latency_ms", "p95 (ms)"), ("p99_latency_ms", "p99 (ms)"), ("router_overhead_ms", "router overhead (ms)"),
           ("mix", "mix nano / small / large"), ("gap_recovered", "gap recovered"),
           ("switches_per_100_frames", "switches / 100 frames"), ("kl_from_bc", "KL from BC")]


def _cell(key: str, row: dict) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    if key == "mix":
        return " / ".join(f"{100 * value[t]:.0f}%" for t in TIERS)
    if key == "gap_recovered":
        return f"{100 * value:.0f}%"
    if key == "map50_95" and "map50_95_ci" in row:
        return f"{value:.1f} [{row['map50_95_ci'][0]:.1f}, {row['map50_95_ci'][1]:.1f}]"
    return f"{value:.2f}" if key in ("router_overhead_ms", "kl_from_bc") else f"{value:.1f}"


def _weights_text(result: dict) -> str:
    def listed(row: dict) -> str:
        found = row.get("cost_weights") or []
        return "the policy's own" if not found or None in found else " / ".join(f"{w:.3f}" for w in found)

    per_frame, streaming = result["settings"]["per_frame"], result["settings"]["streaming"]
    return ("Operating points (cost weight per seed, the node's `routing.cost_weight`): per frame, each learned "
            "policy's weight calibrated on validation to the cost bar, BC only " + listed(per_frame["BC only"]) +
            ", BC + PPO " + listed(per_frame["BC + PPO"]) + "; streaming, the policy file's own weight (the node's "
            "default), BC only " + listed(streaming["BC only"]) + ", BC + PPO " + listed(streaming["BC + PPO"]) + ".")


def markdown(result: dict) -> str:
    lines = ["# Routing report", "",
             f"Test split: {result['test_frames']} frames in {result['test_sequences']} sequences; truth: "
             f"{result['truth']}. Costs: {result['device']} (" + ", ".join(f"{t} {m:.1f} ms" for t, m in
                                                                             result["tier_cost_ms"].items()) +
             f"). Labels' lambda = {result['lambda']:g} (chosen on validation by the bc stage). Learned "
             f"rows and random: mean of {result['seeds']} seeds; [95% bootstrap interval over sequences].", "",
             _weights_text(result), ""]
    for setting, rows in result["settings"].items():
        lines += [f"## {'Per frame' if setting == 'per_frame' else 'Streaming (30 Hz, the node: one worker, newest frame, outputs stand until the next)'}",
                  "", "| row | " + " | ".join(label for _, label in COLUMNS) + " |",
                  "|---" * (len(COLUMNS) + 1) + "|"]
        for name, row in rows.items():
            lines.append(f"| {name} | " + " | ".join(_cell(key, row) for key, _ in COLUMNS) + " |")
        lines.append("")
    tuned = []
    for setting, rows in result["settings"].items():
        heuristic = rows["heuristic (tuned, matched cost)"]
        if "interpolation" in heuristic:
            i = heuristic["interpolation"]
            tuned.append(f"{setting.replace('_', ' ')}: no rule within 5 %, so its curve is read at the learned "
                         f"cost between {i['cheaper']} ({i['weight_of_cheaper']:.0%}) and {i['dearer']}")
        else:
            tuned.append(f"{setting.replace('_', ' ')}: {heuristic.get('thresholds')}")
    lines += ["The heuristic's thresholds, chosen by validation quality among the rules within 5 % of the learned "
              "policy's test cost: "
              + "; ".join(tuned) + ". The budget oracle equals the per-frame oracle "
              "when that already fits the budget; streaming, the oracles use the streaming labels (each tier scored on "
              "the frame its output lands on, ceil(cost x 30 Hz) frames later). Gap recovered is measured against the same setting's always-nano and "
              "always-large. Streaming, cost is the worker's busy time over wall time (at most 33.3 ms per frame at "
              "30 Hz); every frame is scored with the output standing when it arrives, so a slow tier pays in stale "
              "and missing detections. Differences carry paired 95 % intervals (the same sequence resamples for both "
              "rows); beats = the interval excludes 0.", "",
              "## Bars (BC + PPO; per frame except the streaming comparisons)", ""]

    def show(value) -> str:
        if isinstance(value, list):
            return "[" + ", ".join(show(v) for v in value) + "]"
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    for name, bar in result["bars"].items():
        detail = ", ".join(f"{k} {show(v)}" for k, v in bar.items() if k != "met")
        lines.append(f"- {name.replace('_', ' ')}: **{'met' if bar['met'] else 'NOT met'}** ({detail})")
    # under --truth reference a scene's objects are what the reference (the large tier or --teacher) found in it
    counted = "objects" if not str(result["truth"]).startswith("reference") else "detections of the truth's reference"
    lines += ["", "## BC + PPO routing by scene complexity (seed 0, per frame)", "",
              f"| scene ({counted}) | frames | nano % | small % | large % |", "|---|---|---|---|---|"]
    for regime, counts in result["routing_by_regime"].items():
        n = sum(counts.values())
        lines.append(f"| {regime} | {n} | " + " | ".join(f"{100 * counts[t] / max(n, 1):.0f}" for t in TIERS) + " |")
    c = result["classifier"]
    lines += ["", f"Classifier (BC) accuracy against the per-frame optimal tiers on test: {c['bc_accuracy']:.3f}; "
              f"always the router split's majority class ({c.get('majority_class', '?')}): "
              f"{c['majority_class_accuracy']:.3f}; random at the router split's label prior: "
              f"{c['prior_matched_random_accuracy']:.3f}.",
              "", "![cost against accuracy](routing_curve.png)", ""]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for row in ("per-frame oracle", "BC only"):
        points = sorted((p["mean_cost_ms"], p["map50_95"]) for p in result["sweep"] if p["row"] == row)
        if points:
            axis.plot(*zip(*points), marker="o", label=f"{row} (lambda sweep)")
    markers = itertools.cycle("s^vDPX*h")
    for name, row in result["settings"]["per_frame"].items():
        axis.scatter(row["mean_cost_ms"], row["map50_95"], marker=next(markers), s=60, label=name, zorder=3)
    axis.set_xlabel(f"mean cost per frame (ms)\n{result['device']}", fontsize=8)
    axis.set_ylabel("mAP50-95 (test split)")
    axis.set_title("Cost against accuracy, per frame")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write(result: dict, reports: Path) -> list[Path]:
    reports.mkdir(parents=True, exist_ok=True)
    clean = _clean(result)
    json_path = reports / "routing.json"
    json_path.write_text(json.dumps(clean, indent=2) + "\n")
    md_path = reports / "routing.md"
    md_path.write_text(markdown(clean))
    png_path = plot(clean, reports / "routing_curve.png")
    print(md_path.read_text())
    return [json_path, md_path, png_path]
