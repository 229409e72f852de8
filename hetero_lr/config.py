"""Typed configuration for one training run: the single source of defaults.

Every default names its source. Presets (`PRESETS`) are override dictionaries on top of these
dataclasses, and study files in `studies/` hold only overrides and search spaces, never a copy
of the defaults. Unknown keys are errors everywhere (`from_dict`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any, Literal, TypeVar, get_args, get_type_hints


@dataclass(frozen=True)
class EnvConfig:
    """Environment and evaluation protocol.

    Atari defaults follow Machado et al. (2018): sticky actions 0.25, minimal action set,
    frame skip 4 with max-pooling, 84x84 grayscale, 4 stacked frames, no life-loss terminals,
    episodes capped at 108,000 frames (ale-py `ALE/*-v5` registration defaults).
    """

    id: str = "ALE/Breakout-v5"
    """Environment id: `ALE/<Game>-v5`, `MinAtar/<Game>-v1`, `CartPole-v1` or `Acrobot-v1`."""
    num_envs: int = 8
    """Parallel environment lanes for acting (ale-py's native vector env on Atari)."""
    sticky_actions: float = 0.25
    """Probability of repeating the previous action (Machado et al. 2018; 0 for Atari 100k)."""
    full_action_space: bool = False
    """Use all 18 actions instead of the game's minimal set."""
    frame_skip: int = 4
    """Emulator frames per agent step (with max-pooling over the last two)."""
    frame_stack: int = 4
    """Frames stacked into one observation (Atari only)."""
    screen_size: int = 84
    """Side of the square grayscale frame (Atari only)."""
    noop_max: int = 30
    """Up to this many no-op actions after reset (Mnih et al. 2015)."""
    max_episode_frames: int = 108_000
    """Episode cap in emulator frames (27,000 agent steps; Machado et al. 2018)."""
    terminal_on_life_loss: bool = False
    """Treat a lost life as terminal for learning (not recommended by Machado et al. 2018)."""
    clip_rewards: bool = True
    """Clip rewards to [-1, 1] for learning only; reported returns stay raw game scores."""


@dataclass(frozen=True)
class AgentConfig:
    """DQN / Rainbow-lite learner. Defaults: Dopamine JAX DQN (`dqn.gin`), except the loss."""

    gamma: float = 0.99
    """Discount factor."""
    n_step: int = 1
    """Multi-step return length (Rainbow: 3)."""
    batch_size: int = 32
    """Transitions per gradient step."""
    lr: float = 6.25e-5
    """Online Adam learning rate (Dopamine `dqn.gin` / `rainbow.gin`)."""
    adam_eps: float = 1.5e-4
    """Adam epsilon (Dopamine `dqn.gin` / `rainbow.gin`)."""
    max_grad_norm: float | None = 10.0
    """Online gradient-norm clip (SB3 DQN default 10); None disables."""
    loss: Literal["mse", "huber"] = "huber"
    """TD loss for scalar heads (Nature DQN / SB3: Huber; Dopamine JAX: MSE)."""
    double: bool = False
    """Double-DQN action selection by the online net (van Hasselt et al. 2016)."""
    dueling: bool = False
    """Dueling head (Wang et al. 2016)."""
    categorical: bool = False
    """C51 distributional head and loss (Bellemare et al. 2017)."""
    num_atoms: int = 51
    """Atoms of the categorical support (C51)."""
    v_min: float = -10.0
    """Lowest atom of the categorical support."""
    v_max: float = 10.0
    """Highest atom of the categorical support."""
    prioritized: bool = False
    """Prioritised replay (Schaul et al. 2016)."""
    priority_alpha: float = 0.5
    """Priority exponent (Dopamine Rainbow samples with priority^0.5)."""
    priority_beta: float = 0.5
    """Importance-sampling exponent (Dopamine Rainbow keeps it fixed at 0.5)."""
    buffer_size: int = 1_000_000
    """Replay capacity in transitions."""
    learning_starts: int = 20_000
    """Agent steps of random-policy data before learning (Dopamine `min_replay_history`)."""
    train_freq: int = 4
    """Agent steps per online (Lookahead) gradient step (Dopamine `update_period`)."""
    epsilon_start: float = 1.0
    """Initial exploration rate."""
    epsilon_end: float = 0.01
    """Final exploration rate (Dopamine `epsilon_train`)."""
    epsilon_decay_steps: int = 250_000
    """Agent steps of linear epsilon decay (Dopamine `epsilon_decay_period`)."""
    eval_epsilon: float = 0.001
    """Exploration rate of evaluation episodes (Dopamine `epsilon_eval`)."""


@dataclass(frozen=True)
class TargetConfig:
    """How the target network follows the online one (see `hetero_lr.pair`)."""

    rule: Literal["replicate", "hardcopy", "polyak"] = "replicate"
    """Target-update rule; hardcopy and polyak need identical architectures."""
    kr: int = 500
    """Replicate gradient steps on the target per `kl` Lookahead (online) steps. Ours: 500 per
    2,000 costs what 1 per 4 does, and keeps the target fixed for a Dopamine target period
    (8,000 agent steps); KR/KL = 1/4 diverged (Q > 300) on Breakout by 75k steps here."""
    kl: int = 2_000
    """Lookahead (online) gradient steps between Replicate phases."""
    lr: float = 1e-4
    """Learning rate of the target's own optimizer."""
    variant: Literal["all_actions", "taken_action"] = "all_actions"
    """Regress all actions' outputs, or only the replayed action's."""
    loss: Literal["mse", "huber", "cross_entropy"] = "mse"
    """Replicate loss; cross_entropy needs categorical heads."""
    schedule: Literal["block", "interleaved"] = "block"
    """Run `kr` steps after every `kl` online steps, or spread them evenly."""
    optimizer: Literal["adam", "sgd"] = "adam"
    """Optimizer of the target network."""
    period: int = 2_000
    """HardCopy: online gradient steps between copies (Dopamine's 8,000 agent steps at an
    update every 4 steps)."""
    tau: float = 0.005
    """Polyak: blend factor per online gradient step (BBF: 0.005)."""


@dataclass(frozen=True)
class TrainConfig:
    """One training run."""

    pair: str = "nature:nature"
    """Network pair `ONLINE:TARGET`, e.g. `impala:nature` or `impala:timm/resnet18`."""
    online_options: dict[str, Any] = field(default_factory=dict)
    """Keyword options for the online network's builder (e.g. `{"width": 2}`)."""
    target_options: dict[str, Any] = field(default_factory=dict)
    """Keyword options for the target network's builder."""
    env: EnvConfig = field(default_factory=EnvConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    steps: int = 100_000
    """Agent steps (environment steps summed over lanes; 1 step = `frame_skip` frames)."""
    seed: int = 0
    """Seeds networks, replay sampling, exploration and environments."""
    eval_every: int = 25_000
    """Agent steps between evaluations (and at the end of the run)."""
    eval_episodes: int = 10
    """Episodes per evaluation."""
    eval_max_steps: int = 27_000
    """Cap on agent steps per evaluation episode (108,000 frames / 4)."""
    log_every: int = 1_000
    """Agent steps between rows of averaged training metrics."""
    checkpoint_every: int = 50_000
    """Agent steps between checkpoints (when an output folder is set); 0 disables."""
    device: str = "auto"
    """`auto` (CUDA where present), `cpu`, `cuda` or `cuda:N`."""
    channels_last: bool = True
    """Use channels-last memory for image networks (about 2x faster for IMPALA on CPU)."""
    compile: bool = False
    """`torch.compile` both networks (pays a one-off compile time)."""
    bf16: bool = False
    """bf16 autocast for forward passes on CUDA."""
    threads: int = 0
    """Torch intra-op threads (0: leave torch's default)."""


C = TypeVar("C")

PRESETS: dict[str, dict[str, Any]] = {
    # Nature DQN as run by Dopamine (`dopamine/jax/agents/dqn/configs/dqn.gin`): Adam 6.25e-5,
    # eps 1.5e-4, 1M replay, 20k warm-up, update every 4, target every 8,000, epsilon to 0.01
    # over 250k steps; the loss is Huber as in the Nature paper.
    "dqn": {},
    # Dopamine's Rainbow (`rainbow.gin`): C51 with 51 atoms in [-10, 10], 3-step returns,
    # prioritised replay (priority^0.5, fixed beta 0.5), Adam 6.25e-5 / eps 1.5e-4.
    "rainbow": {
        "agent": {
            "categorical": True,
            "n_step": 3,
            "prioritized": True,
            "double": True,
            "dueling": True,
        },
        "target": {"loss": "cross_entropy"},
    },
    # Data-efficient Rainbow for Atari 100k (van Hasselt et al. 2019; Dopamine
    # `labs/atari_100k/configs/DER.gin`): no sticky actions, life-loss terminals, 10-step
    # returns, an update every step after 1,600 steps, target every 2,000 updates, Adam 1e-4.
    "der": {
        "env": {"sticky_actions": 0.0, "terminal_on_life_loss": True, "num_envs": 1},
        "agent": {
            "categorical": True,
            "dueling": True,
            "double": True,
            "n_step": 10,
            "prioritized": True,
            "lr": 1e-4,
            "adam_eps": 1.5e-4,
            "train_freq": 1,
            "learning_starts": 1_600,
            "epsilon_decay_steps": 2_000,
            "buffer_size": 100_000,
        },
        "target": {"period": 2_000, "loss": "cross_entropy"},
        "steps": 100_000,
        "eval_every": 100_000,
        "eval_episodes": 100,
    },
    # MinAtar (Young & Tian 2019, `examples/dqn.py`): batch 32, replay 100k, warm-up 5,000,
    # an update every step, target every 1,000, epsilon 1 -> 0.1 over 100k steps, gamma 0.99,
    # sticky actions 0.1 (MinAtar's default); RMSProp 2.5e-4 in the paper, Adam here.
    "minatar": {
        "env": {"id": "MinAtar/Breakout-v1", "num_envs": 1, "sticky_actions": 0.1},
        "agent": {
            "buffer_size": 100_000,
            "learning_starts": 5_000,
            "train_freq": 1,
            "epsilon_end": 0.1,
            "epsilon_decay_steps": 100_000,
            "lr": 2.5e-4,
            "adam_eps": 3.125e-4,
        },
        "target": {"period": 1_000},
        "pair": "minatar:minatar",
        "steps": 1_000_000,
        "eval_every": 50_000,
    },
    # CartPole / Acrobot for quick checks, after CleanRL `dqn.py` (Adam 2.5e-4, batch 128, MSE,
    # epsilon to 0.05; 500k steps with an update every 10) compressed to 50k steps with an
    # update every step: the same ~49k updates. Replicate KR/KL = 1/1 with the target at the
    # online learning rate is ours (lr 1e-3 for both diverged here).
    "cartpole": {
        "env": {"id": "CartPole-v1", "num_envs": 1, "clip_rewards": False},
        "pair": "mlp:mlp",
        "agent": {
            "buffer_size": 50_000,
            "learning_starts": 1_000,
            "train_freq": 1,
            "batch_size": 128,
            "lr": 2.5e-4,
            "adam_eps": 1e-8,
            "loss": "mse",
            "epsilon_end": 0.05,
            "epsilon_decay_steps": 10_000,
            "double": True,
        },
        "target": {"period": 500, "kr": 1, "kl": 1, "lr": 2.5e-4},
        "steps": 50_000,
        "eval_every": 5_000,
        "eval_episodes": 10,
    },
}


def _check_literal(cls: type, name: str, value: Any, hint: Any) -> None:
    choices = get_args(hint)
    if getattr(hint, "__origin__", None) is Literal and value not in choices:
        raise ValueError(
            f"{cls.__name__}.{name}={value!r} is not one of {', '.join(map(repr, choices))}"
        )


def from_dict(cls: type[C], data: Mapping[str, Any], *, base: C | None = None) -> C:
    """Build (or override `base` of) a config dataclass from a nested mapping.

    Raises:
        ValueError: on an unknown key (naming it and the accepted ones) or a bad Literal value.
    """
    base = cls() if base is None else base
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    changes: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in names:
            raise ValueError(
                f"unknown {cls.__name__} key {key!r}; accepted: {', '.join(sorted(names))}"
            )
        current = getattr(base, name)
        if is_dataclass(current) and isinstance(value, Mapping):
            value = from_dict(type(current), value, base=current)
        else:
            _check_literal(cls, name, value, hints[name])
        changes[name] = value
    return replace(base, **changes)


def apply_preset(name: str, base: TrainConfig | None = None) -> TrainConfig:
    """Return `base` (default: defaults) with the named preset's overrides applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; accepted: {', '.join(PRESETS)}")
    return from_dict(TrainConfig, PRESETS[name], base=base)


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a config into `{"agent.lr": 6.25e-05, ...}` (dict options as JSON strings)."""
    out: dict[str, Any] = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        key = f"{prefix}{f.name}"
        if is_dataclass(value):
            out.update(flatten(value, key + "."))
        elif isinstance(value, dict):
            out[key] = json.dumps(value, sort_keys=True)
        else:
            out[key] = value
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain-dict form of a config (round-trips through `from_dict`)."""
    return dataclasses.asdict(cfg)
