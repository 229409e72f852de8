"""The study CLI: a real mini study end to end, resume, pruned/failed trials, bad input, workers."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from fake_runs import fake_runs
from mlflow import MlflowClient
from tiny_configs import TINY_STUDY as TINY
from tiny_configs import tiny

from hetero_lr.scores import ATARI_100K_GAMES, human_normalized, normalizer
from hetero_lr.stats import difference_ci
from hetero_lr.study import main, run_seeds
from hetero_lr.study.preflight import check_pairings, probe_envs
from hetero_lr.study.spec import load_study, parse_arm, recorded_config, suggest
from hetero_lr.study.storage import check_storage_url
from hetero_lr.tracking import END_REASON, ROLE, readable

REPO = Path(__file__).resolve().parents[1]


def write_study(folder: Path, **changes) -> Path:
    data = {**TINY, **changes}
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def results(tmp_path, empty_db):
    folder = tmp_path / "results"
    folder.mkdir()
    shutil.copy(empty_db, folder / "mlflow.db")
    return folder


# Evaluations return 10 * kl (HardCopy: 100); kr == 3 diverges.
fake_train = fake_runs(
    lambda cfg, step: 100.0 if cfg.target.rule == "hardcopy" else 10.0 * cfg.target.kl,
    diverges=lambda cfg: cfg.target.rule == "replicate" and cfg.target.kr == 3,
)


def mlflow_runs(results: Path, study_name: str) -> dict[str, list]:
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name(study_name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    by_role: dict[str, list] = {"study": [], "trial": [], "seed": [], "confirm": []}
    for run in runs:
        by_role[run.data.tags[ROLE]].append(run)
    return by_role


def load(results: Path, name: str) -> optuna.Study:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(results / "optuna.journal")))
    return optuna.load_study(study_name=name, storage=storage)


# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_mini_study_end_to_end(tmp_path, results, capsys):
    """Real training: 2 sampled trials + the HardCopy baseline, 2 seeds each, checkpoints on."""
    config = {**TINY["config"], "checkpoint_every": 100}
    study_file = write_study(tmp_path, baselines=["mlp"], config=config)
    code = main(["--study", str(study_file), "--results", str(results)])
    out = capsys.readouterr().out
    assert code == 0
    assert "estimate" in out and "trial 2 COMPLETE" in out  # banner and progress lines

    study = load(results, "mlp:mlp__tiny")
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    seeds = list(run_seeds(0, 2))
    assert trials[0].user_attrs["pairing"] == "mlp:mlp@hardcopy" and trials[0].params == {}
    for t in trials[1:]:
        assert t.user_attrs["pairing"] == "mlp:mlp"
        assert set(t.params) == {"pair", "kr", "kl"}
        assert "config" not in t.user_attrs  # a file on the trial run (optuna-dashboard width)
        assert recorded_config(study, t)["target.kr"] == t.params["kr"]
    for t in trials:
        assert t.user_attrs["run_seeds"] == seeds
        assert len(t.user_attrs["run_scores"]) == 2
        assert t.value == pytest.approx(sum(t.user_attrs["run_scores"]) / 2)
        # Lockstep: one report per evaluation at its agent step, the mean over both seeds.
        assert sorted(t.intermediate_values) == [100, 200, 300]
    assert study.user_attrs["run_seeds"] == seeds and study.user_attrs["settings_hash"]
    written = [p for p in (results / "checkpoints").rglob("*") if p.is_file()]
    assert (results / "checkpoints").is_dir() and written == []  # removed as trials end

    runs = mlflow_runs(results, "mlp:mlp__tiny")
    (parent,) = runs["study"]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["best.trial"] == str(study.best_trial.number)
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert {"best_trial.json", "trials.csv", "study.yaml"} <= artifacts
    table = Path(client.download_artifacts(parent.info.run_id, "trials.csv")).read_text()
    values = [float(line.split(",")[1]) for line in table.splitlines()[1:]]  # `value` column
    assert values == [readable(t.value) for t in trials]  # 4 digits, no float noise
    assert "figures/objective_by_pairing.png" in figures
    if len({t.value for t in trials}) == 1:  # untrained agents can all score the same
        assert "objective constant" in parent.data.tags["figures.skipped"]
        assert "figures/param_importances.png" not in figures
    else:
        assert "figures/optimization_history.png" in figures
        # Two searched trials: too few for importances, and the study says so.
        assert "figures/param_importances.png" not in figures
        assert "importances need at least 10" in parent.data.tags["figures.skipped"]
    assert len(runs["trial"]) == 3 and len(runs["seed"]) == 6
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in runs["trial"]}
    for t in trials:
        run = by_number[t.number]
        assert run.info.status == "FINISHED"
        assert run.data.tags["optuna.trial_state"] == "COMPLETE"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.metrics["objective"] == readable(t.value)  # 4 digits, no float noise
        params = run.data.params
        assert params["pairing"] == t.user_attrs["pairing"]
        assert params["online_family"] == "mlp" and params["target_family"] == "mlp"
        assert int(params["online_params"]) > 0 and params["agent.lr"] == str(6.25e-5)
        if t.params:
            assert params["kr"] == str(t.params["kr"]) == params["target.kr"]
        nested = [r for r in runs["seed"] if r.data.tags["mlflow.parentRunId"] == run.info.run_id]
        assert sorted(int(r.data.tags["seed"]) for r in nested) == sorted(seeds)
        for seed_run in nested:
            assert seed_run.info.status == "FINISHED"
            history = client.get_metric_history(seed_run.info.run_id, "eval/return_mean")
            assert [m.step for m in history] == [100, 200, 300]
            assert "charts/episodic_return" in seed_run.data.metrics
            assert seed_run.data.params["env.protocol.backend"] == "gymnasium_sync"


def test_pruned_and_failed_trials_end_their_runs_and_the_study_goes_on(tmp_path, results):
    """Grid over kr x kl with a fake trainer: kl=1 is pruned, kr=3 diverges, kl=20 completes."""
    study_file = write_study(
        tmp_path,
        baselines=["mlp"],
        space={"kr": [1, 3], "kl": [1, 20]},
        sampler="grid",
        trials=4,
        seeds=1,
        pruning={"min_evals": 1, "startup_trials": 1, "min_trials": 1, "patience": 0},
    )
    assert (
        main(["--study", str(study_file), "--results", str(results)], run_factory=fake_train) == 0
    )
    study = load(results, "mlp:mlp__tiny")
    states = {(t.params.get("kr"), t.params.get("kl")): t.state.name for t in study.trials}
    assert states == {
        (None, None): "COMPLETE",
        (1, 1): "PRUNED",
        (1, 20): "COMPLETE",
        (3, 1): "FAIL",
        (3, 20): "FAIL",
    }
    reasons = {
        (t.params.get("kr"), t.params.get("kl")): t.user_attrs.get("end_reason", "")
        for t in study.trials
    }
    assert reasons[(1, 1)].startswith("pruned by median") and "diverged" in reasons[(3, 1)]
    runs = mlflow_runs(results, "mlp:mlp__tiny")
    trial_runs = {(r.data.params.get("kr"), r.data.params.get("kl")): r for r in runs["trial"]}
    pruned, failed = trial_runs[("1", "1")], trial_runs[("3", "20")]
    assert pruned.info.status == "KILLED" and pruned.data.tags["optuna.trial_state"] == "PRUNED"
    assert pruned.data.tags[END_REASON].startswith("pruned by median at evaluation 1")
    assert failed.info.status == "FAILED" and failed.data.tags["optuna.trial_state"] == "FAIL"
    assert "diverged" in failed.data.tags[END_REASON]
    assert re.search(r"CartPole-v1 seed \d+: diverged", failed.data.tags[END_REASON])  # which run
    assert trial_runs[("1", "20")].info.status == "FINISHED"
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    # The pruned trial's curve up to the evaluation that pruned it, as for complete trials.
    assert "curve.png" in {a.path for a in client.list_artifacts(pruned.info.run_id)}
    history = client.get_metric_history(pruned.info.run_id, "eval/score_mean")
    assert [m.step for m in history] == [100]
    for trial_run in (pruned, failed):
        (seed_run,) = [
            r for r in runs["seed"] if r.data.tags["mlflow.parentRunId"] == trial_run.info.run_id
        ]
        assert seed_run.info.status == trial_run.info.status
        assert seed_run.data.tags[END_REASON]
    (parent,) = runs["study"]
    assert parent.info.status == "FINISHED" and parent.data.tags["best.kl"] == "20"


def test_pruning_judges_the_mean_over_seeds_not_the_first_seed(tmp_path, results):
    """Baseline: 50 on both seeds. Searched trial: 90 on the first seed, 0 on the second.

    Reported seed after seed (the evaluation index running on), the first seed's 90 would
    shield the trial: the median pruner compares a trial's best value so far. In lockstep it
    reports the mean over seeds, 45 < 50, and is pruned at its first evaluation.
    """
    lucky = run_seeds(0, 2)[0]
    factory = fake_runs(
        lambda cfg, step: (
            50.0 if cfg.target.rule == "hardcopy" else (90.0 if cfg.seed == lucky else 0.0)
        )
    )
    pruning = {"min_evals": 1, "startup_trials": 1, "min_trials": 1, "patience": 0}
    study_file = write_study(
        tmp_path, baselines=["mlp"], space={"kl": [2]}, trials=1, pruning=pruning
    )
    assert main(["--study", str(study_file), "--results", str(results)], run_factory=factory) == 0
    baseline, searched = load(results, "mlp:mlp__tiny").trials
    assert baseline.state.name == "COMPLETE" and baseline.intermediate_values == {
        100: 50.0,
        200: 50.0,
        300: 50.0,
    }  # by agent step
    assert searched.state.name == "PRUNED" and searched.intermediate_values == {100: 45.0}
    assert "mean score 45 over 2 runs" in searched.user_attrs["end_reason"]

    # The old rule on the same scores: the trial is never pruned.
    old = optuna.create_study(
        direction="maximize",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_min_trials=1),
    )
    first = old.ask()
    for i in range(6):
        first.report(50.0, i)
    old.tell(first, 50.0)
    second, pruned = old.ask(), False
    for i, value in enumerate([90.0] * 3 + [0.0] * 3):
        second.report(value, i)
        pruned |= second.should_prune()
    assert not pruned


def _noise(cfg, step):
    """Every arm is worth 50; seeds and settings add up to +-10 of deterministic noise."""
    kl = cfg.target.kl if cfg.target.rule == "replicate" else 0
    return 50.0 + (cfg.seed * 7919 + kl * 104729) % 21 - 10


def test_confirmation_reruns_the_chosen_arms_on_fresh_seeds(tmp_path, results, capsys):
    study_file = write_study(
        tmp_path, baselines=["mlp"], space={"kl": [1, 2, 3, 4]}, sampler="grid", trials=4
    )
    argv = ["--study", str(study_file), "--results", str(results), "--confirm", "3"]
    assert main(argv, run_factory=fake_runs(_noise)) == 0
    out = capsys.readouterr().out
    study = load(results, "mlp:mlp__tiny")
    records = study.user_attrs["confirmation"]
    assert set(records) == {"mlp:mlp", "mlp:mlp@hardcopy"}
    searched = [t for t in study.trials if "baseline" not in t.user_attrs]
    best = max(searched, key=lambda t: t.value)
    assert records["mlp:mlp"]["trial"] == best.number
    assert records["mlp:mlp"]["selection"] == best.value
    seeds = records["mlp:mlp"]["seeds"]
    assert len(seeds) == 3 and not set(seeds) & set(run_seeds(0, 2))  # fresh seeds
    kl = best.params["kl"]
    expected = [_noise(tiny(target={"kl": kl}, seed=s), 300) for s in seeds]
    assert records["mlp:mlp"]["scores"] == {"CartPole-v1": expected}
    # The search picked the luckiest of four equal arms: its selection score is biased up.
    assert best.value > sum(expected) / 3

    runs = mlflow_runs(results, "mlp:mlp__tiny")
    confirm = runs["confirm"]
    parents = [r for r in confirm if "seed" not in r.data.tags]
    assert len(parents) == 2 and len(confirm) == 2 + 2 * 3
    assert all(r.info.status == "FINISHED" for r in confirm)
    (study_run,) = runs["study"]
    assert {r.data.tags["mlflow.parentRunId"] for r in parents} == {study_run.info.run_id}
    # All four arms are worth the same: the confirmed comparison must not name a winner.
    assert study_run.data.tags["confirm.best"].startswith("tie: ")
    assert "confirmed: no winner" in out and "confirmed mlp:mlp: IQM" in out
    rows = MlflowClient(f"sqlite:///{results / 'mlflow.db'}").download_artifacts(
        study_run.info.run_id, "confirmation.csv", str(tmp_path)
    )
    assert "diff_low" in Path(rows).read_text()

    # Running the command again confirms nothing twice.
    assert main([*argv, "--trials", "0"], run_factory=fake_runs(_noise)) == 0
    assert len(mlflow_runs(results, "mlp:mlp__tiny")["confirm"]) == len(confirm)


def test_constant_objective_names_no_winner_and_skips_its_figures(tmp_path, results, capsys):
    study_file = write_study(tmp_path, baselines=["mlp"], space={"kl": [1, 2]}, trials=2)
    factory = fake_runs(lambda cfg, step: 9.0)
    assert main(["--study", str(study_file), "--results", str(results)], run_factory=factory) == 0
    assert "search: no winner, trials" in capsys.readouterr().out
    (parent,) = mlflow_runs(results, "mlp:mlp__tiny")["study"]
    assert parent.data.tags["best.tie"] == "0, 1, 2"
    skipped = parent.data.tags["figures.skipped"]
    assert "param_importances.png: objective constant (3 complete trials all scored 9)" in skipped
    assert "intermediate_values.png: every intermediate value is 9" in skipped


def test_a_study_that_cannot_fit_in_memory_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("hetero_lr.study.cli.available_memory", lambda: 1_000)
    study_file = write_study(tmp_path)
    code = main(["--study", str(study_file), "--results", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and not (tmp_path / "results").exists()
    assert "2 seeds x 1 environment(s)" in err and "lower --seeds or agent.buffer_size" in err


@pytest.mark.slow
def test_quickstart_study_completes_at_a_reduced_size(tmp_path, results, capsys):
    """The README's main job, shortened: its study file, real MinAtar runs, two seeds."""
    argv = ["--study", str(REPO / "studies" / "quickstart.yaml"), "--results", str(results)]
    assert main([*argv, "--steps", "1500", "--trials", "1", "--record-video", "1"]) == 0
    out = capsys.readouterr().out
    assert (
        "MinAtar/Breakout-v1: normalised score (breakout: random 0.372" in out
        and "a random policy scores" in out
    )
    study = load(results, "minatar:mlp__quickstart")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert all(len(t.user_attrs["run_scores"]) == 2 for t in study.trials)
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    for run in mlflow_runs(results, "minatar:mlp__quickstart")["seed"]:  # one evaluation each
        videos = client.list_artifacts(run.info.run_id, "videos")
        assert [v.path for v in videos] == ["videos/step000001500_episode0.mp4"]


