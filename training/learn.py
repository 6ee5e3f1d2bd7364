"""Stages 4-6: behavioural cloning (PyTorch MLP), PPO fine-tuning (stable-baselines3), export to ONNX.

BC regresses each tier's per-frame value gain over nano on every frame under each tier's previous output
(`context_dataset`), and a cost weight calibrated to a budget turns the values into a choice; or it
classifies the per-frame optimal tier at the operating point lambda from examples whose context comes from
the labels' own previous choices (`expert_dataset`). PPO then fine-tunes the same network in a streaming environment
where the context comes from the agent's choices and slow tiers make later frames drop (their stale
detections are scored), so a choice has consequences beyond its frame.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from adaptive_perception.detector import TIERS
from adaptive_perception.features import FEATURE_SIZE, IMAGE_FEATURES, RoutingContext
from adaptive_perception.policy import ValueHead
from adaptive_perception.progress import progress as progress_bar
from adaptive_perception.training.labels import Costs, optimal_tiers
from adaptive_perception.training.simulate import Split, Stream, rollout

HIDDEN = (128, 64)
POLICY_INPUTS = ("context", "all")
VALUE_TEMPERATURE = 0.05  # tier_values policies: softmax temperature of the scores (label units) PPO samples from


@dataclass
class Network:
    """An MLP policy as numpy arrays: layers (W (in, out), b) with ReLU between, and the input normalisation.
    With a `head` the outputs are tier values and the choice is argmax(values - head.cost_weight x head.tier_cost)."""

    layers: list[tuple[np.ndarray, np.ndarray]]
    mean: np.ndarray
    std: np.ndarray
    head: ValueHead | None = None

    def scores(self, x: np.ndarray) -> np.ndarray:
        """(N, 3) what the choice maximises: the logits, or values - cost_weight x tier_cost."""
        out = self.logits(x)
        return out if self.head is None else out - self.head.cost_weight * self.head.tier_cost[None, :]

    def logits(self, x: np.ndarray) -> np.ndarray:
        h = (x - self.mean) / self.std
        for i, (w, b) in enumerate(self.layers):
            h = h @ w + b
            if i < len(self.layers) - 1:
                h = np.maximum(h, 0)
        return h

    def choose(self, _frame: int, observation: np.ndarray, _context) -> int:
        """A simulator chooser: the most probable tier for one observation."""
        return int(np.argmax(self.scores(observation[None, :].astype(np.float64))[0]))

    def with_weight(self, cost_weight: float) -> "Network":
        assert self.head is not None
        return replace(self, head=replace(self.head, cost_weight=float(cost_weight)))

    def save(self, path: Path) -> Path:
        arrays = {"mean": self.mean, "std": self.std}
        if self.head is not None:
            arrays.update(tier_cost=self.head.tier_cost, head=np.array([self.head.cost_weight, self.head.temperature]))
        for i, (w, b) in enumerate(self.layers):
            arrays[f"w{i}"], arrays[f"b{i}"] = w, b
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **arrays)
        return path

    @staticmethod
    def load(path: Path) -> "Network":
        data = np.load(path)
        count = sum(1 for k in data.files if k.startswith("w"))
        head = ValueHead(data["tier_cost"], float(data["head"][0]), float(data["head"][1])) if "head" in data.files else None
        return Network([(data[f"w{i}"], data[f"b{i}"]) for i in range(count)], data["mean"], data["std"], head)


def expert_dataset(split: Split, costs: Costs, lam: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(observations, optimal tiers, utilities) along the per-frame optimal routing (its context included)."""
    utility = split.quality[:, :, 0] - lam * costs.relative[None, :]
    labels = optimal_tiers(split.quality[:, :, 0], costs, lam)
    observations = np.zeros((len(split.profile), FEATURE_SIZE), np.float32)

    def expert(frame: int, observation: np.ndarray, _context) -> int:
        observations[frame] = observation
        return int(labels[frame])

    rollout(split, costs, expert, streaming=False)
    return observations, labels, utility.astype(np.float32)


