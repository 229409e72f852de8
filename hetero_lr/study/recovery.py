"""Trials that survive a crash: run checkpoints, dead-trial detection, retries, stop signals.

- **Checkpoints.** After each evaluation every run of a trial writes its full state (networks,
  optimizers, replay, RNGs, its scores so far) to `CHECKPOINTS/STUDY/tNNNN/`, named by the
  trial the chain of retries started from; they are removed when the trial ends (complete,
  pruned, diverged) and kept when it is interrupted or its worker dies. A confirmation run
  writes its own under `CHECKPOINTS/STUDY/confirm-LABEL-tNNNN/` (`hetero_lr.study.confirm`).
  Files are verified and kept two deep (`hetero_lr.checkpoint`): a damaged latest file falls
  back to the previous one, and with none good the run starts from step 0, in one line.
- **Dead workers.** With an RDB storage, Optuna's heartbeat marks a trial whose worker stopped
  beating FAILED (`RDBStorage(heartbeat_interval=...)`; `optuna.storages.fail_stale_trials` runs
  before every trial) and calls `StaleTrial`. The journal storage has no heartbeat: a starting
  study fails the RUNNING trials whose recorded process (host and PID) is gone on this host
  (`recover_dead_trials`). Either way `StaleTrial` ends the dead trial's MLflow runs FAILED and
  re-queues it once (Optuna's `RetryHeartbeatStaleTrialCallback`); the retry resumes each run
  from its checkpoint.
- **SIGINT / SIGTERM.** The first signal asks the worker to stop: the running trial stops at
  the next chunk of agent steps, checkpoints its runs, ends them KILLED with the reason and is
  re-queued, so the next start resumes it. A second Ctrl-C stops at once. One line per stopped
  trial says so (`stop_trial`); the command's last line is the one that resumes it.
- **Faults** (`hetero_lr.faults`: a full disk, a store out of reach past its retry window) stop
  the trial the same way, except that its runs are not checkpointed again: their last good
  checkpoints stay. What the fault keeps from being recorded now (the re-queue, the end of an
  MLflow run) the next start does: a trial left RUNNING by a gone process is failed and
  re-queued, and MLflow runs left RUNNING by a trial that is no longer running are ended
  (`end_orphan_runs`). Stops do not count as retries (`--retries` counts crashes only).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback

from hetero_lr import checkpoint
from hetero_lr.checkpoint import CheckpointError
from hetero_lr.faults import EXIT_CODE, DiskFull, Halted, halted, is_disk_full
from hetero_lr.study._console import LOG, say

if TYPE_CHECKING:
    from hetero_lr.study.runs import RunSlot
    from hetero_lr.tracking import Tracker

CHUNK = 1_000
"""Agent steps between two looks at the stop flag while a run trains."""


class Interrupted(KeyboardInterrupt):
    """A stop signal: the trial checkpoints its runs and is re-queued (a KeyboardInterrupt, so
    everything that ends runs on Ctrl-C ends them here too)."""


class _Stop:
    reason: str | None = None


_STOP = _Stop()


def request_stop(reason: str) -> None:
    """Ask this process's trials to stop at the next chunk of agent steps."""
    _STOP.reason = _STOP.reason or reason


def check_stop() -> None:
    """Raise `Interrupted` if a stop was requested."""
    if _STOP.reason:
        raise Interrupted(_STOP.reason)


def stop_requested() -> str | None:
    """Why this process was asked to stop, or None."""
    return _STOP.reason


