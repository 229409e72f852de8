"""HeteroPair and its target-update rules."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from hetero_lr import HardCopy, HeteroPair, Polyak, Replicate, build_network
from hetero_lr.losses import expected_q

SHAPE = (4, 36, 36)  # the smallest frame nature takes: keeps the test fast


def _frames(n: int, seed: int) -> torch.Tensor:
    # Coarse random patterns upsampled to frames: structured inputs with some spatial extent.
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 256, (n, 4, 9, 9), generator=g, dtype=torch.uint8)
    return coarse.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)


def _mlp_pair(update, *, head="q", width=16, **kw) -> HeteroPair:
    online = build_network("mlp", (6,), 4, head=head, num_atoms=11, hidden=(width,))
    target = build_network("mlp", (6,), 4, head=head, num_atoms=11, hidden=(width + 8,))
    return HeteroPair(online, target, update, **kw)


def _sampler(obs: torch.Tensor, n_actions: int = 4, batch: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def sample():
        idx = torch.randint(0, len(obs), (batch,), generator=g)
        return obs[idx], torch.randint(0, n_actions, (batch,), generator=g)

    return sample


def test_replicate_closes_the_gap_between_different_families():
    torch.manual_seed(0)
    online = build_network("impala", SHAPE, 6, width=0.25, hidden=32)
    target = build_network("nature", SHAPE, 6, hidden=32)
    pair = HeteroPair(online, target, Replicate(kr=1, kl=1, lr=2e-3), example_obs=_frames(2, 0))
    online_before = copy.deepcopy(online.state_dict())
    train, held_out = _frames(256, 1), _frames(128, 2)
    gap_before = pair.function_gap(held_out)
    sample = _sampler(train, n_actions=6, batch=16)
    for _ in range(80):
        metrics = pair.step(sample)
    assert pair.function_gap(held_out) < 0.1 * gap_before
    assert metrics["perf/replicate_steps_per_update"] == 1
    assert metrics["loss/replicate_after"] < metrics["loss/replicate_before"] * 10
    for name, value in online.state_dict().items():  # frozen online: untouched by Replicate
        assert torch.equal(value, online_before[name]), name
    assert all(p.grad is None for p in online.parameters())


def test_replicate_loss_reaches_only_the_target():
    pair = _mlp_pair(Replicate(1, 1))
    pair.replicate_loss(torch.randn(8, 6)).backward()
    assert all(p.grad is None for p in pair.online.parameters())
    assert all(p.grad is not None for p in pair.target.parameters())


def test_taken_action_variant_only_involves_replayed_actions():
    rule = Replicate(1, 1, variant="taken_action")
    pair = _mlp_pair(rule)
    obs, actions = torch.randn(16, 6), torch.full((16,), 2)
    rule.replicate_loss(pair, obs, actions).backward()
    head_grad = pair.target.head.fc.weight.grad  # [A, features]: one row per action
    assert head_grad[2].abs().sum() > 0
    assert torch.all(head_grad[[0, 1, 3]] == 0)
    with pytest.raises(ValueError, match="needs the replayed actions"):
        rule.replicate_loss(pair, obs)
    with pytest.raises(ValueError, match="needs the replayed actions"):
        pair.replicate_loss(obs, variant="taken_action")


def test_all_actions_loss_matches_the_definition():
    pair = _mlp_pair(Replicate(1, 1))
    obs = torch.randn(16, 6)
    with torch.no_grad():
        expected = (pair.target(obs) - pair.online(obs)).square().sum(1).mean()
        assert torch.allclose(pair.replicate_loss(obs), expected)
        assert math.isclose(pair.function_gap(obs), expected.item() / 4, rel_tol=1e-5)


def test_cross_entropy_needs_categorical_heads():
    with pytest.raises(ValueError, match="categorical"):
        _mlp_pair(Replicate(1, 1, loss="cross_entropy"))
    rule = Replicate(1, 1, loss="cross_entropy")
    pair = _mlp_pair(rule, head="c51")
    obs = torch.randn(16, 6)
    loss = rule.replicate_loss(pair, obs)
    assert torch.equal(loss, pair.replicate_loss(obs, loss="cross_entropy"))
    with torch.no_grad():
        p_online = pair.online(obs).softmax(-1)
        log_p_target = pair.target(obs).log_softmax(-1)
    assert torch.allclose(loss, -(p_online * log_p_target).sum(-1).sum(1).mean())


@pytest.mark.parametrize("schedule", ["block", "interleaved"])
@pytest.mark.parametrize(("kr", "kl"), [(1, 4), (3, 2), (5, 5), (2, 7), (8, 1)])
def test_replicate_steps_per_online_step_match_kr_over_kl(kr, kl, schedule):
    rule = Replicate(kr, kl, schedule=schedule)
    pair = _mlp_pair(rule, width=4)
    sample = _sampler(torch.randn(64, 6), batch=4)
    per_call = [pair.step(sample)["perf/replicate_steps_per_update"] for _ in range(kl * 60 + 3)]
    calls = len(per_call)
    expected_total = (calls // kl) * kr if schedule == "block" else calls * kr // kl
    assert sum(per_call) == expected_total == rule.replicate_steps
    assert rule.online_steps == calls
    window_sums = [sum(per_call[i : i + kl]) for i in range(0, kl * 60, kl)]
    assert window_sums == [kr] * 60  # exactly KR per KL online steps, window after window
    if schedule == "block":
        assert per_call[:kl] == [0] * (kl - 1) + [kr]
    else:
        assert max(per_call) == math.ceil(kr / kl)


def test_rules_reject_bad_arguments():
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="kr must be an integer >= 1"):
            Replicate(bad, 1)
        with pytest.raises(ValueError, match="kl must be an integer >= 1"):
            Replicate(1, bad)
    with pytest.raises(ValueError, match="schedule='sometimes'"):
        Replicate(1, 1, schedule="sometimes")
    with pytest.raises(ValueError, match="period"):
        HardCopy(0)
    with pytest.raises(ValueError, match="tau"):
        Polyak(1.5)


def test_parameter_space_rules_need_identical_architectures():
    for rule in (HardCopy(10), Polyak(0.1)):
        with pytest.raises(ValueError, match="use Replicate"):
            _mlp_pair(rule)


def test_hardcopy_copies_every_period_and_polyak_blends():
    online = build_network("mlp", (6,), 4, hidden=(8,))
    pair = HeteroPair(online, copy.deepcopy(online), HardCopy(period=3))
    sample = _sampler(torch.randn(8, 6))
    with torch.no_grad():
        online.head.fc.bias.add_(1.0)
    copies = [pair.step(sample)["perf/target_copies_per_update"] for _ in range(6)]
    assert copies == [0, 0, 1, 0, 0, 1]  # a rate: its mean over calls is 1 / period
    assert torch.equal(pair.target.head.fc.bias, online.head.fc.bias)
    assert not any(p.requires_grad for p in pair.target.parameters())

    online = build_network("mlp", (6,), 4, hidden=(8,))
    pair = HeteroPair(online, copy.deepcopy(online), Polyak(tau=0.25))
    with torch.no_grad():
        online.head.fc.bias.add_(4.0)
        before = pair.target.head.fc.bias.clone()
    pair.step(sample)
    assert torch.allclose(pair.target.head.fc.bias, before + 0.25 * (online.head.fc.bias - before))


def test_shared_storage_and_mismatched_outputs_are_rejected():
    online = build_network("mlp", (6,), 4, hidden=(8,))
    with pytest.raises(ValueError, match="distinct"):
        HeteroPair(online, online, Replicate(1, 1))
    target = build_network("mlp", (6,), 4, hidden=(8,))
    target.head.fc.weight = online.head.fc.weight
    with pytest.raises(ValueError, match="share storage"):
        HeteroPair(online, target, Replicate(1, 1))
    other = build_network("mlp", (6,), 5, hidden=(8,))
    with pytest.raises(ValueError, match=r"online outputs \(2, 4\) but target outputs \(2, 5\)"):
        HeteroPair(online, other, Replicate(1, 1), example_obs=torch.zeros(2, 6))
    c51 = build_network("mlp", (6,), 4, head="c51", num_atoms=11, v_max=5.0)
    with pytest.raises(ValueError, match="support"):
        HeteroPair(build_network("mlp", (6,), 4, head="c51", num_atoms=11), c51, Replicate(1, 1))


def test_bootstrap_scalar_double_and_categorical():
    pair = _mlp_pair(Replicate(1, 1))
    obs = torch.randn(32, 6)
    with torch.no_grad():
        q_target, q_online = pair.target(obs), pair.online(obs)
    assert torch.allclose(pair.bootstrap(obs), q_target.max(1).values)
    chosen = q_online.argmax(1)
    assert torch.allclose(pair.bootstrap(obs, double=True), q_target[torch.arange(32), chosen])

    pair = _mlp_pair(Replicate(1, 1), head="c51")
    with torch.no_grad():
        probs_target = pair.target(obs).softmax(-1)
        chosen = expected_q(pair.online(obs), pair.support).argmax(1)
    probs = pair.bootstrap(obs, double=True)
    assert probs.shape == (32, 11)
    assert torch.allclose(probs, probs_target[torch.arange(32), chosen])
    assert torch.allclose(probs.sum(-1), torch.ones(32))


def test_batchnorm_modes_during_replicate_and_bootstrap():
    online = build_network("timm/test_resnet", (4, 10, 10), 3)
    target = build_network("timm/test_resnet", (4, 10, 10), 3)
    pair = HeteroPair(online, target, Replicate(kr=2, kl=1))
    seen: list[tuple[str, bool]] = []
    for name, net in (("online", online), ("target", target)):
        net.register_forward_pre_hook(lambda m, _, name=name: seen.append((name, m.training)))
    bn = next(m for m in target.modules() if isinstance(m, nn.BatchNorm2d))
    online_bn = next(m for m in online.modules() if isinstance(m, nn.BatchNorm2d))
    stats_before = bn.running_mean.clone(), online_bn.running_mean.clone()
    online.train()
    target.train()
    obs = torch.randint(0, 256, (16, 4, 10, 10), dtype=torch.uint8)
    pair.step(_sampler(obs, n_actions=3, batch=8))
    # Replicate: online in eval (the function replicated), target in train; the loss reported
    # after the phase is measured in eval mode.
    assert seen == [("online", False), ("target", True)] * 2 + [("target", False)]
    assert not torch.equal(bn.running_mean, stats_before[0])  # target stats follow its data
    assert torch.equal(online_bn.running_mean, stats_before[1])  # online stats untouched
    seen.clear()
    pair.bootstrap(obs, double=True)
    assert seen == [("target", False), ("online", False)]
    assert online.training and target.training  # modes restored


def test_state_dict_round_trip_resumes_identically():
    data = torch.randn(64, 6, generator=torch.Generator().manual_seed(0))

    def run(pair, steps, seed):
        sample = _sampler(data, batch=8, seed=seed)
        for _ in range(steps):
            pair.step(sample)

    torch.manual_seed(0)
    pair = _mlp_pair(Replicate(kr=2, kl=3))
    run(pair, 7, seed=1)
    state = copy.deepcopy(pair.state_dict())
    torch.manual_seed(1)
    resumed = _mlp_pair(Replicate(kr=2, kl=3))
    resumed.load_state_dict(state)
    assert resumed.update.online_steps == 7 and resumed.update.replicate_steps == 4
    run(pair, 5, seed=2)
    run(resumed, 5, seed=2)
    for (name, a), b in zip(pair.state_dict().items(), resumed.state_dict().values(), strict=True):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), name


class _LinearValue(nn.Module):
    """v(s) = phi(s)^T w over a fixed feature map of a one-hot state: `[B, S] -> [B, 1]`."""

    def __init__(self, features: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("features", features)
        self.w = nn.Parameter(torch.zeros(features.shape[1], 1, dtype=features.dtype))

    def forward(self, one_hot: torch.Tensor) -> torch.Tensor:
        return one_hot @ self.features @ self.w


def test_markov_chain_lookahead_replicate_converges_to_true_values():
    """Asadi et al. 2024, Fig. 1: linear online and target nets over different feature maps
    (5 and 8 features) of a 5-state Markov reward process; alternating expected Lookahead and
    Replicate updates reach the true values with v_online = v_target."""
    torch.manual_seed(0)
    n_states, gamma = 5, 0.9
    transitions = torch.softmax(2 * torch.randn(n_states, n_states), dim=1).double()
    rewards = torch.randn(n_states).double()
    identity = torch.eye(n_states, dtype=torch.double)
    v_true = torch.linalg.solve(identity - gamma * transitions, rewards)
    # Orthonormal rows: both maps span R^5, so v_true is representable by either network.
    features_online = torch.linalg.qr(torch.randn(5, 5).double())[0]
    features_target = torch.linalg.qr(torch.randn(8, 8).double())[0][:n_states]
    pair = HeteroPair(
        _LinearValue(features_online),
        _LinearValue(features_target),
        Replicate(kr=4, kl=2, lr=1.0, optimizer="sgd"),
    )
    optimizer = torch.optim.SGD(pair.online.parameters(), lr=1.0)
    states, actions = identity, torch.zeros(n_states, dtype=torch.long)
    for _ in range(1500):
        # Expected Lookahead step: regress v_online onto r + gamma P v_target.
        td_target = rewards + gamma * transitions @ pair.bootstrap(states)
        loss = 0.5 * (pair.online(states).squeeze(1) - td_target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pair.step(lambda: (states, actions))  # expected Replicate steps over every state
    with torch.no_grad():
        v_online, v_target = pair.online(states).squeeze(1), pair.target(states).squeeze(1)
    assert torch.allclose(v_online, v_true, atol=1e-6)
    assert torch.allclose(v_target, v_true, atol=1e-6)
    assert pair.online.w.shape != pair.target.w.shape  # different parameters, same function
