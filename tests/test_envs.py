"""Tests for `hetero_lr.envs` and `hetero_lr.evaluation`."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import hetero_lr.evaluation as evaluation
from hetero_lr.config import EnvConfig
from hetero_lr.envs import EnvStep, VecEnv, make_env
from hetero_lr.evaluation import evaluate

ATARI = EnvConfig(num_envs=2)


def _balance(obs: np.ndarray) -> np.ndarray:
    """A CartPole controller that keeps the pole up for hundreds of steps."""
    return (obs[:, 2] + obs[:, 3] > 0).astype(np.int64)


def _rollout(env: VecEnv, steps: int, seed: int = 0) -> tuple[list[EnvStep], np.ndarray]:
    """Random-policy rollout; checks the invariants that hold at every step of every backend."""
    rng = np.random.default_rng(seed)
    first = env.reset()
    assert first.shape == (env.num_envs, *env.obs_shape) and first.dtype == env.obs_dtype
    running = np.zeros(env.num_envs)
    lengths = np.zeros(env.num_envs, dtype=np.int64)
    out = []
    for _ in range(steps):
        step = env.step(rng.integers(env.n_actions, size=env.num_envs))
        assert step.rewards.dtype == np.float32
        assert step.obs.dtype == step.final_obs.dtype == env.obs_dtype
        running += step.rewards
        lengths += 1
        ended = [lane for lane, _, _ in step.episode_returns]
        for lane, score, length in step.episode_returns:
            assert score == running[lane] and length == lengths[lane]
            running[lane] = lengths[lane] = 0
        same = np.array([lane not in ended for lane in range(env.num_envs)])
        assert np.array_equal(step.obs[same], step.final_obs[same])
        out.append(step)
    return out, first


def test_unknown_id_names_supported_ones() -> None:
    for bad in ("Pong-v4", "ALE/NoSuchGame-v5", "MinAtar/Pong-v1", "MinAtar/Breakout-v0"):
        with pytest.raises(ValueError, match="MinAtar/<Game>-v1") as err:
            make_env(EnvConfig(id=bad), seed=0)
        assert repr(bad) in str(err.value) and "CartPole-v1" in str(err.value)


def test_cartpole_autoreset_same_step() -> None:
    env = make_env(EnvConfig(id="CartPole-v1", num_envs=3), seed=0)
    assert (env.obs_shape, env.obs_dtype, env.n_actions) == ((4,), np.float32, 2)
    assert env.frame_stack == 1
    # Random actions end CartPole episodes within a few dozen steps.
    steps, first = _rollout(env, 60)
    assert not np.array_equal(first[0], first[1])  # lanes get distinct seeds
    assert not np.array_equal(env.reset(), first)  # a later reset does not replay the seeds
    ends = [(s, lane) for s in steps for lane in np.flatnonzero(s.terminated)]
    assert len(ends) >= 3
    for step, lane in ends:
        # final_obs is the terminal state (pole or cart out of bounds), obs a fresh start.
        assert abs(step.final_obs[lane, 2]) > 0.2 or abs(step.final_obs[lane, 0]) > 2.4
        assert np.all(np.abs(step.obs[lane]) <= 0.05)
    env.close()


def test_cartpole_truncation_is_not_termination() -> None:
    env = make_env(EnvConfig(id="CartPole-v1", num_envs=2, max_episode_frames=25), seed=0)
    obs = env.reset()
    for _ in range(25):
        step = env.step(_balance(obs))
        obs = step.obs
    assert step.truncated.all() and not step.terminated.any()
    assert sorted(step.episode_returns) == [(0, 25.0, 25), (1, 25.0, 25)]
    env.close()


def test_minatar_channel_first_bool() -> None:
    env = make_env(EnvConfig(id="MinAtar/Breakout-v1", num_envs=2, sticky_actions=0.1), seed=0)
    assert (env.obs_shape, env.obs_dtype, env.n_actions) == ((4, 10, 10), np.bool_, 3)
    game = env._env.envs[0].unwrapped.game
    assert game.sticky_action_prob == env.protocol["sticky_actions"] == 0.1
    steps, first = _rollout(env, 100)
    # Bool HWC frames transposed to CHW.
    assert np.array_equal(steps[-1].obs[0], game.state().transpose(2, 0, 1))
    assert set(np.unique(first)) == {0, 1}
    assert sum(len(s.episode_returns) for s in steps) > 0
    env.close()


@pytest.mark.parametrize("env_id", ["CartPole-v1", "MinAtar/Breakout-v1", "MinAtar/Asterix-v1"])
def test_one_lane_path_steps_as_the_lane_loop(env_id: str) -> None:
    # A one-lane gymnasium env steps in Python scalars; the lane loop is the reference.
    cfg = EnvConfig(id=env_id, num_envs=1, sticky_actions=0.1, max_episode_frames=40)
    fast, loop = make_env(cfg, seed=3), make_env(cfg, seed=3)
    assert fast._one_lane
    loop._one_lane = False
    fast_steps, fast_first = _rollout(fast, 300, seed=1)
    loop_steps, loop_first = _rollout(loop, 300, seed=1)
    assert np.array_equal(fast_first, loop_first)
    assert sum(len(s.episode_returns) for s in loop_steps) >= 5  # crosses many episode ends
    for a, b in zip(fast_steps, loop_steps, strict=True):
        for name in ("obs", "final_obs", "rewards", "terminated", "truncated", "ended"):
            x, y = getattr(a, name), getattr(b, name)
            assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), name
        assert a.episode_returns == b.episode_returns
    saved, reference = fast.state_dict(), loop.state_dict()
    assert all(np.array_equal(saved[k], reference[k]) for k in ("returns", "lengths"))
    fast.close()
    loop.close()


@pytest.mark.parametrize(
    "cfg",
    [
        EnvConfig(id="CartPole-v1", num_envs=2),
        EnvConfig(id="MinAtar/Breakout-v1", num_envs=2),
        pytest.param(ATARI, marks=pytest.mark.atari),
    ],
    ids=lambda cfg: cfg.id,
)
def test_seeding(cfg: EnvConfig) -> None:
    def stream(seed: int) -> tuple[np.ndarray, np.ndarray]:
        env = make_env(cfg, seed=seed)
        steps, first = _rollout(env, 150)
        env.close()
        obs = np.stack([first] + [s.final_obs for s in steps])
        return obs, np.stack([s.rewards for s in steps])

    a, b, c = stream(0), stream(0), stream(1)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


@pytest.mark.atari
def test_atari_default_protocol() -> None:
    env = make_env(ATARI, seed=0)
    assert (env.obs_shape, env.obs_dtype, env.frame_stack) == ((4, 84, 84), np.uint8, 4)
    assert env.n_actions == 4  # Breakout's minimal action set
    p = env.protocol
    assert p["sticky_actions"] == 0.25 and p["max_episode_frames"] == 108_000
    assert not p["reward_clipping_in_env"] and not p["fire_reset"]
    assert not p["full_action_space"] and not p["terminal_on_life_loss"]
    # ale-py zero-pads the stack at a reset.
    obs = env.reset()
    assert not obs[:, :3].any() and obs[:, 3].any()
    env.close()


@pytest.mark.atari
def test_atari_sticky_actions_in_force() -> None:
    def frames(sticky: float) -> np.ndarray:
        env = make_env(replace(ATARI, sticky_actions=sticky), seed=0)
        steps, first = _rollout(env, 60)
        env.close()
        return np.stack([first] + [s.obs for s in steps])

    sticky, plain = frames(0.25), frames(0.0)
    # Same seed and actions: same start, but repeated actions change the game (ale-py's
    # native default is 0.0, so this fails if the setting is not passed on).
    assert np.array_equal(sticky[0], plain[0])
    assert not np.array_equal(sticky, plain)


@pytest.mark.atari
def test_atari_rewards_are_raw() -> None:
    env = make_env(replace(ATARI, id="ALE/SpaceInvaders-v5"), seed=0)
    steps, _ = _rollout(env, 250)
    env.close()
    rewards = np.concatenate([s.rewards for s in steps])
    assert rewards.max() >= 5  # aliens are worth 5 to 30 points
    assert np.all(rewards == np.round(rewards))


@pytest.mark.atari
def test_atari_truncation_and_final_obs() -> None:
    env = make_env(replace(ATARI, max_episode_frames=80), seed=0)
    steps, _ = _rollout(env, 20)
    last, before = steps[-1], steps[-2]
    assert last.truncated.all() and not last.terminated.any()
    assert [length for _, _, length in last.episode_returns] == [20, 20]
    # final_obs continues the stack the lane was in; obs is a new game's zero-padded stack.
    assert np.array_equal(last.final_obs[:, :3], before.obs[:, 1:])
    assert last.final_obs[:, :3].any() and not last.obs[:, :3].any()
    env.close()


@pytest.mark.atari
def test_atari_life_loss_terminal_keeps_the_game() -> None:
    def run(life_loss: bool) -> list[EnvStep]:
        env = make_env(replace(ATARI, terminal_on_life_loss=life_loss), seed=0)
        steps, _ = _rollout(env, 400)
        env.close()
        return steps

    lives, games = run(True), run(False)
    game_ends = [len(s.episode_returns) for s in games]
    assert sum(game_ends) >= 1
    for a, b in zip(lives, games, strict=True):
        # Same game stream and whole-game scores; only the learning terminals differ.
        assert np.array_equal(a.obs, b.obs) and np.array_equal(a.rewards, b.rewards)
        assert a.episode_returns == b.episode_returns
        assert np.all(a.terminated >= b.terminated)
        life_lost = a.terminated & ~b.terminated
        assert np.array_equal(a.obs[life_lost], a.final_obs[life_lost])
    # Breakout has 5 lives: four life-loss terminals before each game-over terminal.
    extra = sum((a.terminated & ~b.terminated).sum() for a, b in zip(lives, games, strict=True))
    assert extra >= 4 * sum(game_ends)


def test_evaluate_cartpole_cap_and_count() -> None:
    cfg = EnvConfig(id="CartPole-v1", num_envs=4)
    scores = evaluate(_balance, cfg, episodes=5, seed=0, epsilon=0.0, max_steps=30)
    assert scores == [30.0] * 5  # capped episodes count with their return so far
    again = evaluate(_balance, cfg, episodes=3, seed=0, epsilon=0.5, max_steps=500, num_envs=2)
    assert len(again) == 3 and again == evaluate(
        _balance, cfg, episodes=3, seed=0, epsilon=0.5, max_steps=500, num_envs=2
    )


class _LaneLengthEnv:
    """Fake VecEnv: lane i's games last 5 * (i + 1) steps, with one point per step."""

    n_actions = 2

    def __init__(self, cfg: EnvConfig, *, seed: int, num_envs: int) -> None:
        self.cfg, self.num_envs = cfg, num_envs
        self.t = np.zeros(num_envs, dtype=np.int64)

    def reset(self) -> np.ndarray:
        return np.zeros((self.num_envs, 1), np.float32)

    def step(self, actions: np.ndarray) -> EnvStep:
        self.t += 1
        done = self.t == 5 * (np.arange(self.num_envs) + 1)
        ended = [(int(i), float(self.t[i]), int(self.t[i])) for i in np.flatnonzero(done)]
        self.t[done] = 0
        obs = np.zeros((self.num_envs, 1), np.float32)
        zeros = np.zeros(self.num_envs, bool)
        rewards = np.ones(self.num_envs, np.float32)
        return EnvStep(obs, obs, rewards, done, zeros, ended, np.flatnonzero(done))

    def close(self) -> None:
        pass