def test_mlflow_view_of_a_study(tmp_path, results):
    """What `mlflow ui` shows: names, descriptions, provenance tags, the best run, `objective`
    at every level, agent steps on every curve, only the settings a run used, artifacts."""
    study_file = write_study(tmp_path, baselines=["mlp"], space={"kl": [2, 4]}, trials=2)
    argv = ["--study", str(study_file), "--results", str(results)]
    assert main(argv, run_factory=fake_runs(_noise)) == 0
    runs = mlflow_runs(results, "mlp:mlp__tiny")
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    (study_run,) = runs["study"]
    study = load(results, "mlp:mlp__tiny")
    for run in [study_run, *runs["trial"], *runs["seed"]]:
        tags = run.data.tags
        assert tags["mlflow.note.content"] and "Running." not in tags["mlflow.note.content"]
        assert tags["mlflow.source.name"] == "hetero_lr.study" and tags["mlflow.user"]
        assert "objective" in run.data.metrics
    for trial in study.trials:
        (run,) = [r for r in runs["trial"] if r.info.run_id == trial.user_attrs["mlflow_run_id"]]
        shown = "".join(f" kl={v}" for k, v in trial.params.items() if k == "kl")
        name = f"t{trial.number:04d} [{trial.value:.3g}] {trial.user_attrs['pairing']}{shown}"
        assert run.info.run_name == name
        assert run.data.tags["mlflow.note.content"].endswith(
            f"COMPLETE: objective {trial.value:.4g}"
        )
        assert run.data.metrics["objective"] == readable(trial.value)
        (objective,) = client.get_metric_history(run.info.run_id, "objective")
        assert objective.step == 300  # agent steps, as on the seed runs
        params = run.data.params
        if "baseline" in trial.user_attrs:
            assert "target.kr" not in params and params["target.period"] == "2000"
        else:
            assert params["target.kl"] == str(trial.params["kl"]) and "target.period" not in params
        assert {"curve.png", "config.json"} <= {
            a.path for a in client.list_artifacts(run.info.run_id)
        }
        config = json.loads(
            Path(client.download_artifacts(run.info.run_id, "config.json")).read_text()
        )
        assert config["run_seeds"] == list(run_seeds(0, 2))
        # The storage's record, without where it ran (device, threads), is the same settings.
        assert recorded_config(study, trial).items() <= config.items()
        history = client.get_metric_history(run.info.run_id, "eval/score_mean")
        # agent steps; the values the pruner saw
        shown = {step: readable(value) for step, value in trial.intermediate_values.items()}
        assert {m.step: m.value for m in history} == shown
    marked = [r for r in runs["trial"] if r.data.tags.get("best")]
    if study_run.data.tags["best.tie"] == "no":
        (winner,) = marked
        assert winner.data.tags["best"] == "yes"
        assert winner.info.run_id == study.best_trial.user_attrs["mlflow_run_id"]
        assert f"/runs/{winner.info.run_id})" in study_run.data.tags["mlflow.note.content"]
    else:
        assert {r.data.tags["best"] for r in marked} == {"tie"} and len(marked) > 1
    for run in runs["seed"]:
        k = run_seeds(0, 2).index(int(run.data.tags["seed"]))
        score = run.data.metrics["objective"]
        assert run.info.run_name == f"s{k} [{score:.3g}] seed={run.data.tags['seed']}"
    assert "results.json" in {a.path for a in client.list_artifacts(study_run.info.run_id)}


