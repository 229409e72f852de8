"""The learner and the training loop: TD math, reproducibility, resume, CLI errors."""

from __future__ import annotations

import copy
import csv
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from tiny_configs import tiny

from hetero_lr.agent import Agent, Batch, clip_grad_norm, epsilon_at
from hetero_lr.build import build_pair
from hetero_lr.config import AgentConfig, TrainConfig, apply_preset, from_dict
from hetero_lr.loggers import CSVLogger
from hetero_lr.networks import build_network
from hetero_lr.train import build_parser, config_from_args, main, train


def _batch(n: int = 8, *, rewards=None, discounts=None) -> Batch:
    g = torch.Generator().manual_seed(0)
    return Batch(
        obs=torch.randn(n, 4, generator=g),
        actions=torch.randint(0, 2, (n,), generator=g),
        rewards=torch.randn(n, generator=g) if rewards is None else rewards,
        next_obs=torch.randn(n, 4, generator=g),
        discounts=torch.full((n,), 0.99) if discounts is None else discounts,
        weights=torch.ones(n),
    )


def _agent(cfg: TrainConfig) -> Agent:
    pair = build_pair(cfg, (4,), 2)
    return Agent(pair, cfg.agent, n_actions=2, device=torch.device("cpu"))


def test_td_step_matches_the_bellman_target():
    cfg = tiny(agent={"loss": "mse", "max_grad_norm": None, "double": True})
    agent = _agent(cfg)
    batch = _batch()
    with torch.no_grad():
        q = agent.pair.online(batch.obs)[torch.arange(8), batch.actions]
        best = agent.pair.online(batch.next_obs).argmax(1)
        bootstrap = agent.pair.target(batch.next_obs)[torch.arange(8), best]
        expected = (q - (batch.rewards + batch.discounts * bootstrap)).square().mean()
    metrics, priorities = agent.update(batch)
    assert float(metrics["loss/td"]) == pytest.approx(expected.item(), rel=1e-5)
    assert priorities.shape == (8,) and (priorities >= 0).all()


def test_rmsprop_step_is_young_and_tians_centred_rmsprop():
    """`agent.optimizer=rmsprop`: centred RMSProp, squared-gradient decay 0.95, the eps added
    to the root (MinAtar `examples/dqn.py`), computed here by hand for the first step."""
    agent_cfg = {"optimizer": "rmsprop", "lr": 0.1, "loss": "mse", "max_grad_norm": None}
    agent = _agent(tiny(agent=agent_cfg))
    assert isinstance(agent.optimizer, torch.optim.RMSprop)
    batch = _batch()
    with torch.no_grad():
        bootstrap = agent.pair.target(batch.next_obs).max(1).values
    q = agent.pair.online(batch.obs)[torch.arange(8), batch.actions]
    loss = (q - (batch.rewards + batch.discounts * bootstrap)).square().mean()
    params = list(agent.pair.online.parameters())
    grads = torch.autograd.grad(loss, params)
    before = [p.detach().clone() for p in params]
    agent.update(batch)
    alpha, eps = 0.95, 0.01
    for p, p0, g in zip(params, before, grads, strict=True):
        square_avg, grad_avg = (1 - alpha) * g.square(), (1 - alpha) * g
        step = g / ((square_avg - grad_avg.square()).sqrt() + eps)  # momentum buffer: step
        torch.testing.assert_close(p.detach(), p0 - 0.1 * step, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale", [1e-3, 1e3])  # below and above the bound
def test_clip_grad_norm_matches_torch_bit_for_bit(scale):
    torch.manual_seed(0)
    net = build_network("minatar", (4, 10, 10), 3)
    (scale * net(torch.rand(8, 4, 10, 10) < 0.1).square().sum()).backward()
    ours = [p.grad.clone() for p in net.parameters()]
    norm = lambda grads: float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])))  # noqa: E731
    before = norm(ours)
    torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
    clip_grad_norm(ours, 10.0)
    assert all(torch.equal(p.grad, g) for p, g in zip(net.parameters(), ours, strict=True))
    assert norm(ours) == pytest.approx(min(before, 10.0), rel=1e-5)


def test_categorical_step_gives_finite_loss_and_priorities():
    cfg = from_dict(TrainConfig, {"agent": {"categorical": True, "num_atoms": 11}}, base=tiny())
    agent = _agent(cfg)
    metrics, priorities = agent.update(_batch())
    assert torch.isfinite(metrics["loss/td"]) and (priorities > 0).all()


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    return all(torch.equal(x, y) for x, y in pairs)


