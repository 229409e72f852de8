"""Arms of several studies side by side: one headline table, its runs, and curves.

    python -m analysis.compare --results DIR --study A --study B --out DIR

A study file holds one setting per searched dimension for all its pairings, so arms that differ
in another setting (say, the target learning rate of one pairing only) run as studies of their
own. When those studies ran the same environments (and, for paired runs, the same seeds), their
arms compare directly: each study contributes its headline records (`analysis.headline`: its
confirmation runs, or its pre-registered arms), and they are tabulated together as one study's
would be (IQM with a stratified-bootstrap interval, each Replicate arm's difference to its online
family's HardCopy baseline with an interval). A study whose headline would be its search's best
trials is refused: a score that chose its own setting is biased upward (the winner's curse).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import plots
from analysis.curves import curve_bands
from analysis.headline import Headline, build_headline, preregistered_trials, trial_records
from analysis.load import StudyData, load_curves, load_study_data
from hetero_lr.page import Section, to_html, to_markdown
from hetero_lr.scores import normalizer
from hetero_lr.study.spec import recorded_config
from hetero_lr.study.summary import (
    common_scale,
    confirmation_table,
    difference_text,
    per_env_table,
)

SETTINGS = ("target.rule", "target.kr", "target.kl", "target.lr", "target.period", "target.tau")
"""Trial settings shown per arm when they differ between arms (or name the rule)."""

TRAIN_EPISODES = 100
"""Training episodes averaged per run for the `train last100` columns (Young & Tian's window)."""

CURVES = [
    ("learning_curves.png", "eval/return_mean", "mean evaluation return", False),
    ("gap_curves.png", "gap/function", "function gap (online vs target)", True),
]


@dataclass
class Comparison:
    """The studies' headline arms, merged."""

    studies: dict[str, tuple[StudyData, Headline]]
    """Study name -> its data and headline."""
    records: dict[str, dict[str, Any]]
    """Arm label -> headline record (`confirmation_table`'s shape), from every study."""
    study_of: dict[str, str]
    """Arm label -> the study it comes from."""

    @property
    def envs(self) -> list[str]:
        """The environments every arm ran."""
        return sorted({env for r in self.records.values() for env in r["scores"]})


def compare(studies: Sequence[StudyData]) -> Comparison:
    """Merge the headline arms of `studies`.

    Raises:
        ValueError: a study given twice or with no confirmation runs or pre-registered arms,
            an arm label in two studies, or studies over different environments.
    """
    merged: dict[str, dict[str, Any]] = {}
    study_of: dict[str, str] = {}
    by_name: dict[str, tuple[StudyData, Headline]] = {}
    for data in studies:
        name = data.study.study_name
        if name in by_name:
            raise ValueError(f"study {name!r} is given twice")
        headline = build_headline(data)
        if headline.kind == "search" and (single := preregistered_trials(data, all_failed=True)):
            # Every arm ran its one setting and failed (e.g. diverged): still a result.
            records = trial_records(data, single)
            headline = Headline("pre-registered", records, headline.runs.iloc[:0])
        if headline.kind == "search":
            raise ValueError(
                f"study {name!r} has neither confirmation runs nor pre-registered arms: its "
                "best trials' scores chose their own settings (biased upward); run it with "
                "confirm: K first"
            )
        for arm, record in headline.records.items():
            if arm in merged:
                raise ValueError(
                    f"arm {arm!r} is in studies {study_of[arm]!r} and {name!r}; compare "
                    "studies whose arms differ"
                )
            merged[arm], study_of[arm] = record, name
        by_name[name] = (data, headline)
    envs = {name: sorted(_study_envs(data)) for name, (data, _) in by_name.items()}
    if len({tuple(e) for e in envs.values()}) > 1:
        listed = "; ".join(f"{n}: {', '.join(e)}" for n, e in envs.items())
        raise ValueError(f"the studies ran different environments ({listed})")
    return Comparison(by_name, merged, study_of)


def _study_envs(data: StudyData) -> set[str]:
    return set(data.study.user_attrs.get("settings", {}).get("envs") or data.runs["env"])


def arm_settings(comparison: Comparison) -> pd.DataFrame:
    """One row per arm: its study, kind and the `SETTINGS` its trial ran with."""
    trials = {
        (name, t.number): t
        for name, (data, _) in comparison.studies.items()
        for t in data.study.get_trials(deepcopy=False)
    }
    rows = []
    for arm, record in sorted(comparison.records.items()):
        data, headline = comparison.studies[comparison.study_of[arm]]
        trial = trials[(comparison.study_of[arm], int(record["trial"]))]
        config = recorded_config(data.study, trial)
        row = {"arm": arm, "study": data.study.study_name, "kind": headline.kind}
        rule = config.get("target.rule", "")
        for key in SETTINGS:
            if key in config and (key == "target.rule" or _belongs(key, rule)):
                row[key] = config[key]
        rows.append(row)
    table = pd.DataFrame(rows)
    varying = [k for k in SETTINGS if k in table and table[k].nunique(dropna=False) > 1]
    keep = ["arm", "study", "kind", *dict.fromkeys(["target.rule", *varying])]
    return table[[c for c in keep if c in table]]


def _belongs(key: str, rule: str) -> bool:
    """Whether a target setting means anything under `rule` (HardCopy has no learning rate)."""
    own = {
        "replicate": ("target.kr", "target.kl", "target.lr"),
        "hardcopy": ("target.period",),
        "polyak": ("target.tau",),
    }
    return key in own.get(rule, ())


def comparison_table(comparison: Comparison, *, confidence: float = 0.95) -> pd.DataFrame:
    """Per arm: settings, per-environment mean, IQM [CI], and the difference to its online
    family's HardCopy baseline [CI] (whichever study that baseline comes from)."""
    rows = confirmation_table(comparison.records, confidence=confidence)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    kinds = {arm: comparison.studies[s][1].kind for arm, s in comparison.study_of.items()}
    # `selection` is a search score only for confirmed arms; a pre-registered arm's is its own.
    table["selection"] = [
        sel if kinds[arm] == "confirmed" else float("nan")
        for arm, sel in zip(table["arm"], table["selection"], strict=True)
    ]
    for env in comparison.envs:
        table[f"mean {env}"] = [
            _mean(comparison.records[arm]["scores"].get(env, [])) for arm in table["arm"]
        ]
    table["mlflow_run_id"] = [comparison.records[a]["mlflow_run_id"] for a in table["arm"]]
    summaries = run_summaries(comparison)
    for env in comparison.envs:
        column = summaries[summaries["env"] == env].groupby("arm")["train_return"].mean()
        table[f"train last{TRAIN_EPISODES} {env}"] = table["arm"].map(column)
    table["max mean abs Q"] = table["arm"].map(summaries.groupby("arm")["max_abs_q"].max())
    table = arm_settings(comparison).merge(table, on="arm", how="right")
    if table["selection"].isna().all():
        table = table.drop(columns="selection")
    return table.sort_values("iqm", ascending=False, ignore_index=True)


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def comparison_runs(comparison: Comparison) -> pd.DataFrame:
    """Every run behind the table, with its study."""
    parts = [
        h.runs.assign(study=name) for name, (_, h) in comparison.studies.items() if len(h.runs)
    ]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def run_summaries(comparison: Comparison, last: int = TRAIN_EPISODES) -> pd.DataFrame:
    """Per finished headline run: `train_return`, the mean raw return of its last `last`
    training episodes (`charts/episodic_return`, epsilon-greedy), the measure Young & Tian
    (2019) plot for MinAtar ("moving average of returns over 100 episodes"; MinAtar README),
    and `max_abs_q`, the largest mean |Q| it logged (`q/online_abs_mean`, what
    `agent.divergence_q` bounds); NaN where a run logged none."""
    runs = comparison_runs(comparison)
    rows = []
    for run in runs[runs["status"] == "FINISHED"].itertuples() if len(runs) else ():
        client = comparison.studies[run.study][0].client
        episodes = client.get_metric_history(run.run_id, "charts/episodic_return")
        episodes = sorted(episodes, key=lambda m: (m.step, m.timestamp))[-last:]
        q = [m.value for m in client.get_metric_history(run.run_id, "q/online_abs_mean")]
        rows.append(
            {
                "arm": run.arm,
                "env": run.env,
                "seed": run.seed,
                "train_return": _mean([m.value for m in episodes]),
                "max_abs_q": max(q) if q else float("nan"),
            }
        )
    return pd.DataFrame(rows, columns=["arm", "env", "seed", "train_return", "max_abs_q"])


def comparison_curves(comparison: Comparison, key: str) -> pd.DataFrame:
    """Histories of `key` for every headline arm's finished runs, all studies together."""
    parts = []
    for data, headline in comparison.studies.values():
        curves = load_curves(data, headline.trials, key=key, confirmed=headline.confirmed)
        arms = set(headline.records)
        parts.append(curves[curves["pairing"].isin(arms)])
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def write_comparison(
    comparison: Comparison, out: str | Path, *, confidence: float = 0.95
) -> list[Path]:
    """`comparison.md` and `comparison.html`, the tables as CSV and the curve figures."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    table = comparison_table(comparison, confidence=confidence)
    runs = comparison_runs(comparison)
    for name, frame in (("comparison.csv", table), ("comparison_runs.csv", runs)):
        frame.to_csv(out / name, index=False)
        written.append(out / name)
    failed = [
        f"{arm} ({comparison.study_of[arm]}: {'; '.join(r['failed'])})"
        for arm, r in sorted(comparison.records.items())
        if r["failed"]
    ]
    text = [
        "Studies: "
        + ", ".join(
            f"`{name}` ({h.kind}, {len(h.records)} arms)"
            for name, (_, h) in comparison.studies.items()
        )
        + ".",
        *method_text(comparison.envs, confidence),
    ]
    if failed:
        text.append("Runs that failed (left out of the scores): " + "; ".join(failed) + ".")
    per_env = pd.DataFrame(per_env_table(comparison.records, confidence=confidence))
    per_env.to_csv(out / "comparison_per_env.csv", index=False)
    written.append(out / "comparison_per_env.csv")
    sections = [
        Section("Arms", text, tables=[("", table)]),
        Section("Per environment", tables=[("", per_env)]),
    ]
    bands_all = []
    for name, key, ylabel, log in CURVES:
        curves = comparison_curves(comparison, key)
        if curves.empty:
            continue
        bands = curve_bands(curves, by=["env", "pairing"], confidence=confidence)
        bands_all.append(bands.assign(metric=key))
        fig = plots.learning_curves(bands, ylabel=ylabel, log=log, panel="env")
        fig.savefig(out / name, dpi=110)
        plots.plt.close(fig)
        written.append(out / name)
        sections.append(
            Section(
                f"{ylabel.capitalize()} (mean over seeds, {confidence:.0%} bootstrap band)",
                figures=[name],
            )
        )
    if bands_all:
        pd.concat(bands_all, ignore_index=True).to_csv(out / "comparison_curves.csv", index=False)
        written.append(out / "comparison_curves.csv")
    sections.append(Section("Runs", tables=[("", runs)], folded=True))
    title = "Comparison of " + ", ".join(f"`{n}`" for n in comparison.studies)
    (out / "comparison.md").write_text(to_markdown(title, sections))
    (out / "comparison.html").write_text(to_html(title, sections, out))
    written += [out / "comparison.md", out / "comparison.html"]
    return written


def arm_line(row: dict[str, Any], extra: str = "") -> str:
    """One table row as a line: `ARM: IQM x [low, high]EXTRA; vs BASE d [low, high] (paired),
    P(improvement) ..., p ...`."""
    if not row.get("runs"):
        line = f"{row['arm']}: no finished run{extra}"
    elif pd.isna(row.get("iqm")):
        line = f"{row['arm']}: no aggregate (no common scale across environments){extra}"
    else:
        line = f"{row['arm']}: IQM {row['iqm']:.3g} [{row['ci_low']:.3g}, {row['ci_high']:.3g}]"
        line += extra
    if not pd.isna(row.get("diff")):
        line += f"; {difference_text(row)}"
    return line


def method_text(envs: Sequence[str], confidence: float = 0.95) -> list[str]:
    """What a comparison table's columns mean: scale, intervals, design, tests."""
    scales = [f"{env}: {normalizer(env)[1]}" for env in envs]
    text = ["Scores: " + "; ".join(scales) + "."]
    if not common_scale(envs):
        text.append(
            "No aggregate over environments: some have no reference scores, so their raw "
            "returns share no scale (an IQM over them would rank by score range). The "
            "per-environment table holds the result."
        )
    text.append(
        f"`iqm`: IQM over all runs (environments x seeds), {confidence:.0%} stratified-"
        "bootstrap percentile interval (rliable). `diff`: IQM difference to the online "
        "family's HardCopy baseline; `design` paired (seed indices resampled jointly within "
        "each environment) where both arms ran the same seeds, unpaired otherwise; interval: "
        "the bootstrap's percentile interval widened for small samples (docs/statistics.md "
        "has its measured coverage). `p_improvement`: rliable's P(arm > baseline) [pi_low, "
        "pi_high]. `p_value`: two-sided randomisation test of the same difference (sign-flip "
        "when paired; `test`), `p_holm`: Holm-adjusted over the arms compared."
    )
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m analysis.compare`; returns the exit code (2 on bad input)."""
    parser = argparse.ArgumentParser(
        prog="python -m analysis.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--study", action="append", required=True, help="a study name (repeat for each study)"
    )
    parser.add_argument("--results", default="results", help="the studies' results folder")
    parser.add_argument("--out", default="comparison", help="output folder")
    parser.add_argument("--confidence", type=float, default=0.95, help="interval size")
    args = parser.parse_args(argv)
    try:
        comparison = compare([load_study_data(args.results, study_name=s) for s in args.study])
    except ValueError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    written = write_comparison(comparison, args.out, confidence=args.confidence)
    table = pd.read_csv(Path(args.out) / "comparison.csv")
    for row in table.to_dict("records"):
        print(arm_line(row))
    print(f"comparison: {Path(args.out) / 'comparison.html'} ({len(written)} files)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
