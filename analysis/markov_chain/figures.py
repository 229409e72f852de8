"""The Markov-chain figures: Figure 1, the (w, 2w) phase diagrams and LR's threshold against
the target feature (PNG files)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

from analysis.markov_chain.figure1 import LRSettings, block
from analysis.markov_chain.phase_diagram import ONLINE_FEATURE, PhaseSettings, coefficients


def plot_figure1(
    trajectory: pd.DataFrame, v_pi: np.ndarray, settings: LRSettings, path: Path
) -> Path:
    """Value space (a), parameters (b) and distances to v_pi (c) of one LR run
    (`figure1.simulate`'s trajectory)."""
    fig, (ax_v, ax_p, ax_d) = plt.subplots(1, 3, figsize=(15, 4.6))
    theta, w = block(trajectory, "theta"), block(trajectory, "w")
    v_online, v_target = block(trajectory, "v_online"), block(trajectory, "v_target")
    gap = trajectory["gap"].to_numpy()
    ax_v.plot(*v_online.T, ".-", ms=3, lw=0.8, color="tab:blue", label="online $v_\\theta$")
    ax_v.plot(*v_target.T, "s-", ms=3, lw=0.8, color="tab:orange", label="target $v_w$")
    ax_v.plot(*v_online[0], "o", ms=9, mfc="none", color="tab:blue")
    ax_v.plot(*v_target[0], "s", ms=9, mfc="none", color="tab:orange")
    ax_v.plot(*v_pi, "*", ms=16, color="black", label="$v_\\pi$")
    ax_v.set(xlabel="value of state 1", ylabel="value of state 2")
    ax_v.set_title("(a) value space (hollow markers: start)")
    ax_v.legend()

    steps = np.arange(len(theta))
    styles = ("-", "--", ":")
    for i, column in enumerate(theta.T):
        label = f"online $\\theta_{i + 1}$"
        ax_p.plot(steps, column, color="tab:blue", ls=styles[i % 3], label=label)
    for i, column in enumerate(w.T):
        ax_p.plot(steps, column, color="tab:orange", ls=styles[i % 3], label=f"target $w_{i + 1}$")
    ax_p.set(xlabel="online (Lookahead) step", ylabel="parameter")
    ax_p.set_title(f"(b) parameters: $\\theta$ in R^{theta.shape[1]}, w in R^{w.shape[1]}")
    ax_p.legend(ncol=2, fontsize=8)

    d_online = np.linalg.norm(v_online - v_pi, axis=1)
    d_target = np.linalg.norm(v_target - v_pi, axis=1)
    ax_d.semilogy(steps, d_online, color="tab:blue", label="$|v_\\theta - v_\\pi|$")
    ax_d.semilogy(steps, d_target, color="tab:orange", label="$|v_w - v_\\pi|$")
    ax_d.semilogy(steps, np.sqrt(gap), color="gray", ls="--", label="$|v_w - v_\\theta|_D$")
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


def _panel(
    cells: pd.DataFrame, method: str, features: str, alpha: float, beta: float
) -> tuple[np.ndarray, list[str]]:
    """Converges per (row, gamma) of one panel, rows ordered by KR/KL then KL, and row labels."""
    chosen = cells[
        (cells["method"] == method)
        & (cells["target_features"] == features)
        & (cells["lr_online"] == alpha)
        & ((method != "lr") | (cells["lr_target"] == beta))
    ]
    grid = chosen.pivot(index=["kl", "kr"], columns="gamma", values="converges")
    rows = grid.index.to_frame(index=False)
    ratio = rows["kr"] / rows["kl"] if method == "lr" else 0.0
    order = rows.assign(ratio=ratio).sort_values(["ratio", "kl"]).index
    grid = grid.iloc[order]
    if method == "td":
        labels = ["TD"]
    elif method == "hardcopy":
        labels = [f"KL={kl}" for kl, _ in grid.index]
    else:
        labels = [f"{kl}/{kr}" for kl, kr in grid.index]
    return grid.to_numpy(dtype=float), labels


def plot_phase_diagram(
    cells: pd.DataFrame, settings: PhaseSettings, beta: float, path: Path
) -> Path:
    """Converges/diverges over gamma (x) and KL, KR (y) of `phase_diagram`'s cells: methods by
    row, alpha by column, LR at target step `beta`."""
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
    curvature = coefficients(ONLINE_FEATURE, settings.distribution).a
    for row, (method, features, title) in enumerate(panels):
        for col, alpha in enumerate(settings.lrs_online):
            ax = axes[row, col]
            grid, labels = _panel(cells, method, features, alpha, beta)
            ax.imshow(
                grid,
                aspect="auto",
                cmap=cmap,
                vmin=0,
                vmax=1,
                interpolation="nearest",
                extent=(gammas[0], gammas[-1], len(grid) - 0.5, -0.5),
            )
            ax.axvline(5 / 6, color="black", ls="--", lw=0.8)
            ax.set_yticks(range(len(grid)), labels, fontsize=7)
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


def plot_target_features(sweep: pd.DataFrame, path: Path) -> Path:
    """LR's largest converging gamma against the target feature phi_t = (1, c)
    (`phase_diagram.target_feature_sweep`): the grid search and the closed form 1 / K."""
    fig, ax = plt.subplots(figsize=(6, 4))
    c = sweep["c"].to_numpy()
    ax.plot(
        c,
        sweep["grid"].to_numpy(),
        color="tab:purple",
        lw=3,
        alpha=0.5,
        label="spectral radius, grid",
    )
    ax.plot(c, sweep["closed_form"].to_numpy(), color="black", lw=0.8, label="closed form 1 / K")
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
    return path
