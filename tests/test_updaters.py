"""What every target-update rule must do, run for each rule (a conformance suite)."""

from __future__ import annotations

import copy

import pytest
import torch

from hetero_lr import HardCopy, HeteroPair, Polyak, Replicate, TargetUpdate, build_network

RULES = {
    "replicate_block": lambda: Replicate(2, 3, lr=1e-2),
    "replicate_interleaved": lambda: Replicate(2, 3, lr=1e-2, schedule="interleaved"),
    "replicate_taken_action_sgd": lambda: Replicate(
        1, 2, lr=1e-2, variant="taken_action", optimizer="sgd", max_grad_norm=1.0
    ),
    "hardcopy": lambda: HardCopy(3),
    "polyak": lambda: Polyak(0.3),
}
METRICS = {
    "perf/replicate_steps_per_update",
    "perf/target_copies_per_update",
    "loss/replicate_before",
    "loss/replicate_after",
}


def _pair(rule: TargetUpdate, seed: int = 0) -> HeteroPair:
    torch.manual_seed(seed)
    online = build_network("mlp", (5,), 3, hidden=(16,))
    same = isinstance(rule, (HardCopy, Polyak))
    target = copy.deepcopy(online) if same else build_network("mlp", (5,), 3, hidden=(8, 8))
    return HeteroPair(online, target, rule)


def _sampler(seed: int):
    g = torch.Generator().manual_seed(seed)
    return lambda: (torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g))


def _lookahead(pair: HeteroPair, seed: int) -> None:
    """A stand-in host step: move the online net so the rule has something to follow."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in pair.online.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))


def _run(pair: HeteroPair, calls: range) -> list[dict[str, float]]:
    out = []
    for call in calls:
        _lookahead(pair, call)
        out.append(pair.step(_sampler(call)))
    return out


@pytest.mark.parametrize("name", RULES)
def test_rule_metrics_use_final_names(name):
    for metrics in _run(_pair(RULES[name]()), range(7)):
        assert set(metrics) <= METRICS, metrics


@pytest.mark.parametrize("name", RULES)
def test_rule_never_writes_the_online_network(name):
    pair = _pair(RULES[name]())
    for call in range(7):
        before = copy.deepcopy(pair.online.state_dict())
        pair.step(_sampler(call))
        for key, value in pair.online.state_dict().items():
            assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("name", RULES)
def test_rule_moves_the_target_toward_the_online_network(name):
    pair = _pair(RULES[name]())
    obs = torch.randn(64, 5, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        for p in pair.online.parameters():
            p.add_(0.5)
    gap = pair.function_gap(obs)
    for call in range(12):
        pair.step(_sampler(call))
    assert pair.function_gap(obs) < gap


@pytest.mark.parametrize("name", RULES)
def test_rule_state_round_trip_continues_identically(name):
    """Counters and optimizer state survive `HeteroPair.state_dict`; the pair then continues
    exactly as one that never stopped."""
    pair = _pair(RULES[name]())
    _run(pair, range(5))
    state = copy.deepcopy(pair.state_dict())
    resumed = _pair(RULES[name](), seed=1)
    resumed.load_state_dict(state)
    assert resumed.update.state_dict()["online_steps"] == 5
    assert _run(pair, range(5, 11)) == _run(resumed, range(5, 11))
    for (key, a), b in zip(pair.state_dict().items(), resumed.state_dict().values(), strict=True):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), key


def test_replicate_weights_the_loss_when_the_batch_brings_weights():
    """A `(obs, actions, weights)` batch whose weight sits on one sample moves the target as
    that sample alone does; `(obs, actions)` batches keep working (plain mean)."""
    obs, actions = torch.randn(8, 5), torch.randint(0, 3, (8,))
    weights = torch.zeros(8)
    weights[2] = 0.3
    weighted, alone = _pair(Replicate(1, 1, lr=1e-2)), _pair(Replicate(1, 1, lr=1e-2))
    before = weighted.step(lambda: (obs, actions, weights))["loss/replicate_before"]
    alone_before = alone.step(lambda: (obs[2:3], actions[2:3]))["loss/replicate_before"]
    assert torch.allclose(before, alone_before)
    for a, b in zip(weighted.target.parameters(), alone.target.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