def context_dataset(split: Split) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(observations, best tiers, per-tier quality) with every frame under each context a router can meet on it:
    the previous frame's output from each tier (a sequence's first frame: no output yet). A frame's per-frame
    quality does not depend on the context, so the targets are exact for all three, and the learner sees the
    contexts its own routing will produce (a cheap routing's nano counts) instead of only the labels' own choices
    (which DAgger would approximate by rolling the learner out)."""
    quality = split.quality[:, :, 0]
    observations, frames = [], []
    for sequence in split.profile.sequences():
        observations.append(split.observation(int(sequence[0]), RoutingContext()))
        frames.append(int(sequence[0]))
        for previous, frame in zip(sequence[:-1], sequence[1:]):
            for tier in range(len(TIERS)):
                observations.append(split.observation(int(frame), split.context_after(int(previous), tier)))
                frames.append(int(frame))
    utility = quality[np.asarray(frames)].astype(np.float32)
    return np.asarray(observations, np.float32), np.argmax(utility, axis=1), utility


def normalisation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per feature; a feature constant in training gets std 1 (so it cannot blow up later)."""
    std = x.std(axis=0)
    return x.mean(axis=0).astype(np.float32), np.where(std < 1e-3, 1.0, std).astype(np.float32)


def _torch_mlp(seed: int):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    sizes = (FEATURE_SIZE, *HIDDEN, len(TIERS))
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _linears(model) -> list:
    from torch import nn

    return [m for m in model if isinstance(m, nn.Linear)]


def _to_network(linears: list, mean: np.ndarray, std: np.ndarray) -> Network:
    """torch Linear layers (weight (out, in)) -> Network layers (W (in, out), b)."""
    return Network([(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy()) for m in linears], mean, std)


def _load_layers(linears: list, layers: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Network layers -> torch Linear layers, in place."""
    import torch

    with torch.no_grad():
        for module, (w, b) in zip(linears, layers):
            module.weight.copy_(torch.tensor(w.T))
            module.bias.copy_(torch.tensor(b))


def train_bc(train: tuple[np.ndarray, np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray, np.ndarray],
             seed: int, loss: str = "balanced", max_epochs: int = 200, patience: int = 15,
             progress: bool = True, inputs: str = "all") -> tuple[Network, dict]:
    """Fit the MLP on (x, label, utility); `balanced`: class-balanced cross-entropy, `regret`: expected
    utility lost against the best tier (cost-sensitive), `values`: mean squared error of each tier's value
    gain over nano (utility - utility of nano; give utilities at lambda 0, the cost weight is calibrated after).
    `inputs`: `all` 1028 features, or `context`: the 4 context features only (the image features' first-layer
    weights are zero, so the policy file still takes all 1028). Early stopping on the validation loss."""
    import torch

    if inputs not in POLICY_INPUTS:
        raise ValueError(f"inputs {inputs!r}: use one of {POLICY_INPUTS}")
    x_train, y_train, u_train = train
    x_val, y_val, u_val = val
    mean, std = normalisation(x_train)
    model = _torch_mlp(seed)
    counts = np.bincount(y_train, minlength=len(TIERS)).astype(np.float32)
    weights = torch.tensor(len(y_train) / (len(TIERS) * np.maximum(counts, 1)))

    def tensors(x, y, u):
        target = u - u[:, :1] if loss == "values" else u.max(axis=1, keepdims=True) - u
        normalised = (x - mean) / std
        if inputs == "context":
            normalised[:, :IMAGE_FEATURES] = 0.0
        return torch.tensor(normalised), torch.tensor(y, dtype=torch.long), torch.tensor(target)

    def objective(logits, y, target):
        if loss == "values":
            return torch.nn.functional.mse_loss(logits, target)
        if loss == "regret":
            return (torch.softmax(logits, dim=1) * target).sum(dim=1).mean()
        return torch.nn.functional.cross_entropy(logits, y, weight=weights)

    xt, yt, rt = tensors(x_train, y_train, u_train)
    xv, yv, rv = tensors(x_val, y_val, u_val)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    best, best_state, waited, history = float("inf"), None, 0, []
    for epoch in progress_bar(range(max_epochs), desc=f"BC seed {seed}", unit="epoch", enabled=progress):
        model.train()
        for batch in torch.randperm(len(xt), generator=generator).split(256):
            optimiser.zero_grad()
            objective(model(xt[batch]), yt[batch], rt[batch]).backward()
            optimiser.step()
        model.eval()
        with torch.no_grad():
            val_loss = float(objective(model(xv), yv, rv))
            val_acc = float((model(xv).argmax(dim=1) == yv).float().mean())  # values: the cost-free choice
        history.append({"epoch": epoch, "val_loss": val_loss, "val_accuracy": val_acc})
        if val_loss < best - 1e-5:
            best, waited = val_loss, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            waited += 1
            if waited >= patience:
                break
    model.load_state_dict(best_state)
    network = _to_network(_linears(model), mean, std)
    if inputs == "context":
        network.layers[0][0][:IMAGE_FEATURES] = 0.0  # they only ever saw zeros: now exactly what training computed
    return network, {"epochs": len(history), "best_val_loss": best, "history": history}


def calibrate_weight(chooser_at, split: Split, costs: Costs, budget_ms: float, steps: int = 20) -> float:
    """The smallest cost weight whose per-frame routing of `split` by `chooser_at(weight)` (a rollout chooser)
    costs at most `budget_ms` per frame (bisection; the cost falls as the weight rises); 0 when weight 0 fits."""
    def cost(weight: float) -> float:
        return rollout(split, costs, chooser_at(weight), streaming=False).busy_ms / len(split.profile)

    low, high = 0.0, 1.0
    if cost(low) <= budget_ms:
        return low
    while cost(high) > budget_ms and high < 1e4:
        high *= 2
    for _ in range(steps):
        middle = (low + high) / 2
        low, high = (middle, high) if cost(middle) > budget_ms else (low, middle)
    return high


def calibrate_cost_weight(network: Network, split: Split, costs: Costs, budget_ms: float, steps: int = 20) -> Network:
    """The tier-value network at `calibrate_weight`'s weight for its own per-frame routing."""
    network = replace(network, head=ValueHead(costs.relative.astype(np.float32), 0.0, VALUE_TEMPERATURE))
    weight = calibrate_weight(lambda w: network.with_weight(w).choose, split, costs, budget_ms, steps)
    return network.with_weight(weight)


def make_env(split: Split, costs: Costs, lam: float, network: Network, switch_penalty: float = 0.0,
             inputs: str = "all"):
    """A gymnasium environment over the split's sequences (one episode = one sequence, streaming at 30 Hz);
    with `inputs` `context` the image features are observed as zeros (a context-only policy stays one)."""
    import gymnasium as gym

    class RoutingEnv(gym.Env):
        metadata = {"render_modes": []}

        def __init__(self) -> None:
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (FEATURE_SIZE,), np.float32)
            self.action_space = gym.spaces.Discrete(len(TIERS))
            self.sequences = split.profile.sequences()
            self.stream: Stream | None = None
            self.previous = -1

        def _observe(self) -> np.ndarray:
            observation = ((self.stream.observation() - network.mean) / network.std).astype(np.float32)
            if inputs == "context":
                observation[:IMAGE_FEATURES] = 0.0
            return observation

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            frames = self.sequences[int(self.np_random.integers(len(self.sequences)))]
            self.stream, self.previous = Stream(split, frames, costs, streaming=True), -1
            return self._observe(), {}

        def step(self, action):
            tier = int(action)
            covered, quality = self.stream.step(tier)
            reward = quality - lam * costs.relative[tier] - switch_penalty * float(0 <= self.previous != tier)
            self.previous = tier
            done = self.stream.done
            observation = np.zeros(FEATURE_SIZE, np.float32) if done else self._observe()
            return observation, float(reward), done, False, {"frames": len(covered)}

    return RoutingEnv()


def _as_logits(network: Network) -> list[tuple[np.ndarray, np.ndarray]]:
    """A tier-value network's layers rewritten so its outputs are its scores / temperature (PPO's logits)."""
    if network.head is None:
        return network.layers
    h = network.head
    w, b = network.layers[-1]
    return [*network.layers[:-1], (w / h.temperature, (b - h.cost_weight * h.tier_cost) / h.temperature)]


def _from_logits(layers: list[tuple[np.ndarray, np.ndarray]], like: Network) -> Network:
    """The inverse of `_as_logits`: PPO's actor back as a network of the same kind as `like`."""
    h = like.head
    if h is None:
        return replace(like, layers=layers)
    w, b = layers[-1]
    return replace(like, layers=[*layers[:-1], (w * h.temperature, b * h.temperature + h.cost_weight * h.tier_cost)])


def train_ppo(split: Split, costs: Costs, lam: float, bc: Network, seed: int, steps: int,
              switch_penalty: float = 0.0, critic_warmup: int = 0, inputs: str = "all") -> tuple[Network, dict]:
    """stable-baselines3 PPO whose actor starts as the BC network (same layers, same normalisation; a tier-value
    network's scores / temperature are the logits, and the reward's cost weight is its own). The first
    `critic_warmup` steps train the critic alone (the actor frozen): a random critic's advantages would otherwise
    push the BC actor around before they mean anything."""
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.logger import Logger

    if bc.head is not None:
        lam = bc.head.cost_weight
    env = make_env(split, costs, lam, bc, switch_penalty, inputs)
    model = PPO("MlpPolicy", env, seed=seed, n_steps=1024, batch_size=256, n_epochs=4, learning_rate=1e-4,
                clip_range=0.1, gamma=0.99, ent_coef=0.0, verbose=0, device="cpu",
                policy_kwargs={"net_arch": {"pi": list(HIDDEN), "vf": list(HIDDEN)}, "activation_fn": torch.nn.ReLU})
    model.set_logger(Logger(None, []))  # nothing written: without one, every learn() left an empty SB3-<time> in /tmp
    actor = _linears(model.policy.mlp_extractor.policy_net) + [model.policy.action_net]
    _load_layers(actor, _as_logits(bc))

    bar = progress_bar(total=steps, desc=f"PPO seed {seed}", unit="step")

    class Progress(BaseCallback):
        def _on_step(self) -> bool:
            bar.update(1)
            return True

    warmup = min(max(critic_warmup, 0), steps)
    if warmup:
        for module in actor:
            module.requires_grad_(False)  # no gradient: Adam leaves the actor as BC made it
        model.learn(total_timesteps=warmup, callback=Progress())
        for module in actor:
            module.requires_grad_(True)
    if steps > warmup:
        model.learn(total_timesteps=steps - warmup, callback=Progress(), reset_num_timesteps=not warmup)
    bar.close()
    return _from_logits(_to_network(actor, bc.mean, bc.std).layers, bc), {"steps": steps, "critic_warmup": warmup}


def export(network: Network, path: Path, policy_id: str, description: str,
           tier_digests: dict[str, str] | None = None, drift_reference=None) -> Path:
    """Write the network as a policy ONNX and check onnxruntime's logits against PyTorch's within 1e-5.
    `drift_reference(policy) -> DriftReference | None`, if given, is computed with the written policy and added."""
    import torch
    from adaptive_perception.training.policy_export import write_policy

    from adaptive_perception.errors import AdaptivePerceptionError
    from adaptive_perception.policy import Policy

    write_policy(path, network.layers, network.mean, network.std, policy_id, description, tier_digests, network.head)
    policy = Policy(path)
    reference = drift_reference(policy) if drift_reference is not None else None
    if reference is not None:
        write_policy(path, network.layers, network.mean, network.std, policy_id, description, tier_digests,
                     network.head, reference.to_json())
        policy = Policy(path)
    probe = np.random.default_rng(0).normal(network.mean, network.std, (64, FEATURE_SIZE)).astype(np.float32)
    deployed = np.stack([policy.logits(x) for x in probe])
    model = _torch_mlp(0)
    _load_layers(_linears(model), network.layers)
    with torch.no_grad():
        reference = model(torch.tensor((probe - network.mean) / network.std)).numpy()
    error = float(np.abs(deployed - reference).max() / max(1.0, np.abs(reference).max()))
    if error > 1e-5:
        raise AdaptivePerceptionError(f"exported policy {path} disagrees with the trained network ({error:.2e} > 1e-5)")
    return path
