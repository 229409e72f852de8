"""The end of a study: figures (PNG), best trial and trial table on its MLflow study run.

Optuna's `optuna.visualization.matplotlib` backend is used rather than the default plotly one:
it needs no plotly/kaleido install and writes PNGs offline. A figure that cannot be drawn yet
(e.g. importances before two complete trials) is skipped and the reason returned.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # files only; no display in workers or on servers

import matplotlib.pyplot as plt
import numpy as np
import optuna
from mlflow.entities import Metric
from optuna.visualization import matplotlib as ovm

from hetero_lr.scores import is_normalised, normalizer
from hetero_lr.stats import (
    align,
    compare,
    difference_ci,
    holm,
    iqm,
    overlapping,
    stratified_bootstrap_ci,
)
from hetero_lr.study._console import now_ms, say, short
from hetero_lr.study.report import log_report
from hetero_lr.study.spec import recorded_config
from hetero_lr.tracking import readable, run_link

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from hetero_lr.tracking import Tracker


def finish_study(
    study: optuna.Study, tracker: Tracker, run_id: str, status: str, reason: str | None
) -> None:
    """Figures, the search's winner (or tie), the confirmed results and the trial table to the
    study run; end it; print a summary."""
    skipped = log_study_figures(study, tracker, run_id)
    tags: dict[str, Any] = {"figures.skipped": "; ".join(skipped) or "none"}
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    lines: list[str] = []
    rows: list[dict[str, Any]] = []
    description = [study.user_attrs.get("description", "")]
    if complete:
        best, tied = search_winner(complete)
        mark_best(tracker, best, tied)
        description.append(f"Search: {_winner_line(best, tied)}. {_link(best, 'best trial')}")
        tags.update(
            {
                "best.trial": best.number,
                "best.value": readable(best.value),
                "best.pairing": best.user_attrs.get("pairing", ""),
                "best.tie": ", ".join(str(t.number) for t in tied) if len(tied) > 1 else "no",
            }
        )
        tags.update({f"best.{k}": v for k, v in best.params.items()})
        tracker.log_dict(run_id, _trial_record(study, best, tied), "best_trial.json")
        steps = study.user_attrs.get("settings", {}).get("config", {}).get("steps", 0)
        tracker.log_metrics(run_id, [Metric("objective", readable(best.value), now_ms(), steps)])
        lines.append(_winner_line(best, tied))
        rows = trial_comparisons(complete)
        log_trial_comparisons(tracker, rows, steps)
        ranked = sorted(
            (r for r in rows if "delta_vs_baseline" in r), key=lambda r: -r["objective"]
        )
        if ranked:
            lines.append(verdict(ranked[0]))
            description.append("Against the baseline: " + verdict(ranked[0]) + ".")
        dashboard_notes(study, complete, rows, tracker.tracking_uri, description)
        tracker.log_table(run_id, _columns(rows), "comparison.json")
    confirmed = confirmation_table(study.user_attrs.get("confirmation", {}))
    if confirmed:
        tracker.log_text(run_id, _csv(confirmed), "confirmation.csv")
        lines += [_table_line(row) for row in confirmed]
        winner, tied_arms = confirmed_winner(confirmed)
        tags["confirm.best"] = winner if len(tied_arms) == 1 else "tie: " + ", ".join(tied_arms)
        lines.append(
            f"confirmed best: {winner}"
            if len(tied_arms) == 1
            else f"confirmed: no winner, {', '.join(tied_arms)} tied (95% CIs of the IQM overlap)"
        )
        description += ["Confirmation (fresh seeds):", *(f"- {_table_line(r)}" for r in confirmed)]
    log_report(study, tracker, run_id, rows, lines)
    description.append("The report with every trial's curve beside its baseline's: `report.html`.")
    trials = study.trials_dataframe().map(lambda v: readable(v) if isinstance(v, float) else v)
    tracker.log_text(run_id, trials.to_csv(index=False), "trials.csv")
    tracker.log_table(run_id, results_table(study), "results.json")
    tracker.describe(run_id, "\n\n".join(line for line in description if line))
    tracker.set_tags(run_id, tags)
    tracker.end_run(run_id, status, reason)  # type: ignore[arg-type]
    counts = {s.name: 0 for s in optuna.trial.TrialState}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] += 1
    summary = ", ".join(f"{n.lower()} {c}" for n, c in counts.items() if c)
    say(f"study {study.study_name!r}: {summary}")
    for line in lines or ["no complete trial"]:
        say(f"  {line}")


def trial_comparisons(
    complete: list[optuna.trial.FrozenTrial], *, confidence: float = 0.95
) -> list[dict[str, Any]]:
    """Per complete trial: its objective with an interval over its runs and, where the study
    ran a HardCopy baseline of its online family, the paired difference to that baseline
    (mean over runs, as the objective counts), P(improvement) and the sign-flip p,
    Holm-adjusted over the trials compared."""
    by_label = {t.user_attrs.get("pairing", ""): t for t in complete}
    rows = []
    for trial in complete:
        label = trial.user_attrs.get("pairing", "")
        runs = _trial_scores(trial)
        tasks = [list(v.values()) for v in runs.values()]
        _, low, high = stratified_bootstrap_ci(tasks, np.mean, reps=5_000, confidence=confidence)
        row: dict[str, Any] = {
            "trial": trial.number,
            "run_id": trial.user_attrs.get("mlflow_run_id", ""),
            "pairing": label,
            "runs": sum(map(len, tasks)),
            "objective": trial.value,
            "objective_ci_low": low,
            "objective_ci_high": high,
        }
        online = label.split(":")[0]
        base = by_label.get(f"{online}:{online}@hardcopy")
        if base is not None and base is not trial and set(_trial_scores(base)) == set(runs):
            a, b, paired = align(runs, _trial_scores(base))
            result = compare(a, b, np.mean, paired=paired, confidence=confidence, reps=5_000)
            row |= {
                "baseline": base.number,
                "baseline_run": base.user_attrs.get("mlflow_run_id", ""),
                "design": result.design,
                "delta_vs_baseline": result.difference,
                "delta_vs_baseline_ci_low": result.low,
                "delta_vs_baseline_ci_high": result.high,
                "p_improvement": result.p_improvement,
                "p_value": result.p_value,
            }
        rows.append(row)
    return with_holm(rows)


def _columns(rows: list[dict[str, Any]]) -> dict[str, list]:
    """Rows -> the column dict `mlflow.log_table` takes, numbers made readable."""
    keys = dict.fromkeys(k for r in rows for k in r if k not in ("run_id", "baseline_run"))
    return {
        k: [readable(r[k]) if isinstance(r.get(k), float) else r.get(k, "") for r in rows]
        for k in keys
    }


def with_holm(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`rows`, each with a `p_value` also given `p_holm`: Holm's adjustment over those rows."""
    tested = [r for r in rows if "p_value" in r]
    for row, adjusted in zip(tested, holm([r["p_value"] for r in tested]), strict=True):
        row["p_holm"] = float(adjusted)
    return rows


