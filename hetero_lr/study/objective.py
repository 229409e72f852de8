"""One trial: sample its settings, train its runs side by side, report to the pruner, log.

Pruning is fair across seeds: the runs of a trial (seeds x environments) advance in lockstep,
evaluation period by evaluation period, and the value reported at pruning step i is the mean
of their i-th evaluation scores. (Run one after another, a trial's first finished seed would
shield it: Optuna compares the trial's values at a step with other trials' values at that
step.) Lockstep holds every run's replay memory at once; the pre-flight check sizes it. With
the Wilcoxon pruner, which compares trials run by run (paired by `run_seeds`), the runs go one
after another and each finished run's score is reported as one step.
"""

from __future__ import annotations

import functools
import json
import math
from typing import Any

import numpy as np
import optuna
from mlflow.entities import Metric

from hetero_lr.config import TrainConfig, flatten
from hetero_lr.study._console import now_ms, say, short, worker_prefix
from hetero_lr.study.recovery import (
    Interrupted,
    TrialCheckpoints,
    frozen,
    origin,
    stop_trial,
    worker_id,
)
from hetero_lr.study.runs import RunFactory, RunSlot, eval_steps, used_params
from hetero_lr.study.settings import StudySettings
from hetero_lr.study.spec import Arm, suggest
from hetero_lr.tracking import Tracker, readable

