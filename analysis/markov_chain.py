"""Lookahead-Replicate on small Markov chains: the paper's Figure 1 and a (w, 2w) phase diagram.

    python -m analysis.markov_chain --out docs/results/markov_chain

Policy evaluation with a fixed policy: states s, transitions P, rewards r, discount gamma, state
distribution D = diag(d), true values v_pi = (I - gamma P)^-1 r. Both value functions are linear,
v_theta = Phi theta (online) and v_w = Phi_t w (target), over *different* feature maps. One
Lookahead-Replicate iteration (Asadi et al. 2024, Sec. 3, Algorithm 1) is

- Lookahead, `kl` expected semi-gradient TD steps on the online parameters, w held fixed:
  theta <- theta - alpha * Phi^T D (Phi theta - (r + gamma P Phi_t w));
- Replicate, `kr` gradient steps on the target parameters, theta held fixed, on the function gap
  G(w) = ||Phi_t w - Phi theta||^2_D: w <- w - beta * 2 Phi_t^T D (Phi_t w - Phi theta).

Part 1 (`run_lr`, `figure1`) runs exactly this through `hetero_lr.HeteroPair` with a `Replicate`
rule (SGD, block schedule): each linear model is an `nn.Module` mapping a one-hot state encoding
`[B, S]` to one action's value `[B, 1]`, every state is one row of the batch and D enters as the
Replicate loss's sample weights, so the pair computes the expected Replicate update.
The chain has two states, so value space is the plane. The online map has d1 = 3 features and the
target map d2 = 2; both have rank 2, so each network represents every value function, the
projections onto their spans are the identity, and the only joint fixed point of Lookahead
(Phi theta = r + gamma P Phi_t w) and Replicate (Phi_t w = Phi theta) is Phi theta = Phi_t w =
v_pi. The parameters then differ (they do not even have the same dimension), and the online
limit depends on its start (3 parameters, 2 constraints): equality holds in function space only.

Part 2 (`phase_diagram`) is the two-state "w, 2w" example of Tsitsiklis & Van Roy (1996,
"Feature-based methods for large scale dynamic programming", Machine Learning 22; Sutton & Barto
2018, Example 11.1), the standard illustration of the sampling-distribution condition in
Tsitsiklis & Van Roy's analysis of TD(0) with linear features (1997, "An analysis of
temporal-difference learning with function approximation", IEEE TAC 42(5)): state 1 moves to
state 2, state 2 stays in state 2 (the variant without termination, epsilon = 0), all rewards are
zero (v_pi = 0), one feature phi = (1, 2), so the values are (w, 2w). Under the uniform state
distribution d = (1/2, 1/2) (not the chain's stationary one, (0, 1)) expected TD(0) moves theta
by alpha (3 gamma - 5/2) theta per step and diverges for gamma > 5/6, the threshold the example's
least-squares value iteration has for epsilon = 0 (5 / (6 - 4 epsilon) in Sutton & Barto).
Online and target weights are scalars (one feature each), so value space is a line and the
whole state of a run is (theta, w). The target's feature
is either the online one (`same`, phi_t = (1, 2): then HardCopy and TD are defined too) or the
constant `phi_t = (1, 1)` (a different, cruder function class that still contains v_pi = 0, so
the fixed point stays theta = w = 0 and any convergence is to v_pi).

All updates are linear in x = (theta, w), so the state after one period (kl Lookahead steps, kr
Replicate steps) is x <- M x with M = A_R^kr A_L^kl. A cell converges (w -> 0 from any start)
iff the spectral radius rho(M) < 1; `per_step_rate` reports rho(M)^(1/kl), the contraction per
online step. The same cells are also simulated step by step (`simulate_w2w`) as a check.
Deviation from the paper: the losses are expectations under D (no sampling), and the Replicate
loss has no factor 1/2 (`hetero_lr.losses.replicate_loss`), hence the 2 beta above.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch
from torch import Tensor, nn

from hetero_lr._cli import OneLineParser
from hetero_lr.pair import HeteroPair
from hetero_lr.updaters import Replicate

# ---------------------------------------------------------------------------------------------
# Chains and linear value functions
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chain:
    """A fixed-policy Markov reward process.

    Attributes:
        transitions: P `[S, S]`, rows sum to 1.
        rewards: expected reward r `[S]` on leaving each state.
        gamma: discount in [0, 1).
        distribution: state distribution d `[S]` weighting both losses (D = diag(d)).
    """

    transitions: np.ndarray
    rewards: np.ndarray
    gamma: float
    distribution: np.ndarray

    @property
    def num_states(self) -> int:
        """Number of states S."""
        return len(self.rewards)

    def values(self) -> np.ndarray:
        """v_pi = (I - gamma P)^-1 r `[S]`."""
        eye = np.eye(self.num_states)
        return np.linalg.solve(eye - self.gamma * self.transitions, self.rewards)


def stationary_distribution(transitions: np.ndarray) -> np.ndarray:
    """The left eigenvector d = d P with eigenvalue 1, normalised to sum 1."""
    eigvals, eigvecs = np.linalg.eig(transitions.T)
    d = np.real(eigvecs[:, np.argmin(np.abs(eigvals - 1.0))])
    return d / d.sum()


def figure1_chain() -> Chain:
    """The two-state chain of Figure 1 (our own numbers), on-policy distribution."""
    transitions = np.array([[0.2, 0.8], [0.6, 0.4]])
    return Chain(transitions, np.array([1.0, -0.5]), 0.8, stationary_distribution(transitions))


def figure1_features() -> tuple[np.ndarray, np.ndarray]:
    """Online features Phi `[2, 3]` and target features Phi_t `[2, 2]`, both of rank 2."""
    online = np.array([[1.0, 0.0, 1.0], [0.5, 1.0, -1.0]])
    target = np.array([[1.0, 1.0], [0.0, 2.0]])
    return online, target


def w2w_chain(gamma: float, distribution: Sequence[float] = (0.5, 0.5)) -> Chain:
    """Tsitsiklis & Van Roy's example: 1 -> 2, 2 -> 2, zero rewards (uniform d by default)."""
    transitions = np.array([[0.0, 1.0], [0.0, 1.0]])
    return Chain(transitions, np.zeros(2), gamma, np.asarray(distribution, dtype=float))


