"""Figures of a study report (matplotlib, written as PNG)."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.stats import stratified_bootstrap_ci


def final_scores(table: pd.DataFrame, *, ylabel: str) -> Figure:
    """IQM and its 95% interval per pairing (a `final_scores_table`)."""
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(table) + 1.5))
    y = np.arange(len(table))
    ax.errorbar(
        table["iqm"],
        y,
        xerr=[table["iqm"] - table["ci_low"], table["ci_high"] - table["iqm"]],
        fmt="o",
        capsize=4,
    )
    ax.set_yticks(y, table["pairing"])
    ax.invert_yaxis()
    ax.set_xlabel(f"IQM {ylabel} (95% stratified-bootstrap CI)")
    fig.tight_layout()
    return fig


def learning_curves(
    curves: pd.DataFrame,
    *,
    ylabel: str,
    reps: int = 2_000,
    confidence: float = 0.95,
    log: bool = False,
) -> Figure:
    """Mean score by agent step per pairing, with a bootstrap band over runs.

    The mean is over all runs (environments x seeds); the band resamples runs within each
    environment (stratified, as for the final scores).
    """
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for pairing, group in curves.groupby("pairing", sort=True):
        steps, means, lows, highs = [], [], [], []
        for step, at in group.groupby("step"):
            tasks = [g["score"].to_numpy() for _, g in at.groupby("env")]
            mean, low, high = stratified_bootstrap_ci(
                tasks, _mean, reps=reps, confidence=confidence
            )
            steps.append(step)
            means.append(mean)
            lows.append(low)
            highs.append(high)
        (line,) = ax.plot(steps, means, label=pairing)
        ax.fill_between(steps, lows, highs, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("agent step")
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def kr_kl_heatmap(cells: pd.DataFrame) -> Figure:
    """Mean objective per (KR, KL) cell, one panel per pairing (a `kr_kl_table`)."""
    pairings = sorted(cells["pairing"].unique())
    fig, axes = plt.subplots(1, len(pairings), figsize=(4.5 * len(pairings), 4), squeeze=False)
    for ax, pairing in zip(axes[0], pairings, strict=True):
        sub = cells[cells["pairing"] == pairing]
        grid = sub.pivot(index="kr_bin", columns="kl_bin", values="mean")
        counts = sub.pivot(index="kr_bin", columns="kl_bin", values="trials")
        order_r = sorted(grid.index, key=_bin_low)
        order_l = sorted(grid.columns, key=_bin_low)
        grid, counts = grid.loc[order_r, order_l], counts.loc[order_r, order_l]
        image = ax.imshow(grid.to_numpy(dtype=float), cmap="viridis", origin="lower")
        for (i, j), value in np.ndenumerate(grid.to_numpy(dtype=float)):
            if not math.isnan(value):
                n = int(counts.iloc[i, j])
                ax.text(
                    j,
                    i,
                    f"{value:.3g}\n(n={n})",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white",
                )
        ax.set_xticks(range(len(order_l)), order_l)
        ax.set_yticks(range(len(order_r)), order_r)
        ax.set_xlabel("KL (Lookahead steps per phase)")
        ax.set_ylabel("KR (Replicate steps per phase)")
        ax.set_title(pairing)
        fig.colorbar(image, ax=ax, shrink=0.8, label="mean objective")
    fig.tight_layout()
    return fig


def importances(values: pd.Series) -> Figure:
    """Parameter importances (Optuna's evaluator) as horizontal bars."""
    fig, ax = plt.subplots(figsize=(5, 0.5 * len(values) + 1.5))
    ax.barh(values.index, values.to_numpy())
    ax.invert_yaxis()
    ax.set_xlabel("importance (normalised)")
    fig.tight_layout()
    return fig


def _bin_low(label: str) -> int:
    return int(label.split("-")[0])


def _mean(x: np.ndarray, axis: int | None = None) -> np.ndarray:
    return np.mean(x, axis=axis)
