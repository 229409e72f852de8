"""Running a study: create or resume it, spawn workers, print progress, record provenance."""

from __future__ import annotations

import itertools
import multiprocessing
import time
import warnings
from collections.abc import Callable

import optuna
from optuna.trial import TrialState

from hetero_lr.faults import EXIT_CODE, halted
from hetero_lr.study._console import duration, quiet_libraries, say, worker_prefix
from hetero_lr.study.objective import Objective
from hetero_lr.study.recovery import (
    StaleTrial,
    end_orphan_runs,
    exit_kind,
    exit_stopped,
    recover_dead_trials,
    request_stop,
    stop_requested,
    stop_signals,
    stop_trial,
)
from hetero_lr.study.runs import RunFactory, share_cores, training_run
from hetero_lr.study.settings import StudySettings, check_fingerprint, flat_params
from hetero_lr.study.spec import StudySpec
from hetero_lr.study.storage import make_pruner, make_sampler, open_storage
from hetero_lr.tracking import Tracker, git_commit, trials_link


def run_study(settings: StudySettings, *, run_factory: RunFactory | None = None) -> int:
    """Create or resume the study, run its trials in `settings.workers` processes, report.

    Returns:
        0 when every worker finished (a dead worker's trial resumed by the others), 1 when a
        worker crashed, 130 when stopped by SIGINT/SIGTERM, `faults.EXIT_CODE` (75) when
        stopped by a fault (a full disk, a store out of reach): the same command resumes. The
        libraries' logs go to `RESULTS/study.log` (`quiet_libraries`).
    """
    with quiet_libraries(settings.results), stop_signals():
        try:
            code = _run_study(settings, run_factory or training_run)
        except BaseException as err:  # a fault before any trial ran: one line, not a traceback
            fault = halted(err)
            if fault is None:
                raise
            say(f"stopped: {fault}")
            code = EXIT_CODE
    if code in (130, EXIT_CODE):
        say(f"to resume, run the same command again: {settings.command}")
    return code


def _run_study(settings: StudySettings, run_factory: RunFactory) -> int:
    spec = settings.spec
    storage = _open(settings)
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
    check_fingerprint(study, settings)  # before anything else is written
    with warnings.catch_warnings():  # ExperimentalWarning: the dashboard's name for the value
        warnings.simplefilter("ignore")
        study.set_metric_names(["objective"])
    tracker = Tracker(settings.tracking_uri, artifact_root=settings.artifact_root)
    tracker.prepare()
    experiment_id = tracker.experiment(settings.study_name)
    study_run_id = tracker.study_run(experiment_id, settings.study_name)
    _record_provenance(study, tracker, study_run_id, settings)
    tracker.share_trials_view(experiment_id)
    link = trials_link(settings.tracking_uri, experiment_id)
    say(f"trials in mlflow ui: {link}")
    _recover(study, settings)
    end_orphan_runs(study, tracker, experiment_id)  # after `_recover`: dead trials' runs FAILED
    waiting = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))
    added = _enqueue_baselines(study, spec)
    fresh = _enqueue_grid(study, spec) if spec.sampler == "grid" else spec.trials
    n_trials = waiting + added + fresh
    shares = [
        n_trials // settings.workers + (i < n_trials % settings.workers)
        for i in range(settings.workers)
    ]
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(
            target=_worker,
            args=(settings, i, shares[i], run_factory, experiment_id, study_run_id),
            name=f"hetero-lr-worker-{i}",
        )
        for i in range(1, settings.workers)
    ]
    for proc in procs:
        proc.start()
    status, reason, code = "FINISHED", None, 0
    try:
        _optimize(study, settings, 0, shares[0], run_factory, tracker, experiment_id, study_run_id)
    except KeyboardInterrupt as err:
        status, reason, code = _stopped(err)
    except Exception as err:  # an error no trial could absorb: end the study run, then raise
        if halted(err) is None:
            tracker.end_run(study_run_id, "FAILED", f"{type(err).__name__}: {err}")
            raise
        status, reason, code = _stopped(err)  # a fault Optuna wrapped while ending a trial
    finally:
        for proc in procs:
            if stop_requested() and proc.is_alive():
                proc.terminate()  # SIGTERM: the worker checkpoints its trial and stops
            proc.join()
    ended = {name: [p.name for p in procs if exit_kind(p.exitcode) == name] for name in
             ("stopped", "fault", "crashed")}  # fmt: skip
    stopped, crashed = ended["stopped"] + ended["fault"], ended["crashed"]
    resumed = _recover(study, settings) if code == 0 and not stopped else []
    if resumed:  # a worker died mid-trial: its trial resumes here, from its checkpoints
        _optimize(study, settings, 0, 0, run_factory, tracker, experiment_id, study_run_id)
        reason = f"{', '.join(crashed)} died; trial(s) {resumed} resumed from checkpoints"
    elif stopped and code == 0:
        code = EXIT_CODE if ended["fault"] else 130
        status, reason = "KILLED", f"worker(s) {', '.join(stopped)} stopped"
    elif crashed and code == 0:
        status, reason, code = "FAILED", f"worker(s) {', '.join(crashed)} exited abnormally", 1
    if code == 0 and spec.confirm:
        status, reason, code = _confirm(study, settings, tracker, experiment_id, study_run_id,
                                        run_factory)  # fmt: skip
    code = _finish(study, tracker, study_run_id, status, reason, code)
    say(f"trials in mlflow ui: {link}")
    return code


