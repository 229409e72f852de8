"""The pilot's pre-registered selection rule (`python -m analysis.pilot`)."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis.pilot import FALLBACK, select
from analysis.pilot import main as pilot_main

ENVS = ("MinAtar/Breakout-v1", "MinAtar/Asterix-v1")


def _table(settings):
    """One row per trial and game; `settings`: (kr, lr, score, max |Q|, after/before)."""
    rows = []
    for trial, (kr, lr, score, q, ratio) in enumerate(settings):
        for env in ENVS:
            rows.append(
                {"trial": trial, "kr": kr, "target.lr": lr, "trial_state": "COMPLETE",
                 "env": env, "status": "FINISHED", "score": score, "max_abs_q": q,
                 "q_bound": 100.0, "replicate_before": 1.0, "replicate_after": ratio}
            )  # fmt: skip
    return pd.DataFrame(rows)


def test_the_best_eligible_setting_wins():
    table = _table(
        [
            (100, 1e-4, 0.50, 10.0, 0.1),
            (100, 1e-3, 0.90, 150.0, 0.1),  # best score, but its Q passed r_max / (1 - gamma)
            (250, 1e-4, 0.60, 10.0, 0.5),  # the target did not replicate
            (250, 1e-3, 0.55, 10.0, 0.2),
        ]
    )
    rows, chosen = select(table)
    assert chosen == {"kr": 250, "target.lr": 1e-3}
    assert rows["eligible"].tolist() == [True, False, False, True]
    assert "mean |Q|" in rows.loc[1, "why_not"] and "replicate" in rows.loc[2, "why_not"]
    assert rows["selected"].tolist() == [False, False, False, True]


def test_ties_go_to_the_smaller_kr_then_the_smaller_lr():
    table = _table([(250, 1e-4, 0.70, 1.0, 0.1), (100, 1e-3, 0.69, 1.0, 0.1)])
    assert select(table)[1] == {"kr": 100, "target.lr": 1e-3}
    table = _table([(100, 1e-3, 0.70, 1.0, 0.1), (100, 1e-4, 0.69, 1.0, 0.1)])
    assert select(table)[1] == {"kr": 100, "target.lr": 1e-4}
    table = _table([(250, 1e-4, 0.70, 1.0, 0.1), (100, 1e-3, 0.60, 1.0, 0.1)])
    assert select(table)[1] == {"kr": 250, "target.lr": 1e-4}  # 0.1 apart: no tie


def test_a_failed_run_makes_its_setting_ineligible_and_none_left_means_the_fallback():
    table = _table([(100, 1e-4, 0.5, 1.0, 0.1)])
    table.loc[0, ["status", "trial_state"]] = ["FAILED", "FAIL"]
    rows, chosen = select(table)
    assert chosen == FALLBACK and not rows["selected"].any()
    assert rows.loc[0, "why_not"] == "did not complete"


def test_a_missing_study_is_one_line(tmp_path, capsys):
    assert pilot_main(["--results", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no Optuna journal" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("ratio", [0.25, 0.2])
def test_the_replication_bound_is_inclusive(ratio):
    rows, _ = select(_table([(100, 1e-4, 0.5, 1.0, ratio)]), ratio=0.25)
    assert rows.loc[0, "eligible"]
