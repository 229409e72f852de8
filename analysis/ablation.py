"""The MinAtar ablation's pre-registered analysis (`docs/results/minatar_ablation/`).

    python -m analysis.ablation --results results/minatar_ablation \
        --out docs/results/minatar_ablation
    python -m analysis.ablation --runs docs/results/minatar_ablation/runs.csv --out DIR

The arms (`ARMS`) run per game as two studies, `minatar_ablation__GAME` (A, B, C) and
`minatar_ablation_regime__GAME` (D), every arm on the same five seeds. From the studies (or from
the committed runs table alone) this writes:

- `runs.csv`: one row per run: arm, env, seed, status, score (normalised), raw, and the run's
  largest mean |Q| and last function gap;
- `arms.csv`: per arm, the IQM of normalised scores over all its runs with rliable's interval;
- `contrasts.csv`: the primary analysis, each contrast (`CONTRASTS`) over the games where both
  arms ran: paired IQM difference with its interval, P(improvement), sign-flip p and Holm's
  adjustment over the three;
- `per_game.csv`: the same contrasts per game (secondary);
- `analysis.md`: the tables with what each column means.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.compare import method_text
from analysis.load import load_study_data
from analysis.pool import normalised
from hetero_lr.page import Section, to_markdown
from hetero_lr.stats import align, compare, stratified_bootstrap_ci
from hetero_lr.study.summary import with_holm

GAMES = ("Asterix", "Breakout", "Freeway", "Seaquest", "SpaceInvaders")
ARMS = {
    "A": ("minatar_ablation", "minatar:minatar@hardcopy", "HardCopy DQN, a copy per 1,000 updates"),
    "B": ("minatar_ablation", "minatar:minatar", "same-architecture LR, KL 1000"),
    "C": ("minatar_ablation", "minatar:mlp", "conv online / MLP target LR, B's settings"),
    "D": ("minatar_ablation_regime", "minatar:minatar", "same-architecture LR, KR/KL 1/4"),
}  # fmt: skip
"""Arm -> (study stem, pairing in that study, what it is)."""
CONTRASTS = (
    ("B", "A", "LR vs copying (the paper's claim)"),
    ("C", "B", "the target's architecture"),
    ("D", "B", "the regime: target updated every 4 steps"),
)
"""The primary analysis, fixed before the main study ran: (arm, against, what it measures)."""


def study_runs(results: str | Path) -> pd.DataFrame:
    """The runs of every arm of every game whose studies exist in `results`."""
    frames = []
    for game in GAMES:
        for arm, (stem, pairing, _) in ARMS.items():
            name = f"{stem}__{game.lower()}"
            try:
                data = load_study_data(results, study_name=name)
            except ValueError:
                continue  # this game's piece has not run yet
            runs = data.runs[data.runs["pairing"] == pairing]
            for run in runs.itertuples():
                q = data.client.get_metric_history(run.run_id, "q/online_abs_mean")
                gap = sorted(
                    data.client.get_metric_history(run.run_id, "gap/function"),
                    key=lambda m: m.step,
                )
                frames.append(
                    {
                        "arm": arm,
                        "env": run.env,
                        "seed": run.seed,
                        "status": run.status,
                        "score": run.score,
                        "raw": run.raw,
                        "scale": run.scale,
                        "max_abs_q": max((m.value for m in q), default=np.nan),
                        "last_gap": gap[-1].value if gap else np.nan,
                        "study": name,
                        "trial": run.trial,
                        "run_id": run.run_id,
                    }
                )
    if not frames:
        raise ValueError(f"no minatar_ablation study in {results}")
    return pd.DataFrame(frames).sort_values(["arm", "env", "seed"], ignore_index=True)


def _by_seed(runs: pd.DataFrame, arm: str, envs: Sequence[str]) -> dict[str, dict[int, float]]:
    done = runs[(runs["arm"] == arm) & (runs["status"] == "FINISHED") & runs["env"].isin(envs)]
    return {
        env: dict(zip(g["seed"].astype(int), g["score"], strict=True))
        for env, g in done.groupby("env")
    }


def arms_table(runs: pd.DataFrame, *, confidence: float = 0.95) -> pd.DataFrame:
    """Per arm: games, finished and failed runs, IQM [CI] of normalised scores."""
    rows = []
    for arm, (_, _, about) in ARMS.items():
        mine = runs[runs["arm"] == arm]
        done = mine[mine["status"] == "FINISHED"]
        row = {"arm": arm, "about": about, "games": done["env"].nunique(), "runs": len(done)}
        row["failed"] = int((mine["status"] != "FINISHED").sum())
        if len(done):
            tasks = [g["score"].to_numpy() for _, g in done.groupby("env")]
            iqm, low, high = stratified_bootstrap_ci(tasks, confidence=confidence)
            row |= {"iqm": iqm, "ci_low": low, "ci_high": high}
            if "max_abs_q" in mine:
                row["max_abs_q"] = mine["max_abs_q"].max()
        rows.append(row)
    return pd.DataFrame(rows)


def _contrast(runs: pd.DataFrame, arm: str, base: str, envs: Sequence[str], confidence: float):
    a, b = _by_seed(runs, arm, envs), _by_seed(runs, base, envs)
    shared = sorted(set(a) & set(b))
    if not shared:
        return None
    seeds = {e: set(a[e]) & set(b[e]) for e in shared}
    if all(len(s) >= 2 for s in seeds.values()):
        # A failed run leaves its partner without a pair: compare the seeds both finished.
        a = {e: {s: a[e][s] for s in seeds[e]} for e in shared}
        b = {e: {s: b[e][s] for s in seeds[e]} for e in shared}
    a_lists, b_lists, paired = align({e: a[e] for e in shared}, {e: b[e] for e in shared})
    return shared, compare(a_lists, b_lists, paired=paired, confidence=confidence)


def contrasts_table(
    runs: pd.DataFrame, *, per_game: bool = False, confidence: float = 0.95
) -> pd.DataFrame:
    """The `CONTRASTS` over all games both arms ran (or per game), Holm-adjusted per scope."""
    envs = sorted(runs["env"].unique())
    scopes = [[env] for env in envs] if per_game else [envs]
    rows = []
    for scope in scopes:
        block = []
        for arm, base, what in CONTRASTS:
            found = _contrast(runs, arm, base, scope, confidence)
            if found is None:
                continue
            games, result = found
            block.append(
                {
                    "contrast": f"{arm} - {base}",
                    "measures": what,
                    "games": len(games) if not per_game else games[0],
                    **result.as_dict(),
                }
            )
        rows += with_holm(block)
    table = pd.DataFrame(rows)
    if per_game and len(table):
        table = table.rename(columns={"games": "env"})
    return table


def write_analysis(runs: pd.DataFrame, out: str | Path, *, confidence: float = 0.95) -> None:
    """`runs.csv`, `arms.csv`, `contrasts.csv`, `per_game.csv` and `analysis.md` in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    arms = arms_table(runs, confidence=confidence)
    primary = contrasts_table(runs, confidence=confidence)
    per_game = contrasts_table(runs, per_game=True, confidence=confidence)
    runs.to_csv(out / "runs.csv", index=False)
    arms.round(4).to_csv(out / "arms.csv", index=False)
    primary.round(4).to_csv(out / "contrasts.csv", index=False)
    per_game.round(4).to_csv(out / "per_game.csv", index=False)
    envs = sorted(runs["env"].unique())
    text = [
        f"Games with runs: {', '.join(envs)} (of {len(GAMES)}).",
        *method_text(envs, confidence),
        "`difference` is IQM(arm) - IQM(against) on normalised scores; `design` paired: seed "
        "indices resampled jointly within each game; `p_holm`: Holm over the three contrasts.",
    ]
    sections = [
        Section("Arms", text, tables=[("", arms.round(3))]),
        Section("Primary contrasts", tables=[("", primary.round(3))]),
        Section("Per game (secondary)", tables=[("", per_game.round(3))]),
    ]
    (out / "analysis.md").write_text(to_markdown("MinAtar ablation", sections))


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m analysis.ablation`; returns the exit code (2 on bad input)."""
    parser = argparse.ArgumentParser(
        prog="python -m analysis.ablation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--results", help="the studies' results folder")
    source.add_argument("--runs", help="a runs.csv written before (no MLflow needed)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--confidence", type=float, default=0.95)
    args = parser.parse_args(argv)
    try:
        if args.runs:
            if not Path(args.runs).is_file():
                raise ValueError(f"--runs {args.runs}: no such file")
            runs = normalised(pd.read_csv(args.runs))
        else:
            runs = study_runs(args.results)
    except ValueError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    write_analysis(runs, args.out, confidence=args.confidence)
    print(pd.read_csv(Path(args.out) / "contrasts.csv").to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
