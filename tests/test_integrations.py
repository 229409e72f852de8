"""Integrations: SB3 `HeteroDQN`, TorchRL estimator/updater, the CleanRL-style Atari example."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.envs import FakeImageEnv
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensordict import TensorDict
from torchrl.modules import QValueActor
from torchrl.objectives import DQNLoss

from hetero_lr import HardCopy, HeteroPair, Replicate, build_network
from hetero_lr.integrations.sb3 import HeteroDQN, SB3Preprocessed
from hetero_lr.integrations.torchrl import PairTD0Estimator, PairUpdater

ROOT = Path(__file__).resolve().parents[1]

# rl-zoo3's CartPole-v1 DQN hyperparameters (DLR-RM/rl-baselines3-zoo, hyperparams/dqn.yml),
# except net_arch [64, 64] instead of [256, 256] and 30k instead of 50k steps (CPU budget);
# its target_update_interval (10 env steps) is replaced by the Replicate rule.
ZOO_CARTPOLE = {
    "learning_rate": 2.3e-3,
    "batch_size": 64,
    "buffer_size": 100_000,
    "learning_starts": 1000,
    "gamma": 0.99,
    "train_freq": 256,
    "gradient_steps": 128,
    "exploration_fraction": 0.16,
    "exploration_final_eps": 0.04,
    "policy_kwargs": {"net_arch": [64, 64]},
}


@pytest.mark.slow
def test_sb3_cartpole_learns_with_a_narrower_target() -> None:
    """SB3's own `learn()`; measured here: mean return 257 at seed 0 (random play: about 22)."""
    model = HeteroDQN(
        "MlpPolicy",
        "CartPole-v1",
        target="mlp",
        target_kwargs={"hidden": (32, 32)},
        target_update=Replicate(kr=32, kl=128, lr=1e-3),
        seed=0,
        device="cpu",
        **ZOO_CARTPOLE,
    )
    pair = model.policy.pair
    assert isinstance(model.q_net_target, SB3Preprocessed)
    assert sum(p.numel() for p in pair.target.parameters()) < sum(
        p.numel() for p in pair.online.parameters()
    )
    model.learn(30_000)
    assert pair.update.online_steps == model._n_updates
    assert pair.update.replicate_steps == model._n_updates // 128 * 32
    mean_return, _ = evaluate_policy(model, Monitor(gym.make("CartPole-v1")), n_eval_episodes=10)
    assert mean_return >= 100


def _small_model(**kwargs) -> HeteroDQN:
    settings = {
        "learning_starts": 100,
        "batch_size": 16,
        "buffer_size": 2000,
        "train_freq": 16,
        "gradient_steps": 8,
        "seed": 0,
        "device": "cpu",
        "policy_kwargs": {"net_arch": [32]},
    }
    return HeteroDQN("MlpPolicy", "CartPole-v1", **(settings | kwargs))


def test_sb3_save_load_round_trips_the_pair(tmp_path: Path) -> None:
    model = _small_model(
        target="mlp",
        target_kwargs={"hidden": (16, 16)},
        target_update=Replicate(kr=2, kl=3, lr=1e-3),
        double_q=True,
    )
    model.learn(800)
    rule = model.policy.pair.update
    assert rule.replicate_steps > 0 and rule.optimizer is not None
    model.save(tmp_path / "model.zip")

    loaded = HeteroDQN.load(tmp_path / "model.zip", env=gym.make("CartPole-v1"), device="cpu")
    loaded_rule = loaded.policy.pair.update
    assert loaded.double_q is True
    assert (loaded_rule.online_steps, loaded_rule.replicate_steps) == (
        rule.online_steps,
        rule.replicate_steps,
    )
    saved_opt, loaded_opt = rule.optimizer.state_dict(), loaded_rule.optimizer.state_dict()
    assert saved_opt["state"].keys() == loaded_opt["state"].keys()
    for key, state in saved_opt["state"].items():
        for name, value in state.items():
            assert torch.equal(value, loaded_opt["state"][key][name]), (key, name)
    obs = torch.as_tensor(np.stack([model.observation_space.sample() for _ in range(8)]))
    with torch.no_grad():
        assert torch.equal(model.q_net_target(obs), loaded.q_net_target(obs))
        assert torch.equal(model.q_net(obs), loaded.q_net(obs))
    # The loaded rule keeps counting: training resumes where it stopped.
    loaded.learn(200, reset_num_timesteps=False)
    assert loaded_rule.online_steps > rule.online_steps


def test_sb3_foreign_target_sees_preprocessed_observations() -> None:
    """Image observations reach the target as SB3's `QNetwork` sees them: float in [0, 1]."""
    env = FakeImageEnv(screen_height=36, screen_width=36, n_channels=1, discrete=True)
    model = HeteroDQN(
        "CnnPolicy",
        env,
        target="nature",
        target_update=Replicate(kr=1, kl=1),
        learning_starts=20,
        batch_size=4,
        buffer_size=100,
        train_freq=4,
        seed=0,
        device="cpu",
    )
    seen: list[torch.Tensor] = []
    net = model.q_net_target.net
    net.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    model.learn(40)
    assert seen, "the target was never called"
    assert all(x.dtype == torch.float32 and x.shape[1:] == (1, 36, 36) for x in seen)
    assert max(x.max().item() for x in seen) <= 1.0
    assert model.policy.pair.update.replicate_steps > 0
    frames = torch.randint(0, 256, (3, 1, 36, 36), dtype=torch.uint8)
    with torch.no_grad():
        expected = net(frames.float() / 255.0).max(dim=1).values
    assert torch.allclose(model.policy.pair.bootstrap(frames), expected)


