"""Aggregate metrics and performance profiles over runs and tasks, with stratified-bootstrap
intervals, following rliable (Agarwal et al. 2021; `rliable/metrics.py`, `rliable/library.py`).

When `rliable` is installed and imports (it does not under pandas 3: `analysis/README.md`), it
computes them: `get_interval_estimates(..., method="percentile", task_bootstrap=False)` and
`create_performance_profile` on a `(runs, tasks)` matrix per arm, seeded through numpy's global
RNG (rliable draws its resampling indices with `np.random.choice`), which is restored
afterwards. Otherwise, and for arms whose tasks have unequal run counts (they do not fit one
matrix), the numpy code below computes the same estimators on the replicates of
`hetero_lr.stats.stratified_resamples` (the package's one bootstrap). `implementation` says
which code ran.
The estimators:

- IQM: the 25%-trimmed mean of all runs of all tasks (`aggregate_iqm`);
- median and mean: of the per-task mean scores (`aggregate_median`, `aggregate_mean`);
- optimality gap: `gamma - mean(min(score, gamma))` over all runs, gamma = 1 on
  human-normalised scores (`aggregate_optimality_gap`);
- performance profile: the fraction of all runs scoring above tau (`run_score_deviation`,
  "score distribution", rliable's default), with a band from 2,000 replicates;
- intervals: percentile bootstrap, runs resampled with replacement within each task
  (`get_interval_estimates(..., method="percentile", task_bootstrap=False)`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib import metadata
from types import ModuleType

import numpy as np
import pandas as pd

from hetero_lr.stats import iqm, stratified_resamples

METRICS = ("iqm", "median", "mean", "optimality_gap")
"""The aggregate metrics `aggregate_intervals` computes, in rliable's order."""


def load_rliable() -> tuple[ModuleType | None, str]:
    """`(rliable, "rliable 1.2.0")` when it imports, else `(None, why not)`.

    rliable 1.2.0 pins `arch<8`, and arch 7 fails to import under pandas 3, so an installed
    rliable can still be unusable; the reason then names the error.
    """
    try:
        import rliable
        import rliable.library
        import rliable.metrics
    except ModuleNotFoundError as err:
        if err.name == "rliable":
            return None, "rliable not installed"
        return None, f"rliable does not import: {type(err).__name__}: {err}"
    except Exception as err:  # e.g. arch 7 under pandas 3: TypeError from a pandas decorator
        return None, f"rliable does not import: {type(err).__name__}: {err}"
    return rliable, f"rliable {metadata.version('rliable')}"


def _matrix(tasks: Sequence[np.ndarray]) -> np.ndarray | None:
    """The `(runs, tasks)` matrix rliable takes, or None when run counts differ across tasks."""
    return np.stack(tasks, axis=1) if len({len(t) for t in tasks}) == 1 else None


def implementation(arms: Mapping[str, Iterable[Sequence[float]]]) -> str:
    """Which code computes the intervals of these arms (per arm, scores per task): e.g.
    `rliable 1.2.0`, `numpy (rliable not installed)`, or rliable with the arms left to numpy."""
    rly, name = load_rliable()
    if rly is None:
        return f"numpy ({name})"
    tasks = {arm: [np.asarray(t, dtype=float) for t in s if len(t)] for arm, s in arms.items()}
    unequal = [arm for arm, t in tasks.items() if t and _matrix(t) is None]
    if not unequal:
        return name
    return f"{name}; numpy for {', '.join(unequal)} (unequal runs per task)"


