"""Optuna studies over KR, KL and architecture pairings, every trial in MLflow.

    python -m hetero_lr.study --pair impala:nature --study studies/smoke.yaml

A study searches the Lookahead-Replicate knobs `kr` (Replicate gradient steps on the target per
phase) and `kl` (Lookahead gradient steps on the online net between phases), and whatever else
the study file's `space` names, for one pairing or over several; same-architecture HardCopy
baselines run as enqueued fixed trials. Each trial trains every seed (and environment) in
process with `hetero_lr.train.train` and is scored by the mean of its runs' last evaluations
(human-normalised on Atari). Settings: command-line flag > study file > `DEFAULT_STUDY`.

Storage (default: one results folder): Optuna in a journal file (`JournalFileBackend`; Optuna's
FAQ advises against SQLite for parallel workers) and MLflow in `sqlite:///.../mlflow.db` (the
default backend since MLflow 3.7; the `./mlruns` file store is refused from MLflow 3.13). Running
the same command again resumes the study: it adds `--trials` trials and keeps finished ones.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from mlflow.entities import Metric

from hetero_lr import tracking
from hetero_lr.config import TrainConfig, flatten
from hetero_lr.preflight import check_pairings, estimate_seconds, probe_envs, run_device
from hetero_lr.scores import normalizer
from hetero_lr.search_space import (
    PRUNERS,
    SAMPLERS,
    Arm,
    StudySpec,
    load_study,
    parse_arm,
    parse_baselines,
    suggest,
    with_overrides,
)
from hetero_lr.tracking import MlflowLogger, Tracker


class SettingsMismatch(ValueError):
    """A resumed study was created with other settings."""


TrainFn = Callable[..., Any]
"""`hetero_lr.train.train`'s signature: `(cfg, *, logger, on_eval, out, resume, progress)`."""

# Optuna trial state -> MLflow run status.
_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


@dataclass(frozen=True)
class StudySettings:
    """Everything a worker process needs to run trials (picklable)."""

    spec: StudySpec
    study_name: str
    storage: str
    """An Optuna storage URL, or the path of a journal file."""
    tracking_uri: str
    artifact_root: str | None
    results: str
    workers: int
    run_seeds: tuple[int, ...]
    """Seeds of each trial's runs, derived from the study seed (the same for every trial)."""
    progress: bool
    command: str = ""

    @property
    def fingerprint(self) -> dict[str, Any]:
        """The settings that make two invocations the same study (what resuming checks)."""
        cfg = flatten(self.spec.base)
        for key in ("device", "threads", "seed", "pair", "target.rule"):
            cfg.pop(key)  # how and where it runs, or set per trial
        data = self.spec.to_dict()
        for key in (
            "name",
            "description",
            "preset",
            "trials",
            "sampler",
            "pruner",
            "pruning",
            "baselines",
            "config",
        ):
            data.pop(key)
        return {**data, "config": cfg, "run_seeds": list(self.run_seeds)}


# ---------------------------------------------------------------------------------------------
# Command line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2 (argparse's own code)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The `hetero-lr-study` argument parser."""
    p = _Parser(
        prog="hetero-lr-study",
        description="Optuna study over Lookahead-Replicate KR/KL and network pairings, logged "
        "to MLflow. Precedence: flag > study file > built-in default study.",
    )
    p.add_argument("--study", metavar="FILE", help="study YAML (default: the built-in study)")
    p.add_argument("--pair", metavar="ONLINE:TARGET", help="fixed pairing, e.g. impala:nature")
    p.add_argument("--pairs", metavar="A:B,C:D", help="pairings to search over")
    p.add_argument(
        "--baselines",
        metavar="auto|none|F,..",
        help="HardCopy baselines: auto (each family), none, or families/arms",
    )
    p.add_argument("--env", metavar="ID", help="environment id, e.g. ALE/Pong-v5")
    p.add_argument("--steps", type=int, metavar="N", help="agent steps per run")
    p.add_argument("--trials", type=int, metavar="N", help="trials this invocation adds")
    p.add_argument("--seeds", type=int, metavar="N", help="seeds (runs) per trial")
    p.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage URL or journal file path (default: RESULTS/optuna.journal)",
    )
    p.add_argument("--study-name", metavar="NAME", help="default: PAIR__STUDY or STUDY")
    p.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="MLflow tracking URI (default: sqlite:///RESULTS/mlflow.db)",
    )
    p.add_argument("--sampler", metavar="|".join(SAMPLERS), help="default: the study's")
    p.add_argument("--pruner", metavar="|".join(PRUNERS), help="default: the study's")
    p.add_argument("--device", metavar="DEV", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="local worker processes sharing the study (default 1)",
    )
    p.add_argument(
        "--results",
        default="results",
        metavar="DIR",
        help="folder for the default storage, tracking and checkpoints",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved study and the time estimate, write nothing",
    )
    return p


