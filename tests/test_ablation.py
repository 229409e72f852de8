"""The MinAtar ablation's pre-registered analysis (`python -m analysis.ablation`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.ablation import main as ablation_main
from hetero_lr.scores import normalizer

GAMES = ("MinAtar/Breakout-v1", "MinAtar/Asterix-v1")
SEEDS = (11, 12, 13, 14, 15)
SHIFT = {"A": 0.0, "B": 1.0, "C": 1.0, "D": -2.0}


def _runs(failed=()):
    """Raw scores: a seed effect shared by every arm, plus the arm's shift (B = C = A + 1)."""
    rng = np.random.default_rng(0)
    seed_effect = {(g, s): rng.normal(0, 2) for g in GAMES for s in SEEDS}
    rows = []
    for arm, shift in SHIFT.items():
        for game in GAMES:
            for seed in SEEDS:
                lost = (arm, game, seed) in failed
                raw = 6.0 + seed_effect[(game, seed)] + shift + rng.normal(0, 0.05)
                rows.append(
                    {"arm": arm, "env": game, "seed": seed,
                     "status": "FAILED" if lost else "FINISHED",
                     "score": float("nan") if lost else raw}
                )  # fmt: skip
    return pd.DataFrame(rows)


def test_primary_contrasts_are_paired_normalised_and_holm_adjusted(tmp_path):
    path = tmp_path / "runs.csv"
    _runs().to_csv(path, index=False)
    assert ablation_main(["--runs", str(path), "--out", str(tmp_path / "out")]) == 0
    table = pd.read_csv(tmp_path / "out" / "contrasts.csv").set_index("contrast")
    assert list(table.index) == ["B - A", "C - B", "D - B"]
    assert set(table["design"]) == {"paired"} and set(table["games"]) == {2}
    # A raw shift of 1 is 1 / (reference - random) per game once normalised.
    per_game_unit = [1 / (10.0 - 0.372), 1 / (17.0 - 0.513)]
    low, high = table.loc["B - A", ["low", "high"]]
    assert min(per_game_unit) * 0.8 < table.loc["B - A", "difference"] < max(per_game_unit) * 1.2
    assert 0 < low < high  # the shared seed effect cancels in the pairs
    assert table.loc["C - B", "low"] < 0 < table.loc["C - B", "high"]
    assert table.loc["D - B", "high"] < 0
    p = table["p_value"].to_numpy()
    expected = np.minimum(1, np.maximum.accumulate(np.sort(p) * np.array([3, 2, 1])))
    assert sorted(table["p_holm"]) == pytest.approx(list(expected), abs=1e-4)
    per_game = pd.read_csv(tmp_path / "out" / "per_game.csv")
    assert len(per_game) == 6 and set(per_game["env"]) == set(GAMES)
    arms = pd.read_csv(tmp_path / "out" / "arms.csv").set_index("arm")
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    a = runs[runs["arm"] == "A"]
    norm = [normalizer(e)[0](r) for e, r in zip(a["env"], a["raw"], strict=True)]
    assert a["score"].tolist() == pytest.approx(norm)
    assert arms.loc["A", "runs"] == 10 and arms.loc["A", "games"] == 2
    assert "paired" in (tmp_path / "out" / "analysis.md").read_text()


def test_a_failed_run_drops_its_pair_and_is_counted(tmp_path):
    path = tmp_path / "runs.csv"
    _runs(failed={("D", GAMES[0], 12)}).to_csv(path, index=False)
    assert ablation_main(["--runs", str(path), "--out", str(tmp_path / "out")]) == 0
    table = pd.read_csv(tmp_path / "out" / "contrasts.csv").set_index("contrast")
    assert table.loc["D - B", "design"] == "paired" and table.loc["D - B", "runs"] == 9
    arms = pd.read_csv(tmp_path / "out" / "arms.csv").set_index("arm")
    assert arms.loc["D", ["runs", "failed"]].tolist() == [9, 1]


def test_a_missing_runs_table_is_one_line(tmp_path, capsys):
    assert ablation_main(["--runs", str(tmp_path / "no.csv"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no such file" in err
    assert not (tmp_path / "o").exists()
