"""The report's headline: which runs it rests on, its table and the pairing matrix.

Three sources, in order of preference, all as records in the shape
`hetero_lr.study.summary.confirmation_table` takes
(`{arm: {"trial", "selection", "seeds", "scores": {env: [score per seed]}, "failed",
"mlflow_run_id"}}`), so one code path makes the headline:

- **confirmed**: the study ran `confirm: K`; each arm's chosen trial rerun on fresh seeds
  (the study's `confirmation` user attribute);
- **pre-registered**: no confirmation, but every arm (pairing and baseline) ran exactly one
  trial (a retry after a crash counts with the trial it resumes), so nothing was selected and
  those trials' own runs carry no winner's curse; an arm whose trial failed (e.g. diverged) is
  listed with its reason, without a score;
- **search**: otherwise, each pairing's best complete trial on the search's seeds, biased upward
  by the choice (the winner's curse) and labelled as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import optuna
import pandas as pd

from analysis.load import StudyData, best_trials
from hetero_lr.study.summary import confirmation_table

Kind = Literal["confirmed", "pre-registered", "search"]

TITLES: dict[str, str] = {
    "confirmed": "Confirmed scores ({unit}; fresh seeds, the headline)",
    "pre-registered": "Pre-registered arms: no selection, so no winner's curse ({unit})",
    "search": "Search scores ({unit}; selection: best trial per pairing, biased upward)",
}
NOTES: dict[str, str] = {
    "confirmed": "Each pairing's best trial and each baseline, run again on seeds no search run"
    " used; `selection` is the search score that chose it (biased upward by the choice).",
    "pre-registered": "The study fixed one setting per arm before it ran and every arm ran"
    " exactly one trial: nothing was selected, so these trials' own runs are the headline"
    " (pre-registered arms: no selection, so no winner's curse).",
    "search": "No confirmation runs: each pairing's best complete trial, scored on the same"
    " seeds that chose it, so its score is biased upward (the winner's curse). Rerun with"
    " `confirm: K` for a headline.",
}


@dataclass
class Headline:
    """The arms the report leads with and the runs behind them."""

    kind: Kind
    records: dict[str, dict[str, Any]]
    """Arm label -> record, as `confirmation_table` takes them."""
    runs: pd.DataFrame
    """Every run behind the records: arm, trial, env, seed, score, run_id."""

    @property
    def confirmed(self) -> bool:
        """Whether the runs are confirmation runs (else search runs)."""
        return self.kind == "confirmed"

    @property
    def trials(self) -> list[int]:
        """The trial number of each arm."""
        return sorted({int(r["trial"]) for r in self.records.values()})

    def title(self, unit: str) -> str:
        """Section title, naming the score's unit."""
        return TITLES[self.kind].format(unit=unit)

    @property
    def note(self) -> str:
        """What the numbers are, in a sentence or two, and the arms that failed."""
        failed = [
            f"{arm} (trial {r['trial']}: {'; '.join(r['failed'])})"
            for arm, r in sorted(self.records.items())
            if r["failed"] and not any(r["scores"].values())
        ]
        return NOTES[self.kind] + (f" Failed, no score: {', '.join(failed)}." if failed else "")


def build_headline(data: StudyData) -> Headline:
    """The headline records: confirmation, else pre-registered arms, else the search's best."""
    records = data.study.user_attrs.get("confirmation") or {}
    if records:
        return Headline("confirmed", records, _headline_runs(data.confirm_runs, records))
    single = preregistered_trials(data)
    kind: Kind = "pre-registered" if single else "search"
    records = trial_records(data, single or best_trials(data))
    return Headline(kind, records, _headline_runs(data.runs, records))


def study_arms(study: optuna.Study) -> set[str]:
    """Every arm label of the study: its pairings (settings) and every trial's arm."""
    arms = set(study.user_attrs.get("settings", {}).get("pairings", []))
    for t in study.get_trials(deepcopy=False):
        label = t.user_attrs.get("pairing") or t.user_attrs.get("baseline")
        if label:
            arms.add(label)
    return arms


def preregistered_trials(data: StudyData, *, all_failed: bool = False) -> dict[str, int]:
    """`{arm: trial}` when every arm ran exactly one trial to its end (nothing selected), else
    `{}`. A trial retried after its worker died is replaced by its retry; a trial still
    running or waiting makes the study unfinished (`{}`). A study whose every arm failed has
    nothing to lead a report with (`{}`) unless `all_failed`."""
    arms = study_arms(data.study)
    trials = data.study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history") or []}
    final: dict[str, list[optuna.trial.FrozenTrial]] = {}
    for t in trials:
        if t.number not in retried:
            arm = t.user_attrs.get("pairing") or t.user_attrs.get("baseline")
            final.setdefault(arm, []).append(t)
    if not arms or any(len(final.get(arm, [])) != 1 for arm in arms):
        return {}
    chosen = {arm: final[arm][0] for arm in arms}
    ended = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)
    if any(t.state not in ended for t in chosen.values()):
        return {}
    if not all_failed and not any(
        t.state == optuna.trial.TrialState.COMPLETE for t in chosen.values()
    ):
        return {}
    return {arm: t.number for arm, t in chosen.items()}