def resolve(args: argparse.Namespace, argv: Sequence[str] = ()) -> StudySettings:
    """Study file + flags -> settings; checks everything that needs no environment.

    Raises:
        ValueError: bad input, as a one-line message naming the value and what is accepted.
    """
    spec = load_study(args.study)
    for flag in ("steps", "trials", "seeds", "workers"):
        value = getattr(args, flag)
        if value is not None and value < (0 if flag == "trials" else 1):
            raise ValueError(f"--{flag} must be >= {0 if flag == 'trials' else 1}, got {value}")
    if args.pair and args.pairs:
        raise ValueError("give --pair or --pairs, not both")
    pairings = None
    if args.pair or args.pairs:
        texts = [args.pair] if args.pair else [t for t in args.pairs.split(",") if t]
        pairings = tuple(parse_arm(t) for t in texts)
        for arm in pairings:
            if arm.rule != "replicate":
                raise ValueError(f"pairing {arm.label!r}: pass baselines with --baselines")
    baselines = parse_baselines(args.baselines) if args.baselines is not None else None
    config = dict(spec.config)
    if args.steps is not None:
        config["steps"] = args.steps
    if args.device is not None:
        config["device"] = args.device
    spec = with_overrides(
        spec,
        pairings=pairings,
        baselines=baselines,
        envs=(args.env,) if args.env else None,
        config=config,
        trials=args.trials,
        seeds=args.seeds,
        sampler=args.sampler,
        pruner=args.pruner,
    )
    results = Path(args.results).resolve()
    storage = args.storage or str(results / "optuna.journal")
    tracking_uri = args.tracking_uri or f"sqlite:///{results / 'mlflow.db'}"
    _check_tracking_uri(tracking_uri)
    db = tracking.sqlite_path(tracking_uri)
    name = args.study_name or (
        f"{spec.pairings[0].pair}__{spec.name}" if len(spec.pairings) == 1 else spec.name
    )
    return StudySettings(
        spec=spec,
        study_name=name,
        storage=storage,
        tracking_uri=tracking_uri,
        artifact_root=str(db.parent / "mlartifacts") if db else None,
        results=str(results),
        workers=args.workers,
        run_seeds=run_seeds(spec.seed, spec.seeds),
        progress=args.workers == 1 and sys.stderr.isatty(),
        command=" ".join(["hetero-lr-study", *argv]),
    )


def run_seeds(study_seed: int, n: int) -> tuple[int, ...]:
    """The `n` run seeds of every trial, derived from the study seed.

    Every trial uses the same seeds (common random numbers): differences between trials are
    then not differences between seeds, and per-seed results pair up across trials, which is
    what `WilcoxonPruner` assumes. `SeedSequence.generate_state` is prefix-stable, so raising
    `--seeds` keeps the earlier seeds.
    """
    state = np.random.SeedSequence(study_seed).generate_state(n, dtype=np.uint32) >> 1
    return tuple(int(s) for s in state)


