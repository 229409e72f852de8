"""Whole-loop training throughput on Atari, printed as figures (not a test).

    python benchmarks/throughput.py [--steps 6000] [--game ALE/Breakout-v5] [--threads 2]

Runs, one after another in one process: `nature:nature` HardCopy DQN (an update every 4 agent
steps, batch 32), LR on the same pair (KR/KL = 1/4) and LR `impala:nature`, and reports each
one's learning-phase env steps/s and the ratios to the HardCopy run. It also measures, in the
same process, the compute floor: one Nature update (forward + backward + fused Adam at batch
32) plus 4 env steps. Figures are only comparable within one run on a quiet machine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from hetero_lr.agent import Batch
from hetero_lr.build import build_learner
from hetero_lr.config import TrainConfig, from_dict
from hetero_lr.envs import make_env
from hetero_lr.replay import ReplayMemory
from hetero_lr.train import train


class _SpsLogger:
    def __init__(self, after: int) -> None:
        self.after, self.values = after, []

    def log_params(self, params) -> None:
        pass

    def rewind(self, step) -> None:
        pass

    def log_metrics(self, metrics, step) -> None:
        # Skip the first row after learning starts: it mixes warm-up and learning steps.
        if "perf/sps" in metrics and step > self.after + 1_000:
            self.values.append(metrics["perf/sps"])

    def close(self) -> None:
        pass


def run_sps(cfg: TrainConfig) -> float:
    logger = _SpsLogger(cfg.agent.learning_starts)
    train(cfg, logger=logger, progress=False)
    return float(np.median(logger.values))


def update_ms(cfg: TrainConfig, repeats: int = 20) -> float:
    _, agent = build_learner(cfg, (4, 84, 84), 4)
    obs = torch.randint(0, 256, (32, 4, 84, 84), dtype=torch.uint8)
    batch = Batch(
        obs,
        torch.randint(0, 4, (32,)),
        torch.zeros(32),
        obs,
        torch.full((32,), 0.99),
        torch.ones(32),
    )
    for _ in range(3):
        agent.update(batch)
    start = time.perf_counter()
    for _ in range(repeats):
        agent.update(batch)
    return (time.perf_counter() - start) / repeats * 1e3


def env_ms(cfg: TrainConfig, steps: int = 500) -> float:
    envs = make_env(cfg.env, seed=0)
    envs.reset()
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(steps // envs.num_envs):
        envs.step(rng.integers(0, envs.n_actions, envs.num_envs))
    envs.close()
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6_000, help="agent steps per run")
    parser.add_argument("--learning-starts", type=int, default=2_000)
    parser.add_argument("--game", default="ALE/Breakout-v5")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = from_dict(
        TrainConfig,
        {
            "env": {"id": args.game, "num_envs": 8},
            "steps": args.steps,
            "eval_every": 10**9,
            "eval_episodes": 1,
            "eval_max_steps": 10,
            "checkpoint_every": 0,
            "agent": {"learning_starts": args.learning_starts, "buffer_size": 100_000},
        },
    )
    runs = {
        "nature:nature HardCopy": {"pair": "nature:nature", "target": {"rule": "hardcopy"}},
        # KR/KL = 1/4: the compute of the default 500/2000, spread evenly over a short run.
        "nature:nature LR 1/4": {"pair": "nature:nature", "target": {"kr": 1, "kl": 4}},
        "impala:nature LR 1/4": {"pair": "impala:nature", "target": {"kr": 1, "kl": 4}},
    }
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.game}, "
        f"8 lanes, {args.steps:,} steps per run, learning from {args.learning_starts:,}"
    )
    # The floor first, while the process is fresh (measured after the runs it reads ~40% slower).
    u_ms, e_ms = update_ms(base), env_ms(base)
    floor = 4 / ((u_ms + 4 * e_ms) / 1e3)
    sps = {name: run_sps(from_dict(TrainConfig, over, base=base)) for name, over in runs.items()}
    baseline = sps["nature:nature HardCopy"]
    for name, value in sps.items():
        print(f"{name:<24} {value:8.1f} env steps/s   ratio to HardCopy {value / baseline:5.2f}")
    print(
        f"compute floor: Nature update {u_ms:.1f} ms + 4 env steps x {e_ms:.2f} ms "
        f"-> {floor:.0f} env steps/s; HardCopy loop at {baseline / floor:.0%} of it"
    )
    memory = ReplayMemory(
        capacity=1_000_000,
        num_lanes=8,
        obs_shape=(4, 84, 84),
        obs_dtype=np.dtype(np.uint8),
        frame_stack=4,
    )
    print(
        f"replay: {memory.nbytes / 1e6:,.0f} MB for 1,000,000 Atari transitions = "
        f"{memory.nbytes / 1e6:.0f} bytes per transition (84*84 = 7,056)"
    )


if __name__ == "__main__":
    main()
