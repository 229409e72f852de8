"""`hetero_lr.stats`: paired and unpaired comparisons, their coverage, and scipy's answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from hetero_lr.scores import normalizer
from hetero_lr.stats import (
    align,
    compare,
    difference_ci,
    holm,
    iqm,
    probability_of_improvement,
    randomization_test,
    stratified_bootstrap_ci,
    stratified_resamples,
)
from hetero_lr.study.summary import confirmation_table, per_env_table


def _null_arms(rng, seeds, envs, *, paired):
    """Equal arms per environment, noise growing 3x across environments; paired arms share a
    seed effect (the design of a study: every arm runs the same seeds)."""
    spread = np.geomspace(0.1, 0.3, envs)
    a, b = [], []
    for e in range(envs):
        seed_a = rng.normal(0, 0.15, seeds)
        seed_b = seed_a if paired else rng.normal(0, 0.15, seeds)
        a.append(0.5 + seed_a + rng.normal(0, spread[e], seeds))
        b.append(0.5 + seed_b + rng.normal(0, spread[e], seeds))
    return a, b


@pytest.mark.parametrize("paired", [True, False])
@pytest.mark.parametrize(("seeds", "envs"), [(3, 2), (3, 5), (5, 2), (5, 5)])
def test_difference_intervals_cover_at_their_nominal_rate(seeds, envs, paired):
    sims = 500
    rng = np.random.default_rng(seeds * 10 + envs + paired)
    covered = 0
    for i in range(sims):
        a, b = _null_arms(rng, seeds, envs, paired=paired)
        _, low, high = difference_ci(a, b, paired=paired, reps=1_000, seed=i)
        covered += low <= 0 <= high
    se = np.sqrt(0.95 * 0.05 / sims)
    # At least nominal within 3 simulation errors; not so wide that it says nothing.
    assert 0.95 - 3 * se <= covered / sims <= 0.995


def test_paired_interval_removes_the_shared_seed_effect():
    rng = np.random.default_rng(0)
    base = [rng.normal(0, 5, 5), rng.normal(10, 5, 5)]  # seed effects dominate
    better = [t + 1.0 + rng.normal(0, 0.05, 5) for t in base]
    _, p_low, p_high = difference_ci(better, base, np.mean, paired=True)
    _, u_low, u_high = difference_ci(better, base, np.mean, paired=False)
    assert 0 < p_low < 1.0 < p_high < 2  # the pairing sees the shift
    assert u_low < 0 < u_high and (u_high - u_low) > 5 * (p_high - p_low)


def test_paired_needs_matching_runs():
    with pytest.raises(ValueError, match="same run count"):
        difference_ci([[1.0, 2.0, 3.0]], [[1.0, 2.0]], paired=True)


def test_widened_interval_is_scipys_percentile_interval_times_the_t_factor():
    rng = np.random.default_rng(1)
    a, b = rng.normal(1, 1, 8), rng.normal(0, 1, 8)
    diff, low, high = difference_ci([a], [b], np.mean, paired=True, reps=100_000)
    ref = stats.bootstrap(
        (a, b),
        lambda x, y, axis: np.mean(x, axis=axis) - np.mean(y, axis=axis),
        paired=True,
        method="percentile",
        n_resamples=100_000,
        random_state=2,
        vectorized=True,
    ).confidence_interval
    factor = stats.t.ppf(0.975, 7) / stats.norm.ppf(0.975) * np.sqrt(8 / 7)
    assert diff == pytest.approx(np.mean(a - b))
    assert diff + (low - diff) / factor == pytest.approx(ref.low, abs=0.02)
    assert diff + (high - diff) / factor == pytest.approx(ref.high, abs=0.02)


def test_probability_of_improvement_is_the_mann_whitney_fraction():
    rng = np.random.default_rng(3)
    a = [rng.normal(1, 1, 5), rng.normal(30, 5, 4)]
    b = [rng.normal(0, 1, 5), rng.normal(31, 5, 4)]
    expected = np.mean(
        [stats.mannwhitneyu(x, y).statistic / (len(x) * len(y)) for x, y in zip(a, b, strict=True)]
    )
    estimate, low, high = probability_of_improvement(a, b, paired=False)
    assert estimate == pytest.approx(expected)
    assert 0 <= low <= estimate <= high <= 1


def test_sign_flip_test_is_scipys_exact_paired_permutation_test():
    rng = np.random.default_rng(4)
    a, b = rng.normal(0.8, 1, 10), rng.normal(0, 1, 10)
    p, how = randomization_test([a], [b], iqm, paired=True)
    ref = stats.permutation_test(
        (a, b),
        lambda x, y, axis: iqm(x, axis=axis) - iqm(y, axis=axis),
        permutation_type="samples",
        n_resamples=np.inf,
        vectorized=True,
    )
    assert how == "sign-flip, exact over 1024 patterns"
    assert p == pytest.approx(ref.pvalue)


def test_permutation_test_matches_scipy_unpaired():
    rng = np.random.default_rng(5)
    a, b = rng.normal(1, 1, 6), rng.normal(0, 1, 7)
    p, how = randomization_test([a], [b], np.mean, paired=False, draws=50_000)
    ref = stats.permutation_test(
        (a, b),
        lambda x, y, axis: np.mean(x, axis=axis) - np.mean(y, axis=axis),
        n_resamples=np.inf,
        vectorized=True,
    )
    assert how.startswith("permutation within tasks")
    assert p == pytest.approx(ref.pvalue, abs=0.01)


def test_sign_flip_on_a_constant_shift_reaches_the_smallest_p():
    a = [np.arange(6.0) + 1.0]
    p, _ = randomization_test(a, [np.arange(6.0)], np.mean, paired=True)
    assert p == pytest.approx(2 / 64)  # only "no swap" and "swap all" are as extreme


def test_holm_adjustment():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # 2 x 0.8 capped, then monotone


def test_align_pairs_by_seed_and_only_when_seeds_match():
    a = {"x": {7: 1.0, 3: 2.0}, "y": {7: 5.0, 3: 6.0}}
    b = {"x": {3: 0.0, 7: 1.5}, "y": {3: 4.0, 7: 9.0}}
    a_lists, b_lists, paired = align(a, b)
    assert paired and a_lists == [[2.0, 1.0], [6.0, 5.0]] and b_lists == [[0.0, 1.5], [4.0, 9.0]]
    _, _, paired = align(a, {"x": {3: 0.0, 8: 1.5}, "y": {3: 4.0, 7: 9.0}})
    assert not paired
    with pytest.raises(ValueError, match="different tasks"):
        align(a, {"x": {3: 0.0}})


def test_compare_reports_the_design():
    result = compare([[1.0, 2.0, 3.0]], [[0.5, 1.5, 2.0]], paired=True, reps=2_000)
    assert result.design == "paired" and result.runs == 3 and result.test.startswith("sign-flip")
    assert compare([[1.0, 2.0]], [[0.5, 1.5, 2.0]], paired=False, reps=2_000).design == "unpaired"


def test_minatar_scores_are_normalised_between_random_and_reference():
    transform, note = normalizer("MinAtar/Breakout-v1")
    assert transform(0.372) == pytest.approx(0.0) and transform(10.0) == pytest.approx(1.0)
    assert note.startswith("normalised")
    transform, note = normalizer("CartPole-v1")
    assert transform(200.0) == 200.0 and note.startswith("raw return")


def _record(scores_by_env, seeds, trial=0):
    return {
        "trial": trial,
        "selection": 0.0,
        "seeds": seeds,
        "scores": scores_by_env,
        "failed": [],
        "mlflow_run_id": "",
    }


def test_confirmation_table_pairs_arms_on_the_same_seeds_and_adjusts_for_several():
    envs = ("MinAtar/Breakout-v1", "MinAtar/Asterix-v1")
    base = {env: [0.5, 0.6, 0.7, 0.8] for env in envs}
    records = {
        "minatar:minatar@hardcopy": _record(base, [1, 2, 3, 4]),
        "minatar:minatar": _record(
            {e: [s - 0.1 for s in v] for e, v in base.items()}, [1, 2, 3, 4]
        ),
        "minatar:mlp": _record({e: [s - 0.1 for s in v] for e, v in base.items()}, [5, 6, 7, 8]),
    }
    rows = {r["arm"]: r for r in confirmation_table(records)}
    same, other = rows["minatar:minatar"], rows["minatar:mlp"]
    assert same["design"] == "paired" and other["design"] == "unpaired"
    assert same["diff"] == pytest.approx(-0.1) == pytest.approx(other["diff"])
    assert same["diff_high"] < 0 < other["diff_high"]  # pairing sees what seeds hide
    assert same["p_holm"] == pytest.approx(min(1.0, 2 * same["p_value"]))
    assert "design" not in rows["minatar:minatar@hardcopy"]


def test_no_aggregate_over_raw_returns_of_different_environments():
    envs = ("CartPole-v1", "Acrobot-v1")
    records = {
        "mlp:mlp@hardcopy": _record({envs[0]: [400.0, 450.0], envs[1]: [-90.0, -80.0]}, [1, 2]),
        "mlp:mlp": _record({envs[0]: [300.0, 350.0], envs[1]: [-95.0, -85.0]}, [1, 2]),
    }
    rows = confirmation_table(records)
    assert all(np.isnan(r["iqm"]) for r in rows) and not any("diff" in r for r in rows)
    per_env = per_env_table(records)
    lr = [r for r in per_env if r["arm"] == "mlp:mlp"]
    assert {r["env"] for r in lr} == set(envs)
    assert {r["design"] for r in lr} == {"paired"}
    cartpole = next(r for r in lr if r["env"] == "CartPole-v1")
    assert cartpole["diff"] == pytest.approx(-100.0)


def test_stratified_resamples_are_the_draws_of_the_interval():
    scores = [[1.0, 2.0, 3.0, 40.0], [10.0, 11.0], [7.0]]
    resamples = stratified_resamples(scores, reps=3_000, seed=5)
    assert [r.shape for r in resamples] == [(3_000, 4), (3_000, 2), (3_000, 1)]
    # Runs stay in their task: every resampled value is one of that task's runs.
    for task, drawn in zip(scores, resamples, strict=True):
        assert set(np.unique(drawn)) <= set(task)
    replicates = iqm(np.concatenate(resamples, axis=1), axis=1)
    _, low, high = stratified_bootstrap_ci(scores, iqm, reps=3_000, seed=5)
    assert (low, high) == tuple(np.percentile(replicates, [2.5, 97.5]))
