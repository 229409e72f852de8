"""Pool seed sets: arms that ran again on fresh seeds, scored as one sample.

    python -m analysis.pool --runs A/headline_runs.csv --runs B/comparison_runs.csv \
        --arm minatar:minatar@hardcopy --arm minatar:mlp --out DIR

A confirmation on fresh seeds gives a second estimate of each arm; when both seed sets ran the
same settings, the best estimate uses every run. The inputs are the per-run tables that
`analysis.report` (`headline_runs.csv`) and `analysis.compare` (`comparison_runs.csv`) write:
one row per run with its arm, environment, seed, status and score. Per arm this gives the IQM
over all pooled runs with a 95% stratified-bootstrap interval (strata: environments, as
everywhere in `analysis`), the IQM of each input alone beside it (do the sets agree?), and each
Replicate arm's difference to its online family's HardCopy baseline with an interval.

The tables record no settings, and an arm label names only the pairing and the rule: in
`docs/results`, `minatar:minatar` ran target Adam 3e-4 in one seed set and 1e-4 in the other.
So the command pools only the arms named with `--arm`, and checking that their study files
agree except for the seed is the caller's part. It refuses what it can check: an arm missing
from an input, a run (arm, environment, seed) in two inputs (a repeat is not a new sample),
inputs over different environments.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis.compare import arm_line, method_text
from hetero_lr.page import Section, to_markdown
from hetero_lr.scores import normalizer
from hetero_lr.stats import iqm
from hetero_lr.study.summary import confirmation_table

COLUMNS = ("arm", "env", "seed", "status", "score")
"""What an input table must hold (more columns are kept in `pooled_runs.csv`)."""


def read_runs(paths: Sequence[str | Path]) -> pd.DataFrame:
    """The inputs' rows, with `source` (the folder each table is in, or its path if two
    tables share a folder name).

    Raises:
        ValueError: a file given twice, missing, not a CSV table or without the `COLUMNS`.
    """
    resolved = [Path(p).resolve() for p in paths]
    if len(set(resolved)) < len(resolved):
        twice = next(p for p, r in zip(paths, resolved, strict=True) if resolved.count(r) > 1)
        raise ValueError(f"--runs {twice} is given twice (pool disjoint seed sets)")
    names = [Path(p).parent.name or str(p) for p in paths]
    if len(set(names)) < len(names):
        names = [str(p) for p in paths]
    frames = []
    for path, name in zip(paths, names, strict=True):
        if not Path(path).is_file():
            raise ValueError(f"--runs {path}: no such file (a runs CSV of analysis.report/compare)")
        try:
            frame = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise ValueError(f"--runs {path}: not a CSV table ({str(err).strip()})") from None
        if missing := [c for c in COLUMNS if c not in frame]:
            raise ValueError(
                f"--runs {path}: no column {', '.join(missing)}; expected a runs table with "
                f"{', '.join(COLUMNS)} (headline_runs.csv or comparison_runs.csv)"
            )
        frames.append(normalised(frame).assign(source=name))
    return pd.concat(frames, ignore_index=True)


def normalised(runs: pd.DataFrame) -> pd.DataFrame:
    """`runs` with `score` on the normalised scale of `hetero_lr.scores` where it has
    references, `raw` the raw return, and `scale` naming the scale. A table without a `scale`
    column predates normalisation: its scores are raw returns."""
    if "scale" in runs:
        return runs
    runs = runs.assign(raw=runs["score"], scale="")
    for env in runs["env"].unique():
        transform, note = normalizer(env)
        rows = runs["env"] == env
        runs.loc[rows, "score"] = runs.loc[rows, "raw"].map(transform)
        runs.loc[rows, "scale"] = note
    return runs


def pool_runs(runs: pd.DataFrame, arms: Sequence[str]) -> pd.DataFrame:
    """The rows of `arms`, checked to be poolable (see the module docstring).

    Raises:
        ValueError: no arms, an arm missing from an input, a run in two inputs, or inputs
            over different environments.
    """
    if not arms:
        raise ValueError("name the arms to pool with --arm (the labels in the runs tables)")
    sources = list(dict.fromkeys(runs["source"]))
    for arm in arms:
        absent = [s for s in sources if not (runs["source"].eq(s) & runs["arm"].eq(arm)).any()]
        if absent:
            known = sorted(set(runs.loc[runs["source"] == absent[0], "arm"]))
            raise ValueError(
                f"arm {arm!r} is not in {', '.join(absent)}; "
                f"arms in {absent[0]}: {', '.join(known)}"
            )
    pooled = runs[runs["arm"].isin(arms)]
    envs = {s: sorted(set(pooled.loc[pooled["source"] == s, "env"])) for s in sources}
    if len({tuple(e) for e in envs.values()}) > 1:
        listed = "; ".join(f"{s}: {', '.join(e)}" for s, e in envs.items())
        raise ValueError(f"the inputs ran different environments ({listed})")
    repeated = pooled[pooled.duplicated(["arm", "env", "seed"], keep=False)]
    if len(repeated):
        first = repeated.iloc[0]
        same = (repeated[["arm", "env", "seed"]] == first[["arm", "env", "seed"]]).all(axis=1)
        where = ", ".join(dict.fromkeys(repeated.loc[same, "source"]))
        raise ValueError(
            f"run {first['arm']} {first['env']} seed {first['seed']} is in {where}: pool seed "
            "sets that are disjoint (a repeated run is not a new sample)"
        )
    return pooled.reset_index(drop=True)


def _records(runs: pd.DataFrame) -> dict[str, dict]:
    """Per arm, `confirmation_table`'s record: finished scores by environment, failed runs."""
    records = {}
    for arm, rows in runs.groupby("arm"):
        done = rows[rows["status"] == "FINISHED"]
        records[arm] = {
            "trial": "",
            "selection": float("nan"),
            "scores": {env: list(g["score"]) for env, g in done.groupby("env")},
            "by_seed": {
                env: dict(zip(g["seed"], g["score"], strict=True)) for env, g in done.groupby("env")
            },
            "failed": [
                f"{r.env} seed {r.seed}" for r in rows[rows["status"] != "FINISHED"].itertuples()
            ],
        }
    return records


