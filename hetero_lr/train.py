"""One training run: `python -m hetero_lr.train --pair impala:nature --env ALE/Breakout-v5`.

The loop reads top to bottom like CleanRL's `dqn_atari.py`: act -> env step -> store -> learn
(Lookahead step, then `HeteroPair.step` for the target) -> evaluate -> log -> checkpoint.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from hetero_lr.agent import Agent, Batch, DivergenceError, build_pair, epsilon_at
from hetero_lr.config import PRESETS, TrainConfig, apply_preset, flatten, from_dict
from hetero_lr.envs import make_env
from hetero_lr.evaluation import evaluate
from hetero_lr.loggers import ConsoleLogger, CSVLogger, Logger, MultiLogger, NullLogger
from hetero_lr.replay import ReplayBatch, ReplayMemory

__all__ = ["DivergenceError", "TrainResult", "main", "train"]

CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class TrainResult:
    """What a finished (or early-stopped) run returns."""

    steps: int
    """Agent steps done."""
    eval_steps: list[int]
    """Agent step of each evaluation."""
    eval_returns: list[float]
    """Mean raw evaluation return at each evaluation."""
    final_return: float
    """`eval_returns[-1]` (NaN when no evaluation ran)."""
    stopped_early: bool
    """`on_eval` asked to stop."""
    wall_time: float
    """Seconds spent in this call (a resumed run counts only its own part)."""
    online_params: int
    target_params: int


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA where present, else CPU; otherwise `torch.device(name)`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use cpu or auto")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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

    Args:
        cfg: the run's settings.
        logger: receives the resolved params once, then metrics by agent step.
        on_eval: called as `on_eval(step, mean_raw_return)` after every evaluation; returning
            False stops the run early (used by pruners).
        out: folder for checkpoints; None disables checkpointing.
        resume: continue from `out`'s checkpoint when there is one. Environments restart
            fresh episodes on resume; everything else (networks, optimizers, replay, RNGs,
            counters) continues where it was saved.
        progress: show a progress bar.

    Raises:
        DivergenceError: the TD loss or the Q-values became non-finite or exploded.
    """
    start_time = time.perf_counter()
    logger = logger or NullLogger()
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    # ---- build ----
    envs = make_env(cfg.env, seed=cfg.seed)
    pair = build_pair(cfg, envs.obs_shape, envs.n_actions).to(device)
    if cfg.channels_last and len(envs.obs_shape) == 3:
        pair.to(memory_format=torch.channels_last)
    agent = Agent(pair, cfg.agent, n_actions=envs.n_actions, device=device)
    if cfg.compile:
        pair.online.compile()
        pair.target.compile()
    replay = ReplayMemory(
        capacity=cfg.agent.buffer_size,
        num_lanes=envs.num_envs,
        obs_shape=envs.obs_shape,
        obs_dtype=envs.obs_dtype,
        frame_stack=envs.frame_stack,
        n_step=cfg.agent.n_step,
        gamma=cfg.agent.gamma,
        prioritized=cfg.agent.prioritized,
        alpha=cfg.agent.priority_alpha,
        beta=cfg.agent.priority_beta,
        seed=cfg.seed,
    )
    n_online = sum(p.numel() for p in pair.online.parameters())
    n_target = sum(p.numel() for p in pair.target.parameters())
    state = {"step": 0, "updates": 0, "eval_steps": [], "eval_returns": []}
    checkpoint = Path(out) / CHECKPOINT if out is not None else None
    if resume and checkpoint is not None and checkpoint.exists():
        state = _load_checkpoint(checkpoint, pair, agent, replay, rng)
    else:
        logger.log_params(
            flatten(cfg)
            | {f"env.protocol.{k}": v for k, v in envs.protocol.items()}
            | {
                "online_params": n_online,
                "target_params": n_target,
                "online_family": pair.online.spec,
                "target_family": pair.target.spec,
            }
        )

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
    pin = device.type == "cuda"

    def to_device(x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(x)
        return (t.pin_memory() if pin else t).to(device, non_blocking=pin)

    def sample() -> tuple[ReplayBatch, Batch]:
        b = replay.sample(cfg.agent.batch_size)
        tensors = Batch(
            to_device(b.obs),
            to_device(b.actions),
            to_device(b.rewards),
            to_device(b.next_obs),
            to_device(b.discounts),
            to_device(b.weights),
        )
        return b, tensors

    def replicate_sample() -> tuple[torch.Tensor, torch.Tensor]:
        b = replay.sample(cfg.agent.batch_size)
        return to_device(b.obs), to_device(b.actions)

    def run_evaluation(step: int) -> bool:
        def act(obs: np.ndarray) -> np.ndarray:
            return pair.act_values(to_device(obs)).argmax(dim=1).cpu().numpy()

        returns = evaluate(
            act,
            cfg.env,
            episodes=cfg.eval_episodes,
            seed=cfg.seed + 10_000 + step,
            epsilon=cfg.agent.eval_epsilon,
            max_steps=cfg.eval_max_steps,
        )
        mean = float(np.mean(returns))
        state["eval_steps"].append(step)
        state["eval_returns"].append(mean)
        logger.log_metrics(
            {"eval/return_mean": mean, "eval/return_std": float(np.std(returns))}, step
        )
        return on_eval is None or on_eval(step, mean) is not False

    # ---- loop ----
    obs = envs.reset()
    replay.start_episodes(np.arange(envs.num_envs), obs)
    recent_returns: deque[float] = deque(maxlen=20)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    stopped_early = False
    step = state["step"]
    next_eval = (step // cfg.eval_every + 1) * cfg.eval_every
    next_log = step + cfg.log_every
    next_checkpoint = step + cfg.checkpoint_every if cfg.checkpoint_every else None
    last_time, last_step = time.perf_counter(), step
    bar = _progress_bar(cfg.steps, step, enabled=progress)
    while step < cfg.steps:
        # act
        epsilon = epsilon_at(step, cfg.agent)
        actions = agent.act(to_device(obs), epsilon, rng)
        # env step; store with clipped rewards (learning only), keep raw returns for reports
        result = envs.step(actions)
        rewards = np.clip(result.rewards, -1, 1) if cfg.env.clip_rewards else result.rewards
        replay.add(actions, rewards, result.terminated, result.truncated, result.final_obs)
        ended = np.flatnonzero(result.terminated | result.truncated)
        if ended.size:
            replay.start_episodes(ended, result.obs[ended])
        obs = result.obs
        step += envs.num_envs
        for _, score, length in result.episode_returns:
            recent_returns.append(score)
            logger.log_metrics(
                {"charts/episodic_return": score, "charts/episode_length": length}, step
            )

        # learn: one Lookahead step per `train_freq` agent steps, then the target rule
        if step >= cfg.agent.learning_starts and len(replay) > 0:
            while state["updates"] < step // cfg.agent.train_freq:
                raw, batch = sample()
                with autocast:
                    metrics, priorities = agent.update(batch)
                    metrics |= pair.step(replicate_sample)
                if cfg.agent.prioritized:
                    replay.update_priorities(raw.indices, priorities.float().cpu().numpy())
                state["updates"] += 1
                for key, value in metrics.items():
                    if value == value:  # skip NaN placeholders
                        sums[key] = sums.get(key, 0.0) + value
                        counts[key] = counts.get(key, 0) + 1
        else:  # keep the update counter aligned so learning starts without a backlog
            state["updates"] = step // cfg.agent.train_freq

        if step >= next_log:
            now = time.perf_counter()
            row = {_metric_key(k): v / counts[k] for k, v in sums.items()}
            row["charts/epsilon"] = epsilon
            row["perf/sps"] = (step - last_step) / (now - last_time)
            row["perf/updates"] = state["updates"]
            if len(replay) >= cfg.agent.batch_size:
                row["gap/function"] = pair.function_gap(to_device(replay.sample(256).obs))
            logger.log_metrics(row, step)
            sums.clear()
            counts.clear()
            last_time, last_step, next_log = now, step, step + cfg.log_every
            bar.set_postfix(
                sps=f"{row['perf/sps']:.0f}",
                eps=f"{epsilon:.3f}",
                ret=f"{np.mean(recent_returns):.1f}" if recent_returns else "-",
            )
        bar.update(envs.num_envs)

        if step >= next_eval or step >= cfg.steps:
            next_eval += cfg.eval_every
            if not run_evaluation(step):
                stopped_early = True
                break
        if next_checkpoint is not None and checkpoint is not None and step >= next_checkpoint:
            next_checkpoint += cfg.checkpoint_every
            state["step"] = step
            _save_checkpoint(checkpoint, pair, agent, replay, rng, state)
    bar.close()
    envs.close()
    state["step"] = step
    if checkpoint is not None:
        _save_checkpoint(checkpoint, pair, agent, replay, rng, state)
    returns = state["eval_returns"]
    return TrainResult(
        steps=step,
        eval_steps=list(state["eval_steps"]),
        eval_returns=list(returns),
        final_return=returns[-1] if returns else float("nan"),
        stopped_early=stopped_early,
        wall_time=time.perf_counter() - start_time,
        online_params=n_online,
        target_params=n_target,
    )


def _metric_key(key: str) -> str:
    # Rule metrics arrive unprefixed from `HeteroPair.step`.
    return {
        "replicate_loss_before": "loss/replicate_before",
        "replicate_loss_after": "loss/replicate_after",
        "replicate_steps": "perf/replicate_steps_per_update",
        "target_copies": "perf/target_copies_per_update",
    }.get(key, key)


def _progress_bar(total: int, initial: int, *, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        disable=not enabled,
        unit="step",
        dynamic_ncols=True,
        mininterval=1.0,
    )


def _save_checkpoint(path: Path, pair, agent, replay, rng, state) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "pair": pair.state_dict(),
        "optimizer": agent.optimizer.state_dict(),
        "replay": replay.state_dict(),
        "numpy_rng": rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
        "state": state,
    }
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _load_checkpoint(path: Path, pair, agent, replay, rng) -> dict[str, Any]:
    payload = torch.load(path, map_location="cpu", weights_only=False)
    pair.load_state_dict(payload["pair"])
    agent.optimizer.load_state_dict(payload["optimizer"])
    replay.load_state_dict(payload["replay"])
    rng.bit_generator.state = payload["numpy_rng"]
    torch.set_rng_state(payload["torch_rng"])
    return payload["state"]


# ---- command line ----


def parse_target_update(text: str) -> dict[str, Any]:
    """`replicate`, `hardcopy:PERIOD` or `polyak:TAU` -> TargetConfig overrides."""
    rule, _, value = text.partition(":")
    try:
        if rule == "hardcopy":
            return {"rule": "hardcopy", "period": int(value)} if value else {"rule": "hardcopy"}
        if rule == "polyak":
            return {"rule": "polyak", "tau": float(value)} if value else {"rule": "polyak"}
        if rule == "replicate" and not value:
            return {"rule": "replicate"}
    except ValueError:
        pass
    raise ValueError(
        f"bad --target-update {text!r}; accepted: replicate, hardcopy:PERIOD, polyak:TAU"
    )


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    """`agent.lr=1e-4` -> {"agent": {"lr": 1e-4}} (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"bad --set {item!r}; expected KEY=VALUE, e.g. agent.lr=1e-4")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Resolve defaults < preset < --config file < --set < dedicated flags."""
    cfg = apply_preset(args.preset)
    if args.config:
        try:
            data = yaml.safe_load(Path(args.config).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ValueError(f"cannot read --config {args.config!r}: {err}") from None
        cfg = from_dict(TrainConfig, data, base=cfg)
    cfg = from_dict(TrainConfig, _parse_set(args.set), base=cfg)
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
    if args.env is not None:
        flags["env"]["id"] = args.env
    if args.num_envs is not None:
        flags["env"]["num_envs"] = args.num_envs
    if args.target_update is not None:
        flags["target"] |= parse_target_update(args.target_update)
    for name in ("kr", "kl"):
        if getattr(args, name) is not None:
            flags["target"] |= {"rule": "replicate", name: getattr(args, name)}
    cfg = from_dict(TrainConfig, flags, base=cfg)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    """Check what dataclass types cannot: ranges and the pair syntax (one-line ValueErrors)."""
    from hetero_lr.networks import parse_pair

    parse_pair(cfg.pair)
    checks = [
        ("steps", cfg.steps, cfg.steps >= 1),
        ("target.kr", cfg.target.kr, cfg.target.kr >= 1),
        ("target.kl", cfg.target.kl, cfg.target.kl >= 1),
        ("env.num_envs", cfg.env.num_envs, cfg.env.num_envs >= 1),
        ("agent.batch_size", cfg.agent.batch_size, cfg.agent.batch_size >= 1),
        ("agent.train_freq", cfg.agent.train_freq, cfg.agent.train_freq >= 1),
        ("agent.n_step", cfg.agent.n_step, cfg.agent.n_step >= 1),
        ("eval_every", cfg.eval_every, cfg.eval_every >= 1),
        ("eval_episodes", cfg.eval_episodes, cfg.eval_episodes >= 1),
    ]
    for name, value, ok in checks:
        if not ok:
            raise ValueError(f"{name}={value!r} must be >= 1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hetero_lr.train",
        description="Train a DQN-family agent with a Lookahead-Replicate (or copied) target.",
    )
    parser.add_argument("--pair", help="ONLINE:TARGET networks, e.g. impala:nature")
    parser.add_argument("--env", help="environment id, e.g. ALE/Breakout-v5, MinAtar/Breakout-v1")
    parser.add_argument("--steps", type=int, help="agent steps (1 step = 4 Atari frames)")
    parser.add_argument(
        "--preset", default="dqn", choices=sorted(PRESETS), help="agent defaults (default: dqn)"
    )
    parser.add_argument("--kr", type=int, help="Replicate steps on the target per phase")
    parser.add_argument("--kl", type=int, help="Lookahead (online) steps between phases")
    parser.add_argument("--target-update", help="replicate | hardcopy:PERIOD | polyak:TAU")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--num-envs", type=int, help="parallel environment lanes")
    parser.add_argument("--eval-every", type=int, help="agent steps between evaluations")
    parser.add_argument("--eval-episodes", type=int, help="episodes per evaluation")
    parser.add_argument(
        "--compile", action="store_true", default=None, help="torch.compile both networks"
    )
    parser.add_argument(
        "--bf16", action="store_true", default=None, help="bf16 autocast for forward passes (CUDA)"
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
        print(f"error: {err}", file=sys.stderr)
        return 2
    name = f"{cfg.pair}__{cfg.env.id}__s{cfg.seed}".replace("/", "-").replace(":", "_")
    out = Path(args.out or Path("runs") / name)
    if args.resume and not (out / CHECKPOINT).exists():
        print(f"error: --resume: no checkpoint in {out}", file=sys.stderr)
        return 2
    logger = MultiLogger([CSVLogger(out), ConsoleLogger()])
    try:
        result = train(
            cfg, logger=logger, out=out, resume=args.resume, progress=not args.no_progress
        )
    except ValueError as err:  # e.g. a network that cannot take this environment's frames
        print(f"error: {err}", file=sys.stderr)
        return 2
    except DivergenceError as err:
        print(f"error: {err}", file=sys.stderr)
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