def log_trial_comparisons(tracker: Tracker, rows: list[dict[str, Any]], steps: int) -> None:
    """Each row's numbers as metrics of its trial run, and a `baseline` tag naming the
    baseline trial's run."""
    keys = (
        "objective_ci_low",
        "objective_ci_high",
        "delta_vs_baseline",
        "delta_vs_baseline_ci_low",
        "delta_vs_baseline_ci_high",
        "p_improvement",
    )
    for row in rows:
        run_id = row.get("run_id")
        if not run_id:
            continue
        values = [(k, row[k]) for k in keys if k in row and row[k] == row[k]]
        tracker.log_metrics(run_id, [Metric(k, readable(v), now_ms(), steps) for k, v in values])
        if "baseline" in row:
            tracker.set_tags(run_id, {"baseline": row["baseline_run"] or row["baseline"]})


def dashboard_notes(
    study: optuna.Study,
    complete: list[optuna.trial.FrozenTrial],
    rows: list[dict[str, Any]],
    tracking_uri: str,
    description: list[str],
) -> None:
    """optuna-dashboard notes (Markdown): the study's description and verdict, and per trial
    its numbers and a link to its MLflow run. Skipped without the `dashboard` extra."""
    try:
        from optuna_dashboard import save_note
    except ImportError:
        return
    save_note(study, "\n\n".join(line for line in description if line))
    by_number = {t.number: t for t in complete}
    for row in rows:
        trial = by_number[row["trial"]]
        text = [
            f"**{row['pairing']}**: objective {row['objective']:.4g} "
            f"[{row['objective_ci_low']:.4g}, {row['objective_ci_high']:.4g}] over "
            f"{row['runs']} runs (95%)."
        ]
        if "delta_vs_baseline" in row:
            text.append(verdict(row) + f"; P(improvement) {row['p_improvement']:.2f}.")
        experiment = trial.user_attrs.get("experiment")
        if row["run_id"] and experiment:
            link = run_link(tracking_uri, experiment, row["run_id"])
            text.append(f"[MLflow run]({link})")
        save_note(optuna.trial.Trial(study, trial._trial_id), "\n\n".join(text))


