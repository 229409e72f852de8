"""Replay memory cost on Atari-shaped data: bytes per transition, add and sample throughput.

Fills a buffer with synthetic 84x84 uint8 frames (4-frame stacks, episodes of about 1,000
steps) past wraparound and times `add`, `sample` at batch 32 and 512 and `update_priorities`,
uniform and prioritised. "frame copy alone" gathers the same 2 * 4 frames per transition from a
plain array: the floor that any frames-once memory pays. The default run takes well under a
minute on 2 CPU cores:

    python benchmarks/replay_memory.py [--capacity 100000] [--num-lanes 8] [--n-step 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from functools import partial

import numpy as np

from hetero_lr.replay import ReplayMemory

FRAME = (84, 84)
STACK = 4


def fill(mem: ReplayMemory, steps: int, rng: np.random.Generator) -> float:
    """Adds `steps` steps of all lanes; returns seconds per step (`add` + `start_episodes`)."""
    lanes = mem.num_lanes
    pool = rng.integers(0, 256, (64, STACK, *FRAME), dtype=np.uint8)  # reused observations
    mem.start_episodes(np.arange(lanes), pool[:lanes])
    elapsed = 0.0
    for t in range(steps):
        next_obs = pool[(t + np.arange(lanes)) % len(pool)]
        actions = rng.integers(0, 18, lanes)
        rewards = rng.integers(-1, 2, lanes).astype(np.float32)
        ended = rng.random(lanes) < 1e-3
        truncated = ended & (rng.random(lanes) < 0.1)
        start = time.perf_counter()
        mem.add(actions, rewards, ended & ~truncated, truncated, next_obs)
        mem.start_episodes(np.flatnonzero(ended), next_obs[ended])
        elapsed += time.perf_counter() - start
    return elapsed / steps


def time_calls(fn: Callable[[], object], calls: int) -> tuple[float, float]:
    """(median, min) seconds per call of `fn`."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), float(np.min(times))


def gather(frames: np.ndarray, rows: Iterator[np.ndarray]) -> list[np.ndarray]:
    """Copies the frames of the next (2, B, S) row block: obs and next_obs stacks."""
    return [frames[block] for block in next(rows)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capacity", type=int, default=100_000, help="transitions per buffer")
    parser.add_argument("--num-lanes", type=int, default=8)
    parser.add_argument("--n-step", type=int, default=3)
    args = parser.parse_args()

    config = dict(
        num_lanes=args.num_lanes,
        obs_shape=(STACK, *FRAME),
        obs_dtype=np.uint8,
        frame_stack=STACK,
        n_step=args.n_step,
    )
    for prioritized in (False, True):
        big = ReplayMemory(capacity=1_000_000, prioritized=prioritized, **config)  # not filled
        print(
            f"1M-transition buffer, prioritized={prioritized}: {big.nbytes / 1e9:.3f} GB, "
            f"{big.nbytes / 1e6:.1f} bytes per transition ({np.prod(FRAME)} of them frame)"
        )
    del big
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (20_000, *FRAME), dtype=np.uint8)
    for prioritized in (False, True):
        mem = ReplayMemory(capacity=args.capacity, prioritized=prioritized, **config)
        step_s = fill(mem, args.capacity // args.num_lanes + 1_000, np.random.default_rng(0))
        print(
            f"prioritized={prioritized}: capacity {args.capacity}, {len(mem)} samplable, "
            f"{mem.nbytes / args.capacity:.1f} bytes/transition, "
            f"add+start_episodes {step_s * 1e6:.0f} us per step of {args.num_lanes} lanes"
        )
        for batch_size, calls in ((32, 2_000), (512, 100)):
            median, best = time_calls(partial(mem.sample, batch_size), calls)
            rows = rng.integers(0, len(frames), (calls, 2, batch_size, STACK))
            floor, _ = time_calls(partial(gather, frames, iter(rows)), calls)
            line = (
                f"  sample({batch_size}): median {median * 1e6:.0f} us (min {best * 1e6:.0f}), "
                f"{batch_size / median:,.0f} transitions/s; frame copy alone {floor * 1e6:.0f} us"
            )
            if prioritized:
                batch = mem.sample(batch_size)
                priorities = np.abs(batch.rewards) + 0.1
                update, _ = time_calls(
                    partial(mem.update_priorities, batch.indices, priorities), calls
                )
                line += f"; update_priorities {update * 1e6:.0f} us"
            print(line)


if __name__ == "__main__":
    main()
