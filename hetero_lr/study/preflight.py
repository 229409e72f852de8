"""Checks and a time estimate made before a study writes anything.

`probe_envs` builds each environment once (shape, actions, speed); `check_pairings` builds every
pairing's networks and target rule on those shapes, as a run would, so an incompatible pairing
fails before any storage exists; `estimate_seconds` times a few real updates on this device.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from hetero_lr.config import TrainConfig
from hetero_lr.study.spec import Arm, StudySpec


@dataclass(frozen=True)
class EnvInfo:
    """What a study needs to know about an environment before running it."""

    env_id: str
    obs_shape: tuple[int, ...]
    obs_dtype: str
    n_actions: int
    steps_per_sec: float
    """Environment steps per second of one lane under random actions (measured)."""
    frame_stack: int = 1
    """Frames stacked in one observation (stored once each by the replay memory)."""
    random_score: float | None = None
    """Mean raw return of whole games under random actions (measured; None if none ended)."""


def probe_envs(spec: StudySpec, *, max_steps: int = 3_000, games: int = 5) -> list[EnvInfo]:
    """Build each environment once: shapes, action count, speed, a random policy's score.

    Random actions for up to `max_steps` steps or `games` whole games, whichever ends first
    (at least 200 steps, for the speed).

    Raises:
        ValueError: an unsupported environment id.
    """
    from hetero_lr.envs import make_env

    infos = []
    rng = np.random.default_rng(0)
    for env_id in spec.env_ids:
        env = make_env(replace(spec.base.env, id=env_id), seed=0, num_envs=1)
        env.reset()
        scores: list[float] = []
        start, n = time.perf_counter(), 0
        while n < max_steps and (n < 200 or len(scores) < games):
            scores += [
                score
                for _, score, _ in env.step(rng.integers(env.n_actions, size=1)).episode_returns
            ]
            n += 1
        rate = n / (time.perf_counter() - start)
        env.close()
        infos.append(
            EnvInfo(
                env_id,
                tuple(env.obs_shape),
                str(env.obs_dtype),
                env.n_actions,
                rate,
                env.frame_stack,
                float(np.mean(scores)) if scores else None,
            )
        )
    return infos


def check_pairings(spec: StudySpec, envs: Sequence[EnvInfo]) -> None:
    """Build every arm's networks and rule on every observation shape, as a run would.

    Raises:
        ValueError: a setting out of range, a family that cannot take an environment's
            observations, outputs that disagree (actions, atoms, support), or a rule the
            networks cannot serve (HardCopy between different architectures).
    """
    import torch

    from hetero_lr.build import build_pair

    shapes = {env.obs_shape: env for env in envs}
    for arm in (*spec.pairings, *spec.baseline_arms):
        cfg = _arm_config(spec.base, arm)
        for env in shapes.values():
            try:
                pair = build_pair(cfg, env.obs_shape, env.n_actions)
                with torch.no_grad():
                    obs = _zeros_obs(env, 2)
                    shapes_out = (tuple(pair.online(obs).shape), tuple(pair.target(obs).shape))
            except ValueError as err:
                raise ValueError(f"pairing {arm.label!r} on {env.env_id}: {err}") from None
            if shapes_out[0] != shapes_out[1]:
                raise ValueError(
                    f"pairing {arm.label!r} on {env.env_id}: online outputs "
                    f"{shapes_out[0]}, target {shapes_out[1]}"
                )


def estimate_seconds(spec: StudySpec, envs: Sequence[EnvInfo], *, workers: int) -> dict[str, Any]:
    """Rough wall time of the study on this device, from a few timed updates.

    Per run: `(steps - learning_starts) / train_freq` online updates (timed with the agent's
    own update, bootstrap included) plus `kr / kl` Replicate steps each (timed through the
    rule's own step; `kr`, `kl` at the geometric middle of the search space); one acting
    forward per `num_envs` agent steps; the environment at the rate measured by `probe_envs`;
    evaluations assumed to last `min(eval_max_steps, 2,000)` steps per episode.
    """
    import torch

    base, env = spec.base, envs[0]
    ratio = _geo(spec, "kr", base.target.kr) / _geo(spec, "kl", base.target.kl)
    updates = max(0, base.steps - base.agent.learning_starts) / base.agent.train_freq
    evals = math.ceil(base.steps / base.eval_every)
    env_steps = base.steps + evals * base.eval_episodes * min(base.eval_max_steps, 2_000)
    lanes = min(base.env.num_envs, os.cpu_count() or 1)
    per_run: dict[str, float] = {}
    threads = torch.get_num_threads()
    if base.threads:
        torch.set_num_threads(base.threads)  # as `train` will
    try:
        timings = {
            a.label: _time_updates(_arm_config(base, a), env)
            for a in (*spec.pairings, *spec.baseline_arms)
        }
    finally:
        torch.set_num_threads(threads)
    for arm in (*spec.pairings, *spec.baseline_arms):
        t = timings[arm.label]
        replicate = ratio * t["replicate"] if arm.rule == "replicate" else 0.0
        per_run[arm.label] = (
            updates * (t["online"] + replicate)
            + env_steps / base.env.num_envs * t["act"]
            + env_steps / (env.steps_per_sec * lanes)
        )
    runs = len(spec.env_ids) * spec.seeds
    search = sum(per_run[a.label] for a in spec.pairings) / len(spec.pairings)
    baselines = sum(per_run[a.label] for a in spec.baseline_arms)
    total = runs * (spec.trials * search + baselines) / workers
    return {"per_run": per_run, "total": total, "device": run_device(base.device).type}


def _arm_config(base: TrainConfig, arm: Arm) -> TrainConfig:
    return replace(base, pair=arm.pair, target=replace(base.target, rule=arm.rule))


def _zeros_obs(env: EnvInfo, batch: int) -> Any:
    import torch

    return torch.zeros(batch, *env.obs_shape, dtype=getattr(torch, env.obs_dtype))


def _time_updates(cfg: TrainConfig, env: EnvInfo, reps: int = 3) -> dict[str, float]:
    """Seconds per online update, per Replicate step and per acting forward."""
    import torch

    from hetero_lr.agent import Batch
    from hetero_lr.build import build_learner

    # KR = KL = 1: every `pair.step` is one Replicate step, timed through the rule itself.
    cfg = replace(cfg, target=replace(cfg.target, kr=1, kl=1))
    pair, agent = build_learner(cfg, env.obs_shape, env.n_actions)
    device = run_device(cfg.device)
    b = cfg.agent.batch_size
    obs = _zeros_obs(env, b).to(device)
    batch = Batch(
        obs,
        torch.zeros(b, dtype=torch.int64, device=device),
        torch.zeros(b, device=device),
        obs,
        torch.zeros(b, device=device),
        torch.ones(b, device=device),
    )
    acting = _zeros_obs(env, cfg.env.num_envs).to(device)

    def replicate() -> None:
        pair.step(lambda: (obs, batch.actions))

    def timed(fn: Callable[[], Any]) -> float:
        fn()  # warm-up: allocations, lazy modules, optimizer state
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / reps

    return {
        "online": timed(lambda: agent.update(batch)),
        "replicate": timed(replicate) if cfg.target.rule == "replicate" else 0.0,
        "act": timed(lambda: pair.act_values(acting)),
    }


def _geo(spec: StudySpec, name: str, default: float) -> float:
    for p in spec.space:
        if p.name == name:
            values = p.choices if p.kind == "categorical" else (p.low, p.high)
            return math.exp(sum(math.log(v) for v in values) / len(values))
    return float(default)


def run_device(name: str) -> Any:
    """The torch device a run with `TrainConfig.device == name` uses (ValueError if absent)."""
    from hetero_lr.build import resolve_device

    return resolve_device(name)


def replay_bytes(cfg: TrainConfig, env: EnvInfo) -> int:
    """Bytes of one run's replay memory at full capacity.

    Read off a memory built with the run's arguments: NumPy's zero-filled arrays are mapped
    lazily, so building it commits no memory.
    """
    from hetero_lr.replay import ReplayMemory

    memory = ReplayMemory(
        capacity=cfg.agent.buffer_size,
        num_lanes=cfg.env.num_envs,
        obs_shape=env.obs_shape,
        obs_dtype=np.dtype(env.obs_dtype),
        frame_stack=env.frame_stack,
        n_step=cfg.agent.n_step,
        prioritized=cfg.agent.prioritized,
    )
    return memory.nbytes


def trial_memory(spec: StudySpec, envs: Sequence[EnvInfo]) -> int:
    """Bytes of replay a trial holds at once: all its runs in lockstep, one under Wilcoxon."""
    per_env = {env.env_id: replay_bytes(spec.base, env) for env in envs}
    if spec.pruner == "wilcoxon":
        return max(per_env.values())
    return spec.seeds * sum(per_env.values())


def available_memory() -> int | None:
    """Bytes of memory available to new processes (Linux `MemAvailable`), None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(
    spec: StudySpec, envs: Sequence[EnvInfo], *, workers: int, available: int | None
) -> int:
    """The replay memory the study's workers hold at once; refuse what cannot fit.

    Raises:
        ValueError: one line naming the sizes and what to lower (`--seeds`,
            `agent.buffer_size`, `--workers`).
    """
    need = workers * trial_memory(spec, envs)
    if available is not None and need > available:
        runs = "1 run at a time" if spec.pruner == "wilcoxon" else f"{spec.seeds} seeds"
        raise ValueError(
            f"a trial holds its runs' replay memories at once ({runs} x {len(envs)} "
            f"environment(s), agent.buffer_size={spec.base.agent.buffer_size:,}, "
            f"{workers} worker(s): {need / 1e9:.1f} GB) but {available / 1e9:.1f} GB is "
            "available; lower --seeds or agent.buffer_size (or --workers)"
        )
    return need
