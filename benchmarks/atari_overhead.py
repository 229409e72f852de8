"""The Atari loop side by side with CleanRL's `dqn_atari.py`, and where the time goes (not a test).

    python benchmarks/atari_overhead.py [--steps 10000] [--learning-starts 2000] [--chunk 500]

Runs in one process, each advanced by `--chunk` env steps in turn so that a busy machine slows
them alike, Breakout, Nature CNN, an update every 4 env steps, batch 32, HardCopy targets:

- `cleanrl`: `CleanRLDQN` below, CleanRL's `dqn_atari.py` loop (one `SyncVectorEnv` lane with
  SB3's Atari wrappers, SB3's `ReplayBuffer` with `optimize_memory_usage`, default Adam, MSE,
  no gradient clip; the ported loop is described on the class);
- `ours 1 lane`, `ours 8 lanes`: `TrainingRun` at the package's Atari defaults (ale-py's
  native vector env, fused Adam, Huber, clip 10) with a 100k buffer.

In the same turns it times the pieces alone: each update (CleanRL's and ours, on a fixed
batch) and random-action env steps of each env stack. Each loop's line then splits its wall
time per env step into update / 4 + env step (its "floor") and the rest.
Only steps after the warm-up are timed; epsilon is near 1 throughout, as early in any run.

Measured
--------
2026-12-06 on this machine (2 shared AMD EPYC cores, torch 2.14.1, 2 threads, ale-py 0.12.1):

    python benchmarks/atari_overhead.py --steps 8000 --learning-starts 2000   # 6,000 timed

    pieces alone (ms): update cleanrl 33.31, ours 30.21; env step cleanrl 1.427, ours 1 lane
      1.016, ours 8 lanes 0.493 per env step
    cleanrl        96.5 env steps/s  x1.00 CleanRL  10.36 ms/step = floor 9.76 + rest 0.61  1.06
    ours 1 lane   106.7 env steps/s  x1.11 CleanRL   9.37 ms/step = floor 8.57 + rest 0.80  1.09
    ours 8 lanes  121.2 env steps/s  x1.26 CleanRL   8.25 ms/step = floor 8.05 + rest 0.21  1.03

(last column: loop/floor). Every loop runs within 1.1x of its own floor, so there is no
overhead left to find: the ratio to CleanRL is set by the floors, whose ratio is at most
9.76 / 8.05 = 1.21x here. A quarter of an update is 75-95% of each floor, and fused Adam, the
only update difference that costs time, saves 3 ms of CleanRL's 33 (Nature CNN's forward and
backward at batch 32 dominate on 2 cores); the native vector env saves 0.9 ms of 1.4 per env
step. More than 1.5x over CleanRL would need an update under about 20 ms, i.e. more cores or
a GPU, not a leaner loop.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from hetero_lr.agent import Batch
from hetero_lr.build import build_learner
from hetero_lr.config import TrainConfig, from_dict
from hetero_lr.envs import make_env
from hetero_lr.run import TrainingRun

GAME = "Breakout"


def cleanrl_env(seed: int) -> Callable[[], gym.Env]:
    """CleanRL `dqn_atari.py`'s `make_env`: SB3's Atari wrappers on `BreakoutNoFrameskip-v4`."""
    from stable_baselines3.common.atari_wrappers import (
        ClipRewardEnv,
        EpisodicLifeEnv,
        FireResetEnv,
        MaxAndSkipEnv,
        NoopResetEnv,
    )

    def thunk() -> gym.Env:
        import ale_py

        gym.register_envs(ale_py)
        env = gym.make(f"{GAME}NoFrameskip-v4")
        env = gym.wrappers.RecordEpisodeStatistics(env)
        env = NoopResetEnv(env, noop_max=30)
        env = MaxAndSkipEnv(env, skip=4)
        env = EpisodicLifeEnv(env)
        if "FIRE" in env.unwrapped.get_action_meanings():
            env = FireResetEnv(env)
        env = ClipRewardEnv(env)
        env = gym.wrappers.ResizeObservation(env, (84, 84))
        env = gym.wrappers.GrayscaleObservation(env)
        env = gym.wrappers.FrameStackObservation(env, 4)
        env.action_space.seed(seed)
        return env

    return thunk


class CleanRLQNetwork(nn.Module):
    """CleanRL's `QNetwork` for Atari: the Nature CNN on frames / 255."""

    def __init__(self, n_actions: int) -> None:
        super().__init__()
        self.network = nn.Sequential(
            nn.Conv2d(4, 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(3136, 512),
            nn.ReLU(),
            nn.Linear(512, n_actions),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x / 255.0)


class CleanRLDQN:
    """CleanRL `dqn_atari.py` (v1.0, the gymnasium version), its loop body unchanged but for
    gymnasium 1.x's same-step autoreset (`final_obs` where 0.29 had `final_observation`) and no
    TensorBoard writer (its scalars every 100 steps cost two `.item()` calls, kept)."""

    def __init__(self, *, seed: int = 0, learning_starts: int, buffer_size: int) -> None:
        from gymnasium.vector import AutoresetMode
        from stable_baselines3.common.buffers import ReplayBuffer

        self.envs = gym.vector.SyncVectorEnv(
            [cleanrl_env(seed)], autoreset_mode=AutoresetMode.SAME_STEP
        )
        n = int(self.envs.single_action_space.n)
        torch.manual_seed(seed)
        self.q_network = CleanRLQNetwork(n)
        self.optimizer = torch.optim.Adam(self.q_network.parameters(), lr=1e-4)
        self.target_network = CleanRLQNetwork(n)
        self.target_network.load_state_dict(self.q_network.state_dict())
        self.rb = ReplayBuffer(
            buffer_size,
            self.envs.single_observation_space,
            self.envs.single_action_space,
            "cpu",
            optimize_memory_usage=True,
            handle_timeout_termination=False,
        )
        self.obs, _ = self.envs.reset(seed=seed)
        self.rng = np.random.default_rng(seed)
        self.learning_starts, self.step, self.updates = learning_starts, 0, 0

    def epsilon(self) -> float:
        # linear_schedule(1, 0.01, 0.10 * 10M steps, t)
        return max(0.01, 1.0 - 0.99 * self.step / 1_000_000)

    def run_until(self, stop: int) -> None:
        envs = self.envs
        while self.step < stop:
            if self.rng.random() < self.epsilon():
                actions = np.array([envs.single_action_space.sample() for _ in range(1)])
            else:
                q_values = self.q_network(torch.Tensor(self.obs))
                actions = torch.argmax(q_values, dim=1).cpu().numpy()
            next_obs, rewards, terminations, truncations, infos = envs.step(actions)
            real_next_obs = next_obs.copy()
            for idx, trunc in enumerate(truncations):
                if trunc:
                    real_next_obs[idx] = infos["final_obs"][idx]
            self.rb.add(self.obs, real_next_obs, actions, rewards, terminations, infos)
            self.obs = next_obs
            self.step += 1
            if self.step > self.learning_starts:
                if self.step % 4 == 0:
                    self.update(self.rb.sample(32))
                if self.step % 1_000 == 0:  # tau = 1: a hard copy
                    self.target_network.load_state_dict(self.q_network.state_dict())

    def update(self, data) -> None:
        with torch.no_grad():
            target_max, _ = self.target_network(data.next_observations).max(dim=1)
            td_target = data.rewards.flatten() + 0.99 * target_max * (1 - data.dones.flatten())
        old_val = self.q_network(data.observations).gather(1, data.actions).squeeze()
        loss = F.mse_loss(td_target, old_val)
        self.updates += 1
        if self.updates % 25 == 0:  # CleanRL logs every 100 env steps
            _ = loss.item(), old_val.mean().item()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()


def our_config(lanes: int, steps: int, learning_starts: int) -> TrainConfig:
    """The package's Atari defaults, HardCopy, a 100k buffer, nothing but training."""
    overrides = {
        "env": {"id": f"ALE/{GAME}-v5", "num_envs": lanes},
        "steps": steps,
        "threads": 0,
        "eval_every": 10**9,
        "checkpoint_every": 0,
        "agent": {"learning_starts": learning_starts, "buffer_size": 100_000},
        "target": {"rule": "hardcopy", "period": 2_000},
    }
    return from_dict(TrainConfig, overrides)


class Pieces:
    """The floor's pieces, timed alone in the same turns as the loops: updates on a fixed batch
    (CleanRL's on its own network and ours) and random-action env steps of each env stack."""

    def __init__(self, cfg: TrainConfig, cleanrl: CleanRLDQN) -> None:
        obs = torch.randint(0, 256, (32, 4, 84, 84), dtype=torch.uint8)
        actions = torch.randint(0, 4, (32,))
        _, agent = build_learner(cfg, (4, 84, 84), 4)
        ours = Batch(obs, actions, torch.zeros(32), obs, torch.full((32,), 0.99), torch.ones(32))
        data = SimpleNamespace(
            observations=obs.float(),
            next_observations=obs.float(),
            actions=actions[:, None],
            rewards=torch.zeros(32, 1),
            dones=torch.zeros(32, 1),
        )
        self.rng = np.random.default_rng(0)
        self.gym_envs = gym.vector.SyncVectorEnv([cleanrl_env(1)])
        self.gym_envs.reset(seed=1)
        self.envs = {n: make_env(cfg.env, seed=1, num_envs=n) for n in (1, 8)}
        for envs in self.envs.values():
            envs.reset()
        self.calls: dict[str, Callable[[], object]] = {
            "update cleanrl": lambda: cleanrl.update(data),
            "update ours": lambda: agent.update(ours),
            "env cleanrl": lambda: self.gym_envs.step(self.rng.integers(0, 4, 1)),
            "env ours 1": lambda: self.envs[1].step(self.rng.integers(0, 4, 1)),
            "env ours 8": lambda: self.envs[8].step(self.rng.integers(0, 4, 8)),
        }
        self.seconds = dict.fromkeys(self.calls, 0.0)
        self.counts = dict.fromkeys(self.calls, 0)

    def turn(self, env_steps: int) -> None:
        """Time the pieces of `env_steps` env steps: env_steps / 4 updates of each learner and
        env_steps steps of each env stack."""
        for name, call in self.calls.items():
            n = env_steps // 4 if name.startswith("update") else env_steps
            n = n // 8 if name == "env ours 8" else n  # 8 env steps per call
            began = time.perf_counter()
            for _ in range(n):
                call()
            self.seconds[name] += time.perf_counter() - began
            self.counts[name] += n * (8 if name == "env ours 8" else 1)

    def ms(self) -> dict[str, float]:
        """Milliseconds per update, and per env step."""
        return {k: self.seconds[k] / self.counts[k] * 1e3 for k in self.calls}

    def close(self) -> None:
        self.gym_envs.close()
        for envs in self.envs.values():
            envs.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000, help="env steps per loop")
    parser.add_argument("--learning-starts", type=int, default=2_000)
    parser.add_argument("--chunk", type=int, default=500, help="env steps per turn")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loops: dict[str, object] = {
        "cleanrl": CleanRLDQN(learning_starts=args.learning_starts, buffer_size=100_000),
        "ours 1 lane": TrainingRun(our_config(1, args.steps, args.learning_starts)),
        "ours 8 lanes": TrainingRun(our_config(8, args.steps, args.learning_starts)),
    }
    # Times CleanRL's update on its own network: only throughput is measured here.
    pieces = Pieces(our_config(1, args.steps, args.learning_starts), loops["cleanrl"])  # type: ignore[arg-type]
    for loop in loops.values():  # the warm-up, untimed
        loop.run_until(args.learning_starts)  # type: ignore[attr-defined]
    pieces.turn(40)  # untimed
    pieces.seconds, pieces.counts = dict.fromkeys(pieces.calls, 0.0), dict.fromkeys(pieces.calls, 0)
    seconds = dict.fromkeys(loops, 0.0)
    for start in range(args.learning_starts, args.steps, args.chunk):
        stop = min(start + args.chunk, args.steps)
        for name, loop in loops.items():
            began = time.perf_counter()
            loop.run_until(stop)  # type: ignore[attr-defined]
            seconds[name] += time.perf_counter() - began
        pieces.turn(stop - start)
    ms = pieces.ms()
    timed_steps = args.steps - args.learning_starts
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {GAME}, Nature CNN, "
        f"HardCopy, an update every 4 env steps, batch 32; {timed_steps:,} timed env steps "
        f"after {args.learning_starts:,}, in turns of {args.chunk}"
    )
    print(
        "pieces alone (ms): update cleanrl {update cleanrl:.2f}, ours {update ours:.2f}; env "
        "step cleanrl {env cleanrl:.3f}, ours 1 lane {env ours 1:.3f}, ours 8 lanes "
        "{env ours 8:.3f} per env step".format(**ms)
    )
    floors = {
        "cleanrl": ms["update cleanrl"] / 4 + ms["env cleanrl"],
        "ours 1 lane": ms["update ours"] / 4 + ms["env ours 1"],
        "ours 8 lanes": ms["update ours"] / 4 + ms["env ours 8"],
    }
    base = seconds["cleanrl"]
    for name, s in seconds.items():
        per_step = s / timed_steps * 1e3
        print(
            f"{name:<13} {timed_steps / s:7.1f} env steps/s   x{base / s:4.2f} CleanRL   "
            f"{per_step:6.2f} ms/step = floor {floors[name]:5.2f} + rest "
            f"{per_step - floors[name]:5.2f}   loop/floor {per_step / floors[name]:4.2f}"
        )
    pieces.close()
    for name in ("ours 1 lane", "ours 8 lanes"):
        loops[name].close()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
