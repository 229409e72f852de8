"""DQN / Rainbow-lite learner on a `HeteroPair`.

The online network takes the Lookahead (TD) steps here with the agent's own Adam; the target
changes only through `HeteroPair.step`, so a same-architecture `HardCopy` run is exactly DQN
(Mnih et al. 2015) and `Replicate` turns it into Lookahead-Replicate (Asadi et al. 2024).
Options: double Q-learning, dueling heads, n-step returns (computed by the replay memory),
C51 (Bellemare et al. 2017) and prioritised replay (Schaul et al. 2016).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hetero_lr.config import AgentConfig, EnvConfig
from hetero_lr.envs import reward_scale
from hetero_lr.losses import categorical_projection, gather_actions, td_loss
from hetero_lr.pair import HeteroPair


class DivergenceError(RuntimeError):
    """The TD loss became non-finite or the mean |Q| passed `agent.divergence_q`."""


@dataclass(frozen=True)
class DivergenceBound:
    """The mean |Q| bound in force (`AgentConfig.divergence_q`), resolved for an environment."""

    value: float | None
    """Largest mean |Q| of a healthy run; None: no bound."""
    rule: str
    """Where `value` comes from, for messages and run parameters."""

    @classmethod
    def resolve(cls, agent: AgentConfig, env: EnvConfig) -> DivergenceBound:
        """`auto` -> 2 r_max / (1 - gamma), or no bound where r_max is unknown."""
        if agent.divergence_q is None:
            return cls(None, "disabled (agent.divergence_q=none)")
        if agent.divergence_q != "auto":
            return cls(float(agent.divergence_q), "agent.divergence_q")
        r_max = 1.0 if env.clip_rewards else reward_scale(env.id)
        if r_max is None:
            return cls(None, f"disabled: auto, and {env.id} has no known reward scale unclipped")
        why = "clipped rewards" if env.clip_rewards else f"{env.id} rewards"
        rule = f"= 2 r_max / (1 - gamma), r_max = {r_max:g}: {why}"
        return cls(2 * r_max / (1 - agent.gamma), rule)


class DivergenceGuard:
    """Watches per-update TD losses and mean |Q| values read in batches; `check` raises.

    The host feeds it the values of a window of updates (`observe`) and calls `check` at the
    points it chose (a log row); `reset` starts the next window.
    """

    def __init__(self, bound: DivergenceBound) -> None:
        self.bound = bound
        self.reset()

    def reset(self) -> None:
        self.worst_q = 0.0  # largest mean |Q| of the window
        self.bad_loss: float | None = None  # first non-finite TD loss of the window

    def observe(self, losses: Iterable[float], q_abs: Iterable[float]) -> None:
        if self.bad_loss is None:
            self.bad_loss = next((v for v in losses if not math.isfinite(v)), None)
        values = [self.worst_q, *q_abs]
        self.worst_q = math.nan if any(map(math.isnan, values)) else max(values)

    def check(self, step: int) -> None:
        """Raise `DivergenceError` if the window saw a non-finite loss or passed the bound."""
        if self.bad_loss is not None:
            raise DivergenceError(f"diverged: TD loss {self.bad_loss} by step {step:,}")
        bound, q = self.bound.value, self.worst_q
        if bound is not None and not q <= bound:
            raise DivergenceError(
                f"diverged: mean |Q| {q:.4g} > {bound:.4g} ({self.bound.rule}) by step {step:,}"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"worst_q": self.worst_q, "bad_loss": self.bad_loss}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.worst_q, self.bad_loss = state["worst_q"], state["bad_loss"]


@dataclass(frozen=True)
class Batch:
    """A replay batch as tensors on the learner's device."""

    obs: Tensor  # [B, *obs_shape]
    actions: Tensor  # [B] int64
    rewards: Tensor  # [B] n-step discounted returns
    next_obs: Tensor  # [B, *obs_shape]
    discounts: Tensor  # [B] gamma^m, 0 after termination
    weights: Tensor  # [B] importance-sampling weights


def epsilon_at(step: int, cfg: AgentConfig) -> float:
    """Linearly decaying epsilon after the warm-up (Dopamine `linearly_decaying_epsilon`)."""
    if step < cfg.learning_starts:
        return 1.0
    progress = min(1.0, (step - cfg.learning_starts) / max(1, cfg.epsilon_decay_steps))
    return cfg.epsilon_start + progress * (cfg.epsilon_end - cfg.epsilon_start)


