"""`report.html` on the study run, written at the end of every study without a second command.

One page: the verdict, the comparison of each complete trial with its HardCopy baseline (the
numbers of `comparison.json`, with the statistics of `hetero_lr.stats`), and each trial's mean
learning curve with the band its runs span, beside its baseline's, on one y-axis. The curves
come from each trial run's `curves.json` (the objective's scale, per run). The full report, with
pooled tables and confirmation across studies, is `python -m analysis.report`.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from hetero_lr.page import Section, to_html
from hetero_lr.study._console import short
from hetero_lr.tracking import run_link

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from hetero_lr.tracking import Tracker

CURVES = "curves.json"
"""Per trial run: {"steps": [...], "runs": {run name: [score per evaluation]}, "scale": ...}."""

MAX_PANELS = 24
"""Curves drawn at most: complete trials best first, then pruned ones."""

Curves = tuple[np.ndarray, np.ndarray]
"""(agent steps, scores with one row per run)."""


def load_curves(
    tracker: Tracker, trials: list[optuna.trial.FrozenTrial]
) -> tuple[dict[int, Curves], str]:
    """Trial number -> its runs' curves (trials whose run has `curves.json`), and the name of
    the scale they are on."""
    curves, scale = {}, "score"
    for trial in trials:
        run_id = trial.user_attrs.get("mlflow_run_id")
        data = tracker.load_dict(run_id, CURVES) if run_id else None
        if data and data["runs"]:
            runs = np.asarray(list(data["runs"].values()), dtype=float)
            curves[trial.number] = (np.asarray(data["steps"]), runs)
            scale = str(data.get("scale", scale)).split(" (")[0]
    return curves, scale


def _band(ax: Axes, curves: Curves, color: str, **line: Any) -> None:
    """The mean over runs as a line, the range of the runs as a band."""
    steps, runs = curves
    low, mean, high = runs.min(axis=0), runs.mean(axis=0), runs.max(axis=0)
    if len(steps) == 1:  # one evaluation: a point and its range
        ax.errorbar(steps, mean, yerr=[mean - low, high - mean], fmt="o", color=color, capsize=3)
        return
    ax.fill_between(steps, low, high, color=color, alpha=0.2, lw=0)
    ax.plot(steps, mean, color=color, **line)


def curves_figure(
    shown: list[optuna.trial.FrozenTrial],
    curves: dict[int, Curves],
    rows: dict[int, dict[str, Any]],
    ylabel: str,
) -> Figure:
    """One panel per trial in `shown`: its mean curve and run range, and its baseline's
    (grey, dashed) where it has one; every panel on the same y-axis."""
    cols = min(4, len(shown))
    nrows = math.ceil(len(shown) / cols)
    with plt.style.context("default"):  # not the ggplot style Optuna's plots switch on
        fig, axes = plt.subplots(
            nrows, cols, figsize=(3.4 * cols, 2.6 * nrows + 0.4), sharey=True, squeeze=False
        )
    for ax, trial in zip(axes.flat, shown, strict=False):
        row = rows.get(trial.number, {})
        base = row.get("baseline")
        if base is not None and base in curves:
            _band(ax, curves[base], "0.35", ls="--")
        _band(ax, curves[trial.number], "tab:blue")
        shown_params = " ".join(f"{k}={short(v)}" for k, v in trial.params.items() if k != "pair")
        head = f"t{trial.number} {trial.user_attrs.get('pairing', '')} {shown_params}".strip()
        if trial.state != optuna.trial.TrialState.COMPLETE:
            tail = trial.state.name.lower()
        elif "delta_vs_baseline" in row:
            tail = (
                f"Δ {row['delta_vs_baseline']:+.3g} "
                f"[{row['delta_vs_baseline_ci_low']:+.3g}, {row['delta_vs_baseline_ci_high']:+.3g}]"
            )
        else:
            tail = f"{trial.value:.3g}"
        ax.set_title(f"{head}\n{tail}", fontsize="small")
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.tick_params(labelsize="x-small")
        ax.grid(alpha=0.3)
        ax.xaxis.get_offset_text().set_fontsize("x-small")
    for ax in axes.flat[len(shown) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize="small")
    for ax in axes[-1, :]:
        ax.set_xlabel("agent step", fontsize="small")
    handles = [Line2D([], [], color="tab:blue", label="trial: mean over runs, band: their range")]
    if any(rows.get(t.number, {}).get("baseline") in curves for t in shown):
        handles.append(Line2D([], [], color="0.35", ls="--", label="its HardCopy baseline"))
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize="small", frameon=False)
    fig.tight_layout(rect=(0, 0.06 if nrows == 1 else 0.03, 1, 1))
    return fig


def comparison_frame(
    rows: list[dict[str, Any]], trials: dict[int, optuna.trial.FrozenTrial], tracking_uri: str
) -> pd.DataFrame:
    """The comparison rows as the table a reader scans: a link per trial, intervals in one
    column each, numbers rounded."""
    table = []
    for row in sorted(rows, key=lambda r: -r["objective"]):
        trial = trials[row["trial"]]
        experiment = trial.user_attrs.get("experiment")
        name = f"trial {row['trial']}"
        if row.get("run_id") and experiment:
            name = f"[{name}]({run_link(tracking_uri, experiment, row['run_id'])})"
        entry = {
            "trial": name,
            "pairing": row["pairing"],
            "settings": " ".join(f"{k}={short(v)}" for k, v in trial.params.items() if k != "pair"),
            "runs": row["runs"],
            "objective [95% CI]": _interval(
                row["objective"], row["objective_ci_low"], row["objective_ci_high"]
            ),
        }
        if "delta_vs_baseline" in row:
            entry |= {
                "baseline": f"trial {row['baseline']}",
                "Δ vs baseline [95% CI]": _interval(
                    row["delta_vs_baseline"],
                    row["delta_vs_baseline_ci_low"],
                    row["delta_vs_baseline_ci_high"],
                    sign=True,
                ),
                "P(improvement)": f"{row['p_improvement']:.2f}",
                "p (Holm)": f"{row['p_holm']:.2g}",
                "design": row["design"],
            }
        table.append(entry)
    return pd.DataFrame(table).fillna("")


def _interval(value: float, low: float, high: float, *, sign: bool = False) -> str:
    f = "{:+.3g}" if sign else "{:.3g}"
    if low != low:  # one run per environment: no interval
        return f.format(value)
    return f"{f.format(value)} [{f.format(low)}, {f.format(high)}]"


def log_report(
    study: optuna.Study,
    tracker: Tracker,
    run_id: str,
    rows: list[dict[str, Any]],
    lines: list[str],
) -> None:
    """Write `report.html` to the study run: verdict, comparison table, curves."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    ended = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = [t for t in trials.values() if t.state in ended]
    complete = sorted(
        (t for t in done if t.state == optuna.trial.TrialState.COMPLETE), key=lambda t: -t.value
    )
    pruned = [t for t in done if t.state == optuna.trial.TrialState.PRUNED]
    curves, scale = load_curves(tracker, done)
    shown = [t for t in (*complete, *pruned) if t.number in curves][:MAX_PANELS]
    by_trial = {row["trial"]: row for row in rows}
    sections = [Section("Verdict", text=lines or ["No trial completed."])]
    if rows:
        caption = (
            "Objective: mean over a trial's runs of each run's score (the mean of its last "
            "evaluations). Intervals are 95% stratified bootstrap intervals over runs, widened "
            "for few runs; Δ is the difference to the HardCopy baseline of the same online "
            "family, paired on seeds where both ran the same ones (`docs/statistics.md`)."
        )
        sections.append(
            Section(
                "Trials against their baselines",
                tables=[(caption, comparison_frame(rows, trials, tracker.tracking_uri))],
            )
        )
    with tempfile.TemporaryDirectory() as folder:
        if shown:
            figure = curves_figure(shown, curves, by_trial, scale)
            figure.savefig(Path(folder) / "curves.png", dpi=110)
            plt.close(figure)
            left = len(done) - len(shown)
            text = [
                "Each trial's mean learning curve (line) and the range of its runs (band), with "
                "its baseline's (grey, dashed), on one y-axis. Pruned trials end where they "
                "were pruned." + (f" {left} further trials are not drawn." if left > 0 else "")
            ]
            sections.append(Section("Learning curves", text=text, figures=["curves.png"]))
        page = to_html(f"Study `{study.study_name}`", sections, Path(folder))
    tracker.log_text(run_id, page, "report.html")
