"""Typed configuration for one training run: the single source of defaults.

Every default names its source. Presets (`PRESETS`) are override dictionaries on top of these
dataclasses, and study files in `studies/` hold only overrides and search spaces, never a copy
of the defaults. Unknown keys are errors everywhere (`from_dict`).

Every value from outside (`--set`, `--config` files, presets, study files, sampled study
parameters, direct construction) goes through one function, `coerce`, which converts it to the
field's declared type and checks the range declared next to the field with `Annotated`
(`Ge`, `Gt`, `Interval`). A bad value raises a one-line `ValueError` naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from hetero_lr._typed import Ge, Gt, Interval, coerce, coerce_fields, from_dict

__all__ = [
    "PRESETS",
    "AgentConfig",
    "EnvConfig",
    "TargetConfig",
    "TrainConfig",
    "apply_preset",
    "coerce",
    "flatten",
    "from_dict",
    "load_overrides",
    "parse_overrides",
    "to_dict",
]

# --- Settings -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnvConfig:
    """Environment and evaluation protocol.

    Atari defaults follow Machado et al. (2018): sticky actions 0.25, minimal action set,
    frame skip 4 with max-pooling, 84x84 grayscale, 4 stacked frames, no life-loss terminals,
    episodes capped at 108,000 frames (ale-py `ALE/*-v5` registration defaults).
    """

    id: str = "ALE/Breakout-v5"
    """Environment id: `ALE/<Game>-v5`, `MinAtar/<Game>-v1`, `CartPole-v1` or `Acrobot-v1`."""
    num_envs: Annotated[int, Ge(1)] = 8
    """Parallel environment lanes for acting (ale-py's native vector env on Atari)."""
    sticky_actions: Annotated[float, Interval(0, 1)] = 0.25
    """Probability of repeating the previous action (Machado et al. 2018; 0 for Atari 100k)."""
    full_action_space: bool = False
    """Use all 18 actions instead of the game's minimal set."""
    frame_skip: Annotated[int, Ge(1)] = 4
    """Emulator frames per agent step (with max-pooling over the last two)."""
    frame_stack: Annotated[int, Ge(1)] = 4
    """Frames stacked into one observation (Atari only)."""
    screen_size: Annotated[int, Ge(1)] = 84
    """Side of the square grayscale frame (Atari only)."""
    noop_max: Annotated[int, Ge(0)] = 30
    """Up to this many no-op actions after reset (Mnih et al. 2015)."""
    max_episode_frames: Annotated[int, Ge(1)] = 108_000
    """Episode cap in emulator frames (27,000 agent steps; Machado et al. 2018)."""
    terminal_on_life_loss: bool = False
    """Treat a lost life as terminal for learning (not recommended by Machado et al. 2018)."""
    clip_rewards: bool = True
    """Clip rewards to [-1, 1] for learning only; reported returns stay raw game scores."""

    def __post_init__(self) -> None:
        coerce_fields(self)


@dataclass(frozen=True)
class AgentConfig:
    """DQN / Rainbow-lite learner. Defaults: Dopamine JAX DQN (`dqn.gin`), except the loss."""

    gamma: Annotated[float, Interval(0, 1, lo_open=True)] = 0.99
    """Discount factor."""
    n_step: Annotated[int, Ge(1)] = 1
    """Multi-step return length (Rainbow: 3)."""
    batch_size: Annotated[int, Ge(1)] = 32
    """Transitions per gradient step."""
    optimizer: Literal["adam", "rmsprop"] = "adam"
    """Online optimizer: fused Adam, or centred RMSProp (squared-gradient decay 0.95, as in
    Mnih et al. 2015 and Young & Tian's MinAtar `examples/dqn.py`)."""
    lr: Annotated[float, Gt(0)] = 6.25e-5
    """Online learning rate (Dopamine `dqn.gin` / `rainbow.gin`: Adam 6.25e-5)."""
    adam_eps: Annotated[float, Gt(0)] = 1.5e-4
    """Adam epsilon (Dopamine `dqn.gin` / `rainbow.gin`)."""
    rmsprop_eps: Annotated[float, Gt(0)] = 0.01
    """RMSProp epsilon, added to the root of the squared-gradient average (torch's `eps`;
    Young & Tian `MIN_SQUARED_GRAD` 0.01)."""
    rmsprop_momentum: Annotated[float, Ge(0)] = 0.95
    """RMSProp momentum (Young & Tian `GRAD_MOMENTUM` 0.95; Dopamine's DQN uses 0)."""
    max_grad_norm: Annotated[float | None, Gt(0)] = 10.0
    """Online gradient-norm clip (SB3 DQN default 10); None disables."""
    loss: Literal["mse", "huber"] = "huber"
    """TD loss for scalar heads (Nature DQN / SB3: Huber; Dopamine JAX: MSE)."""
    double: bool = False
    """Double-DQN action selection by the online net (van Hasselt et al. 2016)."""
    dueling: bool = False
    """Dueling head (Wang et al. 2016)."""
    categorical: bool = False
    """C51 distributional head and loss (Bellemare et al. 2017)."""
    num_atoms: Annotated[int, Ge(2)] = 51
    """Atoms of the categorical support (C51)."""
    v_min: float = -10.0
    """Lowest atom of the categorical support (must be below `v_max`)."""
    v_max: float = 10.0
    """Highest atom of the categorical support."""
    prioritized: bool = False
    """Prioritised replay (Schaul et al. 2016)."""
    priority_alpha: Annotated[float, Ge(0)] = 0.5
    """Priority exponent (Dopamine Rainbow samples with priority^0.5)."""
    priority_beta: Annotated[float, Ge(0)] = 0.5
    """Importance-sampling exponent (Dopamine Rainbow keeps it fixed at 0.5)."""
    buffer_size: Annotated[int, Ge(1)] = 1_000_000
    """Replay capacity in transitions."""
    learning_starts: Annotated[int, Ge(0)] = 20_000
    """Agent steps of random-policy data before learning (Dopamine `min_replay_history`)."""
    train_freq: Annotated[int, Ge(1)] = 4
    """Agent steps per online (Lookahead) gradient step (Dopamine `update_period`)."""
    epsilon_start: Annotated[float, Interval(0, 1)] = 1.0
    """Initial exploration rate."""
    epsilon_end: Annotated[float, Interval(0, 1)] = 0.01
    """Final exploration rate (Dopamine `epsilon_train`)."""
    epsilon_decay_steps: Annotated[int, Ge(0)] = 250_000
    """Agent steps of linear epsilon decay (Dopamine `epsilon_decay_period`); 0: no decay."""
    eval_epsilon: Annotated[float, Interval(0, 1)] = 0.001
    """Exploration rate of evaluation episodes (Dopamine `epsilon_eval`)."""
    divergence_q: Annotated[float | Literal["auto"] | None, Gt(0)] = "auto"
    """Fail the run as diverged (`DivergenceError`) when the online net's mean |Q| over a
    batch and its actions (expected Q for C51) exceeds this bound. A number is the bound itself;
    `none` disables it (a non-finite TD loss still fails); `auto` (ours) is
    2 r_max / (1 - gamma): no state's true value exceeds r_max / (1 - gamma) (a reward of r_max
    at every step forever), so a mean over states and actions above twice that is divergence,
    not an overestimation transient. r_max is 1 with clipped rewards; unclipped, the
    environment's per-step reward scale (`hetero_lr.envs.reward_scale`: CartPole, Acrobot and
    MinAtar 1, MinAtar Seaquest 10); Atari unclipped has no known scale, so `auto` disables the
    bound there. The run logs the bound in force as `agent.divergence_q_resolved` (and why as
    `agent.divergence_q_rule`). Checked at every log row (`log_every` agent steps) against the
    largest value of the updates since the previous row, and when the run reaches `steps`, so a
    diverging run stops within `log_every` steps without a device sync per update."""

    def __post_init__(self) -> None:
        coerce_fields(self)


@dataclass(frozen=True)
class TargetConfig:
    """How the target network follows the online one (see `hetero_lr.pair`)."""

    rule: Literal["replicate", "hardcopy", "polyak"] = "replicate"
    """Target-update rule; hardcopy and polyak need identical architectures."""
    kr: Annotated[int, Ge(1)] = 500
    """Replicate gradient steps on the target per `kl` Lookahead (online) steps. Ours: 500 per
    2,000 costs what 1 per 4 does, and keeps the target fixed for a Dopamine target period
    (8,000 agent steps); KR/KL = 1/4 diverged (Q > 300) on Breakout by 75k steps here."""
    kl: Annotated[int, Ge(1)] = 2_000
    """Lookahead (online) gradient steps between Replicate phases."""
    lr: Annotated[float, Gt(0)] = 1e-4
    """Learning rate of the target's own optimizer."""
    variant: Literal["all_actions", "taken_action"] = "all_actions"
    """Regress all actions' outputs, or only the replayed action's."""
    loss: Literal["mse", "huber", "cross_entropy"] = "mse"
    """Replicate loss; cross_entropy needs categorical heads."""
    schedule: Literal["block", "interleaved"] = "block"
    """Run `kr` steps after every `kl` online steps, or spread them evenly."""
    optimizer: Literal["adam", "sgd"] = "adam"
    """Optimizer of the target network."""
    replicate_sampling: Literal["uniform", "prioritized"] = "uniform"
    """How Replicate batches are drawn from a prioritised memory (`agent.prioritized`).
    `uniform` (ours): uniformly over stored transitions, priorities untouched, since the function
    gap is a property of the state distribution, not of TD error. `prioritized`: by TD priority,
    with the importance-sampling weights applied to the Replicate loss (a weighted mean over
    samples). Without prioritised replay both draw uniformly."""
    period: Annotated[int, Ge(1)] = 2_000
    """HardCopy: online gradient steps between copies (Dopamine's 8,000 agent steps at an
    update every 4 steps)."""
    tau: Annotated[float, Interval(0, 1, lo_open=True)] = 0.005
    """Polyak: blend factor per online gradient step (BBF: 0.005)."""

    def __post_init__(self) -> None:
        coerce_fields(self)


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
    steps: Annotated[int, Ge(1)] = 100_000
    """Agent steps (environment steps summed over lanes; 1 step = `frame_skip` frames)."""
    seed: Annotated[int, Interval(0, 2**32 - 1)] = 0
    """Seeds networks, replay sampling, exploration and environments (`np.random.seed` takes
    32-bit seeds)."""
    eval_every: Annotated[int, Ge(1)] = 25_000
    """Agent steps between evaluations (and at the end of the run)."""
    eval_episodes: Annotated[int, Ge(1)] = 10
    """Episodes per evaluation."""
    eval_max_steps: Annotated[int, Ge(1)] = 27_000
    """Cap on agent steps per evaluation episode (108,000 frames / 4)."""
    eval_videos: Annotated[int, Ge(0)] = 0
    """Evaluation episodes per evaluation saved as MP4 files (`videos/` of the run; what the
    agent sees, image observations only; needs the `video` extra); 0: none."""
    log_every: Annotated[int, Ge(1)] = 1_000
    """Agent steps between rows of averaged training metrics."""
    checkpoint_every: Annotated[int, Ge(0)] = 50_000
    """Agent steps between checkpoints (when an output folder is set); 0 disables."""
    device: str = "auto"
    """`auto` (CUDA where present), `cpu`, `cuda` or `cuda:N`."""
    channels_last: bool = True
    """Use channels-last memory for image networks (about 2x faster for IMPALA on CPU)."""
    compile: bool = False
    """`torch.compile` both networks (pays a one-off compile time)."""
    bf16: bool = False
    """bf16 autocast for forward passes on CUDA."""
    threads: Annotated[int, Ge(0)] = 0
    """Torch intra-op threads (0: leave torch's default)."""

    def __post_init__(self) -> None:
        coerce_fields(self)
        _check_cross_fields(self)


def _check_cross_fields(cfg: TrainConfig) -> None:
    """Checks that span fields (single-field ranges live in the `Annotated` types above)."""
    agent = cfg.agent
    if agent.v_min >= agent.v_max:
        raise ValueError(f"agent.v_min={agent.v_min!r} must be < agent.v_max={agent.v_max!r}")


# Every preset inherits the defaults it does not override, ours included (gradient-norm clip 10,
# the Replicate target rule with KR/KL = 500/2,000); each comment says what comes from its
# source and marks our own choices "ours".
PRESETS: dict[str, dict[str, Any]] = {
    # Nature DQN as run by Dopamine (`dopamine/jax/agents/dqn/configs/dqn.gin`): Adam 6.25e-5,
    # eps 1.5e-4, 1M replay, 20k warm-up, update every 4, epsilon to 0.01 over 250k steps, and
    # with `target.rule=hardcopy` a copy every 8,000 agent steps (2,000 updates). Ours: the
    # Huber loss (the Nature paper's; Dopamine JAX uses MSE), the clip, 8 acting lanes.
    "dqn": {},
    # Dopamine's Rainbow (Castro et al. 2018, `dopamine/agents/rainbow/configs/rainbow.gin`):
    # C51 with 51 atoms in [-10, 10], 3-step returns, prioritised replay (priority^0.5, fixed
    # beta 0.5), Adam 6.25e-5 / eps 1.5e-4, the rest as `dqn`. As in that file, no double DQN,
    # dueling head or noisy nets (Hessel et al.'s full Rainbow has all three). Ours: the
    # cross-entropy Replicate loss between the two nets' distributions.
    "rainbow": {
        "agent": {"categorical": True, "n_step": 3, "prioritized": True},
        "target": {"loss": "cross_entropy"},
    },
    # Data-efficient Rainbow for Atari 100k (van Hasselt et al. 2019, as in Dopamine's
    # `labs/atari_100k/configs/DER.gin`): no sticky actions, life-loss terminals, C51, dueling,
    # double DQN, 10-step returns, prioritised replay, an update every step after 1,600 steps,
    # target every 2,000 updates, Adam 1e-4 / eps 1.5e-4, 100k steps, 100 evaluation episodes.
    # Ours, and unlike the source: no noisy nets (this package has none), so exploration is
    # epsilon-greedy from 1 to 0.01 over DER.gin's 2,000-step decay period (Dopamine holds
    # epsilon at 0.01 beside its noisy layers); a 100k replay (DER.gin's 1M never fills in 100k
    # steps, so both hold every transition); one acting lane; the cross-entropy Replicate loss.
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
    # MinAtar (Young & Tian 2019, `examples/dqn.py`): one environment, batch 32, replay 100k,
    # warm-up 5,000, an update every step, target every 1,000, epsilon 1 -> 0.1 over 100k
    # steps, gamma 0.99, Huber loss, sticky actions 0.1 (MinAtar's default), their network
    # (`minatar`: one 16-channel conv, 128 hidden units). Ours: Adam 2.5e-4 with eps 3.125e-4
    # (= 0.01 / 32) instead of centred RMSProp 2.5e-4 (eps 0.01, momentum 0.95; theirs is
    # `agent.optimizer=rmsprop`), clip 10, the minimal action set (`-v1`; theirs is
    # `env.full_action_space=true`: Breakout's training returns rise by a quarter with it,
    # evaluation scores do not, see `benchmarks/minatar_protocol.py`); 1M steps instead of 5M;
    # evaluation every 50k steps.
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
        # Ours: contiguous memory; channels-last makes a `minatar` update (10x10 frames) about
        # 15% slower on CPU (measured here), unlike the 84x84 Atari networks.
        "channels_last": False,
    },
    # CartPole / Acrobot for quick checks, after CleanRL `dqn.py` (Adam 2.5e-4 with torch's eps
    # 1e-8, batch 128, MSE, epsilon to 0.05, raw rewards; 500k steps with an update every 10)
    # compressed to 50k steps with an update every step: the same ~49k updates. Ours: double
    # DQN, a 50k replay (CleanRL 10k), 1k warm-up (10k), epsilon decay over 10k steps (250k),
    # a copy every 500 updates (CleanRL: every 500 steps = 50 updates), the evaluation, and
    # Replicate in blocks, 100 target steps (Adam 1e-3) per 500 updates, the copy period's
    # function-space analogue: KR/KL = 1/1 at the online rate 2.5e-4 diverged here (mean |Q|
    # 218 by 5k steps, 635 by 12k; true values are below 100), 1/4 reached 105 by 12k, 100/500
    # stayed near 20 like the hard copy.
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
        "target": {"period": 500, "kr": 100, "kl": 500, "lr": 1e-3},
        "steps": 50_000,
        "eval_every": 5_000,
        "eval_episodes": 10,
    },
}


