"""Arms of two studies side by side (`python -m analysis.compare`).

Two small real studies (scripted runs, no training) in one results folder, as the shipped
confirmation is made: one with a HardCopy baseline and an LR pairing at target lr 3e-4, one with
another LR pairing at target lr 1e-4 on the same seeds.
"""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from fake_runs import fake_runs
from scipy import stats

from analysis.compare import main as compare_main
from hetero_lr.scores import normalizer
from hetero_lr.stats import difference_ci, iqm
from hetero_lr.study import main as study_main
from hetero_lr.study import run_seeds

SEEDS = run_seeds(1, 3)
NORM = normalizer("MinAtar/Breakout-v1")[0]


def final_score(cfg) -> float:
    """HardCopy 100; LR 10 * kl, + 20 with an MLP target, - 5 at target lr 1e-4; + seed % 7."""
    if cfg.target.rule == "hardcopy":
        base = 100.0
    else:
        base = 10.0 * cfg.target.kl + 20.0 * cfg.pair.endswith(":mlp")
        base -= 5.0 * (cfg.target.lr < 2e-4)
    return base + cfg.seed % 7


def _score(cfg, step):
    return final_score(cfg) * step / cfg.steps


def _study(folder, name, target_lr, diverges=lambda cfg: False, **spec):
    body = {
        "name": name,
        "config": {
            "steps": 200,
            "eval_every": 100,
            "threads": 1,
            "env": {"id": "MinAtar/Breakout-v1", "num_envs": 1},
            "target": {"lr": target_lr},
        },
        "envs": ["MinAtar/Breakout-v1"],
        "seeds": 3,
        "seed": 1,
        "sampler": "grid",
        "pruner": "none",
        "objective": {"last_evals": 1},
        "space": {"kr": [1], "kl": [4]},
        **spec,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body))
    argv = ["--study", str(path), "--study-name", name, "--results", str(folder / "results")]
    assert study_main(argv, run_factory=fake_runs(_score, diverges)) == 0