def verdict(row: dict[str, Any]) -> str:
    """The comparison of one trial with its baseline, in words."""
    per = max(1, row["runs"])
    low, high = row["delta_vs_baseline_ci_low"], row["delta_vs_baseline_ci_high"]
    delta = row["delta_vs_baseline"]
    head = f"trial {row['trial']} ({row['pairing']}) vs its baseline, trial {row['baseline']}"
    if low != low:
        return f"{head}: {delta:+.3g}, no interval from one run per environment"
    span = f"{delta:+.3g} [{low:+.3g}, {high:+.3g}] ({row['design']}, {per} runs)"
    if low > 0:
        return f"{head}: better by {span}"
    if high < 0:
        return f"{head}: worse by {span}"
    return (
        f"{head}: not distinguishable with {per} runs per trial, {span}; "
        "run --confirm K for more seeds"
    )


def mark_best(
    tracker: Tracker, best: optuna.trial.FrozenTrial, tied: list[optuna.trial.FrozenTrial]
) -> None:
    """Tag the winning trial's MLflow run `best=yes`, or every tied one `best=tie`."""
    for trial in tied:
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            tracker.set_tags(run_id, {"best": "yes" if len(tied) == 1 else "tie"})


def results_table(study: optuna.Study) -> dict[str, list]:
    """One row per trial: number, state, pairing, parameters, objective, MLflow run id."""
    trials = study.get_trials(deepcopy=False)
    params = sorted({k for t in trials for k in t.params if k != "pair"})
    columns: dict[str, list] = {"trial": [], "state": [], "pairing": []}
    columns |= {p: [] for p in params} | {"objective": [], "runs": [], "mlflow_run_id": []}
    for t in trials:
        columns["trial"].append(t.number)
        columns["state"].append(t.state.name)
        columns["pairing"].append(t.user_attrs.get("pairing", ""))
        for p in params:
            columns[p].append(t.params.get(p))
        columns["objective"].append(t.value)
        columns["runs"].append(len(t.user_attrs.get("run_scores") or []))
        columns["mlflow_run_id"].append(t.user_attrs.get("mlflow_run_id", ""))
    return columns


def _link(trial: optuna.trial.FrozenTrial, text: str) -> str:
    """A Markdown link to a trial's MLflow run, as the UI's run descriptions render it."""
    run_id, experiment = trial.user_attrs.get("mlflow_run_id"), trial.user_attrs.get("experiment")
    if not run_id or not experiment:
        return ""
    return (
        f"[{text}: trial {trial.number}]"
        f"(#/experiments/{experiment}/runs/{run_id}?workflowType=machine_learning)"
    )


def search_winner(
    complete: list[optuna.trial.FrozenTrial], *, confidence: float = 0.95
) -> tuple[optuna.trial.FrozenTrial, list[optuna.trial.FrozenTrial]]:
    """The trial with the highest objective, and every trial tied with it.

    Tied: the interval of the difference between a trial's mean over its runs and the best
    trial's contains 0 (or cannot be computed: one run each). Trials of a study run the same
    seeds, so the difference is paired (`hetero_lr.stats.difference_ci`).
    """
    best = max(complete, key=lambda t: t.value)
    best_runs = _trial_scores(best)
    tied = [best]
    for trial in complete:
        if trial is best:
            continue
        runs = _trial_scores(trial)
        if set(runs) != set(best_runs):
            tied.append(trial)  # other environments: not comparable, so not ranked below
            continue
        a, b, paired = align(best_runs, runs)
        _, low, _ = difference_ci(a, b, np.mean, paired=paired, reps=5_000, confidence=confidence)
        if not low > 0:
            tied.append(trial)
    return best, sorted(tied, key=lambda t: -t.value)


