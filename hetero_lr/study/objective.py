"""One trial: sample its settings, train its runs, report to the pruner, log its MLflow runs."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from mlflow.entities import Metric

from hetero_lr.config import TrainConfig, flatten
from hetero_lr.scores import normalizer
from hetero_lr.study._console import now_ms, say, worker_prefix
from hetero_lr.study.settings import StudySettings
from hetero_lr.study.spec import Arm, suggest
from hetero_lr.tracking import MlflowLogger, Tracker

TrainFn = Callable[..., Any]
"""`hetero_lr.train.train`'s signature: `(cfg, *, logger, on_eval, out, resume, progress)`."""

# Optuna trial state -> MLflow run status.
_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


class _Reporter:
    """`on_eval` callback: reports evaluations to Optuna and stops the run once pruned."""

    def __init__(
        self,
        trial: optuna.Trial,
        transform: Callable[[float], float],
        *,
        tracker: Tracker,
        run_id: str,
        index: int,
        per_eval: bool,
    ) -> None:
        self.trial, self.transform = trial, transform
        self.tracker, self.run_id = tracker, run_id
        self.index, self.per_eval = index, per_eval
        self.pruned_at: int | None = None

    def __call__(self, step: int, mean_return: float) -> bool:
        if not self.per_eval:
            return True
        score = self.transform(mean_return)
        self.trial.report(score, self.index)
        metric = Metric("objective/intermediate", score, int(time.time() * 1000), self.index)
        self.tracker.log_metrics(self.run_id, [metric])
        self.index += 1
        if self.trial.should_prune():
            self.pruned_at = step
            return False
        return True


