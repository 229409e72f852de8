"""Settings for runs that take about a second: CartPole, tiny MLPs, small replay."""

from __future__ import annotations

from typing import Any

from hetero_lr.config import TrainConfig, from_dict

TINY_CARTPOLE: dict[str, Any] = {
    "pair": "mlp:mlp",
    "online_options": {"hidden": [32]},
    "target_options": {"hidden": [24, 24]},  # another width: a heterogeneous pair
    "env": {"id": "CartPole-v1", "num_envs": 2},
    "agent": {
        "learning_starts": 200,
        "buffer_size": 2_000,
        "train_freq": 2,
        "batch_size": 16,
        "epsilon_decay_steps": 500,
    },
    "target": {"kr": 1, "kl": 2},
    "steps": 800,
    "eval_every": 400,
    "eval_episodes": 2,
    "eval_max_steps": 100,
    "checkpoint_every": 400,
    "log_every": 200,
}


def tiny(*layers: dict[str, Any], **overrides: Any) -> TrainConfig:
    """`TINY_CARTPOLE` with each mapping in `layers`, then `overrides`, applied in turn."""
    cfg = from_dict(TrainConfig, TINY_CARTPOLE)
    for layer in (*layers, overrides):
        cfg = from_dict(TrainConfig, layer, base=cfg)
    return cfg


# A study file's contents: CartPole with tiny MLPs, a real run in about a second on one thread.
TINY_STUDY: dict[str, Any] = {
    "name": "tiny",
    "config": {
        "env": {"id": "CartPole-v1", "num_envs": 1},
        "steps": 300,
        "eval_every": 100,
        "eval_episodes": 1,
        "eval_max_steps": 100,
        "checkpoint_every": 0,
        "threads": 1,
        "online_options": {"hidden": [32]},
        "target_options": {"hidden": [32]},
        "agent": {"learning_starts": 100, "batch_size": 16, "buffer_size": 1000, "train_freq": 2},
    },
    "pairings": ["mlp:mlp"],
    "space": {"kr": [1, 2], "kl": {"int": [1, 8], "log": True}},
    "seeds": 2,
    "trials": 2,
    "sampler": "random",
    "pruner": "median",
    "pruning": {"min_evals": 2, "startup_trials": 10, "min_trials": 2, "patience": 0},
    "objective": {"last_evals": 2},
}
