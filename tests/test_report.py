"""The HTML study report: headline, pairing matrix, curves, aggregates, MLflow logging.

Two small real studies (scripted runs, no training) on MinAtar Breakout, where both the
`minatar` and the `mlp` family fit: one searched and confirmed, one with pre-registered arms.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from fake_runs import fake_runs
from scipy import stats

from analysis import aggregate, load_study_data
from analysis.aggregate import aggregate_intervals, performance_profile
from analysis.headline import Headline
from analysis.load import study_run
from analysis.report import aggregates_table, profiles_table, reference_scores_table, write_report
from analysis.report import main as report_main
from hetero_lr.scores import normalizer
from hetero_lr.stats import difference_ci, stratified_bootstrap_ci
from hetero_lr.study import main as study_main
from hetero_lr.study import run_seeds
from hetero_lr.study.confirm import confirm_seeds

BASE = {"minatar:minatar": 100.0, "mlp:mlp": 60.0}
"""Final score of each HardCopy baseline; Replicate arms score 10 * kl, + 20 with an MLP target."""


def final_score(pair: str, rule: str, kl: int, seed: int) -> float:
    """The scripted run's last evaluation (`seed % 5` spreads the seeds)."""
    base = BASE[pair] if rule == "hardcopy" else 10.0 * kl + (20.0 if pair.endswith(":mlp") else 0)
    return base + seed % 5


def _score(cfg, step):
    return final_score(cfg.pair, cfg.target.rule, cfg.target.kl, cfg.seed) * step / cfg.steps


STUDY = {
    "config": {
        "steps": 200,
        "eval_every": 100,
        "threads": 1,
        "env": {"id": "MinAtar/Breakout-v1", "num_envs": 1},
    },
    "envs": ["MinAtar/Breakout-v1"],
    "pairings": ["minatar:minatar", "minatar:mlp"],
    "seeds": 2,
    "sampler": "grid",
    "pruner": "none",
    "objective": {"last_evals": 1},
}


def _run_study(folder, name: str, diverges=lambda cfg: False, **spec) -> object:
    (folder / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, **STUDY, **spec}))
    results = folder / name
    argv = ["--study", str(folder / f"{name}.yaml"), "--results", str(results)]
    assert study_main(argv, run_factory=fake_runs(_score, diverges)) == 0
    return results


@pytest.fixture(scope="module")
def confirmed(tmp_path_factory):
    """A searched study (KL 1 or 4 per pairing), confirmed on 2 fresh seeds, and its report."""
    folder = tmp_path_factory.mktemp("confirmed")
    results = _run_study(
        folder,
        "searched",
        baselines=["minatar", "mlp"],
        space={"kr": [1], "kl": [1, 4]},
        trials=4,
        confirm=2,
    )
    out = folder / "report"
    assert report_main(["--results", str(results), "--out", str(out), "--reps", "2000"]) == 0
    return results, out


@pytest.fixture(scope="module")
def preregistered(tmp_path_factory):
    """One fixed setting per arm, no confirmation: each arm has exactly one trial."""
    folder = tmp_path_factory.mktemp("prereg")
    results = _run_study(folder, "fixed", baselines=["minatar"], space={"kr": [1], "kl": [4]})
    out = folder / "report"
    assert report_main(["--results", str(results), "--out", str(out), "--reps", "2000"]) == 0
    return results, out


NORM = normalizer("MinAtar/Breakout-v1")[0]


def _confirm_scores(pair: str, rule: str, kl: int) -> list[float]:
    """Normalised confirmation scores, in seed order (as arms pair up)."""
    seeds = sorted(confirm_seeds(0, 2, run_seeds(0, 2)))
    return [NORM(final_score(pair, rule, kl, s)) for s in seeds]


def test_curves_hold_each_arm_with_its_seeds(confirmed):
    _, out = confirmed
    curves = pd.read_csv(out / "curves.csv")
    learning = curves[curves["figure"] == "learning_curves.png"]
    arms = {"minatar:minatar", "minatar:mlp", "minatar:minatar@hardcopy", "mlp:mlp@hardcopy"}
    assert set(learning["series"]) == arms
    assert set(learning["step"]) == {100, 200}
    assert set(learning["seeds"]) == {2} and set(learning["runs"]) == {2}
    last = learning[learning["step"] == 200].set_index("series")
    expected = np.mean(_confirm_scores("minatar:mlp", "replicate", 4))  # the chosen KL is 4
    assert last.loc["minatar:mlp", "mean"] == pytest.approx(expected)
    assert (last["low"] <= last["mean"]).all() and (last["mean"] <= last["high"]).all()
    for figure in ("gap_curves.png", "td_loss_curves.png"):
        assert set(curves[curves["figure"] == figure]["series"]) == arms
    # Per KR/KL setting: the search runs of both settings of each pairing, on the search seeds.
    per_setting = curves[curves["figure"] == "setting_curves.png"]
    assert set(per_setting["series"]) == {
        f"{p} kr=1 kl={kl}" for p in ("minatar:minatar", "minatar:mlp") for kl in (1, 4)
    }
    assert set(per_setting["seeds"]) == {2}
    final = per_setting[per_setting["step"] == 200].set_index("series")
    search = [NORM(final_score("minatar:minatar", "replicate", 1, s)) for s in run_seeds(0, 2)]
    assert final.loc["minatar:minatar kr=1 kl=1", "mean"] == pytest.approx(np.mean(search))