W2W_ONLINE_FEATURE = np.array([1.0, 2.0])
"""phi(1) = 1, phi(2) = 2: the values (w, 2w)."""

W2W_TARGET_FEATURES = {"same": np.array([1.0, 2.0]), "constant": np.array([1.0, 1.0])}
"""The target's feature: the online one, or a constant (a different function class)."""


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


# ---------------------------------------------------------------------------------------------
# Part 1: Lookahead-Replicate through HeteroPair
# ---------------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class Trajectory:
    """Parameters and values after every online step (row 0: the start).

    Attributes:
        theta: online parameters `[T + 1, d1]`; w: target parameters `[T + 1, d2]`.
        v_online, v_target: values `[T + 1, S]`.
        gap: the pair's Replicate loss with weights d, ||v_target - v_online||^2_D `[T + 1]`.
        v_pi: true values `[S]`.
    """

    theta: np.ndarray
    w: np.ndarray
    v_online: np.ndarray
    v_target: np.ndarray
    gap: np.ndarray
    v_pi: np.ndarray


def build_pair(
    phi_online: np.ndarray,
    phi_target: np.ndarray,
    theta0: np.ndarray,
    w0: np.ndarray,
    settings: LRSettings,
) -> HeteroPair:
    """Two linear value functions coupled by a `Replicate(kr, kl)` rule with SGD."""
    rule = Replicate(settings.kr, settings.kl, lr=settings.lr_target, optimizer="sgd")
    states = torch.eye(len(phi_online), dtype=torch.float64)
    return HeteroPair(
        LinearValue(phi_online, theta0),
        LinearValue(phi_target, w0),
        rule,
        example_obs=states,
    )


def lookahead_loss(pair: HeteroPair, chain: Chain, states: Tensor, d: Tensor) -> Tensor:
    """Expected semi-gradient TD loss 1/2 ||Phi theta - (r + gamma P v_w)||^2_D.

    Its gradient is the Lookahead direction of Asadi et al. 2024, Sec. 3: the bootstrap
    r + gamma P v_w comes from the target through `pair.bootstrap` (no gradient).
    """
    transitions = torch.as_tensor(chain.transitions, dtype=torch.float64)
    rewards = torch.as_tensor(chain.rewards, dtype=torch.float64)
    bootstrap = rewards + chain.gamma * transitions @ pair.bootstrap(states)
    return 0.5 * (d * (pair(states).squeeze(1) - bootstrap).square()).sum()


