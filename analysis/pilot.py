"""Apply the pilot's pre-registered selection rule (`studies/minatar_ablation_pilot.yaml`).

    python -m analysis.pilot --results results/minatar_ablation \
        --study minatar_ablation_pilot --out docs/results/minatar_ablation/pilot

The rule, as the study file states it before the pilot ran:

1. A trial's score is the mean over its games of the normalised score (`hetero_lr.scores`) of
   each game's run (the mean of its last evaluations, as the objective counts it).
2. Eligible: the trial completed on every game; the online net's largest logged mean |Q| stayed
   at or below r_max / (1 - gamma) on each; and the target replicates: over the last `window`
   agent steps, mean `loss/replicate_after` <= `ratio` x mean `loss/replicate_before` on each.
3. The eligible trial with the highest score wins; scores within `tie` of the best are tied,
   and the tie goes to the smaller KR, then the smaller target learning rate.
4. No eligible trial: the fallback setting (KR 100, target lr 1e-3).

Writes `pilot.csv` (one row per trial and game, with every quantity the rule reads) and
`selection.csv` (one row per trial: score, eligible, why not, selected).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.load import StudyData, load_study_data
from hetero_lr.envs import reward_scale
from hetero_lr.study.spec import recorded_config

FALLBACK = {"kr": 100, "target.lr": 1e-3}
"""DESIGN.md's reference point, run when no pilot setting meets the rule."""


def _history(data: StudyData, run_id: str, key: str) -> pd.Series:
    """A run's metric history as a Series indexed by agent step."""
    points = data.client.get_metric_history(run_id, key)
    return pd.Series({m.step: m.value for m in sorted(points, key=lambda m: m.step)}, dtype=float)


def pilot_table(data: StudyData, *, window: int = 25_000) -> pd.DataFrame:
    """Per trial and game: setting, state, raw and normalised score, the largest mean |Q| and
    its bound, and the replicate losses before and after over the last `window` steps."""
    trials = {t.number: t for t in data.study.get_trials(deepcopy=False)}
    rows = []
    for run in data.runs.itertuples():
        trial = trials[run.trial]
        config = recorded_config(data.study, trial)
        gamma = float(config.get("agent.gamma", 0.99))
        steps = int(config.get("steps", 0))
        q = _history(data, run.run_id, "q/online_abs_mean")
        before = _history(data, run.run_id, "loss/replicate_before")
        after = _history(data, run.run_id, "loss/replicate_after")
        late = steps - window
        rows.append(
            {
                "trial": run.trial,
                "kr": trial.params.get("kr"),
                "kl": trial.params.get("kl"),
                "target.lr": trial.params.get("target.lr"),
                "trial_state": trial.state.name,
                "env": run.env,
                "seed": run.seed,
                "status": run.status,
                "raw": run.raw,
                "score": run.score,
                "max_abs_q": q.max() if len(q) else np.nan,
                "q_bound": (reward_scale(run.env) or np.nan) / (1 - gamma),
                "replicate_before": before[before.index > late].mean(),
                "replicate_after": after[after.index > late].mean(),
            }
        )
    table = pd.DataFrame(rows).sort_values(["trial", "env"], ignore_index=True)
    table["replicate_ratio"] = table["replicate_after"] / table["replicate_before"]
    return table


def select(
    table: pd.DataFrame, *, ratio: float = 0.25, tie: float = 0.02
) -> tuple[pd.DataFrame, dict[str, float]]:
    """The rule applied: one row per trial, and the selected `{kr, target.lr}`."""
    rows = []
    for trial, runs in table.groupby("trial"):
        reasons = []
        if (runs["trial_state"] != "COMPLETE").any() or (runs["status"] != "FINISHED").any():
            reasons.append("did not complete")
        if (runs["max_abs_q"] > runs["q_bound"]).any() or runs["max_abs_q"].isna().any():
            reasons.append("mean |Q| above r_max / (1 - gamma)")
        if not (runs["replicate_after"] <= ratio * runs["replicate_before"]).all():
            reasons.append(f"replicate loss not below {ratio} x its value before")
        first = runs.iloc[0]
        rows.append(
            {
                "trial": trial,
                "kr": first["kr"],
                "target.lr": first["target.lr"],
                "score": runs["score"].mean(),
                "eligible": not reasons,
                "why_not": "; ".join(reasons),
            }
        )
    out = pd.DataFrame(rows)
    eligible = out[out["eligible"]]
    out["selected"] = False
    if eligible.empty:
        return out, dict(FALLBACK)
    best = eligible["score"].max()
    tied = eligible[eligible["score"] >= best - tie].sort_values(["kr", "target.lr"])
    chosen = tied.index[0]
    out.loc[chosen, "selected"] = True
    return out, {"kr": int(out.loc[chosen, "kr"]), "target.lr": float(out.loc[chosen, "target.lr"])}


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m analysis.pilot`; returns the exit code (2 on bad input)."""
    parser = argparse.ArgumentParser(
        prog="python -m analysis.pilot",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--results", default="results", help="the pilot's results folder")
    parser.add_argument("--study", default="minatar_ablation_pilot", help="the pilot study")
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)
    try:
        data = load_study_data(args.results, study_name=args.study)
    except ValueError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    table = pilot_table(data)
    selection, chosen = select(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "pilot.csv", index=False)
    selection.to_csv(out / "selection.csv", index=False)
    print(selection.to_string(index=False))
    how = "selected" if selection["selected"].any() else "no eligible setting: fallback"
    print(f"{how}: kr={chosen['kr']} target.lr={chosen['target.lr']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
