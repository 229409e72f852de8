"""Tests for `hetero_lr.replay` against a brute-force reference memory.

Synthetic frames encode (lane, episode, step), so every rebuilt stack can be traced back to the
observation the fake environment returned. The reference keeps whole observations per
transition and computes n-step returns naively; it knows only the documented storage contract
(a lane keeps its last `rows_per_lane` frames: S per episode start, one per step).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from hetero_lr.replay import PRIORITY_EPS, ReplayMemory

GAMMA = 0.9
# name: (frame_stack, obs_shape, obs_dtype); S == 1 stores whole observations as frames.
KINDS = {
    "atari_like": (4, (4, 2, 3), np.uint8),
    "minatar_like": (1, (2, 3), np.uint8),
    "vector": (1, (3,), np.float32),
}
STEP_OFFSET = 8  # keeps encoded steps positive: reset padding frames have steps -3..-1


def encode_frame(kind: str, lane: int, episode: int, step: int) -> np.ndarray:
    """One frame whose pixels say which lane, episode and step it comes from."""
    if kind == "vector":
        return np.array([lane, episode, step], np.float32)
    code = step + STEP_OFFSET
    return np.array([[lane, episode % 256, episode // 256], [code % 256, code // 256, 7]], np.uint8)


def decode_key(kind: str, obs: np.ndarray) -> tuple[int, int, int]:
    """(lane, episode, step) of an observation's newest frame."""
    frame = obs[-1] if KINDS[kind][0] > 1 else obs
    if kind == "vector":
        lane, episode, step = (int(v) for v in frame)
        return lane, episode, step
    step = int(frame[1, 0]) + 256 * int(frame[1, 1]) - STEP_OFFSET
    return int(frame[0, 0]), int(frame[0, 1]) + 256 * int(frame[0, 2]), step


def observation(kind: str, lane: int, episode: int, step: int) -> np.ndarray:
    """What the environment returns: S stacked frames ending at `step` (reset padding first)."""
    stack = KINDS[kind][0]
    if stack == 1:
        return encode_frame(kind, lane, episode, step)
    return np.stack(
        [encode_frame(kind, lane, episode, s) for s in range(step - stack + 1, step + 1)]
    )


def make_memory(kind: str = "atari_like", **overrides) -> ReplayMemory:
    """A small memory for observations of `kind`: 3 lanes of 10 transitions each."""
    stack, shape, dtype = KINDS[kind]
    config = dict(
        capacity=30, num_lanes=3, obs_shape=shape, obs_dtype=dtype, frame_stack=stack, gamma=GAMMA
    )
    return ReplayMemory(**(config | overrides))


@dataclass
class Episode:
    """One episode as the reference stores it: every observation in full."""

    start_row: int  # lane row of the first observation's first frame
    obs: list[np.ndarray]
    actions: list[int] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    ended: bool = False
    terminated: bool = False


class Reference:
    """Brute-force memory: whole observations per step, naive n-step returns."""

    def __init__(self, mem: ReplayMemory) -> None:
        self.mem = mem
        self.rows = [0] * mem.num_lanes  # frames each lane has written
        self.episodes: dict[tuple[int, int], Episode] = {}
        self.running: list[tuple[int, int] | None] = [None] * mem.num_lanes

    def start(self, lanes: np.ndarray, obs: np.ndarray, episodes: np.ndarray) -> None:
        for lane, first, episode in zip(lanes, obs, episodes, strict=True):
            if self.running[lane] is not None:  # restarted mid-episode: truncated there
                self.episodes[self.running[lane]].ended = True
            self.running[lane] = (int(lane), int(episode))
            self.episodes[self.running[lane]] = Episode(self.rows[lane], [first])
            self.rows[lane] += self.mem.frame_stack

    def add(self, actions, rewards, terminated, truncated, next_obs) -> None:
        for lane, key in enumerate(self.running):
            episode = self.episodes[key]
            episode.actions.append(int(actions[lane]))
            episode.rewards.append(float(rewards[lane]))
            episode.obs.append(next_obs[lane])
            self.rows[lane] += 1
            if terminated[lane] or truncated[lane]:
                episode.ended, episode.terminated = True, bool(terminated[lane])
                self.running[lane] = None

    def samplable(self) -> dict[tuple[int, int, int], tuple]:
        """(lane, episode, step) -> (obs, action, n-step return, next_obs, discount)."""
        n, gamma, out = self.mem.n_step, self.mem.gamma, {}
        for (lane, number), ep in self.episodes.items():
            steps = len(ep.actions)
            for t in range(steps):
                complete = ep.ended or t + n <= steps
                retained = ep.start_row + t >= self.rows[lane] - self.mem.rows_per_lane
                if not (complete and retained):
                    continue
                m = min(n, steps - t)
                ret = sum(gamma**j * ep.rewards[t + j] for j in range(m))
                cut = ep.ended and ep.terminated and t + m == steps
                out[lane, number, t] = (
                    ep.obs[t],
                    ep.actions[t],
                    ret,
                    ep.obs[t + m],
                    0.0 if cut else gamma**m,
                )
        return out


