"""Study report: one self-contained HTML page (plus Markdown, CSV and PNG beside it), logged to
the study's MLflow run.

    python -m analysis.report --study NAME [--results DIR] [--storage URL] [--tracking-uri URI]
                              [--out DIR]

Writes to `--out` (default `report/`) and logs as artifacts of the study's MLflow run (the run
tagged `hetero_lr.role=study`, under `report/`), so the page opens from the MLflow UI:
- `report.html`: every table and figure below on one page, figures embedded (no external
  links); `report.md`: the same in Markdown, next to the PNG files;
- `headline.csv` (and `confirmed_scores.csv|md` when confirmed): per arm, the IQM of the runs
  the headline rests on with a 95% stratified-bootstrap interval and the IQM difference to its
  online family's HardCopy baseline with an interval; the runs are the confirmation runs
  (`confirm: K`), else those of pre-registered arms (one trial per arm, nothing
  selected), else each pairing's best search trial (labelled as biased by the selection);
- `pairing_matrix.csv|png`: online family (rows) x target family (columns) of the same numbers,
  HardCopy baselines on the diagonal;
- `aggregates.csv|png`: IQM, median, mean (and optimality gap on Atari) with intervals, rliable's
  conventions (`analysis.aggregate`); `reference_scores.csv` on Atari: random and human scores
  per game with their source; `profiles.csv`, `performance_profiles.png`: fraction of runs above
  tau with bands (human-normalised on Atari, raw return per environment elsewhere);
- `curves.csv`, `learning_curves.png`, `setting_curves.png`, `gap_curves.png`,
  `td_loss_curves.png`: mean by agent step with a bootstrap band over seeds, per arm (the
  headline's runs) and per KR/KL setting of each pairing (search runs);
- `final_scores.csv|md|png` (search, "selection"), `best_settings.csv`, `kr_kl.csv`,
  `kr_kl_heatmap.png`, `importances.csv|png`, `headline_runs.csv`, `trials.csv`; every table
  carries MLflow run ids.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

from analysis import plots
from analysis.aggregate import aggregate_intervals, implementation, performance_profile, tau_grid
from analysis.compare import method_text
from analysis.curves import curve_bands, setting_curves
from analysis.headline import (
    Headline,
    build_headline,
    headline_table,
    matrix_cells,
    pairing_matrix,
)
from analysis.load import StudyData, best_trials, load_curves, load_study_data, study_run
from analysis.stats import iqm, stratified_bootstrap_ci
from hetero_lr.page import Section, markdown_table, to_html, to_markdown
from hetero_lr.scores import (
    HUMAN_SCORES,
    MINATAR_RANDOM_SCORES,
    MINATAR_REFERENCE_SCORES,
    RANDOM_SCORES,
    atari_game,
    is_normalised,
    minatar_game,
    normalizer,
)
from hetero_lr.study.summary import common_scale, per_env_table, searched_params

__all__ = ["main", "markdown_table", "write_report"]


def final_scores_table(
    data: StudyData, trials: dict[str, int], *, reps: int = 50_000, confidence: float = 0.95
) -> pd.DataFrame:
    """IQM (with interval), mean and median of the run scores of each pairing's trial."""
    rows = []
    for pairing, number in sorted(trials.items()):
        runs = data.runs[(data.runs["trial"] == number) & (data.runs["status"] == "FINISHED")]
        tasks = [g["score"].dropna().to_numpy() for _, g in runs.groupby("env")]
        scores = np.concatenate(tasks) if tasks else np.array([])
        if not scores.size:
            continue
        if common_scale(sorted(set(runs["env"]))):
            estimate, low, high = stratified_bootstrap_ci(
                tasks, iqm, reps=reps, confidence=confidence
            )
        else:  # raw returns of several environments: no pooled statistic (method_text)
            estimate = low = high = float("nan")
        rows.append(
            {
                "pairing": pairing,
                "trial": number,
                "runs": scores.size,
                "envs": len(tasks),
                "iqm": estimate,
                "ci_low": low,
                "ci_high": high,
                "mean": float(np.mean(scores)),
                "median": float(np.median(scores)),
                "objective": float(data.trials.set_index("number").loc[number, "value"]),
                "mlflow_run_id": data.trials.set_index("number").loc[number, "mlflow_run_id"],
            }
        )
    columns = [
        "pairing",
        "trial",
        "runs",
        "envs",
        "iqm",
        "ci_low",
        "ci_high",
        "mean",
        "median",
        "objective",
        "mlflow_run_id",
    ]
    return pd.DataFrame(rows, columns=columns).sort_values("iqm", ascending=False)