@pytest.fixture(scope="module")
def two_studies(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compare")
    _study(folder, "fast", 3e-4, pairings=["minatar:mlp"], baselines=["minatar"])
    _study(folder, "slow", 1e-4, pairings=["minatar:minatar"], baselines="none")
    return folder


def _scores(pair: str, rule: str, lr: float) -> list[float]:
    target = SimpleNamespace(rule=rule, kl=4, lr=lr)
    return [
        final_score(SimpleNamespace(pair=pair, seed=s, target=target)) for s in sorted(SEEDS)
    ]  # seed order, as arms pair up


def test_arms_of_two_studies_share_one_table_and_one_baseline(two_studies, capsys):
    out = two_studies / "cmp"
    argv = ["--results", str(two_studies / "results"), "--study", "fast", "--study", "slow"]
    assert compare_main([*argv, "--out", str(out)]) == 0
    table = pd.read_csv(out / "comparison.csv").set_index("arm")
    assert set(table.index) == {"minatar:mlp", "minatar:minatar", "minatar:minatar@hardcopy"}
    assert table.loc["minatar:minatar", "study"] == "slow"
    assert table.loc["minatar:mlp", "study"] == "fast"
    assert set(table["kind"]) == {"pre-registered"}
    # The setting that differs between the arms is shown; a HardCopy arm has no learning rate.
    assert table.loc["minatar:minatar", "target.lr"] == pytest.approx(1e-4)
    assert table.loc["minatar:mlp", "target.lr"] == pytest.approx(3e-4)
    assert pd.isna(table.loc["minatar:minatar@hardcopy", "target.lr"])
    hardcopy = _scores("minatar:minatar", "hardcopy", 3e-4)
    expected = {
        "minatar:mlp": _scores("minatar:mlp", "replicate", 3e-4),
        "minatar:minatar": _scores("minatar:minatar", "replicate", 1e-4),
        "minatar:minatar@hardcopy": hardcopy,
    }
    raw = expected
    expected = {arm: [NORM(s) for s in scores] for arm, scores in raw.items()}
    for arm, scores in expected.items():
        assert table.loc[arm, "runs"] == 3
        assert table.loc[arm, "iqm"] == pytest.approx(stats.trim_mean(scores, 0.25))
        assert table.loc[arm, "mean MinAtar/Breakout-v1"] == pytest.approx(sum(scores) / 3)
        # Two scripted training episodes per run, at steps 100 and 200: half the evaluation
        # score there, so their mean is 3/8 of the final (raw) score.
        train = table.loc[arm, "train last100 MinAtar/Breakout-v1"]
        assert train == pytest.approx(sum(raw[arm]) / 3 * 3 / 8)
        assert table.loc[arm, "max mean abs Q"] == pytest.approx(1.0)  # step / steps at the end
    # The slow study has no baseline of its own: its arm is compared with the fast study's.
    hardcopy = expected["minatar:minatar@hardcopy"]
    diff, low, high = difference_ci([expected["minatar:minatar"]], [hardcopy], iqm, paired=True)
    row = table.loc["minatar:minatar"]
    assert row["baseline"] == "minatar:minatar@hardcopy" and row["design"] == "paired"
    assert (row["diff"], row["diff_low"], row["diff_high"]) == pytest.approx((diff, low, high))
    assert pd.isna(table.loc["minatar:minatar@hardcopy", "diff"])
    runs = pd.read_csv(out / "comparison_runs.csv")
    assert len(runs) == 9 and set(runs["seed"]) == set(SEEDS)
    assert dict(runs.groupby("arm")["study"].first()) == {
        "minatar:mlp": "fast",
        "minatar:minatar": "slow",
        "minatar:minatar@hardcopy": "fast",
    }
    curves = pd.read_csv(out / "comparison_curves.csv")
    learning = curves[curves["metric"] == "eval/return_mean"]
    assert set(learning["pairing"]) == set(expected) and set(learning["seeds"]) == {3}
    last = learning[learning["step"] == 200].set_index("pairing")["mean"]
    for arm, scores in expected.items():
        assert last[arm] == pytest.approx(sum(scores) / 3)
    assert (out / "learning_curves.png").stat().st_size > 0
    assert (out / "gap_curves.png").stat().st_size > 0
    page = (out / "comparison.html").read_text()
    assert "data:image/png;base64," in page and 'src="http' not in page
    printed = capsys.readouterr().out
    assert "minatar:minatar: IQM" in printed and "vs minatar:minatar@hardcopy -" in printed


def test_a_diverged_arm_is_named_without_a_score(tmp_path):
    lr = lambda cfg: cfg.target.rule == "replicate"  # noqa: E731
    _study(tmp_path, "fast", 3e-4, pairings=["minatar:mlp"], baselines=["minatar"])
    _study(tmp_path, "slow", 1e-4, lr, pairings=["minatar:minatar"], baselines="none")
    out = tmp_path / "cmp"
    argv = ["--results", str(tmp_path / "results"), "--study", "fast", "--study", "slow"]
    assert compare_main([*argv, "--out", str(out)]) == 0
    table = pd.read_csv(out / "comparison.csv")
    assert set(table["arm"]) == {"minatar:mlp", "minatar:minatar@hardcopy"}
    report = (out / "comparison.md").read_text()
    assert "minatar:minatar (slow:" in report and "mean |Q|" in report


@pytest.mark.parametrize(
    ("studies", "message"),
    [
        (["fast", "fast"], "study 'fast' is given twice"),
        (["fast", "again"], "arm 'minatar:minatar@hardcopy' is in studies 'fast' and 'again'"),
        (["fast", "searched"], "study 'searched' has neither confirmation runs nor pre-registered"),
        (["fast", "invaders"], "the studies ran different environments"),
        (["fast", "nothing"], "no study 'nothing'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(two_studies, tmp_path, capsys, studies, message):
    extra = {
        "again": {"pairings": ["minatar:impala"], "baselines": ["minatar"]},
        "searched": {
            "pairings": ["mlp:mlp"],
            "baselines": "none",
            "space": {"kr": [1], "kl": [1, 4]},
        },
        "invaders": {
            "pairings": ["minatar:impala"],
            "baselines": "none",
            "envs": ["MinAtar/SpaceInvaders-v1"],
        },
    }
    for name in studies:
        if name in extra and not (two_studies / f"{name}.yaml").exists():
            _study(two_studies, name, 3e-4, **extra[name])
    argv = ["--results", str(two_studies / "results"), "--out", str(tmp_path / "cmp")]
    for name in studies:
        argv += ["--study", name]
    assert compare_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "cmp").exists()