def test_each_trial_run_carries_its_interval_and_its_difference_to_the_baseline(
    tmp_path, results, capsys
):
    """Trial runs log `objective_ci_*` and, against the family's HardCopy baseline, the paired
    `delta_vs_baseline` with its interval and `p_improvement`; the study says it in words."""
    study_file = write_study(tmp_path, baselines=["mlp"], space={"kl": [2, 4]}, trials=2, seeds=3)
    argv = ["--study", str(study_file), "--results", str(results)]
    assert main(argv, run_factory=fake_runs(_noise)) == 0
    runs = mlflow_runs(results, "mlp:mlp__tiny")
    study = load(results, "mlp:mlp__tiny")
    base = next(t for t in study.trials if t.user_attrs["pairing"] == "mlp:mlp@hardcopy")
    by_id = {r.info.run_id: r for r in runs["trial"]}
    seeds = study.user_attrs["settings"]["run_seeds"]
    for trial in study.trials:
        metrics = by_id[trial.user_attrs["mlflow_run_id"]].data.metrics
        assert metrics["objective_ci_low"] <= trial.value <= metrics["objective_ci_high"]
        if trial.number == base.number:
            assert "delta_vs_baseline" not in metrics
            continue
        tags = by_id[trial.user_attrs["mlflow_run_id"]].data.tags
        assert tags["baseline"] == base.user_attrs["mlflow_run_id"]
        scores = dict(zip(seeds, trial.user_attrs["run_scores"], strict=True))
        base_scores = dict(zip(seeds, base.user_attrs["run_scores"], strict=True))
        a = [[scores[s] for s in sorted(seeds)]]
        b = [[base_scores[s] for s in sorted(seeds)]]
        diff, low, high = difference_ci(a, b, np.mean, paired=True, reps=5_000)
        assert metrics["delta_vs_baseline"] == pytest.approx(diff, rel=1e-3)
        assert metrics["delta_vs_baseline_ci_low"] == pytest.approx(low, rel=1e-3)
        assert metrics["delta_vs_baseline_ci_high"] == pytest.approx(high, rel=1e-3)
        assert 0 <= metrics["p_improvement"] <= 1
    (study_run,) = runs["study"]
    assert "vs its baseline" in study_run.data.tags["mlflow.note.content"]
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    assert "comparison.json" in [a.path for a in client.list_artifacts(study_run.info.run_id)]
    assert "vs its baseline" in capsys.readouterr().out