def trial_records(data: StudyData, trials: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Records (`confirmation_table`'s shape) of complete trials' own runs.

    Scores come from the trial's finished seed runs in MLflow (`StudyData.runs`: normalised per
    environment), keyed by seed so that arms on the same seeds compare pair by pair.
    """
    by_number = {t.number: t for t in data.study.get_trials(deepcopy=False)}
    records = {}
    for arm, number in sorted(trials.items()):
        trial = by_number[number]
        seeds = list(trial.user_attrs.get("run_seeds") or [])
        runs = data.runs[(data.runs["trial"] == number) & (data.runs["status"] == "FINISHED")]
        by_seed = {
            env: dict(zip(g["seed"].astype(int), g["score"].astype(float), strict=True))
            for env, g in runs.dropna(subset=["score"]).groupby("env")
        }
        per_env = {env: [v[s] for s in sorted(v)] for env, v in by_seed.items()}
        failed = trial.state == optuna.trial.TrialState.FAIL
        records[arm] = {
            "trial": number,
            "selection": trial.value,
            "seeds": seeds,
            "scores": {} if failed else per_env,
            "by_seed": {} if failed else by_seed,
            "failed": [trial.user_attrs.get("end_reason", "failed")] if failed else [],
            "mlflow_run_id": trial.user_attrs.get("mlflow_run_id", ""),
        }
    return records


def _headline_runs(table: pd.DataFrame, records: dict[str, dict[str, Any]]) -> pd.DataFrame:
    keys = {(arm, int(r["trial"])) for arm, r in records.items()}
    mask = [(p, int(t)) in keys for p, t in zip(table["pairing"], table["trial"], strict=True)]
    runs = table[np.asarray(mask, dtype=bool)] if len(table) else table
    runs = runs.rename(columns={"pairing": "arm"})
    return runs[["arm", "trial", "env", "seed", "status", "score", "run_id"]].sort_values(
        ["arm", "env", "seed"]
    )


def headline_table(headline: Headline, *, confidence: float = 0.95) -> pd.DataFrame:
    """`confirmation_table` of the headline's records, with each arm's MLflow run id.

    For pre-registered arms the search score is the same runs' mean, so it is called
    `objective` rather than `selection`.
    """
    rows = confirmation_table(headline.records, confidence=confidence)
    for row in rows:
        row["mlflow_run_id"] = headline.records[row["arm"]]["mlflow_run_id"]
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    if headline.kind != "confirmed":
        table = table.rename(columns={"selection": "objective"})
    return table.sort_values("iqm", ascending=False, ignore_index=True)


def split_arm(label: str) -> tuple[str, str, str]:
    """`online:target[@rule]` -> (online, target, rule)."""
    pair, _, rule = label.partition("@")
    online, _, target = pair.partition(":")
    return online, target, rule or "replicate"


MATRIX_COLUMNS = [
    "online",
    "target",
    "arm",
    "rule",
    "trial",
    "runs",
    "iqm",
    "ci_low",
    "ci_high",
    "baseline",
    "diff",
    "diff_low",
    "diff_high",
    "design",
    "p_value",
    "mlflow_run_id",
]


def pairing_matrix(table: pd.DataFrame) -> pd.DataFrame:
    """Long form of the online x target matrix: one row per arm of a `headline_table`.

    A baseline `f:f@hardcopy` sits on the diagonal (online f, target f); a Replicate arm
    carries its IQM difference to its online family's HardCopy baseline, with an interval.
    """
    if table.empty:
        return pd.DataFrame(columns=MATRIX_COLUMNS)
    rows = []
    for row in table.to_dict("records"):
        online, target, rule = split_arm(row["arm"])
        rows.append({"online": online, "target": target, "rule": rule, **row})
    matrix = pd.DataFrame(rows).reindex(columns=MATRIX_COLUMNS)
    return matrix.sort_values(["online", "target", "rule"], ignore_index=True)


def matrix_cells(matrix: pd.DataFrame) -> pd.DataFrame:
    """The matrix as text: rows online families, columns target families, each cell its arms'
    IQM [CI] and, for Replicate arms, the difference to the baseline [CI]."""
    families = sorted(set(matrix["online"]) | set(matrix["target"]))
    rows = sorted(set(matrix["online"]))
    cells = pd.DataFrame("", index=pd.Index(rows, name="online \\ target"), columns=families)
    for (online, target), group in matrix.groupby(["online", "target"]):
        cells.loc[online, target] = "; ".join(cell_text(r) for r in group.to_dict("records"))
    return cells


def cell_text(row: dict[str, Any]) -> str:
    """`HardCopy 100 [98, 102]` or `LR 61 [60, 62], diff -39 [-42, -36]`."""
    name = {"replicate": "LR", "hardcopy": "HardCopy", "polyak": "Polyak"}.get(
        row["rule"], row["rule"]
    )
    text = f"{name} {row['iqm']:.3g} [{row['ci_low']:.3g}, {row['ci_high']:.3g}]"
    if isinstance(row.get("diff"), float) and not np.isnan(row["diff"]):
        text += (
            f", diff {row['diff']:+.3g} [{row['diff_low']:+.3g}, {row['diff_high']:+.3g}] "
            f"({row['design']}, p {row['p_value']:.2g})"
        )
    return text
