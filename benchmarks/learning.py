"""Learning checks, printed as figures (not a test).

    python benchmarks/learning.py cartpole [--seeds 0 1 2] [--steps 50000]
    python benchmarks/learning.py minatar [--seeds 0] [--steps 200000]

`cartpole`: LR between MLPs of different widths (online 64x64, target 128x128) on CartPole-v1
with the `cartpole` preset; the check is a mean evaluation return of at least 400 within the
budget in most seeds. `minatar`: LR `minatar:minatar` (target twice as wide) on MinAtar
Breakout with the `minatar` preset; reports the evaluation returns reached.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from hetero_lr.config import TrainConfig, apply_preset, from_dict
from hetero_lr.train import train

CHECKS = {
    "cartpole": (
        "cartpole",
        {"online_options": {"hidden": [64, 64]}, "target_options": {"hidden": [128, 128]}},
        400.0,
    ),
    "minatar": (
        "minatar",
        {"target_options": {"channels": 32, "hidden": 256}, "eval_every": 25_000},
        None,
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("check", choices=sorted(CHECKS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, help="agent steps (default: the preset's)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small networks: threads only add synchronisation
    preset, overrides, threshold = CHECKS[args.check]
    if args.steps:
        overrides = overrides | {"steps": args.steps}
    passed, finals = 0, []
    for seed in args.seeds:
        cfg = from_dict(TrainConfig, overrides | {"seed": seed}, base=apply_preset(preset))
        start = time.perf_counter()
        result = train(cfg, progress=False)
        points = zip(result.eval_steps, result.eval_returns, strict=True)
        curve = ", ".join(f"{s // 1000}k:{r:.0f}" for s, r in points)
        best = max(result.eval_returns)
        finals.append(result.final_return)
        passed += threshold is not None and best >= threshold
        print(
            f"{cfg.pair} seed {seed}: best {best:.1f}, final {result.final_return:.1f} "
            f"({time.perf_counter() - start:.0f} s)  [{curve}]",
            flush=True,
        )
    print(f"final evaluation return over {len(finals)} seeds: mean {np.mean(finals):.1f}")
    if threshold is not None:
        print(f"{passed}/{len(args.seeds)} seeds reached a mean evaluation return >= {threshold}")


if __name__ == "__main__":
    main()
