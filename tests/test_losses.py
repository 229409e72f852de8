"""Pure loss functions against hand-computed cases."""

from __future__ import annotations

import torch

from hetero_lr.losses import (
    categorical_projection,
    expected_q,
    gather_actions,
    replicate_loss,
    td_loss,
)

SUPPORT = torch.linspace(-2.0, 2.0, 5)  # atoms -2, -1, 0, 1, 2


def test_projection_identity_and_shift():
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.25, 0.15]])
    same = categorical_projection(probs, torch.zeros(1), torch.ones(1), SUPPORT)
    assert torch.allclose(same, probs)
    # A reward of +1 shifts every atom one place right; mass beyond V_max piles onto it.
    shifted = categorical_projection(probs, torch.ones(1), torch.ones(1), SUPPORT)
    assert torch.allclose(shifted, torch.tensor([[0.0, 0.1, 0.2, 0.3, 0.4]]))


def test_projection_splits_mass_between_neighbours():
    # Terminal transition with reward 0.25: all mass at z = 0.25, split 3/4 to 0 and 1/4 to 1.
    probs = torch.full((1, 5), 0.2)
    out = categorical_projection(probs, torch.tensor([0.25]), torch.zeros(1), SUPPORT)
    assert torch.allclose(out, torch.tensor([[0.0, 0.0, 0.75, 0.25, 0.0]]))
    # Discount 0.5, reward 0: atoms shrink to -1, -0.5, 0, 0.5, 1.
    out = categorical_projection(probs, torch.zeros(1), torch.full((1,), 0.5), SUPPORT)
    assert torch.allclose(out, torch.tensor([[0.0, 0.3, 0.4, 0.3, 0.0]]))
    assert torch.allclose(out.sum(-1), torch.ones(1))


def test_expected_q_gather_and_td_loss():
    logits = torch.zeros(2, 3, 5)
    logits[0, 1, 4] = 50.0  # action 1 of sample 0 is (almost) surely worth +2
    q = expected_q(logits, SUPPORT)
    assert torch.allclose(q[0, 1], torch.tensor(2.0)) and torch.allclose(q[1], torch.zeros(3))
    assert expected_q(q, None) is q
    values = torch.arange(6.0).view(2, 3)
    assert torch.equal(gather_actions(values, torch.tensor([2, 0])), torch.tensor([2.0, 3.0]))
    assert gather_actions(logits, torch.tensor([1, 0])).shape == (2, 5)
    loss = td_loss(torch.tensor([0.0, 0.0]), torch.tensor([0.5, 3.0]), "huber")
    assert torch.allclose(loss, torch.tensor([0.125, 2.5]))


def test_weighted_replicate_loss_is_the_weighted_mean_over_samples():
    q_target = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]])
    q_online = torch.tensor([[0.0, 0.0], [1.0, 1.0], [3.0, 1.0]])
    # all actions, MSE: per-sample gaps 1 + 4 = 5, 1 + 1 = 2, 0 + 4 = 4
    weights = torch.tensor([0.5, 1.0, 0.25])
    expected = (0.5 * 5 + 1.0 * 2 + 0.25 * 4) / (0.5 + 1.0 + 0.25)
    loss = replicate_loss(q_target, q_online, support=None, weights=weights)
    assert torch.allclose(loss, torch.tensor(expected))
    assert torch.allclose(replicate_loss(q_target, q_online, support=None), torch.tensor(11 / 3))
    # taken action [1, 0, 1]: gaps 4, 1, 4
    actions = torch.tensor([1, 0, 1])
    taken = replicate_loss(q_target, q_online, support=None, actions=actions, weights=weights)
    assert torch.allclose(taken, torch.tensor((0.5 * 4 + 1.0 + 0.25 * 4) / 1.75))
    # equal weights of any size give the plain mean
    equal = replicate_loss(q_target, q_online, support=None, weights=torch.full((3,), 0.2))
    assert torch.allclose(equal, torch.tensor(11 / 3))