def _check_tracking_uri(uri: str) -> None:
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme in ("", "file"):
        # MLflow >= 3.13 refuses the file store unless MLFLOW_ALLOW_FILE_STORE=true
        # (mlflow/mlflow#23634); a database or a server keeps studies working on every 3.x.
        raise ValueError(
            f"tracking URI {uri!r} is a file store; use sqlite:///PATH/mlflow.db, "
            "postgresql://..., or http(s)://HOST:PORT of an mlflow server"
        )


# ---------------------------------------------------------------------------------------------
# Storage, sampler, pruner


def open_storage(storage: str) -> optuna.storages.BaseStorage | str:
    """A journal-file storage for a path, or the URL itself (RDB, e.g. PostgreSQL)."""
    if "://" in storage:
        return storage
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    Path(storage).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(storage))


def make_sampler(spec: StudySpec, *, worker: int, n_existing: int) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded from the study seed, the worker and the study's history.

    Workers get distinct seeds (equal seeds would make parallel workers sample the same
    points), and so does each resumed invocation (`n_existing` trials already in the study;
    the same seed would replay the first invocation's samples). Reproducible only with one
    worker (Optuna FAQ; issues #4412, #3056).
    """
    seed = int(np.random.SeedSequence([spec.seed, worker, n_existing]).generate_state(1)[0])
    if spec.sampler == "grid":
        return optuna.samplers.GridSampler(spec.grid(), seed=seed)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # `group=True`: baseline trials sample nothing, and pairings may get conditional
    # dimensions; grouped multivariate TPE models each set of co-occurring parameters.
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The study's pruner, with guards for noisy RL curves (no pruning before `min_evals`).

    `median` and `hyperband` see one report per evaluation (the run's score at that point);
    `wilcoxon` sees one report per finished run (its final score) and compares trials run by
    run, which `run_seeds` makes paired.
    """
    g = spec.pruning
    if spec.pruner == "median":
        median = optuna.pruners.MedianPruner(
            n_startup_trials=g.startup_trials,
            n_warmup_steps=g.min_evals - 1,  # steps are 0-based evaluation indices
            n_min_trials=g.min_trials,
        )
        return optuna.pruners.PatientPruner(median, patience=g.patience) if g.patience else median
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=g.min_evals, reduction_factor=g.reduction_factor
        )
    if spec.pruner == "wilcoxon":
        return optuna.pruners.WilcoxonPruner(p_threshold=g.p_threshold, n_startup_steps=g.min_evals)
    return optuna.pruners.NopPruner()


# ---------------------------------------------------------------------------------------------
# The objective


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
        _say(
            f"trial {trial.number} started: {arm.label}{shown} ({len(runs)} runs)",
            _prefix(self.worker, self.s.workers),
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
            self.tracker.log_metrics(run_id, [Metric("objective", value, _now(), 0)])
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
            self.tracker.log_metrics(run_id, [Metric("objective/run_score", score, _now(), k)])
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
        now = _now()
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


# ---------------------------------------------------------------------------------------------
# Running a study


def run_study(settings: StudySettings, *, train_fn: TrainFn | None = None) -> int:
    """Create or resume the study, run its trials in `settings.workers` processes, report.

    Returns:
        0 when every worker finished, 1 when a worker crashed, 130 on Ctrl-C.
    """
    train_fn = train_fn or _default_train()
    spec = settings.spec
    storage = open_storage(settings.storage)
    # Load first: `create_study(load_if_exists=True)` appends to the journal even when the
    # study exists, and a resumed study whose settings differ must leave it untouched.
    if settings.study_name in optuna.get_all_study_names(storage):
        study = optuna.load_study(
            study_name=settings.study_name, storage=storage, pruner=make_pruner(spec)
        )
    else:
        study = optuna.create_study(
            storage=storage,
            study_name=settings.study_name,
            direction="maximize",
            pruner=make_pruner(spec),
        )
    study.sampler = make_sampler(spec, worker=0, n_existing=len(study.trials))
    _check_fingerprint(study, settings)  # before anything else is written
    tracker = Tracker(settings.tracking_uri, artifact_root=settings.artifact_root)
    tracker.prepare()
    experiment_id = tracker.experiment(settings.study_name)
    study_run_id = tracker.study_run(experiment_id, settings.study_name)
    _record_provenance(study, tracker, study_run_id, settings)
    added = _enqueue_baselines(study, spec)
    n_trials = _trial_budget(study, spec) + added
    shares = [
        n_trials // settings.workers + (i < n_trials % settings.workers)
        for i in range(settings.workers)
    ]
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(
            target=_worker,
            args=(settings, i, shares[i], train_fn, experiment_id, study_run_id),
            name=f"hetero-lr-worker-{i}",
        )
        for i in range(1, settings.workers)
    ]
    for proc in procs:
        proc.start()
    status, reason, code = "FINISHED", None, 0
    try:
        _optimize(study, settings, 0, shares[0], train_fn, tracker, experiment_id, study_run_id)
    except KeyboardInterrupt:
        status, reason, code = "KILLED", "interrupted (Ctrl-C)", 130
    except Exception as err:  # an error no trial could absorb: end the study run, then raise
        tracker.end_run(study_run_id, "FAILED", f"{type(err).__name__}: {err}")
        raise
    finally:
        for proc in procs:
            proc.join()
    crashed = [p.name for p in procs if p.exitcode not in (0, None)]
    if crashed and code == 0:
        status, reason, code = "FAILED", f"worker(s) {', '.join(crashed)} exited abnormally", 1
    _finish(study, tracker, study_run_id, status, reason)
    return code


def _default_train() -> TrainFn:
    from hetero_lr.train import train

    return train


def _worker(
    settings: StudySettings,
    worker: int,
    n_trials: int,
    train_fn: TrainFn,
    experiment_id: str,
    study_run_id: str,
) -> None:
    """Entry point of a spawned worker process."""
    tracker = Tracker(settings.tracking_uri, artifact_root=settings.artifact_root)
    study = optuna.load_study(
        study_name=settings.study_name,
        storage=open_storage(settings.storage),
        pruner=make_pruner(settings.spec),
    )
    study.sampler = make_sampler(settings.spec, worker=worker, n_existing=len(study.trials))
    _optimize(study, settings, worker, n_trials, train_fn, tracker, experiment_id, study_run_id)


def _optimize(
    study: optuna.Study,
    settings: StudySettings,
    worker: int,
    n_trials: int,
    train_fn: TrainFn,
    tracker: Tracker,
    experiment_id: str,
    study_run_id: str,
) -> None:
    import torch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if settings.spec.base.threads == 0 and settings.workers > 1:
        # Share the cores: N processes with all-core intra-op pools would oversubscribe them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // settings.workers))
    objective = Objective(
        settings,
        tracker=tracker,
        experiment_id=experiment_id,
        study_run_id=study_run_id,
        train_fn=train_fn,
        worker=worker,
    )
    if n_trials:
        study.optimize(
            objective,
            n_trials=n_trials,
            catch=(objective.divergence,),
            callbacks=[_Progress(n_trials, prefix=_prefix(worker, settings.workers))],
        )


class _Progress:
    """Prints a line per finished trial: its state, the study's counts, the best so far."""

    def __init__(self, n_trials: int, *, prefix: str) -> None:
        self.n_trials, self.prefix = n_trials, prefix
        self.start, self.done = time.monotonic(), 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.done += 1
        counts = {s.name: 0 for s in optuna.trial.TrialState}
        for t in study.get_trials(deepcopy=False):
            counts[t.state.name] += 1
        try:
            best = f"best {study.best_value:.4g} (trial {study.best_trial.number})"
        except ValueError:
            best = "best -"
        value = f" {trial.value:.4g}" if trial.value is not None else ""
        elapsed = time.monotonic() - self.start
        left = elapsed / self.done * (self.n_trials - self.done)
        _say(
            f"trial {trial.number} {trial.state.name}{value} | complete {counts['COMPLETE']}, "
            f"pruned {counts['PRUNED']}, failed {counts['FAIL']}, running {counts['RUNNING']} "
            f"| {best} | {self.done}/{self.n_trials} here, ~{_duration(left)} left",
            self.prefix,
        )


def _check_fingerprint(study: optuna.Study, settings: StudySettings) -> None:
    fingerprint = settings.fingerprint
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    stored = study.user_attrs.get("settings")
    if stored is None:
        study.set_user_attr("settings", fingerprint)
        study.set_user_attr("settings_hash", digest)
        return
    if stored != json.loads(json.dumps(fingerprint)):
        old, new = _flat(stored), _flat(json.loads(json.dumps(fingerprint)))
        diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        raise SettingsMismatch(
            f"study {settings.study_name!r} exists with other settings (differs in "
            f"{', '.join(diff[:5])}); resume with the same ones or pick another --study-name"
        )


def _record_provenance(
    study: optuna.Study, tracker: Tracker, run_id: str, settings: StudySettings
) -> None:
    from hetero_lr import __version__

    sha = _git_sha()
    study.set_user_attr("run_seeds", list(settings.run_seeds))
    study.set_user_attr("command", settings.command)
    study.set_user_attr("git_sha", sha)
    study.set_user_attr("mlflow_study_run_id", run_id)
    tracker.log_params(run_id, _flat(settings.fingerprint))
    tracker.set_tags(
        run_id,
        {
            "optuna.study_name": settings.study_name,
            "optuna.storage": settings.storage,
            "command": settings.command,
            "git_sha": sha,
            "hetero_lr.version": __version__,
            "sampler": settings.spec.sampler,
            "pruner": settings.spec.pruner,
        },
    )
    tracker.log_dict(run_id, settings.spec.to_dict(), "study.yaml")


def _git_sha() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def _enqueue_baselines(study: optuna.Study, spec: StudySpec) -> int:
    """Enqueue each baseline arm not yet run (or running); returns how many were added."""
    live = {
        t.user_attrs.get("baseline")
        for t in study.get_trials(deepcopy=False)
        if t.state != optuna.trial.TrialState.FAIL
    }
    added = 0
    for arm in spec.baseline_arms:
        if arm.label not in live:
            study.enqueue_trial({}, user_attrs={"baseline": arm.label})
            added += 1
    return added


def _trial_budget(study: optuna.Study, spec: StudySpec) -> int:
    """`spec.trials`, capped by the grid points not yet taken (grid sampler)."""
    if spec.sampler != "grid":
        return spec.trials
    grid = spec.grid()
    taken = {
        tuple(t.params.get(k) for k in grid)
        for t in study.get_trials(deepcopy=False)
        if t.state != optuna.trial.TrialState.FAIL and all(k in t.params for k in grid)
    }
    return min(spec.trials, math.prod(len(v) for v in grid.values()) - len(taken))


def _finish(
    study: optuna.Study, tracker: Tracker, run_id: str, status: str, reason: str | None
) -> None:
    """Figures, best trial and trial table to the study run; end it."""
    from hetero_lr.study_figures import log_study_figures

    skipped = log_study_figures(study, tracker, run_id)
    tags: dict[str, Any] = {"figures.skipped": "; ".join(skipped) or "none"}
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if complete:
        best = study.best_trial
        tags.update(
            {
                "best.trial": best.number,
                "best.value": best.value,
                "best.pairing": best.user_attrs.get("pairing", ""),
            }
        )
        tags.update({f"best.{k}": v for k, v in best.params.items()})
        tracker.log_dict(
            run_id,
            {
                "number": best.number,
                "value": best.value,
                "params": best.params,
                "pairing": best.user_attrs.get("pairing"),
                "config": best.user_attrs.get("config"),
                "run_scores": best.user_attrs.get("run_scores"),
                "mlflow_run_id": best.user_attrs.get("mlflow_run_id"),
            },
            "best_trial.json",
        )
        tracker.log_metrics(run_id, [Metric("best_value", best.value, _now(), len(complete))])
    tracker.log_text(run_id, study.trials_dataframe().to_csv(index=False), "trials.csv")
    tracker.set_tags(run_id, tags)
    tracker.end_run(run_id, status, reason)  # type: ignore[arg-type]
    counts = {s.name: 0 for s in optuna.trial.TrialState}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] += 1
    summary = ", ".join(f"{n.lower()} {c}" for n, c in counts.items() if c)
    best_text = (
        f"best {tags['best.value']:.4g} (trial {tags['best.trial']}, {tags['best.pairing']})"
        if "best.trial" in tags
        else "no complete trial"
    )
    _say(f"study {study.study_name!r}: {summary}; {best_text}")


