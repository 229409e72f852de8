"""HeteroPair: the two networks, the output contract, bootstrap values and the function gap.

What each target-update rule does is checked in `tests/test_updaters.py`."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from hetero_lr import HardCopy, HeteroPair, Replicate, build_network
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
    first = pair.step(sample)
    for _ in range(79):
        metrics = pair.step(sample)
    assert pair.function_gap(held_out) < 0.1 * gap_before
    assert metrics["perf/replicate_steps_per_update"] == 1
    # The first Replicate step lowers the loss on its batch; 80 steps cut it tenfold.
    assert first["loss/replicate_after"] < first["loss/replicate_before"]
    assert metrics["loss/replicate_after"] < 0.1 * first["loss/replicate_before"]
    for name, value in online.state_dict().items():  # frozen online: untouched by Replicate
        assert torch.equal(value, online_before[name]), name
    assert all(p.grad is None for p in online.parameters())


def test_replicate_loss_reaches_only_the_target():
    pair = _mlp_pair(Replicate(1, 1))
    pair.replicate_loss(torch.randn(8, 6)).backward()
    assert all(p.grad is None for p in pair.online.parameters())
    assert all(p.grad is not None for p in pair.target.parameters())


def test_all_actions_loss_matches_the_definition():
    pair = _mlp_pair(Replicate(1, 1))
    obs = torch.randn(16, 6)
    with torch.no_grad():
        expected = (pair.target(obs) - pair.online(obs)).square().sum(1).mean()
        assert torch.allclose(pair.replicate_loss(obs), expected)
        assert math.isclose(pair.function_gap(obs), expected.item() / 4, rel_tol=1e-5)


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


def test_a_rule_serves_one_pair():
    rule = Replicate(1, 1)
    _mlp_pair(rule)
    with pytest.raises(ValueError, match="already bound"):
        _mlp_pair(rule)


def test_replicate_loss_needs_a_replicate_rule():
    online = build_network("mlp", (6,), 4, hidden=(8,))
    pair = HeteroPair(online, copy.deepcopy(online), HardCopy(period=3))
    with pytest.raises(TypeError, match="needs a Replicate rule"):
        pair.replicate_loss(torch.randn(4, 6))
