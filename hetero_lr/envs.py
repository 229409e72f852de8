"""Environment construction: one vector-env interface over ALE/Atari, MinAtar and classic control.

Every backend is normalised to the same semantics (`VecEnv`, `EnvStep`): channel-first
observations, raw game rewards, every step a real transition (same-step autoreset), and
whole-game scores reported when a game ends.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from hetero_lr import game_state
from hetero_lr.config import EnvConfig

CLASSIC_IDS = ("CartPole-v1", "Acrobot-v1")
MINATAR_GAMES = ("Asterix", "Breakout", "Freeway", "Seaquest", "SpaceInvaders")
SUPPORTED = (
    "ALE/<Game>-v5 for any game ale-py ships (e.g. ALE/Breakout-v5), "
    f"MinAtar/<Game>-v1 with <Game> in {', '.join(MINATAR_GAMES)}, " + ", ".join(CLASSIC_IDS)
)


# Read-only arrays shared by every one-lane step: lanes ended (none, lane 0) and flags by value.
_NO_LANES, _LANE_0 = np.zeros(0, np.int64), np.zeros(1, np.int64)
_FLAG = (np.zeros(1, bool), np.ones(1, bool))
for _shared in (_NO_LANES, _LANE_0, *_FLAG):
    _shared.flags.writeable = False


@dataclass
class EnvStep:
    """The result of one `VecEnv.step` over all lanes."""

    obs: np.ndarray
    """(N, *obs_shape) observation to act on next (a new game's first one where a game ended)."""
    final_obs: np.ndarray
    """(N, *obs_shape) observation this step reached (equals `obs` where no episode ended)."""
    rewards: np.ndarray
    """(N,) float32 raw game reward (never clipped here)."""
    terminated: np.ndarray
    """(N,) bool terminal for learning (includes a lost life with `terminal_on_life_loss`)."""
    truncated: np.ndarray
    """(N,) bool episode cut by the time limit."""
    episode_returns: list[tuple[int, float, int]]
    """(lane, raw whole-game score, agent steps) for every game that ended this step."""
    ended: np.ndarray
    """(k,) int64 lanes whose episode ended this step (terminated or truncated), ascending."""


class GymLanes:
    """Gymnasium environments stepped in turn with same-step autoreset.

    Does what `gymnasium.vector.SyncVectorEnv(..., autoreset_mode=SAME_STEP)` does for
    `VecEnv` (the same calls on the same environments, so the same games), without its generic
    per-step work (info merging, space-driven batching, a deep copy of the batch), which cost
    a MinAtar step several times the game's own step here.
    """

    def __init__(self, envs: list[gym.Env]) -> None:
        self.envs = envs
        self.num_envs = len(envs)
        self.single_action_space = envs[0].action_space
        self.observation_space = batch_space(envs[0].observation_space, self.num_envs)
        self._dtype = envs[0].observation_space.dtype

    def reset(self, seed: list[int] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        seeds = [None] * self.num_envs if seed is None else [int(s) for s in seed]
        obs = [env.reset(seed=s)[0] for env, s in zip(self.envs, seeds, strict=True)]
        return np.stack(obs).astype(self._dtype, copy=False), {}

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        n = self.num_envs
        obs, final_obs = [], [None] * n
        rewards = np.zeros(n, np.float64)
        terminated, truncated = np.zeros(n, bool), np.zeros(n, bool)
        for i, env in enumerate(self.envs):
            o, rewards[i], terminated[i], truncated[i], _ = env.step(actions[i])
            if terminated[i] or truncated[i]:
                final_obs[i] = o
                o, _ = env.reset()
            obs.append(o)
        return (
            np.stack(obs).astype(self._dtype, copy=False),
            rewards,
            terminated,
            truncated,
            {"final_obs": final_obs},
        )

    def step_one(self, action: int) -> tuple[np.ndarray, float, bool, bool, np.ndarray | None]:
        """`step` of a single lane in Python scalars: `(obs[None], reward, terminated,
        truncated, final_obs[None] or None)`, from the same calls as `step`."""
        (env,) = self.envs
        obs, reward, terminated, truncated, _ = env.step(action)
        final_obs = None
        if terminated or truncated:
            final_obs = np.asarray(obs, self._dtype)[None]
            obs, _ = env.reset()
        return np.asarray(obs, self._dtype)[None], float(reward), terminated, truncated, final_obs

    def close(self) -> None:
        for env in self.envs:
            env.close()


class VecEnv:
    """Vector environment with the semantics of `EnvStep`, over a same-step-autoreset backend.

    Attributes:
        num_envs: Number of lanes N.
        obs_shape: Channel-first shape of one observation.
        obs_dtype: uint8 for Atari frames, bool for MinAtar's binary channels (networks scale
            uint8 by 1/255 and take bool as 0/1), float32 for classic-control vectors.
        n_actions: Size of the discrete action set.
        frame_stack: Frames stacked on axis 0 of an observation (1 when not stacked).
        protocol: The settings really in force, flat, for logging as run parameters.
    """

    def __init__(
        self,
        env: VectorEnv | GymLanes,
        *,
        seed: int,
        protocol: dict[str, Any],
        frame_stack: int = 1,
        transform: Callable[[np.ndarray], np.ndarray] = np.asarray,
        life_loss_terminal: bool = False,
    ) -> None:
        self._env = env
        self._transform = transform
        self._life_loss_terminal = life_loss_terminal
        self.num_envs = env.num_envs
        self._reset_seed: np.ndarray | None = self._lane_seeds(seed)
        sample = transform(env.observation_space.sample())
        self.obs_shape = tuple(sample.shape[1:])
        self.obs_dtype = sample.dtype
        self.n_actions = int(env.single_action_space.n)
        self.frame_stack = frame_stack
        self.protocol = protocol
        self._returns = np.zeros(self.num_envs, np.float64)
        self._lengths = np.zeros(self.num_envs, np.int64)
        self._lives = np.zeros(self.num_envs, np.int64)
        # One gymnasium lane (MinAtar, classic control) steps in Python scalars: at a few
        # microseconds a game step, numpy's per-call cost over 1-element arrays dominated.
        self._one_lane = isinstance(env, GymLanes) and env.num_envs == 1 and not life_loss_terminal

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start a new game in every lane and return the (N, *obs_shape) observations.

        The first call seeds lane i with the i-th seed derived from `make_env`'s seed (or from
        `seed` when given); later calls continue each lane's random stream, so they stay
        reproducible without replaying the same games.
        """
        if seed is not None:
            self._reset_seed = self._lane_seeds(seed)
        obs, info = self._env.reset(seed=self._reset_seed)
        self._reset_seed = None
        self._returns[:] = 0.0
        self._lengths[:] = 0
        self._lives[:] = info.get("lives", 0)
        return self._transform(obs)

    def _lane_seeds(self, seed: int) -> np.ndarray:
        return np.array(lane_seeds(seed, self.num_envs), dtype=np.int64)

    @property
    def restorable(self) -> bool:
        """Whether `state_dict` captures the games exactly (mid-episode, RNGs included).

        True for the gymnasium backends (MinAtar, classic control), whose games are a few
        arrays, numbers and generator states (`hetero_lr.game_state`); ale-py's native vector
        env exposes no snapshot of its emulators.
        """
        return isinstance(self._env, GymLanes)

    def state_dict(self) -> dict[str, Any]:
        """Score counters of the running games, and the games themselves where `restorable`,
        as tensors and plain data (loads with `torch.load(..., weights_only=True)`)."""
        state: dict[str, Any] = {
            "returns": torch.from_numpy(self._returns.copy()),
            "lengths": torch.from_numpy(self._lengths.copy()),
            "lives": torch.from_numpy(self._lives.copy()),
        }
        if self.restorable:
            state["envs"] = [game_state.snapshot(env) for env in self._env.envs]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> bool:
        """Continue the saved games; returns False when they could not be restored (Atari).

        After False, the caller must `reset` (with a fresh seed) before stepping.
        """
        if "envs" not in state or not self.restorable:
            return False
        games = state["envs"]
        if len(games) != self.num_envs:
            raise ValueError(f"saved state has {len(games)} lanes, this env has {self.num_envs}")
        for env, game in zip(self._env.envs, games, strict=True):  # type: ignore[union-attr]
            game_state.restore(env, game)
        self._returns[:] = np.asarray(state["returns"])
        self._lengths[:] = np.asarray(state["lengths"])
        self._lives[:] = np.asarray(state["lives"])
        return True

    def step(self, actions: np.ndarray) -> EnvStep:
        """Apply one action per lane; lanes whose game ended restart in the same step."""
        if self._one_lane:
            return self._step_one(int(actions[0]))
        obs, rewards, terminated, truncated, info = self._env.step(
            np.asarray(actions, dtype=np.int64)
        )
        game_over = terminated | truncated
        ended = np.flatnonzero(game_over)
        final_obs = obs
        if ended.size:  # otherwise the reached observation is the next one: no copy
            final_obs = obs.copy()
            for i in ended:
                final_obs[i] = info["final_obs"][i]
        rewards = np.asarray(rewards, dtype=np.float32)
        self._returns += rewards
        self._lengths += 1
        episodes = [(int(i), float(self._returns[i]), int(self._lengths[i])) for i in ended]
        if episodes:
            self._returns[ended] = 0.0
            self._lengths[ended] = 0
        terminated = np.asarray(terminated, dtype=bool)
        if self._life_loss_terminal:
            # Tracked here rather than with ale-py's `episodic_life` (which restarts the whole
            # game at every life loss) or `life_loss_info` (whose `final_obs` on a life loss is
            # not the reached observation in ale-py 0.12.1); where a game ended, `lives`
            # already belongs to the new game.
            lives = info["lives"]
            terminated = terminated | ((lives < self._lives) & ~game_over)
            self._lives[:] = lives
        next_obs = self._transform(obs)
        return EnvStep(
            obs=next_obs,
            final_obs=next_obs if final_obs is obs else self._transform(final_obs),
            rewards=rewards,
            terminated=terminated,
            truncated=np.asarray(truncated, dtype=bool),
            episode_returns=episodes,
            ended=ended,
        )

    def _step_one(self, action: int) -> EnvStep:
        """`step` for one gymnasium lane: the same games and numbers, in scalars."""
        obs, reward, terminated, truncated, final_obs = self._env.step_one(action)  # type: ignore[union-attr]
        rewards = np.array([reward], np.float32)
        self._returns[0] += rewards[0]
        self._lengths[0] += 1
        episodes, ended = [], _NO_LANES
        if final_obs is not None:
            episodes = [(0, float(self._returns[0]), int(self._lengths[0]))]
            ended = _LANE_0
            self._returns[0] = 0.0
            self._lengths[0] = 0
        next_obs = self._transform(obs)
        return EnvStep(
            obs=next_obs,
            final_obs=next_obs if final_obs is None else self._transform(final_obs),
            rewards=rewards,
            terminated=_FLAG[bool(terminated)],
            truncated=_FLAG[bool(truncated)],
            episode_returns=episodes,
            ended=ended,
        )

    def close(self) -> None:
        """Release the backend (threads, emulators)."""
        self._env.close()


def frames_per_step(cfg: EnvConfig) -> int:
    """Emulator frames per agent step: `cfg.frame_skip` on Atari, 1 elsewhere."""
    return cfg.frame_skip if cfg.id.startswith("ALE/") else 1


# Largest |reward| per agent step where the game's rules bound it: CartPole gives +1 per step,
# Acrobot -1; MinAtar gives +1 per event (Young & Tian 2019), except that surfacing in Seaquest
# with six divers pays up to 10 (oxygen * 10 // max_oxygen, `minatar/environments/seaquest.py`).
# Two MinAtar events can coincide in a step, rarely: r_max / (1 - gamma) assumes r_max at every
# step, far above what sparse events pay, so 1 stays a safe scale for the divergence bound.
_REWARD_SCALES = {"CartPole-v1": 1.0, "Acrobot-v1": 1.0, "MinAtar/Seaquest-v1": 10.0}


def reward_scale(env_id: str) -> float | None:
    """Per-step reward scale r_max of raw (unclipped) rewards; None where it is not known.

    Atari scores have no common scale (Breakout pays up to 7 per brick, Pong 1, Ms. Pac-Man
    hundreds per ghost), hence clipping.
    """
    if env_id in _REWARD_SCALES:
        return _REWARD_SCALES[env_id]
    if env_id.startswith("MinAtar/"):
        return 1.0
    return None


def lane_seeds(seed: int, num_envs: int) -> list[int]:
    """Distinct, non-negative 31-bit seeds per lane, uncorrelated across run seeds.

    (ale-py's own `reset(seed=s)` seeds lanes s, s+1, ..., which would make lane 1 of run 0
    replay lane 0 of run 1.)
    """
    state = np.random.SeedSequence(seed).generate_state(num_envs, dtype=np.uint32) >> 1
    return [int(s) for s in state]


def make_env(cfg: EnvConfig, *, seed: int, num_envs: int | None = None) -> VecEnv:
    """Build the vector environment for `cfg.id` with `num_envs` lanes (default `cfg.num_envs`).

    Raises:
        ValueError: for an id that is not one of the supported families.
    """
    n = cfg.num_envs if num_envs is None else num_envs
    if n < 1:
        raise ValueError(f"num_envs must be positive, got {n}")
    if cfg.id.startswith("ALE/"):
        return _make_atari(cfg, seed, n)
    if cfg.id.startswith("MinAtar/"):
        return _make_minatar(cfg, seed, n)
    if cfg.id in CLASSIC_IDS:
        return _make_classic(cfg, seed, n)
    raise ValueError(f"unsupported environment id {cfg.id!r}; supported: {SUPPORTED}")


def _make_atari(cfg: EnvConfig, seed: int, n: int) -> VecEnv:
    import ale_py  # registers the ALE/*-v5 ids with gymnasium
    from ale_py.vector_env import AtariVectorEnv

    gym.register_envs(ale_py)
    spec = gym.registry.get(cfg.id)
    if spec is None or not cfg.id.endswith("-v5"):
        raise ValueError(f"unsupported environment id {cfg.id!r}; supported: {SUPPORTED}")
    game = spec.kwargs["game"]
    # Every option is set explicitly: the native env's defaults differ from the Machado et al.
    # (2018) protocol (no sticky actions, clipped rewards, fire reset). Rewards stay raw so that
    # returns are game scores; the learner clips. No fire reset, as in Machado et al. and
    # Dopamine. ale-py's episode cap counts `frameskip` frames per agent step, from the end of
    # the no-op start.
    env = AtariVectorEnv(
        game,
        n,
        num_threads=min(n, os.cpu_count() or 1),
        autoreset_mode=AutoresetMode.SAME_STEP,
        repeat_action_probability=cfg.sticky_actions,
        full_action_space=cfg.full_action_space,
        frameskip=cfg.frame_skip,
        maxpool=True,
        grayscale=True,
        stack_num=cfg.frame_stack,
        img_height=cfg.screen_size,
        img_width=cfg.screen_size,
        noop_max=cfg.noop_max,
        max_num_frames_per_episode=cfg.max_episode_frames,
        episodic_life=False,
        life_loss_info=False,
        reward_clipping=False,
        use_fire_reset=False,
    )
    protocol = {
        "backend": "ale_vector",
        "game": game,
        "sticky_actions": cfg.sticky_actions,
        "full_action_space": cfg.full_action_space,
        "frame_skip": cfg.frame_skip,
        "frame_maxpool": True,
        "frame_stack": cfg.frame_stack,
        "screen_size": cfg.screen_size,
        "grayscale": True,
        "noop_max": cfg.noop_max,
        "max_episode_frames": cfg.max_episode_frames,
        "terminal_on_life_loss": cfg.terminal_on_life_loss,
        "fire_reset": False,
        "reward_clipping_in_env": False,
    }
    return VecEnv(
        env,
        seed=seed,
        protocol=protocol,
        frame_stack=cfg.frame_stack,
        life_loss_terminal=cfg.terminal_on_life_loss,
    )


def _make_minatar(cfg: EnvConfig, seed: int, n: int) -> VecEnv:
    import minatar.gym

    game = cfg.id.removeprefix("MinAtar/").removesuffix("-v1")
    if game not in MINATAR_GAMES or not cfg.id.endswith("-v1"):
        raise ValueError(f"unsupported environment id {cfg.id!r}; supported: {SUPPORTED}")
    if cfg.id not in gym.registry:
        minatar.gym.register_envs()
    # MinAtar's own sticky-action default is 0.1 (Young & Tian 2019); cfg's value is passed on.
    kwargs = {
        "sticky_action_prob": cfg.sticky_actions,
        "use_minimal_action_set": not cfg.full_action_space,
    }
    protocol = {
        "backend": "gymnasium_sync",
        "sticky_actions": cfg.sticky_actions,
        "full_action_space": cfg.full_action_space,
        "difficulty_ramping": True,
    }
    return _make_gymnasium(cfg, seed, n, kwargs, protocol, _minatar_obs)


def _minatar_obs(obs: np.ndarray) -> np.ndarray:
    # (N, 10, 10, C) bool, HWC -> (N, C, 10, 10) bool, channel-first like Atari frames. Kept
    # bool, not uint8: networks scale uint8 frames by 1/255, which would shrink 0/1 to 0/0.004.
    return np.ascontiguousarray(obs.transpose(0, 3, 1, 2), dtype=bool)


def _make_classic(cfg: EnvConfig, seed: int, n: int) -> VecEnv:
    protocol = {"backend": "gymnasium_sync", "sticky_actions": 0.0, "full_action_space": False}
    return _make_gymnasium(cfg, seed, n, {}, protocol, _float32_obs)


def _float32_obs(obs: np.ndarray) -> np.ndarray:
    return np.asarray(obs, dtype=np.float32)


def _make_gymnasium(
    cfg: EnvConfig,
    seed: int,
    n: int,
    kwargs: dict[str, Any],
    protocol: dict[str, Any],
    transform: Callable[[np.ndarray], np.ndarray],
) -> VecEnv:
    # No frame skip here, so the frame cap is a step cap; a registered limit (CartPole and
    # Acrobot: 500) is kept when it is shorter.
    registered = gym.registry[cfg.id].max_episode_steps
    cap = cfg.max_episode_frames if registered is None else min(registered, cfg.max_episode_frames)
    env = GymLanes([gym.make(cfg.id, max_episode_steps=cap, **kwargs) for _ in range(n)])
    protocol = {
        **protocol,
        "frame_skip": 1,
        "frame_stack": 1,
        "noop_max": 0,
        "max_episode_frames": cap,
        "terminal_on_life_loss": False,
        "reward_clipping_in_env": False,
    }
    return VecEnv(
        env,
        seed=seed,
        protocol=protocol,
        transform=transform,
    )
