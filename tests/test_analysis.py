"""Study analysis: IQM and stratified bootstrap, and a report from a real study's storage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from analysis import best_trials, iqm, load_study_data, stratified_bootstrap_ci
from analysis.report import main as report_main
from hetero_lr.config import flatten
from hetero_lr.study import main as study_main
from hetero_lr.study import run_seeds
from hetero_lr.train import TrainResult


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


def fake_train(cfg, *, logger=None, on_eval=None, out=None, resume=False, progress=True):
    """Returns 10 * kl (HardCopy 100) + seed % 3, + 5 on Acrobot; rises linearly over evals."""
    final = 100.0 if cfg.target.rule == "hardcopy" else 10.0 * cfg.target.kl
    final += cfg.seed % 3 + (5.0 if cfg.env.id == "Acrobot-v1" else 0.0)
    logger.log_params(flatten(cfg))
    steps = list(range(cfg.eval_every, cfg.steps + 1, cfg.eval_every))
    returns = [final * s / cfg.steps for s in steps]
    for step, value in zip(steps, returns, strict=True):
        logger.log_metrics({"eval/return_mean": value}, step)
        on_eval(step, value)
    return TrainResult(cfg.steps, steps, returns, returns[-1], False, 0.0, 10, 10)


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
    }
    (folder / "grid.yaml").write_text(yaml.safe_dump(study))
    results = folder / "results"
    argv = ["--study", str(folder / "grid.yaml"), "--results", str(results)]
    assert study_main(argv, train_fn=fake_train) == 0
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
        "final_scores.csv",
        "final_scores.md",
        "final_scores.png",
        "learning_curves.png",
        "kr_kl.csv",
        "kr_kl_heatmap.png",
        "importances.csv",
        "importances.png",
        "report.md",
    ):
        assert (out / name).stat().st_size > 0, name

    scores = pd.read_csv(out / "final_scores.csv").set_index("pairing")
    seed_bonus = [s % 3 for s in run_seeds(0, 3)]
    expected = {"mlp:mlp": 40.0, "mlp:mlp@hardcopy": 100.0}
    for pairing, base in expected.items():
        runs = [base + b for b in seed_bonus] + [base + 5 + b for b in seed_bonus]
        row = scores.loc[pairing]
        assert row["runs"] == 6 and row["envs"] == 2
        assert row["iqm"] == pytest.approx(stats.trim_mean(runs, 0.25))
        assert row["mean"] == pytest.approx(np.mean(runs)) == pytest.approx(row["objective"])
        assert row["ci_low"] <= row["iqm"] <= row["ci_high"]
    assert list(scores.index) == ["mlp:mlp@hardcopy", "mlp:mlp"]  # sorted by IQM

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
