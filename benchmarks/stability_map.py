"""Where Lookahead-Replicate keeps Q bounded on MinAtar, beside Polyak and HardCopy at equal lag.

    python benchmarks/stability_map.py [--steps 50000] [--env MinAtar/Breakout-v1] \
        [--out docs/results/minatar_stability] [--seeds 0]

On Atari Breakout, LR with the target updated often (KR/KL 1/4, 1/2) diverged here (mean Q in
the hundreds to thousands with clipped rewards, where true values stay below
r_max / (1 - gamma) = 100). This maps the same question on MinAtar, where runs are minutes:
`minatar:minatar` with the `minatar` preset, an update every step, and the target following by

- Replicate: KR = 1 Replicate step per KL Lookahead steps, KL in {1, 4, 16, 64}, target Adam
  learning rate in {1e-4, 1e-3};
- Polyak at the matching lag: tau = 1 / KL (an exponential average with time constant KL
  updates);
- HardCopy at the matching lag: a copy every KL updates.

Each run records the largest mean |Q| logged, whether the divergence guard stopped it
(`agent.divergence_q`, twice r_max / (1 - gamma)), and its last evaluation. Runs are
resumable: results go to `map.csv` row by row, and a row already there is not run again.
Writes `map.csv`, `map.md` and `map.png` to `--out`.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import time
from pathlib import Path

import numpy as np
import torch

from hetero_lr.agent import DivergenceError
from hetero_lr.config import TrainConfig, apply_preset, from_dict
from hetero_lr.run import TrainingRun

KLS = (1, 4, 16, 64)
TARGET_LRS = (1e-4, 1e-3)
FIELDS = ["rule", "kl", "target_lr", "seed", "max_abs_q", "diverged", "steps", "final_return",
          "seconds", "note"]  # fmt: skip


class _Collector:
    """Keeps the largest mean |Q| and the last evaluation a run logs."""

    def __init__(self) -> None:
        self.max_abs_q = 0.0

    def log_params(self, params) -> None:
        pass

    def log_metrics(self, metrics, step) -> None:
        for key, value in metrics.items():
            if key.startswith("q/") and math.isfinite(value):
                self.max_abs_q = max(self.max_abs_q, abs(value))

    def rewind(self, step) -> None:
        pass

    def close(self) -> None:
        pass


def arms() -> list[dict]:
    """Every (rule, KL, target lr) cell of the map."""
    cells = [{"rule": "replicate", "kl": kl, "target_lr": lr} for kl in KLS for lr in TARGET_LRS]
    cells += [{"rule": "polyak", "kl": kl, "target_lr": ""} for kl in KLS]
    cells += [{"rule": "hardcopy", "kl": kl, "target_lr": ""} for kl in KLS]
    return cells


def config(cell: dict, *, steps: int, env: str, seed: int) -> TrainConfig:
    target: dict = {"rule": cell["rule"]}
    if cell["rule"] == "replicate":
        target |= {"kr": 1, "kl": cell["kl"], "lr": cell["target_lr"]}
    elif cell["rule"] == "polyak":
        target |= {"tau": 1.0 / cell["kl"]}
    else:
        target |= {"period": cell["kl"]}
    overrides = {
        "env": {"id": env},
        "steps": steps,
        "eval_every": steps,
        "eval_episodes": 10,
        "eval_max_steps": 5_000,
        "log_every": 1_000,
        "checkpoint_every": 0,
        "threads": 1,
        "seed": seed,
        "target": target,
    }
    return from_dict(TrainConfig, overrides, base=apply_preset("minatar"))


def run_cell(cfg: TrainConfig) -> dict:
    collector = _Collector()
    start = time.perf_counter()
    with TrainingRun(cfg, logger=collector) as run:
        note, diverged, final = "", False, float("nan")
        try:
            run.run_until(cfg.steps)
            final = run.evaluate()
        except DivergenceError as err:
            note, diverged = str(err), True
        steps = run.step
    return {
        "max_abs_q": round(collector.max_abs_q, 3),
        "diverged": diverged,
        "steps": steps,
        "final_return": final,
        "seconds": round(time.perf_counter() - start),
        "note": note,
    }


def peak_abs_q(row: dict) -> float:
    """The largest mean |Q| a run reached: its logged maximum, or the guard's reading when it
    stopped the run (the guard sees the worst single update, the log the window's mean)."""
    found = re.search(r"mean \|Q\| ([0-9.e+]+) >", row.get("note", ""))
    return max(float(row["max_abs_q"]), float(found.group(1)) if found else 0.0)


def write_summary(rows: list[dict], out: Path) -> None:
    """`map.md` (one table per rule) and `map.png` (largest mean |Q| against the lag)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = ["| rule | KL (lag) | target lr | seed | max mean abs Q | diverged | final return |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['rule']} | {r['kl']} | {r['target_lr'] or '-'} | {r['seed']} | "
            f"{peak_abs_q(r):.3g} | {r['diverged']} | {float(r['final_return']):.3g} |"
        )
    (out / "map.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(6.5, 4))
    labels = {("replicate", str(lr)): f"Replicate, target lr {lr:g}" for lr in TARGET_LRS} | {
        ("polyak", ""): "Polyak, tau = 1/KL",
        ("hardcopy", ""): "HardCopy every KL",
    }
    for (rule, lr), label in labels.items():
        sub = [r for r in rows if r["rule"] == rule and str(r["target_lr"]) == lr]
        if not sub:
            continue
        kls = sorted({int(r["kl"]) for r in sub})
        q = [np.mean([peak_abs_q(r) for r in sub if int(r["kl"]) == k]) for k in kls]
        ax.plot(kls, q, marker="o", label=label)
    ax.axhline(100, color="gray", linestyle=":", label="r_max / (1 - gamma)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("KL: Lookahead steps per target update (lag)")
    ax.set_ylabel("largest mean |Q| logged")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out / "map.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--env", default="MinAtar/Breakout-v1")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", default="docs/results/minatar_stability")
    parser.add_argument(
        "--rules",
        nargs="+",
        default=["replicate", "polyak", "hardcopy"],
        help="map only these rules (e.g. to run two processes side by side)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "map.csv"
    done = list(csv.DictReader(path.open())) if path.exists() else []
    seen = {(r["rule"], r["kl"], r["target_lr"], r["seed"]) for r in done}
    for seed in args.seeds:
        for cell in arms():
            key = (cell["rule"], str(cell["kl"]), str(cell["target_lr"]), str(seed))
            if key in seen or cell["rule"] not in args.rules:
                continue
            cfg = config(cell, steps=args.steps, env=args.env, seed=seed)
            row = cell | {"seed": seed} | run_cell(cfg)
            print(", ".join(f"{k}={row[k]}" for k in FIELDS), flush=True)
            new = not path.exists()
            with path.open("a", newline="") as f:
                writer = csv.DictWriter(f, FIELDS)
                if new:
                    writer.writeheader()
                writer.writerow(row)
            done.append({k: str(v) for k, v in row.items()})
    write_summary(done, out)


if __name__ == "__main__":
    main()
