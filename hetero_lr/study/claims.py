"""Claims: pieces of work that exactly one process takes, through the study's Optuna storage.

Two commands started on one study (twice by mistake, or on two machines for more workers) must
not train the same run twice. Study attributes cannot do that (a write is not a
compare-and-set), but Optuna's storages hand a WAITING trial to one caller only:
`set_trial_state_values(trial_id, RUNNING)` returns True to the one process that moved it from
WAITING, False to every other (RDB: a row lock; journal: the first such record in the file
wins). That is how `Study.ask` gives each worker its own enqueued trial, and how claims work:

- each piece of work has a key; `offer` puts up a WAITING trial for each key that has no live
  claim, in a companion study `STUDY/claims` (so the study's own trials, samplers and counts do
  not see them);
- `take` moves the first takeable one to RUNNING and records the process (`host:pid`);
- two commands may offer the same key at once; the earliest live claim of a key (lowest trial
  number: trials of a study are numbered in the order they were created) is the one that
  counts, and a later one that is taken is dropped as a duplicate, so a key never has two
  takers; the work is then `done` (COMPLETE) or `release`d (FAIL, and offered again);
- a claim whose process is gone (killed; on this host) is released by `recover`.

The companion study holds only claims: `drop` deletes it once nothing is left to claim.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import optuna
from optuna.trial import FrozenTrial, TrialState

from hetero_lr.study.recovery import process_gone, worker_id

KEY = "key"
"""User attribute of a claim trial: the key of the work it claims."""
WORKER = "worker"
"""User attribute of a taken claim: `host:pid` of the process that took it."""
UNNAMED = timedelta(minutes=1)
"""How long a taken claim may go without naming its process before `recover` releases it."""


@dataclass(frozen=True)
class Claim:
    """A claim this process holds."""

    key: str
    trial_id: int
    number: int


class Claims:
    """The claims of one study (`STUDY/claims` in its storage), created on first use."""

    def __init__(self, storage: optuna.storages.BaseStorage, study_name: str) -> None:
        self.storage = storage
        self.name = f"{study_name}/claims"
        self.study = _open(storage, self.name)

    def offer(self, keys: Iterable[str]) -> list[str]:
        """Put up each of `keys` that has no live claim (waiting, taken or done); returns those
        put up."""
        live = {_key(t) for t in self._trials() if t.state != TrialState.FAIL}
        fresh = [key for key in dict.fromkeys(keys) if key not in live]
        for key in fresh:
            self.study.enqueue_trial({}, user_attrs={KEY: key})
        return fresh

    def take(self, keys: Sequence[str]) -> Claim | None:
        """Take the first of `keys` (in that order) that is waiting; None when none is."""
        order = {key: i for i, key in enumerate(keys)}
        waiting = sorted(
            (t for t in self._trials() if t.state == TrialState.WAITING and _key(t) in order),
            key=lambda t: (order[_key(t)], t.number),
        )
        for trial in waiting:
            claim = self._take(trial)
            if claim is not None:
                return claim
        return None

    def done(self, claim: Claim) -> None:
        """The claimed work is finished: nobody takes it again."""
        self.storage.set_trial_state_values(claim.trial_id, TrialState.COMPLETE, [1.0])

    def release(self, claim: Claim, reason: str) -> None:
        """The claimed work stopped unfinished: offer it again (to resume it)."""
        self._fail(claim.trial_id, reason)
        self.offer([claim.key])

    def recover(self) -> list[str]:
        """Release the claims whose process is gone (on this host), or that never named their
        process (killed between taking and naming: a live taker names itself at once);
        returns their keys."""
        released = []
        now = datetime.now()
        for trial in self._trials():
            worker = trial.user_attrs.get(WORKER)
            started = trial.datetime_start or now
            gone = process_gone(worker) if worker else now - started > UNNAMED
            if trial.state == TrialState.RUNNING and gone:
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                    if self._fail(trial._trial_id, f"its process ({worker}) is gone"):
                        self.offer([_key(trial)])
                        released.append(_key(trial))
        return released

    def holders(self, keys: Iterable[str]) -> dict[str, str]:
        """Key -> `host:pid` of the process holding it, for those of `keys` taken now."""
        wanted = set(keys)
        return {
            _key(t): t.user_attrs.get(WORKER, "?")
            for t in self._trials()
            if t.state == TrialState.RUNNING and _key(t) in wanted
        }

    def taken(self) -> set[int]:
        """Numbers of the claims taken now."""
        return {t.number for t in self._trials() if t.state == TrialState.RUNNING}

    def drop(self) -> None:
        """Delete the companion study, if nothing in it is waiting or taken (all done)."""
        states = {t.state for t in self._trials()}
        if not states & {TrialState.WAITING, TrialState.RUNNING}:
            with contextlib.suppress(KeyError):  # another process dropped it first
                self.storage.delete_study(self.study._study_id)

    def _take(self, trial: FrozenTrial) -> Claim | None:
        """Move `trial` from WAITING to RUNNING if no other process did; keep it only if it
        is the earliest live claim of its key."""
        trial_id = trial._trial_id
        try:
            if not self.storage.set_trial_state_values(trial_id, TrialState.RUNNING):
                return None  # another process took it
        except optuna.exceptions.UpdateFinishedTrialError:
            return None  # released or dropped meanwhile
        self.storage.set_trial_user_attr(trial_id, WORKER, worker_id())
        earlier = [
            t
            for t in self._trials()
            if _key(t) == _key(trial) and t.number < trial.number and t.state != TrialState.FAIL
        ]
        if earlier:  # two starts offered it: the earlier claim is the one that counts
            self._fail(trial_id, f"a duplicate of claim {earlier[0].number}")
            return None
        return Claim(_key(trial), trial_id, trial.number)

    def _fail(self, trial_id: int, reason: str) -> bool:
        self.storage.set_trial_user_attr(trial_id, "end_reason", reason)
        return self.storage.set_trial_state_values(trial_id, TrialState.FAIL)

    def _trials(self) -> list[FrozenTrial]:
        return self.storage.get_all_trials(self.study._study_id, deepcopy=False)


def _open(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study:
    """The companion study `name`, created if missing (by whichever process gets there first)."""
    with contextlib.suppress(optuna.exceptions.DuplicatedStudyError):
        # Not `create_study(load_if_exists=True)`: on a journal it appends a record each time.
        if name not in optuna.get_all_study_names(storage):
            return optuna.create_study(study_name=name, storage=storage, direction="maximize")
    return optuna.load_study(study_name=name, storage=storage)


def _key(trial: FrozenTrial) -> str:
    return str(trial.user_attrs.get(KEY, ""))