def _trial_scores(trial: optuna.trial.FrozenTrial) -> dict[str, dict[Any, float]]:
    """A trial's run scores `{env: {seed: score}}` (its `run_scores` are environment-major)."""
    scores = list(trial.user_attrs.get("run_scores") or [trial.value])
    envs = list(trial.user_attrs.get("envs") or ["env"])
    seeds = list(trial.user_attrs.get("run_seeds") or [])
    per_env = np.array_split(np.asarray(scores, dtype=float), len(envs))
    record = {"scores": {e: list(s) for e, s in zip(envs, per_env, strict=True)}, "seeds": seeds}
    return seed_scores(f"trial {trial.number}", record)


def seed_scores(label: str, record: dict[str, Any]) -> dict[str, dict[Any, float]]:
    """A record's scores as `{env: {seed: score}}`: its `by_seed`, or `scores` zipped with
    `seeds` where every environment has all of them. Otherwise the runs cannot be matched to
    seeds and get keys of their own (`(label, i)`), so they pair with no other arm's."""
    if record.get("by_seed"):
        return {env: dict(runs) for env, runs in record["by_seed"].items() if runs}
    seeds = list(record.get("seeds") or [])
    out = {}
    for env, scores in record["scores"].items():
        if not scores:
            continue
        keys = seeds if len(seeds) == len(scores) else [(label, i) for i in range(len(scores))]
        out[env] = dict(zip(keys, scores, strict=True))
    return out


def common_scale(envs: Sequence[str]) -> bool:
    """Whether scores of `envs` can be pooled: one environment, or all normalised per env."""
    return len(envs) <= 1 or all(is_normalised(normalizer(env)[1]) for env in envs)