def test_evaluate_quota_is_not_biased_to_short_episodes(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[_LaneLengthEnv] = []

    def fake_make_env(cfg: EnvConfig, *, seed: int, num_envs: int) -> _LaneLengthEnv:
        made.append(_LaneLengthEnv(cfg, seed=seed, num_envs=num_envs))
        return made[-1]

    monkeypatch.setattr(evaluation, "make_env", fake_make_env)
    cfg = EnvConfig(terminal_on_life_loss=True, num_envs=3)

    def scores(episodes: int, max_steps: int) -> list[float]:
        act = lambda obs: np.zeros(len(obs), np.int64)  # noqa: E731
        return sorted(
            evaluate(act, cfg, episodes=episodes, seed=0, epsilon=0.0, max_steps=max_steps)
        )

    # "The first 6 to finish" would hold lane 0's 5-step game three times; quotas give each
    # lane two games, decided before any ends.
    assert scores(6, 99) == [5.0, 5.0, 10.0, 10.0, 15.0, 15.0]
    assert scores(4, 9) == [5.0, 5.0, 10.0, 15.0]
    # Evaluation never ends games at a lost life, and caps episodes through the env.
    assert not made[0].cfg.terminal_on_life_loss
    assert made[0].cfg.max_episode_frames == 99 * cfg.frame_skip
    assert made[1].num_envs == 3
