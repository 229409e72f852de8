"""Lookahead-Replicate on small Markov chains (`analysis.markov_chain`)."""

from __future__ import annotations

import numpy as np
import pytest

from analysis import markov_chain as mc


def test_figure1_reaches_v_pi_with_parameters_of_different_dimension():
    trajectory = mc.figure1(mc.LRSettings(iterations=60))
    v_pi = trajectory.v_pi
    # The start is far from the answer, so agreement at the end is the algorithm's doing.
    assert np.abs(trajectory.v_online[0] - v_pi).max() > 0.5
    assert trajectory.gap[0] > 0.1
    np.testing.assert_allclose(trajectory.v_online[-1], v_pi, atol=1e-3)
    np.testing.assert_allclose(trajectory.v_target[-1], v_pi, atol=1e-3)
    assert trajectory.gap[-1] < 1e-8
    assert trajectory.theta.shape[1] == 3 and trajectory.w.shape[1] == 2
    # Equal in function space, not in parameter space.
    assert np.abs(trajectory.theta[-1, :2] - trajectory.w[-1]).max() > 0.1


def test_figure1_chain_values_solve_the_bellman_equation():
    chain = mc.figure1_chain()
    v = chain.values()
    np.testing.assert_allclose(v, chain.rewards + chain.gamma * chain.transitions @ v)
    np.testing.assert_allclose(chain.distribution @ chain.transitions, chain.distribution)


def test_heteropair_run_matches_the_period_map():
    # The same LR run through HeteroPair (torch) and as the closed-form linear map (numpy):
    # pins the Replicate loss to ||v_w - v_theta||^2_D (gradient factor 2) and the block schedule.
    chain = mc.w2w_chain(0.9)
    phi, phi_t = mc.W2W_ONLINE_FEATURE, mc.W2W_TARGET_FEATURES["constant"]
    settings = mc.LRSettings(kl=3, kr=2, lr_online=0.1, lr_target=0.2, iterations=5)
    trajectory = mc.run_lr(
        chain, phi[:, None], phi_t[:, None], settings, init=(np.ones(1), np.ones(1))
    )
    k = mc.coefficients(chain, phi, phi_t)
    m = mc.period_matrix("lr", k, np.array(0.9), 0.1, 0.2, kl=3, kr=2)
    expected = np.linalg.matrix_power(m, 5) @ np.ones(2)
    got = np.array([trajectory.theta[-1, 0], trajectory.w[-1, 0]])
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    assert not np.allclose(got, 1.0)


def test_td_diverges_above_five_sixths_and_converges_below():
    settings = mc.PhaseSettings(
        gammas=(0.5, 0.8, 0.9),
        kls=(1, 4),
        krs=(1, 4),
        lrs_online=(0.1,),
        lrs_target=(0.1,),
        sim_steps=1000,
    )
    cells = mc.phase_diagram(settings)
    (td,) = [c for c in cells if c.method == "td"]
    assert td.converges.tolist() == [True, True, False]
    assert td.simulated.tolist() == [1, 1, -1]
    # Expected TD moves theta by alpha (3 gamma - 5/2) theta per step (uniform d).
    np.testing.assert_allclose(td.per_step_rate, 1 + 0.1 * (3 * np.array([0.5, 0.8, 0.9]) - 2.5))
    for cell in cells:
        if cell.target_features == "same":
            assert not cell.converges[2], (cell.method, cell.kl, cell.kr)
        else:
            assert cell.converges.all(), (cell.method, cell.kl, cell.kr)
    assert (
        mc.check_simulation(cells, 1000)["decidable"] == mc.check_simulation(cells, 1000)["agree"]
    )


def test_lr_threshold_depends_on_the_target_feature_only():
    gammas = np.round(np.arange(0.0025, 1.0, 0.0025), 4)
    assert mc.lr_threshold(mc.W2W_TARGET_FEATURES["same"]) == pytest.approx(5 / 6)
    assert mc.lr_threshold(mc.W2W_TARGET_FEATURES["constant"]) == 1.0
    for kl, kr in ((1, 1), (16, 2)):
        found = mc.critical_gamma(mc.W2W_TARGET_FEATURES["same"], gammas, kl=kl, kr=kr)
        assert 5 / 6 - 0.0025 <= found < 5 / 6


def test_cli_writes_its_files(tmp_path, capsys):
    out = tmp_path / "out"
    assert mc.main(["--out", str(out), "--iterations", "5", "--sim-steps", "0"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {
        "figure1_lr_markov_chain.png",
        "phase_diagram.csv",
        "phase_diagram_beta0.1.png",
        "w2w_target_features.png",
    } <= names
    header, *rows = (out / "phase_diagram.csv").read_text().splitlines()
    assert header.startswith("method,target_features,lr_online")
    td = [r for r in rows if r.startswith("td,same,0.1,")]
    assert td and td[0].split(",")[7] == "0.8325"  # largest converging gamma on the grid
    assert "figure 1:" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--sim-steps", "-1"], ["--seed", "x"], ["--bogus"]])
def test_cli_rejects_bad_arguments_in_one_line(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        mc.main([*argv, "--out", str(tmp_path / "never")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "error" in err
    assert not (tmp_path / "never").exists()