def make_optimizer(
    params: list[nn.Parameter], cfg: AgentConfig, device: torch.device
) -> torch.optim.Optimizer:
    """The online optimizer `cfg.optimizer` asks for."""
    if cfg.optimizer == "rmsprop":
        # Young & Tian (2019), MinAtar `examples/dqn.py`: `RMSprop(lr, alpha=0.95, centered=True,
        # eps=0.01, momentum=0.95)`. torch has no fused RMSProp.
        return torch.optim.RMSprop(
            params,
            lr=cfg.lr,
            alpha=0.95,
            eps=cfg.rmsprop_eps,
            momentum=cfg.rmsprop_momentum,
            centered=True,
        )
    # Fused Adam is 6-9x faster than the default implementation on CPU (measured here).
    return torch.optim.Adam(
        params, lr=cfg.lr, eps=cfg.adam_eps, fused=device.type in ("cpu", "cuda")
    )


def clip_grad_norm(grads: list[Tensor], max_norm: float) -> None:
    """`nn.utils.clip_grad_norm_` for gradients on one device, in one dtype: the same kernels
    in the same order (norms by `_foreach_norm`, then `_foreach_mul_` by min(max_norm /
    (norm + 1e-6), 1)), without its grouping of the tensors by device and dtype at every call
    (40% of its CPU time for the `minatar` network, measured here)."""
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, torch.clamp(max_norm / (total + 1e-6), max=1.0))


class Agent:
    """Online (Lookahead) updates and epsilon-greedy acting for a `HeteroPair`.

    Args:
        pair: the online/target networks and their target-update rule, on `device`.
        cfg: learner settings.
        n_actions: size of the discrete action space.
        device: where the networks live.
    """

    def __init__(
        self, pair: HeteroPair, cfg: AgentConfig, *, n_actions: int, device: torch.device
    ) -> None:
        self.pair, self.cfg, self.n_actions = pair, cfg, n_actions
        self._params = list(pair.online.parameters())
        self.optimizer = make_optimizer(self._params, cfg, device)

    def act(self, obs: Tensor, epsilon: float, rng: np.random.Generator) -> np.ndarray:
        """Epsilon-greedy actions `[N]` for a batch of observations `[N, ...]`.

        The random draws do not depend on the networks, so runs stay reproducible and the
        forward pass is skipped when every lane explores.
        """
        n = obs.shape[0]
        if n == 1:  # scalar draws: the same stream as size-1 draws, at a quarter of the cost
            explore_one, action = rng.random() < epsilon, rng.integers(0, self.n_actions)
            if explore_one:
                return np.array([action])
            return self.pair.act_values(obs).argmax(dim=1).cpu().numpy()
        explore = rng.random(n) < epsilon
        random_actions = rng.integers(0, self.n_actions, size=n)
        if explore.all():
            return random_actions
        greedy = self.pair.act_values(obs).argmax(dim=1).cpu().numpy()
        return np.where(explore, random_actions, greedy)

    def update(self, batch: Batch) -> tuple[dict[str, Tensor], Tensor]:
        """One Lookahead step on the online network.

        Nothing is read back from the device here (no `.item()`): the host reads the metrics
        in batches and checks them for divergence (`DivergenceGuard`).

        Returns:
            Metrics as detached 0-d tensors (`loss/td`, `q/online_mean`, `q/online_abs_mean`:
            the mean |Q| over the batch and actions that `agent.divergence_q` bounds), and
            per-sample priorities `[B]` for prioritised replay (|TD error| for scalar heads, the
            cross-entropy for C51, as in Dopamine's Rainbow).
        """
        pair, cfg = self.pair, self.cfg
        out = pair.online(batch.obs)  # [B, A] or [B, A, N]
        out_taken = gather_actions(out, batch.actions)  # [B] or [B, N]
        if pair.support is None:
            # y = r_t^(n) + gamma^n max_a' Q_target(s_{t+n}, a')   (Mnih et al. 2015, eq. 2)
            targets = batch.rewards + batch.discounts * pair.bootstrap(batch.next_obs, cfg.double)
            per_sample = td_loss(out_taken, targets, cfg.loss)
            priorities = (targets - out_taken).detach().abs()
            q = out.detach()
        else:
            # Projected distributional target Phi T Z(s_{t+n}, a*)   (Bellemare et al. 2017, eq. 7)
            next_probs = pair.bootstrap(batch.next_obs, cfg.double)
            target_probs = categorical_projection(
                next_probs, batch.rewards, batch.discounts, pair.support
            )
            per_sample = -(target_probs * out_taken.log_softmax(dim=-1)).sum(dim=-1)
            priorities = per_sample.detach()
            q = (out.detach().softmax(-1) * pair.support).sum(-1)
        loss = (batch.weights * per_sample).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm is not None:
            clip_grad_norm([p.grad for p in self._params if p.grad is not None], cfg.max_grad_norm)
        self.optimizer.step()
        metrics = {
            "loss/td": loss.detach(),
            "q/online_mean": q.mean(),
            "q/online_abs_mean": q.abs().mean(),
        }
        return metrics, priorities