class Stream:
    """Random episodes in every lane (many of 1-3 steps), fed to a memory and its reference."""

    def __init__(self, kind: str, mem: ReplayMemory, seed: int = 0, restart_prob: float = 0.0):
        self.kind, self.mem, self.ref = kind, mem, Reference(mem)
        self.mirrors: list[ReplayMemory] = []  # memories that receive the same calls
        self.rng = np.random.default_rng(seed)
        self.restart_prob = restart_prob
        lanes = mem.num_lanes
        self.episode = np.zeros(lanes, np.int64)
        self.step_count = np.zeros(lanes, np.int64)
        self.length = np.zeros(lanes, np.int64)
        self.terminates = np.zeros(lanes, bool)
        self.reset(np.arange(lanes))

    def reset(self, lanes: np.ndarray) -> None:
        self.episode[lanes] += 1
        self.step_count[lanes] = 0
        short = self.rng.random(len(lanes)) < 0.5
        self.length[lanes] = np.where(
            short, self.rng.integers(1, 4, len(lanes)), self.rng.integers(4, 13, len(lanes))
        )
        self.terminates[lanes] = self.rng.random(len(lanes)) < 0.5
        obs = np.stack([observation(self.kind, lane, self.episode[lane], 0) for lane in lanes])
        for mem in (self.mem, *self.mirrors):
            mem.start_episodes(lanes, obs)
        self.ref.start(lanes, obs, self.episode[lanes])

    def step(self) -> None:
        lanes = self.mem.num_lanes
        actions = self.rng.integers(0, 6, lanes)
        rewards = self.rng.integers(-2, 3, lanes).astype(np.float32)
        self.step_count += 1
        ended = self.step_count >= self.length
        terminated, truncated = ended & self.terminates, ended & ~self.terminates
        next_obs = np.stack(
            [
                observation(self.kind, lane, self.episode[lane], self.step_count[lane])
                for lane in range(lanes)
            ]
        )
        for mem in (self.mem, *self.mirrors):
            mem.add(actions, rewards, terminated, truncated, next_obs)
        self.ref.add(actions, rewards, terminated, truncated, next_obs)
        if ended.any():
            self.reset(np.flatnonzero(ended))
        if self.rng.random() < self.restart_prob:  # e.g. environments reset after a resume
            self.reset(self.rng.integers(0, lanes, 1))