class Objective:
    """One trial: sample settings, train every (environment, seed) run, return the mean score.

    MLflow: a child run of the study run per trial, a nested run per training run. A pruned
    trial ends its runs KILLED, a diverged or crashed one FAILED, each with the reason.
    """

    def __init__(
        self,
        settings: StudySettings,
        *,
        tracker: Tracker,
        experiment_id: str,
        study_run_id: str,
        train_fn: TrainFn,
        worker: int = 0,
    ) -> None:
        from hetero_lr.train import DivergenceError

        self.s = settings
        self.tracker = tracker
        self.experiment_id = experiment_id
        self.study_run_id = study_run_id
        self.train_fn = train_fn
        self.worker = worker
        self.divergence = DivergenceError

    def __call__(self, trial: optuna.Trial) -> float:
        spec = self.s.spec
        arm, cfg = suggest(trial, spec)
        runs = [(env_id, seed) for env_id in spec.env_ids for seed in self.s.run_seeds]
        trial.set_user_attr("run_seeds", list(self.s.run_seeds))
        trial.set_user_attr("envs", list(spec.env_ids))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        shown = "".join(f" {k}={_fmt(v)}" for k, v in trial.params.items() if k != "pair")
        say(
            f"trial {trial.number} started: {arm.label}{shown} ({len(runs)} runs)",
            worker_prefix(self.worker, self.s.workers),
        )
        run_id = self.tracker.start_run(
            self.experiment_id,
            name=f"{arm.label}__t{trial.number:04d}",
            role="trial",
            parent_run_id=self.study_run_id,
            tags={
                "optuna.study_name": self.s.study_name,
                "optuna.trial_number": trial.number,
                "optuna.trial_state": "RUNNING",
                "pairing": arm.label,
                "rule": arm.rule,
            },
        )
        trial.set_user_attr("mlflow_run_id", run_id)
        self.tracker.log_params(run_id, self._trial_params(trial, arm, cfg))
        try:
            value = self._run_all(trial, arm, cfg, run_id, runs)
        except optuna.TrialPruned as err:
            self._end(trial, run_id, "PRUNED", str(err))
            raise
        except self.divergence as err:
            self._end(trial, run_id, "FAIL", f"{type(err).__name__}: {err}")
            raise
        except BaseException as err:  # ends the MLflow run, then lets Optuna see it
            interrupted = isinstance(err, KeyboardInterrupt)
            reason = f"{'interrupted' if interrupted else 'crashed'}: {type(err).__name__}: {err}"
            self._end(trial, run_id, "FAIL", reason, status="KILLED" if interrupted else None)
            raise
        if not math.isfinite(value):
            self._end(trial, run_id, "FAIL", f"objective is not finite ({value})")
        else:
            self.tracker.log_metrics(run_id, [Metric("objective", value, now_ms(), 0)])
            self._end(trial, run_id, "COMPLETE", None)
        return value

    def _trial_params(self, trial: optuna.Trial, arm: Arm, cfg: TrainConfig) -> dict[str, Any]:
        params = flatten(cfg)
        params.pop("seed")
        if len(self.s.spec.env_ids) > 1:
            params["env.id"] = ",".join(self.s.spec.env_ids)
        online, target = cfg.pair.split(":")
        return {
            **trial.params,
            **params,
            "pairing": arm.label,
            "online_family": online,
            "target_family": target,
            "run_seeds": json.dumps(list(self.s.run_seeds)),
        }

    def _run_all(
        self,
        trial: optuna.Trial,
        arm: Arm,
        cfg: TrainConfig,
        run_id: str,
        runs: list[tuple[str, int]],
    ) -> float:
        spec = self.s.spec
        per_eval = spec.pruner != "wilcoxon"  # Wilcoxon compares whole runs, not evaluations
        scores: list[float] = []
        curves: list[tuple[list[int], list[float]]] = []
        notes: set[str] = set()
        index = 0  # evaluations reported so far: the pruner's step
        for k, (env_id, seed) in enumerate(runs):
            transform, note = normalizer(env_id)
            notes.add(note)
            logger = self._seed_run(trial, arm, run_id, env_id, seed, note)
            reporter = _Reporter(
                trial,
                transform,
                tracker=self.tracker,
                run_id=run_id,
                index=index,
                per_eval=per_eval,
            )
            run_cfg = replace(cfg, seed=seed, env=replace(cfg.env, id=env_id))
            result = self._train(run_cfg, logger, reporter, trial.number)
            index = reporter.index
            score = float(np.mean([transform(r) for r in result.eval_returns[-spec.last_evals :]]))
            logger.log_metrics({"objective/run_score": score}, step=result.steps)
            if k == 0:  # parameter counts are known once a run has built the networks
                self.tracker.log_params(run_id, _param_counts(result))
            if reporter.pruned_at is not None:
                reason = (
                    f"pruned by {spec.pruner} at evaluation {reporter.index} "
                    f"(agent step {reporter.pruned_at} of run {k + 1}/{len(runs)})"
                )
                logger.end("KILLED", reason)
                raise optuna.TrialPruned(reason)
            logger.end("FINISHED")
            scores.append(score)
            curves.append((list(result.eval_steps), [transform(r) for r in result.eval_returns]))
            self.tracker.log_metrics(run_id, [Metric("objective/run_score", score, now_ms(), k)])
            if not per_eval:
                trial.report(score, k)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned by wilcoxon after run {k + 1}/{len(runs)}")
        self._log_curve(run_id, curves)
        trial.set_user_attr("run_scores", scores)
        trial.set_user_attr("normalization", sorted(notes))
        self.tracker.set_tags(run_id, {"objective.normalization": "; ".join(sorted(notes))})
        return float(np.mean(scores))

    def _seed_run(
        self, trial: optuna.Trial, arm: Arm, run_id: str, env_id: str, seed: int, note: str
    ) -> MlflowLogger:
        """Start the nested MLflow run of one training run; returns its logger."""
        game = f"__{env_id.split('/')[-1]}" if len(self.s.spec.env_ids) > 1 else ""
        seed_run = self.tracker.start_run(
            self.experiment_id,
            name=f"{arm.label}__t{trial.number:04d}{game}__s{seed}",
            role="seed",
            parent_run_id=run_id,
            tags={
                "optuna.trial_number": trial.number,
                "seed": seed,
                "env.id": env_id,
                "pairing": arm.label,
                "objective.normalization": note,
            },
        )
        return MlflowLogger(self.tracker, seed_run)

    def _train(
        self, cfg: TrainConfig, logger: MlflowLogger, reporter: _Reporter, number: int
    ) -> Any:
        """One training run; a failure ends its MLflow run FAILED (KILLED on Ctrl-C).

        With checkpoints on, the run writes them under RESULTS/checkpoints/STUDY/tNNNN/ so a
        killed run can be resumed by `train(..., resume=True)`; they are removed once the run
        has ended either way.
        """
        out = None
        if cfg.checkpoint_every:
            name = f"{cfg.env.id.replace('/', '_')}_s{cfg.seed}"
            out = Path(self.s.results, "checkpoints", self.s.study_name, f"t{number:04d}", name)
        try:
            return self.train_fn(
                cfg, logger=logger, on_eval=reporter, out=out, progress=self.s.progress
            )
        except BaseException as err:
            status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
            logger.end(status, f"{type(err).__name__}: {err}")
            raise
        finally:
            if out is not None:
                shutil.rmtree(out, ignore_errors=True)

    def _log_curve(self, run_id: str, curves: list[tuple[list[int], list[float]]]) -> None:
        """The trial's learning curve: the objective's score per evaluation, mean over runs."""
        steps = curves[0][0]
        aligned = [c[1] for c in curves if c[0] == steps]
        mean = np.mean(aligned, axis=0)
        now = now_ms()
        self.tracker.log_metrics(
            run_id,
            [
                Metric("eval/score_mean", float(v), now, int(s))
                for s, v in zip(steps, mean, strict=True)
            ],
        )

    def _end(
        self,
        trial: optuna.Trial,
        run_id: str,
        state: str,
        reason: str | None,
        *,
        status: str | None = None,
    ) -> None:
        """Record how the trial ends: its reason in Optuna, state and status in MLflow."""
        if reason:
            trial.set_user_attr("end_reason", reason)
        self.tracker.set_tags(run_id, {"optuna.trial_state": state})
        self.tracker.end_run(run_id, status or _STATUS[state], reason)  # type: ignore[arg-type]


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _param_counts(result: Any) -> dict[str, int]:
    return {"online_params": result.online_params, "target_params": result.target_params}
