"""Gymnasium games as plain data: exact snapshots that load with `torch.load(weights_only=True)`.

A lane of a gymnasium backend keeps its whole state in plain attributes of a few objects: each
wrapper (`TimeLimit`'s step count, `OrderEnforcing`'s reset flag), the environment (CartPole's
and Acrobot's `state` array and `np_random` generator) and, for MinAtar, its two game objects
(positions, timers, entity lists, maps, and one `RandomState` shared by the sticky-action draw
and the game's rules). `snapshot` turns those attributes into tensors, numbers, strings and
containers; `restore` writes them back into a lane `make_env` built for the same environment.
Structure (the wrapped environments, spaces, the spec) is rebuilt, not saved. A generator that
two objects share stays shared, so the restored game draws the same numbers as the saved one.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.envs.registration import EnvSpec

# Markers of encoded values (dicts with one of these keys; no environment attribute uses them).
_ARRAY, _SCALAR, _RNG = "__ndarray__", "__numpy_scalar__", "__rng__"

_BIT_GENERATORS = {
    c.__name__: c
    for c in (np.random.PCG64, np.random.PCG64DXSM, np.random.MT19937, np.random.Philox,
              np.random.SFC64)
}  # fmt: skip

Rng = np.random.Generator | np.random.RandomState


def snapshot(env: gym.Env) -> dict[str, Any]:
    """The state of one gymnasium lane as plain data (see the module docstring).

    Raises:
        TypeError: an attribute of a kind this module does not know (a new backend's state
            would otherwise be lost silently).
    """
    parts = _parts(env)
    rngs: list[Rng] = []

    def is_structure(value: Any) -> bool:
        return isinstance(value, gym.Env | gym.Space | EnvSpec) or any(value is p for p in parts)

    attrs = [
        {k: _encode(v, rngs) for k, v in vars(part).items() if not is_structure(v)}
        for part in parts
    ]
    return {
        "classes": [type(part).__qualname__ for part in parts],
        "attrs": attrs,
        "rngs": [_rng_state(rng) for rng in rngs],
    }


def restore(env: gym.Env, state: dict[str, Any]) -> None:
    """Continue the game `snapshot` saved, in `env` (built for the same environment id).

    Raises:
        ValueError: the snapshot is of another kind of environment.
    """
    parts = _parts(env)
    classes = [type(part).__qualname__ for part in parts]
    if classes != list(state["classes"]):
        saved = " > ".join(state["classes"])
        raise ValueError(f"the saved game is a {saved}, this one a {' > '.join(classes)}")
    rngs = [_rng(s) for s in state["rngs"]]
    for part, attrs in zip(parts, state["attrs"], strict=True):
        vars(part).update({k: _decode(v, rngs) for k, v in attrs.items()})


def _parts(env: gym.Env) -> list[Any]:
    """The objects that hold a lane's state: each wrapper, the environment, MinAtar's game."""
    parts: list[Any] = []
    while isinstance(env, gym.Wrapper):
        parts.append(env)
        env = env.env
    parts.append(env)
    game = getattr(env, "game", None)
    if game is not None:  # MinAtar: BaseEnv.game (sticky actions) and .game.env (the rules)
        parts += [game, game.env]
    return parts


def _encode(value: Any, rngs: list[Rng]) -> Any:
    if isinstance(value, np.generic):  # first: np.float64 is a float too; kept its own type
        return {_SCALAR: torch.from_numpy(np.array(value))}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.ndarray):  # a copy: never shares memory with the live game
        return {_ARRAY: torch.from_numpy(np.array(value))}
    if isinstance(value, Rng):
        index = next((i for i, r in enumerate(rngs) if r is value), None)
        if index is None:
            rngs.append(value)
            index = len(rngs) - 1
        return {_RNG: index}
    if type(value) is list:
        return [_encode(v, rngs) for v in value]
    if type(value) is tuple:
        return tuple(_encode(v, rngs) for v in value)
    if type(value) is dict:
        return {k: _encode(v, rngs) for k, v in value.items()}
    raise TypeError(f"cannot save environment state of type {type(value).__qualname__}")


def _decode(value: Any, rngs: list[Rng]) -> Any:
    if isinstance(value, dict):
        if _ARRAY in value:  # a copy: two games restored from one state share nothing
            return value[_ARRAY].numpy().copy()
        if _SCALAR in value:
            return value[_SCALAR].numpy()[()]
        if _RNG in value:
            return rngs[value[_RNG]]
        return {k: _decode(v, rngs) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, rngs) for v in value]
    if isinstance(value, tuple):
        return tuple(_decode(v, rngs) for v in value)
    return value


def _rng_state(rng: Rng) -> dict[str, Any]:
    if isinstance(rng, np.random.RandomState):
        return {"kind": "RandomState", "state": _encode(rng.get_state(legacy=False), [])}
    return {"kind": "Generator", "state": _encode(rng.bit_generator.state, [])}


def _rng(saved: dict[str, Any]) -> Rng:
    state = _decode(saved["state"], [])
    name = state["bit_generator"]
    if name not in _BIT_GENERATORS:
        raise ValueError(f"unknown bit generator {name!r} in a saved game")
    if saved["kind"] == "RandomState":
        legacy = np.random.RandomState(_BIT_GENERATORS[name]())
        legacy.set_state(state)
        return legacy
    generator = np.random.Generator(_BIT_GENERATORS[name]())
    generator.bit_generator.state = state
    return generator
