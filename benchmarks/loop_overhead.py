"""What the training loop costs beyond its network compute, on MinAtar Breakout (not a test).

    python benchmarks/loop_overhead.py [--steps 20000] [--groups hardcopy lr] [--chunk 500]

Runs side by side in one process, with `torch.set_num_threads(1)`, advancing each by `--chunk`
agent steps in turn so that a busy machine slows them alike:

- `minimal`: `benchmarks/minimal_dqn.py`, a CleanRL-style single-file DQN (the reference);
- `hardcopy`: `TrainingRun` with the `minatar` preset, `target.rule=hardcopy`, period 1,000;
- `hardcopy floor`: as many bare `Agent.update` + `HeteroPair.step` calls on one fixed batch,
  with the learner `build_learner` makes for the same settings (the compute a loop cannot
  avoid; acting forwards are not in it);
- `lr 1/1` and `lr 1/1 floor`: the same for `minatar:minatar` Replicate with KR = KL = 1 (a
  Replicate step per update: about twice the compute).

Every loop uses the `minatar` preset's schedule (warm-up `--learning-starts`, then epsilon from 1
to 0.1 over 100k steps), so over 20k steps most actions are random: the acting forward is rare.
Only steps after the warm-up are timed. Each line prints env steps/s and the ratios of wall time
per step: loop / floor and loop / minimal (1.00 = no overhead), and loop / network: the loop's
wall time over the time its own network calls took, read by timers wrapped around them after the
warm-up (updates less the replay draws inside them, acting forwards, the function-gap diagnostic).
The floor's update on one fixed batch runs warmer than any loop's (see below), so loop/network
is the overhead a loop itself adds.

Measured
--------
2026-12-06, later the same day, after the one-lane `ReplayMemory.start_episodes` path (13.2 ->
0.8 µs per call) and with the loop/network column (the machine slower still):

    python benchmarks/loop_overhead.py --groups hardcopy --steps 14000   # 13,000 timed steps

    minimal             305.2 steps/s   minimal/floor  1.12   loop/network  1.08
    hardcopy            291.1 steps/s   loop/floor  1.18   loop/minimal  1.05   loop/network  1.11
    hardcopy floor      342.3 steps/s

    python benchmarks/loop_overhead.py --groups lr --steps 7000          # 6,000 timed steps

    lr 1/1              164.7 steps/s   loop/floor  1.12   loop/network  1.07
    lr 1/1 floor        184.2 steps/s

An earlier run (8,000 steps) gave hardcopy loop/network 1.11, loop/minimal 1.03, minimal
loop/network 1.08: the minimal loop's own overhead is 8%, ours 7-11%.

Earlier that day, on this machine (2 shared AMD EPYC cores, torch 2.14.1, 1 thread), after the
one-lane scalar paths (`VecEnv` over a single gymnasium lane, `ReplayMemory.add`/`sample` with
one lane) and `agent.clip_grad_norm`:

    python benchmarks/loop_overhead.py --groups hardcopy      # 19,000 timed steps

    minimal             379.8 steps/s   minimal/floor  1.10
    hardcopy            356.7 steps/s   loop/floor  1.18   loop/minimal  1.06
    hardcopy floor      419.7 steps/s

The machine was about 20% slower than on 2026-12-05, when the same command with 11,000 timed
steps gave loop/floor 1.13 and loop/minimal 1.09 (minimal/floor 1.04); repeated runs move the
ratios by 3-5%. Before and after this change side by side in one process (the previous
commit's package copied under another name, 15,000 timed steps): previous `TrainingRun` 319.6
steps/s (1.21x the floor), this one 337.4 (1.14x), so the loop is 5% faster; and 2026-11-25's
change had taken it from 1.29x to 1.15x the minimal loop's wall time.

Where the rest goes (in-loop timers, HardCopy, µs per step at 2,421 in all): update 2,182,
replay sample 68, env step 38, acting 32, update bookkeeping 32, the loop body 27, replay add
23, episode starts 9, logging 6. The floor's update on one fixed batch is faster than the same
update in any loop, the minimal one included (minimal/floor 1.04-1.10): an update evicts the
caches, and every numpy or Python call right after one costs 5-25x its warm time (measured:
`rng.random()` 0.3 -> 12 µs, `rng.integers(0, n, 32)` 3.5 -> 52 µs, a MinAtar env step 15 ->
96 µs; 56 µs after sweeping 64 MB instead of an update; garbage collection ruled out). What is
left beyond the minimal loop is mostly the acting and sampling RNG calls, kept as they are so
that committed results reproduce, and the n-step/frame-stack replay gathers. The target was
1.1x the floor: reached against the minimal loop (1.06-1.09), not against the floor (1.13-1.18).

Earlier (2026-11-25, 19,000 timed steps): minimal 525.0 steps/s (minimal/floor 1.06),
hardcopy 449.5 (loop/floor 1.24, loop/minimal 1.17), floor 556.5; `--groups lr --steps 10000`:
lr 1/1 162.3 steps/s, loop/floor 1.19. That change stopped updating the `minatar` network in
channels-last memory (about 15% slower at 10x10), switching modes with `Module.train` at
every acting and bootstrap call, reading `.item()` twice per update, and stepping gymnasium's
`SyncVectorEnv`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from hetero_lr.agent import Batch
from hetero_lr.build import build_learner
from hetero_lr.config import TrainConfig, apply_preset, from_dict
from hetero_lr.run import TrainingRun

sys.path.insert(0, str(Path(__file__).parent))
from minimal_dqn import MinimalDQN

OBS_SHAPE, N_ACTIONS = (4, 10, 10), 3  # MinAtar Breakout, minimal action set
GROUPS = {
    "hardcopy": {"rule": "hardcopy", "period": 1_000},
    "lr 1/1": {"rule": "replicate", "kr": 1, "kl": 1},
}


def run_config(steps: int, learning_starts: int, target: dict) -> TrainConfig:
    """The `minatar` preset with a short warm-up and nothing but training."""
    overrides = {
        "steps": steps,
        "threads": 1,
        "eval_every": 10**9,
        "checkpoint_every": 0,
        "agent": {"learning_starts": learning_starts},
        "target": target,
    }
    return from_dict(TrainConfig, overrides, base=apply_preset("minatar"))


class Floor:
    """Bare `Agent.update` + `HeteroPair.step` calls on one fixed batch of `cfg`'s learner."""

    def __init__(self, cfg: TrainConfig) -> None:
        torch.manual_seed(0)
        self.pair, self.agent = build_learner(cfg, OBS_SHAPE, N_ACTIONS)
        b = cfg.agent.batch_size
        obs = torch.rand(b, *OBS_SHAPE) < 0.1  # MinAtar frames: sparse booleans
        self.batch = Batch(
            obs=obs,
            actions=torch.randint(0, N_ACTIONS, (b,)),
            rewards=torch.zeros(b),
            next_obs=obs,
            discounts=torch.full((b,), 0.99),
            weights=torch.ones(b),
        )
        self.sample = lambda: (obs, self.batch.actions)
        self.updates = 0

    def run_until(self, updates: int) -> None:
        """Run bare updates until `updates` were done in all."""
        while self.updates < updates:
            self.agent.update(self.batch)
            self.pair.step(self.sample)
            self.updates += 1


