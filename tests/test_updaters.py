"""Target-update rules: a conformance suite every rule passes, then each rule's own behaviour.

A new rule is checked by adding a factory to `RULES` (and its name to `SAME_ARCHITECTURE` if it
needs identical networks, as parameter-space rules do).
"""

from __future__ import annotations

import copy
import math
from typing import Any

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
SAME_ARCHITECTURE = {"hardcopy", "polyak"}
METRICS = {
    "perf/replicate_steps_per_update",
    "perf/target_copies_per_update",
    "loss/replicate_before",
    "loss/replicate_after",
}


def _networks(name: str, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(seed)
    online = build_network("mlp", (5,), 3, hidden=(16,))
    if name in SAME_ARCHITECTURE:
        return online, copy.deepcopy(online)
    return online, build_network("mlp", (5,), 3, hidden=(8, 8))


def _pair(name: str, seed: int = 0) -> HeteroPair:
    return HeteroPair(*_networks(name, seed), RULES[name]())


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


def _flat(state: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts and lists of a state dict as `{path: leaf}`."""
    if isinstance(state, dict | list | tuple):
        items = state.items() if isinstance(state, dict) else enumerate(state)
        return {k: v for key, value in items for k, v in _flat(value, f"{prefix}/{key}").items()}
    return {prefix: state}


def _assert_equal_states(a: dict[str, Any], b: dict[str, Any]) -> None:
    left, right = _flat(a), _flat(b)
    assert left.keys() == right.keys()
    for key, x in left.items():
        same = torch.equal(x, right[key]) if isinstance(x, torch.Tensor) else x == right[key]
        assert same, key


# ---- conformance: what every rule must do ----


@pytest.mark.parametrize("name", RULES)
def test_rule_metrics_use_final_names(name):
    for metrics in _run(_pair(name), range(7)):
        assert set(metrics) <= METRICS, metrics


@pytest.mark.parametrize("name", RULES)
def test_rule_never_writes_the_online_network(name):
    pair = _pair(name)
    for call in range(7):
        before = copy.deepcopy(pair.online.state_dict())
        pair.step(_sampler(call))
        for key, value in pair.online.state_dict().items():
            assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("name", RULES)
def test_rule_moves_the_target_toward_the_online_network(name):
    pair = _pair(name)
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
    pair = _pair(name)
    _run(pair, range(5))
    state = copy.deepcopy(pair.state_dict())
    resumed = _pair(name, seed=1)
    resumed.load_state_dict(state)
    assert resumed.update.state_dict()["online_steps"] == 5
    assert _run(pair, range(5, 11)) == _run(resumed, range(5, 11))
    _assert_equal_states(pair.state_dict(), resumed.state_dict())  # the rule's state included


@pytest.mark.parametrize("name", RULES)
def test_rule_is_bound_once_and_steps_without_a_pair(name):
    """TorchRL's updater shape: bound to its two networks, `step` needs only a sampler."""
    rule: TargetUpdate = RULES[name]()
    online, target = _networks(name)
    rule.bind(online, target)
    reference = HeteroPair(*_networks(name), RULES[name]())
    for call in range(6):
        assert rule.step(_sampler(call)).keys() == reference.step(_sampler(call)).keys()
    _assert_equal_states(target.state_dict(), reference.target.state_dict())
    with pytest.raises(ValueError, match="already bound"):
        rule.bind(*_networks(name))


# ---- each rule's own behaviour ----


def _mlp_pair(rule: TargetUpdate, *, head: str = "q", width: int = 16) -> HeteroPair:
    online = build_network("mlp", (6,), 4, head=head, num_atoms=11, hidden=(width,))
    target = build_network("mlp", (6,), 4, head=head, num_atoms=11, hidden=(width + 8,))
    return HeteroPair(online, target, rule)


@pytest.mark.parametrize("schedule", ["block", "interleaved"])
@pytest.mark.parametrize(("kr", "kl"), [(1, 4), (3, 2), (5, 5), (2, 7), (8, 1)])
def test_replicate_steps_per_online_step_match_kr_over_kl(kr, kl, schedule):
    rule = Replicate(kr, kl, schedule=schedule)
    pair = _mlp_pair(rule, width=4)
    obs, g = torch.randn(64, 6), torch.Generator().manual_seed(0)

    def sample():
        idx = torch.randint(0, len(obs), (4,), generator=g)
        return obs[idx], torch.randint(0, 4, (4,), generator=g)

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


def test_taken_action_variant_only_involves_replayed_actions():
    rule = Replicate(1, 1, variant="taken_action")
    pair = _mlp_pair(rule)
    obs, actions = torch.randn(16, 6), torch.full((16,), 2)
    rule.replicate_loss(obs, actions).backward()
    head_grad = pair.target.head.fc.weight.grad  # [A, features]: one row per action
    assert head_grad[2].abs().sum() > 0
    assert torch.all(head_grad[[0, 1, 3]] == 0)
    with pytest.raises(ValueError, match="needs the replayed actions"):
        rule.replicate_loss(obs)
    with pytest.raises(ValueError, match="needs the replayed actions"):
        pair.replicate_loss(obs)


def test_cross_entropy_needs_categorical_heads():
    with pytest.raises(ValueError, match="categorical"):
        _mlp_pair(Replicate(1, 1, loss="cross_entropy"))
    pair = _mlp_pair(Replicate(1, 1, loss="cross_entropy"), head="c51")
    obs = torch.randn(16, 6)
    loss = pair.replicate_loss(obs)
    with torch.no_grad():
        p_online = pair.online(obs).softmax(-1)
        log_p_target = pair.target(obs).log_softmax(-1)
    assert torch.allclose(loss, -(p_online * log_p_target).sum(-1).sum(1).mean())


def test_replicate_weights_the_loss_when_the_batch_brings_weights():
    """A `(obs, actions, weights)` batch whose weight sits on one sample moves the target as
    that sample alone does; `(obs, actions)` batches keep working (plain mean)."""
    obs, actions = torch.randn(8, 5), torch.randint(0, 3, (8,))
    weights = torch.zeros(8)
    weights[2] = 0.3
    weighted = HeteroPair(*_networks("replicate_block"), Replicate(1, 1, lr=1e-2))
    alone = HeteroPair(*_networks("replicate_block"), Replicate(1, 1, lr=1e-2))
    before = weighted.step(lambda: (obs, actions, weights))["loss/replicate_before"]
    alone_before = alone.step(lambda: (obs[2:3], actions[2:3]))["loss/replicate_before"]
    assert torch.allclose(before, alone_before)
    for a, b in zip(weighted.target.parameters(), alone.target.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


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

    def sample():  # parameter-space rules never draw
        raise AssertionError("sampled")

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
