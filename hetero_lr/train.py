"""Train one run start to finish: `python -m hetero_lr.train --pair impala:nature`.

`train` is a thin loop over `hetero_lr.run.TrainingRun`: advance to the next evaluation or
checkpoint, evaluate, save, repeat. The command line resolves settings with one precedence,
defaults < `--preset` < `--config` file < `--set KEY=VALUE` < dedicated flags, all through
`hetero_lr.config`'s typed conversion.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hetero_lr.checkpoint as checkpoint_files
from hetero_lr._cli import OneLineParser
from hetero_lr.agent import DivergenceError
from hetero_lr.checkpoint import CheckpointError
from hetero_lr.config import (
    PRESETS,
    TrainConfig,
    apply_preset,
    from_dict,
    load_overrides,
    parse_overrides,
)
from hetero_lr.loggers import ConsoleLogger, CSVLogger, Logger, MultiLogger, NullLogger
from hetero_lr.run import TrainingRun, TrainResult

__all__ = ["DivergenceError", "TrainResult", "TrainingRun", "main", "train"]

CHECKPOINT = "checkpoint.pt"


def train(
    cfg: TrainConfig,
    *,
    logger: Logger | None = None,
    on_eval: Callable[[int, float], bool] | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train a DQN-family agent whose target follows `cfg.target.rule`.

    Evaluates every `cfg.eval_every` agent steps and at the end; checkpoints every
    `cfg.checkpoint_every` steps and at the end when `out` is set.

    Args:
        cfg: the run's settings.
        logger: receives the resolved params once, then metrics by agent step.
        on_eval: called as `on_eval(step, mean_raw_return)` after every evaluation; returning
            False stops the run early (used by pruners).
        out: folder for the checkpoint; None disables checkpointing.
        resume: continue from `out`'s checkpoint when there is one, exactly where it stopped
            (see `hetero_lr.run` for the one exception, Atari's games); the logger is rewound
            to the checkpoint's step.
        progress: show a progress bar.

    Raises:
        ValueError: settings that cannot be built, or a checkpoint made with other settings.
        CheckpointError: (a ValueError) `resume` found checkpoint files but none usable.
        DivergenceError: a non-finite TD loss or a mean |Q| above `agent.divergence_q`.
    """
    logger = logger or NullLogger()
    checkpoint = Path(out) / CHECKPOINT if out is not None else None
    with TrainingRun(cfg, logger=logger, progress=progress) as run:
        if resume and checkpoint is not None and checkpoint_files.exists(checkpoint):
            fault = run.load(checkpoint)
            if fault:  # the previous checkpoint was used: say why, once
                print(f"{fault}; resumed from the previous one", file=sys.stderr)
            logger.rewind(run.step)
        else:
            logger.log_params(run.params())
        saving = checkpoint is not None and cfg.checkpoint_every > 0
        stopped, saved_at = False, None
        while not run.done:
            eval_at = min(_next_multiple(run.step, cfg.eval_every), cfg.steps)
            save_at = _next_multiple(run.step, cfg.checkpoint_every) if saving else math.inf
            run.run_until(min(eval_at, save_at))
            if run.step >= eval_at:
                score = run.evaluate()
                if on_eval is not None and on_eval(run.step, score) is False:
                    stopped = True
                    break
            if run.step >= save_at:
                run.save(checkpoint)
                saved_at = run.step
        # Not twice at one step: a second copy would push out the previous checkpoint.
        if checkpoint is not None and saved_at != run.step:
            run.save(checkpoint)
        return run.result(stopped_early=stopped)


