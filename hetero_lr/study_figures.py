"""Figures a finished study attaches to its MLflow study run (PNG, matplotlib).

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
from optuna.visualization import matplotlib as ovm

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from hetero_lr.tracking import Tracker


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
