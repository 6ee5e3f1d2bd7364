"""The router: one tier per frame from the routing features, by one of four modes.

| mode | rule |
|---|---|
| `learned` | the policy's most probable tier (with hysteresis: stay on the previous tier unless the best tier's probability beats it by more than `hysteresis`); a `tier_values` policy's choice is its largest value - `cost_weight` x tier cost |
| `fixed:<tier>` | always that tier |
| `heuristic` | the previous routed frame's detection count n: n < low -> nano, n < high -> small, else large; the first frame of a camera goes to large |
| `random` | a seeded draw from a given tier mix (the baseline for "is the policy better than chance at its mix?") |

All three tiers stay loaded, so switching costs nothing. The router keeps no per-camera state: what it
needs about the previous frame (count, tier) comes in the RoutingContext.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from adaptive_perception.detector import TIERS
from adaptive_perception.errors import ConfigError
from adaptive_perception.features import (CONTEXT_FEATURES, FEATURE_SIZE, IMAGE_FEATURES, RoutingContext,
                                          add_image_features, check_rgb, routing_features)
from adaptive_perception.policy import Policy

FIXED_PREFIX = "fixed:"
MODES: tuple[str, ...] = ("learned", "heuristic", "random", *(FIXED_PREFIX + t for t in TIERS))


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"routing mode '{mode}' is unknown; use one of {', '.join(MODES)}")
    return mode


MAX_COST_WEIGHT = 1e6  # far past always-nano for any tier costs; 1e308 overflowed the scores into NaN
MAX_HYSTERESIS = 0.99  # a probability margin; at 1 no tier could ever win over the previous one
LEARNED_AT = "learned:"  # learned:<w>, in the demo's and the benchmarks' mode lists: learned at routing.cost_weight w


def weighted_mode(mode: str) -> tuple[str, float | None]:
    """(routing mode, cost weight) of a mode as the demo and the benchmarks name them: `learned:<w>` is the learned
    mode at `routing.cost_weight` w; any other name is a routing mode with no weight of its own (None). Refused,
    naming it, when the mode is unknown or w is not a finite number >= 0."""
    if not mode.startswith(LEARNED_AT):
        return check_mode(mode), None
    try:
        weight = float(mode[len(LEARNED_AT):])
    except ValueError:
        weight = float("nan")
    if not 0.0 <= weight < float("inf"):
        raise ConfigError(f"mode '{mode}': the cost weight after {LEARNED_AT} must be a finite number >= 0, "
                          "e.g. learned:0.1")
    return "learned", weight


def tiers_needed(mode: str) -> tuple[str, ...]:
    """The tiers a mode may pick (all three except in a fixed mode)."""
    return (mode[len(FIXED_PREFIX):],) if mode.startswith(FIXED_PREFIX) else TIERS


@dataclass(frozen=True)
class RouterSettings:
    """Parameters of the rule-based modes and of the learned mode's hysteresis."""

    heuristic_thresholds: tuple[int, int] = (3, 8)  # (low, high) detection counts
    random_mix: tuple[float, float, float] = (1.0, 1.0, 1.0)  # weights of nano, small, large (normalised)
    random_seed: int = 0
    hysteresis: float = 0.0  # probability margin a new tier needs over the previous one; 0 = off
    cost_weight: float = -1.0  # tier_values policies: weight of a tier's cost against its value; < 0 = the policy's own

    def validate(self) -> "RouterSettings":
        if len(self.heuristic_thresholds) != 2:
            raise ConfigError(f"routing.heuristic_thresholds {list(self.heuristic_thresholds)} must be two counts "
                              "[low, high], e.g. [3, 8]")
        low, high = self.heuristic_thresholds
        if not 0 <= low <= high:
            raise ConfigError(f"routing.heuristic_thresholds {list(self.heuristic_thresholds)} must be "
                              "[low, high] with 0 <= low <= high, e.g. [3, 8]")
        mix = np.asarray(self.random_mix, np.float64)
        if mix.shape != (len(TIERS),) or not np.isfinite(mix).all() or (mix < 0).any() or mix.sum() <= 0:
            raise ConfigError(f"routing.random_mix {list(self.random_mix)} must be {len(TIERS)} non-negative "
                              "weights for nano, small, large with a positive sum, e.g. [0.5, 0.3, 0.2]")
        if not 0 <= self.random_seed < 2**63:
            raise ConfigError(f"routing.random_seed {self.random_seed} must be >= 0")
        if not 0.0 <= self.hysteresis <= MAX_HYSTERESIS:
            raise ConfigError(f"routing.hysteresis {self.hysteresis} must lie in [0, {MAX_HYSTERESIS}]")
        if not np.isfinite(self.cost_weight) or self.cost_weight > MAX_COST_WEIGHT:
            raise ConfigError(f"routing.cost_weight {self.cost_weight} must be a number up to {MAX_COST_WEIGHT:g} "
                              "(negative: the policy's own)")
        return self