def _next_multiple(step: int, every: int) -> int:
    return (step // every + 1) * every


# ---- command line ----


def parse_target_update(text: str) -> dict[str, Any]:
    """`replicate`, `hardcopy:PERIOD` or `polyak:TAU` -> TargetConfig overrides."""
    rule, _, value = text.partition(":")
    knob = {"hardcopy": "period", "polyak": "tau"}.get(rule)
    if knob is not None:  # the value is converted and range-checked with the settings
        return {"rule": rule, knob: value} if value else {"rule": rule}
    if rule == "replicate" and not value:
        return {"rule": "replicate"}
    raise ValueError(
        f"bad --target-update {text!r}; accepted: replicate, hardcopy:PERIOD, polyak:TAU"
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Resolve defaults < preset < --config file < --set < dedicated flags."""
    cfg = apply_preset(args.preset)
    if args.config:
        cfg = from_dict(TrainConfig, load_overrides(args.config), base=cfg)
    cfg = from_dict(TrainConfig, parse_overrides(args.set), base=cfg)
    flags: dict[str, Any] = {"env": {}, "target": {}}
    for name in (
        "pair",
        "steps",
        "seed",
        "device",
        "eval_every",
        "eval_episodes",
        "compile",
        "bf16",
    ):
        if getattr(args, name) is not None:
            flags[name] = getattr(args, name)
    if args.record_video is not None:
        flags["eval_videos"] = args.record_video
    if args.env is not None:
        flags["env"]["id"] = args.env
    if args.num_envs is not None:
        flags["env"]["num_envs"] = args.num_envs
    if args.target_update is not None:
        flags["target"] |= parse_target_update(args.target_update)
    for name in ("kr", "kl"):
        if getattr(args, name) is not None:
            flags["target"] |= {"rule": "replicate", name: getattr(args, name)}
    return from_dict(TrainConfig, flags, base=cfg)


def build_parser() -> argparse.ArgumentParser:
    """The `hetero-lr-train` argument parser; values stay text until `config_from_args`."""
    parser = OneLineParser(
        prog="python -m hetero_lr.train",
        description="Train a DQN-family agent with a Lookahead-Replicate (or copied) target.",
    )
    parser.add_argument("--pair", help="ONLINE:TARGET networks, e.g. impala:nature")
    parser.add_argument("--env", help="environment id, e.g. ALE/Breakout-v5, MinAtar/Breakout-v1")
    parser.add_argument("--steps", help="agent steps (1 step = 4 Atari frames)")
    parser.add_argument(
        "--preset", default="dqn", choices=sorted(PRESETS), help="agent defaults (default: dqn)"
    )
    parser.add_argument("--kr", help="Replicate steps on the target per phase")
    parser.add_argument("--kl", help="Lookahead (online) steps between phases")
    parser.add_argument("--target-update", help="replicate | hardcopy:PERIOD | polyak:TAU")
    parser.add_argument("--seed", help="run seed (networks, replay, exploration, environments)")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--num-envs", help="parallel environment lanes")
    parser.add_argument("--eval-every", help="agent steps between evaluations")
    parser.add_argument("--eval-episodes", help="episodes per evaluation")
    parser.add_argument(
        "--compile", action="store_true", default=None, help="torch.compile both networks"
    )
    parser.add_argument(
        "--bf16", action="store_true", default=None, help="bf16 autocast for forward passes (CUDA)"
    )
    parser.add_argument(
        "--record-video",
        metavar="N",
        help="save N evaluation episodes per evaluation as MP4 (sets eval_videos)",
    )
    parser.add_argument("--config", help="YAML file of TrainConfig overrides")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any setting, e.g. --set agent.double=true (repeatable)",
    )
    parser.add_argument(
        "--out", help="run folder (metrics.csv, checkpoint.pt); default runs/<pair>__<env>__s<seed>"
    )
    parser.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; user mistakes give one line on stderr and exit code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    name = f"{cfg.pair}__{cfg.env.id}__s{cfg.seed}".replace("/", "-").replace(":", "_")
    out = Path(args.out or Path("runs") / name)
    if args.resume and not checkpoint_files.exists(out / CHECKPOINT):
        print(f"{parser.prog}: error: --resume: no checkpoint in {out}", file=sys.stderr)
        return 2
    logger = MultiLogger([CSVLogger(out), ConsoleLogger()])
    try:
        result = train(
            cfg, logger=logger, out=out, resume=args.resume, progress=not args.no_progress
        )
    except CheckpointError as err:
        print(f"{parser.prog}: error: --resume: {err}; run without --resume to start from step 0",
              file=sys.stderr)  # fmt: skip
        return 2
    except ValueError as err:  # e.g. a network that cannot take this environment's frames
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    except DivergenceError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 1
    finally:
        logger.close()
    print(
        f"done: {result.steps:,} steps in {result.wall_time:.0f} s, "
        f"final eval return {result.final_return:.2f}; metrics in {out / 'metrics.csv'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
