"""`python -m analysis.markov_chain`: Figure 1, the phase diagrams, their table and a summary."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import analysis.markov_chain
from analysis.markov_chain import figure1, phase_diagram
from analysis.markov_chain.figures import plot_figure1, plot_phase_diagram, plot_target_features
from hetero_lr._cli import OneLineParser


def main(argv: Sequence[str] | None = None) -> int:
    """Write the figures and `phase_diagram.csv` to `--out`; returns the exit code (2 on bad
    arguments, before anything is written)."""
    parser = OneLineParser(
        prog="python -m analysis.markov_chain",
        description=analysis.markov_chain.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="markov_chain", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="Figure-1 initialisation seed")
    parser.add_argument(
        "--iterations",
        type=int,
        default=figure1.LRSettings.iterations,
        help="Lookahead-Replicate iterations of the Figure-1 run",
    )
    parser.add_argument(
        "--sim-steps",
        type=int,
        default=phase_diagram.PhaseSettings.sim_steps,
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

    lr_settings = figure1.LRSettings(seed=args.seed, iterations=args.iterations)
    trajectory = figure1.figure1(lr_settings)
    v_pi = figure1.figure1_chain().values()
    print(plot_figure1(trajectory, v_pi, lr_settings, out / "figure1_lr_markov_chain.png"))

    settings = phase_diagram.PhaseSettings(sim_steps=args.sim_steps)
    cells = phase_diagram.phase_diagram(settings)
    table = phase_diagram.phase_table(cells)
    print(phase_diagram.write_phase_csv(table, out / "phase_diagram.csv"))
    for beta in settings.lrs_target:
        print(plot_phase_diagram(cells, settings, beta, out / f"phase_diagram_beta{beta}.png"))
    sweep = phase_diagram.target_feature_sweep(np.asarray(settings.gammas))
    print(plot_target_features(sweep, out / "w2w_target_features.png"))

    print(figure1.summary(trajectory, v_pi))
    print(phase_diagram.summary(table))
    marks = sweep[sweep["c"].isin((0.0, 1.0, 2.0, 4.0))]
    print("critical gamma for phi_t = (1, c):", dict(zip(marks["c"], marks["grid"], strict=True)))
    if settings.sim_steps:
        print("step-by-step check:", phase_diagram.check_simulation(cells, settings.sim_steps))
    print(f"done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
