"""Figure 1 of Asadi et al. (2024): Lookahead-Replicate makes two linear value functions with
parameters of different dimension equal in function space.

The simulator runs Algorithm 1 (Sec. 3) through `hetero_lr.HeteroPair` with a `Replicate` rule
(SGD, block schedule): each linear model is an `nn.Module` mapping a one-hot state encoding
`[B, S]` to one action's value `[B, 1]`, every state is one row of the batch and d enters as the
Replicate loss's sample weights, so the pair computes the expected Replicate update. The closed
form it is checked against is v_pi (`Chain.values`).

The chain has two states, so value space is the plane. The online map has d1 = 3 features and the
target map d2 = 2; both have rank 2, so each network represents every value function, the
projections onto their spans are the identity, and the only joint fixed point of Lookahead
(Phi theta = r + gamma P Phi_t w) and Replicate (Phi_t w = Phi theta) is Phi theta = Phi_t w =
v_pi. The parameters then differ, and the online limit depends on its start (3 parameters,
2 constraints): equality holds in function space only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from analysis.markov_chain.chain import Chain, stationary_distribution
from hetero_lr.pair import HeteroPair
from hetero_lr.updaters import Replicate


def figure1_chain() -> Chain:
    """The two-state chain of Figure 1 (our own numbers), on-policy distribution."""
    transitions = np.array([[0.2, 0.8], [0.6, 0.4]])
    return Chain(transitions, np.array([1.0, -0.5]), 0.8, stationary_distribution(transitions))


def figure1_features() -> tuple[np.ndarray, np.ndarray]:
    """Online features Phi `[2, 3]` and target features Phi_t `[2, 2]`, both of rank 2."""
    online = np.array([[1.0, 0.0, 1.0], [0.5, 1.0, -1.0]])
    target = np.array([[1.0, 1.0], [0.0, 2.0]])
    return online, target


class LinearValue(nn.Module):
    """v(s) = phi(s)^T weight on a one-hot state encoding: `[B, S] -> [B, 1]` (one action).

    Args:
        features: Phi `[S, d]`, stored as a buffer (copied).
        weight: initial parameters `[d]` (copied).
    """

    def __init__(self, features: np.ndarray, weight: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("features", torch.tensor(features, dtype=torch.float64))
        self.weight = nn.Parameter(torch.tensor(weight, dtype=torch.float64))

    def forward(self, obs: Tensor) -> Tensor:
        """Values `[B, 1]` of the states encoded in `obs` `[B, S]`."""
        return (obs @ self.features @ self.weight).unsqueeze(-1)


@dataclass(frozen=True)
class LRSettings:
    """One Lookahead-Replicate run (Algorithm 1 of Asadi et al. 2024).

    Attributes:
        kl: Lookahead steps (online TD steps) per iteration.
        kr: Replicate steps (target gradient steps) per iteration.
        lr_online: alpha, SGD step size of the Lookahead.
        lr_target: beta, SGD step size of the Replicate.
        iterations: Lookahead-Replicate iterations (kl online steps each).
        seed: draws the initial parameters (standard normal, scaled by `init_scale`).
        init_scale: standard deviation of the initial parameters.
    """

    kl: int = 4
    kr: int = 4
    lr_online: float = 0.8
    lr_target: float = 0.3
    iterations: int = 80
    seed: int = 0
    init_scale: float = 1.5


def simulate(
    chain: Chain,
    phi_online: np.ndarray,
    phi_target: np.ndarray,
    settings: LRSettings,
    *,
    init: tuple[np.ndarray, np.ndarray] | None = None,
) -> pd.DataFrame:
    """Run Lookahead-Replicate on `chain` through `HeteroPair`, recording every online step.

    Args:
        chain: the Markov reward process and state distribution.
        phi_online: online features `[S, d1]`; phi_target: target features `[S, d2]`.
        settings: KL, KR, step sizes, iterations and the initialisation seed.
        init: initial (theta `[d1]`, w `[d2]`); drawn from `settings.seed` when None.

    Returns:
        One row per online step (index `step`, row 0 the start): parameters `theta1..theta{d1}`
        and `w1..w{d2}`, values `v_online1..`, `v_target1..` per state, and `gap`, the pair's
        Replicate loss weighted by d, ||v_w - v_theta||^2_D.
    """
    if init is None:
        rng = np.random.default_rng(settings.seed)
        init = (
            settings.init_scale * rng.standard_normal(phi_online.shape[1]),
            settings.init_scale * rng.standard_normal(phi_target.shape[1]),
        )
    rule = Replicate(settings.kr, settings.kl, lr=settings.lr_target, optimizer="sgd")
    states = torch.eye(chain.num_states, dtype=torch.float64)
    pair = HeteroPair(
        LinearValue(phi_online, init[0]), LinearValue(phi_target, init[1]), rule, example_obs=states
    )
    d = torch.as_tensor(chain.distribution, dtype=torch.float64)
    actions = torch.zeros(chain.num_states, dtype=torch.long)
    transitions = torch.as_tensor(chain.transitions, dtype=torch.float64)
    rewards = torch.as_tensor(chain.rewards, dtype=torch.float64)
    optimizer = torch.optim.SGD(pair.online_parameters(), lr=settings.lr_online)

    def sample() -> tuple[Tensor, Tensor, Tensor]:
        # Every state once, weighted by d: the Replicate loss becomes ||v_w - v_theta||^2_D.
        return states, actions, d

    rows = [_record(pair, states, d)]
    for _ in range(settings.iterations * settings.kl):
        # Lookahead (Sec. 3): the gradient of 1/2 ||Phi theta - (r + gamma P v_w)||^2_D is the
        # expected semi-gradient TD step; the bootstrap comes from the target, without gradient.
        bootstrap = rewards + chain.gamma * transitions @ pair.bootstrap(states)
        loss = 0.5 * (d * (pair(states).squeeze(1) - bootstrap).square()).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        pair.step(sample)  # kr Replicate steps after every kl-th Lookahead step
        rows.append(_record(pair, states, d))
    return pd.DataFrame(rows).rename_axis("step")


def _record(pair: HeteroPair, states: Tensor, d: Tensor) -> dict[str, float]:
    """One row of `simulate`: parameters, values and the D-weighted gap."""
    with torch.no_grad():
        gap = pair.replicate_loss(states, weights=d).item()
    columns = {
        "theta": pair.online.weight.detach().numpy(),
        "w": pair.target.weight.detach().numpy(),
        "v_online": pair.act_values(states).squeeze(1).numpy(),
        "v_target": pair.bootstrap(states).numpy(),
    }
    row = {f"{name}{i + 1}": float(x) for name, xs in columns.items() for i, x in enumerate(xs)}
    return {**row, "gap": gap}


def block(trajectory: pd.DataFrame, name: str) -> np.ndarray:
    """The columns `name1, name2, ...` of a trajectory as an array `[steps + 1, n]`."""
    return trajectory.filter(regex=rf"^{name}\d+$").to_numpy()


def figure1(settings: LRSettings) -> pd.DataFrame:
    """The Figure-1 run: `figure1_chain` with `figure1_features` (3 online, 2 target features)."""
    phi_online, phi_target = figure1_features()
    return simulate(figure1_chain(), phi_online, phi_target, settings)


def summary(trajectory: pd.DataFrame, v_pi: np.ndarray) -> str:
    """Two lines: v_pi against both end values, then the end parameters and gap."""
    last = trajectory.iloc[[-1]]
    return (
        f"figure 1: v_pi={np.round(v_pi, 6).tolist()} "
        f"v_online={np.round(block(last, 'v_online')[0], 6).tolist()} "
        f"v_target={np.round(block(last, 'v_target')[0], 6).tolist()}\n"
        f"  theta={np.round(block(last, 'theta')[0], 4).tolist()} "
        f"w={np.round(block(last, 'w')[0], 4).tolist()} gap_D={last['gap'].iloc[0]:.2e}"
    )