def test_hardcopy_same_architecture_is_dqn():
    """The target changes only through HeteroPair.step: every `period` updates, a copy."""
    cfg = tiny(target_options={"hidden": [32]}, target={"rule": "hardcopy", "period": 3})
    agent = _agent(cfg)
    pair = agent.pair
    assert _same_weights(pair.online, pair.target)
    target_at_start = copy.deepcopy(pair.target.state_dict())
    for i in range(1, 4):
        agent.update(_batch())
        pair.step(lambda: (_batch().obs, _batch().actions))
        same_as_start = all(
            torch.equal(v, target_at_start[k]) for k, v in pair.target.state_dict().items()
        )
        assert same_as_start == (i < 3)
    assert _same_weights(pair.online, pair.target)


def test_epsilon_schedule_follows_dopamine():
    cfg = AgentConfig(learning_starts=100, epsilon_decay_steps=100, epsilon_end=0.1)
    assert [epsilon_at(s, cfg) for s in (0, 99, 100, 150, 200, 10_000)] == pytest.approx(
        [1.0, 1.0, 1.0, 0.55, 0.1, 0.1]
    )


def test_same_seed_same_run(tmp_path):
    results = []
    for name in ("a", "b"):
        logger = CSVLogger(tmp_path / name)
        results.append(train(tiny(), logger=logger, progress=False))
        logger.close()
    assert results[0].eval_returns == results[1].eval_returns
    rows = [
        [
            r
            for r in csv.reader((tmp_path / n / "metrics.csv").open())
            if not r[1].startswith("perf/sps")
        ]
        for n in ("a", "b")
    ]  # wall-clock rates differ
    assert rows[0] == rows[1]
    keys = {r[1] for r in rows[0]}
    assert {"loss/td", "loss/replicate_before", "gap/function", "q/online_mean"} <= keys
    other = train(tiny(seed=1), progress=False)
    assert other.eval_returns != results[0].eval_returns


def test_result_and_logged_params(tmp_path):
    logger = CSVLogger(tmp_path)
    result = train(tiny(), logger=logger, progress=False)
    logger.close()
    assert result.steps == 800 and result.eval_steps == [400, 800]
    assert result.final_return == result.eval_returns[-1] > 0
    assert result.online_params != result.target_params
    params = dict(csv.reader((tmp_path / "params.csv").open()))
    assert params["target.kr"] == "1" and params["online_family"] == "mlp"
    assert params["online_params"] == str(result.online_params)


def test_on_eval_can_stop_a_run():
    seen = []
    result = train(tiny(), on_eval=lambda step, value: seen.append(step) or False, progress=False)
    assert result.stopped_early and seen == [400] and result.steps == 400


def test_resume_continues_from_the_checkpoint(tmp_path):
    first = train(tiny(steps=400), out=tmp_path, progress=False)
    assert (tmp_path / "checkpoint.pt").exists() and first.steps == 400
    resumed = train(tiny(), out=tmp_path, resume=True, progress=False)
    assert resumed.eval_steps == [400, 800]
    assert resumed.eval_returns[0] == first.eval_returns[0]