def confirmation_table(records: dict[str, Any], *, confidence: float = 0.95) -> list[dict]:
    """Per arm: IQM of its runs with rliable's stratified-bootstrap interval, its search
    ("selection") score, and the comparison with its online family's HardCopy baseline
    (`hetero_lr.stats.compare`: paired where both ran the same seeds in every environment,
    unpaired otherwise), Holm-adjusted over the arms compared.

    Scores must be on the objective's scale (normalised per environment where references
    exist). Over several environments without a common scale (`common_scale`), no pooled IQM
    or difference is computed: `iqm` is NaN and the per-environment tables carry the result.
    """
    rows = []
    for label, record in sorted(records.items()):
        by_seed = seed_scores(label, record)
        tasks = [list(runs.values()) for runs in by_seed.values()]
        if not tasks:
            continue
        row: dict[str, Any] = {
            "arm": label,
            "trial": record["trial"],
            "selection": record["selection"],
            "runs": sum(map(len, tasks)),
            "failed": len(record["failed"]),
        }
        if common_scale(list(by_seed)):
            estimate, low, high = stratified_bootstrap_ci(tasks, iqm, confidence=confidence)
            row |= {"iqm": estimate, "ci_low": low, "ci_high": high}
        else:
            row |= {"iqm": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
        online = label.split(":")[0]
        baseline = f"{online}:{online}@hardcopy"
        if "@" not in label and baseline in records and "iqm" in row and row["iqm"] == row["iqm"]:
            base = seed_scores(baseline, records[baseline])
            envs = sorted(set(by_seed) & set(base))
            if envs:
                a, b, paired = align({e: by_seed[e] for e in envs}, {e: base[e] for e in envs})
                result = compare(a, b, iqm, paired=paired, confidence=confidence)
                row |= {
                    "baseline": baseline,
                    "design": result.design,
                    "diff": result.difference,
                    "diff_low": result.low,
                    "diff_high": result.high,
                    "p_improvement": result.p_improvement,
                    "pi_low": result.p_improvement_low,
                    "pi_high": result.p_improvement_high,
                    "p_value": result.p_value,
                    "test": result.test,
                }
        rows.append(row)
    return with_holm(rows)


def per_env_table(records: dict[str, Any], *, confidence: float = 0.95) -> list[dict]:
    """`confirmation_table` for each environment on its own (the secondary, per-game view;
    the only one where environments share no scale), rows with an `env` column."""
    envs = sorted({env for r in records.values() for env in r["scores"]})
    rows = []
    for env in envs:
        one = {}
        for label, record in records.items():
            by_seed = seed_scores(label, record).get(env)
            if by_seed:
                one[label] = {
                    "trial": record["trial"],
                    "selection": float("nan"),
                    "scores": {env: list(by_seed.values())},
                    "by_seed": {env: by_seed},
                    "failed": [],
                }
        for row in confirmation_table(one, confidence=confidence):
            row.pop("selection")
            row.pop("failed")
            rows.append({"env": env, **row})
    return rows


def confirmed_winner(rows: list[dict]) -> tuple[str, list[str]]:
    """The confirmed arm with the highest IQM, and every arm whose interval overlaps its own."""
    scored = [r for r in rows if r["iqm"] == r["iqm"]]
    if not scored:
        return "none (no common scale across environments)", []
    best = max(range(len(scored)), key=lambda i: scored[i]["iqm"])
    tied = overlapping([(r["ci_low"], r["ci_high"]) for r in scored], best)
    return scored[best]["arm"], [scored[i]["arm"] for i in tied]


def _winner_line(best: optuna.trial.FrozenTrial, tied: list[optuna.trial.FrozenTrial]) -> str:
    pairing = best.user_attrs.get("pairing", "")
    if len(best.user_attrs.get("run_scores") or []) < 2:
        return (
            f"search best: trial {best.number} ({pairing}) {best.value:.4g}, from one run per "
            "trial: no interval, so no claim it beats the others (use --seeds 2 or more)"
        )
    runs = len(best.user_attrs["run_scores"])
    rough = f" (intervals from {runs} runs per trial are rough: --confirm K checks it)"
    if len(tied) == 1:
        return f"search best: trial {best.number} ({pairing}) {best.value:.4g}" + (
            rough if runs < 5 else ""
        )
    return (
        f"search: no winner, trials {', '.join(str(t.number) for t in tied)} tied "
        f"(the paired 95% interval of each one's difference to the highest contains 0; "
        f"highest: trial {best.number}, {pairing}, {best.value:.4g})"
    )


def _table_line(row: dict) -> str:
    text = (
        f"confirmed {row['arm']}: IQM {row['iqm']:.3g} [{row['ci_low']:.3g}, "
        f"{row['ci_high']:.3g}] over {row['runs']} runs (selection {row['selection']:.3g})"
    )
    if "diff" in row:
        text += f"; {difference_text(row)}"
    return text


def difference_text(row: dict) -> str:
    """`vs BASE -3.5 [-5.6, -0.5] (paired), P(improvement) 0.08 [0, 0.3], p 0.002 (Holm 0.004)`
    for a table row with a comparison."""
    text = (
        f"vs {row['baseline']} {row['diff']:+.3g} [{row['diff_low']:+.3g}, "
        f"{row['diff_high']:+.3g}] ({row['design']}), P(improvement) "
        f"{row['p_improvement']:.2f} [{row['pi_low']:.2f}, {row['pi_high']:.2f}], "
        f"p {row['p_value']:.2g}"
    )
    if "p_holm" in row and row["p_holm"] == row["p_holm"]:
        text += f" (Holm {row['p_holm']:.2g})"
    return text


def _trial_record(
    study: optuna.Study, best: optuna.trial.FrozenTrial, tied: list
) -> dict[str, Any]:
    return {
        "number": best.number,
        "value": best.value,
        "params": best.params,
        "pairing": best.user_attrs.get("pairing"),
        "config": recorded_config(study, best),
        "run_scores": best.user_attrs.get("run_scores"),
        "mlflow_run_id": best.user_attrs.get("mlflow_run_id"),
        "tied_with": [t.number for t in tied if t.number != best.number],
    }


def _csv(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = [",".join(columns)]
    lines += [",".join(str(row.get(c, "")) for c in columns) for row in rows]
    return "\n".join(lines) + "\n"


def trial_curve(
    runs: dict[str, tuple[list[int], list[float]]], *, title: str, ylabel: str
) -> Figure:
    """Each run's evaluation scores by agent step, and their mean (a trial's `curve.png`)."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, (steps, scores) in runs.items():
        ax.plot(steps, scores, alpha=0.45, linewidth=1, label=name)
    steps = next(iter(runs.values()))[0]
    mean = np.mean([scores for _, scores in runs.values()], axis=0)
    ax.plot(steps, mean, color="black", linewidth=2, label="mean")
    ax.set_xlabel("agent step")
    ax.set_ylabel(ylabel.split(" (")[0])
    ax.set_title(title, fontsize="medium")
    ax.legend(fontsize="x-small")
    fig.tight_layout()
    return fig


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
    ax.set_xlim(-0.6, len(by_arm) - 0.4)  # the best-trial bars stay inside the axes
    ax.set_ylabel("objective (trial mean over runs)")
    ax.set_title(f"{study.study_name}\nobjective per pairing (bar: best)", fontsize="medium")
    fig.tight_layout()
    return fig


def intermediate_values(study: optuna.Study) -> Figure:
    """What the pruner saw: each trial's reported values by agent step (runs by index under
    the Wilcoxon pruner), labelled with its settings; pruned trials dashed."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values]
    if not trials:
        raise ValueError("no trial reported a value")
    fig, ax = plt.subplots(figsize=(7, 4))
    for t in trials:
        steps = sorted(t.intermediate_values)
        shown = "".join(f" {k}={short(v)}" for k, v in t.params.items() if k != "pair")
        pruned = t.state == optuna.trial.TrialState.PRUNED
        ax.plot(
            steps,
            [t.intermediate_values[s] for s in steps],
            ls="--" if pruned else "-",
            marker=".",
            label=f"t{t.number} {t.user_attrs.get('pairing', '')}{shown}"
            + (" (pruned)" if pruned else ""),
        )
    ax.set_xlabel("agent step (finished run's index under the Wilcoxon pruner)")
    ax.set_ylabel("reported value (mean over runs)")
    ax.set_title(f"{study.study_name}\nintermediate values", fontsize="medium")
    if len(trials) <= 12:
        ax.legend(fontsize="x-small")
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
        "figures/intermediate_values.png": lambda: intermediate_values(study),
    }
    if {"kr", "kl"} <= set(params):
        figures["figures/kr_kl_contour.png"] = lambda: ovm.plot_contour(study, params=["kr", "kl"])
    return figures


