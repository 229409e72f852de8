"""Aggregate scores over runs: IQM, stratified-bootstrap intervals, differences, ties.

The method of rliable (Agarwal et al. 2021, "Deep RL at the Edge of the Statistical Precipice";
`rliable/metrics.py`, `rliable/library.py`), reimplemented with numpy:
- IQM: the mean of the middle 50% of all run scores, `scipy.stats.trim_mean(x, 0.25)`.
- 95% interval: percentile bootstrap where each replicate resamples runs with replacement
  *within each task* (game), keeping every task's run count, as rliable's
  `get_interval_estimates(..., method="percentile", task_bootstrap=False)` does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Statistic = Callable[..., np.ndarray]
"""Maps an array of run scores along `axis` to a statistic (e.g. `iqm`, `np.mean`)."""


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


def stratified_bootstrap_ci(
    scores_by_task: Sequence[Sequence[float]],
    statistic: Statistic = iqm,
    *,
    reps: int = 50_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Point estimate and percentile-bootstrap interval of `statistic` over all runs.

    Args:
        scores_by_task: One sequence of run scores (e.g. one per seed) per task (game).
        statistic: Computed on all runs pooled; must accept `axis=1` on a `(reps, runs)` array.
        reps: Bootstrap replicates (rliable's default: 50,000).
        confidence: Interval size.
        seed: Seeds the resampling.

    Returns:
        `(estimate, low, high)`; a single run gives a zero-width interval.
    """
    rng = np.random.default_rng(seed)
    estimate, replicates = _bootstrap(scores_by_task, statistic, reps, rng)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return estimate, float(low), float(high)


def _bootstrap(
    scores_by_task: Sequence[Sequence[float]],
    statistic: Statistic,
    reps: int,
    rng: np.random.Generator,
) -> tuple[float, np.ndarray]:
    """`statistic` of all runs pooled, and of `reps` stratified resamples `[reps]`."""
    tasks = [np.asarray(t, dtype=float) for t in scores_by_task if len(t)]
    if not tasks:
        raise ValueError("no scores")
    pooled = np.concatenate(tasks)[None, :]
    resampled = np.concatenate(
        [t[rng.integers(0, len(t), size=(reps, len(t)))] for t in tasks], axis=1
    )  # [reps, runs]: runs drawn with replacement inside each task
    return float(statistic(pooled, axis=1)[0]), statistic(resampled, axis=1)


def difference_ci(
    a_by_task: Sequence[Sequence[float]],
    b_by_task: Sequence[Sequence[float]],
    statistic: Statistic = iqm,
    *,
    reps: int = 50_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """`statistic(a) - statistic(b)` and its percentile-bootstrap interval.

    The two sets of runs are independent (other seeds, other arms), so each replicate resamples
    each set on its own, within each task, as `stratified_bootstrap_ci` does for one set.

    Returns:
        `(difference, low, high)`.
    """
    rng = np.random.default_rng(seed)
    a, a_reps = _bootstrap(a_by_task, statistic, reps, rng)
    b, b_reps = _bootstrap(b_by_task, statistic, reps, rng)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(a_reps - b_reps, [tail, 100 - tail])
    return a - b, float(low), float(high)


def overlapping(intervals: Sequence[tuple[float, float]], best: int) -> list[int]:
    """Indices of the intervals `(low, high)` that overlap interval `best` (itself included)."""
    low, high = intervals[best]
    return [i for i, (lo, hi) in enumerate(intervals) if lo <= high and hi >= low]
