"""Where a study lives and how it searches: Optuna storages, samplers, pruners; URL checks.

Storages: a journal file (one machine), a database URL (`postgresql://...`, `mysql://...`,
`sqlite:///...`; Optuna's `RDBStorage`), or `grpc://HOST:PORT`, an Optuna gRPC storage proxy
(`optuna.storages.run_grpc_proxy_server`) in front of a database, for many workers. URLs are
recorded and printed only through `masked`, which hides passwords.
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import optuna
from optuna.storages import RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from hetero_lr.faults import DiskFull, Unreachable, full_folder, is_disk_full, outage_patience
from hetero_lr.study._console import say
from hetero_lr.study.distinct import DistinctSampler
from hetero_lr.study.runs import eval_steps
from hetero_lr.study.spec import StudySpec

T = TypeVar("T")

ACCEPTED_STORAGES = (
    "a journal-file path, sqlite:///PATH, postgresql://..., mysql://... or grpc://HOST:PORT"
)
CONNECT_TIMEOUT = 10
"""Seconds a reachability check or a new database connection waits for an answer."""

_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*:)(?P<secret>[^\s/?#]*)@")
_SECRET_QUERY = re.compile(
    r"(?P<head>[?&](?:password|passwd|pwd|token|secret|api_key|access_token)=)(?P<secret>[^&\s]*)",
    re.IGNORECASE,
)


def masked(text: str) -> str:
    """`text` with the password of every URL in it replaced by `***`.

    Works on one URL (a storage URL, a tracking URI) and on a whole command line. Like
    SQLAlchemy's `make_url(url).render_as_string(hide_password=True)` for database URLs, and the
    same for `http(s)://user:pass@host` and `grpc://`; a password with an unescaped `@` (which
    `make_url` would split) is hidden up to the last `@`, and `?password=`/`?token=` query values
    too. Passwords are best kept out of URLs: `PGPASSWORD`, `~/.pgpass`, `PGSERVICE`.
    """
    text = _USERINFO.sub(lambda m: f"{m['head']}***@" if m["secret"] else m[0], text)
    return _SECRET_QUERY.sub(lambda m: f"{m['head']}***", text)


def open_storage(storage: str, **rdb_options: Any) -> optuna.storages.BaseStorage:
    """The Optuna storage named by `storage`: a journal file, a database URL, or `grpc://`.

    A database gets a `RetryingRDBStorage`: pooled connections are checked before use
    (`pool_pre_ping`, so a restarted database server costs nothing), new connections time out
    after `CONNECT_TIMEOUT`, and a call that cannot reach the database is retried for up to
    `faults.outage_patience()` seconds. `rdb_options` go to `RDBStorage` (e.g.
    `heartbeat_interval`, `grace_period`, `heartbeat_stale_trial_callback`). A journal file is
    written by `SafeJournalFile`, which a full disk cannot leave half-written.
    """
    if storage.startswith("grpc://"):
        from optuna.storages import GrpcStorageProxy

        host, port = _grpc_address(storage)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return GrpcStorageProxy(host=host, port=port)
    if "://" in storage:
        return RetryingRDBStorage(storage, engine_kwargs=_engine_kwargs(storage), **rdb_options)
    from optuna.storages import JournalStorage

    Path(storage).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(SafeJournalFile(storage))


class SafeJournalFile(JournalFileBackend):
    """Optuna's journal file, whose appends a full disk cannot leave half-written.

    Optuna's `JournalFileBackend.append_logs` writes the new lines and fsyncs under the file's
    lock; a write cut short by ENOSPC leaves a partial line, and the next append glues its own
    line to it, which `read_logs` then refuses ("Invalid log format"), so the whole study would
    no longer load. Here the file is cut back to its size before the append (still under the
    lock, so nothing else was appended meanwhile), and a full disk raises `DiskFull`.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = JournalFileSymlinkLock(path)  # Optuna's default lock, kept to append under
        super().__init__(path, lock_obj=self.lock)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        """Append `logs` whole or not at all (`JournalFileBackend.append_logs`' format)."""
        text = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n"
        try:
            self.lock.acquire()
            try:
                size = os.path.getsize(self.path)
                try:
                    with open(self.path, "ab") as f:
                        f.write(text.encode("utf-8"))
                        f.flush()
                        os.fsync(f.fileno())
                except BaseException:
                    os.truncate(self.path, size)  # frees space, never needs it
                    raise
            finally:
                self.lock.release()
        except OSError as err:
            if is_disk_full(err):
                folder = full_folder(err, self.path)
                raise DiskFull(folder, "an Optuna journal write failed") from err
            raise


