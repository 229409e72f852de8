"""Evaluation episodes that report honest raw game scores."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from hetero_lr.config import EnvConfig
from hetero_lr.envs import frames_per_step, make_env
from hetero_lr.video import frame, has_pictures


def evaluate(
    act: Callable[[np.ndarray], np.ndarray],
    env_cfg: EnvConfig,
    *,
    episodes: int,
    seed: int,
    epsilon: float,
    max_steps: int,
    num_envs: int | None = None,
    record: int = 0,
    videos: list[list[np.ndarray]] | None = None,
) -> list[float]:
    """Play `episodes` epsilon-greedy episodes and return their raw whole-game scores.

    The protocol follows Machado et al. (2018): the training env's settings (sticky actions
    included), but a game ends only at game over or after `max_steps` agent steps (a capped
    episode counts with its score so far), never at a lost life. Dopamine evaluates with
    epsilon 0.001 (`epsilon_eval`). Each lane plays a quota of episodes fixed up front, so the
    scores are not biased toward short episodes as "the first K to finish" would be.

    Args:
        act: Maps an observation batch (N, *obs_shape) to greedy actions (N,).
        env_cfg: Environment protocol (the env's own frame cap still applies).
        episodes: Number of scores to return.
        seed: Seeds the environments and the exploration.
        epsilon: Probability of a uniformly random action.
        max_steps: Cap on agent steps per episode.
        num_envs: Lanes to run (default `env_cfg.num_envs`, at most `episodes`).
        record: Episodes to record as frames (`hetero_lr.video.frame`), lane-major: lane l's
            e-th episode is recorded when `e * lanes + l < record`. Image observations only.
        videos: Receives one list of RGB frames per recorded episode.
    """
    if episodes < 1 or max_steps < 1:
        raise ValueError(f"episodes and max_steps must be positive, got {episodes}, {max_steps}")
    n = min(env_cfg.num_envs if num_envs is None else num_envs, episodes)
    quota = [episodes // n + (lane < episodes % n) for lane in range(n)]
    # The cap is enforced by the env as a truncation, so a capped lane restarts by itself.
    cap = min(env_cfg.max_episode_frames, max_steps * frames_per_step(env_cfg))
    cfg = replace(env_cfg, terminal_on_life_loss=False, max_episode_frames=cap)
    env = make_env(cfg, seed=seed, num_envs=n)
    # A stream apart from the one the lanes' env seeds come from.
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    scores: list[list[float]] = [[] for _ in range(n)]
    record = record if videos is not None and has_pictures(env.obs_shape) else 0
    filming = {lane: [] for lane in range(min(n, record))}  # lane -> frames of its episode
    try:
        obs = env.reset()
        for lane, frames in filming.items():
            frames.append(frame(obs[lane]))
        while any(len(s) < q for s, q in zip(scores, quota, strict=True)):
            actions = np.asarray(act(obs), dtype=np.int64)
            explore = rng.random(n) < epsilon
            actions = np.where(explore, rng.integers(env.n_actions, size=n), actions)
            step = env.step(actions)
            obs = step.obs
            for lane, frames in filming.items():
                frames.append(frame(step.final_obs[lane]))
            for lane, score, _ in step.episode_returns:
                if len(scores[lane]) < quota[lane]:
                    scores[lane].append(score)
                if lane in filming:  # the episode ended: keep it, film the next one if due
                    videos.append(filming.pop(lane))  # type: ignore[union-attr]
                    if len(scores[lane]) * n + lane < record and len(scores[lane]) < quota[lane]:
                        filming[lane] = [frame(obs[lane])]
    finally:
        env.close()
    return [score for lane_scores in scores for score in lane_scores]
