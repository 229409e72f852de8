"""A run fails as diverged once its mean |Q| passes a bound set by the reward scale."""

from __future__ import annotations

import math

import pytest
from tiny_configs import tiny

from hetero_lr.agent import DivergenceBound, DivergenceError, DivergenceGuard
from hetero_lr.config import AgentConfig, EnvConfig
from hetero_lr.run import TrainingRun

# Tiny MLPs on CartPole with a huge learning rate and no gradient clip: the mean |Q| passes
# 2,000 within the first 50 updates (clipped rewards: true values are below 100).
EXPLODES = {"agent": {"lr": 10.0, "max_grad_norm": None, "loss": "mse"}, "log_every": 50}


def test_a_run_built_to_diverge_fails_naming_the_value_and_the_bound():
    cfg = tiny(EXPLODES)
    with TrainingRun(cfg) as run:
        assert run.params()["agent.divergence_q_resolved"] == pytest.approx(200.0)
        with pytest.raises(DivergenceError) as err:
            run.run_until(cfg.steps)
        # Stopped at the first log row after learning started (within `log_every` steps).
        assert run.step <= cfg.agent.learning_starts + cfg.log_every
    message = str(err.value)
    assert message.startswith("diverged: mean |Q| ")
    assert "> 200 (= 2 r_max / (1 - gamma), r_max = 1: clipped rewards)" in message


def test_none_disables_the_bound_and_a_number_sets_it():
    cfg = tiny(EXPLODES, agent={"divergence_q": "none"})
    with TrainingRun(cfg) as run:
        run.run_until(cfg.steps)  # the same spike, no error: the run even recovers
        assert run.done and run.params()["agent.divergence_q_resolved"] is None
    cfg = tiny(EXPLODES, agent={"divergence_q": 1e6})
    with TrainingRun(cfg) as run:
        run.run_until(cfg.steps)
    with (
        TrainingRun(tiny(EXPLODES, agent={"divergence_q": "50"})) as run,
        pytest.raises(DivergenceError, match=r"> 50 \(agent\.divergence_q\)"),
    ):
        run.run_until(cfg.steps)


def test_the_default_lets_a_normal_run_finish():
    cfg = tiny()
    assert cfg.agent.divergence_q == "auto"
    with TrainingRun(cfg) as run:
        run.run_until(cfg.steps)
        assert run.done


@pytest.mark.parametrize(
    ("env", "agent", "bound", "rule"),
    [
        ({}, {}, 200.0, "r_max = 1: clipped rewards"),
        ({"id": "CartPole-v1", "clip_rewards": False}, {}, 200.0, "CartPole-v1 rewards"),
        ({"id": "MinAtar/Breakout-v1"}, {"gamma": 0.9}, 20.0, "clipped rewards"),
        ({"id": "MinAtar/Seaquest-v1", "clip_rewards": False}, {}, 2000.0, "r_max = 10"),
        ({"clip_rewards": False}, {}, None, "no known reward scale"),  # Atari, raw scores
        ({}, {"divergence_q": 7}, 7.0, "agent.divergence_q"),
        ({}, {"divergence_q": None}, None, "disabled"),
    ],
)
def test_auto_resolves_from_the_reward_scale(env, agent, bound, rule):
    resolved = DivergenceBound.resolve(AgentConfig(**agent), EnvConfig(**env))
    assert resolved.value == (None if bound is None else pytest.approx(bound))
    assert rule in resolved.rule


def test_guard_checks_the_worst_update_of_a_window():
    guard = DivergenceGuard(DivergenceBound(100.0, "test"))
    guard.observe([0.1, 0.2], [50.0, 150.0])
    guard.observe([0.1], [20.0])  # a later, smaller value does not hide the peak
    with pytest.raises(DivergenceError, match=r"mean \|Q\| 150 > 100 \(test\) by step 3,000"):
        guard.check(3_000)
    guard.reset()
    guard.observe([0.1], [99.0])
    guard.check(4_000)
    guard.observe([math.nan, 0.1], [1.0])
    with pytest.raises(DivergenceError, match="TD loss nan"):
        guard.check(5_000)
    unbounded = DivergenceGuard(DivergenceBound(None, "disabled"))
    unbounded.observe([1.0], [1e30])
    unbounded.check(1)
    unbounded.observe([1.0], [math.nan])
    unbounded.check(2)  # only a non-finite loss fails an unbounded run
