"""Figures of a study report (matplotlib, Agg backend; written as PNG and embedded in the page)."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure


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
    bands: pd.DataFrame, *, ylabel: str, log: bool = False, panel: str | None = None
) -> Figure:
    """Mean by agent step with its band, one line per series (a `curve_bands` table); one
    panel per value of the `panel` column if given."""
    panels = sorted(bands[panel].unique()) if panel else [None]
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(6.5 * len(panels), 4.5),
        squeeze=False,
        sharey=panel != "env",  # games score on their own scales
    )
    label_column = next(c for c in ("setting", "pairing", "series") if c in bands and c != panel)
    for ax, name in zip(axes[0], panels, strict=True):
        sub = bands if name is None else bands[bands[panel] == name]
        for label, series in sub.groupby(label_column, sort=True):
            (line,) = ax.plot(series["step"], series["mean"], label=label)
            ax.fill_between(
                series["step"], series["low"], series["high"], color=line.get_color(), alpha=0.2
            )
        ax.set_xlabel("agent step")
        ax.set_ylabel(ylabel)
        if name is not None:
            ax.set_title(name)
        if log:
            ax.set_yscale("log")
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def pairing_matrix(matrix: pd.DataFrame, *, unit: str) -> Figure:
    """Online family (rows) x target family (columns): each cell its arms' IQM [CI] and the
    difference to the online family's HardCopy baseline [CI], coloured by that difference
    (a `headline.pairing_matrix` table; grey: no difference, e.g. a baseline alone)."""
    from analysis.headline import cell_text

    rows = sorted(set(matrix["online"]))
    cols = sorted(set(matrix["online"]) | set(matrix["target"]))
    colour = np.full((len(rows), len(cols)), np.nan)
    fig, ax = plt.subplots(figsize=(2.9 * len(cols) + 2, 1.3 * len(rows) + 1.6))
    for (online, target), group in matrix.groupby(["online", "target"]):
        i, j = rows.index(online), cols.index(target)
        diffs = group["diff"].dropna()
        if len(diffs):
            colour[i, j] = diffs.iloc[0]
        text = "\n".join(cell_text(r).replace(", diff", "\ndiff") for r in group.to_dict("records"))
        box = {"facecolor": "white", "alpha": 0.8, "edgecolor": "none"}
        ax.text(j, i, text, ha="center", va="center", fontsize=7, bbox=box)
    limit = np.nanmax(np.abs(colour)) if np.isfinite(colour).any() else 1.0
    cmap = plt.get_cmap("RdBu").with_extremes(bad="0.9")
    image = ax.imshow(
        np.ma.masked_invalid(colour), cmap=cmap, vmin=-limit or -1, vmax=limit or 1, aspect="auto"
    )
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("target family")
    ax.set_ylabel("online family")
    ax.set_title(f"IQM {unit} [95% CI]; diff to the online family's HardCopy", fontsize="medium")
    fig.colorbar(image, ax=ax, shrink=0.8, label="IQM difference to baseline")
    fig.tight_layout()
    return fig


def performance_profiles(profiles: pd.DataFrame, *, xlabel: str) -> Figure:
    """Fraction of runs above tau per arm with its band, one panel per `task` (a table with
    columns arm, task, tau, fraction, low, high)."""
    tasks = sorted(profiles["task"].unique())
    fig, axes = plt.subplots(
        1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False, sharey=True
    )
    for ax, task in zip(axes[0], tasks, strict=True):
        for arm, sub in profiles[profiles["task"] == task].groupby("arm", sort=True):
            (line,) = ax.plot(sub["tau"], sub["fraction"], label=arm)
            ax.fill_between(sub["tau"], sub["low"], sub["high"], color=line.get_color(), alpha=0.2)
        ax.set_xlabel(f"{xlabel} (tau)")
        ax.set_ylabel("fraction of runs with score > tau")
        ax.set_title(task)
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def aggregate_intervals(table: pd.DataFrame, *, unit: str) -> Figure:
    """Point estimate and interval per arm, one panel per metric (rliable's interval plot; a
    table with columns arm, metric, estimate, low, high)."""
    metrics = list(dict.fromkeys(table["metric"]))
    arms = sorted(table["arm"].unique())
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(3.4 * len(metrics) + 1.5, 0.45 * len(arms) + 1.6), squeeze=False
    )
    for k, (ax, metric) in enumerate(zip(axes[0], metrics, strict=True)):
        sub = table[table["metric"] == metric].set_index("arm").loc[arms]
        y = np.arange(len(arms))
        ax.errorbar(
            sub["estimate"],
            y,
            xerr=[sub["estimate"] - sub["low"], sub["high"] - sub["estimate"]],
            fmt="o",
            capsize=4,
        )
        ax.set_yticks(y, arms if k == 0 else [""] * len(arms))
        ax.invert_yaxis()
        ax.set_title(metric.replace("_", " "))
        ax.set_xlabel(unit)
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