@dataclass(frozen=True)
class Decision:
    tier: int  # index into TIERS
    probabilities: np.ndarray  # (3,) float32: the policy's, the random mix, or one-hot for rules
    mode: str
    policy_id: str  # empty unless a policy decided

    @property
    def tier_name(self) -> str:
        return TIERS[self.tier]


class Routed:
    """One frame routed from its pixels (`Router.route`)."""

    def __init__(self, decision: Decision, features: np.ndarray | None, context: RoutingContext, image_read: bool,
                 feature_ms: float, policy_ms: float) -> None:
        self.decision = decision
        self._features = features  # None until needed where the decision read the context alone
        self._context = context
        self.image_read = image_read  # the decision read the image statistics (computed before it)
        self.feature_ms = feature_ms  # computing the features the decision read
        self.policy_ms = policy_ms  # the decision

    @property
    def features(self) -> np.ndarray:
        """The 1028 routing features; the image statistics are zero unless `image_read` or `complete` added them.
        Built on first use where the decision read only the context: after the tier, not before it."""
        if self._features is None:
            self._features = np.zeros(FEATURE_SIZE, np.float32)
            self._features[IMAGE_FEATURES:] = self._context.vector()
        return self._features

    def complete(self, rgb: np.ndarray) -> float:
        """Fill in the image statistics the decision did not read (for the drift monitor, after the tier);
        returns the milliseconds it took (0 when the decision had read them)."""
        if self.image_read:
            return 0.0
        started = time.perf_counter()
        add_image_features(self.features, rgb)
        return (time.perf_counter() - started) * 1e3


def _one_hot(tier: int) -> np.ndarray:
    out = np.zeros(len(TIERS), np.float32)
    out[tier] = 1.0
    return out


