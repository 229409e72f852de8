"""Pure tensor functions: Q expectations, TD targets, C51 projection, Replicate losses.

Shapes: `B` batch, `A` actions, `N` atoms. Scalar heads give Q-values `[B, A]`; categorical
heads give logits `[B, A, N]` over a fixed `support` `[N]` (Bellemare et al. 2017).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional as F

ReplicateLossKind = Literal["mse", "huber", "cross_entropy"]
"""How `replicate_loss` compares the two networks' outputs."""


def expected_q(out: Tensor, support: Tensor | None) -> Tensor:
    """Q-values `[B, A]` from a network output (identity for scalar heads)."""
    if support is None:
        return out
    return (out.softmax(dim=-1) * support).sum(dim=-1)


def gather_actions(values: Tensor, actions: Tensor) -> Tensor:
    """Select `values[b, actions[b]]`: `[B, A] -> [B]` or `[B, A, N] -> [B, N]`."""
    index = actions.long().view(-1, 1, *([1] * (values.dim() - 2)))
    index = index.expand(-1, 1, *values.shape[2:])
    return values.gather(1, index).squeeze(1)


def td_loss(q_taken: Tensor, targets: Tensor, kind: str = "huber") -> Tensor:
    """Per-sample TD loss `[B]` between Q(s, a) and the bootstrapped target (no reduction)."""
    if kind == "huber":
        return F.smooth_l1_loss(q_taken, targets, reduction="none")
    if kind == "mse":
        return F.mse_loss(q_taken, targets, reduction="none")
    raise ValueError(f"unknown TD loss {kind!r}; accepted: huber, mse")


def categorical_projection(
    next_probs: Tensor, rewards: Tensor, discounts: Tensor, support: Tensor
) -> Tensor:
    """Project the Bellman-updated distribution onto the support (Bellemare et al. 2017, Alg. 1).

    Args:
        next_probs: target distribution at the bootstrap action `[B, N]`.
        rewards: n-step returns `[B]`.
        discounts: `gamma^n`, 0 where the episode terminated `[B]`.
        support: atom values `[N]`, evenly spaced.

    Returns:
        Projected target probabilities `[B, N]`.
    """
    v_min, v_max = support[0], support[-1]
    delta_z = (v_max - v_min) / (support.numel() - 1)
    # T z_j = r + gamma^n z_j, clipped to [V_min, V_max]  (Alg. 1, line "Compute the projection").
    tz = (rewards[:, None] + discounts[:, None] * support[None, :]).clamp(v_min, v_max)
    # b_j = (T z_j - V_min) / delta_z: fractional atom index of each shifted atom.
    b = (tz - v_min) / delta_z
    lower, upper = b.floor().long(), b.ceil().long()
    # Distribute p_j to the neighbours l and u in proportion to (u - b) and (b - l); written as
    # (1 - (b - l)) and (b - l) so that a b landing exactly on an atom (l == u) keeps all its mass.
    upper_weight = b - lower
    projected = torch.zeros_like(next_probs)
    projected.scatter_add_(1, lower, next_probs * (1.0 - upper_weight))
    projected.scatter_add_(1, upper, next_probs * upper_weight)
    return projected


def replicate_loss(
    out_target: Tensor,
    out_online: Tensor,
    *,
    support: Tensor | None,
    actions: Tensor | None = None,
    kind: ReplicateLossKind = "mse",
    weights: Tensor | None = None,
) -> Tensor:
    """The Replicate loss: function-space gap of the target to the (frozen) online network.

    `G(w) = mean_s sum_a l(Q_w(s, a), Q_theta(s, a))` over all actions, or only at the replayed
    action when `actions` is given (Asadi et al. 2024, Sec. 3). `kind` is `mse`, `huber` (on
    Q-values; expected values for categorical heads) or `cross_entropy` of the target's
    distribution against the online one (categorical heads only). With `weights`, the mean over
    samples is weighted: `sum_i w_i G_i / sum_i w_i` (self-normalised, so the loss keeps its
    scale whatever the weights' normalisation).

    Args:
        out_target: target network output `[B, A]` or `[B, A, N]`, with gradient.
        out_online: online network output of the same shape, without gradient.
        support: atom values `[N]` for categorical heads, else None.
        actions: replayed actions `[B]` for the taken-action variant, else None.
        kind: `mse`, `huber` or `cross_entropy`.
        weights: per-sample importance-sampling weights `[B]`, or None for a plain mean.

    Returns:
        Scalar loss.
    """
    if kind == "cross_entropy":
        if support is None:
            raise ValueError("cross_entropy Replicate loss needs categorical (c51) heads")
        per_action = -(out_online.softmax(-1) * out_target.log_softmax(-1)).sum(-1)  # [B, A]
    elif kind in ("mse", "huber"):
        q_target, q_online = expected_q(out_target, support), expected_q(out_online, support)
        if kind == "mse":
            per_action = (q_target - q_online).square()
        else:
            per_action = F.smooth_l1_loss(q_target, q_online, reduction="none")
    else:
        raise ValueError(f"unknown Replicate loss {kind!r}; accepted: mse, huber, cross_entropy")
    per_sample = gather_actions(per_action, actions) if actions is not None else per_action.sum(1)
    if weights is None:
        return per_sample.mean()
    return (weights * per_sample).sum() / weights.sum()
