"""One training run as an object you can step: build -> `run_until` -> `evaluate` -> save/load.

The loop in `run_until` reads top to bottom like CleanRL's `dqn_atari.py`: act -> env step ->
store -> learn (a Lookahead step, then `HeteroPair.step` for the target) -> log. Evaluation and
checkpoints are the caller's: `hetero_lr.train.train` drives one run start to finish, and a
study can advance several runs side by side, evaluation period by evaluation period.

Stepping is exact: `run_until(a); run_until(b)` equals `run_until(b)`, and `state_dict()` ->
`load_state_dict()` in a fresh run continues as if never stopped (replay, optimizers, counters,
the metric window and every random stream included). One exception: ale-py's native vector env
has no snapshot, so an Atari run restarts its games after a load (the replay closes the cut
episodes as truncated) with lanes seeded afresh from the run seed and the step.
"""

from __future__ import annotations

import tempfile
import time
from collections import deque
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hetero_lr import checkpoint, seeding
from hetero_lr.agent import Batch, DivergenceBound, DivergenceError, DivergenceGuard, epsilon_at
from hetero_lr.build import build_learner, resolve_device
from hetero_lr.checkpoint import CheckpointError
from hetero_lr.config import TrainConfig, flatten
from hetero_lr.envs import make_env
from hetero_lr.evaluation import evaluate
from hetero_lr.loggers import Logger, NullLogger
from hetero_lr.replay import ReplayMemory

# Settings a resumed run may change: how long and where it runs, not what it computes.
RESUMABLE_CHANGES = ("steps", "device", "threads", "checkpoint_every")

# Updates between reads of the pending metric tensors when no log row comes sooner.
_FOLD_EVERY = 4_096


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
    """The caller stopped before `cfg.steps` (e.g. a pruner)."""
    wall_time: float
    """Seconds since this process built the run (a resumed run counts only its own part)."""
    online_params: int
    target_params: int