def pooled_table(runs: pd.DataFrame, *, confidence: float = 0.95) -> pd.DataFrame:
    """Per arm: pooled IQM [CI], difference to its HardCopy baseline [CI], each input's IQM,
    and per-environment means; an arm with no finished run has `runs` 0 and no scores.

    Raises:
        ValueError: no pooled arm has a finished run.
    """
    records = _records(runs)
    table = pd.DataFrame(confirmation_table(records, confidence=confidence))
    if table.empty:
        raise ValueError("no finished run among the pooled arms")
    # An arm whose every run failed (e.g. diverged) is listed with its failures, unscored.
    unscored = [
        {"arm": arm, "runs": 0, "failed": len(r["failed"])}
        for arm, r in records.items()
        if arm not in set(table["arm"])
    ]
    if unscored:
        table = pd.concat([table, pd.DataFrame(unscored)], ignore_index=True)
    table = table.drop(columns=["trial", "selection"])
    done = runs[runs["status"] == "FINISHED"]
    for source, rows in done.groupby("source", sort=False):
        by_arm = rows.groupby("arm")["score"]
        table[f"iqm {source}"] = table["arm"].map(by_arm.apply(lambda s: float(iqm(s.to_numpy()))))
    for env, rows in done.groupby("env"):
        table[f"mean {env}"] = table["arm"].map(rows.groupby("arm")["score"].mean())
    return table.sort_values("iqm", ascending=False, ignore_index=True)


def write_pooled(runs: pd.DataFrame, out: str | Path, *, confidence: float = 0.95) -> pd.DataFrame:
    """`pooled.csv`, `pooled_runs.csv` and `pooled.md` in `out`; returns the table."""
    table = pooled_table(runs, confidence=confidence)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "pooled.csv", index=False)
    runs.to_csv(out / "pooled_runs.csv", index=False)
    text = [
        "Inputs: " + ", ".join(f"`{s}`" for s in dict.fromkeys(runs["source"])) + ".",
        "`iqm SOURCE`: the IQM of that input's runs alone (do the seed sets agree?).",
        *method_text(sorted(runs["env"].unique()), confidence),
    ]
    sections = [Section("Pooled arms", text, tables=[("", table)])]
    sections.append(Section("Runs", tables=[("", runs)], folded=True))
    (out / "pooled.md").write_text(to_markdown("Pooled seed sets", sections))
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m analysis.pool`; returns the exit code (2 on bad input)."""
    parser = argparse.ArgumentParser(
        prog="python -m analysis.pool",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--runs", action="append", required=True, help="a runs CSV (repeat for each seed set)"
    )
    parser.add_argument("--arm", action="append", default=[], help="an arm to pool (repeat)")
    parser.add_argument("--out", default="pooled", help="output folder")
    parser.add_argument("--confidence", type=float, default=0.95, help="interval size")
    args = parser.parse_args(argv)
    try:
        runs = pool_runs(read_runs(args.runs), args.arm)
        table = write_pooled(runs, args.out, confidence=args.confidence)
    except ValueError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    for row in table.to_dict("records"):
        print(arm_line(row, f" over {row['runs']} runs, {row['failed']} failed"))
    print(f"pooled: {Path(args.out) / 'pooled.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