def test_cli_resumes_after_kill_9(tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "hetero_lr.train",
        "--pair",
        "mlp:mlp",
        "--env",
        "CartPole-v1",
        "--steps",
        "100000",
        "--set",
        "checkpoint_every=300",
        "--set",
        "agent.learning_starts=200",
        "--eval-every",
        "100000",
        "--out",
        str(out),
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = torch.load(out / "checkpoint.pt", weights_only=False)["counters"]["step"]
    assert saved >= 300
    cmd[cmd.index("100000")] = str(saved + 300)
    done = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    finished = int(re.search(r"done: ([\d,]+) steps", done.stdout).group(1).replace(",", ""))
    assert saved + 300 <= finished < saved + 300 + 8  # 8 lanes step together
    rows = [tuple(r[:2]) for r in csv.reader((out / "metrics.csv").open()) if r[0] != "step"]
    assert max(int(step) for step, _ in rows) >= saved + 300
    logged_rows = [r for r in rows if not r[1].startswith("charts/episod")]  # lanes tie
    assert len(logged_rows) == len(set(logged_rows))  # the killed run's extra rows are gone


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pair", "mlp-mlp"], "bad pair 'mlp-mlp'"),
        (["--pair", "mlp:nope"], "unknown network 'nope'"),
        (["--kr", "0"], "target.kr=0 must be >= 1"),
        (["--kl", "two"], "target.kl='two' is not an integer"),
        (["--steps", "abc"], "steps='abc' is not an integer"),
        (["--set", "steps=abc"], "steps='abc' is not an integer"),
        (["--set", "agent.double=maybe"], "agent.double='maybe' is not a boolean"),
        (["--set", "agent.batch_size=3.5"], "agent.batch_size=3.5 is not an integer"),
        (["--set", "agent.lr=-1e-4"], "agent.lr=-0.0001 must be > 0"),
        (["--target-update", "copy:5"], "bad --target-update 'copy:5'"),
        (["--target-update", "hardcopy:x"], "target.period='x' is not an integer"),
        (["--set", "agent.lrr=1"], "unknown AgentConfig key 'lrr'"),
        (["--set", "target.variant=some"], "target.variant='some' is not one of"),
        (["--set", "lr"], "bad --set 'lr'; expected KEY=VALUE"),
        (["--env", "Pong"], "unsupported environment id 'Pong'"),
        (["--pair", "nature:nature", "--env", "CartPole-v1"], "cannot take observations"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2_and_leaves_nothing(args, message, capsys, tmp_path):
    out = tmp_path / "run"
    argv = ["--env", "CartPole-v1", "--steps", "10", "--out", str(out), *args]
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize(
    "args",
    [["--set", "agent.double=maybe"], ["--steps", "abc"], ["--config", "missing.yaml"]],
)
def test_cli_bad_input_from_a_subprocess(args, tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "hetero_lr.train", "--env", "CartPole-v1", "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not out.exists()


def test_cli_settings_are_typed_from_every_flag():
    """The README's example: YAML reads `1e-4` as text; it must arrive as a float."""
    args = build_parser().parse_args(
        ["--preset", "rainbow", "--kr", "2", "--kl", "8", "--set", "agent.lr=1e-4",
         "--set", "agent.max_grad_norm=none", "--target-update", "replicate", "--steps", "1_000"]
    )  # fmt: skip
    cfg = config_from_args(args)
    assert cfg.agent.lr == 1e-4 and isinstance(cfg.agent.lr, float)
    assert (cfg.target.kr, cfg.target.kl, cfg.steps) == (2, 8, 1_000)
    assert cfg.agent.max_grad_norm is None and cfg.agent.categorical


def test_hardcopy_reports_a_true_copy_rate(tmp_path):
    logger = CSVLogger(tmp_path)
    cfg = tiny(target_options={"hidden": [32]}, target={"rule": "hardcopy", "period": 5})
    train(cfg, logger=logger, progress=False)
    logger.close()
    rates = [float(r[2]) for r in csv.reader((tmp_path / "metrics.csv").open())
             if r[1] == "perf/target_copies_per_update"]  # fmt: skip
    # Each 200-step row averages 100 updates, 20 of them copies; the first row starts learning.
    assert len(rates) == 4 and rates[1:] == pytest.approx([0.2] * 3)


@pytest.mark.atari
def test_atari_run_logs_the_protocol(tmp_path):
    cfg = from_dict(
        TrainConfig,
        {
            "pair": "nature:nature",
            "env": {"num_envs": 4},
            "steps": 400,
            "eval_every": 400,
            "eval_episodes": 1,
            "eval_max_steps": 100,
            "online_options": {"hidden": 32},
            "target_options": {"hidden": 32},
            "agent": {"learning_starts": 200, "buffer_size": 1_000, "batch_size": 8},
        },
    )
    logger = CSVLogger(tmp_path)
    result = train(cfg, logger=logger, progress=False)
    logger.close()
    params = dict(csv.reader((tmp_path / "params.csv").open()))
    assert params["env.protocol.sticky_actions"] == "0.25"
    assert result.steps == 400 and len(result.eval_returns) == 1


@pytest.mark.slow
def test_lr_learns_cartpole():
    """A CPU-sized learning check: LR with different-width MLPs improves well above random
    (about 22) within 12k steps; benchmarks/learning.py runs the full 50k-step check."""
    cfg = from_dict(
        TrainConfig,
        {"steps": 12_000, "eval_every": 4_000, "eval_episodes": 5, "env": {"num_envs": 1}},
        base=apply_preset("cartpole"),
    )
    result = train(cfg, progress=False)
    assert max(result.eval_returns) >= 100