def kr_kl_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Mean objective and trial count per (pairing, KR, KL) cell of complete Replicate trials."""
    columns = ["pairing", "kr_bin", "kl_bin", "mean", "trials"]
    if not {"kr", "kl"} <= set(trials.columns):
        return pd.DataFrame(columns=columns)
    done = trials[(trials["state"] == "COMPLETE") & (trials["rule"] == "replicate")].dropna(
        subset=["kr", "kl"]
    )
    if done.empty:
        return pd.DataFrame(columns=columns)
    done = done.assign(kr_bin=_labels(done["kr"]), kl_bin=_labels(done["kl"]))
    cells = done.groupby(["pairing", "kr_bin", "kl_bin"])["value"].agg(["mean", "count"])
    return cells.reset_index().rename(columns={"count": "trials"})[columns]


def _labels(values: pd.Series) -> pd.Series:
    """Exact values when an axis has at most 8, else power-of-two bins `1`, `2-3`, `4-7`."""
    if values.nunique() <= 8:
        return values.astype(int).astype(str)

    def label(v: float) -> str:
        low = 2 ** math.floor(math.log2(v))
        return "1" if low == 1 else f"{low}-{2 * low - 1}"

    return values.map(label)


def importances_table(study: optuna.Study) -> pd.Series:
    """fANOVA parameter importances over the parameters that varied (empty if too few).

    fANOVA (Hutter et al. 2014; Optuna's `FanovaImportanceEvaluator`, seeded, needs
    scikit-learn) rather than Optuna 5's default PED-ANOVA, which needs many more trials than a
    small RL study has to separate parameters.
    """
    params = searched_params(study)
    if not params:
        return pd.Series(dtype=float)
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    try:
        values = optuna.importance.get_param_importances(study, params=params, evaluator=evaluator)
    except (ValueError, RuntimeError):  # fewer complete trials than the evaluator needs
        return pd.Series(dtype=float)
    return pd.Series(values, name="importance")


def best_settings_table(data: StudyData) -> pd.DataFrame:
    """Per pairing (baselines included), its best complete trial's searched settings, objective
    and MLflow run id."""
    chosen = best_trials(data)
    if not chosen:
        return pd.DataFrame()
    params = [p for p in searched_params(data.study) if p != "pair"]
    trials = data.trials.set_index("number")
    rows = []
    for pairing, number in sorted(chosen.items()):
        row = trials.loc[number]
        rows.append(
            {
                "pairing": pairing,
                "trial": number,
                **{p: row.get(p) for p in params},
                "objective": float(row["value"]),
                "mlflow_run_id": row["mlflow_run_id"],
            }
        )
    return pd.DataFrame(rows)


DOPAMINE = (
    "Dopamine `dopamine/labs/atari_100k/normalization_utils.py` (Mnih et al. 2015, Extended"
    " Data Table 2; Wang et al. 2016)"
)
AGENT57 = "Badia et al. 2020 (Agent57), Table H.4"


def reference_scores_table(envs: Sequence[str]) -> pd.DataFrame:
    """Random and reference scores (the 0 and 1 of the normalised score) of each game among
    `envs` that has them, with sources (`hetero_lr.scores`)."""
    rows = []
    for env in sorted(set(envs)):
        game, minatar = atari_game(env), minatar_game(env)
        if game in HUMAN_SCORES:
            rows.append(
                {
                    "env": env,
                    "game": game,
                    "random": RANDOM_SCORES[game],
                    "reference": HUMAN_SCORES[game],
                    "random source": DOPAMINE,
                    "reference source": "human: "
                    + (AGENT57 if game in {"defender", "surround"} else DOPAMINE),
                }
            )
        elif minatar in MINATAR_REFERENCE_SCORES:
            rows.append(
                {
                    "env": env,
                    "game": minatar,
                    "random": MINATAR_RANDOM_SCORES[minatar],
                    "reference": MINATAR_REFERENCE_SCORES[minatar],
                    "random source": "uniform random policy, 1,000 episodes "
                    "(python -m analysis.random_scores)",
                    "reference source": "DQN at 5M frames, MinAtar README's learning curves "
                    "(Young & Tian 2019)",
                }
            )
    return pd.DataFrame(rows)


def aggregates_table(
    headline: Headline, *, atari: bool, reps: int = 50_000, confidence: float = 0.95
) -> pd.DataFrame:
    """Per arm: IQM, median, mean (and optimality gap on Atari) with stratified-bootstrap
    intervals (`analysis.aggregate`). Columns: arm, metric, estimate, low, high, runs."""
    metrics = ("iqm", "median", "mean", "optimality_gap") if atari else ("iqm", "median", "mean")
    rows = []
    for arm, record in sorted(headline.records.items()):
        tasks = [s for s in record["scores"].values() if s]
        if not tasks or not common_scale([e for e, s in record["scores"].items() if s]):
            continue
        values = aggregate_intervals(tasks, metrics=metrics, reps=reps, confidence=confidence)
        for metric, (estimate, low, high) in values.items():
            rows.append(
                {
                    "arm": arm,
                    "metric": metric,
                    "estimate": estimate,
                    "low": low,
                    "high": high,
                    "runs": sum(map(len, tasks)),
                    "mlflow_run_id": record["mlflow_run_id"],
                }
            )
    return pd.DataFrame(rows)


def profiles_table(
    headline: Headline, *, atari: bool, reps: int = 2_000, confidence: float = 0.95
) -> pd.DataFrame:
    """Performance profiles: per arm, the fraction of runs scoring above tau with a band.

    On Atari one profile over all games (human-normalised scores are comparable across games);
    elsewhere one per environment, on raw returns. Columns: arm, task, tau, fraction, low,
    high.
    """
    by_task: dict[str, dict[str, list[list[float]]]] = {}
    for arm, record in headline.records.items():
        for env, scores in record["scores"].items():
            if scores:
                task = "all games" if atari else env
                by_task.setdefault(task, {}).setdefault(arm, []).append(scores)
    frames = []
    for task, arms in sorted(by_task.items()):
        taus = tau_grid([s for tasks in arms.values() for t in tasks for s in t])
        for arm, tasks in sorted(arms.items()):
            profile = performance_profile(tasks, taus, reps=reps, confidence=confidence)
            frames.append(profile.assign(arm=arm, task=task))
    if not frames:
        return pd.DataFrame(columns=["arm", "task", "tau", "fraction", "low", "high"])
    return pd.concat(frames, ignore_index=True)[["arm", "task", "tau", "fraction", "low", "high"]]


def env_scores_table(headline: Headline) -> pd.DataFrame:
    """Per arm and environment: runs, mean and median score (human-normalised on Atari)."""
    rows = [
        {
            "arm": arm,
            "env": env,
            "runs": len(scores),
            "mean": float(np.mean(scores)),
            "median": float(np.median(scores)),
            "mlflow_run_id": record["mlflow_run_id"],
        }
        for arm, record in sorted(headline.records.items())
        for env, scores in sorted(record["scores"].items())
        if scores
    ]
    return pd.DataFrame(rows)


@dataclass
class Written:
    """What `write_report` wrote."""

    paths: list[Path]
    html: Path
    headline: Headline


class _Writer:
    """Saves tables and figures into the report folder and remembers the paths."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.paths: list[Path] = []

    def table(self, name: str, table: pd.DataFrame | pd.Series) -> None:
        table.to_csv(self.out / name, index=isinstance(table, pd.Series))
        self.paths.append(self.out / name)

    def figure(self, name: str, fig: object) -> str:
        fig.savefig(self.out / name, dpi=110)  # type: ignore[attr-defined]
        plots.plt.close(fig)  # type: ignore[arg-type]
        self.paths.append(self.out / name)
        return name

    def text(self, name: str, text: str) -> Path:
        (self.out / name).write_text(text)
        self.paths.append(self.out / name)
        return self.out / name