def log_study_figures(study: optuna.Study, tracker: Tracker, run_id: str) -> list[str]:
    """Draw every figure into the run's artifacts; returns `path: reason` for skipped ones."""
    skipped = []
    constant = _constant_data(study)
    for path, draw in study_figures(study).items():
        if path in constant:
            skipped.append(f"{path}: {constant[path]}")
            continue
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


MIN_IMPORTANCE_TRIALS = 10
"""Fewer complete searched trials than this make fANOVA importances noise, so none are drawn."""


def _constant_data(study: optuna.Study) -> dict[str, str]:
    """Figures whose data would be constant or too thin -> the reason (they would plot noise)."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    values = {t.value for t in complete}
    skip = {}
    searched = [t for t in complete if "@" not in t.user_attrs.get("pairing", "")]
    if len(searched) < MIN_IMPORTANCE_TRIALS:
        skip["figures/param_importances.png"] = (
            f"{len(searched)} complete searched trials; importances need at least "
            f"{MIN_IMPORTANCE_TRIALS}"
        )
    if len(complete) > 1 and len(values) == 1:
        reason = (
            f"objective constant ({len(complete)} complete trials all scored {values.pop():.4g})"
        )
        for name in ("param_importances", "optimization_history", "kr_kl_contour"):
            skip[f"figures/{name}.png"] = reason
    reported = {v for t in study.get_trials(deepcopy=False) for v in t.intermediate_values.values()}
    if len(reported) == 1:
        skip["figures/intermediate_values.png"] = (
            f"every intermediate value is {reported.pop():.4g}"
        )
    return skip


def _figure_of(drawn: Any) -> Figure:
    if hasattr(drawn, "savefig"):
        return drawn
    axes = np.ravel(drawn) if isinstance(drawn, np.ndarray) else [drawn]
    fig = axes[0].get_figure()
    fig.tight_layout()
    return fig
