"""HardCopy DQN on MinAtar under our protocol and Young & Tian's, side by side (not a test).

    python benchmarks/minatar_protocol.py [--games Breakout]
        [--variants ours full-actions young-tian] [--seeds 917752063 865519474 660112278]
        [--steps 250000] [--out runs/minatar_protocol]

Young & Tian (2019) report MinAtar DQN as the mean return of the last 100 *training* episodes.
Our `minatar` preset follows their `examples/dqn.py` except in three places; each variant
changes one more of them, on the same seeds (by default the run seeds of
`studies/minatar_lr_confirm.yaml`, so `ours` repeats its HardCopy runs):

- `ours`: the `minatar` preset: the game's minimal action set (`-v1`: 3 actions in Breakout),
  fused Adam 2.5e-4 (eps 3.125e-4), gradient-norm clip 10;
- `full-actions`: all 6 actions, as their `Environment(game)` gives and their results use;
- `young-tian`: all 6 actions, centred RMSProp 2.5e-4 (alpha 0.95, momentum 0.95, eps 0.01),
  no gradient clip: their `examples/dqn.py` (kenjyoung/MinAtar).

Every run is resumable (a checkpoint every 25k steps under `--out`; the same command again
continues, finished runs are kept). The table prints, per variant and game, the mean over
seeds of the last 100 training episodes and of the last 3 evaluations (10 episodes, epsilon
0.001: the study objective), and is written to `<out>/protocol.csv`. `--table` prints it
from the runs there without training.

Measured
--------
Breakout, 3 seeds, 250k steps, one thread each, one run at a time (about 10-11 min a run;
`young-tian`'s 17-20 min overlapped other work on the machine), train last100 / eval last3:
`ours` 4.93 / 9.19 (the confirmation study's HardCopy runs, reproduced exactly),
`full-actions` 6.12 / 8.93, `young-tian` 6.25 / 9.03; Young & Tian's curve is at about 6.8
there. Table: `docs/results/minatar_lr_confirm/protocol.csv`; reading it: that README,
"Against published DQN".
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch

from hetero_lr.config import TrainConfig, apply_preset, from_dict
from hetero_lr.loggers import CSVLogger
from hetero_lr.train import CHECKPOINT, train

VARIANTS: dict[str, dict] = {
    "ours": {},
    "full-actions": {"env": {"full_action_space": True}},
    "young-tian": {
        "env": {"full_action_space": True},
        "agent": {"optimizer": "rmsprop", "max_grad_norm": None},
    },
}
CONFIRM_SEEDS = [917752063, 865519474, 660112278]  # studies/minatar_lr_confirm.yaml's runs
LAST_EPISODES, LAST_EVALS = 100, 3


def run_config(variant: str, game: str, seed: int, steps: int) -> TrainConfig:
    """The `minatar` preset's HardCopy DQN as `studies/minatar_lr_confirm.yaml` ran it."""
    base = {
        "seed": seed,
        "steps": steps,
        "eval_every": 25_000,
        "eval_episodes": 10,
        "eval_max_steps": 5_000,
        "checkpoint_every": 25_000,
        "threads": 1,
        "pair": "minatar:minatar",
        "target": {"rule": "hardcopy", "period": 1_000},
    }
    overrides = VARIANTS[variant]
    merged = base | {
        "env": {"id": f"MinAtar/{game}-v1"} | overrides.get("env", {}),
        "agent": overrides.get("agent", {}),
    }
    return from_dict(TrainConfig, merged, base=apply_preset("minatar"))


def run_once(cfg: TrainConfig, folder: Path) -> None:
    """Train (or finish) one run in `folder`; a finished run is left as it is."""
    if (folder / "result.json").exists():
        return
    start = time.perf_counter()
    logger = CSVLogger(folder)
    try:
        result = train(cfg, logger=logger, out=folder, resume=True, progress=False)
    finally:
        logger.close()
    (folder / "result.json").write_text(json.dumps({"steps": result.steps}))
    (folder / CHECKPOINT).unlink()  # replay and optimizer: not worth keeping once finished
    print(f"{folder}: {time.perf_counter() - start:.0f} s", flush=True)


def run_scores(folder: Path) -> dict[str, float] | None:
    """`train last100` and `eval last3` of a finished run's `metrics.csv`; None if unfinished."""
    if not (folder / "result.json").exists():
        return None
    episodes, evals = [], []
    with (folder / "metrics.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            if row["key"] == "charts/episodic_return":
                episodes.append(float(row["value"]))
            elif row["key"] == "eval/return_mean":
                evals.append(float(row["value"]))
    return {
        "train_last100": float(np.mean(episodes[-LAST_EPISODES:])),
        "eval_last3": float(np.mean(evals[-LAST_EVALS:])),
        "episodes": len(episodes),
    }


def table(out: Path, variants: list[str], games: list[str], seeds: list[int]) -> list[dict]:
    rows = []
    for variant in variants:
        for game in games:
            scores = [run_scores(out / variant / game / f"s{seed}") for seed in seeds]
            done = [s for s in scores if s is not None]
            row = {"variant": variant, "game": game, "runs": len(done)}
            for key in ("train_last100", "eval_last3"):
                values = [s[key] for s in done]
                row[key] = round(float(np.mean(values)), 3) if values else float("nan")
                row[f"{key}_runs"] = " ".join(f"{v:.2f}" for v in values)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--games", nargs="+", default=["Breakout"])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=CONFIRM_SEEDS)
    parser.add_argument("--steps", type=int, default=250_000)
    parser.add_argument("--out", type=Path, default=Path("runs/minatar_protocol"))
    parser.add_argument("--table", action="store_true", help="print the table only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not args.table:
        for variant in args.variants:  # a variant's seeds first: its row fills in soonest
            for game in args.games:
                for seed in args.seeds:
                    cfg = run_config(variant, game, seed, args.steps)
                    run_once(cfg, args.out / variant / game / f"s{seed}")
    rows = table(args.out, args.variants, args.games, args.seeds)
    print(f"HardCopy DQN, {args.steps:,} steps; mean over seeds (per seed in brackets)")
    for r in rows:
        print(
            f"{r['variant']:<13} {r['game']:<14} runs {r['runs']}  "
            f"train last100 {r['train_last100']:6.2f} [{r['train_last100_runs']}]  "
            f"eval last3 {r['eval_last3']:6.2f} [{r['eval_last3_runs']}]"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "protocol.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