def test_pairing_matrix_has_baselines_on_the_diagonal(confirmed):
    _, out = confirmed
    matrix = pd.read_csv(out / "pairing_matrix.csv").set_index("arm")
    baseline = _confirm_scores("minatar:minatar", "hardcopy", 4)
    same = _confirm_scores("minatar:minatar", "replicate", 4)
    hetero = _confirm_scores("minatar:mlp", "replicate", 4)
    diagonal = matrix.loc["minatar:minatar@hardcopy"]
    assert (diagonal["online"], diagonal["target"], diagonal["rule"]) == (
        "minatar",
        "minatar",
        "hardcopy",
    )
    assert diagonal["iqm"] == pytest.approx(stats.trim_mean(baseline, 0.25))
    assert pd.isna(diagonal["diff"])
    assert tuple(matrix.loc["mlp:mlp@hardcopy", ["online", "target"]]) == ("mlp", "mlp")
    off = matrix.loc["minatar:mlp"]
    assert (off["online"], off["target"]) == ("minatar", "mlp")
    assert off["baseline"] == "minatar:minatar@hardcopy"
    diff, low, high = difference_ci([hetero], [baseline], paired=True)
    assert off["design"] == "paired"
    assert off["diff"] == pytest.approx(diff) == pytest.approx(np.mean(hetero) - np.mean(baseline))
    assert (off["diff_low"], off["diff_high"]) == pytest.approx((low, high))
    assert matrix.loc["minatar:minatar", "diff"] == pytest.approx(np.mean(same) - np.mean(baseline))
    # Every cell names its MLflow run; the text matrix puts arms in their row and column.
    assert matrix["mlflow_run_id"].str.fullmatch(r"[0-9a-f]{32}").all()
    report = (out / "report.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| minatar | HardCopy"))
    assert "LR " in row.split("|")[2] and "diff" in row.split("|")[3]


def test_aggregates_match_a_direct_bootstrap():
    scores = [[0.1, 0.5, 0.9, 1.4], [2.0, 0.2, 0.3]]  # two games, unequal runs
    got = aggregate_intervals(scores, reps=3_000, seed=7)
    rng = np.random.default_rng(7)
    draws = [np.asarray(t)[rng.integers(0, len(t), size=(3_000, len(t)))] for t in scores]
    pooled = np.concatenate(draws, axis=1)
    task_means = np.stack([d.mean(axis=1) for d in draws], axis=1)
    direct = {
        "iqm": stats.trim_mean(pooled, 0.25, axis=1),
        "median": np.median(task_means, axis=1),
        "mean": task_means.mean(axis=1),
        "optimality_gap": 1 - np.minimum(pooled, 1).mean(axis=1),
    }
    flat = np.concatenate(scores)
    estimates = {
        "iqm": stats.trim_mean(flat, 0.25),
        "median": np.median([np.mean(t) for t in scores]),
        "mean": np.mean([np.mean(t) for t in scores]),
        "optimality_gap": 1 - np.minimum(flat, 1).mean(),
    }
    for metric, values in direct.items():
        low, high = np.percentile(values, [2.5, 97.5])
        assert got[metric] == pytest.approx((estimates[metric], low, high)), metric
    # Same draws as hetero_lr.stats: the IQM interval agrees with the headline's.
    assert got["iqm"] == pytest.approx(stratified_bootstrap_ci(scores, reps=3_000, seed=7))
    profile = performance_profile(scores, [0.0, 0.4, 1.0, 3.0], reps=500, seed=3)
    assert profile["fraction"].tolist() == pytest.approx([1.0, 4 / 7, 2 / 7, 0.0])
    assert profile["low"].iloc[0] == profile["high"].iloc[0] == 1.0  # every run above 0
    assert (profile["low"] <= profile["fraction"]).all()
    assert (profile["fraction"] <= profile["high"]).all()
    assert profile["high"].iloc[2] > profile["low"].iloc[2]


