"""Lookahead-Replicate on small Markov chains (`analysis.markov_chain`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.markov_chain import figure1, phase_diagram
from analysis.markov_chain.__main__ import main
from analysis.markov_chain.chain import Chain


def test_figure1_reaches_v_pi_with_parameters_of_different_dimension():
    trajectory = figure1.figure1(figure1.LRSettings(iterations=60))
    v_pi = figure1.figure1_chain().values()
    v_online = figure1.block(trajectory, "v_online")
    v_target = figure1.block(trajectory, "v_target")
    theta, w = figure1.block(trajectory, "theta"), figure1.block(trajectory, "w")
    gap = trajectory["gap"].to_numpy()
    assert len(trajectory) == 60 * 4 + 1
    # The start is far from the answer, so agreement at the end is the algorithm's doing.
    assert np.abs(v_online[0] - v_pi).max() > 0.5
    assert gap[0] > 0.1
    np.testing.assert_allclose(v_online[-1], v_pi, atol=1e-3)
    np.testing.assert_allclose(v_target[-1], v_pi, atol=1e-3)
    assert gap[-1] < 1e-8
    assert theta.shape[1] == 3 and w.shape[1] == 2
    # Equal in function space, not in parameter space.
    assert np.abs(theta[-1, :2] - w[-1]).max() > 0.1


def test_figure1_chain_values_solve_the_bellman_equation():
    chain = figure1.figure1_chain()
    v = chain.values()
    np.testing.assert_allclose(v, chain.rewards + chain.gamma * chain.transitions @ v)
    np.testing.assert_allclose(chain.distribution @ chain.transitions, chain.distribution)


def test_heteropair_run_matches_the_period_map():
    # The same LR run through HeteroPair (torch) and as the closed-form linear map (numpy):
    # pins the Replicate loss to ||v_w - v_theta||^2_D (gradient factor 2) and the block schedule.
    chain = Chain(phase_diagram.TRANSITIONS, np.zeros(2), 0.9, np.array([0.5, 0.5]))
    phi, phi_t = phase_diagram.ONLINE_FEATURE, phase_diagram.TARGET_FEATURES["constant"]
    settings = figure1.LRSettings(kl=3, kr=2, lr_online=0.1, lr_target=0.2, iterations=5)
    trajectory = figure1.simulate(
        chain, phi[:, None], phi_t[:, None], settings, init=(np.ones(1), np.ones(1))
    )
    k = phase_diagram.coefficients(phi_t)
    m = phase_diagram.period_matrix("lr", k, np.array(0.9), 0.1, 0.2, kl=3, kr=2)
    expected = np.linalg.matrix_power(m, 5) @ np.ones(2)
    got = trajectory[["theta1", "w1"]].iloc[-1].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    assert not np.allclose(got, 1.0)


def test_td_diverges_above_five_sixths_and_converges_below():
    settings = phase_diagram.PhaseSettings(
        gammas=(0.5, 0.8, 0.9),
        kls=(1, 4),
        krs=(1, 4),
        lrs_online=(0.1,),
        lrs_target=(0.1,),
        sim_steps=1000,
    )
    cells = phase_diagram.phase_diagram(settings)
    td = cells[cells["method"] == "td"]
    assert td["converges"].tolist() == [True, True, False]
    assert td["simulated"].tolist() == [1, 1, -1]
    # Expected TD moves theta by alpha (3 gamma - 5/2) theta per step (uniform d).
    np.testing.assert_allclose(td["rate"], 1 + 0.1 * (3 * np.array([0.5, 0.8, 0.9]) - 2.5))
    same = cells[cells["target_features"] == "same"]
    assert not same.loc[same["gamma"] == 0.9, "converges"].any()
    assert cells.loc[cells["target_features"] == "constant", "converges"].all()
    check = phase_diagram.check_simulation(cells, 1000)
    assert check["decidable"] == check["agree"] > 0 and check["undecided"] == 0

    table = phase_diagram.phase_table(cells)
    assert len(table) == 1 + 2 + 2 * 2 * 2  # TD, HardCopy per KL, LR per feature x KL x KR
    row = table[table["method"] == "td"].iloc[0]
    assert (row["gamma_converges_from"], row["gamma_converges_to"]) == (0.5, 0.8)
    assert pd.isna(row["kl"]) and pd.isna(row["lr_target"]) and row["simulation_agrees"] == 1.0


def test_lr_threshold_depends_on_the_target_feature_only():
    gammas = np.round(np.arange(0.0025, 1.0, 0.0025), 4)
    same, constant = (phase_diagram.TARGET_FEATURES[f] for f in ("same", "constant"))
    assert phase_diagram.lr_threshold(same) == pytest.approx(5 / 6)
    assert phase_diagram.lr_threshold(constant) == 1.0
    for kl, kr in ((1, 1), (16, 2)):
        found = phase_diagram.critical_gamma(same, gammas, kl=kl, kr=kr)
        assert 5 / 6 - 0.0025 <= found < 5 / 6
    sweep = phase_diagram.target_feature_sweep(gammas)
    # The grid search and the closed form agree to the grid's step.
    assert np.abs(sweep["grid"] - sweep["closed_form"]).max() <= 0.0025 + 1e-12


def test_cli_writes_its_files(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--out", str(out), "--iterations", "5", "--sim-steps", "0"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {
        "figure1_lr_markov_chain.png",
        "phase_diagram.csv",
        "phase_diagram_beta0.1.png",
        "phase_diagram_beta0.3.png",
        "w2w_target_features.png",
    } <= names
    header, *rows = (out / "phase_diagram.csv").read_text().splitlines()
    assert header.startswith("method,target_features,lr_online")
    assert len(rows) == 207
    td = [r for r in rows if r.startswith("td,same,0.1,")]
    assert td == ["td,same,0.1,,,,0.0025,0.8325,True,0.99,1.02,"]  # not simulated: no agreement
    printed = capsys.readouterr().out
    assert "figure 1:" in printed and "lr       target=constant cells= 96" in printed


@pytest.mark.parametrize("argv", [["--sim-steps", "-1"], ["--seed", "x"], ["--bogus"]])
def test_cli_rejects_bad_arguments_in_one_line(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main([*argv, "--out", str(tmp_path / "never")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "error" in err
    assert not (tmp_path / "never").exists()
