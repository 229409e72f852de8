"""DQN / Rainbow-lite learner on a `HeteroPair`.

The online network takes the Lookahead (TD) steps here with the agent's own Adam; the target
changes only through `HeteroPair.step`, so a same-architecture `HardCopy` run is exactly DQN
(Mnih et al. 2015) and `Replicate` turns it into Lookahead-Replicate (Asadi et al. 2024).
Options: double Q-learning, dueling heads, n-step returns (computed by the replay memory),
C51 (Bellemare et al. 2017) and prioritised replay (Schaul et al. 2016).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from hetero_lr.config import AgentConfig
from hetero_lr.losses import categorical_projection, gather_actions, td_loss
from hetero_lr.pair import HeteroPair


class DivergenceError(RuntimeError):
    """The TD loss or the Q-values became non-finite or exploded."""


# Q-values beyond this are a diverged run, not a high score: clipped rewards and gamma 0.99
# bound true values by 100, and raw-reward classic-control tasks by a few hundred.
Q_LIMIT = 1e6


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
        params = list(pair.online.parameters())
        # Fused Adam is 6-9x faster than the default implementation on CPU (measured here).
        self.optimizer = torch.optim.Adam(
            params, lr=cfg.lr, eps=cfg.adam_eps, fused=device.type in ("cpu", "cuda")
        )

    def act(self, obs: Tensor, epsilon: float, rng: np.random.Generator) -> np.ndarray:
        """Epsilon-greedy actions `[N]` for a batch of observations `[N, ...]`.

        The random draws do not depend on the networks, so runs stay reproducible and the
        forward pass is skipped when every lane explores.
        """
        explore = rng.random(obs.shape[0]) < epsilon
        random_actions = rng.integers(0, self.n_actions, size=obs.shape[0])
        if explore.all():
            return random_actions
        greedy = self.pair.act_values(obs).argmax(dim=1).cpu().numpy()
        return np.where(explore, random_actions, greedy)

    def update(self, batch: Batch) -> tuple[dict[str, float], Tensor]:
        """One Lookahead step on the online network.

        Returns:
            Metrics, and per-sample priorities `[B]` for prioritised replay (|TD error| for
            scalar heads, the cross-entropy for C51, as in Dopamine's Rainbow).
        """
        pair, cfg = self.pair, self.cfg
        out = pair.online(batch.obs)  # [B, A] or [B, A, N]
        out_taken = gather_actions(out, batch.actions)  # [B] or [B, N]
        if pair.support is None:
            # y = r_t^(n) + gamma^n max_a' Q_target(s_{t+n}, a')   (Mnih et al. 2015, eq. 2)
            targets = batch.rewards + batch.discounts * pair.bootstrap(batch.next_obs, cfg.double)
            per_sample = td_loss(out_taken, targets, cfg.loss)
            priorities = (targets - out_taken).detach().abs()
            q_mean = out.detach().mean()
        else:
            # Projected distributional target Phi T Z(s_{t+n}, a*)   (Bellemare et al. 2017, eq. 7)
            next_probs = pair.bootstrap(batch.next_obs, cfg.double)
            target_probs = categorical_projection(
                next_probs, batch.rewards, batch.discounts, pair.support
            )
            per_sample = -(target_probs * out_taken.log_softmax(dim=-1)).sum(dim=-1)
            priorities = per_sample.detach()
            q_mean = (out.detach().softmax(-1) * pair.support).sum(-1).mean()
        loss = (batch.weights * per_sample).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(pair.online.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        loss_value, q_value = loss.item(), q_mean.item()
        if not np.isfinite(loss_value) or abs(q_value) > Q_LIMIT:
            raise DivergenceError(f"diverged: TD loss {loss_value:.3g}, mean Q {q_value:.3g}")
        return {"loss/td": loss_value, "q/online_mean": q_value}, priorities