def run_lr(
    chain: Chain,
    phi_online: np.ndarray,
    phi_target: np.ndarray,
    settings: LRSettings,
    *,
    init: tuple[np.ndarray, np.ndarray] | None = None,
) -> Trajectory:
    """Run Lookahead-Replicate on `chain` through `HeteroPair`; record every online step.

    Args:
        chain: the Markov reward process and state distribution.
        phi_online: online features `[S, d1]`; phi_target: target features `[S, d2]`.
        settings: KL, KR, step sizes, iterations and the initialisation seed.
        init: initial (theta `[d1]`, w `[d2]`); drawn from `settings.seed` when None.

    Returns:
        The trajectory of `settings.iterations * settings.kl` online steps.
    """
    if init is None:
        rng = np.random.default_rng(settings.seed)
        init = (
            settings.init_scale * rng.standard_normal(phi_online.shape[1]),
            settings.init_scale * rng.standard_normal(phi_target.shape[1]),
        )
    pair = build_pair(phi_online, phi_target, init[0], init[1], settings)
    states = torch.eye(chain.num_states, dtype=torch.float64)
    d = torch.as_tensor(chain.distribution, dtype=torch.float64)
    actions = torch.zeros(chain.num_states, dtype=torch.long)
    optimizer = torch.optim.SGD(pair.online_parameters(), lr=settings.lr_online)

    def sample() -> tuple[Tensor, Tensor, Tensor]:
        # Every state once, weighted by d: the Replicate loss becomes ||v_w - v_theta||^2_D.
        return states, actions, d

    records = [_snapshot(pair, states, d)]
    for _ in range(settings.iterations * settings.kl):
        loss = lookahead_loss(pair, chain, states, d)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        pair.step(sample)  # kr Replicate steps after every kl-th Lookahead step
        records.append(_snapshot(pair, states, d))
    theta, w, v_online, v_target, gap = (np.array(column) for column in zip(*records, strict=True))
    return Trajectory(theta, w, v_online, v_target, gap, chain.values())