def _stopped(err: BaseException) -> tuple[str, str, int]:
    """Study run status, reason and exit code for a stop (`err`: a signal or a fault); a fault
    is said in one line, and the other workers are asked to stop."""
    fault = halted(err)
    if fault is None:
        return "KILLED", f"{err or 'interrupted (Ctrl-C)'}", 130
    say(f"stopped: {fault}")
    request_stop(fault.short)
    return "KILLED", str(fault), EXIT_CODE


def _confirm(
    study: optuna.Study,
    settings: StudySettings,
    tracker: Tracker,
    experiment_id: str,
    study_run_id: str,
    run_factory: RunFactory,
) -> tuple[str, str | None, int]:
    """Run the confirmation; the study run's status, reason and the exit code."""
    from hetero_lr.study.confirm import WorkersFailed, run_confirmation

    try:
        run_confirmation(
            study,
            settings,
            tracker=tracker,
            experiment_id=experiment_id,
            study_run_id=study_run_id,
            run_factory=run_factory,
        )
    except KeyboardInterrupt as err:  # the next start resumes each run from its checkpoint
        status, reason, code = _stopped(err)
        return status, f"{reason} during confirmation", code
    except WorkersFailed as err:
        return "FAILED", f"confirmation: {err}", 1
    return "FINISHED", None, 0


def _finish(
    study: optuna.Study,
    tracker: Tracker,
    run_id: str,
    status: str,
    reason: str | None,
    code: int,
) -> int:
    """The end-of-study summary; returns the exit code. A fault met here stops it (the next
    start reopens the study run and writes the summary again)."""
    from hetero_lr.study.summary import finish_study  # imports matplotlib: only at the end

    try:
        finish_study(study, tracker, run_id, status, reason)
    except BaseException as err:
        fault = halted(err)
        if fault is None:
            raise
        if code != EXIT_CODE:  # not said yet
            say(f"stopped: {fault}")
        return EXIT_CODE
    return code


def _worker(
    settings: StudySettings,
    worker: int,
    n_trials: int,
    run_factory: RunFactory,
    experiment_id: str,
    study_run_id: str,
) -> None:
    """Entry point of a spawned worker process; exits 130 when stopped by a signal and
    `faults.EXIT_CODE` when stopped by a fault (`recovery.exit_stopped`)."""
    with quiet_libraries(settings.results):
        try:
            tracker = Tracker(settings.tracking_uri, artifact_root=settings.artifact_root)
            study = optuna.load_study(
                study_name=settings.study_name,
                storage=_open(settings),
                pruner=make_pruner(settings.spec),
            )
            study.sampler = make_sampler(settings.spec, worker=worker, n_existing=len(study.trials))
            with stop_signals(watch_parent=True):
                _optimize(
                    study, settings, worker, n_trials, run_factory, tracker, experiment_id,
                    study_run_id,
                )  # fmt: skip
        except BaseException as err:
            exit_stopped(err, worker_prefix(worker, settings.workers))


def _optimize(
    study: optuna.Study,
    settings: StudySettings,
    worker: int,
    n_trials: int,
    run_factory: RunFactory,
    tracker: Tracker,
    experiment_id: str,
    study_run_id: str,
) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    share_cores(settings.spec.base.threads, settings.workers)
    objective = Objective(
        settings,
        tracker=tracker,
        experiment_id=experiment_id,
        study_run_id=study_run_id,
        run_factory=run_factory,
        worker=worker,
    )
    progress = _Progress(n_trials, prefix=worker_prefix(worker, settings.workers))
    run = _resumable(objective, worker_prefix(worker, settings.workers))
    if n_trials:
        study.optimize(run, n_trials=n_trials, catch=(objective.divergence,), callbacks=[progress])
    # Retries queued meanwhile (a dead worker's trial, failed by its heartbeat) run here too.
    while not stop_requested() and any(
        "retry_history" in t.system_attrs
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    ):
        progress.n_trials += 1
        study.optimize(run, n_trials=1, catch=(objective.divergence,), callbacks=[progress])


