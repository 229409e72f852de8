"""A minimal single-file DQN on MinAtar Breakout: the reference loop for `loop_overhead.py`.

    python benchmarks/minimal_dqn.py [--steps 20000] [--learning-starts 1000]

CleanRL `dqn.py` style, sized like this package's `minatar` preset so the two loops do the same
arithmetic: one gymnasium MinAtar env (`minatar.gym.register_envs()`), observations (10, 10, C)
bool -> channel-first float, the `minatar` network shape (3x3 conv to 16 channels, 128 hidden
units, a linear Q head; Young & Tian 2019), Huber loss, gradient-norm clip 10, fused Adam 2.5e-4
(eps 3.125e-4), batch 32, gamma 0.99, an update every step, a hard target copy every 1,000
updates, epsilon 1 -> 0.1 over 100k steps, clipped rewards and a plain numpy circular buffer.
Fused Adam (not CleanRL's default Adam) because ours uses it: the default CPU Adam is 6-9x
slower and would flatter the comparison.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import minatar.gym
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class QNetwork(nn.Module):
    """The `minatar` family's shape: conv 3x3 (16) -> ReLU -> 128 -> ReLU -> Q-values."""

    def __init__(self, channels: int, n_actions: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, 16, 3),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(16 * 8 * 8, 128),
            nn.ReLU(),
            nn.Linear(128, n_actions),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float())


class Buffer:
    """Plain numpy circular buffer of (obs, action, reward, next_obs, done)."""

    def __init__(self, size: int, obs_shape: tuple[int, ...]) -> None:
        self.obs = np.zeros((size, *obs_shape), bool)
        self.next_obs = np.zeros((size, *obs_shape), bool)
        self.actions = np.zeros(size, np.int64)
        self.rewards = np.zeros(size, np.float32)
        self.dones = np.zeros(size, np.float32)
        self.size, self.pos, self.full = size, 0, False

    def add(self, obs: np.ndarray, a: int, r: float, next_obs: np.ndarray, done: bool) -> None:
        i = self.pos
        self.obs[i], self.actions[i], self.rewards[i] = obs, a, r
        self.next_obs[i], self.dones[i] = next_obs, done
        self.pos = (i + 1) % self.size
        self.full |= self.pos == 0

    def sample(self, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
        idx = rng.integers(0, self.size if self.full else self.pos, n)
        return tuple(
            torch.from_numpy(a[idx])
            for a in (self.obs, self.actions, self.rewards, self.next_obs, self.dones)
        )


class MinimalDQN:
    """The whole agent and loop; `run_until(step)` advances it (so a benchmark can interleave)."""

    def __init__(self, *, seed: int = 0, learning_starts: int = 1_000) -> None:
        minatar.gym.register_envs()
        self.env = gym.make("MinAtar/Breakout-v1", sticky_action_prob=0.1)
        self.n_actions = int(self.env.action_space.n)
        obs, _ = self.env.reset(seed=seed)
        self.obs = obs.transpose(2, 0, 1)  # HWC -> CHW
        torch.manual_seed(seed)
        self.q = QNetwork(self.obs.shape[0], self.n_actions)
        self.q_target = QNetwork(self.obs.shape[0], self.n_actions)
        self.q_target.load_state_dict(self.q.state_dict())
        self.optimizer = torch.optim.Adam(self.q.parameters(), lr=2.5e-4, eps=3.125e-4, fused=True)
        self.buffer = Buffer(100_000, self.obs.shape)
        self.rng = np.random.default_rng(seed)
        self.learning_starts, self.step, self.updates = learning_starts, 0, 0

    def epsilon(self) -> float:
        return max(0.1, 1.0 - 0.9 * max(0, self.step - self.learning_starts) / 100_000)

    def run_until(self, stop: int) -> None:
        while self.step < stop:
            # act
            if self.rng.random() < self.epsilon():
                action = int(self.rng.integers(self.n_actions))
            else:
                with torch.no_grad():
                    q = self.q(torch.from_numpy(self.obs).unsqueeze(0))
                action = int(q.argmax())
            # env step and store (rewards clipped for learning)
            next_obs, reward, terminated, truncated, _ = self.env.step(action)
            next_obs = next_obs.transpose(2, 0, 1)
            self.buffer.add(self.obs, action, np.clip(reward, -1, 1), next_obs, terminated)
            self.obs = next_obs
            if terminated or truncated:
                self.obs = self.env.reset()[0].transpose(2, 0, 1)
            self.step += 1
            if self.step >= self.learning_starts:
                self.update()

    def update(self) -> None:
        obs, actions, rewards, next_obs, dones = self.buffer.sample(32, self.rng)
        with torch.no_grad():
            target = rewards + 0.99 * (1 - dones) * self.q_target(next_obs).max(dim=1).values
        q_taken = self.q(obs).gather(1, actions[:, None]).squeeze(1)
        loss = F.smooth_l1_loss(q_taken, target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.q.parameters(), 10.0)
        self.optimizer.step()
        self.updates += 1
        if self.updates % 1_000 == 0:
            self.q_target.load_state_dict(self.q.state_dict())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--learning-starts", type=int, default=1_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    agent = MinimalDQN(learning_starts=args.learning_starts)
    start = time.perf_counter()
    agent.run_until(args.steps)
    elapsed = time.perf_counter() - start
    print(f"{args.steps:,} steps, {agent.updates:,} updates in {elapsed:.1f} s")


if __name__ == "__main__":
    main()
