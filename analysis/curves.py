"""Curves of a report: metric histories reduced to a mean and a bootstrap band per step."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.load import StudyData, load_curves
from hetero_lr.stats import stratified_bootstrap_ci

BAND_COLUMNS = ["series", "step", "mean", "low", "high", "runs", "seeds", "envs"]


def curve_bands(
    curves: pd.DataFrame,
    *,
    by: str | Sequence[str] = "pairing",
    reps: int = 2_000,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Mean of `score` per series and step over its runs, with a percentile-bootstrap band.

    The band resamples runs (seeds) within each environment, as the final scores do. Columns:
    the `by` columns, series (their values joined by a space), step, mean, low, high, runs
    (runs at that step), seeds, envs.
    """
    by = [by] if isinstance(by, str) else list(by)
    if curves.empty:
        return pd.DataFrame(columns=[*by, *BAND_COLUMNS])
    rows = []
    for key, group in curves.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        for step, at in group.groupby("step", sort=True):
            tasks = [g["score"].to_numpy() for _, g in at.groupby("env")]
            mean, low, high = stratified_bootstrap_ci(
                tasks, np.mean, reps=reps, confidence=confidence
            )
            rows.append(
                {
                    **dict(zip(by, key, strict=True)),
                    "series": " ".join(map(str, key)),
                    "step": int(step),
                    "mean": mean,
                    "low": low,
                    "high": high,
                    "runs": len(at),
                    "seeds": at["seed"].nunique(),
                    "envs": at["env"].nunique(),
                }
            )
    return pd.DataFrame(rows, columns=[*by, *BAND_COLUMNS])


def setting_label(row: pd.Series, params: Sequence[str]) -> str:
    """`kr=1 kl=4`: a trial's searched parameters as one label."""
    return " ".join(f"{p}={_fmt(row[p])}" for p in params if p in row and pd.notna(row[p]))


def setting_curves(data: StudyData, *, key: str = "eval/return_mean", top: int = 8) -> pd.DataFrame:
    """Histories of the search runs of complete Replicate trials, labelled by their KR/KL
    setting (`setting` column); per pairing, the `top` settings by mean objective.

    Trials that share a setting (a sampler may repeat one) pool their runs.
    """
    trials = data.trials
    if not {"kr", "kl"} <= set(trials.columns):
        return pd.DataFrame()
    done = trials[(trials["state"] == "COMPLETE") & (trials["rule"] == "replicate")]
    done = done.assign(setting=[setting_label(r, ("kr", "kl")) for _, r in done.iterrows()])
    kept = []
    for _, group in done.groupby("pairing"):
        ranked = group.groupby("setting")["value"].mean().sort_values(ascending=False)
        kept += group[group["setting"].isin(ranked.index[:top])]["number"].astype(int).tolist()
    curves = load_curves(data, kept, key=key)
    settings = done.set_index("number")["setting"]
    return curves.assign(setting=curves["trial"].map(settings))


def _fmt(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return f"{value:.3g}" if isinstance(value, float) else str(value)