def _resumable(objective: Objective, prefix: str) -> Callable[[optuna.Trial], float]:
    """`objective`, and a trial that a fault stopped before its runs started (the MLflow
    run could not be created, say) queued again as well: the objective's own stop path
    covers its runs only."""

    def run(trial: optuna.Trial) -> float:
        try:
            return objective(trial)
        except KeyboardInterrupt as err:
            fault = halted(err)
            if fault is not None and not fault.trial_stopped:
                stop_trial(trial, fault, lambda reason: None, prefix)
            raise

    return run


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
        say(
            f"trial {trial.number} {trial.state.name}{value} | complete {counts['COMPLETE']}, "
            f"pruned {counts['PRUNED']}, failed {counts['FAIL']}, running {counts['RUNNING']} "
            f"| {best} | {self.done}/{self.n_trials} here, ~{duration(left)} left",
            self.prefix,
        )


def _record_provenance(
    study: optuna.Study, tracker: Tracker, run_id: str, settings: StudySettings
) -> None:
    from hetero_lr import __version__
    from hetero_lr.study.storage import masked  # URLs are recorded without passwords

    sha = git_commit() or "unknown"
    study.set_user_attr("run_seeds", list(settings.run_seeds))
    study.set_user_attr("command", masked(settings.command))
    study.set_user_attr("git_sha", sha)
    study.set_user_attr("mlflow_study_run_id", run_id)
    study.set_user_attr("description", settings.spec.description or settings.spec.name)
    tracker.describe(run_id, f"{settings.spec.description or settings.spec.name} Running.")
    tracker.log_params(run_id, flat_params(settings.fingerprint))
    tracker.set_tags(
        run_id,
        {
            "optuna.study_name": settings.study_name,
            "optuna.storage": masked(settings.storage),
            "command": masked(settings.command),
            "git_sha": sha,
            "hetero_lr.version": __version__,
            "sampler": settings.spec.sampler,
            "pruner": settings.spec.pruner,
        },
    )
    tracker.log_dict(run_id, settings.spec.to_dict(), "study.yaml")


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


def _open(settings: StudySettings) -> optuna.storages.BaseStorage:
    """The study's storage; a database one with Optuna's heartbeat when `settings.heartbeat`."""
    if not settings.heartbeat or not uses_heartbeat(settings.storage):
        return open_storage(settings.storage)
    with warnings.catch_warnings():  # Optuna marks the heartbeat arguments experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return open_storage(
            settings.storage,
            heartbeat_interval=settings.heartbeat,  # grace period: Optuna's default, 2 beats
            heartbeat_stale_trial_callback=_on_dead(settings),
        )


def uses_heartbeat(storage: str) -> bool:
    """Whether Optuna can keep a heartbeat in `storage` (only `RDBStorage` implements it)."""
    return "://" in storage and not storage.startswith("grpc://")


def _on_dead(settings: StudySettings) -> StaleTrial:
    return StaleTrial(settings.tracking_uri, settings.artifact_root, settings.max_retry)


def _recover(study: optuna.Study, settings: StudySettings) -> list[int]:
    """Fail and re-queue trials whose worker is gone: heartbeat-stale ones (database storages)
    and, on this host, those whose recorded process no longer exists (any storage)."""
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    recover_dead_trials(study, _on_dead(settings))
    failed = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    return sorted(before & failed)  # not those another worker finished meanwhile


def _enqueue_grid(study: optuna.Study, spec: StudySpec) -> int:
    """Enqueue grid points not yet taken, up to `spec.trials`; returns how many were added.

    Each point is its own enqueued trial, so parallel workers each take a different one (an
    enqueued trial is claimed atomically by the storage); left to `GridSampler`, workers
    starting together can draw the same point. Every point already in the study counts as
    taken: a WAITING one (queued by an interrupted invocation, or a retry) runs anyway, and a
    FAIL one failed for a reason a rerun with the same seeds would meet again (a trial stopped
    by a signal or whose worker died is queued again by `recovery`, not here).
    """
    grid = spec.grid()
    keys = list(grid)
    taken = set()
    for t in study.get_trials(deepcopy=False):
        if "baseline" in t.user_attrs:
            continue
        values = t.params or t.system_attrs.get("fixed_params", {})
        if all(k in values for k in keys):
            taken.add(tuple(values[k] for k in keys))
    fresh = [p for p in itertools.product(*grid.values()) if p not in taken][: spec.trials]
    for point in fresh:
        study.enqueue_trial(dict(zip(keys, point, strict=True)))
    return len(fresh)