@contextlib.contextmanager
def stop_signals(*, watch_parent: bool = False) -> Iterator[None]:
    """While inside, SIGINT/SIGTERM request a stop (a second SIGINT interrupts at once); the
    previous handlers come back after. In a worker process, `watch_parent` also requests a stop
    when the study's main process dies. Outside the main thread, signals are left alone."""

    def on_signal(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGINT and _STOP.reason:
            raise KeyboardInterrupt(f"{name} again: stopping at once")
        request_stop(f"interrupted ({name})")

    _STOP.reason = None
    if threading.current_thread() is not threading.main_thread():
        try:
            yield
        finally:
            _STOP.reason = None
        return
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    if watch_parent:
        parent = os.getppid()

        def watch() -> None:
            while os.getppid() == parent:
                threading.Event().wait(2.0)
            request_stop("the study's main process is gone")

        threading.Thread(target=watch, daemon=True, name="watch-parent").start()
    try:
        yield
    finally:
        _STOP.reason = None
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def frozen(trial: optuna.Trial) -> optuna.trial.FrozenTrial:
    """The stored record of a live trial (with its system attributes: retry history)."""
    return trial.study._storage.get_trial(trial._trial_id)


def origin(trial: optuna.trial.FrozenTrial) -> int:
    """The trial a chain of retries started from (the trial itself if it is not a retry)."""
    history = trial.system_attrs.get("retry_history") or []
    return int(history[0]) if history else trial.number


def worker_id() -> str:
    """`host:pid` of this process, recorded on each trial it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Resumed:
    """How a run came back from its checkpoint files (`TrialCheckpoints.resume`)."""

    step: int | None
    """Agent step it resumed at; None: it starts from step 0."""
    fault: str | None
    """What was wrong with a checkpoint file that was passed over (one line), or None."""
    previous: bool = False
    """It resumed from the previous checkpoint (the latest was damaged or missing)."""

    @property
    def tags(self) -> dict[str, Any]:
        """MLflow tags of the run: `resumed_from_step` and `checkpoint_fault`, where they apply."""
        tags: dict[str, Any] = {"resumed_from_step": self.step} if self.step is not None else {}
        return tags | ({"checkpoint_fault": self.fault} if self.fault else {})

    def line(self, owner: str) -> str | None:
        """What happened, for a console line (`owner`: whose checkpoint, e.g. "trial 3's");
        None when there was no checkpoint and no fault."""
        if self.step is None:
            return f"starts from step 0 ({self.fault})" if self.fault else None
        which = "previous checkpoint" if self.previous else "checkpoint"
        text = f"resumed at step {self.step} from {owner} {which}"
        return text + (f" ({self.fault})" if self.fault else "")


class TrialCheckpoints:
    """The checkpoint files of one trial's runs, or of one confirmation arm's runs (None
    folder: checkpointing off).

    Args:
        root: The study's checkpoint folder (`--checkpoints`); None turns checkpoints off.
        study_name: The study: its runs' files are under `root/STUDY/`.
        trial: The trial whose runs (or whose settings' confirmation runs) these are.
        arm: A confirmation arm's label: the folder is `confirm-LABEL-tNNNN`, not `tNNNN`.
    """

    def __init__(
        self, root: str | Path | None, study_name: str, trial: int, *, arm: str | None = None
    ) -> None:
        name = f"t{trial:04d}" if arm is None else f"confirm-{_safe(arm)}-t{trial:04d}"
        self.folder = Path(root) / _safe(study_name) / name if root else None

    def path(self, slot: RunSlot) -> Path | None:
        """Where `slot`'s checkpoint lives."""
        if self.folder is None:
            return None
        env = slot.cfg.env.id.replace("/", "_")
        return self.folder / f"{env}__seed{slot.cfg.seed}.pt"

    def save(self, slot: RunSlot) -> None:
        """Write `slot`'s state with `hetero_lr.checkpoint.save` (atomic, hash recorded, the
        previous good file kept).

        Raises:
            DiskFull: no space for the file; the files already there are as they were.
        """
        path, state = self.path(slot), slot.state_dict()
        if path is None or state is None:
            return
        try:
            checkpoint.save(state, path)
        except Exception as err:  # torch.save reports a full disk as a RuntimeError
            if is_disk_full(err):
                raise DiskFull(str(path.parent), "a checkpoint write failed") from err
            raise

    def resume(self, slot: RunSlot) -> Resumed:
        """Continue `slot` from its newest good checkpoint, if any (see `Resumed`).

        A damaged latest file falls back to the previous one; with no good file (damaged, or an
        older version's pickle, refused unread) the run starts from step 0: a fault the trial
        recovers from, not one that fails it.
        """
        path = self.path(slot)
        try:
            loaded = checkpoint.load(path) if path is not None else None
        except CheckpointError as err:
            return Resumed(None, str(err))
        if loaded is None:
            return Resumed(None, None)
        return Resumed(slot.load_state_dict(loaded.state), loaded.fault, loaded.previous)

    def restore(self, slot: RunSlot) -> int | None:
        """`resume(slot).step`: the agent step `slot` resumed at, None if it starts afresh."""
        return self.resume(slot).step

    def discard(self, slot: RunSlot) -> None:
        """Delete `slot`'s checkpoint files (the run ended; its arm's other runs may go on)."""
        path = self.path(slot)
        if path is not None:
            checkpoint.remove(path)

    def remove(self) -> None:
        """Delete the trial's checkpoints (it ended: nothing will resume it)."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def _safe(name: str) -> str:
    """`name` as one path component."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


class StaleTrial:
    """A trial whose worker died (heartbeat-stale, or its process gone): end its MLflow runs,
    queue it again.

    Picklable, so worker processes build it into their storage. `max_retry` counts retries
    after a crash; a trial stopped by a signal is re-queued regardless (`requeue`).
    """

    def __init__(self, tracking_uri: str, artifact_root: str | None, max_retry: int) -> None:
        self.tracking_uri, self.artifact_root, self.max_retry = (
            tracking_uri,
            artifact_root,
            max_retry,
        )

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Optuna's heartbeat callback: `trial` missed its heartbeats and was failed."""
        worker = trial.user_attrs.get("worker", "an unknown worker")
        self.handle(study, trial, f"worker {worker} missed its heartbeats")

    def handle(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, reason: str) -> None:
        """End the failed `trial`'s MLflow runs with `reason`; queue it again if retries remain
        (stops before it, which `requeue` counts, are not retries)."""
        end_trial_runs(self.tracking_uri, self.artifact_root, trial, "FAILED", reason)
        stops = int(trial.system_attrs.get(STOPS, 0))
        retries = len(trial.system_attrs.get("retry_history") or []) - stops
        if retries < self.max_retry:
            say(f"trial {trial.number}: {reason}; queued again to resume from its checkpoints")
        else:
            say(f"trial {trial.number}: {reason}; not retried ({retries} retries already)")
        _retry(study, trial, self.max_retry + stops)


STOPS = "hetero_lr:stops"
"""System attribute: how many of a trial's `retry_history` entries were stops (signals,
faults), not crashes; copied to each retry with the history."""


def requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue `trial` again (it was stopped by a signal or a fault; its checkpoints are kept)."""
    trial.system_attrs[STOPS] = int(trial.system_attrs.get(STOPS, 0)) + 1  # the copy's count
    _retry(study, trial, None)


def stop_trial(
    trial: optuna.Trial, err: KeyboardInterrupt, end: Callable[[str], None], prefix: str = ""
) -> None:
    """Queue a trial stopped by `err` again and `end(reason)` its MLflow run; one line says so.

    After a fault the stores may refuse both: each is tried once, what fails goes to the log
    file, and the next start does it (a RUNNING trial whose process is gone is re-queued; its
    MLflow runs are ended by `end_orphan_runs`). A stop signal's errors pass through as before.
    """
    fault = halted(err)
    if fault is not None:
        fault.trial_stopped = True
    reason = str(fault or err or "interrupted (Ctrl-C)")
    queued = attempt(lambda: requeue(trial.study, frozen(trial)), fault)
    attempt(lambda: end(f"{reason}; queued again to resume"), fault)
    short = fault.short if fault else reason.removeprefix("interrupted (").removesuffix(")")
    then = (
        "queued again to resume from its checkpoints"
        if queued
        else "the next start queues it again to resume from its checkpoints"
    )
    say(f"trial {trial.number} stopped ({short}); {then}", prefix)


def attempt(action: Callable[[], None], fault: Halted | None) -> bool:
    """Run `action`; after a fault, an error (the store still refusing) is logged, not raised.
    Returns whether it ran through."""
    if fault is None:
        action()
        return True
    try:
        action()
    except (Exception, Halted):
        logging.getLogger(LOG).warning("not recorded after %s", fault.short, exc_info=True)
        return False
    return True


def exit_stopped(err: BaseException, prefix: str = "") -> NoReturn:
    """End a spawned worker process that `err` stopped: exit 130 after a stop signal, and
    `faults.EXIT_CODE` after a fault, which one line names; any other error passes through."""
    fault = halted(err)
    if fault is not None:
        say(f"stopped: {fault}", prefix)
        raise SystemExit(EXIT_CODE) from None
    if isinstance(err, KeyboardInterrupt):  # each stopped trial said so
        raise SystemExit(130) from None
    raise err


def exit_kind(code: int | None) -> str:
    """How a worker process ended, by its exit code: `ok`, `stopped` (130: a signal), `fault`
    (`faults.EXIT_CODE`) or `crashed` (anything else, None included: it never reported)."""
    kinds: dict[int | None, str] = {0: "ok", 130: "stopped", EXIT_CODE: "fault"}
    return kinds.get(code, "crashed")


def _retry(study: optuna.Study, trial: optuna.trial.FrozenTrial, max_retry: int | None) -> None:
    """Optuna's retry: a WAITING copy of `trial` (params, user attributes, intermediate values)
    whose system attributes name the trials it retries."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback(max_retry, inherit_intermediate_values=True)(study, trial)


def end_trial_runs(
    tracking_uri: str,
    artifact_root: str | None,
    trial: optuna.trial.FrozenTrial,
    status: str,
    reason: str,
) -> None:
    """End a trial's MLflow run and its still-RUNNING seed runs with `status` and `reason`."""
    from hetero_lr.tracking import PARENT, Tracker, retry

    run_id = trial.user_attrs.get("mlflow_run_id")
    if not run_id:
        return
    tracker = Tracker(tracking_uri, artifact_root=artifact_root)
    experiment = trial.user_attrs.get("experiment")
    children = retry(
        tracker.client.search_runs,
        [experiment] if experiment else [tracker.client.get_run(run_id).info.experiment_id],
        filter_string=f"tags.`{PARENT}` = '{run_id}' and attributes.status = 'RUNNING'",
        max_results=1000,
    )
    for run in children:
        tracker.end_run(run.info.run_id, status, reason)  # type: ignore[arg-type]
    if tracker.client.get_run(run_id).info.status == "RUNNING":
        tracker.set_tags(run_id, {"optuna.trial_state": "FAIL"})
        tracker.end_run(run_id, status, reason)  # type: ignore[arg-type]


def end_orphan_runs(study: optuna.Study, tracker: Tracker, experiment_id: str) -> list[str]:
    """End the trial and seed runs left RUNNING by trials that are not running any more (their
    process stopped after a fault kept it from ending them); returns their names.

    A run of a RUNNING trial is left alone: its worker may be alive on another machine.
    """
    from hetero_lr.tracking import ROLE

    running = {
        t.number
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    }
    runs = tracker.retry(
        tracker.client.search_runs,
        [experiment_id],
        filter_string="attributes.status = 'RUNNING'",
        max_results=10_000,
    )
    ended = []
    for run in runs:
        tags = run.data.tags
        number = tags.get("optuna.trial_number")
        if tags.get(ROLE) not in ("trial", "seed") or number is None or int(number) in running:
            continue
        reason = (
            "its process stopped before it could end this run (a fault); ended at the next start"
        )
        if tags.get(ROLE) == "trial":
            tracker.set_tags(run.info.run_id, {"optuna.trial_state": "FAIL"})
        tracker.end_run(run.info.run_id, "KILLED", reason)
        ended.append(run.info.run_name)
    return ended


def process_gone(worker: str) -> bool:
    """True when `host:pid` names a process on this host that no longer exists."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's process: only a heartbeat can tell
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def recover_dead_trials(study: optuna.Study, on_dead: StaleTrial) -> list[int]:
    """Fail the RUNNING trials whose process on this host is gone and hand each to `on_dead`.

    For storages without a heartbeat (the journal file). Returns the trial numbers failed.
    """
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if not process_gone(trial.user_attrs.get("worker", "")):
            continue
        try:
            if not study._storage.set_trial_state_values(
                trial._trial_id, state=optuna.trial.TrialState.FAIL
            ):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process got there first
        failed.append(trial.number)
        reason = f"worker {trial.user_attrs['worker']}'s process is gone"
        on_dead.handle(study, study._storage.get_trial(trial._trial_id), reason)
    return failed