def _snapshot(
    pair: HeteroPair, states: Tensor, d: Tensor
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    with torch.no_grad():
        gap = pair.replicate_loss(states, weights=d).item()
    return (
        pair.online.weight.detach().numpy().copy(),
        pair.target.weight.detach().numpy().copy(),
        pair.act_values(states).squeeze(1).numpy(),
        pair.bootstrap(states).numpy(),
        gap,
    )


def plot_figure1(trajectory: Trajectory, settings: LRSettings, path: Path) -> Path:
    """Value space (a), parameters (b) and distances to v_pi (c) of one LR run; PNG."""
    fig, (ax_v, ax_p, ax_d) = plt.subplots(1, 3, figsize=(15, 4.6))
    t = trajectory
    ax_v.plot(*t.v_online.T, ".-", ms=3, lw=0.8, color="tab:blue", label="online $v_\\theta$")
    ax_v.plot(*t.v_target.T, "s-", ms=3, lw=0.8, color="tab:orange", label="target $v_w$")
    ax_v.plot(*t.v_online[0], "o", ms=9, mfc="none", color="tab:blue")
    ax_v.plot(*t.v_target[0], "s", ms=9, mfc="none", color="tab:orange")
    ax_v.plot(*t.v_pi, "*", ms=16, color="black", label="$v_\\pi$")
    ax_v.set(xlabel="value of state 1", ylabel="value of state 2")
    ax_v.set_title("(a) value space (hollow markers: start)")
    ax_v.legend()

    steps = np.arange(len(t.theta))
    styles = ("-", "--", ":")
    for i, column in enumerate(t.theta.T):
        label = f"online $\\theta_{i + 1}$"
        ax_p.plot(steps, column, color="tab:blue", ls=styles[i % 3], label=label)
    for i, column in enumerate(t.w.T):
        ax_p.plot(steps, column, color="tab:orange", ls=styles[i % 3], label=f"target $w_{i + 1}$")
    ax_p.set(xlabel="online (Lookahead) step", ylabel="parameter")
    ax_p.set_title(f"(b) parameters: $\\theta$ in R^{t.theta.shape[1]}, w in R^{t.w.shape[1]}")
    ax_p.legend(ncol=2, fontsize=8)

    d_online = np.linalg.norm(t.v_online - t.v_pi, axis=1)
    d_target = np.linalg.norm(t.v_target - t.v_pi, axis=1)
    ax_d.semilogy(steps, d_online, color="tab:blue", label="$|v_\\theta - v_\\pi|$")
    ax_d.semilogy(steps, d_target, color="tab:orange", label="$|v_w - v_\\pi|$")
    ax_d.semilogy(steps, np.sqrt(t.gap), color="gray", ls="--", label="$|v_w - v_\\theta|_D$")
    ax_d.set(xlabel="online (Lookahead) step", ylabel="distance")
    ax_d.set_title("(c) distances")
    ax_d.legend()
    fig.suptitle(
        f"Lookahead-Replicate on a 2-state chain (KL={settings.kl}, KR={settings.kr}, "
        f"alpha={settings.lr_online}, beta={settings.lr_target}): equal values, different "
        "parameters"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def figure1(settings: LRSettings) -> Trajectory:
    """The Figure-1 run: `figure1_chain` with `figure1_features` (3 online, 2 target features)."""
    phi_online, phi_target = figure1_features()
    return run_lr(figure1_chain(), phi_online, phi_target, settings)


# ---------------------------------------------------------------------------------------------
# Part 2: the (w, 2w) phase diagram
# ---------------------------------------------------------------------------------------------

METHODS = ("td", "hardcopy", "lr")


@dataclass(frozen=True)
class PhaseSettings:
    """The sweep of the (w, 2w) phase diagram.

    Attributes:
        gammas: discounts.
        kls: Lookahead steps per period (HardCopy: the copy period).
        krs: Replicate steps per period (LR only).
        lrs_online: alpha values (online SGD step size).
        lrs_target: beta values (target SGD step size, LR only).
        distribution: the state distribution d (uniform: the classic, divergent one).
        sim_steps: online steps of the step-by-step check (0 skips it).
    """

    gammas: tuple[float, ...] = tuple(np.round(np.arange(0.0025, 1.0, 0.0025), 4))
    kls: tuple[int, ...] = (1, 4, 16, 64)
    krs: tuple[int, ...] = (1, 4, 16, 64)
    lrs_online: tuple[float, ...] = (0.1, 0.5, 0.9)
    lrs_target: tuple[float, ...] = (0.1, 0.3)
    distribution: tuple[float, float] = (0.5, 0.5)
    sim_steps: int = 2048


@dataclass(frozen=True)
class Coefficients:
    """Expected-update coefficients of scalar features phi (online) and phi_t (target).

    a = sum d phi^2, b = sum d phi (P phi_t) (the bootstrap term, times gamma),
    c = sum d phi_t^2, e = sum d phi_t phi.
    """

    a: float
    b: float
    c: float
    e: float


def coefficients(chain: Chain, phi: np.ndarray, phi_target: np.ndarray) -> Coefficients:
    """The coefficients of the expected Lookahead and Replicate updates (gamma left out of b)."""
    d = chain.distribution
    return Coefficients(
        a=float(d @ phi**2),
        b=float(d @ (phi * (chain.transitions @ phi_target))),
        c=float(d @ phi_target**2),
        e=float(d @ (phi_target * phi)),
    )


def lookahead_matrix(k: Coefficients, gamma: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """One expected TD step on (theta, w): theta <- (1 - alpha a) theta + alpha gamma b w."""
    gamma, alpha = np.broadcast_arrays(gamma, alpha)
    m = np.zeros((*gamma.shape, 2, 2))
    m[..., 0, 0] = 1.0 - alpha * k.a
    m[..., 0, 1] = alpha * gamma * k.b
    m[..., 1, 1] = 1.0
    return m


def replicate_matrix(k: Coefficients, beta: np.ndarray) -> np.ndarray:
    """One Replicate step on (theta, w): w <- (1 - 2 beta c) w + 2 beta e theta."""
    beta = np.asarray(beta, dtype=float)
    m = np.zeros((*beta.shape, 2, 2))
    m[..., 0, 0] = 1.0
    m[..., 1, 0] = 2.0 * beta * k.e
    m[..., 1, 1] = 1.0 - 2.0 * beta * k.c
    return m


def period_matrix(
    method: str,
    k: Coefficients,
    gamma: np.ndarray,
    alpha: np.ndarray,
    beta: np.ndarray,
    kl: int,
    kr: int,
) -> np.ndarray:
    """The linear map `[..., 2, 2]` of one period of `method` on (theta, w).

    `lr`: kl Lookahead then kr Replicate steps (Algorithm 1). `hardcopy`: kl Lookahead steps,
    then w <- theta (DQN). `td`: one step bootstrapping from the online weight itself (a copy
    after every step; kl and kr unused). HardCopy and TD need phi_t = phi.
    """
    gamma, alpha, beta = np.broadcast_arrays(gamma, alpha, beta)
    copy = np.array([[1.0, 0.0], [1.0, 0.0]])
    if method == "td":
        return copy @ lookahead_matrix(k, gamma, alpha)
    lookahead = np.linalg.matrix_power(lookahead_matrix(k, gamma, alpha), kl)
    if method == "hardcopy":
        return copy @ lookahead
    if method == "lr":
        return np.linalg.matrix_power(replicate_matrix(k, beta), kr) @ lookahead
    raise ValueError(f"unknown method {method!r}; accepted: {', '.join(METHODS)}")


def spectral_radius(m: np.ndarray) -> np.ndarray:
    """max |eigenvalue| of each matrix in `m` `[..., 2, 2]`."""
    return np.abs(np.linalg.eigvals(m)).max(axis=-1)


@dataclass(frozen=True)
class Cell:
    """One configuration of the sweep, over the whole gamma grid.

    Attributes:
        method, target_features, lr_online, lr_target, kl, kr: the configuration.
        per_step_rate: rho(period map)^(1/online steps per period), one per gamma `[G]`.
        simulated: step-by-step verdict per gamma (1 converged, -1 diverged, 0 undecided,
            None when not simulated).
    """

    method: str
    target_features: str
    lr_online: float
    lr_target: float
    kl: int
    kr: int
    per_step_rate: np.ndarray
    simulated: np.ndarray | None = None

    @property
    def converges(self) -> np.ndarray:
        """Whether w -> 0 from every start, per gamma `[G]` (rho < 1)."""
        return self.per_step_rate < 1.0 - 1e-12


def configurations(settings: PhaseSettings) -> Iterable[tuple[str, str, float, float, int, int]]:
    """(method, target features, alpha, beta, kl, kr) for every cell of the sweep.

    Settings a method ignores are fixed (TD: kl = kr = 1, no beta; HardCopy: kr = 1, no beta)
    so no configuration repeats; HardCopy and TD exist only for the same target feature.
    """
    nan = float("nan")
    for alpha in settings.lrs_online:
        yield "td", "same", alpha, nan, 1, 1
        for kl in settings.kls:
            yield "hardcopy", "same", alpha, nan, kl, 1
        for features, beta, kl, kr in itertools.product(
            W2W_TARGET_FEATURES, settings.lrs_target, settings.kls, settings.krs
        ):
            yield "lr", features, alpha, beta, kl, kr


def phase_diagram(settings: PhaseSettings) -> list[Cell]:
    """Convergence of TD, HardCopy and LR on the (w, 2w) example for every swept cell.

    Returns:
        One `Cell` per configuration, with the exact per-step rate over `settings.gammas` and,
        when `settings.sim_steps > 0`, the step-by-step verdicts.
    """
    gammas = np.asarray(settings.gammas, dtype=float)
    chain = w2w_chain(0.0, settings.distribution)
    cells = []
    for method, features, alpha, beta, kl, kr in configurations(settings):
        k = coefficients(chain, W2W_ONLINE_FEATURE, W2W_TARGET_FEATURES[features])
        m = period_matrix(method, k, gammas, alpha, 0.0 if np.isnan(beta) else beta, kl, kr)
        steps = 1 if method == "td" else kl
        with np.errstate(over="ignore", divide="ignore"):
            rate = spectral_radius(m) ** (1.0 / steps)
        simulated = None
        if settings.sim_steps:
            simulated = simulate_w2w(method, k, gammas, alpha, beta, kl, kr, settings.sim_steps)
        cells.append(Cell(method, features, alpha, beta, kl, kr, rate, simulated))
    return cells


def simulate_w2w(
    method: str,
    k: Coefficients,
    gammas: np.ndarray,
    alpha: float,
    beta: float,
    kl: int,
    kr: int,
    steps: int,
    *,
    start: tuple[float, float] = (1.0, 1.0),
) -> np.ndarray:
    """Run `method` step by step from (theta, w) = `start` for `steps` online steps.

    Vectorised over `gammas`. Returns a verdict per gamma: 1 if max(|theta|, |w|) < 1e-4 at
    the end, -1 if it exceeded 1e4 (or overflowed), else 0 (undecided in this many steps).
    """
    theta = np.full(len(gammas), start[0])
    w = np.full(len(gammas), start[1])
    blew_up = np.zeros(len(gammas), dtype=bool)
    with np.errstate(over="ignore", invalid="ignore"):
        for step in range(1, steps + 1):
            theta = theta - alpha * (k.a * theta - gammas * k.b * w)
            if method == "td" or (method == "hardcopy" and step % kl == 0):
                w = theta.copy()
            elif method == "lr" and step % kl == 0:
                for _ in range(kr):
                    w = w - 2.0 * beta * (k.c * w - k.e * theta)
            size = np.maximum(np.abs(theta), np.abs(w))
            blew_up |= ~np.isfinite(size) | (size > 1e4)
            # Keep diverged cells finite (they are decided already).
            theta = np.where(blew_up, 0.0, theta)
            w = np.where(blew_up, 0.0, w)
    verdict = np.where(np.maximum(np.abs(theta), np.abs(w)) < 1e-4, 1, 0)
    return np.where(blew_up, -1, verdict)


def check_simulation(cells: Sequence[Cell], steps: int) -> dict[str, int]:
    """Compare the spectral-radius verdicts with the simulated ones where `steps` decide them.

    A cell counts as decidable when rho^steps is far from 1 (below 1e-6 or above 1e6).
    """
    counts = {"decidable": 0, "agree": 0, "undecided": 0}
    for cell in cells:
        if cell.simulated is None:
            continue
        with np.errstate(divide="ignore", over="ignore"):
            log_growth = steps * np.log10(cell.per_step_rate)
        decidable = np.abs(log_growth) > 6
        expected = np.where(cell.converges, 1, -1)
        counts["decidable"] += int(decidable.sum())
        counts["agree"] += int((cell.simulated[decidable] == expected[decidable]).sum())
        counts["undecided"] += int((cell.simulated[decidable] == 0).sum())
    return counts


def convergent_interval(cell: Cell, gammas: np.ndarray) -> tuple[float, float, bool]:
    """(smallest, largest) converging gamma of the grid, and whether all between converge."""
    ok = cell.converges
    if not ok.any():
        return float("nan"), float("nan"), True
    first, last = np.flatnonzero(ok)[[0, -1]]
    return float(gammas[first]), float(gammas[last]), bool(ok[first : last + 1].all())


def write_phase_csv(cells: Sequence[Cell], gammas: np.ndarray, path: Path) -> Path:
    """One row per configuration: its convergent gamma interval and rates at gamma 0.8 and 0.9."""
    columns = [
        "method",
        "target_features",
        "lr_online",
        "lr_target",
        "kl",
        "kr",
        "gamma_converges_from",
        "gamma_converges_to",
        "contiguous",
        "rate_per_step_gamma_0.8",
        "rate_per_step_gamma_0.9",
        "simulation_agrees",
    ]
    at = {g: int(np.argmin(np.abs(gammas - g))) for g in (0.8, 0.9)}
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for cell in cells:
            low, high, contiguous = convergent_interval(cell, gammas)
            agrees = ""
            if cell.simulated is not None and (cell.simulated != 0).any():
                decided = cell.simulated != 0
                expected = np.where(cell.converges, 1, -1)
                agrees = f"{(cell.simulated[decided] == expected[decided]).mean():.3f}"
            writer.writerow(
                [
                    cell.method,
                    cell.target_features,
                    cell.lr_online,
                    "" if np.isnan(cell.lr_target) else cell.lr_target,
                    cell.kl if cell.method != "td" else "",
                    cell.kr if cell.method == "lr" else "",
                    _fmt(low),
                    _fmt(high),
                    contiguous,
                    _fmt(cell.per_step_rate[at[0.8]]),
                    _fmt(cell.per_step_rate[at[0.9]]),
                    agrees,
                ]
            )
    return path


def _fmt(x: float) -> str:
    return "" if np.isnan(x) else f"{x:.4g}"


def _panel_rows(
    cells: Sequence[Cell], method: str, features: str, alpha: float, beta: float
) -> tuple[list[Cell], list[str]]:
    """The cells of one panel, ordered by KR/KL ratio then KL, with their y labels."""
    chosen = [
        c
        for c in cells
        if c.method == method
        and c.target_features == features
        and c.lr_online == alpha
        and (method != "lr" or c.lr_target == beta)
    ]
    chosen.sort(key=lambda c: (c.kr / c.kl if method == "lr" else 0.0, c.kl))
    if method == "td":
        labels = ["TD"]
    elif method == "hardcopy":
        labels = [f"KL={c.kl}" for c in chosen]
    else:
        labels = [f"{c.kl}/{c.kr}" for c in chosen]
    return chosen, labels


def plot_phase_diagram(
    cells: Sequence[Cell], settings: PhaseSettings, beta: float, path: Path
) -> Path:
    """Converges/diverges over gamma (x) and KL, KR (y): methods by row, alpha by column; PNG."""
    gammas = np.asarray(settings.gammas)
    panels = [
        ("td", "same", "TD (target = online)"),
        ("hardcopy", "same", "HardCopy every KL steps"),
        ("lr", "same", "LR, target feature (1, 2)"),
        ("lr", "constant", "LR, target feature (1, 1)"),
    ]
    heights = [1, 4, 16, 16]
    fig, axes = plt.subplots(
        len(panels),
        len(settings.lrs_online),
        figsize=(4.2 * len(settings.lrs_online), 13),
        gridspec_kw={"height_ratios": heights},
        sharex=True,
        squeeze=False,
    )
    cmap = ListedColormap(["#d7301f", "#2b8cbe"])  # diverges, converges
    curvature = coefficients(
        w2w_chain(0.0, settings.distribution), W2W_ONLINE_FEATURE, W2W_ONLINE_FEATURE
    ).a
    for row, (method, features, title) in enumerate(panels):
        for col, alpha in enumerate(settings.lrs_online):
            ax = axes[row, col]
            chosen, labels = _panel_rows(cells, method, features, alpha, beta)
            grid = np.array([c.converges for c in chosen], dtype=float)
            ax.imshow(
                grid,
                aspect="auto",
                cmap=cmap,
                vmin=0,
                vmax=1,
                interpolation="nearest",
                extent=(gammas[0], gammas[-1], len(chosen) - 0.5, -0.5),
            )
            ax.axvline(5 / 6, color="black", ls="--", lw=0.8)
            ax.set_yticks(range(len(chosen)), labels, fontsize=7)
            unstable = " > 2/a" if alpha * curvature > 2 else ""
            ax.set_title(f"{title}, alpha={alpha}{unstable}", fontsize=9)
            if col == 0 and method == "lr":
                ax.set_ylabel("KL/KR (sorted by KR/KL)")
            if row == len(panels) - 1:
                ax.set_xlabel("discount gamma")
    fig.suptitle(
        "Tsitsiklis & Van Roy's (w, 2w) example, uniform d, expected updates "
        f"(LR target step beta={beta}; dashed: gamma = 5/6;\n"
        f"a = {curvature:g}: alpha > 2/a makes the online regression unstable on its own)",
        fontsize=10,
    )
    fig.legend(
        handles=[Patch(color=cmap(1), label="converges"), Patch(color=cmap(0), label="diverges")],
        loc="upper right",
        fontsize=8,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def critical_gamma(
    phi_target: np.ndarray,
    gammas: np.ndarray,
    *,
    alpha: float = 0.1,
    beta: float = 0.1,
    kl: int = 4,
    kr: int = 4,
    distribution: Sequence[float] = (0.5, 0.5),
) -> float:
    """The largest gamma of `gammas` below which LR converges everywhere, for target feature
    `phi_t` `[2]` on the (w, 2w) example (nan if it diverges at the smallest gamma)."""
    k = coefficients(w2w_chain(0.0, distribution), W2W_ONLINE_FEATURE, phi_target)
    rate = spectral_radius(period_matrix("lr", k, gammas, alpha, beta, kl, kr))
    bad = np.flatnonzero(rate >= 1.0)
    if not bad.size:
        return float(gammas[-1])
    return float("nan") if bad[0] == 0 else float(gammas[bad[0] - 1])


def lr_threshold(phi_target: np.ndarray, distribution: Sequence[float] = (0.5, 0.5)) -> float:
    """Closed-form gamma above which LR diverges on the (w, 2w) example (1.0: never below 1).

    With stable step sizes (|1 - alpha a| < 1, |1 - 2 beta c| < 1) the period map M satisfies
    det(I - M) = (1 - p)(1 - q)(1 - gamma K) with p = (1 - alpha a)^kl, q = (1 - 2 beta c)^kr
    and K = (b / a)(e / c): for gamma K > 1 an eigenvalue exceeds 1, below it both lie inside
    the unit circle. KL, KR and the step sizes drop out; only the two feature maps (and d) count.
    """
    k = coefficients(w2w_chain(0.0, distribution), W2W_ONLINE_FEATURE, phi_target)
    gain = (k.b / k.a) * (k.e / k.c)
    return 1.0 / gain if gain > 1.0 else 1.0


def plot_target_features(gammas: np.ndarray, path: Path) -> tuple[Path, dict[float, float]]:
    """Critical gamma of LR against the target feature phi_t = (1, c) on the (w, 2w) example."""
    cs = np.round(np.linspace(-1.0, 4.0, 101), 3)
    found = np.array([critical_gamma(np.array([1.0, c]), gammas) for c in cs])
    closed = np.array([lr_threshold(np.array([1.0, c])) for c in cs])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(cs, found, color="tab:purple", lw=3, alpha=0.5, label="spectral radius, grid")
    ax.plot(cs, closed, color="black", lw=0.8, label="closed form 1 / K")
    ax.axhline(5 / 6, color="black", ls="--", lw=0.8, label="TD / HardCopy: 5/6")
    ax.axvline(2.0, color="gray", ls=":", lw=0.8, label="c = 2 (same feature as online)")
    ax.set(
        xlabel="target feature of state 2, c (phi_t = (1, c))",
        ylabel="largest converging gamma",
        ylim=(0, 1.02),
    )
    ax.set_title(
        "LR on (w, 2w), uniform d, alpha = beta = 0.1, KL = KR = 4:\n"
        "where it converges depends on the target's feature"
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    marks = {
        float(c): float(g) for c, g in zip(cs, found, strict=True) if c in (0.0, 1.0, 2.0, 4.0)
    }
    return path, marks


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def summarize(trajectory: Trajectory, cells: Sequence[Cell], settings: PhaseSettings) -> str:
    """A few lines: the Figure-1 end point and, per method, where it converges."""
    t = trajectory
    lines = [
        f"figure 1: v_pi={np.round(t.v_pi, 6).tolist()} "
        f"v_online={np.round(t.v_online[-1], 6).tolist()} "
        f"v_target={np.round(t.v_target[-1], 6).tolist()}",
        f"  theta={np.round(t.theta[-1], 4).tolist()} w={np.round(t.w[-1], 4).tolist()} "
        f"gap_D={t.gap[-1]:.2e}",
    ]
    gammas = np.asarray(settings.gammas)
    groups = (("td", "same"), ("hardcopy", "same"), ("lr", "same"), ("lr", "constant"))
    for method, features in groups:
        group = [c for c in cells if c.method == method and c.target_features == features]
        highs = [convergent_interval(c, gammas)[1] for c in group]
        never = sum(np.isnan(h) for h in highs)
        finite = [h for h in highs if not np.isnan(h)]
        span = f"{min(finite):.4g}..{max(finite):.4g}" if finite else "-"
        lines.append(
            f"{method:8s} target={features:8s} cells={len(group):3d} never converge={never:3d} "
            f"largest converging gamma: {span}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m analysis.markov_chain`; returns the exit code (2 on bad arguments)."""
    parser = OneLineParser(
        prog="python -m analysis.markov_chain",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="markov_chain", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="Figure-1 initialisation seed")
    parser.add_argument(
        "--iterations",
        type=int,
        default=LRSettings.iterations,
        help="Lookahead-Replicate iterations of the Figure-1 run",
    )
    parser.add_argument(
        "--sim-steps",
        type=int,
        default=PhaseSettings.sim_steps,
        help="online steps of the step-by-step check of the phase diagram (0 skips it)",
    )
    args = parser.parse_args(argv)
    if args.iterations < 1:
        parser.error(f"--iterations must be >= 1, got {args.iterations}")
    if args.sim_steps < 0:
        parser.error(f"--sim-steps must be >= 0, got {args.sim_steps}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    lr_settings = LRSettings(seed=args.seed, iterations=args.iterations)
    trajectory = figure1(lr_settings)
    print(plot_figure1(trajectory, lr_settings, out / "figure1_lr_markov_chain.png"))

    settings = PhaseSettings(sim_steps=args.sim_steps)
    cells = phase_diagram(settings)
    gammas = np.asarray(settings.gammas)
    print(write_phase_csv(cells, gammas, out / "phase_diagram.csv"))
    for beta in settings.lrs_target:
        print(plot_phase_diagram(cells, settings, beta, out / f"phase_diagram_beta{beta}.png"))
    path, marks = plot_target_features(gammas, out / "w2w_target_features.png")
    print(path)
    print(summarize(trajectory, cells, settings))
    print("critical gamma for phi_t = (1, c):", marks)
    if settings.sim_steps:
        print("step-by-step check:", check_simulation(cells, settings.sim_steps))
    print(f"done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