def check_against_reference(kind: str, mem: ReplayMemory, ref: Reference) -> None:
    """Every handle maps to one samplable reference transition, with equal content, and all
    samplable transitions are reachable."""
    expected = ref.samplable()
    assert len(mem) == len(expected)
    if not expected:
        with pytest.raises(RuntimeError):
            mem.sample(1)
        return
    batch = mem.sample(30 * len(expected))
    _, first, inverse = np.unique(batch.indices, return_index=True, return_inverse=True)
    for values in (batch.obs, batch.actions, batch.rewards, batch.next_obs, batch.discounts):
        np.testing.assert_array_equal(values, values[first][inverse])  # a handle is one transition
    seen = set()
    for i in first:
        key = decode_key(kind, batch.obs[i])
        assert key in expected, f"sampled {key}: overwritten or incomplete window"
        obs, action, ret, next_obs, discount = expected[key]
        np.testing.assert_array_equal(batch.obs[i], obs)
        np.testing.assert_array_equal(batch.next_obs[i], next_obs)
        assert batch.actions[i] == action
        np.testing.assert_allclose(batch.rewards[i], ret, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(batch.discounts[i], discount, rtol=1e-6)
        seen.add(key)
    assert seen == set(expected) and len(seen) == len(first)


@pytest.mark.parametrize("lanes", [3, 1], ids=["3-lanes", "1-lane"])  # 1: the scalar add path
@pytest.mark.parametrize("prioritized", [False, True], ids=["uniform", "prioritized"])
@pytest.mark.parametrize("n_step", [1, 3])
@pytest.mark.parametrize("kind", list(KINDS))
def test_matches_reference_through_wraparound(
    kind: str, n_step: int, prioritized: bool, lanes: int
) -> None:
    mem = make_memory(
        kind, n_step=n_step, prioritized=prioritized, num_lanes=lanes, capacity=10 * lanes
    )
    stream = Stream(kind, mem, seed=n_step, restart_prob=0.03)
    for t in range(240):  # about 10 times each lane's ring
        stream.step()
        if t % 6 == 0:
            check_against_reference(kind, mem, stream.ref)
    batch = mem.sample(64)
    assert batch.obs.dtype == mem.obs_dtype and batch.obs.shape == (64, *mem.obs_shape)
    assert batch.actions.dtype == np.int64 and batch.indices.dtype == np.int64
    for values in (batch.rewards, batch.discounts, batch.weights):
        assert values.dtype == np.float32 and values.shape == (64,)


def single_lane(n_step: int, **overrides) -> ReplayMemory:
    """One lane of scalar observations equal to the step number, gamma 0.5."""
    config = dict(capacity=16, num_lanes=1, obs_shape=(1,), obs_dtype=np.float32, n_step=n_step)
    return ReplayMemory(**(config | {"gamma": 0.5} | overrides))


def run_episode(mem: ReplayMemory, rewards: list[float], *, terminated: bool, start: int = 0):
    """Feeds one episode observing start, start+1, ...; ends it by termination or truncation."""
    mem.start_episodes(np.array([0]), np.array([[start]], np.float32))
    for t, reward in enumerate(rewards):
        last = t == len(rewards) - 1
        mem.add(
            np.array([t]),
            np.array([reward], np.float32),
            np.array([last and terminated]),
            np.array([last and not terminated]),
            np.array([[start + t + 1]], np.float32),
        )


def transitions(mem: ReplayMemory) -> dict[int, tuple[float, float, float]]:
    """obs -> (n-step return, next_obs, discount) for every samplable transition."""
    batch = mem.sample(40 * len(mem))
    return {
        int(o[0]): (float(r), float(no[0]), float(d))
        for o, r, no, d in zip(
            batch.obs, batch.rewards, batch.next_obs, batch.discounts, strict=True
        )
    }


def test_three_step_returns_around_termination_and_truncation() -> None:
    mem = single_lane(3)
    run_episode(mem, [1, 2, 4, 8], terminated=True)
    # Windows shrink at the terminal and stop bootstrapping: 1 + .5*2 + .25*4, 2 + .5*4 + .25*8.
    assert transitions(mem) == {0: (3, 3, 0.125), 1: (6, 4, 0), 2: (8, 4, 0), 3: (8, 4, 0)}
    run_episode(mem, [1, 1], terminated=False, start=10)
    # Truncation keeps bootstrapping from the final observation, with gamma^m.
    assert transitions(mem) == {
        0: (3, 3, 0.125),
        1: (6, 4, 0),
        2: (8, 4, 0),
        3: (8, 4, 0),
        10: (1.5, 12, 0.25),
        11: (1, 12, 0.5),
    }


def test_one_step_returns_around_termination_and_truncation() -> None:
    mem = single_lane(1)
    run_episode(mem, [1, 2], terminated=True)
    run_episode(mem, [4], terminated=False, start=10)
    assert transitions(mem) == {0: (1, 1, 0.5), 1: (2, 2, 0), 10: (4, 11, 0.5)}


def test_incomplete_windows_wait_for_n_steps_or_the_episode_end() -> None:
    mem = single_lane(3, prioritized=True)
    mem.start_episodes(np.array([0]), np.zeros((1, 1), np.float32))
    for t in range(4):
        assert len(mem) == max(0, t - 2)
        mem.add(
            np.array([0]),
            np.ones(1),
            np.zeros(1, bool),
            np.zeros(1, bool),
            np.full((1, 1), t + 1.0),
        )
    assert set(transitions(mem)) == {0, 1}
    mem.start_episodes(np.array([0]), np.full((1, 1), 10.0))  # cut mid-episode: truncated at obs 4
    assert transitions(mem) == {
        0: (1.75, 3, 0.125),
        1: (1.75, 4, 0.125),
        2: (1.5, 4, 0.25),
        3: (1, 4, 0.5),
    }


@pytest.mark.parametrize(("kind", "n_step"), [("minatar_like", 1), ("atari_like", 3)])
def test_long_episodes_keep_exactly_capacity_transitions(kind: str, n_step: int) -> None:
    mem = make_memory(kind, capacity=30, num_lanes=3, n_step=n_step)
    assert mem.rows_per_lane == 10 + mem.frame_stack - 1 + n_step
    mem.start_episodes(np.arange(3), np.zeros((3, *mem.obs_shape)))
    for _ in range(25):
        mem.add(
            np.zeros(3),
            np.zeros(3),
            np.zeros(3, bool),
            np.zeros(3, bool),
            np.zeros((3, *mem.obs_shape)),
        )
    assert len(mem) == 30


def test_first_stack_of_an_episode_is_its_reset_observation() -> None:
    mem = make_memory(num_lanes=1, capacity=10, frame_stack=4, obs_shape=(4, 2, 3))
    for episode in (1, 2):
        mem.start_episodes(np.array([0]), observation("atari_like", 0, episode, 0)[None])
        mem.add(
            np.zeros(1),
            np.zeros(1),
            np.ones(1, bool),
            np.zeros(1, bool),
            observation("atari_like", 0, episode, 1)[None],
        )
    batch = mem.sample(50)
    for obs, next_obs in zip(batch.obs, batch.next_obs, strict=True):
        _, episode, _ = decode_key("atari_like", obs)
        np.testing.assert_array_equal(obs, observation("atari_like", 0, episode, 0))
        np.testing.assert_array_equal(next_obs, observation("atari_like", 0, episode, 1))


def filled_priority_memory(
    alpha: float = 0.5, beta: float = 0.5
) -> tuple[ReplayMemory, np.ndarray]:
    """Eight samplable transitions (obs 0..7) in one lane; returns the memory and their handles."""
    mem = single_lane(1, capacity=8, prioritized=True, alpha=alpha, beta=beta)
    run_episode(mem, [0] * 8, terminated=True)
    batch = mem.sample(8)  # equal priorities: one draw per segment is one per transition
    handles = np.empty(8, np.int64)
    handles[batch.obs[:, 0].astype(int)] = batch.indices
    assert len(mem) == 8 and len(set(handles)) == 8
    return mem, handles


def draw_counts(
    mem: ReplayMemory, handles: np.ndarray, batches: int, batch_size: int
) -> np.ndarray:
    position = {h: i for i, h in enumerate(handles)}
    counts = np.zeros(len(handles))
    for _ in range(batches):
        for h in mem.sample(batch_size).indices:
            counts[position[h]] += 1
    return counts


def test_uniform_sampling_is_uniform() -> None:
    mem = single_lane(1, capacity=8)
    run_episode(mem, [0] * 8, terminated=True)
    counts = np.bincount(mem.sample(16_000).obs[:, 0].astype(int), minlength=8)
    chi_square = ((counts - 2_000) ** 2 / 2_000).sum()
    assert chi_square < 7 + 5 * np.sqrt(14)  # df 7, about p = 1e-3


def test_prioritized_frequencies_follow_priorities() -> None:
    mem, handles = filled_priority_memory()
    priorities = np.array([0.0, 1, 2, 3, 4, 5, 6, 7])
    mem.update_priorities(handles, priorities)
    mass = (priorities + PRIORITY_EPS) ** 0.5
    expected = 12_800 * mass / mass.sum()
    counts = draw_counts(mem, handles, batches=200, batch_size=64)
    assert ((counts - expected) ** 2 / expected).sum() < 7 + 5 * np.sqrt(14)
    mem.update_priorities(handles[[3]], np.array([1e6]))
    counts = draw_counts(mem, handles, batches=20, batch_size=64)
    assert counts[3] / counts.sum() > 0.97  # 1000 / (1000 + 5.4) of the mass


def test_uniform_draws_from_a_prioritized_memory_ignore_and_keep_priorities() -> None:
    mem, handles = filled_priority_memory()
    mem.update_priorities(handles, np.array([1e6, 0, 0, 0, 0, 0, 0, 0]))
    leaves = mem._tree.levels[0].copy()
    batch = mem.sample(16_000, uniform=True)
    counts = np.bincount(batch.obs[:, 0].astype(int), minlength=8)
    chi_square = ((counts - 2_000) ** 2 / 2_000).sum()
    assert chi_square < 7 + 5 * np.sqrt(14)  # df 7, about p = 1e-3
    assert (batch.weights == 1).all()
    np.testing.assert_array_equal(mem._tree.levels[0], leaves)  # priorities untouched


def test_importance_weights_and_new_transitions_at_max_priority() -> None:
    mem, handles = filled_priority_memory(alpha=1.0, beta=0.4)
    priorities = np.arange(1.0, 9.0)
    mem.update_priorities(handles, priorities)
    batch = mem.sample(64)
    probs = (priorities + PRIORITY_EPS) / (priorities + PRIORITY_EPS).sum()
    weights = (8 * probs[batch.obs[:, 0].astype(int)]) ** -0.4
    np.testing.assert_allclose(batch.weights, weights / weights.max(), rtol=1e-6)
    # The next episode overwrites the rows of obs 0 and 1; its transition enters at the running
    # maximum priority, that of obs 7, so both get the same importance weight.
    run_episode(mem, [0], terminated=True, start=20)
    batch = mem.sample(256)
    obs = batch.obs[:, 0].astype(int)
    assert len(mem) == 7 and set(obs) == {2, 3, 4, 5, 6, 7, 20}
    np.testing.assert_array_equal(batch.weights[obs == 20], batch.weights[obs == 7][0])


def test_update_priorities_skips_expired_handles() -> None:
    mem = single_lane(3, capacity=4, prioritized=True)  # 7 rows
    run_episode(mem, [0] * 6, terminated=True)
    handles = mem.sample(6).indices  # one per transition (equal priorities)
    run_episode(mem, [0], terminated=False, start=10)  # overwrites the rows of obs 0 and 1
    assert len(mem) == 5
    mem.update_priorities(handles, np.full(6, 1e6))
    assert set(mem.sample(100).obs[:, 0].astype(int)) == {2, 3, 4, 5, 10}


def test_update_priorities_rejects_bad_input() -> None:
    mem, handles = filled_priority_memory()
    with pytest.raises(ValueError, match="priorities"):
        mem.update_priorities(handles[:2], np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="length"):
        mem.update_priorities(handles[:2], np.ones(3))
    with pytest.raises(RuntimeError, match="prioritized"):
        single_lane(1).update_priorities(handles, np.ones(8))


@pytest.mark.parametrize("prioritized", [False, True], ids=["uniform", "prioritized"])
def test_same_seed_same_samples(prioritized: bool) -> None:
    batches = []
    for seed in (3, 3, 4):
        mem = make_memory(n_step=3, prioritized=prioritized, seed=seed)
        stream = Stream("atari_like", mem, seed=0)
        for _ in range(50):
            stream.step()
        if prioritized:  # distinct priorities, so that the strata do not fix the draws
            handles = mem.sample(8).indices
            mem.update_priorities(handles, np.arange(len(handles), dtype=float))
        batches.append(mem.sample(32))
    for name in ("obs", "actions", "rewards", "next_obs", "discounts", "weights", "indices"):
        np.testing.assert_array_equal(getattr(batches[0], name), getattr(batches[1], name))
    assert not np.array_equal(batches[0].indices, batches[2].indices)


@pytest.mark.parametrize("prioritized", [False, True], ids=["uniform", "prioritized"])
def test_state_dict_round_trip_resumes_identically(prioritized: bool) -> None:
    mem = make_memory(n_step=3, prioritized=prioritized, seed=1)
    stream = Stream("atari_like", mem, seed=2, restart_prob=0.05)
    for _ in range(45):
        stream.step()
    buffer = io.BytesIO()
    torch.save(mem.state_dict(), buffer)
    buffer.seek(0)
    restored = make_memory(n_step=3, prioritized=prioritized, seed=99)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    stream.mirrors.append(restored)
    for _ in range(40):
        stream.step()
        a, b = mem.sample(16), restored.sample(16)
        for name in ("obs", "actions", "rewards", "next_obs", "discounts", "weights", "indices"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        if prioritized:
            mem.update_priorities(a.indices, a.rewards**2)
            restored.update_priorities(b.indices, b.rewards**2)
    assert len(mem) == len(restored)


def test_state_dict_holds_only_written_frames_and_checks_config() -> None:
    mem = make_memory(capacity=300)
    Stream("atari_like", mem).step()
    state = mem.state_dict()
    assert state["frames"].shape[0] < mem.rows_per_lane * mem.num_lanes
    with pytest.raises(ValueError, match="n_step"):
        make_memory(capacity=300, n_step=2).load_state_dict(state)


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize("prioritized", [False, True], ids=["uniform", "prioritized"])
def test_million_transition_atari_buffer_fits_in_7_5_gb(prioritized: bool) -> None:
    before = resident_bytes() if os.path.exists("/proc/self/statm") else 0
    mem = ReplayMemory(
        capacity=1_000_000,
        num_lanes=8,
        obs_shape=(4, 84, 84),
        obs_dtype=np.uint8,
        frame_stack=4,
        n_step=3,
        prioritized=prioritized,
    )
    assert mem.nbytes <= 7.5e9
    assert 84 * 84 <= mem.nbytes / 1_000_000 <= 84 * 84 + 40  # a frame plus small metadata
    if before:  # allocation must not touch the pages
        assert resident_bytes() - before < 100e6


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"capacity": 2}, "capacity"),
        ({"num_lanes": 0}, "num_lanes"),
        ({"n_step": 0}, "n_step"),
        ({"gamma": 0.0}, "gamma"),
        ({"gamma": 1.5}, "gamma"),
        ({"frame_stack": 0}, "frame_stack"),
        ({"obs_shape": (3, 2, 3)}, "obs_shape"),
        ({"obs_shape": (4, 0, 3)}, "obs_shape"),
        ({"alpha": -1.0}, "alpha"),
    ],
)
def test_constructor_rejects_bad_arguments(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_memory(**overrides)


def test_protocol_errors() -> None:
    mem = make_memory()
    step = (np.zeros(3), np.zeros(3), np.zeros(3, bool), np.zeros(3, bool), np.zeros((3, 4, 2, 3)))
    with pytest.raises(RuntimeError, match="start_episodes"):
        mem.add(*step)
    with pytest.raises(ValueError, match="obs"):
        mem.start_episodes(np.arange(3), np.zeros((3, 2, 3)))
    with pytest.raises(ValueError, match="lanes"):
        mem.start_episodes(np.array([0, 0]), np.zeros((2, 4, 2, 3)))
    mem.start_episodes(np.arange(3), np.zeros((3, 4, 2, 3)))
    with pytest.raises(RuntimeError, match="cannot sample"):
        mem.sample(1)
    with pytest.raises(ValueError, match="next_obs"):
        mem.add(*step[:4], np.zeros((3, 2, 3)))
    mem.add(*step[:2], np.array([True, False, False]), *step[3:])
    with pytest.raises(RuntimeError, match=r"lanes \[0\]"):
        mem.add(*step)