def test_sb3_hard_copy_baseline_with_sb3_own_architecture() -> None:
    """`target=None` + `HardCopy`: SB3's DQN, copying per gradient step instead of env step."""
    model = _small_model(target=None, target_update=HardCopy(8))  # 8 gradient steps per train()
    model.learn(400)
    assert model.policy.pair.update.online_steps == model._n_updates > 0
    for online, target in zip(
        model.q_net.parameters(), model.q_net_target.parameters(), strict=True
    ):
        assert torch.equal(online, target)


def test_sb3_rejects_parameter_space_settings() -> None:
    with pytest.raises(ValueError, match="target_update_interval"):
        _small_model(target_update_interval=10)
    with pytest.raises(ValueError, match="tau"):
        _small_model(tau=0.5)


def _torchrl_setup(double: bool = False):
    torch.manual_seed(0)
    online = build_network("mlp", (4,), 2, hidden=(16,))
    target = build_network("mlp", (4,), 2, hidden=(8, 8))  # another architecture
    pair = HeteroPair(online, target, Replicate(kr=1, kl=1, lr=1e-2), example_obs=torch.zeros(1, 4))
    actor = QValueActor(online, in_keys=["observation"], action_space="categorical")
    loss = DQNLoss(actor, delay_value=False, loss_function="l2", action_space="categorical")
    loss.make_value_estimator(PairTD0Estimator(pair, gamma=0.9, double=double))
    batch = 6
    td = TensorDict(
        {
            "observation": torch.randn(batch, 4),
            "action": torch.randint(0, 2, (batch,)),
            "next": {
                "observation": torch.randn(batch, 4),
                "reward": torch.randn(batch, 1),
                "done": torch.tensor([[False], [True], [False], [False], [True], [False]]),
                "terminated": torch.tensor([[False], [True], [False], [False], [False], [False]]),
            },
        },
        [batch],
    )
    return pair, loss, td


@pytest.mark.parametrize("double", [False, True])
def test_torchrl_dqn_loss_bootstraps_from_the_pair_target(double: bool) -> None:
    pair, loss, td = _torchrl_setup(double)
    online, target = pair.online, pair.target
    with torch.no_grad():
        q_taken = online(td["observation"]).gather(1, td["action"][:, None]).squeeze(1)
        next_obs = td["next", "observation"]
        chooser = online if double else target
        best = chooser(next_obs).argmax(dim=1, keepdim=True)
        bootstrap = target(next_obs).gather(1, best).squeeze(1)
        alive = (~td["next", "terminated"]).squeeze(1).float()  # truncation still bootstraps
        y = td["next", "reward"].squeeze(1) + 0.9 * alive * bootstrap
        by_hand = (q_taken - y).square().mean()
        online_bootstrap = online(next_obs).max(dim=1).values  # what delay_value=False alone uses
    out = loss(td)
    torch.testing.assert_close(out["loss"], by_hand)
    assert not torch.allclose(bootstrap, online_bootstrap)

    # The TD gradient reaches the online network only; loss.parameters() excludes the target.
    out["loss"].backward()
    assert all(p.grad is None for p in target.parameters())
    assert all(p.grad is not None for p in online.parameters())
    target_ids = {id(p) for p in target.parameters()}
    assert not target_ids & {id(p) for p in loss.parameters()}


def test_torchrl_updater_step_moves_the_target_toward_the_online_net() -> None:
    pair, _, td = _torchrl_setup()
    one_hot = td.clone()
    one_hot["action"] = torch.nn.functional.one_hot(td["action"], 2)  # TorchRL's default
    updater = PairUpdater(pair, lambda: one_hot)
    obs, actions = updater.sample()
    assert torch.equal(actions, td["action"]) and obs.shape == (6, 4)

    before = [p.detach().clone() for p in pair.target.parameters()]
    gap_before = pair.function_gap(td["observation"])
    metrics = updater.step()
    assert metrics["perf/replicate_steps_per_update"] == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, pair.target.parameters(), strict=True))
    assert pair.function_gap(td["observation"]) < gap_before

    # The target lives outside loss.state_dict(): the updater checkpoints it with the rule.
    state = updater.state_dict()
    other, _, _ = _torchrl_setup()
    restored = PairUpdater(other, lambda: one_hot)
    restored.load_state_dict(state)
    assert restored.pair.update.online_steps == 1
    with torch.no_grad():
        assert torch.equal(other.target(td["observation"]), pair.target(td["observation"]))


@pytest.mark.atari
def test_cleanrl_style_atari_example_runs(tmp_path: Path) -> None:
    """A few hundred steps of examples/dqn_atari_lr.py: learning, bootstraps and Replicate."""
    command = [
        sys.executable,
        str(ROOT / "examples" / "dqn_atari_lr.py"),
        "--total-timesteps", "300",
        "--learning-starts", "100",
        "--buffer-size", "1000",
        "--batch-size", "8",
        "--lookahead-steps", "10",
        "--replicate-steps", "2",
        "--no-cuda",
    ]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "SPS:" in result.stdout
    (run_dir,) = (tmp_path / "runs").iterdir()
    tags = EventAccumulator(str(run_dir)).Reload().Tags()["scalars"]
    assert {"losses/td_loss", "losses/replicate_loss"} <= set(tags)
