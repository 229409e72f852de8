"""Coverage of the difference intervals of `hetero_lr.stats` on null data.

    python benchmarks/coverage.py --sims 2000

Two arms with equal score distributions (the true difference is 0) run the same seeds on
several environments, each with its own noise level (normalised scores spread by a factor of 3
from the first environment to the last) and a seed effect both arms share. For each design
(paired: both arms on the same seeds; unpaired: independent seeds) and each size (3 or 5 seeds,
2 or 5 environments) it prints the fraction of 95% intervals of the IQM difference that contain
0, for the plain percentile bootstrap and for the widened one `difference_ci` returns, with the
simulation's standard error. `docs/statistics.md` records a run.
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import stats

from hetero_lr.stats import difference_ci


def null_arms(
    rng: np.random.Generator, seeds: int, envs: int, *, paired: bool
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Scores of two equal arms per environment `[seeds]`; paired arms share the seed effect."""
    spread = np.geomspace(0.1, 0.3, envs)
    a, b = [], []
    for e in range(envs):
        seed_a = rng.normal(0, 0.15, seeds)
        seed_b = seed_a if paired else rng.normal(0, 0.15, seeds)
        a.append(0.5 + seed_a + rng.normal(0, spread[e], seeds))
        b.append(0.5 + seed_b + rng.normal(0, spread[e], seeds))
    return a, b


def coverage(
    seeds: int, envs: int, *, paired: bool, sims: int, reps: int, seed: int = 0
) -> tuple[float, float]:
    """Fraction of widened and of plain percentile intervals containing 0."""
    rng = np.random.default_rng(seed)
    widened = plain = 0
    for i in range(sims):
        a, b = null_arms(rng, seeds, envs, paired=paired)
        diff, low, high = difference_ci(a, b, paired=paired, reps=reps, seed=i)
        widened += low <= 0 <= high
        # The plain interval: undo the widening factor (the same for both ends).
        n = seeds
        df = envs * (seeds - 1) * (1 if paired else 2)
        factor = stats.t.ppf(0.975, df) / stats.norm.ppf(0.975) * np.sqrt(n / (n - 1))
        plain += diff + (low - diff) / factor <= 0 <= diff + (high - diff) / factor
    return widened / sims, plain / sims


def main() -> None:
    """Print the coverage table."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sims", type=int, default=2000)
    p.add_argument("--reps", type=int, default=2000)
    args = p.parse_args()
    se = np.sqrt(0.95 * 0.05 / args.sims)
    print(f"95% intervals of the IQM difference on null data, {args.sims} simulations each")
    print(f"(simulation standard error {se:.3f})\n")
    print("| design | seeds | envs | widened (difference_ci) | plain percentile |")
    print("|---|---|---|---|---|")
    for paired in (True, False):
        for seeds in (3, 5):
            for envs in (2, 5):
                widened, plain = coverage(
                    seeds, envs, paired=paired, sims=args.sims, reps=args.reps
                )
                design = "paired" if paired else "unpaired"
                print(f"| {design} | {seeds} | {envs} | {widened:.3f} | {plain:.3f} |", flush=True)


if __name__ == "__main__":
    main()
