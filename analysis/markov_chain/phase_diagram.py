"""Where Lookahead-Replicate converges on the "w, 2w" example, against TD and hard copies.

The two-state example of Tsitsiklis & Van Roy (1996, "Feature-based methods for large scale
dynamic programming", Machine Learning 22; Sutton & Barto 2018, Example 11.1), the standard
illustration of the sampling-distribution condition in Tsitsiklis & Van Roy's analysis of TD(0)
with linear features (1997, IEEE TAC 42(5)): state 1 moves to state 2, state 2 stays in state 2
(the variant without termination, epsilon = 0), all rewards are zero (v_pi = 0), one feature
phi = (1, 2), so the values are (w, 2w). Under the uniform state distribution d = (1/2, 1/2)
(not the chain's stationary one, (0, 1)) expected TD(0) moves theta by alpha (3 gamma - 5/2)
theta per step and diverges for gamma > 5/6, the threshold of the example's least-squares value
iteration for epsilon = 0 (5 / (6 - 4 epsilon) in Sutton & Barto).

Online and target weights are scalars, so the whole state of a run is x = (theta, w). The
target's feature is the online one (`same`, phi_t = (1, 2): HardCopy and TD are defined too) or
the constant `phi_t = (1, 1)` (a cruder class that still contains v_pi = 0, so the fixed point
stays theta = w = 0). Every update is linear in x:

- Lookahead (Asadi et al. 2024, Sec. 3): theta <- (1 - alpha a) theta + alpha gamma b w;
- Replicate: w <- (1 - 2 beta c) w + 2 beta e theta (`hetero_lr.losses.replicate_loss` has no
  factor 1/2, hence 2 beta).

Closed form: one period (kl Lookahead, kr Replicate steps) is x <- M x with M = A_R^kr A_L^kl,
and a cell converges from every start iff the spectral radius rho(M) < 1; `rate` is
rho(M)^(1/kl), the contraction per online step. Simulator: the same one-step maps applied step
by step from (1, 1) (`simulate`), a check of the spectral-radius verdicts.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

TRANSITIONS = np.array([[0.0, 1.0], [0.0, 1.0]])
"""1 -> 2, 2 -> 2 (rewards are zero)."""

ONLINE_FEATURE = np.array([1.0, 2.0])
"""phi(1) = 1, phi(2) = 2: the values (w, 2w)."""

TARGET_FEATURES = {"same": np.array([1.0, 2.0]), "constant": np.array([1.0, 1.0])}
"""The target's feature: the online one, or a constant (a different function class)."""

METHODS = ("td", "hardcopy", "lr")

CONFIGURATION = ["method", "target_features", "lr_online", "lr_target", "kl", "kr"]
"""The columns that name one cell of the sweep."""


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
    """Expected-update coefficients of the online feature phi and a target feature phi_t.

    a = sum d phi^2, b = sum d phi (P phi_t) (the bootstrap term, times gamma),
    c = sum d phi_t^2, e = sum d phi_t phi.
    """

    a: float
    b: float
    c: float
    e: float


def coefficients(
    phi_target: np.ndarray, distribution: Sequence[float] = (0.5, 0.5)
) -> Coefficients:
    """The coefficients of the expected Lookahead and Replicate updates for target feature
    `phi_t` `[2]` under state distribution d."""
    d, phi = np.asarray(distribution, dtype=float), ONLINE_FEATURE
    return Coefficients(
        a=float(d @ phi**2),
        b=float(d @ (phi * (TRANSITIONS @ phi_target))),
        c=float(d @ phi_target**2),
        e=float(d @ (phi_target * phi)),
    )


