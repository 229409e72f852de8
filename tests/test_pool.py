"""Pooling seed sets from runs tables (`python -m analysis.pool`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.pool import main as pool_main
from hetero_lr.scores import normalizer
from hetero_lr.stats import difference_ci, iqm, stratified_bootstrap_ci

ENVS = ("MinAtar/Breakout-v1", "MinAtar/SpaceInvaders-v1")
BASE = "minatar:minatar@hardcopy"
LR = "minatar:mlp"
NORM = {env: normalizer(env)[0] for env in ENVS}


def _runs(seeds, offset, *, envs=ENVS, arms=(BASE, LR, "minatar:minatar"), failed=()):
    """A runs table: HardCopy scores 20 + seed % 5 + env index, LR 5 lower, + `offset`."""
    rows = []
    for arm in arms:
        for e, env in enumerate(envs):
            for seed in seeds:
                score = 20.0 + seed % 5 + 10 * e + offset - 5.0 * (arm != BASE)
                status = "FAILED" if (arm, env, seed) in failed else "FINISHED"
                score = float("nan") if status == "FAILED" else score
                rows.append(
                    {"arm": arm, "trial": 0, "env": env, "seed": seed, "status": status,
                     "score": score, "run_id": f"{arm}-{env}-{seed}"}
                )  # fmt: skip
    return pd.DataFrame(rows)


def _write(tmp_path, name, frame, file="headline_runs.csv"):
    folder = tmp_path / name
    folder.mkdir()
    frame.to_csv(folder / file, index=False)
    return str(folder / file)


def test_pooled_arms_use_every_run_and_show_each_set(tmp_path):
    a = _write(tmp_path, "first", _runs([11, 12, 13], 0.0))
    b = _write(tmp_path, "second", _runs([21, 22, 23], 3.0), file="comparison_runs.csv")
    out = tmp_path / "out"
    assert pool_main(["--runs", a, "--runs", b, "--arm", BASE, "--arm", LR, "--out", str(out)]) == 0

    table = pd.read_csv(out / "pooled.csv").set_index("arm")
    assert set(table.index) == {BASE, LR}  # the arm not named is not pooled
    both = pd.concat([pd.read_csv(a), pd.read_csv(b)])

    def tasks(arm, frame=both):
        """Normalised scores per environment, in seed order (how arms pair up)."""
        rows = frame[frame["arm"] == arm].sort_values("seed")
        return [[NORM[env](s) for s in rows.loc[rows["env"] == env, "score"]] for env in ENVS]

    for arm in (BASE, LR):
        estimate, low, high = stratified_bootstrap_ci(tasks(arm))
        assert table.loc[arm, "runs"] == 12
        assert table.loc[arm, ["iqm", "ci_low", "ci_high"]].tolist() == pytest.approx(
            [estimate, low, high]
        )
        for name, path in (("first", a), ("second", b)):
            alone = np.concatenate(tasks(arm, pd.read_csv(path)))
            assert table.loc[arm, f"iqm {name}"] == pytest.approx(float(iqm(alone)))
        for env, scores in zip(ENVS, tasks(arm), strict=True):
            assert table.loc[arm, f"mean {env}"] == pytest.approx(np.mean(scores))
    diff = difference_ci(tasks(LR), tasks(BASE), paired=True)
    assert table.loc[LR, "design"] == "paired"
    assert table.loc[LR, ["diff", "diff_low", "diff_high"]].tolist() == pytest.approx(list(diff))
    assert table.loc[LR, "baseline"] == BASE
    assert pd.isna(table.loc[BASE, "diff"])
    assert len(pd.read_csv(out / "pooled_runs.csv")) == 24
    assert "| minatar:mlp | 12 |" in (out / "pooled.md").read_text()


def test_failed_runs_are_counted_and_left_out_of_the_scores(tmp_path):
    lost = {(LR, ENVS[0], 12), (LR, ENVS[1], 21)}
    a = _write(tmp_path, "first", _runs([11, 12], 0.0, failed=lost))
    b = _write(tmp_path, "second", _runs([21, 22], 0.0, failed=lost))
    out = tmp_path / "out"
    argv = ["--runs", a, "--runs", b, "--arm", BASE, "--arm", LR, "--out", str(out)]
    assert pool_main(argv) == 0
    table = pd.read_csv(out / "pooled.csv").set_index("arm")
    assert table.loc[LR, ["runs", "failed"]].tolist() == [6, 2]
    assert table.loc[BASE, ["runs", "failed"]].tolist() == [8, 0]


def test_an_arm_whose_every_run_failed_is_listed_unscored(tmp_path):
    diverged = {("minatar:minatar", env, s) for env in ENVS for s in (11, 12)}
    a = _write(tmp_path, "first", _runs([11, 12], 0.0, failed=diverged))
    b = _write(tmp_path, "second", _runs([21], 0.0, arms=[BASE, "minatar:minatar"]))
    out = tmp_path / "out"
    argv = ["--runs", a, "--arm", BASE, "--arm", "minatar:minatar", "--out", str(out)]
    assert pool_main(argv) == 0
    table = pd.read_csv(out / "pooled.csv").set_index("arm")
    assert table.loc["minatar:minatar", ["runs", "failed"]].tolist() == [0, 4]
    assert pd.isna(table.loc["minatar:minatar", "iqm"])
    assert table.loc[BASE, "runs"] == 4
    # Pooled with a set where it finished, it is scored on those runs alone.
    assert pool_main([*argv, "--runs", b]) == 0
    table = pd.read_csv(out / "pooled.csv").set_index("arm")
    assert table.loc["minatar:minatar", ["runs", "failed"]].tolist() == [2, 4]
    assert table.loc[BASE, "runs"] == 6


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("repeat", "seed 12 is in first, second: pool seed sets that are disjoint"),
        (
            "missing arm",
            "arm 'minatar:mlp' is not in second; arms in second: minatar:minatar@hardcopy",
        ),
        ("envs", "the inputs ran different environments"),
        ("twice", "is given twice"),
        ("no file", "nope.csv: no such file"),
        ("no column", "no column seed, status"),
        ("no arm", "name the arms to pool with --arm"),
    ],
)
def test_what_cannot_be_pooled_is_refused_in_one_line(tmp_path, capsys, case, message):
    a = _write(tmp_path, "first", _runs([11, 12], 0.0))
    second = {
        "repeat": _runs([12, 13], 0.0),
        "missing arm": _runs([21, 22], 0.0, arms=[BASE]),
        "envs": _runs([21, 22], 0.0, envs=ENVS[:1]),
        "no column": _runs([21], 0.0).drop(columns=["seed", "status"]),
    }.get(case, _runs([21, 22], 0.0))
    b = _write(tmp_path, "second", second)
    runs = {"twice": [a, a], "no file": [a, str(tmp_path / "nope.csv")]}.get(case, [a, b])
    arms = [] if case == "no arm" else ["--arm", BASE, "--arm", LR]
    out = tmp_path / "out"
    argv = [x for path in runs for x in ("--runs", path)] + arms + ["--out", str(out)]
    assert pool_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()