def test_every_study_ends_with_its_report_on_the_study_run(tmp_path, results):
    """`report.html` on the study run: the verdict, a row per complete trial linking its run in
    the machine-learning view with its interval and its difference to the baseline, and the
    curves (one embedded figure, drawn from each trial run's `curves.json`)."""
    study_file = write_study(tmp_path, baselines=["mlp"], space={"kl": [2, 4]}, trials=2, seeds=3)
    argv = ["--study", str(study_file), "--results", str(results)]
    assert main(argv, run_factory=fake_runs(_noise)) == 0
    runs = mlflow_runs(results, "mlp:mlp__tiny")
    study = load(results, "mlp:mlp__tiny")
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    (study_run,) = runs["study"]
    page = Path(client.download_artifacts(study_run.info.run_id, "report.html")).read_text()
    assert "vs its baseline" in page and "Δ vs baseline [95% CI]" in page
    links = [link for link in re.findall(r'href="([^"]+)"', page) if not link.startswith("#")]
    for trial in study.trials:
        run_id = trial.user_attrs["mlflow_run_id"]
        assert any(run_id in link for link in links)
        curves = json.loads(Path(client.download_artifacts(run_id, "curves.json")).read_text())
        assert curves["steps"] == [100, 200, 300] and len(curves["runs"]) == 3
        mean = np.mean(list(curves["runs"].values()), axis=0)
        assert dict(zip(curves["steps"], mean, strict=True)) == pytest.approx(
            trial.intermediate_values
        )
    assert links and all("workflowType=machine_learning" in link for link in links)
    assert page.count("data:image/png;base64,") == 1
    searched = [t for t in study.trials if "@" not in t.user_attrs["pairing"]]
    for trial in searched:  # each searched trial's row shows its difference to the baseline
        assert f"{trial.user_attrs['pairing']}</td><td>kl={trial.params['kl']}</td>" in page