# --- Entry points ---------------------------------------------------------------------------


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`["agent.lr=1e-4", "steps=100"]` -> `{"agent": {"lr": "1e-4"}, "steps": 100}`.

    Values are read as YAML (`{width: 2}` gives a mapping, `true` a boolean); `from_dict` then
    converts them to their fields' types (YAML 1.1 leaves `1e-4` a string).

    Raises:
        ValueError: one line, for an item that is not KEY=VALUE or a value that is not YAML.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        parts = [part.strip() for part in key.split(".")]
        if not sep or not all(parts):
            raise ValueError(f"bad --set {item!r}; expected KEY=VALUE, e.g. agent.lr=1e-4")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ValueError(f"bad --set {item!r}: {_one_line(err)}") from None
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"bad --set {item!r}: {part!r} was given a value earlier")
        node[parts[-1]] = value
    return out


def load_overrides(path: str | Path) -> dict[str, Any]:
    """Read a YAML file of `TrainConfig` overrides (`--config`); an empty file gives `{}`.

    Raises:
        ValueError: one line, for an unreadable file, invalid YAML or a top level that is not a
            mapping.
    """
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or _one_line(err)
        raise ValueError(f"cannot read config file {str(path)!r}: {reason}") from None
    except yaml.YAMLError as err:
        raise ValueError(f"config file {str(path)!r} is not valid YAML: {_one_line(err)}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ValueError(
            f"config file {str(path)!r} must hold a mapping of settings, not {type(data).__name__}"
        )
    return dict(data)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


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
