"""Scores over runs: IQM, bootstrap intervals, and the comparison of two arms, paired or not.

One implementation, used by the study summary and every `analysis` table. Scores come as one
sequence of run scores per task (environment); across tasks they must share a scale (normalise
per environment first: `hetero_lr.scores`).

- IQM: the mean of the middle 50% of all runs, `scipy.stats.trim_mean(x, 0.25)` (rliable's
  `aggregate_iqm`; Agarwal et al. 2021, "Deep RL at the Edge of the Statistical Precipice").
- One arm's interval: rliable's percentile bootstrap, runs resampled with replacement within
  each task (`get_interval_estimates(..., method="percentile", task_bootstrap=False)`).
- Two arms: `compare`. Arms that ran the same (task, seed) runs are **paired**: a bootstrap
  replicate draws seed indices once per task and takes both arms' runs at them, so the seed's
  share of the variance cancels. Arms on different seeds are **unpaired**: each is resampled on
  its own. The difference interval is the bootstrap's percentile interval widened for small
  samples (Hesterberg 2015, "What teachers should know about the bootstrap", the expanded
  percentile interval): the plain one covers about 84% at 3 seeds per task, where it claims 95%
  (`docs/statistics.md` has the measured coverages).
- P(improvement): rliable's `probability_of_improvement`, P(X > Y) + P(X = Y) / 2 over all
  run pairs of a task (the Mann-Whitney U statistic over n m), averaged over tasks.
- Test: a randomisation test of the same statistic: paired, the arms' scores swapped within
  pairs (a sign-flip test, exact up to 16 pairs); unpaired, labels permuted within each task.
  `holm` adjusts several tests against one baseline (Holm 1979).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from scipy import stats as _scipy

Statistic = Callable[..., np.ndarray]
"""Maps run scores along `axis` to a statistic (e.g. `iqm`, `np.mean`)."""
Tasks = Sequence[Sequence[float]]
"""Run scores per task (environment); in a paired comparison, index i of a task is one seed."""

EXACT_PAIRS = 16
"""Up to this many pairs the sign-flip test enumerates every one of the 2^n swaps."""


def iqm(scores: np.ndarray, axis: int | None = None) -> np.ndarray:
    """Interquartile mean: the mean of the middle 50% of scores (rliable `aggregate_iqm`)."""
    scores = np.asarray(scores, dtype=float)
    if axis is None:
        scores, axis = scores.ravel(), 0
    # scipy.stats.trim_mean(scores, 0.25): drop int(0.25 n) scores at each end, average the rest.
    n = scores.shape[axis]
    cut = int(0.25 * n)
    kept = np.sort(scores, axis=axis).take(range(cut, n - cut), axis=axis)
    return kept.mean(axis=axis)


def _tasks(scores_by_task: Tasks) -> list[np.ndarray]:
    tasks = [np.asarray(t, dtype=float) for t in scores_by_task if len(t)]
    if not tasks:
        raise ValueError("no scores")
    return tasks


def _draws(tasks: Sequence[np.ndarray], reps: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Per task, `reps` rows of run indices drawn with replacement: `[reps, runs]` each."""
    return [rng.integers(0, len(t), size=(reps, len(t))) for t in tasks]