# Optuna trial state -> MLflow run status.
_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


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
        run_factory: RunFactory,
        worker: int = 0,
    ) -> None:
        from hetero_lr.agent import DivergenceError

        self.s = settings
        self.tracker = tracker
        self.experiment_id = experiment_id
        self.study_run_id = study_run_id
        self.run_factory = run_factory
        self.worker = worker
        self.divergence = DivergenceError

    def __call__(self, trial: optuna.Trial) -> float:
        spec = self.s.spec
        arm, cfg = suggest(trial, spec)
        runs = [(env_id, seed) for env_id in spec.env_ids for seed in self.s.run_seeds]
        trial.set_user_attr("run_seeds", list(self.s.run_seeds))
        trial.set_user_attr("envs", list(spec.env_ids))
        trial.set_user_attr("worker", worker_id())
        record = frozen(trial)
        self.inherited = set(record.intermediate_values)  # steps a retried trial reported
        history = record.system_attrs.get("retry_history") or []
        self.resumes = history[-1] if history else None  # the trial this one retries
        self.checkpoints = TrialCheckpoints(self.s.checkpoints, self.s.study_name, origin(record))
        shown = "".join(f" {k}={short(v)}" for k, v in trial.params.items() if k != "pair")
        say(
            f"trial {trial.number} started: {arm.label}{shown} ({len(runs)} runs)",
            worker_prefix(self.worker, self.s.workers),
        )
        envs = ", ".join(spec.env_ids)
        self.title = f"Trial {trial.number} of {self.s.study_name}: {arm.label}{shown}"
        self.description = (
            f"Trial {trial.number} of study `{self.s.study_name}`: {arm.label}{shown}, "
            f"{len(runs)} runs ({len(self.s.run_seeds)} seeds on {envs}), scored by the mean "
            f"over runs of each run's last {spec.last_evals} evaluations."
        )
        if self.resumes is not None:
            self.description += (
                f" Retry of trial {self.resumes}: its runs resume from their checkpoints."
            )
        self.run_name = f"t{trial.number:04d} {arm.label}{shown}"
        run_id = self.tracker.start_run(
            self.experiment_id,
            name=self.run_name,
            role="trial",
            parent_run_id=self.study_run_id,
            tags={
                "optuna.study_name": self.s.study_name,
                "optuna.trial_number": trial.number,
                "optuna.trial_state": "RUNNING",
                "pairing": arm.label,
                "rule": arm.rule,
                **({"resumed_from_trial": self.resumes} if self.resumes is not None else {}),
            },
            description=f"{self.description} Running.",
        )
        trial.set_user_attr("mlflow_run_id", run_id)
        trial.set_user_attr("experiment", self.experiment_id)
        self.tracker.log_params(run_id, self._trial_params(trial, arm, cfg))
        # The whole resolved config as a file: as an Optuna attribute it made optuna-dashboard's
        # trial page thousands of pixels wide (`spec.trial_config` rebuilds it from the params).
        config = flatten(cfg)
        config.pop("seed")  # each run has its own (`run_seeds`)
        self.tracker.log_dict(
            run_id, {**config, "run_seeds": list(self.s.run_seeds)}, "config.json"
        )
        try:
            value = self._run_all(trial, arm, cfg, run_id, runs)
        except optuna.TrialPruned as err:
            self.checkpoints.remove()
            self._end(trial, run_id, "PRUNED", str(err))
            raise
        except self.divergence as err:
            self.checkpoints.remove()
            self._end(trial, run_id, "FAIL", f"{type(err).__name__}: {err}")
            raise
        except KeyboardInterrupt as err:  # a stop signal or a fault: resumable; queue it again
            end = functools.partial(self._end, trial, run_id, "FAIL", status="KILLED")
            stop_trial(trial, err, end, worker_prefix(self.worker, self.s.workers))
            raise
        except BaseException as err:  # ends the MLflow run, then lets Optuna see it
            self.checkpoints.remove()
            self._end(trial, run_id, "FAIL", f"crashed: {type(err).__name__}: {err}")
            raise
        self.checkpoints.remove()
        if not math.isfinite(value):
            self._end(trial, run_id, "FAIL", f"objective is not finite ({value})")
        else:
            # At the runs' last agent step, as a seed run logs its own `objective`.
            metric = Metric("objective", readable(value), now_ms(), cfg.steps)
            self.tracker.log_metrics(run_id, [metric])
            self._end(trial, run_id, "COMPLETE", f"objective {value:.4g}", value=value)
        return value

    def _trial_params(self, trial: optuna.Trial, arm: Arm, cfg: TrainConfig) -> dict[str, Any]:
        params = used_params(flatten(cfg))
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
        game = len(spec.env_ids) > 1
        slots = [
            RunSlot.of(
                cfg,
                env_id,
                seed,
                f"s{k % len(self.s.run_seeds)} seed={seed}"
                + (f" {env_id.split('/')[-1]}" if game else ""),
                **{"optuna.trial_number": trial.number, "pairing": arm.label},
            )
            for k, (env_id, seed) in enumerate(runs)
        ]
        try:
            if spec.pruner == "wilcoxon":
                scores = self._one_by_one(trial, slots, run_id)
            else:
                scores = self._lockstep(trial, slots, run_id)
        except BaseException as err:
            if isinstance(err, Interrupted):  # every run is at a clean step: keep it
                for slot in slots:
                    self.checkpoints.save(slot)
            if isinstance(err, optuna.TrialPruned):  # the curve that got it pruned
                self._log_curve(run_id, slots)
            pruned = isinstance(err, optuna.TrialPruned | KeyboardInterrupt)
            for slot in slots:
                slot.end("KILLED" if pruned else "FAILED", f"{type(err).__name__}: {err}")
            raise
        self._log_curve(run_id, slots)
        trial.set_user_attr("run_scores", scores)
        notes = sorted({slot.note for slot in slots})
        trial.set_user_attr("normalization", notes)
        self.tracker.set_tags(run_id, {"objective.normalization": "; ".join(notes)})
        return float(np.mean(scores))

    def _start(self, slot: RunSlot, run_id: str, first: bool) -> None:
        trial = slot.tags["optuna.trial_number"]
        slot.start(
            self.run_factory,
            self.tracker,
            self.experiment_id,
            role="seed",
            parent_run_id=run_id,
            description=f"Seed {slot.cfg.seed} of trial {trial} ({slot.tags['pairing']}) "
            f"on {slot.cfg.env.id}.",
        )
        if first:  # parameter counts are known once a run has built its networks
            params = slot.run.params()  # type: ignore[union-attr]
            counts = {k: params[k] for k in ("online_params", "target_params") if k in params}
            self.tracker.log_params(run_id, counts)
        resumed = self.checkpoints.resume(slot)
        source = f"trial {self.resumes if self.resumes is not None else trial}"
        line = resumed.line(f"{source}'s")
        if line is None:
            return
        assert slot.logger is not None
        tags = resumed.tags
        if resumed.step is not None:
            tags["resumed_from_trial"] = source.split()[-1]
        self.tracker.set_tags(slot.logger.run_id, tags)
        slot.description += f" {line[0].upper()}{line[1:]}."
        say(f"trial {trial}: {slot.name} {line}", worker_prefix(self.worker, self.s.workers))

    def _lockstep(self, trial: optuna.Trial, slots: list[RunSlot], run_id: str) -> list[float]:
        """Advance every run to each evaluation in turn; report the mean over runs."""
        spec = self.s.spec
        for k, slot in enumerate(slots):
            self._start(slot, run_id, first=k == 0)
        for index, step in enumerate(eval_steps(slots[0].cfg)):
            value = float(np.mean([slot.advance(step) for slot in slots]))
            for slot in slots:
                self.checkpoints.save(slot)
            if step in self.inherited:  # reported by the trial this one resumes
                continue
            # Optuna's step is the agent step, as on every curve (`eval/score_mean` is this
            # value); `storage.make_pruner` sets the warm-up in agent steps to match.
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned(
                    f"pruned by {spec.pruner} at evaluation {index + 1} (agent step {step}): "
                    f"mean score {value:.4g} over {len(slots)} runs"
                )
        return [slot.finish(spec.last_evals) for slot in slots]

    def _one_by_one(self, trial: optuna.Trial, slots: list[RunSlot], run_id: str) -> list[float]:
        """Train the runs one after another; report each finished run's score (Wilcoxon)."""
        scores = []
        for k, slot in enumerate(slots):
            self._start(slot, run_id, first=k == 0)
            for step in eval_steps(slot.cfg):
                slot.advance(step)
                self.checkpoints.save(slot)
            score = slot.finish(self.s.spec.last_evals)
            scores.append(score)
            if k in self.inherited:
                continue
            trial.report(score, k)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned by wilcoxon after run {k + 1}/{len(slots)}")
        return scores

    def _log_curve(self, run_id: str, slots: list[RunSlot]) -> None:
        """The trial's learning curve: the objective's score per evaluation, mean over runs,
        as a metric by agent step and as a figure with each run's curve (`curve.png`).
        A pruned trial's curve ends at the evaluation that got it pruned."""
        from hetero_lr.study.report import CURVES
        from hetero_lr.study.summary import plt, trial_curve

        slots = [slot for slot in slots if slot.scores]  # one by one: the runs that started
        if not slots:
            return
        done = min(len(slot.scores) for slot in slots)
        steps = slots[0].steps[:done]
        runs = {slot.name: (steps, slot.scores[:done]) for slot in slots}
        mean = np.mean([scores for _, scores in runs.values()], axis=0)
        now = now_ms()
        metrics = [
            Metric("eval/score_mean", readable(float(v)), now, int(step))
            for step, v in zip(steps, mean, strict=True)
        ]
        self.tracker.log_metrics(run_id, metrics)
        curves = {
            "steps": steps,
            "runs": {k: v[1] for k, v in runs.items()},
            "scale": slots[0].note,
        }
        self.tracker.log_dict(run_id, curves, CURVES)  # the study's report.html draws these
        figure = trial_curve(runs, title=self.title, ylabel=slots[0].note)
        self.tracker.log_figure(run_id, figure, "curve.png")
        plt.close(figure)

    def _end(
        self,
        trial: optuna.Trial,
        run_id: str,
        state: str,
        reason: str | None,
        *,
        status: str | None = None,
        value: float | None = None,
    ) -> None:
        """Record how the trial ends: its reason in Optuna; state, status, description and a
        name showing the outcome (`value` for a complete trial) in MLflow."""
        if reason and state != "COMPLETE":
            trial.set_user_attr("end_reason", reason)
        self.tracker.set_tags(run_id, {"optuna.trial_state": state})
        self.tracker.describe(run_id, f"{self.description} {state}: {reason}")
        # The name column is the one the runs table always shows, and it is narrow: put the
        # outcome right after the trial number.
        number, rest = self.run_name.split(" ", 1)
        outcome = f"{value:.3g}" if value is not None else state.lower()
        self.tracker.rename(run_id, f"{number} [{outcome}] {rest}")
        end_reason = None if state == "COMPLETE" else reason
        self.tracker.end_run(run_id, status or _STATUS[state], end_reason)  # type: ignore[arg-type]