def test_html_is_self_contained_and_logged_to_the_study_run(confirmed):
    results, out = confirmed
    page = (out / "report.html").read_text()
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"(href|src)=\"(https?:)?//", page)
    for figure in ("learning_curves", "pairing_matrix", "performance_profiles", "kr_kl_heatmap"):
        assert f'alt="{figure}"' in page, figure
    assert "Pairing matrix" in page and "Confirmed scores" in page
    data = load_study_data(results)
    run_id = study_run(data)
    assert run_id == data.study.user_attrs["mlflow_study_run_id"]
    assert data.client.get_run(run_id).data.tags["hetero_lr.role"] == "study"
    logged = {a.path for a in data.client.list_artifacts(run_id, "report")}
    assert {"report/report.html", "report/pairing_matrix.png", "report/report.md"} <= logged
    local = data.client.download_artifacts(run_id, "report/report.html", str(out.parent))
    assert Path(local).read_text() == page


def test_preregistered_arms_make_the_headline(preregistered):
    results, out = preregistered
    report = (out / "report.md").read_text()
    assert "pre-registered arms: no selection, so no winner's curse" in report.lower()
    assert "Confirmed scores" not in report
    headline = pd.read_csv(out / "headline.csv").set_index("arm")
    assert set(headline.index) == {"minatar:minatar", "minatar:mlp", "minatar:minatar@hardcopy"}
    assert "selection" not in headline.columns and "objective" in headline.columns
    data = load_study_data(results)
    trials = {t.user_attrs["pairing"]: t for t in data.study.trials}
    for arm, row in headline.iterrows():
        scores = trials[arm].user_attrs["run_scores"]
        assert row["runs"] == 2 and row["trial"] == trials[arm].number
        assert row["iqm"] == pytest.approx(stats.trim_mean(scores, 0.25))
        assert row["mlflow_run_id"] == trials[arm].user_attrs["mlflow_run_id"]
    assert headline.loc["minatar:mlp", "diff"] == pytest.approx(
        np.mean(trials["minatar:mlp"].user_attrs["run_scores"])
        - np.mean(trials["minatar:minatar@hardcopy"].user_attrs["run_scores"])
    )
    runs = pd.read_csv(out / "headline_runs.csv")
    assert len(runs) == 3 * 2 and set(runs["seed"]) == set(run_seeds(0, 2))
    curves = pd.read_csv(out / "curves.csv")
    learning = curves[curves["figure"] == "learning_curves.png"]
    assert set(learning["series"]) == set(headline.index) and set(learning["seeds"]) == {2}
    assert "setting_curves.png" not in set(curves["figure"])  # one setting per pairing