def _pooled(tasks: Sequence[np.ndarray], draws: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """All tasks' runs side by side `[1, runs]`, or resampled at `draws` `[reps, runs]`."""
    if draws is None:
        return np.concatenate(tasks)[None, :]
    return np.concatenate([t[d] for t, d in zip(tasks, draws, strict=True)], axis=1)


def stratified_bootstrap_ci(
    scores_by_task: Tasks,
    statistic: Statistic = iqm,
    *,
    reps: int = 50_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """`(estimate, low, high)` of `statistic` over all runs, rliable's percentile interval.

    `statistic` must accept `axis=1` on a `(reps, runs)` array. A single run gives a
    zero-width interval.
    """
    tasks = _tasks(scores_by_task)
    rng = np.random.default_rng(seed)
    replicates = statistic(_pooled(tasks, _draws(tasks, reps, rng)), axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return float(statistic(_pooled(tasks), axis=1)[0]), float(low), float(high)


def stratified_resamples(scores_by_task: Tasks, *, reps: int, seed: int = 0) -> list[np.ndarray]:
    """Per task, `reps` bootstrap resamples of its runs, drawn with replacement within the task.

    The replicates `stratified_bootstrap_ci` draws with the same `seed`, kept per task for
    statistics that need the task structure (rliable's median and mean of task means) or more
    than one number per replicate (a performance profile's band).

    Returns:
        One `[reps, runs]` array per task that has runs, in the input's order.
    """
    tasks = _tasks(scores_by_task)
    draws = _draws(tasks, reps, np.random.default_rng(seed))
    return [t[d] for t, d in zip(tasks, draws, strict=True)]


def is_paired(a_by_task: Tasks, b_by_task: Tasks) -> bool:
    """Whether two arms can be compared pair by pair: the same run count in every task."""
    a, b = _tasks(a_by_task), _tasks(b_by_task)
    return len(a) == len(b) and all(len(x) == len(y) for x, y in zip(a, b, strict=True))


def align(
    a: Mapping[str, Mapping[int, float]], b: Mapping[str, Mapping[int, float]]
) -> tuple[list[list[float]], list[list[float]], bool]:
    """Two arms' scores `{task: {seed: score}}` as task lists, and whether they pair up.

    Paired when both arms have the same seeds in every task: the lists are then in seed
    order, so index i of a task is one seed in both. Otherwise each arm keeps all its runs.

    Raises:
        ValueError: the arms do not cover the same tasks.
    """
    if set(a) != set(b):
        raise ValueError(f"arms over different tasks: {sorted(a)} vs {sorted(b)}")
    tasks = sorted(a)
    paired = all(set(a[t]) == set(b[t]) for t in tasks)
    a_lists = [[a[t][s] for s in sorted(a[t])] for t in tasks]
    b_lists = [[b[t][s] for s in sorted(b[t])] for t in tasks]
    return a_lists, b_lists, paired


def _expansion(counts: Sequence[int], df: int, confidence: float) -> float:
    """The factor that widens a percentile interval for small samples (Hesterberg 2015):
    t quantile over normal quantile, times sqrt(n / (n - 1)) for the bootstrap's variance,
    which is (n - 1) / n of the unbiased one; n is the harmonic mean run count per task."""
    n = len(counts) / sum(1 / c for c in counts)
    q = (1 + confidence) / 2
    return float(_scipy.t.ppf(q, df) / _scipy.norm.ppf(q) * np.sqrt(n / (n - 1)))


def difference_ci(
    a_by_task: Tasks,
    b_by_task: Tasks,
    statistic: Statistic = iqm,
    *,
    paired: bool,
    reps: int = 50_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """`statistic(a) - statistic(b)` and its expanded percentile-bootstrap interval.

    Paired: each replicate resamples seed indices once per task, for both arms (run i of a
    task in `a` and in `b` ran the same seed). Unpaired: each arm is resampled on its own,
    within each task. The interval is the percentile interval's distance from the estimate,
    widened by `_expansion`; it is `(nan, nan)` when a task has fewer than two runs (its spread
    cannot be seen).

    Raises:
        ValueError: `paired` with run counts that differ in some task.
    """
    a, b = _tasks(a_by_task), _tasks(b_by_task)
    if paired and not is_paired(a, b):
        raise ValueError("paired arms need the same run count in every task")
    rng = np.random.default_rng(seed)
    draws_a = _draws(a, reps, rng)
    draws_b = draws_a if paired else _draws(b, reps, rng)
    estimate = float(statistic(_pooled(a), axis=1)[0] - statistic(_pooled(b), axis=1)[0])
    replicates = statistic(_pooled(a, draws_a), axis=1) - statistic(_pooled(b, draws_b), axis=1)
    counts = [len(t) for t in a] if paired else [len(t) for t in (*a, *b)]
    df = sum(c - 1 for c in counts)
    if df < 1 or min(counts) < 2:
        return estimate, float("nan"), float("nan")
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(replicates, [tail, 100 - tail])
    widen = _expansion(counts, df, confidence)
    return (
        estimate,
        float(estimate + widen * (low - estimate)),
        float(estimate + widen * (high - estimate)),
    )


def _improvement(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> np.ndarray:
    """P(X > Y) + P(X = Y) / 2 per replicate row, averaged over tasks: `a`, `b` are
    `[reps, runs]` per task."""
    per_task = []
    for x, y in zip(a, b, strict=True):
        diff = x[:, :, None] - y[:, None, :]
        per_task.append(((diff > 0) + 0.5 * (diff == 0)).mean(axis=(1, 2)))
    return np.mean(per_task, axis=0)


def probability_of_improvement(
    a_by_task: Tasks,
    b_by_task: Tasks,
    *,
    paired: bool,
    reps: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """rliable's P(a > b) with a percentile-bootstrap interval (paired or not, as in
    `difference_ci`). 0.5 is no difference; it is scale-free, so tasks need no normalisation."""
    a, b = _tasks(a_by_task), _tasks(b_by_task)
    rng = np.random.default_rng(seed)
    draws_a = _draws(a, reps, rng)
    draws_b = draws_a if paired else _draws(b, reps, rng)
    estimate = float(_improvement([t[None] for t in a], [t[None] for t in b])[0])
    replicates = _improvement(
        [t[d] for t, d in zip(a, draws_a, strict=True)],
        [t[d] for t, d in zip(b, draws_b, strict=True)],
    )
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return estimate, float(low), float(high)


def randomization_test(
    a_by_task: Tasks,
    b_by_task: Tasks,
    statistic: Statistic = iqm,
    *,
    paired: bool,
    draws: int = 100_000,
    seed: int = 0,
) -> tuple[float, str]:
    """Two-sided p-value of `statistic(a) - statistic(b)` under "the arm makes no difference".

    Paired (a sign-flip test): the two scores of a pair are swapped or not, every one of the
    2^n patterns up to `EXACT_PAIRS` pairs, else `draws` random ones. Unpaired (a permutation
    test): arm labels shuffled within each task, `draws` times. Random draws give
    `(1 + hits) / (1 + draws)`, which never understates p.

    Returns:
        `(p, how)`, e.g. `(0.0312, "sign-flip, exact over 64 patterns")`.
    """
    a, b = _tasks(a_by_task), _tasks(b_by_task)
    observed = abs(statistic(_pooled(a), axis=1)[0] - statistic(_pooled(b), axis=1)[0])
    rng = np.random.default_rng(seed)
    x, y = np.concatenate(a), np.concatenate(b)
    if paired:
        if not is_paired(a, b):
            raise ValueError("paired arms need the same run count in every task")
        n = len(x)
        exact = n <= EXACT_PAIRS
        if exact:
            swap = np.array(list(itertools.product((False, True), repeat=n)))
        else:
            swap = rng.random((draws, n)) < 0.5
        new_a, new_b = np.where(swap, y, x), np.where(swap, x, y)
        how = (
            f"sign-flip, exact over {len(swap)} patterns"
            if exact
            else (f"sign-flip, {draws:,} random patterns")
        )
    else:
        new_a, new_b = [], []
        for ta, tb in zip(a, b, strict=True):
            both = np.broadcast_to(np.concatenate([ta, tb]), (draws, len(ta) + len(tb)))
            shuffled = rng.permuted(both, axis=1)
            new_a.append(shuffled[:, : len(ta)])
            new_b.append(shuffled[:, len(ta) :])
        new_a, new_b = np.concatenate(new_a, axis=1), np.concatenate(new_b, axis=1)
        exact = False
        how = f"permutation within tasks, {draws:,} random shuffles"
    null = np.abs(statistic(new_a, axis=1) - statistic(new_b, axis=1))
    hits = int(np.sum(null >= observed - 1e-12 * max(1.0, abs(observed))))
    p = hits / len(null) if exact else (1 + hits) / (1 + len(null))
    return float(min(p, 1.0)), how


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (Holm 1979), in the input's order: the i-th smallest
    of m is multiplied by m - i + 1, then made non-decreasing, capped at 1."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p)
    scaled = np.minimum(1.0, (len(p) - np.arange(len(p))) * p[order])
    adjusted = np.empty_like(p)
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


@dataclass(frozen=True)
class Comparison:
    """Arm `a` against arm `b`: what every comparison table shows."""

    design: Literal["paired", "unpaired"]
    runs: int
    """Pairs (paired) or runs of `a` (unpaired)."""
    difference: float
    """`statistic(a) - statistic(b)`."""
    low: float
    high: float
    p_improvement: float
    """P(a > b), rliable's probability of improvement."""
    p_improvement_low: float
    p_improvement_high: float
    p_value: float
    """Two-sided randomisation test of the difference (`randomization_test`)."""
    test: str

    def as_dict(self) -> dict[str, float | int | str]:
        """The fields by name (for tables)."""
        return asdict(self)


def compare(
    a_by_task: Tasks,
    b_by_task: Tasks,
    statistic: Statistic = iqm,
    *,
    paired: bool,
    confidence: float = 0.95,
    reps: int = 50_000,
    seed: int = 0,
) -> Comparison:
    """Difference with its interval, P(improvement) with its interval, and the test."""
    diff, low, high = difference_ci(
        a_by_task, b_by_task, statistic, paired=paired, reps=reps, confidence=confidence, seed=seed
    )
    pi, pi_low, pi_high = probability_of_improvement(
        a_by_task, b_by_task, paired=paired, confidence=confidence, seed=seed
    )
    p, how = randomization_test(a_by_task, b_by_task, statistic, paired=paired, seed=seed)
    runs = len(np.concatenate(_tasks(a_by_task)))
    return Comparison(
        "paired" if paired else "unpaired", runs, diff, low, high, pi, pi_low, pi_high, p, how
    )


def overlapping(intervals: Sequence[tuple[float, float]], best: int) -> list[int]:
    """Indices of the intervals `(low, high)` that overlap interval `best` (itself included)."""
    low, high = intervals[best]
    return [i for i, (lo, hi) in enumerate(intervals) if lo <= high and hi >= low]