def _lookahead(k: Coefficients, gamma: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """A_L `[..., 2, 2]`, one expected TD step: theta <- (1 - alpha a) theta + alpha gamma b w."""
    gamma, alpha = np.broadcast_arrays(gamma, alpha)
    m = np.zeros((*gamma.shape, 2, 2))
    m[..., 0, 0] = 1.0 - alpha * k.a
    m[..., 0, 1] = alpha * gamma * k.b
    m[..., 1, 1] = 1.0
    return m


def _replicate(k: Coefficients, beta: np.ndarray) -> np.ndarray:
    """A_R `[..., 2, 2]`, one Replicate step: w <- (1 - 2 beta c) w + 2 beta e theta."""
    beta = np.asarray(beta, dtype=float)
    m = np.zeros((*beta.shape, 2, 2))
    m[..., 0, 0] = 1.0
    m[..., 1, 0] = 2.0 * beta * k.e
    m[..., 1, 1] = 1.0 - 2.0 * beta * k.c
    return m


_COPY = np.array([[1.0, 0.0], [1.0, 0.0]])
"""w <- theta: a hard copy."""


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
    if method == "td":
        return _COPY @ _lookahead(k, gamma, alpha)
    lookahead = np.linalg.matrix_power(_lookahead(k, gamma, alpha), kl)
    if method == "hardcopy":
        return _COPY @ lookahead
    if method == "lr":
        return np.linalg.matrix_power(_replicate(k, beta), kr) @ lookahead
    raise ValueError(f"unknown method {method!r}; accepted: {', '.join(METHODS)}")


def spectral_radius(m: np.ndarray) -> np.ndarray:
    """max |eigenvalue| of each matrix in `m` `[..., 2, 2]`."""
    return np.abs(np.linalg.eigvals(m)).max(axis=-1)


def lr_threshold(phi_target: np.ndarray, distribution: Sequence[float] = (0.5, 0.5)) -> float:
    """Closed-form gamma above which LR diverges on the (w, 2w) example (1.0: never below 1).

    With stable step sizes (|1 - alpha a| < 1, |1 - 2 beta c| < 1) the period map M satisfies
    det(I - M) = (1 - p)(1 - q)(1 - gamma K) with p = (1 - alpha a)^kl, q = (1 - 2 beta c)^kr
    and K = (b / a)(e / c): for gamma K > 1 an eigenvalue exceeds 1, below it both lie inside
    the unit circle. KL, KR and the step sizes drop out; only the two feature maps (and d) count.
    """
    k = coefficients(phi_target, distribution)
    gain = (k.b / k.a) * (k.e / k.c)
    return 1.0 / gain if gain > 1.0 else 1.0


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
    `phi_t` `[2]`, by the spectral radius (nan if it diverges at the smallest gamma)."""
    k = coefficients(phi_target, distribution)
    rate = spectral_radius(period_matrix("lr", k, gammas, alpha, beta, kl, kr))
    bad = np.flatnonzero(rate >= 1.0)
    if not bad.size:
        return float(gammas[-1])
    return float("nan") if bad[0] == 0 else float(gammas[bad[0] - 1])


def target_feature_sweep(gammas: np.ndarray) -> pd.DataFrame:
    """LR's threshold against the target feature phi_t = (1, c), c in [-1, 4] (alpha = beta =
    0.1, KL = KR = 4). Columns: c, grid (`critical_gamma`), closed_form (`lr_threshold`)."""
    cs = np.round(np.linspace(-1.0, 4.0, 101), 3)
    return pd.DataFrame(
        {
            "c": cs,
            "grid": [critical_gamma(np.array([1.0, c]), gammas) for c in cs],
            "closed_form": [lr_threshold(np.array([1.0, c])) for c in cs],
        }
    )


def simulate(
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
    lookahead = np.moveaxis(_lookahead(k, gammas, alpha), 0, -1)  # [2, 2, G]
    replicate = _replicate(k, 0.0 if np.isnan(beta) else beta)
    x = np.tile(np.asarray(start, dtype=float)[:, None], len(gammas))  # rows theta, w: [2, G]
    blew_up = np.zeros(len(gammas), dtype=bool)
    with np.errstate(over="ignore", invalid="ignore"):
        for step in range(1, steps + 1):
            x = lookahead[:, 0] * x[0] + lookahead[:, 1] * x[1]  # A_L x, per gamma
            if method == "td" or (method == "hardcopy" and step % kl == 0):
                x = _COPY @ x
            elif method == "lr" and step % kl == 0:
                for _ in range(kr):
                    x = replicate @ x
            size = np.abs(x).max(axis=0)
            blew_up |= ~np.isfinite(size) | (size > 1e4)
            x[:, blew_up] = 0.0  # keep diverged cells finite (they are decided already)
    verdict = np.where(np.abs(x).max(axis=0) < 1e-4, 1, 0)
    return np.where(blew_up, -1, verdict)


def _configurations(settings: PhaseSettings) -> Iterator[tuple[str, str, float, float, int, int]]:
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
            TARGET_FEATURES, settings.lrs_target, settings.kls, settings.krs
        ):
            yield "lr", features, alpha, beta, kl, kr


def phase_diagram(settings: PhaseSettings) -> pd.DataFrame:
    """Convergence of TD, HardCopy and LR on the (w, 2w) example over the whole sweep.

    Returns:
        One row per cell and gamma: the `CONFIGURATION` columns (lr_target nan where a method
        has none), gamma, rate (rho(M)^(1/online steps per period)), converges (rate < 1) and,
        when `settings.sim_steps > 0`, simulated (`simulate`'s verdict).
    """
    gammas = np.asarray(settings.gammas, dtype=float)
    frames = []
    for config in _configurations(settings):
        method, features, alpha, beta, kl, kr = config
        k = coefficients(TARGET_FEATURES[features], settings.distribution)
        m = period_matrix(method, k, gammas, alpha, 0.0 if np.isnan(beta) else beta, kl, kr)
        with np.errstate(over="ignore", divide="ignore"):
            rate = spectral_radius(m) ** (1.0 / (1 if method == "td" else kl))
        frame = pd.DataFrame({"gamma": gammas, "rate": rate, "converges": rate < 1.0 - 1e-12})
        if settings.sim_steps:
            frame["simulated"] = simulate(
                method, k, gammas, alpha, beta, kl, kr, settings.sim_steps
            )
        frames.append(frame.assign(**dict(zip(CONFIGURATION, config, strict=True))))
    cells = pd.concat(frames, ignore_index=True)
    return cells[[*CONFIGURATION, *(c for c in cells if c not in CONFIGURATION)]]


def phase_table(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per cell of `phase_diagram`, in sweep order.

    Columns: the configuration (kl blank for TD, kr blank except LR), gamma_converges_from /
    gamma_converges_to (smallest and largest converging gamma; nan if none), contiguous (every
    gamma in between converges), rate_per_step_gamma_0.8 / _0.9 (at the nearest grid gamma),
    simulation_agrees (share of the gammas the simulation decided that agree; nan if none or
    not simulated).
    """
    rows = []
    for config, cell in cells.groupby(CONFIGURATION, sort=False, dropna=False):
        method = config[0]
        gammas, ok = cell["gamma"].to_numpy(), cell["converges"].to_numpy()
        first, last = np.flatnonzero(ok)[[0, -1]] if ok.any() else (None, None)
        agrees = float("nan")
        if "simulated" in cell and (cell["simulated"] != 0).any():
            decided = cell[cell["simulated"] != 0]
            agrees = (decided["simulated"] == np.where(decided["converges"], 1, -1)).mean()
        rows.append(
            {
                **dict(zip(CONFIGURATION, config, strict=True)),
                "kl": pd.NA if method == "td" else config[4],
                "kr": config[5] if method == "lr" else pd.NA,
                "gamma_converges_from": np.nan if first is None else gammas[first],
                "gamma_converges_to": np.nan if last is None else gammas[last],
                "contiguous": True if first is None else bool(ok[first : last + 1].all()),
                **{
                    f"rate_per_step_gamma_{g}": cell["rate"].iloc[np.argmin(np.abs(gammas - g))]
                    for g in (0.8, 0.9)
                },
                "simulation_agrees": agrees,
            }
        )
    return pd.DataFrame(rows).astype({"kl": "Int64", "kr": "Int64"})


def write_phase_csv(table: pd.DataFrame, path: Path) -> Path:
    """`phase_table` as CSV: gammas and rates to 4 significant digits, the agreement to 3
    decimals, blanks for nan; the csv module's line ends (RFC 4180), as the committed table."""

    def fmt(spec: str) -> Callable[[float], str]:
        return lambda x: "" if pd.isna(x) else format(x, spec)

    four = [c for c in table if c.startswith(("gamma_converges", "rate_per_step"))]
    table = table.assign(
        **{c: table[c].map(fmt(".4g")) for c in four},
        simulation_agrees=table["simulation_agrees"].map(fmt(".3f")),
    )
    table.to_csv(path, index=False, lineterminator="\r\n")
    return path


def check_simulation(cells: pd.DataFrame, steps: int) -> dict[str, int]:
    """Compare the spectral-radius verdicts with the simulated ones where `steps` decide them.

    A (cell, gamma) counts as decidable when rate^steps is far from 1 (below 1e-6 or above 1e6).
    """
    with np.errstate(divide="ignore", over="ignore"):
        log_growth = steps * np.log10(cells["rate"].to_numpy())
    decided = cells[np.abs(log_growth) > 6]
    expected = np.where(decided["converges"], 1, -1)
    return {
        "decidable": len(decided),
        "agree": int((decided["simulated"] == expected).sum()),
        "undecided": int((decided["simulated"] == 0).sum()),
    }


def summary(table: pd.DataFrame) -> str:
    """Per method and target feature: cells, cells that never converge, and the range of the
    largest converging gamma."""
    lines = []
    for (method, features), group in table.groupby(["method", "target_features"], sort=False):
        highs = group["gamma_converges_to"].dropna()
        span = f"{highs.min():.4g}..{highs.max():.4g}" if len(highs) else "-"
        lines.append(
            f"{method:8s} target={features:8s} cells={len(group):3d} "
            f"never converge={group['gamma_converges_to'].isna().sum():3d} "
            f"largest converging gamma: {span}"
        )
    return "\n".join(lines)