def test_optuna_dashboard_reads_the_journal_and_links_mlflow(tmp_path, results):
    """`optuna-dashboard RESULTS/optuna.journal` (the README's command) serves the study, and
    each trial carries its MLflow run id and experiment for cross-reference."""
    import json
    import socket
    import time
    import urllib.request

    study_file = write_study(tmp_path, trials=1)
    assert (
        main(["--study", str(study_file), "--results", str(results)], run_factory=fake_train) == 0
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    journal = str(results / "optuna.journal")
    server = subprocess.Popen(
        ["optuna-dashboard", journal, "--port", str(port), "--host", "127.0.0.1", "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/api/studies"
        for _ in range(100):
            try:
                studies = json.load(urllib.request.urlopen(url, timeout=2))["study_summaries"]
                break
            except OSError:
                time.sleep(0.2)
        (listed,) = studies
        assert listed["study_name"] == "mlp:mlp__tiny"
        detail_url = f"{url}/{listed['study_id']}?after=0"
        detail = json.load(urllib.request.urlopen(detail_url, timeout=5))
        attrs = {a["key"]: a["value"] for a in detail["trials"][0]["user_attrs"]}
        runs = mlflow_runs(results, "mlp:mlp__tiny")["trial"]
        assert attrs["mlflow_run_id"] in {r.info.run_id for r in runs}
        assert attrs["experiment"] == runs[0].info.experiment_id
        # The value has a name, the study and each trial a note linking their MLflow run.
        assert detail["objective_names"] == ["objective"]  # study.set_metric_names
        assert detail["note"]["body"].startswith("tiny")
        body = detail["trials"][0]["note"]["body"]
        assert "objective" in body and "#/experiments/" in body and "workflowType" in body
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_resume_adds_trials_and_keeps_finished_ones(tmp_path, results, capsys):
    study_file = write_study(
        tmp_path, baselines=["mlp"], space={"target.lr": {"float": [1e-5, 1e-3], "log": True}}
    )
    argv = ["--study", str(study_file), "--results", str(results)]
    assert main(argv, run_factory=fake_train) == 0
    before = [
        (t.number, t.state, t.value, t.params, t.datetime_complete)
        for t in load(results, "mlp:mlp__tiny").trials
    ]
    assert len(before) == 3
    assert main(argv, run_factory=fake_train) == 0  # the same command again
    after = load(results, "mlp:mlp__tiny").trials
    assert [
        (t.number, t.state, t.value, t.params, t.datetime_complete) for t in after[:3]
    ] == before
    assert [t.number for t in after] == [0, 1, 2, 3, 4]
    assert [t.user_attrs.get("baseline") for t in after].count("mlp:mlp@hardcopy") == 1
    old_lrs = {t.params.get("target.lr") for t in after[:3]}
    assert not old_lrs & {t.params["target.lr"] for t in after[3:]}  # fresh samples
    runs = mlflow_runs(results, "mlp:mlp__tiny")
    assert len(runs["study"]) == 1 and len(runs["trial"]) == 5

    # Other settings under the same name: refused, nothing written.
    journal = (results / "optuna.journal").read_bytes()
    capsys.readouterr()
    assert main([*argv, "--steps", "200"], run_factory=fake_train) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "config.steps" in err
    assert (results / "optuna.journal").read_bytes() == journal


@pytest.mark.parametrize(
    ("args", "study", "message"),
    [
        (["--pair", "impala"], None, "bad pair 'impala'"),
        (["--pair", "impala:nature:mlp"], None, "exactly one ':'"),
        (["--pair", ":nature"], None, "bad pair ':nature'"),
        (["--pair", "impala:natur"], None, "unknown network 'natur'"),
        (["--pairs", "mlp:mlp,nature:mlp"], "tiny", "cannot take observations of shape (4,)"),
        (["--baselines", "mlp:nature@hardcopy"], "tiny", "same network on both sides"),
        (["--sampler", "cmaes"], "tiny", "unknown sampler 'cmaes'; accepted: tpe, random, grid"),
        (["--pruner", "sha"], "tiny", "unknown pruner 'sha'; accepted: median, hyperband"),
        (["--seeds", "0"], "tiny", "--seeds must be >= 1"),
        ([], {"space": {"kr": {"int": [0, 4]}}}, "search dimension 'kr': target.kr=0 must be >= 1"),
        ([], {"space": {"kl": [0, 1]}}, "search dimension 'kl': target.kl=0 must be >= 1"),
        ([], {"space": {"agent.lr": ["fast"]}}, "agent.lr='fast' is not a finite number"),
        ([], {"pruning": {"patience": -1}}, "pruning.patience=-1 must be >= 0"),
        ([], {"config": {"target": {"kl": 0}}}, "target.kl=0 must be >= 1"),
        ([], {"bogus": 1}, "unknown key 'bogus'"),
        ([], {"config": {"agent": {"lrr": 1}}}, "unknown AgentConfig key 'lrr'"),
        ([], {"space": {"target.variant": ["all"]}}, "target.variant='all'"),
        ([], {"sampler": "grid", "space": {"kl": {"int": [1, 8], "log": True}}}, "grid sampler"),
        ([], "missing", "cannot read study file"),
        ([], "not yaml", "not valid YAML"),
        (["--tracking-uri", "./mlruns"], "tiny", "file store"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    tmp_path, monkeypatch, capsys, args, study, message
):
    monkeypatch.chdir(tmp_path)
    if study == "tiny":
        args = [*args, "--study", str(write_study(tmp_path))]
    elif study == "missing":
        args = ["--study", str(tmp_path / "missing.yaml")]
    elif study == "not yaml":
        (tmp_path / "bad.yaml").write_text("space: [1, 2\n")
        args = ["--study", str(tmp_path / "bad.yaml")]
    elif isinstance(study, dict):
        args = [*args, "--study", str(write_study(tmp_path, **study))]
    before = sorted(os.listdir(tmp_path))
    code = main([*args, "--results", str(tmp_path / "results")], run_factory=fake_train)
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err
    assert sorted(os.listdir(tmp_path)) == before  # nothing written


def test_unknown_flag_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--pair", "impala:nature", "--trails", "3"])
    assert exc.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_unknown_storage_scheme_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    study_file = write_study(tmp_path)
    results = tmp_path / "results"
    args = ["--study", str(study_file), "--storage", "nosuchscheme://x", "--results", str(results)]
    code = main(args, run_factory=fake_train)
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "'nosuchscheme://x'" in err and "sqlite:///PATH" in err and "Traceback" not in err
    assert not results.exists()


def test_unknown_storage_scheme_exits_2_from_the_module_command(tmp_path):
    results = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hetero_lr.study",
            "--study",
            str(write_study(tmp_path)),
            "--storage",
            "nosuchscheme://x",
            "--results",
            str(results),
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert "nosuchscheme://x" in proc.stderr and not results.exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("results/optuna.journal", None),
        ("sqlite:///results/optuna.db", None),
        ("nosuchscheme://x", "unknown scheme 'nosuchscheme'"),
        ("sqlite+nosuchdriver:///x.db", "unknown scheme 'sqlite+nosuchdriver'"),
        ("://x", "not a database URL"),
    ],
)
def test_check_storage_url(url, message):
    if message is None:
        check_storage_url(url)
        return
    with pytest.raises(ValueError, match=re.escape(message)) as exc:
        check_storage_url(url)
    assert repr(url) in str(exc.value) and "\n" not in str(exc.value)


def test_console_script_help():
    script = Path(sysconfig.get_path("scripts")) / "hetero-lr-study"
    found = str(script) if script.exists() else shutil.which("hetero-lr-study")
    assert found, "the hetero-lr-study console script is not installed (pip install -e .)"
    proc = subprocess.run([found, "--help"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: hetero-lr-study") and "--storage" in proc.stdout


@pytest.mark.slow
def test_two_workers_lose_no_mlflow_writes(tmp_path, results):
    """Two local processes share the journal and the SQLite tracking store."""
    study_file = write_study(tmp_path, trials=4, seeds=1)
    assert main(["--study", str(study_file), "--results", str(results), "--workers", "2"]) == 0
    study = load(results, "mlp:mlp__tiny")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2  # both processes ran trials
    runs = mlflow_runs(results, "mlp:mlp__tiny")
    assert len(runs["trial"]) == 4 and len(runs["seed"]) == 4
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    for run in runs["trial"] + runs["seed"]:
        assert run.info.status == "FINISHED"
    for run in runs["seed"]:
        history = client.get_metric_history(run.info.run_id, "eval/return_mean")
        assert [m.step for m in history] == [100, 200, 300]
        assert len(run.data.params) > 50
    for run in runs["trial"]:
        history = client.get_metric_history(run.info.run_id, "eval/score_mean")
        assert sorted(m.step for m in history) == [100, 200, 300]


@pytest.mark.slow
def test_grid_points_are_queued_so_parallel_workers_never_share_one(tmp_path, results):
    """Two workers starting together on a grid: each point runs once, then nothing is left."""
    study_file = write_study(
        tmp_path, sampler="grid", space={"kr": [1, 2], "kl": [4]}, seeds=1, baselines="auto"
    )
    argv = ["--study", str(study_file), "--results", str(results), "--workers", "2"]
    assert main(argv) == 0
    study = load(results, "mlp:mlp__tiny")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    points = sorted((t.params["kr"], t.params["kl"]) for t in study.trials if t.params)
    assert points == [(1, 4), (2, 4)]
    assert [t.user_attrs["pairing"] for t in study.trials if not t.params] == ["mlp:mlp@hardcopy"]
    assert main(argv) == 0  # the grid is done: a second start adds no trial
    assert len(load(results, "mlp:mlp__tiny").trials) == 3


def test_dry_run_from_another_directory_uses_the_built_in_study(tmp_path):
    """The README's plain `--pair impala:nature` resolves the packaged default study."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "hetero_lr.study", "--pair", "impala:nature", "--dry-run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout[proc.stdout.index("study:") :])
    assert resolved["study_name"] == "impala:nature__default"
    assert resolved["study"]["pairings"] == ["impala:nature"]
    assert resolved["study"]["envs"] == ["ALE/Breakout-v5"]
    assert resolved["tracking_uri"] == f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"
    assert "impala:impala@hardcopy" in proc.stdout and "estimate" in proc.stdout
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# Study files, search space, scores


@pytest.mark.parametrize("path", sorted((REPO / "studies").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_study_files_load(path):
    spec = load_study(path)
    assert spec.pairings and spec.space
    if spec.sampler == "grid":
        assert len(spec.grid()) >= 2


def test_minatar_study_pairings_build_on_10x10_frames():
    spec = load_study(REPO / "studies" / "minatar.yaml")
    check_pairings(spec, probe_envs(spec))  # every family takes MinAtar's frames


def test_suggest_samples_and_converts():
    spec = load_study(REPO / "studies" / "minatar.yaml")
    trial = optuna.trial.FixedTrial({"pair": "impala:mlp", "kr": 2, "kl": 64, "target.lr": 3e-4})
    arm, cfg = suggest(trial, spec)
    assert arm == parse_arm("impala:mlp") and cfg.pair == "impala:mlp"
    assert (cfg.target.kr, cfg.target.kl, cfg.target.lr, cfg.target.rule) == (
        2,
        64,
        3e-4,
        "replicate",
    )
    assert cfg.env.id == "MinAtar/Breakout-v1" and cfg.agent.train_freq == 1  # preset kept


def test_study_values_are_typed_on_the_settings_path():
    """A study file's `config:` block and sampled values convert like `--set` values do."""
    from hetero_lr.study.spec import parse_study

    data = {
        "name": "typed",
        "config": {"agent": {"lr": "1e-4", "double": "yes"}, "steps": 1.0e3},
        "pairings": ["mlp:mlp"],
        "space": {"target.lr": {"float": [1.0e-5, 1.0e-3], "log": True}, "kr": [1, 2]},
    }
    spec = parse_study(data)
    assert (spec.base.agent.lr, spec.base.agent.double, spec.base.steps) == (1e-4, True, 1000)
    assert type(spec.base.steps) is int
    import numpy as np  # samplers may hand back NumPy scalars

    trial = optuna.trial.FixedTrial({"pair": "mlp:mlp", "target.lr": np.float64(2e-4), "kr": 2})
    _, cfg = suggest(trial, spec)
    assert type(cfg.target.lr) is float and cfg.target.lr == 2e-4
    with pytest.raises(ValueError, match=r"agent\.double='maybe' is not a boolean"):
        parse_study({**data, "config": {"agent": {"double": "maybe"}}})


def test_run_seeds_are_derived_and_prefix_stable():
    assert run_seeds(0, 3) == run_seeds(0, 5)[:3]
    assert run_seeds(0, 3) != run_seeds(1, 3)
    assert len(set(run_seeds(7, 10))) == 10


def test_scores_cover_atari_100k_and_fall_back_to_raw():
    for game in ATARI_100K_GAMES:
        transform, note = normalizer(f"ALE/{game}-v5")
        assert note.startswith("human-normalised")
    assert human_normalized(30.5, "breakout") == pytest.approx(1.0)
    assert human_normalized(-20.7, "pong") == pytest.approx(0.0)
    transform, note = normalizer("CartPole-v1")
    assert transform(3.0) == 3.0 and note.startswith("raw return")
    transform, note = normalizer("ALE/Tetris-v5")
    assert transform(3.0) == 3.0 and "no human/random reference scores for 'tetris'" in note
