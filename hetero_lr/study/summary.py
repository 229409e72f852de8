"""The end of a study: figures (PNG), best trial and trial table on its MLflow study run.

Optuna's `optuna.visualization.matplotlib` backend is used rather than the default plotly one:
it needs no plotly/kaleido install and writes PNGs offline. A figure that cannot be drawn yet
(e.g. importances before two complete trials) is skipped and the reason returned.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # files only; no display in workers or on servers

import matplotlib.pyplot as plt
import numpy as np
import optuna
from mlflow.entities import Metric
from optuna.visualization import matplotlib as ovm

from hetero_lr.study._console import now_ms, say

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from hetero_lr.tracking import Tracker


def finish_study(
    study: optuna.Study, tracker: Tracker, run_id: str, status: str, reason: str | None
) -> None:
    """Figures, best trial and trial table to the study run; end it; print a summary line."""
    skipped = log_study_figures(study, tracker, run_id)
    tags: dict[str, Any] = {"figures.skipped": "; ".join(skipped) or "none"}
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if complete:
        best = study.best_trial
        tags.update(
            {
                "best.trial": best.number,
                "best.value": best.value,
                "best.pairing": best.user_attrs.get("pairing", ""),
            }
        )
        tags.update({f"best.{k}": v for k, v in best.params.items()})
        tracker.log_dict(
            run_id,
            {
                "number": best.number,
                "value": best.value,
                "params": best.params,
                "pairing": best.user_attrs.get("pairing"),
                "config": best.user_attrs.get("config"),
                "run_scores": best.user_attrs.get("run_scores"),
                "mlflow_run_id": best.user_attrs.get("mlflow_run_id"),
            },
            "best_trial.json",
        )
        tracker.log_metrics(run_id, [Metric("best_value", best.value, now_ms(), len(complete))])
    tracker.log_text(run_id, study.trials_dataframe().to_csv(index=False), "trials.csv")
    tracker.set_tags(run_id, tags)
    tracker.end_run(run_id, status, reason)  # type: ignore[arg-type]
    counts = {s.name: 0 for s in optuna.trial.TrialState}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] += 1
    summary = ", ".join(f"{n.lower()} {c}" for n, c in counts.items() if c)
    best_text = (
        f"best {tags['best.value']:.4g} (trial {tags['best.trial']}, {tags['best.pairing']})"
        if "best.trial" in tags
        else "no complete trial"
    )
    say(f"study {study.study_name!r}: {summary}; {best_text}")


def objective_by_pairing(study: optuna.Study) -> Figure:
    """Objective of every complete trial per pairing (baselines included), best marked."""
    by_arm: dict[str, list[float]] = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        by_arm.setdefault(t.user_attrs.get("pairing", "?"), []).append(t.value)
    if not by_arm:
        raise ValueError("no complete trial")
    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(by_arm) + 2), 4))
    rng = np.random.default_rng(0)
    for i, (_, values) in enumerate(sorted(by_arm.items())):
        x = i + rng.uniform(-0.15, 0.15, len(values))
        ax.scatter(x, values, alpha=0.6, label=None)
        ax.scatter([i], [max(values)], marker="_", s=600, color="black")
    ax.set_xticks(range(len(by_arm)), sorted(by_arm), rotation=20, ha="right")
    ax.set_ylabel("objective (trial mean over runs)")
    ax.set_title(f"{study.study_name}: objective per pairing (bar: best)")
    fig.tight_layout()
    return fig


def searched_params(study: optuna.Study) -> list[str]:
    """Parameters that took more than one value among complete trials."""
    values: dict[str, set[Any]] = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        for k, v in t.params.items():
            values.setdefault(k, set()).add(v)
    return sorted(k for k, v in values.items() if len(v) > 1)


def study_figures(study: optuna.Study) -> dict[str, Callable[[], Any]]:
    """Artifact path -> function drawing it (an Axes, an array of Axes, or a Figure)."""
    params = searched_params(study)
    figures: dict[str, Callable[[], Any]] = {
        "figures/objective_by_pairing.png": lambda: objective_by_pairing(study),
        "figures/param_importances.png": lambda: ovm.plot_param_importances(study, params=params),
        "figures/optimization_history.png": lambda: ovm.plot_optimization_history(study),
        "figures/intermediate_values.png": lambda: ovm.plot_intermediate_values(study),
    }
    if {"kr", "kl"} <= set(params):
        figures["figures/kr_kl_contour.png"] = lambda: ovm.plot_contour(study, params=["kr", "kl"])
    return figures


def log_study_figures(study: optuna.Study, tracker: Tracker, run_id: str) -> list[str]:
    """Draw every figure into the run's artifacts; returns `path: reason` for skipped ones."""
    skipped = []
    for path, draw in study_figures(study).items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's ExperimentalWarning, empty-plot notes
            try:
                fig = _figure_of(draw())
            except (ValueError, RuntimeError, ZeroDivisionError) as err:
                skipped.append(f"{path}: {err}")
                continue
        tracker.log_figure(run_id, fig, path)
        plt.close(fig)
    return skipped


def _figure_of(drawn: Any) -> Figure:
    if hasattr(drawn, "savefig"):
        return drawn
    axes = np.ravel(drawn) if isinstance(drawn, np.ndarray) else [drawn]
    fig = axes[0].get_figure()
    fig.tight_layout()
    return fig
