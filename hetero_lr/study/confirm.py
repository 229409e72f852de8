"""Confirmation: the chosen settings run again on fresh seeds; headline numbers use only these.

A search picks each pairing's best trial on the seeds that scored it, so that trial's search
score is biased upward (the winner's curse: the maximum of noisy estimates overstates the
best setting). After the search, each pairing's best complete trial and each baseline run again
with `spec.confirm` seeds that no search run used. Their scores are unbiased for the chosen
settings; the search score travels beside them as "selection". Baselines are confirmed the same
way, so every pairing is compared with a baseline measured on the same footing.

The runs not yet recorded are split over `--workers` processes (the main process and N - 1
spawned ones; run i goes to process i % N: each run is deterministic given its seed, so the
results do not depend on N). Each process takes a run through a claim (`claims`): a second
command started on the same study takes the runs nobody has taken yet (more workers), or says
in one line that there is nothing left for it; no run is trained twice. A confirmation survives
a stop, a fault or a crash within an arm:

- each (arm, environment, seed) run records its outcome as soon as it ends, in a study user
  attribute of its own, `confirm/LABEL/ENV/SEED` (`{"trial", "seeds", "score"}`, or `"failed"`
  for a diverged run), so processes never rewrite a shared attribute; a new start skips the
  runs recorded for the same trial and seeds;
- a run in progress checkpoints after each evaluation and when stopped (`recovery`), under
  `CHECKPOINTS/STUDY/confirm-LABEL-tNNNN/`; its claim is released, and the next start resumes
  it there (its new MLflow run tagged `resumed_from_step`); the checkpoint goes when the run
  finishes or diverges. A killed process's claims are released by the next start on its host;
- the arm's MLflow run is created once, under a claim of its own (its id in the user attribute
  `confirm/LABEL`), and is reopened by a resumed confirmation, which ends FAILED the seed runs
  left RUNNING by a process that is gone (those whose claim, tag `hetero_lr.claim`, is not
  taken now).

Once all of an arm's runs are recorded, the process that sees it writes the arm's record into
the user attribute `confirmation` (one entry per arm, see `run_confirmation`) and ends the
arm's MLflow run: tagged `hetero_lr.role=confirm`, under the study run, with one nested run per
environment and seed (also `confirm`, tagged `seed`).
"""

from __future__ import annotations

import multiprocessing
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import optuna
from mlflow.entities import Metric

from hetero_lr.config import TrainConfig
from hetero_lr.faults import Halted, halted, outage_patience
from hetero_lr.study._console import now_ms, quiet_libraries, say, worker_prefix
from hetero_lr.study.claims import Claim, Claims
from hetero_lr.study.recovery import (
    Interrupted,
    TrialCheckpoints,
    attempt,
    check_stop,
    exit_kind,
    exit_stopped,
    stop_requested,
    stop_signals,
)
from hetero_lr.study.runs import RunFactory, RunSlot, eval_steps, share_cores
from hetero_lr.study.settings import StudySettings
from hetero_lr.study.spec import StudySpec, trial_config
from hetero_lr.study.storage import open_storage
from hetero_lr.tracking import PARENT, RunStatus, Tracker

ATTR = "confirmation"
ROLE = "confirm"
PREFIX = "confirm/"
"""Study user attributes of a confirmation under way: `confirm/LABEL` (the arm's MLflow run)
and `confirm/LABEL/ENV/SEED` (one run's outcome)."""
CLAIM = "hetero_lr.claim"
"""Tag of a confirmation seed run: the number of the claim its process holds (`claims`)."""


class WorkersFailed(RuntimeError):
    """A confirmation process crashed; the next start finishes the arms it left."""


