"""The training runs of a trial (or of a confirmation): each with its MLflow run and its scores.

A `RunSlot` is one (environment, seed) run: it builds the run when started, advances it to an
evaluation step, keeps the run's scores on the objective's scale (human-normalised on Atari),
and ends its MLflow run with a status and reason. Trials advance their slots in lockstep
(`objective`); confirmations one after another in each process (`confirm`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from hetero_lr.config import TrainConfig
from hetero_lr.faults import DiskFull, full_folder, is_disk_full
from hetero_lr.loggers import Logger
from hetero_lr.scores import normalizer
from hetero_lr.tracking import MlflowLogger, RunStatus, Tracker


class RunLike(Protocol):
    """What a study needs of a training run (`hetero_lr.run.TrainingRun` is one)."""

    step: int

    def run_until(self, step: int) -> None: ...

    def evaluate(self) -> float: ...

    def params(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


RunFactory = Callable[[TrainConfig, Logger], RunLike]
"""Builds a run from its settings and the logger its metrics go to."""


def training_run(cfg: TrainConfig, logger: Logger) -> RunLike:
    """The default `RunFactory`: a `TrainingRun` without a progress bar."""
    from hetero_lr.run import TrainingRun

    return TrainingRun(cfg, logger=logger, progress=False)


# Settings only one target rule reads: logged only for runs of that rule.
_RULE_ONLY = {
    "replicate": (
        "target.kr", "target.kl", "target.lr", "target.variant", "target.loss",
        "target.schedule", "target.optimizer", "target.replicate_sampling",
    ),
    "hardcopy": ("target.period",),
    "polyak": ("target.tau",),
}  # fmt: skip


def used_params(params: dict[str, Any]) -> dict[str, Any]:
    """Flat settings without those the run never read (another rule's, C51's without C51,
    prioritised replay's without it), so `mlflow ui` shows what a run was."""
    rule = params.get("target.rule")
    unused = {k for r, keys in _RULE_ONLY.items() if r != rule for k in keys}
    if params.get("agent.categorical") is False:
        unused |= {"agent.num_atoms", "agent.v_min", "agent.v_max"}
    if params.get("agent.prioritized") is False:
        unused |= {"agent.priority_alpha", "agent.priority_beta", "target.replicate_sampling"}
    return {k: v for k, v in params.items() if k not in unused}


def share_cores(threads: int, workers: int) -> None:
    """Give each of `workers` processes its share of the cores when `threads` is 0 (all):
    N processes with all-core intra-op pools would oversubscribe them."""
    import torch

    if threads == 0 and workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def eval_steps(cfg: TrainConfig) -> list[int]:
    """Agent steps at which a run is evaluated: every `eval_every`, and at the end."""
    n = math.ceil(cfg.steps / cfg.eval_every)
    return [min((i + 1) * cfg.eval_every, cfg.steps) for i in range(n)]


@dataclass
class RunSlot:
    """One (environment, seed) run of a trial or confirmation.

    Attributes:
        cfg: the run's settings (seed and environment set).
        name: its MLflow run name.
        tags: tags of its MLflow run (role and parent are given at `start`).
    """

    cfg: TrainConfig
    name: str
    tags: dict[str, Any]
    transform: Callable[[float], float] = field(init=False)
    """Raw evaluation return -> objective scale."""
    note: str = field(init=False)
    """How the objective scale is defined (e.g. the human-normalisation source)."""
    steps: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    """Evaluation scores on the objective scale, one per evaluation so far."""
    run: RunLike | None = None
    logger: MlflowLogger | None = None
    tracker: Tracker | None = None
    description: str = ""

    def __post_init__(self) -> None:
        self.transform, self.note = normalizer(self.cfg.env.id)

    @classmethod
    def of(cls, cfg: TrainConfig, env_id: str, seed: int, name: str, **tags: Any) -> RunSlot:
        """A slot for `cfg` on `env_id` with `seed`."""
        run_cfg = replace(cfg, seed=seed, env=replace(cfg.env, id=env_id))
        return cls(run_cfg, name, {"seed": seed, "env.id": env_id, **tags})

    def start(
        self,
        factory: RunFactory,
        tracker: Tracker,
        experiment_id: str,
        *,
        role: str,
        parent_run_id: str,
        description: str,
    ) -> None:
        """Open the MLflow run, build the training run, log the settings it uses."""
        self.description = description
        run_id = tracker.start_run(
            experiment_id,
            name=self.name,
            role=role,  # type: ignore[arg-type]
            parent_run_id=parent_run_id,
            tags={**self.tags, "objective.normalization": self.note},
            description=f"{description} Running.",
        )
        self.tracker, self.logger = tracker, MlflowLogger(tracker, run_id)
        self.run = factory(self.cfg, self.logger)
        self.logger.log_params(used_params(self.run.params()))

    def advance(self, step: int) -> float:
        """Train until `step`, evaluate, and return the evaluation on the objective scale.

        Trains in chunks of `recovery.CHUNK` steps and raises `recovery.Interrupted` between
        two when a stop was requested (the run is then at a clean step: it can be saved). A
        step this slot evaluated before a resume returns the recorded score. A full disk met
        while training raises `faults.DiskFull`.
        """
        from hetero_lr.agent import DivergenceError
        from hetero_lr.study.recovery import CHUNK, check_stop

        assert self.run is not None, "RunSlot.advance before start"
        if step in self.steps:
            return self.scores[self.steps.index(step)]
        try:
            while self.run.step < step:
                check_stop()
                try:
                    self.run.run_until(min(step, self.run.step + CHUNK))
                except DivergenceError as err:  # say which of a trial's runs it was
                    msg = f"{self.cfg.env.id} seed {self.cfg.seed}: {err}"
                    raise DivergenceError(msg) from None
            score = self.transform(self.run.evaluate())
        except OSError as err:  # e.g. an evaluation video on a full disk: a fault, not a crash
            if is_disk_full(err):
                raise DiskFull(full_folder(err), "a write during training failed") from err
            raise
        self.steps.append(step)
        self.scores.append(score)
        return score

    def state_dict(self) -> dict[str, Any] | None:
        """The run's state and this slot's scores, None if the run cannot be saved."""
        if self.run is None or not hasattr(self.run, "state_dict"):
            return None
        return {"run": self.run.state_dict(), "steps": self.steps, "scores": self.scores}

    def load_state_dict(self, state: dict[str, Any]) -> int:
        """Continue from `state_dict()`; returns the agent step the run resumed at.

        The restored evaluations are logged again to this slot's MLflow run, so its curve is
        whole; the training metrics before that step stay in the run that wrote the checkpoint.
        """
        assert self.run is not None and self.logger is not None, "RunSlot.load before start"
        self.run.load_state_dict(state["run"])  # type: ignore[attr-defined]
        self.steps, self.scores = list(state["steps"]), list(state["scores"])
        evaluations = state["run"].get("evaluations", {"steps": [], "returns": []})
        for at, value in zip(evaluations["steps"], evaluations["returns"], strict=True):
            self.logger.log_metrics({"eval/return_mean": value}, at)
        return self.run.step

    def final_score(self, last: int) -> float:
        """The run's score: the mean of its last `last` evaluations on the objective scale."""
        return float(np.mean(self.scores[-last:]))

    def finish(self, last: int) -> float:
        """Record the run's score, end its MLflow run FINISHED, free it; returns the score."""
        score = self.final_score(last)
        assert self.logger is not None
        self.logger.log_metrics({"objective": score}, self.steps[-1])  # exact: analysis reads it
        self.end("FINISHED", f"score {score:.4g} (mean of the last {last} evaluations)")
        number, rest = self.name.split(" ", 1)  # the outcome where the narrow column shows it
        self.tracker.rename(self.logger.run_id, f"{number} [{score:.3g}] {rest}")
        return score

    def end(self, status: RunStatus, reason: str | None = None) -> None:
        """End the MLflow run (if open and not ended) and free the training run."""
        if self.logger is not None and not self.logger.ended:
            self.tracker.describe(self.logger.run_id, f"{self.description} {status}: {reason}")
            self.logger.end(status, None if status == "FINISHED" else reason)
        if self.run is not None:
            self.run.close()
            self.run = None