class NetworkClock:
    """Seconds a loop spends in its network calls, read by timers in the loop itself.

    `count(fn)` adds `fn`'s wall time unless it runs inside another counted call (an update's
    bootstrap forward is counted once, with the update); `exclude(fn)` takes back a call made
    inside a counted one that is not network work (the replay draw inside a target step).
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self._depth = 0

    def count(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self._depth += 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= 1
                if not self._depth:
                    self.seconds += time.perf_counter() - start

        return counted

    def exclude(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def excluded(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if self._depth:
                    self.seconds -= time.perf_counter() - start

        return excluded


def clock_network(name: str, loop: Any) -> NetworkClock:
    """Times every network call of `loop`: its updates (less their replay draws), its acting
    forwards and, for `TrainingRun`, the function-gap diagnostic of each log row."""
    clock = NetworkClock()
    if name == "minimal":
        loop.update = clock.count(loop.update)
        loop.buffer.sample = clock.exclude(loop.buffer.sample)
        loop.q.forward = clock.count(loop.q.forward)  # acting (inside an update: nested)
    else:
        pair = loop.pair
        loop.agent.update = clock.count(loop.agent.update)
        for method in ("step", "act_values", "function_gap"):
            setattr(pair, method, clock.count(getattr(pair, method)))
        loop._replicate_sample = clock.exclude(loop._replicate_sample)
    return clock


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000, help="agent steps per loop")
    parser.add_argument("--learning-starts", type=int, default=1_000)
    parser.add_argument("--chunk", type=int, default=500, help="agent steps per turn")
    parser.add_argument(
        "--groups", nargs="+", choices=["hardcopy", "lr"], default=["hardcopy", "lr"]
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = [n for n in GROUPS if n.split()[0] in args.groups]
    loops: dict[str, object] = {}
    if "hardcopy" in args.groups:
        loops["minimal"] = MinimalDQN(learning_starts=args.learning_starts)
    for name in names:
        cfg = run_config(args.steps, args.learning_starts, GROUPS[name])
        loops[name] = TrainingRun(cfg)
        loops[f"{name} floor"] = Floor(cfg)
    for name, loop in loops.items():  # the warm-up, untimed
        if not name.endswith("floor"):
            loop.run_until(args.learning_starts)
    clocks = {n: clock_network(n, loop) for n, loop in loops.items() if not n.endswith("floor")}
    seconds = dict.fromkeys(loops, 0.0)
    for start in range(args.learning_starts, args.steps, args.chunk):
        stop = min(start + args.chunk, args.steps)
        for name, loop in loops.items():
            # A floor does as many updates as its loop (an update per step after the warm-up).
            target = stop - args.learning_starts if name.endswith("floor") else stop
            seconds[name] += timed(lambda loop=loop, target=target: loop.run_until(target))
    timed_steps = args.steps - args.learning_starts
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread, MinAtar/Breakout-v1, "
        f"batch 32, an update per step; {timed_steps:,} timed steps after "
        f"{args.learning_starts:,} warm-up steps, in turns of {args.chunk}"
    )
    for name, s in seconds.items():
        line = f"{name:<16} {timed_steps / s:8.1f} steps/s"
        if f"{name} floor" in seconds:
            line += f"   loop/floor {s / seconds[f'{name} floor']:5.2f}"
        if name == "hardcopy" and "minimal" in seconds:
            line += f"   loop/minimal {s / seconds['minimal']:5.2f}"
        if name == "minimal" and "hardcopy floor" in seconds:
            line += f"   minimal/floor {s / seconds['hardcopy floor']:5.2f}"
        if name in clocks:
            line += f"   loop/network {s / clocks[name].seconds:5.2f}"
        print(line)
    for name in names:
        loops[name].close()


if __name__ == "__main__":
    main()