class TrainingRun:
    """A DQN-family agent whose target follows `cfg.target.rule`, advanced in steps.

    Args:
        cfg: the run's settings.
        logger: receives metrics by agent step (`log_params` is the caller's, see `params`).
        progress: show a progress bar.

    Raises:
        ValueError: a device, environment or network pairing that cannot be built.
    """

    def __init__(
        self, cfg: TrainConfig, *, logger: Logger | None = None, progress: bool = False
    ) -> None:
        self.cfg = cfg
        self.logger = logger or NullLogger()
        self.device = resolve_device(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(seeding.int_seed(cfg.seed, "torch"))
        self.envs = make_env(cfg.env, seed=seeding.int_seed(cfg.seed, "env"))
        try:
            self.pair, self.agent = build_learner(cfg, self.envs.obs_shape, self.envs.n_actions)
        except BaseException:
            self.envs.close()
            raise
        self.replay = ReplayMemory(
            capacity=cfg.agent.buffer_size,
            num_lanes=self.envs.num_envs,
            obs_shape=self.envs.obs_shape,
            obs_dtype=self.envs.obs_dtype,
            frame_stack=self.envs.frame_stack,
            n_step=cfg.agent.n_step,
            gamma=cfg.agent.gamma,
            prioritized=cfg.agent.prioritized,
            alpha=cfg.agent.priority_alpha,
            beta=cfg.agent.priority_beta,
            seed=seeding.stream(cfg.seed, "replay"),
        )
        self._explore_rng = seeding.generator(cfg.seed, "exploration")
        self._diagnostics_rng = seeding.generator(cfg.seed, "diagnostics")
        self._autocast: AbstractContextManager[Any] = (
            torch.autocast(self.device.type, dtype=torch.bfloat16) if cfg.bf16 else nullcontext()
        )
        self._pin = self.device.type == "cuda"
        self._replicate_by_priority = (
            cfg.agent.prioritized and cfg.target.replicate_sampling == "prioritized"
        )
        self._on_cpu = self.device.type == "cpu"
        self.divergence = DivergenceBound.resolve(cfg.agent, cfg.env)
        """The mean |Q| bound in force (`agent.divergence_q`, resolved)."""
        self._guard = DivergenceGuard(self.divergence)
        self.step = 0
        """Agent steps done (summed over lanes)."""
        self.updates = 0
        """Online (Lookahead) gradient steps done."""
        self.eval_steps: list[int] = []
        self.eval_returns: list[float] = []
        self._obs = self.envs.reset()
        self.replay.start_episodes(np.arange(self.envs.num_envs), self._obs)
        # Metrics of the updates since the last log row: numbers are summed as they come,
        # tensors are kept and read once per row (`_fold`), never with `.item()` per update.
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._pending: dict[str, list[torch.Tensor]] = {}
        self._next_log = cfg.log_every
        self._recent_returns: deque[float] = deque(maxlen=20)
        self._started = self._last_time = time.perf_counter()
        self._last_step = 0
        self._bar: Any = _progress_bar(cfg.steps, enabled=progress)

    # ---- what the caller reads ----

    @property
    def done(self) -> bool:
        """Whether `cfg.steps` agent steps have been taken."""
        return self.step >= self.cfg.steps

    @property
    def param_counts(self) -> dict[str, int]:
        """Parameter counts of the online and target networks."""
        return {
            "online_params": sum(p.numel() for p in self.pair.online.parameters()),
            "target_params": sum(p.numel() for p in self.pair.target.parameters()),
        }

    def params(self) -> dict[str, Any]:
        """The resolved settings, the environment protocol in force and the network sizes."""
        return (
            flatten(self.cfg)
            | {f"env.protocol.{k}": v for k, v in self.envs.protocol.items()}
            | {
                "agent.divergence_q_resolved": self.divergence.value,
                "agent.divergence_q_rule": self.divergence.rule,
            }
            | self.param_counts
            | {"online_family": self.pair.online.spec, "target_family": self.pair.target.spec}
        )

    def result(self, *, stopped_early: bool = False) -> TrainResult:
        """The run's evaluations so far as a `TrainResult`."""
        return TrainResult(
            steps=self.step,
            eval_steps=list(self.eval_steps),
            eval_returns=list(self.eval_returns),
            final_return=self.eval_returns[-1] if self.eval_returns else float("nan"),
            stopped_early=stopped_early,
            wall_time=time.perf_counter() - self._started,
            **self.param_counts,
        )

    # ---- advancing ----

    def run_until(self, step: int) -> None:
        """Act, store and learn until `step` agent steps (capped at `cfg.steps`) are done.

        Lanes step together, so the run may pass `step` by up to `num_envs - 1`.

        Raises:
            DivergenceError: a non-finite TD loss, or a mean |Q| above `agent.divergence_q`;
                checked at each log row and when the run reaches `cfg.steps` (at once for
                non-finite priorities).
        """
        cfg, envs, replay = self.cfg, self.envs, self.replay
        stop = min(step, cfg.steps)
        while self.step < stop:
            # act
            epsilon = epsilon_at(self.step, cfg.agent)
            actions = self.agent.act(self._to_device(self._obs), epsilon, self._explore_rng)
            # env step; store clipped rewards (learning only), keep raw returns for reports
            result = envs.step(actions)
            rewards = _clip(result.rewards) if cfg.env.clip_rewards else result.rewards
            replay.add(actions, rewards, result.terminated, result.truncated, result.final_obs)
            if result.ended.size:
                replay.start_episodes(result.ended, result.obs[result.ended])
            self._obs = result.obs
            self.step += envs.num_envs
            for _, score, length in result.episode_returns:
                self._recent_returns.append(score)
                self.logger.log_metrics(
                    {"charts/episodic_return": score, "charts/episode_length": length}, self.step
                )
            # learn: one Lookahead step per `train_freq` agent steps, then the target rule
            if self.step >= cfg.agent.learning_starts and len(replay) > 0:
                while self.updates < self.step // cfg.agent.train_freq:
                    self._update()
            else:  # keep the update counter aligned so learning starts without a backlog
                self.updates = self.step // cfg.agent.train_freq
            if self.step >= self._next_log:
                self._log_row(epsilon)
        self._bar.update(self.step - self._bar.n)
        if self.done:
            self._fold()
            self._guard.check(self.step)

    def _update(self) -> None:
        raw = self.replay.sample(self.cfg.agent.batch_size)
        to_device = torch.from_numpy if self._on_cpu else self._to_device
        batch = Batch(
            obs=to_device(raw.obs),
            actions=to_device(raw.actions),
            rewards=to_device(raw.rewards),
            next_obs=to_device(raw.next_obs),
            discounts=to_device(raw.discounts),
            weights=to_device(raw.weights),
        )
        with self._autocast:
            metrics, priorities = self.agent.update(batch)
            metrics |= self.pair.step(self._replicate_sample)
        if self.cfg.agent.prioritized:
            values = priorities.float().cpu().numpy()
            if not np.isfinite(values).all():  # the memory would refuse them
                raise DivergenceError(f"diverged: non-finite TD priorities at step {self.step:,}")
            self.replay.update_priorities(raw.indices, values)
        self.updates += 1
        for key, value in metrics.items():
            if isinstance(value, torch.Tensor):
                self._pending.setdefault(key, []).append(value)
            elif value == value:  # NaN: no value at this update
                self._sums[key] = self._sums.get(key, 0.0) + value
                self._counts[key] = self._counts.get(key, 0) + 1
        if self.updates % _FOLD_EVERY == 0:  # bounds the pending list (a long `log_every`)
            self._fold()

    def _replicate_sample(self) -> tuple[torch.Tensor, ...]:
        """A Replicate batch (`target.replicate_sampling`): `(obs, actions)` drawn uniformly,
        or `(obs, actions, weights)` drawn by priority."""
        b = self.replay.sample(self.cfg.agent.batch_size, uniform=not self._replicate_by_priority)
        if self._replicate_by_priority:
            return self._to_device(b.obs), self._to_device(b.actions), self._to_device(b.weights)
        return self._to_device(b.obs), self._to_device(b.actions)

    def _to_device(self, x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(x)
        if self._on_cpu:
            return t
        return (t.pin_memory() if self._pin else t).to(self.device, non_blocking=self._pin)

    def _fold(self) -> None:
        """Read the pending tensor metrics (one read per key) into the sums and the guard.

        Summed one by one in update order in float64, as Python numbers are, so the averages do
        not depend on when a window is folded (a log row or a checkpoint).
        """
        values = {k: torch.stack(v).tolist() for k, v in self._pending.items()}
        self._pending.clear()
        self._guard.observe(values.get("loss/td", ()), values.get("q/online_abs_mean", ()))
        for key, items in values.items():
            total, count = self._sums.get(key, 0.0), self._counts.get(key, 0)
            for value in items:
                if value == value:  # NaN: no value at this update
                    total += value
                    count += 1
            self._sums[key], self._counts[key] = total, count

    def _log_row(self, epsilon: float) -> None:
        """Averaged training metrics since the last row, at the first step past `log_every`.

        Then checks the window for divergence (`agent.divergence_q`): the row that shows it is
        logged first.
        """
        now = time.perf_counter()
        self._fold()
        row = {k: self._sums[k] / self._counts[k] for k in sorted(self._sums) if self._counts[k]}
        row["charts/epsilon"] = epsilon
        row["perf/sps"] = (self.step - self._last_step) / max(now - self._last_time, 1e-9)
        row["perf/updates"] = self.updates
        if len(self.replay) >= self.cfg.agent.batch_size:
            obs = self.replay.sample(256, rng=self._diagnostics_rng).obs
            row["gap/function"] = self.pair.function_gap(self._to_device(obs))
        self.logger.log_metrics(row, self.step)
        self._guard.check(self.step)
        self._guard.reset()
        self._sums.clear()
        self._counts.clear()
        self._last_time, self._last_step = now, self.step
        self._next_log = (self.step // self.cfg.log_every + 1) * self.cfg.log_every
        recent = self._recent_returns
        self._bar.update(self.step - self._bar.n)  # the bar moves once per row, not per step
        self._bar.set_postfix(
            sps=f"{row['perf/sps']:.0f}",
            eps=f"{epsilon:.3f}",
            ret=f"{np.mean(recent):.1f}" if recent else "-",
            refresh=False,
        )

    def evaluate(self) -> float:
        """Play `cfg.eval_episodes` evaluation episodes now; returns the mean raw game score.

        Each evaluation has its own environments and random stream, keyed by the agent step,
        so evaluating (or not) never changes training.
        """
        cfg = self.cfg

        def act(obs: np.ndarray) -> np.ndarray:
            return self.pair.act_values(self._to_device(obs)).argmax(dim=1).cpu().numpy()

        videos: list[list[np.ndarray]] = []
        returns = evaluate(
            act,
            cfg.env,
            episodes=cfg.eval_episodes,
            seed=seeding.int_seed(cfg.seed, "evaluation", self.step),
            epsilon=cfg.agent.eval_epsilon,
            max_steps=cfg.eval_max_steps,
            record=cfg.eval_videos,
            videos=videos,
        )
        self._save_videos(videos)
        mean = float(np.mean(returns))
        self.eval_steps.append(self.step)
        self.eval_returns.append(mean)
        self.logger.log_metrics(
            {"eval/return_mean": mean, "eval/return_std": float(np.std(returns))}, self.step
        )
        return mean

    def _save_videos(self, videos: list[list[np.ndarray]]) -> None:
        """Hand each recorded episode to the logger as `videos/step<N>_episode<K>.mp4`."""
        if not videos:
            return
        from hetero_lr.video import write_mp4

        with tempfile.TemporaryDirectory() as folder:
            for k, frames in enumerate(videos):
                path = write_mp4(frames, Path(folder) / f"step{self.step:09d}_episode{k}.mp4")
                self.logger.log_file(path, "videos")

    # ---- checkpoints ----

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (see the module docstring).

        The replay's arrays share memory with the live buffer: save before stepping again.
        """
        self._fold()  # pending metrics become sums: the same numbers, whenever folded
        return {
            "config": flatten(self.cfg),
            "pair": self.pair.state_dict(),
            "optimizer": self.agent.optimizer.state_dict(),
            "replay": self.replay.state_dict(),
            "envs": self.envs.state_dict(),
            "obs": torch.from_numpy(self._obs.copy()),
            "rngs": {
                "exploration": self._explore_rng.bit_generator.state,
                "diagnostics": self._diagnostics_rng.bit_generator.state,
                "torch": torch.get_rng_state(),
            },
            "counters": {"step": self.step, "updates": self.updates},
            "evaluations": {"steps": list(self.eval_steps), "returns": list(self.eval_returns)},
            "log": {
                "sums": dict(self._sums),
                "counts": dict(self._counts),
                "next_log": self._next_log,
                "divergence": self._guard.state_dict(),
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()` of a run with the same settings.

        Raises:
            ValueError: the saved run used other settings (beyond `RESUMABLE_CHANGES`).
        """
        # A setting added since the checkpoint was written counts as its default there.
        saved, mine = flatten(TrainConfig()) | state["config"], flatten(self.cfg)
        differ = sorted(
            k
            for k in saved.keys() | mine.keys()
            if saved.get(k) != mine.get(k) and k not in RESUMABLE_CHANGES
        )
        if differ:
            raise ValueError(
                f"the checkpoint was made with other settings ({', '.join(differ[:5])} "
                "differ); resume with the same ones"
            )
        self.pair.load_state_dict(state["pair"])
        self.agent.optimizer.load_state_dict(state["optimizer"])
        self.replay.load_state_dict(state["replay"])
        self._explore_rng.bit_generator.state = state["rngs"]["exploration"]
        self._diagnostics_rng.bit_generator.state = state["rngs"]["diagnostics"]
        torch.set_rng_state(state["rngs"]["torch"])
        self.step = state["counters"]["step"]
        self.updates = state["counters"]["updates"]
        self.eval_steps = list(state["evaluations"]["steps"])
        self.eval_returns = list(state["evaluations"]["returns"])
        self._sums = dict(state["log"]["sums"])
        self._counts = dict(state["log"]["counts"])
        self._pending.clear()
        self._guard.load_state_dict(state["log"]["divergence"])
        self._next_log = state["log"]["next_log"]
        if self.envs.load_state_dict(state["envs"]):
            self._obs = state["obs"].numpy().copy()
        else:  # new games, seeded apart from every earlier reset of this run
            self._obs = self.envs.reset(seed=seeding.int_seed(self.cfg.seed, "env", self.step))
            self.replay.start_episodes(np.arange(self.envs.num_envs), self._obs)
        self._last_time, self._last_step = time.perf_counter(), self.step
        self._bar.reset(total=self.cfg.steps)
        self._bar.update(self.step)

    def save(self, path: str | Path) -> None:
        """Write `state_dict()` to `path` with `hetero_lr.checkpoint.save`: atomic, its sha256
        recorded, the previous good file kept as `PATH.prev`."""
        checkpoint.save(self.state_dict(), path)

    def load(self, path: str | Path) -> str | None:
        """Continue from the newest good checkpoint `save` wrote at `path`.

        Returns:
            Why the latest file was passed over for the previous one (one line), or None.

        Raises:
            CheckpointError: no usable file (missing, damaged, or holding pickled objects).
            ValueError: the checkpoint was made with other settings.
        """
        loaded = checkpoint.load(path)
        if loaded is None:
            raise CheckpointError(f"no checkpoint at {path}")
        self.load_state_dict(loaded.state)
        return loaded.fault

    def close(self) -> None:
        """Release the environments and the progress bar."""
        self._bar.close()
        self.envs.close()

    def __enter__(self) -> TrainingRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _clip(rewards: np.ndarray) -> np.ndarray:
    """`np.clip(rewards, -1, 1)`, the same numbers at half the cost (it runs every step)."""
    return np.minimum(np.maximum(rewards, -1.0), 1.0)


def _progress_bar(total: int, *, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, unit="step", dynamic_ncols=True, mininterval=1.0)