def test_a_preregistered_arm_that_diverged_is_listed_without_a_score(tmp_path):
    same_arch_lr = lambda cfg: cfg.pair == "minatar:minatar" and cfg.target.rule == "replicate"  # noqa: E731
    results = _run_study(
        tmp_path, "fixed", same_arch_lr, baselines=["minatar"], space={"kr": [1], "kl": [4]}
    )
    out = tmp_path / "report"
    assert report_main(["--results", str(results), "--out", str(out), "--reps", "500"]) == 0
    report = (out / "report.md").read_text()
    assert "pre-registered arms: no selection" in report.lower()  # a failure selects nothing
    assert "Failed, no score: minatar:minatar (trial" in report and "mean |Q|" in report
    headline = pd.read_csv(out / "headline.csv").set_index("arm")
    assert set(headline.index) == {"minatar:mlp", "minatar:minatar@hardcopy"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--results", "{tmp}/nowhere"], "no Optuna journal at"),
        (["--tracking-uri", "sqlite:///{tmp}/none.db"], "no MLflow database at"),
        (["--tracking-uri", "bogus://x"], "cannot read MLflow at bogus://x"),
        (["--storage", "bogus://x"], "unknown scheme"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(preregistered, tmp_path, capsys, args, message):
    results, _ = preregistered
    argv = ["--results", str(results), "--out", str(tmp_path / "r")]
    argv += [a.format(tmp=tmp_path) for a in args]
    assert report_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "r").exists() and not (tmp_path / "none.db").exists()


def test_atari_aggregates_and_reference_scores():
    records = {
        arm: {
            "trial": k,
            "selection": 0.0,
            "seeds": [1, 2, 3],
            "scores": {"ALE/Pong-v5": pong, "ALE/Defender-v5": defender},
            "failed": [],
            "mlflow_run_id": f"run{k}",
        }
        for k, (arm, pong, defender) in enumerate(
            [
                ("nature:nature@hardcopy", [0.2, 1.5, 0.9], [0.1, 0.4, 2.0]),
                ("nature:mlp", [0.3] * 3, [0.6] * 3),
            ]
        )
    }
    headline = Headline("confirmed", records, pd.DataFrame())
    table = aggregates_table(headline, atari=True, reps=1_000).set_index(["arm", "metric"])
    assert set(table.index.get_level_values("metric")) == {
        "iqm",
        "median",
        "mean",
        "optimality_gap",
    }
    gap = table.loc[("nature:nature@hardcopy", "optimality_gap")]
    flat = np.array([0.2, 1.5, 0.9, 0.1, 0.4, 2.0])
    assert gap["estimate"] == pytest.approx(1 - np.minimum(flat, 1).mean())
    assert gap["low"] <= gap["estimate"] <= gap["high"] and gap["mlflow_run_id"] == "run0"
    flat_arm = table.loc[("nature:mlp", "median")]
    assert flat_arm["estimate"] == pytest.approx(0.45) and flat_arm["low"] == flat_arm["high"]
    raw = aggregates_table(headline, atari=False, reps=1_000)
    assert "optimality_gap" not in set(raw["metric"])
    profiles = profiles_table(headline, atari=True, reps=200)
    assert set(profiles["task"]) == {"all games"}
    assert set(profiles_table(headline, atari=False, reps=200)["task"]) == {
        "ALE/Pong-v5",
        "ALE/Defender-v5",
    }
    refs = reference_scores_table(["ALE/Pong-v5", "ALE/Defender-v5", "CartPole-v1"])
    refs = refs.set_index("game")
    assert list(refs.index) == ["defender", "pong"]
    assert (refs.loc["pong", "random"], refs.loc["pong", "reference"]) == (-20.7, 14.6)
    assert "Dopamine" in refs.loc["pong", "reference source"]
    assert "Agent57" in refs.loc["defender", "reference source"]
    minatar = reference_scores_table(["MinAtar/Seaquest-v1"]).set_index("game")
    assert (minatar.loc["seaquest", "random"], minatar.loc["seaquest", "reference"]) == (0.09, 20.0)


EQUAL_RUNS = [
    list(np.random.default_rng(k).normal(mean, 0.5, size=8)) for k, mean in enumerate((0.2, 1, 3))
]
"""Three tasks with 8 runs each and far-apart means (a resampling that ignored the tasks would
widen the intervals)."""


def _without_rliable(monkeypatch):
    """Make `import rliable` fail as it does when the package is not installed."""
    for name in ("rliable", "rliable.library", "rliable.metrics"):
        monkeypatch.setitem(sys.modules, name, None)


def test_report_names_the_implementation_and_falls_back_to_numpy(
    preregistered, tmp_path, monkeypatch
):
    data = load_study_data(preregistered[0])
    _without_rliable(monkeypatch)
    assert aggregate.implementation({"a": EQUAL_RUNS}) == "numpy (rliable not installed)"
    written = write_report(data, tmp_path, reps=500)
    assert "intervals: numpy (rliable not installed)" in written.html.read_text()
    # The page's numbers are the numpy ones (equal runs per task: rliable's data, were it there).
    table = pd.read_csv(tmp_path / "aggregates.csv").set_index(["arm", "metric"])
    for arm, record in written.headline.records.items():
        tasks = list(record["scores"].values())
        assert len({len(t) for t in tasks}) == 1
        expected = stratified_bootstrap_ci(tasks, reps=500, seed=0)
        assert tuple(table.loc[(arm, "iqm"), ["estimate", "low", "high"]]) == pytest.approx(
            expected
        )


def test_curves_of_several_games_get_a_panel_each_on_their_own_scale():
    from analysis import plots
    from analysis.curves import curve_bands

    rows = [
        {"pairing": arm, "env": env, "seed": seed, "step": step, "score": scale * step + seed}
        for arm in ("a:a@hardcopy", "a:b")
        for env, scale in (("Breakout", 1.0), ("SpaceInvaders", 10.0))
        for seed in (0, 1)
        for step in (1, 2)
    ]
    bands = curve_bands(pd.DataFrame(rows), by=["env", "pairing"], reps=200)
    assert len(bands) == 2 * 2 * 2 and set(bands["seeds"]) == {2}
    got = bands.set_index(["env", "pairing", "step"])["mean"]
    assert got[("SpaceInvaders", "a:b", 2)] == pytest.approx(20.5)  # 10 * 2 + mean seed 0.5
    fig = plots.learning_curves(bands, ylabel="return", panel="env")
    left, right = fig.axes
    assert [left.get_title(), right.get_title()] == ["Breakout", "SpaceInvaders"]
    assert [t.get_text() for t in right.get_legend().get_texts()] == ["a:a@hardcopy", "a:b"]
    assert right.get_ylim()[1] > 5 * left.get_ylim()[1]  # not one shared scale