def write_report(
    data: StudyData, out: str | Path, *, reps: int = 50_000, confidence: float = 0.95
) -> Written:
    """Write every table and figure, `report.md` and the self-contained `report.html`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    w = _Writer(out)
    unit = _score_unit(data)
    atari = unit != "raw return"  # normalised per game: one scale, pooled aggregates
    headline = build_headline(data)
    w.table("trials.csv", data.trials)
    sections = [_overview(data, headline, unit)]
    sections += _headline_sections(w, headline, unit=unit, confidence=confidence)
    sections += _aggregate_sections(
        w, data, headline, unit=unit, atari=atari, reps=reps, confidence=confidence
    )
    sections += _curve_sections(w, data, headline, unit=unit, confidence=confidence)
    sections += _search_sections(w, data, headline, unit=unit, reps=reps, confidence=confidence)
    title = f"Study `{data.study.study_name}`"
    w.text("report.md", to_markdown(title, sections))
    html = w.text("report.html", to_html(title, sections, out))
    return Written(w.paths, html, headline)


def _overview(data: StudyData, headline: Headline, unit: str) -> Section:
    run_id = study_run(data)
    text = [data.study.user_attrs.get("description", "") or data.study.study_name]
    text.append(_counts(data.trials) + ".")
    text.append(f"Headline: **{headline.title(unit)}**. {headline.note}")
    if run_id:
        text.append(f"MLflow study run `{run_id}`; every table names the runs behind it.")
    command = data.study.user_attrs.get("command")
    if command:
        text.append(f"Made by `{command}`.")
    return Section("Study", text)


def _headline_sections(
    w: _Writer, headline: Headline, *, unit: str, confidence: float
) -> list[Section]:
    table = headline_table(headline, confidence=confidence)
    if table.empty:
        return [Section(headline.title(unit), ["No complete arm yet."])]
    w.table("headline.csv", table)
    w.table("headline_runs.csv", headline.runs)
    if headline.confirmed:
        w.table("confirmed_scores.csv", table)
        w.text("confirmed_scores.md", markdown_table(table) + "\n")
    envs = sorted({env for r in headline.records.values() for env in r["scores"]})
    per_env = pd.DataFrame(per_env_table(headline.records, confidence=confidence))
    w.table("headline_per_env.csv", per_env)
    head = Section(
        headline.title(unit),
        [headline.note, *method_text(envs, confidence), *verdicts(table, confidence)],
        [("", table), ("Per environment", per_env)],
    )
    matrix = pairing_matrix(table)
    w.table("pairing_matrix.csv", matrix)
    fig = w.figure("pairing_matrix.png", plots.pairing_matrix(matrix, unit=unit))
    grid = Section(
        "Pairing matrix",
        [
            "Rows: online family; columns: target family. Each cell: IQM [95% CI] of its arm"
            " (LR: Lookahead-Replicate, HardCopy: the baseline on the diagonal) and, for LR,"
            " the difference to the online family's HardCopy baseline [95% CI]."
            f" Runs: {headline.kind}."
        ],
        [("", matrix_cells(matrix)), ("Cells with their run ids", matrix)],
        [fig],
    )
    runs = Section(
        "Runs behind the headline",
        [f"One row per run (environment x seed) of each arm; `score` in {unit}."],
        [("", headline.runs)],
        folded=True,
    )
    return [head, grid, runs]


def verdicts(table: pd.DataFrame, confidence: float = 0.95) -> list[str]:
    """One sentence per arm compared with its baseline: better, worse or not distinguishable,
    by whether the difference interval excludes 0."""
    lines = []
    for row in table.to_dict("records"):
        if pd.isna(row.get("diff")):
            continue
        low, high = row["diff_low"], row["diff_high"]
        if pd.isna(low):
            word = "no interval (one run per environment)"
        elif low > 0:
            word = "better than"
        elif high < 0:
            word = "worse than"
        else:
            word = "not distinguishable from"
        lines.append(
            f"**{row['arm']}** {word} {row['baseline']} over {row['runs']} runs: "
            f"{row['diff']:+.3g} [{low:+.3g}, {high:+.3g}] ({row['design']}, "
            f"{confidence:.0%}), p {row['p_value']:.2g}."
        )
    return lines


def _aggregate_sections(
    w: _Writer,
    data: StudyData,
    headline: Headline,
    *,
    unit: str,
    atari: bool,
    reps: int,
    confidence: float,
) -> list[Section]:
    if not headline.records:
        return []
    sections = []
    if atari:
        refs = reference_scores_table(data.runs["env"])
        w.table("reference_scores.csv", refs)
        sections.append(
            Section(
                "Human-normalised scores",
                [
                    "score = (return - random) / (human - random) per game (`hetero_lr.scores`):"
                    " 0 is a uniformly random policy, 1 the human reference."
                ],
                [("Reference scores", refs), ("Per game", env_scores_table(headline))],
            )
        )
    else:
        sections.append(
            Section(f"Per environment ({unit})", [], [("", env_scores_table(headline))])
        )
    table = aggregates_table(headline, atari=atari, reps=reps, confidence=confidence)
    if not table.empty:
        w.table("aggregates.csv", table)
        fig = w.figure("aggregates.png", plots.aggregate_intervals(table, unit=unit))
        gap = " and optimality gap (1 minus the mean score clipped at 1)" if atari else ""
        arms = {arm: record["scores"].values() for arm, record in headline.records.items()}
        sections.append(
            Section(
                "Aggregate metrics",
                [
                    f"Following rliable (Agarwal et al. 2021): IQM over all runs, median and mean"
                    f" of per-{'game' if atari else 'environment'} means{gap}; {confidence:.0%}"
                    f" percentile-bootstrap intervals from {reps:,} replicates resampling runs"
                    " within each task.",
                    f"intervals: {implementation(arms)}",
                ],
                [("", table)],
                [fig],
            )
        )
    profiles = profiles_table(headline, atari=atari, confidence=confidence)
    if not profiles.empty:
        w.table("profiles.csv", profiles)
        fig = w.figure(
            "performance_profiles.png", plots.performance_profiles(profiles, xlabel=unit)
        )
        where = "all games pooled" if atari else "one panel per environment, raw returns"
        sections.append(
            Section(
                "Performance profiles",
                [
                    f"Fraction of runs scoring above tau ({where}) with a {confidence:.0%}"
                    " stratified-bootstrap band (rliable's score distribution, 2,000 replicates)."
                ],
                figures=[fig],
            )
        )
    return sections


CURVES = [
    ("learning_curves.png", "eval/return_mean", "mean {unit}", False, "Learning curves"),
    ("gap_curves.png", "gap/function", "function gap (online vs target)", True, "Function gap"),
    ("td_loss_curves.png", "loss/td", "TD loss", True, "TD loss"),
]
"""(file, MLflow metric, y label, log scale, title) of each per-arm curve figure."""


def _curve_sections(
    w: _Writer, data: StudyData, headline: Headline, *, unit: str, confidence: float
) -> list[Section]:
    sections, bands_all = [], []
    what = {
        "confirmed": "confirmation runs",
        "pre-registered": "the pre-registered arms' runs",
        "search": "search runs of each pairing's best trial",
    }[headline.kind]
    for name, key, ylabel, log, title in CURVES:
        curves = load_curves(data, headline.trials, key=key, confirmed=headline.confirmed)
        # Games score on different scales: one panel per environment when there are several.
        per_env = curves["env"].nunique() > 1 if not curves.empty else False
        by, panel = (["env", "pairing"], "env") if per_env else ("pairing", None)
        bands = curve_bands(curves, by=by, confidence=confidence)
        if bands.empty:
            continue
        bands_all.append(bands.assign(metric=key, figure=name))
        fig = w.figure(
            name,
            plots.learning_curves(bands, ylabel=ylabel.format(unit=unit), log=log, panel=panel),
        )
        band = f"mean over {what} with a {confidence:.0%} bootstrap band over seeds"
        band += ", one panel per environment" if per_env else ""
        seeds = bands.groupby("pairing")["seeds"].max()
        counts = ", ".join(f"{s}: {n} seeds" for s, n in seeds.items())
        sections.append(Section(f"{title} ({band})", [f"Per arm: {counts}."], figures=[fig]))
    per_setting = setting_curves(data)
    if not per_setting.empty and per_setting.groupby("pairing")["setting"].nunique().max() > 1:
        bands = curve_bands(per_setting, by=["pairing", "setting"], confidence=confidence)
        bands_all.append(bands.assign(metric="eval/return_mean", figure="setting_curves.png"))
        fig = w.figure(
            "setting_curves.png",
            plots.learning_curves(bands, ylabel=f"mean {unit}", panel="pairing"),
        )
        sections.append(
            Section(
                "Learning curves per KR/KL setting (search runs)",
                [
                    "One panel per pairing, one line per KR x KL setting of its complete"
                    f" Replicate trials (up to 8, best first), mean over the search's seeds with"
                    f" a {confidence:.0%} bootstrap band."
                ],
                figures=[fig],
            )
        )
    if bands_all:
        w.table("curves.csv", pd.concat(bands_all, ignore_index=True))
    return sections


def _search_sections(
    w: _Writer, data: StudyData, headline: Headline, *, unit: str, reps: int, confidence: float
) -> list[Section]:
    sections = []
    settings = best_settings_table(data)
    if not settings.empty:
        w.table("best_settings.csv", settings)
        sections.append(Section("Best settings per pairing (search)", [], [("", settings)]))
    scores = final_scores_table(data, best_trials(data), reps=reps, confidence=confidence)
    w.table("final_scores.csv", scores)
    w.text("final_scores.md", markdown_table(scores) + "\n")
    if not scores.empty:
        fig = w.figure("final_scores.png", plots.final_scores(scores, ylabel=unit))
        label = "" if headline.kind == "search" else "selection: "
        sections.append(
            Section(
                f"Final scores ({label}{unit}; best complete trial per pairing, search seeds)",
                ["Biased upward by the choice of the best trial (the winner's curse)."]
                if headline.kind != "pre-registered"
                else ["One trial per arm: these are the headline's own runs."],
                [("", scores)],
                [fig],
            )
        )
    cells = kr_kl_table(data.trials)
    w.table("kr_kl.csv", cells)
    if not cells.empty:
        fig = w.figure("kr_kl_heatmap.png", plots.kr_kl_heatmap(cells))
        sections.append(
            Section(
                "KR x KL",
                [
                    "Mean objective of complete Replicate trials per cell, trial count as n"
                    " (exact values up to 8 per axis, else power-of-two bins)."
                ],
                figures=[fig],
            )
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's experimental-feature warnings
        importance = importances_table(data.study)
    w.table("importances.csv", importance)
    if not importance.empty:
        fig = w.figure("importances.png", plots.importances(importance))
        sections.append(
            Section(
                "Parameter importances",
                ["fANOVA (Optuna's `FanovaImportanceEvaluator`, seeded)."],
                [("", importance.rename_axis("parameter").reset_index())],
                [fig],
            )
        )
    columns = [c for c in data.trials.columns if c != "rule"]
    sections.append(Section("All trials", [], [("", data.trials[columns])], folded=True))
    return sections


def log_report(data: StudyData, written: Written) -> str | None:
    """Log the report's files as artifacts (`report/`) of the study's MLflow run; its id, or
    None when the study has no study run."""
    run_id = study_run(data)
    if run_id is None:
        return None
    for path in written.paths:
        data.client.log_artifact(run_id, str(path), "report")
    return run_id


def _score_unit(data: StudyData) -> str:
    envs = sorted(set(data.runs["env"]))
    if envs and all(e.startswith("ALE/") for e in envs) and common_scale(envs):
        return "human-normalised score"
    if envs and all(is_normalised(normalizer(e)[1]) for e in envs):
        return "normalised score"
    return "raw return"


def _counts(trials: pd.DataFrame) -> str:
    counts = trials["state"].value_counts()
    return "Trials: " + ", ".join(f"{n.lower()} {c}" for n, c in counts.items())


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m analysis.report`; returns the exit code (2 on bad input)."""
    parser = argparse.ArgumentParser(
        prog="python -m analysis.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--study", help="study name (may be left out if the storage holds one)")
    parser.add_argument("--results", default="results", help="the study's results folder")
    parser.add_argument("--storage", help="Optuna storage URL (default: RESULTS/optuna.journal)")
    parser.add_argument("--tracking-uri", help="MLflow URI (default: sqlite:///RESULTS/mlflow.db)")
    parser.add_argument("--out", default="report", help="output folder (default: report)")
    parser.add_argument("--reps", type=int, default=50_000, help="bootstrap replicates")
    parser.add_argument("--confidence", type=float, default=0.95, help="interval size")
    args = parser.parse_args(argv)
    try:
        data = load_study_data(
            args.results,
            study_name=args.study,
            storage=args.storage,
            tracking_uri=args.tracking_uri,
        )
    except ValueError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    written = write_report(data, args.out, reps=args.reps, confidence=args.confidence)
    print(f"report: {written.html} ({len(written.paths)} files in {Path(args.out)})")
    run_id = log_report(data, written)
    if run_id is None:
        print("not logged to MLflow: the study has no study run")
    else:
        run = data.client.get_run(run_id)
        print(
            f"logged to MLflow run {run_id} (experiment {run.info.experiment_id}): "
            f"{run.info.artifact_uri}/report/report.html; in the UI: "
            f"#/experiments/{run.info.experiment_id}/runs/{run_id}/artifacts"
            "?workflowType=machine_learning"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