@contextmanager
def _global_seed(seed: int) -> Iterator[None]:
    """Seed numpy's global RNG (rliable resamples with it) and restore its state afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _rliable_intervals(
    rly: ModuleType,
    matrix: np.ndarray,
    metrics: Sequence[str],
    *,
    gamma: float,
    reps: int,
    confidence: float,
    seed: int,
) -> dict[str, tuple[float, float, float]]:
    """`aggregate_intervals` by rliable: one bootstrap for all metrics (`func` returns a vector)."""
    funcs = {
        "iqm": rly.metrics.aggregate_iqm,
        "median": rly.metrics.aggregate_median,
        "mean": rly.metrics.aggregate_mean,
        "optimality_gap": lambda x: rly.metrics.aggregate_optimality_gap(x, gamma),
    }
    unknown = [m for m in metrics if m not in funcs]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; known: {', '.join(METRICS)}")

    def func(x: np.ndarray) -> np.ndarray:
        return np.array([funcs[m](x) for m in metrics], dtype=float)

    with _global_seed(seed):
        points, intervals = rly.library.get_interval_estimates(
            {"arm": matrix},
            func,
            method="percentile",
            task_bootstrap=False,
            reps=reps,
            confidence_interval_size=confidence,
        )
    low, high = intervals["arm"]
    return {
        m: (float(points["arm"][k]), float(low[k]), float(high[k])) for k, m in enumerate(metrics)
    }


def aggregate(tasks: Sequence[np.ndarray], metric: str, *, gamma: float = 1.0) -> np.ndarray:
    """`metric` of runs `[..., runs]` per task, over the last axis: one value per leading index."""
    pooled = np.concatenate(tasks, axis=-1)
    if metric == "iqm":
        return iqm(pooled, axis=-1)
    if metric == "optimality_gap":
        return gamma - np.mean(np.minimum(pooled, gamma), axis=-1)
    task_means = np.stack([t.mean(axis=-1) for t in tasks], axis=-1)
    if metric == "mean":
        return task_means.mean(axis=-1)
    if metric == "median":
        return np.median(task_means, axis=-1)
    raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")


def aggregate_intervals(
    scores_by_task: Sequence[Sequence[float]],
    *,
    metrics: Sequence[str] = METRICS,
    gamma: float = 1.0,
    reps: int = 50_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float, float]]:
    """`{metric: (estimate, low, high)}` with percentile-bootstrap intervals (one resampling
    shared by all metrics), by rliable when it imports and the tasks have equal run counts."""
    tasks = [np.asarray(t, dtype=float) for t in scores_by_task if len(t)]
    rly, _ = load_rliable()
    matrix = _matrix(tasks) if rly is not None and tasks else None
    if matrix is not None:
        return _rliable_intervals(
            rly, matrix, metrics, gamma=gamma, reps=reps, confidence=confidence, seed=seed
        )
    replicates = stratified_resamples(tasks, reps=reps, seed=seed)
    tail = (1 - confidence) / 2 * 100
    out = {}
    for metric in metrics:
        estimate = float(aggregate([t[None, :] for t in tasks], metric, gamma=gamma)[0])
        low, high = np.percentile(aggregate(replicates, metric, gamma=gamma), [tail, 100 - tail])
        out[metric] = (estimate, float(low), float(high))
    return out


def performance_profile(
    scores_by_task: Sequence[Sequence[float]],
    taus: Sequence[float],
    *,
    reps: int = 2_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Fraction of runs scoring above each tau, with a stratified-bootstrap band (rliable's
    `create_performance_profile` when it imports and the tasks have equal run counts).

    Columns: tau, fraction, low, high.
    """
    taus = np.asarray(taus, dtype=float)
    tasks = [np.asarray(t, dtype=float) for t in scores_by_task if len(t)]
    rly, _ = load_rliable()
    matrix = _matrix(tasks) if rly is not None and tasks else None
    if matrix is not None:
        with _global_seed(seed):
            profiles, bands = rly.library.create_performance_profile(
                {"arm": matrix},
                taus,
                method="percentile",
                task_bootstrap=False,
                reps=reps,
                confidence_interval_size=confidence,
            )
        low, high = bands["arm"]
        return pd.DataFrame({"tau": taus, "fraction": profiles["arm"], "low": low, "high": high})
    pooled = np.concatenate(tasks)
    fraction = (pooled[:, None] > taus).mean(axis=0)
    replicates = np.concatenate(stratified_resamples(tasks, reps=reps, seed=seed), axis=1)
    above = np.stack([(replicates > tau).mean(axis=1) for tau in taus], axis=1)  # [reps, taus]
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(above, [tail, 100 - tail], axis=0)
    return pd.DataFrame({"tau": taus, "fraction": fraction, "low": low, "high": high})


def tau_grid(scores: Sequence[float], n: int = 101) -> np.ndarray:
    """Thresholds spanning the scores (a margin of 5% of their range each side)."""
    scores = np.asarray(scores, dtype=float)
    low, high = float(scores.min()), float(scores.max())
    margin = 0.05 * (high - low) or 1.0
    return np.linspace(low - margin, high + margin, n)
