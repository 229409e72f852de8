"""Study analysis: IQM and stratified bootstrap, and a report from a real study's storage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from fake_runs import fake_runs
from scipy import stats

from analysis import best_trials, iqm, load_study_data, stratified_bootstrap_ci
from analysis.load import load_curves
from analysis.report import main as report_main
from hetero_lr.study import main as study_main
from hetero_lr.study import run_seeds
from hetero_lr.study.confirm import confirm_seeds


def test_iqm_is_the_mean_of_the_middle_half():
    assert iqm(np.arange(1, 9)) == pytest.approx(4.5)  # mean of 3, 4, 5, 6
    x = np.random.default_rng(0).normal(size=(7, 3))
    assert iqm(x) == pytest.approx(stats.trim_mean(x.ravel(), 0.25))
    assert iqm(x, axis=1) == pytest.approx(stats.trim_mean(x, 0.25, axis=1))


def test_bootstrap_resamples_runs_within_each_task():
    # Task B has one run: every replicate keeps it once, so the pooled mean never moves.
    estimate, low, high = stratified_bootstrap_ci([[0.0, 0.0, 0.0], [100.0]], np.mean, reps=500)
    assert estimate == low == high == pytest.approx(25.0)
    # A pooled (unstratified) bootstrap would sometimes draw B 0 or 4 times.
    scores = [[1.0, 2.0, 3.0, 4.0, 50.0], [10.0, 11.0, 12.0]]
    estimate, low, high = stratified_bootstrap_ci(scores, iqm, reps=2_000, seed=1)
    assert low < estimate < high
    assert estimate == pytest.approx(stats.trim_mean(np.concatenate(scores), 0.25))
    assert stratified_bootstrap_ci(scores, iqm, reps=2_000, seed=1) == (estimate, low, high)
    narrow = stratified_bootstrap_ci(scores, iqm, reps=2_000, confidence=0.5)
    assert low <= narrow[1] <= narrow[2] <= high


def _score(cfg, step):
    """10 * kl (HardCopy 100) + seed % 3, + 5 on Acrobot; rises linearly over evaluations."""
    final = 100.0 if cfg.target.rule == "hardcopy" else 10.0 * cfg.target.kl
    final += cfg.seed % 3 + (5.0 if cfg.env.id == "Acrobot-v1" else 0.0)
    return final * step / cfg.steps


fake_train = fake_runs(_score)


@pytest.fixture(scope="module")
def study_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("analysis")
    study = {
        "name": "grid",
        "config": {
            "steps": 200,
            "eval_every": 100,
            "threads": 1,
            "env": {"id": "CartPole-v1", "num_envs": 1},
        },
        "envs": ["CartPole-v1", "Acrobot-v1"],
        "pairings": ["mlp:mlp"],
        "baselines": ["mlp"],
        "space": {"kr": [1, 2], "kl": [1, 4]},
        "seeds": 3,
        "trials": 4,
        "sampler": "grid",
        "pruner": "none",
        "objective": {"last_evals": 1},
        "confirm": 2,
    }
    (folder / "grid.yaml").write_text(yaml.safe_dump(study))
    results = folder / "results"
    argv = ["--study", str(folder / "grid.yaml"), "--results", str(results)]
    assert study_main(argv, run_factory=fake_train) == 0
    return results


def test_load_study_data(study_results):
    data = load_study_data(study_results)  # one study in the storage: no name needed
    assert data.study.study_name == "mlp:mlp__grid"
    assert len(data.trials) == 5 and set(data.trials["state"]) == {"COMPLETE"}
    assert len(data.runs) == 5 * 2 * 3  # trials x envs x seeds
    assert set(data.runs["seed"]) == set(run_seeds(0, 3))
    chosen = best_trials(data)
    assert set(chosen) == {"mlp:mlp", "mlp:mlp@hardcopy"}
    best = data.trials.set_index("number").loc[chosen["mlp:mlp"]]
    assert best["kl"] == 4


def test_report_tables_and_figures(study_results, tmp_path):
    out = tmp_path / "report"
    code = report_main(["--results", str(study_results), "--out", str(out), "--reps", "2000"])
    assert code == 0
    for name in (
        "trials.csv",
        "confirmed_scores.csv",
        "confirmed_scores.md",
        "final_scores.csv",
        "final_scores.md",
        "final_scores.png",
        "learning_curves.png",
        "gap_curves.png",
        "td_loss_curves.png",
        "kr_kl.csv",
        "kr_kl_heatmap.png",
        "importances.csv",
        "importances.png",
        "report.md",
    ):
        assert (out / name).stat().st_size > 0, name

    # CartPole and Acrobot have no reference scores: their raw returns share no scale, so no
    # IQM pools them; the per-environment table carries the comparison.
    scores = pd.read_csv(out / "final_scores.csv").set_index("pairing")
    seed_bonus = [s % 3 for s in run_seeds(0, 3)]
    expected = {"mlp:mlp": 40.0, "mlp:mlp@hardcopy": 100.0}
    for pairing, base in expected.items():
        runs = [base + b for b in seed_bonus] + [base + 5 + b for b in seed_bonus]
        row = scores.loc[pairing]
        assert row["runs"] == 6 and row["envs"] == 2 and pd.isna(row["iqm"])
        assert row["mean"] == pytest.approx(np.mean(runs)) == pytest.approx(row["objective"])

    # The headline: confirmation runs only, on seeds no search run used.
    confirmed = pd.read_csv(out / "confirmed_scores.csv").set_index("arm")
    fresh = confirm_seeds(0, 2, run_seeds(0, 3))
    assert not set(fresh) & set(run_seeds(0, 3))
    for arm in expected:
        row = confirmed.loc[arm]
        assert row["runs"] == 4 and pd.isna(row["iqm"])
        assert row["selection"] == pytest.approx(scores.loc[arm, "objective"])
    assert "diff" not in confirmed  # no pooled difference either
    per_env = pd.read_csv(out / "headline_per_env.csv").set_index(["arm", "env"])
    for env, bonus in (("CartPole-v1", 0), ("Acrobot-v1", 5)):
        row = per_env.loc[("mlp:mlp", env)]
        assert row["baseline"] == "mlp:mlp@hardcopy" and row["design"] == "paired"
        assert row["diff"] == pytest.approx(-60.0) and row["runs"] == 2
        base = per_env.loc[("mlp:mlp@hardcopy", env)]
        assert base["iqm"] == pytest.approx(np.mean([100 + bonus + s % 3 for s in fresh]))
    report = (out / "report.md").read_text()
    assert "Confirmed scores" in report and "mean over confirmation runs" in report
    data = load_study_data(study_results)
    curves = load_curves(data, [int(t) for t in confirmed["trial"]], confirmed=True)
    assert (
        set(curves["seed"]) == set(fresh) and len(curves) == 2 * 2 * 2 * 2
    )  # arms envs seeds evals
    gap = load_curves(
        data, [int(confirmed.loc["mlp:mlp", "trial"])], key="gap/function", confirmed=True
    )
    assert sorted(set(gap["score"])) == [2.0 / 200, 2.0 / 100]

    cells = pd.read_csv(out / "kr_kl.csv")
    assert len(cells) == 4 and set(cells["trials"]) == {1}
    bonus = np.mean(seed_bonus) + 2.5
    for row in cells.itertuples():
        assert row.mean == pytest.approx(10 * row.kl_bin + bonus)
    importances = pd.read_csv(out / "importances.csv", index_col=0)["importance"]
    assert importances.idxmax() == "kl"  # the fake's score depends on kl only
    report = (out / "report.md").read_text()
    assert "mlp:mlp@hardcopy" in report and "learning_curves.png" in report


def test_report_bad_study_name_is_exit_2(study_results, tmp_path, capsys):
    code = report_main(
        ["--results", str(study_results), "--study", "nope", "--out", str(tmp_path / "r")]
    )
    assert code == 2 and "no study 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