@dataclass(frozen=True)
class ConfirmRun:
    """One confirmation run: an arm's settings on one environment with one seed (picklable)."""

    label: str
    trial: int
    seeds: tuple[int, ...]
    """The arm's confirmation seeds (a record is valid only for the same ones)."""
    cfg: TrainConfig
    env_id: str
    seed: int
    name: str
    """Its MLflow run name."""
    parent_run_id: str

    @property
    def key(self) -> str:
        """The study user attribute that records this run's outcome."""
        return f"{PREFIX}{self.label}/{self.env_id}/{self.seed}"

    @property
    def claim(self) -> str:
        """The key of its claim: the run of this trial with these seeds."""
        return _claim_key(self.key, self.trial, self.seeds)


def confirm_seeds(study_seed: int, n: int, exclude: tuple[int, ...]) -> tuple[int, ...]:
    """`n` run seeds for confirmation, from a stream apart from the search's, none in `exclude`."""
    state = np.random.SeedSequence(study_seed, spawn_key=(1,)).generate_state(
        n + len(exclude), dtype=np.uint32
    )
    fresh = [int(s >> 1) for s in state if int(s >> 1) not in exclude]
    return tuple(fresh[:n])


def candidates(study: optuna.Study, spec: StudySpec) -> dict[str, optuna.trial.FrozenTrial]:
    """Arm label -> the trial to confirm: each pairing's best complete trial, each baseline."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    chosen: dict[str, optuna.trial.FrozenTrial] = {}
    for arm in (*spec.pairings, *spec.baseline_arms):
        trials = [t for t in complete if t.user_attrs.get("pairing") == arm.label]
        if trials:
            chosen[arm.label] = max(trials, key=lambda t: t.value)
    return chosen


def run_confirmation(
    study: optuna.Study,
    settings: StudySettings,
    *,
    tracker: Tracker,
    experiment_id: str,
    study_run_id: str,
    run_factory: RunFactory,
) -> dict[str, Any]:
    """Confirm every candidate not yet confirmed with these seeds; returns all records.

    A record: `{"trial", "selection", "seeds", "scores": {env: [score per seed]}, "failed",
    "mlflow_run_id"}`; a diverged run is listed in `failed` and left out of `scores`. The runs
    go to `settings.workers` processes, each taking its runs by claim; the arms whose runs all
    ended are recorded even when another process was stopped or crashed.

    Raises:
        KeyboardInterrupt: a process was stopped (`recovery.Interrupted`) or met a fault
            (`faults.Halted`); its runs resume at the next start.
        WorkersFailed: a spawned process exited abnormally.
    """
    spec = settings.spec
    seeds = confirm_seeds(spec.seed, spec.confirm, settings.run_seeds)
    records: dict[str, Any] = dict(study.user_attrs.get(ATTR, {}))
    arms = {
        label: trial
        for label, trial in candidates(study, spec).items()
        if not _recorded(records.get(label), trial.number, seeds)
    }
    if not arms:
        return records
    claims = Claims(study._storage, study.study_name)
    claims.recover()  # runs a killed process held on this host go back on offer
    jobs: list[ConfirmRun] = []
    parents: dict[str, str] = {}
    for label, trial in arms.items():
        about = _about(label, trial, seeds, len(spec.env_ids))
        parents[label] = _open_parent(
            study, claims, tracker, experiment_id, study_run_id, label, trial, seeds, about
        )
        _end_orphans(tracker, experiment_id, parents[label], claims)
        runs = _runs(label, trial, seeds, spec, parents[label])
        attrs = study.user_attrs
        left = [job for job in runs if not _recorded(attrs.get(job.key), trial.number, seeds)]
        say(f"confirming {label} (trial {trial.number}) on {len(seeds)} fresh seeds: "
            f"{len(left)} of {len(runs)} runs to go")  # fmt: skip
        jobs += left
    claims.offer(job.claim for job in jobs)
    held = claims.holders(job.claim for job in jobs)
    jobs = [job for job in jobs if job.claim not in held]  # those another command runs now
    if held:
        who = ", ".join(sorted(set(held.values())))
        if not jobs:
            say(f"confirmation: nothing left for this command: {len(held)} run(s) left, all "
                f"being trained by {who}")  # fmt: skip
            return records
        say(f"confirmation: {len(held)} run(s) being trained by {who}; this command takes "
            f"the other {len(jobs)}")  # fmt: skip
    error = _run_all(study, settings, jobs, tracker, experiment_id, run_factory, claims)
    fault = halted(error) if error is not None else None
    if fault is None:  # after a fault, the next start records what ended (the stores may refuse)
        records |= _record_arms(study, settings, arms, seeds, tracker, parents)
    if error is None:
        if len(records) == len(candidates(study, spec)):
            claims.drop()  # nothing left to claim
        return records
    status: RunStatus = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
    reason = str(error) if status == "KILLED" else f"crashed: {type(error).__name__}: {error}"
    for label in arms.keys() - records.keys():
        runs = _runs(label, arms[label], seeds, spec, parents[label])
        attempt(partial(_end_parent, tracker, claims, parents[label], runs, status, reason), fault)
    raise error


def _end_parent(
    tracker: Tracker,
    claims: Claims,
    parent: str,
    runs: list[ConfirmRun],
    status: RunStatus,
    reason: str,
) -> None:
    """End an unfinished arm's MLflow run, unless another command still runs one of its runs
    (that command ends it)."""
    if not claims.holders(job.claim for job in runs):
        tracker.end_run(parent, status, reason)


def _run_all(
    study: optuna.Study,
    settings: StudySettings,
    jobs: list[ConfirmRun],
    tracker: Tracker,
    experiment_id: str,
    run_factory: RunFactory,
    claims: Claims,
) -> BaseException | None:
    """Run `jobs` in this process and `settings.workers - 1` spawned ones (process i prefers
    runs i, i + N, ...); returns what stopped them (a stop, a fault, a crash), or None."""
    n = max(1, min(settings.workers, len(jobs)))
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(
            target=_worker,
            args=(settings, i, jobs[i::n], run_factory, experiment_id),
            name=f"hetero-lr-confirm-{i}",
        )
        for i in range(1, n)
    ]
    for proc in procs:
        proc.start()
    error: BaseException | None = None
    try:
        _run_share(study, settings, jobs[::n], tracker, experiment_id, run_factory, claims,
                   worker=0)  # fmt: skip
    except BaseException as err:  # a stop or a crash: the other processes are waited for first
        error = err
    for proc in procs:
        if stop_requested() and proc.is_alive():
            proc.terminate()  # SIGTERM: the process checkpoints its run and stops
        proc.join()
    ended = {kind: [p.name for p in procs if exit_kind(p.exitcode) == kind] for kind in
             ("stopped", "fault", "crashed")}  # fmt: skip
    if error is None and ended["fault"]:  # the process said which fault
        error = Halted(f"{', '.join(ended['fault'])} met a fault", "see its line", "fault")
    elif error is None and ended["stopped"]:
        error = Interrupted(f"{', '.join(ended['stopped'])} interrupted")
    elif error is None and ended["crashed"]:
        error = WorkersFailed(f"{', '.join(ended['crashed'])} exited abnormally")
    return error


def _record_arms(
    study: optuna.Study,
    settings: StudySettings,
    arms: dict[str, optuna.trial.FrozenTrial],
    seeds: tuple[int, ...],
    tracker: Tracker,
    parents: dict[str, str],
) -> dict[str, Any]:
    """Record each arm whose runs all have an outcome (unless another command just did);
    returns their records."""
    recorded = {}
    attrs = study.user_attrs
    for label, trial in arms.items():
        done = attrs.get(ATTR, {}).get(label)
        if _recorded(done, trial.number, seeds):
            recorded[label] = done
            continue
        record = _assemble(attrs, tracker, label, trial, seeds, settings.spec, parents[label])
        if record is None:
            continue
        recorded[label] = record
        # Read again just before writing: another command may have added its arm meanwhile.
        study.set_user_attr(ATTR, {**study.user_attrs.get(ATTR, {}), label: record})
        TrialCheckpoints(
            settings.checkpoints, settings.study_name, trial.number, arm=label
        ).remove()
    return recorded


def _recorded(found: dict[str, Any] | None, trial: int, seeds: tuple[int, ...]) -> bool:
    """Whether a stored record (an arm's, its MLflow run's, a run's) is of `trial` and `seeds`."""
    return bool(found) and found["trial"] == trial and found["seeds"] == list(seeds)


def _claim_key(name: str, trial: int, seeds: tuple[int, ...]) -> str:
    """A claim's key: `name` (a run's or an arm's) for this trial and these seeds."""
    return f"{name} t{trial} seeds {','.join(map(str, seeds))}"


def _about(label: str, trial: optuna.trial.FrozenTrial, seeds: tuple[int, ...], envs: int) -> str:
    return (
        f"Confirmation of {label}: trial {trial.number}'s settings (search score "
        f"{trial.value:.4g}) on {len(seeds)} fresh seeds x {envs} environment(s)."
    )


def _open_parent(
    study: optuna.Study,
    claims: Claims,
    tracker: Tracker,
    experiment_id: str,
    study_run_id: str,
    label: str,
    trial: optuna.trial.FrozenTrial,
    seeds: tuple[int, ...],
    about: str,
) -> str:
    """The arm's MLflow run: the one an unfinished confirmation of this trial and these seeds
    created (reopened), else a new one, recorded in `confirm/LABEL`. One process creates it,
    under the arm's claim; another one started meanwhile waits for its id.

    Raises:
        Halted: the process creating it has not recorded it within the outage window.
    """
    key = _claim_key(PREFIX + label, trial.number, seeds)
    deadline = time.monotonic() + outage_patience() + 60
    while True:
        known = study.user_attrs.get(PREFIX + label)
        if _recorded(known, trial.number, seeds):
            run_id = known["mlflow_run_id"]
            tracker.reopen(run_id)
            tracker.describe(run_id, f"{about} Running.")
            return run_id
        claims.offer([key])
        claim = claims.take([key])
        if claim is not None:
            return _create_parent(study, claims, claim, tracker, experiment_id, study_run_id,
                                  label, trial, seeds, about)  # fmt: skip
        holder = claims.holders([key]).get(key, "another process")
        if time.monotonic() > deadline:
            raise Halted(
                f"the MLflow run of confirmation arm {label} is being created by {holder}, "
                "which has not finished",
                f"if {holder} is gone, delete the study {claims.name!r} from the storage",
                "waiting for another command",
            )
        claims.recover()
        time.sleep(0.5)


def _create_parent(
    study: optuna.Study,
    claims: Claims,
    claim: Claim,
    tracker: Tracker,
    experiment_id: str,
    study_run_id: str,
    label: str,
    trial: optuna.trial.FrozenTrial,
    seeds: tuple[int, ...],
    about: str,
) -> str:
    """Create the arm's MLflow run under `claim` and record it in `confirm/LABEL`."""
    try:
        run_id = tracker.start_run(
            experiment_id,
            name=f"confirm {label} t{trial.number:04d}",
            role=ROLE,
            parent_run_id=study_run_id,
            tags={"pairing": label, "optuna.trial_number": trial.number},
            description=f"{about} Running.",
        )
        arm = {"trial": trial.number, "selection": trial.value, "seeds": list(seeds)}
        study.set_user_attr(PREFIX + label, {**arm, "mlflow_run_id": run_id})
    except BaseException as err:
        attempt(partial(claims.release, claim, f"{type(err).__name__}: {err}"), halted(err))
        raise
    claims.done(claim)
    return run_id


def _end_orphans(tracker: Tracker, experiment_id: str, parent: str, claims: Claims) -> None:
    """End FAILED the arm's seed runs left RUNNING by a process that is gone: those whose claim
    is not taken now (a live process takes its claim before it creates its run)."""
    taken = {str(number) for number in claims.taken()}
    runs = tracker.retry(
        tracker.client.search_runs,
        [experiment_id],
        filter_string=f"tags.`{PARENT}` = '{parent}' and attributes.status = 'RUNNING'",
        max_results=1000,
    )
    for run in runs:
        if run.data.tags.get(CLAIM) not in taken:
            tracker.end_run(run.info.run_id, "FAILED", "its process died; resumed in a new run")


def _runs(
    label: str,
    trial: optuna.trial.FrozenTrial,
    seeds: tuple[int, ...],
    spec: StudySpec,
    parent_run_id: str,
) -> list[ConfirmRun]:
    """The arm's runs: each environment with each seed, in that order."""
    cfg, env_ids = trial_config(trial, spec), spec.env_ids
    return [
        ConfirmRun(
            label,
            trial.number,
            seeds,
            cfg,
            env_id,
            seed,
            f"c{k} seed={seed}" + (f" {env_id.split('/')[-1]}" if len(env_ids) > 1 else ""),
            parent_run_id,
        )
        for env_id in env_ids
        for k, seed in enumerate(seeds)
    ]


def _worker(
    settings: StudySettings,
    worker: int,
    jobs: list[ConfirmRun],
    run_factory: RunFactory,
    experiment_id: str,
) -> None:
    """Entry point of a spawned confirmation process; exits 130 when stopped by a signal and
    `faults.EXIT_CODE` when stopped by a fault (`recovery.exit_stopped`)."""
    with quiet_libraries(settings.results):
        try:
            storage = open_storage(settings.storage)
            study = optuna.load_study(study_name=settings.study_name, storage=storage)
            tracker = Tracker(settings.tracking_uri, artifact_root=settings.artifact_root)
            claims = Claims(storage, settings.study_name)
            with stop_signals(watch_parent=True):
                _run_share(study, settings, jobs, tracker, experiment_id, run_factory, claims,
                           worker=worker)  # fmt: skip
        except BaseException as err:
            exit_stopped(err, worker_prefix(worker, settings.workers))


def _run_share(
    study: optuna.Study,
    settings: StudySettings,
    jobs: list[ConfirmRun],
    tracker: Tracker,
    experiment_id: str,
    run_factory: RunFactory,
    claims: Claims,
    *,
    worker: int,
) -> None:
    """Run one process's share of the confirmation runs, one after another, each by claim:
    a run another process (of this command or another one) took is left to it."""
    share_cores(settings.spec.base.threads, settings.workers)
    by_claim = {job.claim: job for job in jobs}
    while True:
        check_stop()  # no new run once a stop was asked for
        claim = claims.take(list(by_claim))
        if claim is None:
            return
        job = by_claim.pop(claim.key)
        if _recorded(study.user_attrs.get(job.key), job.trial, job.seeds):
            claims.done(claim)  # finished by another command since this one looked
            continue
        try:
            _run_one(study, settings, job, claim, tracker, experiment_id, run_factory,
                     worker=worker)  # fmt: skip
        except BaseException as err:  # stopped, a fault or a crash: the run is up for grabs
            attempt(partial(claims.release, claim, f"{type(err).__name__}: {err}"), halted(err))
            raise
        claims.done(claim)


def _run_one(
    study: optuna.Study,
    settings: StudySettings,
    job: ConfirmRun,
    claim: Claim,
    tracker: Tracker,
    experiment_id: str,
    run_factory: RunFactory,
    *,
    worker: int,
) -> None:
    """Train one run (from its checkpoint if it has one) and record its outcome."""
    from hetero_lr.agent import DivergenceError

    checkpoints = TrialCheckpoints(
        settings.checkpoints, settings.study_name, job.trial, arm=job.label
    )
    tags = {"pairing": job.label, "optuna.trial_number": job.trial, CLAIM: claim.number}
    slot = RunSlot.of(job.cfg, job.env_id, job.seed, job.name, **tags)
    try:
        slot.start(
            run_factory,
            tracker,
            experiment_id,
            role=ROLE,
            parent_run_id=job.parent_run_id,
            description=f"Confirmation seed {job.seed} of {job.label} on {job.env_id}.",
        )
        resumed = checkpoints.resume(slot)
        line = resumed.line("its")
        if line is not None:
            assert slot.logger is not None
            tracker.set_tags(slot.logger.run_id, resumed.tags)
            slot.description += f" {line[0].upper()}{line[1:]}."
            prefix = worker_prefix(worker, settings.workers)
            say(f"confirming {job.label}: {slot.name} {line}", prefix)
        for step in eval_steps(slot.cfg):
            slot.advance(step)
            checkpoints.save(slot)
    except DivergenceError as err:
        slot.end("FAILED", f"{type(err).__name__}: {err}")
        outcome: dict[str, Any] = {"failed": f"{job.env_id} seed {job.seed}: {err}"}
    except BaseException as err:  # a stop signal ends the run KILLED
        if isinstance(err, Interrupted):  # the run is at a clean step: keep it
            checkpoints.save(slot)
        status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
        slot.end(status, f"{type(err).__name__}: {err}")
        raise
    else:
        outcome = {"score": slot.finish(settings.spec.last_evals)}
    study.set_user_attr(job.key, {"trial": job.trial, "seeds": list(job.seeds), **outcome})
    checkpoints.discard(slot)  # after the record: a crash in between only leaves a stale file
    ended = f"score {outcome['score']:.4g}" if "score" in outcome else "diverged"
    say(f"confirmed {job.label}: {slot.name} {ended}", worker_prefix(worker, settings.workers))


def _assemble(
    attrs: dict[str, Any],
    tracker: Tracker,
    label: str,
    trial: optuna.trial.FrozenTrial,
    seeds: tuple[int, ...],
    spec: StudySpec,
    parent: str,
) -> dict[str, Any] | None:
    """The arm's record from its runs' outcomes, its MLflow run ended; None while a run of the
    arm has no outcome yet."""
    outcomes = {
        (env, seed): attrs.get(f"{PREFIX}{label}/{env}/{seed}")
        for env in spec.env_ids
        for seed in seeds
    }
    if not all(_recorded(o, trial.number, seeds) for o in outcomes.values()):
        return None
    scores: dict[str, list[float]] = {env: [] for env in spec.env_ids}
    for (env, _), o in outcomes.items():  # seeds in order within each environment
        if "score" in o:
            scores[env].append(o["score"])
    failed = [o["failed"] for o in outcomes.values() if "failed" in o]
    pooled = [s for env_scores in scores.values() for s in env_scores]
    tracker.set_tags(parent, {"selection": trial.value, "confirm.failed": len(failed)})
    tracker.log_params(parent, {"confirm_seeds": ",".join(map(str, seeds))})
    if pooled:
        steps = trial_config(trial, spec).steps
        tracker.log_metrics(parent, [Metric("objective", float(np.mean(pooled)), now_ms(), steps)])
    outcome = f"mean score {np.mean(pooled):.4g} over {len(pooled)} runs" if pooled else ""
    about = _about(label, trial, seeds, len(spec.env_ids))
    tracker.describe(parent, f"{about} {outcome}; failed runs: {len(failed)}.")
    tracker.end_run(parent, "FINISHED" if pooled else "FAILED", "; ".join(failed) or None)
    return {
        "trial": trial.number,
        "selection": trial.value,
        "seeds": list(seeds),
        "scores": scores,
        "failed": failed,
        "mlflow_run_id": parent,
    }