# ---------------------------------------------------------------------------------------------
# Banner and main


def banner(settings: StudySettings, estimate: dict[str, Any] | None) -> str:
    """What will run, where it is stored, and how long it should take."""
    spec, base = settings.spec, settings.spec.base
    baselines = ", ".join(a.label for a in spec.baseline_arms) or "none"
    lines = [
        f"study {settings.study_name!r}: {spec.description or spec.name}",
        f"  pairings   {', '.join(a.label for a in spec.pairings)}   baselines {baselines}",
        f"  envs       {', '.join(spec.env_ids)}   {base.steps:,} steps/run, evaluation every "
        f"{base.eval_every:,} ({base.eval_episodes} episodes), objective: mean of the last "
        f"{spec.last_evals}",
        f"  seeds      {spec.seeds} per trial {list(settings.run_seeds)} (study seed {spec.seed})",
        f"  space      {'; '.join(p.describe() for p in spec.space) or '(pairing only)'}",
        f"  trials     {spec.trials} (+ baselines not yet run)   sampler {spec.sampler}   "
        f"pruner {spec.pruner}   workers {settings.workers}",
        f"  storage    {settings.storage}",
        *(
            [
                "  note       Optuna's FAQ advises against SQLite for parallel workers: use a "
                "journal file or PostgreSQL"
            ]
            if settings.storage.startswith("sqlite") and settings.workers > 1
            else []
        ),
        f"  tracking   {settings.tracking_uri}   (browse: mlflow ui --backend-store-uri "
        f"{settings.tracking_uri})",
    ]
    if estimate:
        runs = ", ".join(f"{k} {_duration(v)}" for k, v in estimate["per_run"].items())
        lines.append(
            f"  estimate   ~{_duration(estimate['total'])} on {estimate['device']} "
            f"(rough; per run: {runs})"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, *, train_fn: TrainFn | None = None) -> int:
    """`hetero-lr-study` / `python -m hetero_lr.study`. Returns the exit code.

    Bad input (pair syntax, unknown family, incompatible pairing, kr/kl < 1, unreadable study
    file or unknown key, unknown sampler or pruner) prints one line and returns 2 before
    anything is written.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress lines replace its log
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = resolve(args, argv)
        run_device(settings.spec.base.device)  # e.g. cuda requested where there is none
        envs = probe_envs(settings.spec)
        check_pairings(settings.spec, envs)
    except ValueError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    estimate = estimate_seconds(settings.spec, envs, workers=settings.workers)
    print(banner(settings, estimate), flush=True)
    if args.dry_run:
        import yaml

        print(
            yaml.safe_dump(
                {
                    "study": settings.spec.to_dict(),
                    "study_name": settings.study_name,
                    "storage": settings.storage,
                    "tracking_uri": settings.tracking_uri,
                    "run_seeds": list(settings.run_seeds),
                },
                sort_keys=False,
            )
        )
        return 0
    try:
        return run_study(settings, train_fn=train_fn)
    except SettingsMismatch as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2


def _say(text: str, prefix: str = "") -> None:
    print(f"{time.strftime('%H:%M:%S')} {prefix}{text}", flush=True)


def _prefix(worker: int, workers: int) -> str:
    return f"[w{worker}] " if workers > 1 else ""


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list) else value
    return out


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}min"
    return f"{seconds / 3600:.1f}h"


def _param_counts(result: Any) -> dict[str, int]:
    return {"online_params": result.online_params, "target_params": result.target_params}


def _now() -> int:
    return int(time.time() * 1000)


if __name__ == "__main__":
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    raise SystemExit(main())
