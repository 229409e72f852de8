"""Study report: tables (CSV + Markdown) and figures (PNG) from a study's results.

    python -m analysis.report --results results/ --study impala:nature__default --out report/

Writes to `--out`:
- `confirmed_scores.csv|md` (the headline, when the study ran `--confirm K`): per arm, the IQM
  of its confirmation runs (fresh seeds no search run used) with a 95% stratified-bootstrap
  interval, its search score as `selection`, and the IQM difference to its online family's
  HardCopy baseline with an interval; the MLflow run id of each arm's confirmation;
- `final_scores.csv|md`, `final_scores.png` ("selection"): per pairing (its best complete trial; the
  HardCopy baselines are pairings too), the IQM of run scores with a 95% stratified-bootstrap
  interval over seeds (and games), plus mean and median (rliable's method, `analysis.stats`);
- `learning_curves.png`, `gap_curves.png`, `td_loss_curves.png`: evaluation score, function gap
  (mean over states and actions of (Q_target - Q_online)^2) and TD loss by agent step, mean
  with a bootstrap band over runs, from the confirmation runs where the study has them;
- `kr_kl.csv`, `kr_kl_heatmap.png`: the mean objective per KR x KL cell of complete Replicate
  trials (exact values up to 8 per axis, else power-of-two bins);
- `importances.csv|png`: Optuna's parameter importances;
- `trials.csv`: every trial; `report.md`: all of it on one page.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

from analysis import plots
from analysis.load import StudyData, best_trials, load_curves, load_study_data
from analysis.stats import iqm, stratified_bootstrap_ci
from hetero_lr.study.summary import confirmation_table, confirmed_winner, searched_params


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
        estimate, low, high = stratified_bootstrap_ci(tasks, iqm, reps=reps, confidence=confidence)
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
    ]
    return pd.DataFrame(rows, columns=columns).sort_values("iqm", ascending=False)


def confirmed_table(data: StudyData, *, confidence: float = 0.95) -> pd.DataFrame:
    """The confirmation runs' table (`hetero_lr.study.summary.confirmation_table`), empty
    when the study ran no confirmation."""
    records = data.study.user_attrs.get("confirmation", {})
    rows = confirmation_table(records, confidence=confidence)
    for row in rows:
        row["mlflow_run_id"] = records[row["arm"]]["mlflow_run_id"]
    return pd.DataFrame(rows).sort_values("iqm", ascending=False) if rows else pd.DataFrame()


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


def write_report(
    data: StudyData, out: str | Path, *, reps: int = 50_000, confidence: float = 0.95
) -> list[Path]:
    """Write every table and figure of the report to `out`; returns the written paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    unit = _score_unit(data)

    def save(name: str, thing: pd.DataFrame | pd.Series | object) -> None:
        path = out / name
        if isinstance(thing, pd.DataFrame | pd.Series):
            thing.to_csv(path, index=isinstance(thing, pd.Series))
        else:  # a matplotlib figure
            thing.savefig(path, dpi=120)
            plots.plt.close(thing)
        written.append(path)

    save("trials.csv", data.trials)
    chosen = best_trials(data)
    scores = final_scores_table(data, chosen, reps=reps, confidence=confidence)
    save("final_scores.csv", scores)
    sections = [f"# Study `{data.study.study_name}`", "", _counts(data.trials), ""]
    confirmed = confirmed_table(data, confidence=confidence)
    if not confirmed.empty:
        save("confirmed_scores.csv", confirmed)
        (out / "confirmed_scores.md").write_text(markdown_table(confirmed) + "\n")
        written.append(out / "confirmed_scores.md")
        winner, tied = confirmed_winner(confirmed.to_dict("records"))
        verdict = (
            f"Best: **{winner}**."
            if len(tied) == 1
            else f"No winner: {', '.join(tied)} tie (their {confidence:.0%} intervals overlap)."
        )
        sections += [
            f"## Confirmed scores ({unit}; fresh seeds, the headline)",
            "",
            "Each pairing's best trial and each baseline, run again on seeds no search run used;"
            " `selection` is the search score that chose it (biased upward by the choice).",
            "",
            markdown_table(confirmed),
            "",
            verdict,
            "",
        ]
    if not scores.empty:
        save("final_scores.png", plots.final_scores(scores, ylabel=unit))
        selection = "selection: " if not confirmed.empty else ""
        sections += [
            f"## Final scores ({selection}{unit}; best complete trial per pairing, search seeds)",
            "",
            markdown_table(scores),
            "",
            "![final scores](final_scores.png)",
            "",
        ]
    # Curves of the confirmation runs where there are some (unbiased), else the search's.
    confirmed_trials = [int(t) for t in confirmed["trial"]] if not confirmed.empty else []
    source = (
        {"trials": confirmed_trials, "confirmed": True, "what": "confirmation runs"}
        if confirmed_trials
        else {"trials": list(chosen.values()), "confirmed": False, "what": "search runs"}
    )
    what = source.pop("what")
    figures = [
        ("learning_curves.png", "eval/return_mean", f"mean {unit}", False, "Learning curves"),
        ("gap_curves.png", "gap/function", "function gap (online vs target)", True, "Function gap"),
        ("td_loss_curves.png", "loss/td", "TD loss", True, "TD loss"),
    ]
    for name, key, ylabel, log, title in figures:
        curves = load_curves(data, key=key, **source)
        if curves.empty:
            continue
        save(name, plots.learning_curves(curves, ylabel=ylabel, confidence=confidence, log=log))
        band = f"mean over {what} with a {confidence:.0%} bootstrap band"
        sections += [f"## {title} ({band})", "", f"![{title}]({name})", ""]
    cells = kr_kl_table(data.trials)
    save("kr_kl.csv", cells)
    if not cells.empty:
        save("kr_kl_heatmap.png", plots.kr_kl_heatmap(cells))
        sections += ["## KR x KL", "", "![KR x KL](kr_kl_heatmap.png)", ""]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's experimental-feature warnings
        importance = importances_table(data.study)
    save("importances.csv", importance)
    if not importance.empty:
        save("importances.png", plots.importances(importance))
        sections += [
            "## Parameter importances",
            "",
            markdown_table(importance.rename_axis("parameter").reset_index()),
            "",
            "![importances](importances.png)",
            "",
        ]
    (out / "final_scores.md").write_text(markdown_table(scores) + "\n")
    (out / "report.md").write_text("\n".join(sections))
    written += [out / "final_scores.md", out / "report.md"]
    return written


def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (floats to 4 significant digits)."""

    def cell(value: object) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += [
        "| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)
    ]
    return "\n".join(lines)


def _score_unit(data: StudyData) -> str:
    envs = set(data.runs["env"])
    atari = bool(envs) and all(e.startswith("ALE/") for e in envs)
    return "human-normalised score" if atari else "raw return"


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
    parser.add_argument("--results", default="results", help="the study's results folder")
    parser.add_argument("--study", help="study name (needed if the storage holds several)")
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
    for path in write_report(data, args.out, reps=args.reps, confidence=args.confidence):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