def _engine_kwargs(url: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("postgresql"):  # libpq's connect_timeout; psycopg 3 and psycopg2 take it
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT}
    return kwargs


def _grpc_address(url: str) -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None or parts.path not in ("", "/"):
        raise ValueError(f"storage {masked(url)!r}: a gRPC proxy is grpc://HOST:PORT")
    return parts.hostname, port


def is_outage(err: BaseException) -> bool:
    """Whether a storage error means the database could not be reached (or dropped the link).

    SQLAlchemy's `OperationalError` (refused, reset, timed out, server shut down; also SQLite's
    "database is locked") and `InterfaceError`, raised bare or as the cause of Optuna's
    `StorageInternalError`.
    """
    from sqlalchemy import exc

    seen: BaseException | None = err
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, (exc.OperationalError, exc.InterfaceError)) or (
            isinstance(seen, exc.DBAPIError) and seen.connection_invalidated
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _first_line(err: BaseException) -> str:
    from sqlalchemy import exc

    cause: BaseException = err
    while isinstance(cause, optuna.exceptions.StorageInternalError) and cause.__cause__:
        cause = cause.__cause__
    if isinstance(cause, exc.DBAPIError) and cause.orig is not None:
        cause = cause.orig
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"


class RetryingRDBStorage(RDBStorage):
    """Optuna's `RDBStorage`, retrying calls that cannot reach the database for a while.

    Each call that fails with an outage (`is_outage`) is tried again with backoff (1 s doubling
    to 30 s) for up to `patience` seconds (default `faults.outage_patience()`); one line says
    so, and one more when the database answers again. Past the window it raises `Unreachable`,
    and until a call succeeds again the next outage error is not waited for (a stopping trial
    then learns in seconds what it cannot record). A full disk (SQLite's "database or disk is
    full") raises `DiskFull` at once. Calls nested inside a retried call are not retried
    again. A state change that committed although its answer was lost is not applied twice:
    retrying it then raises `UpdateFinishedTrialError`, which is read as success, so a trial is
    never finished twice. Still an `RDBStorage`: Optuna caches it and runs heartbeats on it as
    on its own.
    """

    def __init__(self, url: str, *, patience: float | None = None, **kwargs: Any) -> None:
        self._patience = outage_patience() if patience is None else patience
        self._gave_up = False
        self._local = threading.local()
        self._retrying(lambda: RDBStorage.__init__(self, url, **kwargs), "connect")

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state.pop("_local", None)
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        self._local = threading.local()
        super().__setstate__(state)

    def _retrying(self, call: Callable[[], T], name: str) -> T:
        local = self.__dict__.setdefault("_local", threading.local())
        if getattr(local, "depth", 0):
            return call()
        local.depth = 1
        start = failed = None
        wait = 1.0
        try:
            while True:
                try:
                    result = call()
                except optuna.exceptions.UpdateFinishedTrialError:
                    if failed is None or name != "set_trial_state_values":
                        raise
                    result = True  # the lost attempt had committed the state change
                except Exception as err:
                    if is_disk_full(err):
                        folder = full_folder(err, self.url)
                        raise DiskFull(folder, "an Optuna storage write failed") from err
                    if not is_outage(err):
                        raise
                    now = time.monotonic()
                    start = start or now
                    if self._gave_up or now - start >= self._patience:
                        self._gave_up = True
                        store = f"storage {masked(self.url)}"
                        raise Unreachable(store, now - start, _first_line(err)) from err
                    if failed is None:
                        say(
                            f"storage {masked(self.url)} unreachable ({_first_line(err)}); "
                            f"retrying {name} for up to {self._patience:.0f}s"
                        )
                    failed = err
                    time.sleep(min(wait, max(0.0, start + self._patience - now)))
                    wait = min(30.0, wait * 2)
                    continue
                self._gave_up = False
                if failed is not None:
                    say(
                        f"storage {masked(self.url)} reachable again after "
                        f"{time.monotonic() - start:.0f}s"  # type: ignore[operator]
                    )
                return result
        finally:
            local.depth = 0


def _retried(name: str) -> Callable[..., Any]:
    method = getattr(RDBStorage, name)

    @functools.wraps(method)
    def call(self: RetryingRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return self._retrying(lambda: method(self, *args, **kwargs), name)

    return call


# Every call that talks to the database (`_get_trials` is what Optuna's cache calls).
for _name in (
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "get_all_studies",
    "create_new_trial",
    "set_trial_param",
    "get_trial_param",
    "set_trial_state_values",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial_id_from_study_id_trial_number",
    "get_trial",
    "get_all_trials",
    "_get_trials",
    "get_best_trial",
    "record_heartbeat",
    "_get_stale_trial_ids",
):
    setattr(RetryingRDBStorage, _name, _retried(_name))


def check_storage_url(url: str) -> None:
    """Check that an Optuna storage URL names a SQLAlchemy dialect whose driver is installed.

    A value without `://` is a journal-file path and always accepted.

    Raises:
        ValueError: one line naming the URL and what is accepted.
    """
    if "://" not in url:
        return
    if url.startswith("grpc://"):
        _grpc_address(url)
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
    except ArgumentError:
        reason = "not a database URL"
    else:
        try:
            dialect = parsed.get_dialect()
            # The DBAPI module is imported only when an engine is created: do it now.
            (getattr(dialect, "import_dbapi", None) or dialect.dbapi)()  # SQLAlchemy 2 or 1.4
        except NoSuchModuleError:
            reason = f"unknown scheme {parsed.drivername!r}"
        except ImportError as err:
            module = err.name or str(err)
            reason = f"driver for {parsed.drivername!r} not installed (no module {module!r})"
        else:
            return
    raise ValueError(f"storage {masked(url)!r}: {reason}; accepted: {ACCEPTED_STORAGES}")


def check_storage_reachable(storage: str) -> None:
    """Connect once to a database or gRPC storage (a journal file or SQLite needs no server).

    Writes nothing: no table, no study.

    Raises:
        ValueError: one line naming the storage (password masked) and why it cannot be used.
    """
    if "://" not in storage or storage.startswith("sqlite"):
        return
    if storage.startswith("grpc://"):
        import grpc

        host, port = _grpc_address(storage)
        with grpc.insecure_channel(f"{host}:{port}") as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=CONNECT_TIMEOUT)
            except grpc.FutureTimeoutError:
                raise ValueError(
                    f"storage {masked(storage)} cannot be reached: no gRPC storage proxy "
                    f"answered within {CONNECT_TIMEOUT}s"
                ) from None
        return
    _check_database(storage, "storage")


def check_tracking_reachable(uri: str) -> None:
    """Ask an MLflow tracking server (or database) one question, with the worker's credentials.

    An `http(s)://` server gets one authenticated request (`MLFLOW_TRACKING_USERNAME`/
    `MLFLOW_TRACKING_PASSWORD` or `MLFLOW_TRACKING_TOKEN`, as MLflow sends them) and no retries;
    a database URI one connection; a SQLite file nothing. Writes nothing.

    Raises:
        ValueError: one line naming the URI (password masked) and why it cannot be used.
    """
    scheme = uri.split("://", 1)[0]
    if scheme == "sqlite":
        return
    if scheme not in ("http", "https"):
        _check_database(uri, "tracking URI")
        return
    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    creds = get_default_host_creds(uri)
    try:
        response = http_request(
            creds,
            "/api/2.0/mlflow/experiments/search",
            "GET",
            max_retries=0,
            timeout=CONNECT_TIMEOUT,
            params={"max_results": 1},
        )
    except MlflowException as err:
        reason = str(err.message).split(" failed with exception ", 1)[-1]
        errno = re.search(r"\[Errno -?\d+\] ([^'\")]+)", reason)
        reason = errno[1] if errno else " ".join(reason.split())[:200]
        raise ValueError(f"tracking server {masked(uri)} cannot be reached: {reason}") from None
    if response.status_code in (401, 403):
        given = creds.username or creds.token
        raise ValueError(
            f"tracking server {masked(uri)} refused "
            + (
                f"the credentials of user {creds.username!r} (HTTP {response.status_code})"
                if given
                else "a request without credentials; set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
            )
        )
    if response.status_code != 200:
        raise ValueError(
            f"tracking server {masked(uri)} answered HTTP {response.status_code} "
            f"({response.text[:120].strip()!r}); is it an mlflow server?"
        )


def _check_database(url: str, what: str) -> None:
    import sqlalchemy
    from sqlalchemy import exc
    from sqlalchemy.pool import NullPool

    try:
        engine = sqlalchemy.create_engine(url, poolclass=NullPool, **_engine_kwargs(url))
        try:
            with engine.connect():
                pass
        finally:
            engine.dispose()
    except exc.SQLAlchemyError as err:
        raise ValueError(f"{what} {masked(url)} cannot be reached: {_first_line(err)}") from None


def check_tracking_uri(uri: str) -> None:
    """Refuse an MLflow file store (a path or `file:` URI).

    Raises:
        ValueError: one line naming the URI and what is accepted.
    """
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme in ("", "file"):
        # MLflow >= 3.13 refuses the file store unless MLFLOW_ALLOW_FILE_STORE=true
        # (mlflow/mlflow#23634); a database or a server keeps studies working on every 3.x.
        raise ValueError(
            f"tracking URI {masked(uri)!r} is a file store; use sqlite:///PATH/mlflow.db, "
            "postgresql://..., or http(s)://HOST:PORT of an mlflow server"
        )


def make_sampler(spec: StudySpec, *, worker: int, n_existing: int) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded from the study seed, the worker and the study's history.

    Workers get distinct seeds (equal seeds would make parallel workers sample the same
    points), and so does each resumed invocation (`n_existing` trials already in the study;
    the same seed would replay the first invocation's samples). Reproducible only with one
    worker (Optuna FAQ; issues #4412, #3056). Drawing samplers never propose a point the
    study already holds (`DistinctSampler`).
    """
    seed = int(np.random.SeedSequence([spec.seed, worker, n_existing]).generate_state(1)[0])
    if spec.sampler == "grid":
        # A grid study enqueues every point as its own trial (`runner._enqueue_grid`), so its
        # sampler never draws: Optuna's GridSampler would let parallel workers draw the same
        # point, and its `after_trial` fails on trials it did not assign.
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.sampler == "random":
        return DistinctSampler(optuna.samplers.RandomSampler(seed=seed))
    # `group=True`: baseline trials sample nothing, and pairings may get conditional
    # dimensions; grouped multivariate TPE models each set of co-occurring parameters.
    # `constant_liar=True`: once past its random start-up trials, TPE counts running trials as
    # bad results, so parallel workers do not propose the point another worker is running
    # (Optuna's advice for distributed TPE). The three options are marked experimental, which
    # every worker process would print.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        tpe = optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, constant_liar=True
        )
    return DistinctSampler(tpe)  # the liar does not act in the random start-up


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The study's pruner, with guards for noisy RL curves (no pruning before `min_evals`).

    `median` and `hyperband` see one report per evaluation (the mean score over the trial's
    runs), at its agent step; `wilcoxon` sees one report per finished run (its final score),
    at the run's index, and compares trials run by run, which `run_seeds` makes paired.
    """
    g = spec.pruning
    steps = eval_steps(spec.base)
    first = steps[min(g.min_evals, len(steps)) - 1]  # agent step of the `min_evals`-th evaluation
    if spec.pruner == "median":
        median = optuna.pruners.MedianPruner(
            n_startup_trials=g.startup_trials,
            n_warmup_steps=first,  # prunes from step `first` on
            n_min_trials=g.min_trials,
        )
        return optuna.pruners.PatientPruner(median, patience=g.patience) if g.patience else median
    if spec.pruner == "hyperband":
        # Resources are agent steps: the first rung is the `min_evals`-th evaluation.
        return optuna.pruners.HyperbandPruner(
            min_resource=first, max_resource=spec.base.steps, reduction_factor=g.reduction_factor
        )
    if spec.pruner == "wilcoxon":
        return optuna.pruners.WilcoxonPruner(p_threshold=g.p_threshold, n_startup_steps=g.min_evals)
    return optuna.pruners.NopPruner()
