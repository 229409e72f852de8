"""Replay memory: frames stored once per lane, n-step returns, optional proportional priorities.

What is stored. Each of the `num_lanes` parallel environments ("lanes") owns a ring of
`rows_per_lane = capacity // num_lanes + frame_stack - 1 + n_step` rows. A row holds one frame
(`obs[-1]` when `frame_stack` S > 1, the whole observation when S == 1) and the metadata of the
transition that starts at that frame: action, reward, n-step return, discount and horizon. An
episode costs S rows for its first observation (all S frames, whatever padding the environment
used at reset: they are real data) plus one row per step; the row of the final observation
starts no transition. Stacks are rebuilt at sample time with one gather: the transition at row p
has `obs` = rows p-S+1..p and `next_obs` = rows p+m-S+1..p+m. As in Dopamine's
`circular_replay_buffer.py` each frame is stored once; unlike it, an episode stores its own first
S frames instead of zero padding, so a stack can never reach into a neighbouring episode and no
masking is needed at sample time.

Validity. A transition is samplable iff
  1. its n-step window is complete: n further steps were recorded, or the episode ended inside
     the window (termination or truncation), and
  2. none of its stack rows was overwritten: p >= newest_row - rows_per_lane + S (Dopamine's
     `invalid_range`; its next_obs rows come later in the ring, so they are then intact too).
The S - 1 + n extra rows are what a lane needs so that, during a long episode, exactly
`capacity // num_lanes` transitions are samplable once its ring is full; short episodes spend S
rows on their first observation, so fewer fit. Invalid transitions have zero sampling mass.

n-step returns. `rewards` = sum_{k<m} gamma^k r_{t+k} with m = n, or fewer steps when the episode
ended inside the window; `discounts` = 0 when it terminated there, else gamma^m (a truncated
episode bootstraps from its final observation, stored as its last row).

Sampling. Uniform sampling draws with replacement by rejection of invalid rows, as Dopamine's
`sample_index_batch` does. Prioritised replay (Schaul et al. 2016, proportional variant) keeps
(priority + eps)^alpha in a vectorised sum tree, zero for invalid transitions; a transition gets
the running maximum when its window completes, and a batch takes one transition per equal-mass
segment, as in Dopamine's `prioritized_replay_buffer.py`.

Memory. A 1,000,000-transition Atari buffer (84x84 uint8 frames, S = 4) holds 7,056 bytes of
frame per transition plus 21 bytes of metadata (29 with priorities): about 7.08 GB (`nbytes`).
Arrays come from np.zeros, so pages are only backed once written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

PRIORITY_EPS = 1e-6
"""Added to every priority before the exponent so no stored transition starves (Schaul et al.
2016, Sec. 3.3: p_i = |delta_i| + eps)."""

_CONFIG_KEYS = (
    "capacity",
    "num_lanes",
    "obs_shape",
    "obs_dtype",
    "frame_stack",
    "n_step",
    "gamma",
    "prioritized",
    "alpha",
)
_ARRAY_KEYS = ("actions", "rewards", "returns", "discounts", "horizons", "valid")


@dataclass
class ReplayBatch:
    """A batch of n-step transitions (numpy arrays; B is the batch size).

    Attributes:
        obs: (B, *obs_shape) observations, obs_dtype.
        actions: (B,) int64 actions taken at `obs`.
        rewards: (B,) float32 n-step discounted reward sums, sum_{k<m} gamma^k r_{t+k}.
        next_obs: (B, *obs_shape) observations m steps later (m <= n).
        discounts: (B,) float32 bootstrap factors: gamma^m, or 0 after a termination.
        weights: (B,) float32 importance-sampling weights, max 1 (ones for uniform sampling).
        indices: (B,) int64 handles for `ReplayMemory.update_priorities`.
    """

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_obs: np.ndarray
    discounts: np.ndarray
    weights: np.ndarray
    indices: np.ndarray


class _SumTree:
    """Sum tree with fanout 32 over `size` leaves, vectorised over batches of leaves.

    `levels[0]` holds the leaves, `levels[j + 1][i]` the sum of `levels[j]` entries
    32i..32i+31, and the last level the root's children. Each level is zero-padded to a multiple
    of 32, so `reshape(-1, 32)` lists a node's children in one row. Dopamine's `sum_tree.py` is
    binary and loops per sample in Python; fanout 32 makes a 1M-leaf descent 4 numpy steps for
    the whole batch.
    """

    FANOUT = 32

    def __init__(self, size: int) -> None:
        self.levels: list[np.ndarray] = []
        while True:
            size = -(-size // self.FANOUT)  # nodes on the level above
            self.levels.append(np.zeros(size * self.FANOUT))
            if size == 1:
                break
        self.total = 0.0

    def get(self, leaves: np.ndarray) -> np.ndarray:
        return self.levels[0][leaves]

    def set(self, leaves: np.ndarray, values: np.ndarray | float) -> None:
        """Sets leaves, then recomputes their ancestors from the children (no rounding drift)."""
        self.levels[0][leaves] = values
        node = leaves
        for below, level in zip(self.levels, self.levels[1:], strict=False):
            node = node // self.FANOUT
            level[node] = below.reshape(-1, self.FANOUT)[node].sum(axis=1)
        self.total = float(self.levels[-1].sum())

    def find(self, targets: np.ndarray) -> np.ndarray:
        """Returns, for each target in [0, total), the leaf whose prefix-sum interval holds it."""
        rows = np.arange(len(targets))
        node = np.zeros(len(targets), np.int64)
        for level in reversed(self.levels):
            cum = np.cumsum(level.reshape(-1, self.FANOUT)[node], axis=1)  # (B, FANOUT)
            # Keep each target below its node's sum: the parent was summed in another order, and
            # float round-off could otherwise carry a target past the last child with mass.
            targets = np.minimum(targets, np.nextafter(cum[:, -1], 0.0))
            child = (cum <= targets[:, None]).sum(axis=1)
            targets = targets - np.where(child > 0, cum[rows, child - 1], 0.0)
            node = node * self.FANOUT + child
        return node


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _shape(x: Any) -> tuple[int, ...]:
    """`np.shape`, without its Python-level dispatch for arrays (`add` runs at every step)."""
    return x.shape if isinstance(x, np.ndarray) else np.shape(x)


class ReplayMemory:
    """Circular replay memory over synchronous environment lanes (storage rules: module docstring).

    Usage: `start_episodes` with each lane's first observation, then `add` one step of all
    lanes at a time; a lane whose episode ended gets `start_episodes` before the next `add`.

    Args:
        capacity: Transitions a full memory holds during long episodes, capacity // num_lanes
            per lane (short episodes fit fewer: each start stores frame_stack frames).
        num_lanes: Parallel environments that `add` receives one step of at a time.
        obs_shape: Shape of one observation; (frame_stack, *frame_shape) when frame_stack > 1.
        obs_dtype: Storage dtype (uint8 for Atari and MinAtar frames, float32 for vectors).
        frame_stack: Frames stacked on axis 0 of an observation; each is stored once.
        n_step: Steps summed into a return before bootstrapping.
        gamma: Discount factor, in (0, 1].
        prioritized: Proportional prioritised replay (Schaul et al. 2016) instead of uniform.
        alpha: Priority exponent: a transition is drawn with probability proportional to
            (priority + eps)^alpha.
        beta: Importance-sampling exponent; a plain attribute, so it may be annealed.
        seed: Seeds the sampling generator (an int or a `SeedSequence`).
    """

    def __init__(
        self,
        *,
        capacity: int,
        num_lanes: int,
        obs_shape: tuple[int, ...],
        obs_dtype: np.dtype | type,
        frame_stack: int = 1,
        n_step: int = 1,
        gamma: float = 0.99,
        prioritized: bool = False,
        alpha: float = 0.5,
        beta: float = 0.5,
        seed: int | np.random.SeedSequence = 0,
    ) -> None:
        obs_shape = tuple(obs_shape)
        _require(
            _is_int(num_lanes) and num_lanes >= 1,
            f"num_lanes must be an int >= 1, got {num_lanes!r}",
        )
        _require(
            _is_int(capacity) and capacity >= num_lanes,
            f"capacity must be an int >= num_lanes ({num_lanes}), got {capacity!r}",
        )
        _require(
            _is_int(frame_stack) and frame_stack >= 1,
            f"frame_stack must be an int >= 1, got {frame_stack!r}",
        )
        _require(_is_int(n_step) and n_step >= 1, f"n_step must be an int >= 1, got {n_step!r}")
        _require(0.0 < gamma <= 1.0, f"gamma must be in (0, 1], got {gamma!r}")
        _require(alpha >= 0.0, f"alpha must be >= 0, got {alpha!r}")
        _require(beta >= 0.0, f"beta must be >= 0, got {beta!r}")
        _require(
            len(obs_shape) >= 1 and all(_is_int(d) and d >= 1 for d in obs_shape),
            f"obs_shape must be a non-empty tuple of positive ints, got {obs_shape!r}",
        )
        _require(
            frame_stack == 1 or (len(obs_shape) >= 2 and obs_shape[0] == frame_stack),
            f"obs_shape must be (frame_stack={frame_stack}, *frame_shape), got {obs_shape!r}",
        )
        self.capacity = int(capacity)
        self.num_lanes = int(num_lanes)
        self.obs_shape = tuple(int(d) for d in obs_shape)
        self.obs_dtype = np.dtype(obs_dtype)
        self.frame_stack = int(frame_stack)
        self.n_step = int(n_step)
        self.gamma = float(gamma)
        self.prioritized = bool(prioritized)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.frame_shape = self.obs_shape[1:] if frame_stack > 1 else self.obs_shape
        self.rows_per_lane = capacity // num_lanes + frame_stack - 1 + n_step

        # Flat index = row * num_lanes + lane: the rows written so far form a prefix of every
        # array, which `state_dict` can hand out without copying.
        size = self.rows_per_lane * self.num_lanes
        self._frames = np.zeros((size, *self.frame_shape), self.obs_dtype)
        self._actions = np.zeros(size, np.int32)
        self._rewards = np.zeros(size, np.float32)  # r_t, read until the window completes
        self._returns = np.zeros(size, np.float32)
        self._discounts = np.zeros(size, np.float32)
        self._horizons = np.zeros(size, np.int32)  # m: next_obs ends m rows later
        self._valid = np.zeros(size, bool)
        self._tree = _SumTree(size) if self.prioritized else None
        self._newest = np.full(self.num_lanes, -1, np.int64)  # absolute row of the latest frame
        self._steps = np.zeros(self.num_lanes, np.int64)  # steps of the running episode
        self._running = np.zeros(self.num_lanes, bool)
        self._num_valid = 0
        self._max_priority = 1.0  # Dopamine's initial max_recorded_priority
        self._rng = np.random.default_rng(seed)
        # _return_weights[k - 1, i]: weight of row q - n + i in the return of a k-step window
        # ending at row q, gamma^(i - (n - k)) inside the window, 0 before it.
        power = np.arange(n_step) - (n_step - np.arange(1, n_step + 1)[:, None])
        self._return_weights = np.where(power >= 0, self.gamma ** np.maximum(power, 0), 0.0)
        self._lanes = np.arange(self.num_lanes)
        self._stack_offsets = np.arange(1 - self.frame_stack, 1)
        self._window_offsets = np.arange(-self.n_step, 0)
        self._horizon_range = np.arange(1, self.n_step + 1)

    def __len__(self) -> int:
        """Number of transitions that can be sampled now."""
        return self._num_valid

    @property
    def nbytes(self) -> int:
        """Bytes held by the storage arrays (frames, metadata, sum tree)."""
        arrays = [self._frames, *(getattr(self, f"_{key}") for key in _ARRAY_KEYS)]
        if self._tree is not None:
            arrays += self._tree.levels
        return sum(a.nbytes for a in arrays)

    def start_episodes(self, lanes: np.ndarray, obs: np.ndarray) -> None:
        """Records the first observation of a new episode in each of `lanes`.

        A lane whose episode is still running ends it as truncated at its last observation (its
        pending windows complete and bootstrap from there), e.g. after a resume.

        Args:
            lanes: (k,) distinct lane indices.
            obs: (k, *obs_shape) first observations; all S frames are stored.
        """
        obs = np.asarray(obs)
        if (  # a one-lane loop's new episode: the same writes as below, in scalars
            self.num_lanes == self.frame_stack == 1
            and len(lanes) == 1
            and lanes[0] == 0
            and obs.shape == (1, *self.obs_shape)
            and not self._running[0]
        ):
            row = (int(self._newest[0]) + 1) % self.rows_per_lane
            self._frames[row] = obs[0]
            self._expire_row(row)
            self._newest[0] += 1
            self._steps[0] = 0
            self._running[0] = True
            return
        lanes = np.asarray(lanes, np.int64).reshape(-1)
        _require(
            obs.shape == (len(lanes), *self.obs_shape),
            f"obs must have shape {(len(lanes), *self.obs_shape)}, got {obs.shape}",
        )
        if not lanes.size:  # the common case in a training loop: no episode ended
            return
        _require(
            np.all((lanes >= 0) & (lanes < self.num_lanes)) and len(np.unique(lanes)) == len(lanes),
            f"lanes must be distinct ints in [0, {self.num_lanes}), got {lanes.tolist()}",
        )
        cut = lanes[self._running[lanes]]
        if cut.size:
            # Windows shorter than n are the pending ones (a full window completed at its add).
            steps = self._steps[cut, None]
            ready = (self._horizon_range <= steps) & (self._horizon_range < self.n_step)
            self._complete(cut, ready, terminated=np.zeros(len(cut), bool))
        self._write(lanes, obs.reshape(len(lanes), self.frame_stack, *self.frame_shape))
        self._steps[lanes] = 0
        self._running[lanes] = True

    def add(
        self,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        next_obs: np.ndarray,
    ) -> None:
        """Records one synchronous step of every lane.

        Args:
            actions: (num_lanes,) actions taken.
            rewards: (num_lanes,) rewards received (already clipped if clipping is wanted).
            terminated: (num_lanes,) bool, the episode reached a terminal state.
            truncated: (num_lanes,) bool, the episode was cut (e.g. time limit); bootstraps.
            next_obs: (num_lanes, *obs_shape) observations reached (the final one if ended).

        Raises:
            RuntimeError: a lane has no running episode (call `start_episodes` first).
        """
        terminated = np.asarray(terminated, bool)
        done = terminated | np.asarray(truncated, bool)
        next_obs = np.asarray(next_obs)
        n = self.num_lanes
        _require(
            _shape(actions) == (n,) == _shape(rewards) == done.shape == terminated.shape,
            f"actions, rewards, terminated and truncated must have shape ({n},)",
        )
        _require(
            next_obs.shape == (n, *self.obs_shape),
            f"next_obs must have shape {(n, *self.obs_shape)}, got {next_obs.shape}",
        )
        if not (self._running[0] if n == 1 else self._running.all()):
            idle = np.flatnonzero(~self._running).tolist()
            raise RuntimeError(f"lanes {idle} have no running episode: call start_episodes first")
        if n == 1:
            action, reward = int(actions[0]), float(rewards[0])
            self._add_one(action, reward, bool(terminated[0]), bool(done[0]), next_obs[0])
            return
        start = self._flat(self._newest, self._lanes)
        self._actions[start] = actions
        self._rewards[start] = rewards
        # `_write` of one frame per lane, spelled out: this runs at every agent step.
        row = self._newest + 1
        newest_frames = next_obs.reshape(n, -1, *self.frame_shape)[:, -1]
        self._frames[self._flat(row, self._lanes)] = newest_frames
        self._expire(self._flat(row + self.frame_stack - 1, self._lanes))
        self._newest += 1
        self._steps += 1
        steps = self._steps[:, None]
        full = (self._horizon_range == self.n_step) & (steps >= self.n_step)
        ended = done[:, None] & (self._horizon_range <= steps)
        self._complete(self._lanes, full | ended, terminated)
        self._running &= ~done

    def _add_one(
        self, action: int, reward: float, terminated: bool, done: bool, next_obs: np.ndarray
    ) -> None:
        """`add` for a single lane in Python scalars: the same writes, in the same order, at a
        fraction of the numpy calls (it runs at every agent step of a one-environment run)."""
        rows, stack = self.rows_per_lane, self.frame_stack
        newest = int(self._newest[0])
        start = newest % rows
        self._actions[start] = action
        self._rewards[start] = reward
        row = newest + 1
        self._frames[row % rows] = next_obs[-1] if stack > 1 else next_obs
        self._expire_row((row + stack - 1) % rows)
        self._newest[0] = row
        steps = int(self._steps[0]) + 1
        self._steps[0] = steps
        if self.n_step == 1:  # the transition at `start` completes now, its return the reward
            self._returns[start] = self._rewards[start]
            self._horizons[start] = 1
            self._discounts[start] = 0.0 if terminated else self.gamma
            self._valid[start] = True
            self._num_valid += 1
            if self._tree is not None:
                self._tree.set(np.array([start]), self._max_priority)
        else:
            horizons = self._horizon_range
            ready = ((horizons == self.n_step) & (steps >= self.n_step)) | (
                done & (horizons <= steps)
            )
            self._complete(self._lanes, ready[None], np.array([terminated]))
        if done:
            self._running[0] = False

    def sample(
        self,
        batch_size: int,
        *,
        rng: np.random.Generator | None = None,
        uniform: bool = False,
    ) -> ReplayBatch:
        """Draws `batch_size` valid transitions with replacement.

        `rng` draws instead of the memory's own generator (e.g. for diagnostics that must not
        shift the training stream); nothing else in the memory changes.

        Uniform sampling draws independently; prioritised sampling draws one transition from each
        of `batch_size` equal-mass segments (Schaul et al. 2016, Appendix B.2.1). `uniform=True`
        draws uniformly over valid transitions from a prioritised memory too (priorities are
        neither read nor changed), e.g. for Replicate batches.

        Returns:
            A `ReplayBatch`; its weights are (N * P(i))^-beta / max over the batch (Schaul et al.
            2016, Algorithm 1; batch maximum as in Dopamine's `rainbow_agent.py`), ones for a
            uniform draw.
        """
        _require(
            _is_int(batch_size) and batch_size >= 1,
            f"batch_size must be an int >= 1, got {batch_size!r}",
        )
        if self._num_valid == 0:
            raise RuntimeError("cannot sample: no transition has a complete n-step window yet")
        rng = self._rng if rng is None else rng
        if self._tree is None or uniform:
            indices = self._sample_uniform(batch_size, rng)
            weights = np.ones(batch_size, np.float32)
        else:
            total = self._tree.total
            segments = np.arange(batch_size) + rng.random(batch_size)
            indices = self._tree.find(segments * (total / batch_size))
            probs = self._tree.get(indices) / total
            weights = (self._num_valid * probs) ** -self.beta
            weights = (weights / weights.max()).astype(np.float32)
        obs, next_obs = self._stacks(indices)
        return ReplayBatch(
            obs=obs.reshape(batch_size, *self.obs_shape),
            actions=self._actions[indices].astype(np.int64),
            rewards=self._returns[indices],
            next_obs=next_obs.reshape(batch_size, *self.obs_shape),
            discounts=self._discounts[indices],
            weights=weights,
            indices=indices,
        )

    def update_priorities(self, indices: np.ndarray, priorities: np.ndarray) -> None:
        """Sets the priorities of sampled transitions (prioritised memories only).

        Stored as (priority + eps)^alpha (Schaul et al. 2016, Sec. 3.3). Handles whose transition
        expired since sampling are skipped; call this before the next `add`, as a handle is reused
        once its row is overwritten.

        Args:
            indices: (k,) handles from `ReplayBatch.indices`.
            priorities: (k,) non-negative priorities, e.g. |TD error| or the C51 loss.
        """
        if self._tree is None:
            raise RuntimeError("update_priorities needs a memory built with prioritized=True")
        indices = np.asarray(indices, np.int64).reshape(-1)
        priorities = np.asarray(priorities, np.float64).reshape(-1)
        _require(
            indices.shape == priorities.shape,
            f"indices and priorities differ in length: {indices.size} and {priorities.size}",
        )
        _require(
            bool(np.all(np.isfinite(priorities) & (priorities >= 0))),
            "priorities must be finite and >= 0",
        )
        _require(
            bool(np.all((indices >= 0) & (indices < len(self._valid)))),
            f"indices must be in [0, {len(self._valid)})",
        )
        keep = self._valid[indices]
        values = (priorities[keep] + PRIORITY_EPS) ** self.alpha
        if values.size:
            self._tree.set(indices[keep], values)
            self._max_priority = max(self._max_priority, float(values.max()))

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: storage, cursors, priorities and RNG state.

        Arrays are CPU tensors sharing memory with the live storage (no copy of gigabytes of
        frames), so `torch.save` the dict before the next `add`; only the rows written so far
        are included. Loads with `torch.load(..., weights_only=True)`.
        """
        used = min(int(self._newest.max()) + 1, self.rows_per_lane) * self.num_lanes
        state: dict[str, Any] = {key: getattr(self, key) for key in _CONFIG_KEYS}
        state["obs_dtype"] = self.obs_dtype.str
        state["frames"] = torch.from_numpy(self._frames[:used])
        for key in _ARRAY_KEYS:
            state[key] = torch.from_numpy(getattr(self, f"_{key}"))
        state.update(
            newest=torch.from_numpy(self._newest),
            steps=torch.from_numpy(self._steps),
            running=torch.from_numpy(self._running),
            num_valid=self._num_valid,
            max_priority=self._max_priority,
            beta=self.beta,
            rng=self._rng.bit_generator.state,
        )
        if self._tree is not None:
            state["priorities"] = torch.from_numpy(self._tree.levels[0])
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a `state_dict` taken from a memory built with the same arguments.

        Raises:
            ValueError: a construction argument differs from the saved one.
        """
        for key in _CONFIG_KEYS:
            mine = self.obs_dtype.str if key == "obs_dtype" else getattr(self, key)
            saved = tuple(state[key]) if key == "obs_shape" else state[key]
            _require(saved == mine, f"state_dict has {key}={saved!r}, this memory has {mine!r}")
        frames = np.asarray(state["frames"])
        self._frames[: len(frames)] = frames
        for key in _ARRAY_KEYS:
            getattr(self, f"_{key}")[:] = np.asarray(state[key])
        if self._tree is not None:
            leaves = np.asarray(state["priorities"])
            self._tree.set(np.arange(len(leaves)), leaves)
        self._newest[:] = np.asarray(state["newest"])
        self._steps[:] = np.asarray(state["steps"])
        self._running[:] = np.asarray(state["running"])
        self._num_valid = int(state["num_valid"])
        self._max_priority = float(state["max_priority"])
        self.beta = float(state["beta"])
        self._rng.bit_generator.state = state["rng"]

    def _stacks(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The frame stacks of `obs` and `next_obs` of the transitions at `indices`."""
        if self.num_lanes == 1 and self.frame_stack == 1:  # the flat index is the row
            next_rows = (indices + self._horizons[indices]) % self.rows_per_lane
            return self._frames[indices], self._frames[next_rows]
        rows, lanes = np.divmod(indices, self.num_lanes)
        next_rows = rows + self._horizons[indices]
        if self.frame_stack == 1:  # one frame per row: the index is the obs row (fewer steps)
            return self._frames[indices], self._frames[self._flat(next_rows, lanes)]
        stack = self._stack_offsets
        obs = self._frames[self._flat(rows[:, None] + stack, lanes[:, None])]
        next_obs = self._frames[self._flat(next_rows[:, None] + stack, lanes[:, None])]
        return obs, next_obs

    def _sample_uniform(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """Draws valid flat indices uniformly, with replacement, by rejection over written rows.

        Dopamine's `sample_index_batch` retries invalid draws the same way. Each round draws a
        quarter more than the valid fraction says it needs, so one round almost always does.
        """
        newest = int(self._newest[0] if self.num_lanes == 1 else self._newest.max())
        written = min(newest + 1, self.rows_per_lane) * self.num_lanes
        indices = self._draw_valid(batch_size, written, rng)
        while len(indices) < batch_size:
            more = self._draw_valid(batch_size - len(indices), written, rng)
            indices = np.concatenate([indices, more])
        return indices

    def _draw_valid(self, need: int, written: int, rng: np.random.Generator) -> np.ndarray:
        """Up to `need` valid flat indices from one round of draws over the written rows."""
        draws = rng.integers(0, written, int(1.25 * need * written / self._num_valid) + 8)
        return draws[self._valid[draws]][:need]

    def _flat(self, rows: np.ndarray, lanes: np.ndarray) -> np.ndarray:
        """Flat storage index of absolute per-lane `rows` (any integer, wrapped into the ring)."""
        return rows % self.rows_per_lane * self.num_lanes + lanes

    def _write(self, lanes: np.ndarray, frames: np.ndarray) -> None:
        """Appends frames (k, F, *frame_shape) to the rings of `lanes` (k,)."""
        rows = self._newest[lanes, None] + 1 + np.arange(frames.shape[1])
        self._frames[self._flat(rows, lanes[:, None])] = frames
        self._expire(self._flat(rows + self.frame_stack - 1, lanes[:, None]).reshape(-1))
        self._newest[lanes] += frames.shape[1]

    def _expire(self, flat: np.ndarray) -> None:
        """Marks the transitions at `flat` unsamplable, after their oldest frame's row was reused.

        Overwriting absolute row q - rows_per_lane breaks the stack of the transition S - 1 rows
        later, the last one whose obs still reached back to it (Dopamine's invalid_range).
        """
        expired = flat[self._valid[flat]]
        if expired.size:
            self._valid[expired] = False
            self._num_valid -= expired.size
            if self._tree is not None:
                self._tree.set(expired, 0.0)

    def _expire_row(self, flat: int) -> None:
        """`_expire` of one transition, in scalars."""
        if self._valid[flat]:
            self._valid[flat] = False
            self._num_valid -= 1
            if self._tree is not None:
                self._tree.set(np.array([flat]), 0.0)

    def _complete(self, lanes: np.ndarray, ready: np.ndarray, terminated: np.ndarray) -> None:
        """Finalises the transitions whose n-step window just completed and makes them samplable.

        Args:
            lanes: (k,) lanes whose newest row ends the windows.
            ready: (k, n) bool; column m - 1 marks the transition m rows before the newest.
            terminated: (k,) bool, the lane's episode terminated at its newest row.
        """
        lane_pos, col = np.nonzero(ready)
        if not lane_pos.size:
            return
        newest = self._newest[lanes]
        if self.n_step == 1:  # the return is the reward (times gamma^0 = 1: the same number)
            returns = self._rewards[self._flat(newest - 1, lanes)][:, None]
        else:
            window = self._flat(newest[:, None] + self._window_offsets, lanes[:, None])
            returns = self._rewards[window] @ self._return_weights.T  # (k, n), column m - 1
        horizons = col + 1
        flat = self._flat(newest[lane_pos] - horizons, lanes[lane_pos])
        self._returns[flat] = returns[lane_pos, col]
        self._horizons[flat] = horizons
        # A termination inside the window cuts the bootstrap; a truncation keeps it.
        self._discounts[flat] = np.where(terminated[lane_pos], 0.0, self.gamma**horizons)
        self._valid[flat] = True
        self._num_valid += flat.size
        if self._tree is not None:
            self._tree.set(flat, self._max_priority)
