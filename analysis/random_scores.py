"""A uniform random policy's mean return per environment: the 0 of a normalised score.

    python -m analysis.random_scores --preset minatar --episodes 1000 \
        --out docs/results/minatar_ablation/random_scores.csv

Each environment is built as a training run builds it (`hetero_lr.envs.make_env` with the
preset's environment settings, MinAtar's sticky actions included) and played with uniformly
random actions, one lane, for `--episodes` whole games. The table holds the mean, its standard
error and the episode count, so the constants in `hetero_lr.scores` can cite it.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import pandas as pd

from hetero_lr.config import apply_preset
from hetero_lr.envs import make_env

MINATAR_IDS = (
    "MinAtar/Asterix-v1",
    "MinAtar/Breakout-v1",
    "MinAtar/Freeway-v1",
    "MinAtar/Seaquest-v1",
    "MinAtar/SpaceInvaders-v1",
)


def random_returns(env_id: str, *, preset: str, episodes: int, seed: int = 0) -> np.ndarray:
    """Returns of `episodes` whole games under uniformly random actions."""
    env = make_env(replace(apply_preset(preset).env, id=env_id), seed=seed, num_envs=1)
    rng = np.random.default_rng(seed)
    env.reset()
    returns: list[float] = []
    while len(returns) < episodes:
        step = env.step(rng.integers(env.n_actions, size=1))
        returns += [score for _, score, _ in step.episode_returns]
    env.close()
    return np.asarray(returns[:episodes], dtype=float)


def main(argv: list[str] | None = None) -> None:
    """Measure and write the table."""
    p = argparse.ArgumentParser(prog="python -m analysis.random_scores", description=__doc__)
    p.add_argument("--preset", default="minatar")
    p.add_argument("--envs", default=",".join(MINATAR_IDS), metavar="ID,ID")
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    rows = []
    for env_id in args.envs.split(","):
        x = random_returns(env_id, preset=args.preset, episodes=args.episodes, seed=args.seed)
        rows.append(
            {
                "env": env_id,
                "random_mean": round(float(x.mean()), 4),
                "sem": round(float(x.std(ddof=1) / np.sqrt(len(x))), 4),
                "episodes": len(x),
            }
        )
        print(rows[-1], flush=True)
    pd.DataFrame(rows).to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