class Router:
    """Mode and policy swap atomically: a decision reads both from one immutable pair."""

    def __init__(self, mode: str, policy: Policy | None, settings: RouterSettings = RouterSettings()) -> None:
        self.settings = settings.validate()
        mix = np.asarray(settings.random_mix, np.float64)
        self._mix = mix / mix.sum()
        self._rng = np.random.default_rng(settings.random_seed)
        self._state: tuple[str, Policy | None] = ("", None)
        self._state = self._checked(check_mode(mode), policy)

    @property
    def mode(self) -> str:
        return self._state[0]

    @property
    def policy(self) -> Policy | None:
        return self._state[1]

    @property
    def policy_id(self) -> str:
        """The policy's id, or empty without a policy."""
        policy = self.policy
        return policy.policy_id if policy is not None else ""

    @staticmethod
    def _checked(mode: str, policy: Policy | None) -> tuple[str, Policy | None]:
        if policy is not None and not isinstance(policy, Policy):
            raise TypeError(f"the router takes a loaded Policy, not {type(policy).__name__} {policy!r}: "
                            "Router(mode, Policy(path))")
        if mode == "learned" and policy is None:
            raise ConfigError("routing mode 'learned' needs a policy; set the `policy` parameter (default "
                              "embedded:policy) or load one with the load_policy service")
        return mode, policy

    def set_mode(self, mode: str) -> None:
        self._state = self._checked(check_mode(mode), self.policy)

    def set_cost_weight(self, weight: float) -> None:
        """Move a tier_values policy's operating point (negative: the policy's own weight), between two frames."""
        self.settings = replace(self.settings, cost_weight=float(weight)).validate()

    def set_policy(self, policy: Policy) -> None:
        self._state = self._checked(self.mode, policy)

    def operating_point(self) -> tuple[str, float | None, float]:
        """(mode, the cost weight in force for a tier_values policy (None for a logits policy or none), hysteresis):
        what `drift.routing_difference` compares with the drift reference's."""
        mode, policy = self._state
        head = policy.value_head if policy is not None else None
        weight = None if head is None else (head.cost_weight if self.settings.cost_weight < 0 else self.settings.cost_weight)
        return mode, weight, self.settings.hysteresis

    def route(self, rgb: np.ndarray, context: RoutingContext) -> Routed:
        """One frame from its pixels: the image statistics are computed before the decision only when it reads
        them (the learned mode with a policy whose `reads_image`); the rules and a context-only policy decide
        from the context alone, and whoever needs the image statistics (the drift monitor) adds them later
        (`Routed.complete`). Mode and policy are read once, so a swap cannot split a frame."""
        state = self._state
        started = time.perf_counter()
        mode, policy = state
        image = mode == "learned" and policy is not None and policy.reads_image
        if image:
            features = inputs = routing_features(rgb, context)
        else:  # the decision reads the context values at most: the 1028 features wait until needed
            check_rgb(rgb)
            features = None
            inputs = context.vector() if mode == "learned" else None
            if inputs is not None and policy.inputs_read.size < CONTEXT_FEATURES:
                inputs = inputs[policy.inputs_read - IMAGE_FEATURES]
        computed = time.perf_counter()
        decision = self._decide(state, inputs, context)
        return Routed(decision, features, context, image, (computed - started) * 1e3,
                      (time.perf_counter() - computed) * 1e3)

    def decide(self, features: np.ndarray, context: RoutingContext) -> Decision:
        """One frame from its 1028 routing features."""
        return self._decide(self._state, features, context)

    def _decide(self, state: tuple[str, Policy | None], features: np.ndarray | None,
                context: RoutingContext) -> Decision:
        """`features`: the 1028, or only the inputs the policy reads (`Policy.logits`); the rules read none."""
        mode, policy = state
        if mode == "learned":
            assert policy is not None
            weight = self.settings.cost_weight
            probabilities = policy.probabilities(features, None if weight < 0 else weight)
            if not np.isfinite(probabilities).all():  # argmax would pick nano, silently
                raise ValueError(f"policy '{policy.policy_id}' gave probabilities {probabilities.tolist()} for this "
                                 f"frame ({int((~np.isfinite(features)).sum())} non-finite inputs): nothing to route by")
            tier = int(np.argmax(probabilities))
            previous = context.prev_tier
            if 0 <= previous < len(TIERS) and probabilities[tier] - probabilities[previous] <= self.settings.hysteresis:
                tier = previous
            return Decision(tier, probabilities, mode, policy.policy_id)
        if mode == "heuristic":
            low, high = self.settings.heuristic_thresholds
            if context.prev_tier < 0:
                tier = len(TIERS) - 1
            else:
                tier = 0 if context.prev_count < low else 1 if context.prev_count < high else 2
            return Decision(tier, _one_hot(tier), mode, "")
        if mode == "random":
            tier = int(self._rng.choice(len(TIERS), p=self._mix))
            return Decision(tier, self._mix.astype(np.float32), mode, "")
        tier = TIERS.index(mode[len(FIXED_PREFIX):])
        return Decision(tier, _one_hot(tier), mode, "")
