"""MLflow tracking for studies: explicit run ids, batched metrics, retries on a locked SQLite.

Layout of a study (`hetero_lr.study`): one experiment per study; a parent run for the study
(tag `hetero_lr.role=study`); a child run per Optuna trial (`role=trial`); a nested run per
training run of that trial, i.e. per seed and environment (`role=seed`). Nesting is MLflow's
`mlflow.parentRunId` tag, which `mlflow ui` shows as a tree.

Every call names its run id through `MlflowClient`: several threads or processes log at once,
and the fluent API's process-global "active run" would mix them. Each client call is retried
with exponential backoff when the store reports a transient failure: SQLite answers "database
is locked" when two processes write at once beyond its busy timeout, or at once when a reader
must become a writer (the reason Optuna's FAQ advises against SQLite for parallel workers).
A full disk is never retried (`hetero_lr.faults.DiskFull` at once), and an outage longer than
the retry window ends in `hetero_lr.faults.Unreachable`: both stop a study's trial resumably.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import random
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlencode, urlsplit, urlunsplit

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
)

from hetero_lr.faults import (
    DiskFull,
    Unreachable,
    full_folder,
    is_disk_full,
    outage_patience,
    safe_uri,
)

T = TypeVar("T")
RunStatus = Literal["FINISHED", "KILLED", "FAILED"]

ROLE = "hetero_lr.role"
"""Tag naming a run's place in the layout: `study`, `trial`, `seed` or `confirm`."""
DESCRIPTION = "mlflow.note.content"
"""The run description `mlflow ui` shows (Markdown) and `start_run(description=...)` sets."""
END_REASON = "hetero_lr.end_reason"
"""Tag holding why a run ended as it did (pruning step, divergence message, interruption)."""
PARENT = "mlflow.parentRunId"

_LOCKED = ("database is locked", "database table is locked")
_OUTAGE = (
    "TEMPORARILY_UNAVAILABLE",  # the SQLAlchemy store's OperationalError (lock or lost link)
    "Max retries exceeded",  # an HTTP server gone, after MLflow's own retries
    "Connection refused",
    "Connection reset",
    "Connection aborted",
    "RemoteDisconnected",
    "Read timed out",
    "server closed the connection",
    "connection failed",
)


def is_transient(err: BaseException) -> bool:
    """Whether an error is worth retrying: a locked SQLite database, a busy MLflow store, or a
    tracking server or database that cannot be reached right now. A full disk is not: MLflow
    reports SQLite's "database or disk is full" as TEMPORARILY_UNAVAILABLE, like a lock."""
    if not isinstance(err, (MlflowException, sqlite3.OperationalError)) or is_disk_full(err):
        return False
    text = f"{getattr(err, 'error_code', '')} {err}"
    return any(s in text for s in (*_LOCKED, *_OUTAGE))


def _is_locked(err: BaseException) -> bool:
    return any(s in str(err) for s in _LOCKED)


def _reason(err: BaseException) -> str:
    # MLflow's REST message starts with the request URL, which may carry credentials: keep
    # only the cause (host, port and what went wrong); a database error's first line (the
    # next ones are the SQL).
    text = str(getattr(err, "message", err)).split(" failed with exception ", 1)[-1].strip()
    return " ".join(text.splitlines()[0].split())[:300] if text else type(err).__name__


# Stores this process gave up on (an outage past the window) and has not reached since: a later
# call fails at once instead of waiting a whole window again, so a trial stopped by an outage
# ends its runs (or finds that it cannot) in seconds. A call that succeeds clears its store.
_GAVE_UP: set[str] = set()


def retry(
    fn: Callable[..., T],
    *args: Any,
    attempts: int = 10,
    delay: float = 0.05,
    max_delay: float = 5.0,
    patience: float | None = None,
    store: str | None = None,
    **kwargs: Any,
) -> T:
    """Call `fn(*args, **kwargs)`, retrying transient errors (`is_transient`) with backoff.

    A locked database: up to `attempts` calls, waiting `delay * 2**k` (at most `max_delay`,
    times a random factor in [0.5, 1.5) so that two processes that collided do not collide
    again) before attempt k + 2. A tracking server or database out of reach: retried for up to
    `patience` seconds (default `outage_patience()`; waits of 1 s doubling to 30 s; an HTTP
    server also gets MLflow's own retries inside each call), with one line when the outage
    starts and one when it ends; once this process gave up on `store`, its next outage error is
    not waited for. Retrying a call whose answer was lost can log a metric twice; it never ends
    a run twice. `store` (the tracking URI) names the folder or server in the errors below.

    Raises:
        DiskFull: the store, or the artifact folder, has no space left (never retried).
        Unreachable: the store did not answer within `patience` seconds.
        Exception: the last error once lock retries are spent, or any other error.
    """
    patience = outage_patience() if patience is None else patience
    key = store or ""
    attempt, outage = 0, None
    wait = 1.0
    while True:
        try:
            result = fn(*args, **kwargs)
        except (MlflowException, sqlite3.OperationalError, OSError) as err:
            if is_disk_full(err):
                raise DiskFull(full_folder(err, store), "an MLflow write failed") from err
            if isinstance(err, OSError) or not is_transient(err):
                raise
            if _is_locked(err):
                attempt += 1
                if attempt >= attempts:
                    raise
                time.sleep(min(max_delay, delay * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5))
                continue
            now = time.monotonic()
            if outage is None:
                outage = now
                if key not in _GAVE_UP:
                    _say(
                        f"MLflow tracking unreachable ({_reason(err)}); retrying for up to "
                        f"{patience:.0f}s"
                    )
            if key in _GAVE_UP or now - outage >= patience:
                _GAVE_UP.add(key)
                where = f"MLflow tracking {safe_uri(store)}" if store else "MLflow tracking"
                raise Unreachable(where, now - outage, _reason(err)) from err
            time.sleep(min(wait, max(0.0, outage + patience - now)))
            wait = min(30.0, wait * 2)
            continue
        _GAVE_UP.discard(key)
        if outage is not None:
            _say(f"MLflow tracking reachable again after {time.monotonic() - outage:.0f}s")
        return result


def _say(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


@cache
def source_tags() -> dict[str, str]:
    """MLflow's standard provenance tags (`mlflow/utils/mlflow_tags.py`): who ran what, from
    which commit of this package (the UI's User, Source and Version columns)."""
    tags = {"mlflow.source.type": "LOCAL", "mlflow.source.name": "hetero_lr.study"}
    with contextlib.suppress(OSError, KeyError):  # no user name in some containers
        tags["mlflow.user"] = getpass.getuser()
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


@cache
def git_commit() -> str | None:
    """The commit of the checkout this package runs from, None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


SHARED_VIEW_PREFIX = "mlflow.sharedViewState."
"""Experiment tags under this prefix hold a runs-table view `mlflow ui` opens from a link with
`viewStateShareKey=KEY` (MLflow 3's `EXPERIMENT_PAGE_VIEW_STATE_SHARE_TAG_PREFIX`; the value is
plain JSON, one of the encodings its `useSharedExperimentViewState` reads)."""
TRIALS_VIEW = "hetero-lr-trials"
"""The share key of a study's trial view."""
TRIAL_COLUMNS = (
    "metrics.`objective`",
    "metrics.`objective_ci_low`",
    "metrics.`objective_ci_high`",
    "metrics.`delta_vs_baseline`",
    "metrics.`delta_vs_baseline_ci_low`",
    "metrics.`delta_vs_baseline_ci_high`",
    "metrics.`p_improvement`",
    "params.`target.kr`",
    "params.`target.kl`",
    "tags.`pairing`",
    "tags.`best`",
)
r"""Runs-table columns of the trial view, in MLflow's canonical `TYPE.\`name\`` form."""


def readable(value: float, digits: int = 4) -> float:
    """`value` rounded to `digits` significant digits: what the UI and tables show, without
    float noise (0.44999999 for 0.45). Optuna keeps the exact value."""
    if value != value or value in (float("inf"), float("-inf")) or value == 0:
        return value
    return float(f"{value:.{digits}g}")


def trials_view() -> dict[str, Any]:
    """The trial view's state: trial runs only, best first, the columns a reader needs first
    (the experiment page's query keys `searchFilter`, `orderByKey`, `orderByAsc`, and the UI
    state key `selectedColumns`)."""
    return {
        "searchFilter": f"tags.`{ROLE}` = 'trial'",
        "orderByKey": "metrics.`objective`",
        "orderByAsc": False,
        "selectedColumns": list(TRIAL_COLUMNS),
        "columnOrder": list(TRIAL_COLUMNS),  # else the UI sorts metric columns by name
        # About wide enough for each header (the default 120 px cuts `delta_vs_baseline_ci_low`).
        "columnWidths": {c: max(80, 6 * len(c.split("`")[1]) + 16) for c in TRIAL_COLUMNS},
    }


def trials_link(tracking_uri: str, experiment_id: str) -> str:
    """A link to a study's trial runs in `mlflow ui`, best first, in the machine-learning view.

    MLflow 3's UI opens in its GenAI view unless `workflowType=machine_learning` is in the URL;
    `viewStateShareKey` opens the view `Tracker.share_trials_view` saved: filter, order and
    columns. The link carries nothing else: the UI ignores a shared view whenever the URL has
    any of the experiment page's own query keys (`searchFilter`, `orderByKey`, ...; MLflow
    3.18's `useSharedExperimentViewState`). A local store has no server: the link points at
    `mlflow ui`'s default address.
    """
    query = urlencode({"workflowType": "machine_learning", "viewStateShareKey": TRIALS_VIEW})
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs?{query}"


def ui_base(tracking_uri: str) -> str:
    """Where `mlflow ui` serves this store: the server itself (without credentials), or the
    UI's default local address for a store without a server."""
    if not tracking_uri.startswith("http"):
        return "http://127.0.0.1:5000"
    parts = urlsplit(tracking_uri)
    netloc = parts.netloc.rsplit("@", 1)[-1]  # a link never carries credentials
    return urlunsplit((parts.scheme, netloc, parts.path, "", "")).rstrip("/")


def run_link(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """A link to one run's page in `mlflow ui`, machine-learning view."""
    return (
        f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}"
        "?workflowType=machine_learning"
    )


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///PATH` tracking URI, None for other URIs."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri.removeprefix("sqlite:///"))


class Tracker:
    """A retrying `MlflowClient` with the helpers that lay out a study's runs.

    Args:
        tracking_uri: Any MLflow tracking URI: `sqlite:///...`, `postgresql://...`,
            `http://host:5000` (an `mlflow server`), ...
        artifact_root: Folder for the artifacts of experiments this tracker creates; None
            leaves it to the tracking server (or MLflow's default `./mlruns`, relative to the
            working directory, which is why a local study passes its results folder).
    """

    def __init__(self, tracking_uri: str, *, artifact_root: str | Path | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.artifact_root = Path(artifact_root).resolve() if artifact_root else None
        self.client = MlflowClient(tracking_uri)

    def retry(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`retry(fn, ...)` with faults named by this store (`tracking.retry`)."""
        return retry(fn, *args, store=self.tracking_uri, **kwargs)

    def prepare(self) -> None:
        """Create the store's schema now, once, and put a SQLite store in WAL mode.

        Call it in one process before starting workers: parallel processes racing on a new
        database's schema migration fail (mlflow/mlflow#4123). WAL lets readers and the one
        writer proceed at once (https://www.sqlite.org/wal.html); the mode persists in the file.
        """
        self.retry(self.client.search_experiments, max_results=1)
        path = sqlite_path(self.tracking_uri)
        if path is not None:
            self.retry(_enable_wal, path)

    def experiment(self, name: str, *, tags: Mapping[str, Any] | None = None) -> str:
        """Id of the experiment `name`, created (or restored from deletion) if needed."""
        found = self.retry(self.client.get_experiment_by_name, name)
        if found is None:
            # One folder per experiment, as MLflow's own default root does it.
            folder = self.artifact_root / _safe(name) if self.artifact_root else None
            location = folder.as_uri() if folder else None
            try:
                return self.retry(self.client.create_experiment, name, location, dict(tags or {}))
            except MlflowException as err:
                if "RESOURCE_ALREADY_EXISTS" not in f"{err.error_code} {err}":
                    raise
                found = self.retry(self.client.get_experiment_by_name, name)  # another process won
        if found.lifecycle_stage == "deleted":
            self.retry(self.client.restore_experiment, found.experiment_id)
        return found.experiment_id

    def share_trials_view(self, experiment_id: str) -> None:
        """Save the trial view (`trials_view`) as the experiment's shared view `TRIALS_VIEW`."""
        value = json.dumps(trials_view())
        self.retry(
            self.client.set_experiment_tag, experiment_id, SHARED_VIEW_PREFIX + TRIALS_VIEW, value
        )

    def study_run(self, experiment_id: str, name: str) -> str:
        """Id of the study's parent run: the existing one (resume) or a new one; RUNNING."""
        runs = self.retry(
            self.client.search_runs,
            [experiment_id],
            filter_string=f"tags.`{ROLE}` = 'study'",
            order_by=["attributes.start_time ASC"],
            max_results=1,
        )
        if runs:
            run_id = runs[0].info.run_id
            self.reopen(run_id)
            return run_id
        return self.start_run(experiment_id, name=name, role="study")

    def reopen(self, run_id: str) -> None:
        """Mark an ended run RUNNING again, without its end reason: a resumed study (or
        confirmation) goes on in it."""
        self.retry(self.client.update_run, run_id, status="RUNNING")
        if END_REASON in self.retry(self.client.get_run, run_id).data.tags:
            self.retry(self.client.delete_tag, run_id, END_REASON)

    def start_run(
        self,
        experiment_id: str,
        *,
        name: str,
        role: Literal["study", "trial", "seed", "confirm"],
        parent_run_id: str | None = None,
        tags: Mapping[str, Any] | None = None,
        description: str | None = None,
    ) -> str:
        """Create a RUNNING run (nested under `parent_run_id` if given) and return its id."""
        all_tags = {**source_tags(), ROLE: role, **(tags or {})}
        if description:
            all_tags[DESCRIPTION] = description
        if parent_run_id:
            all_tags[PARENT] = parent_run_id
        run = self.retry(
            self.client.create_run,
            experiment_id,
            tags={k: _text(v) for k, v in all_tags.items()},
            run_name=name,
        )
        return run.info.run_id

    def end_run(self, run_id: str, status: RunStatus, reason: str | None = None) -> None:
        """End a run with `status`, recording `reason` in the `hetero_lr.end_reason` tag."""
        if reason:
            self.set_tags(run_id, {END_REASON: reason})
        self.retry(self.client.set_terminated, run_id, status)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Set tags (mutable, unlike params) in one request."""
        batch = [RunTag(k, _text(v)) for k, v in tags.items()]
        for i in range(0, len(batch), MAX_PARAMS_TAGS_PER_BATCH):
            self.retry(self.client.log_batch, run_id, tags=batch[i : i + MAX_PARAMS_TAGS_PER_BATCH])

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Log params (strings of at most MLflow's 6,000 characters) in as few requests as fit."""
        batch = [Param(k, _text(v)) for k, v in params.items()]
        for i in range(0, len(batch), MAX_PARAMS_TAGS_PER_BATCH):
            self.retry(
                self.client.log_batch, run_id, params=batch[i : i + MAX_PARAMS_TAGS_PER_BATCH]
            )

    def log_metrics(self, run_id: str, metrics: list[Metric]) -> None:
        """Log `Metric` entities, at most MLflow's 1,000 per request."""
        for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            self.retry(
                self.client.log_batch, run_id, metrics=metrics[i : i + MAX_METRICS_PER_BATCH]
            )

    def log_figure(self, run_id: str, figure: Any, artifact_file: str) -> None:
        """Save a matplotlib figure as an artifact of the run."""
        self.retry(self.client.log_figure, run_id, figure, artifact_file)

    def log_dict(self, run_id: str, data: dict[str, Any], artifact_file: str) -> None:
        """Save a dict as a JSON or YAML artifact (by the file's extension)."""
        self.retry(self.client.log_dict, run_id, data, artifact_file)

    def log_table(self, run_id: str, data: Any, artifact_file: str) -> None:
        """Save a table (dict of columns or DataFrame) as a JSON artifact the UI shows."""
        self.retry(self.client.log_table, run_id, data, artifact_file)

    def rename(self, run_id: str, name: str) -> None:
        """Rename a run (e.g. to show its result in the UI's always-visible name column)."""
        self.retry(self.client.update_run, run_id, name=name)

    def describe(self, run_id: str, text: str) -> None:
        """Set the run's description (Markdown in `mlflow ui`)."""
        self.set_tags(run_id, {DESCRIPTION: text})

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        """Save text as an artifact of the run."""
        self.retry(self.client.log_text, run_id, text, artifact_file)

    def load_dict(self, run_id: str, artifact_file: str) -> dict[str, Any] | None:
        """A JSON artifact of the run (as `log_dict` saved it), None if the run has none."""
        names = {a.path for a in self.retry(self.client.list_artifacts, run_id)}
        if artifact_file not in names:
            return None
        with tempfile.TemporaryDirectory() as folder:  # a study runs with the bar off
            path = self.retry(self.client.download_artifacts, run_id, artifact_file, folder)
            return json.loads(Path(path).read_text())


class MlflowLogger:
    """A `hetero_lr.loggers.Logger` writing one training run to one MLflow run, by id.

    Metrics are buffered and sent with `log_batch`, so per-step metrics do not cost a database
    round trip each: the buffer is flushed when it holds `flush_every` metrics, when
    `flush_secs` have passed since the last flush, when a key starts with one of
    `flush_prefixes` (evaluations show up at once in `mlflow ui`), and on `flush`/`close`/`end`.

    Args:
        tracker: Where to log.
        run_id: The run to log to (e.g. from `Tracker.start_run`).
        flush_every: Metrics buffered before a flush (MLflow takes 1,000 per request).
        flush_secs: Longest time a metric waits in the buffer (checked when logging).
        flush_prefixes: Metric-key prefixes that trigger an immediate flush.
    """

    def __init__(
        self,
        tracker: Tracker,
        run_id: str,
        *,
        flush_every: int = MAX_METRICS_PER_BATCH,
        flush_secs: float = 15.0,
        flush_prefixes: tuple[str, ...] = ("eval/",),
    ) -> None:
        self.tracker = tracker
        self.run_id = run_id
        self.flush_every = flush_every
        self.flush_secs = flush_secs
        self.flush_prefixes = flush_prefixes
        self.ended = False
        self._buffer: list[Metric] = []
        self._last_flush = time.monotonic()

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log the run's settings as MLflow params (immediately)."""
        self.tracker.log_params(self.run_id, params)

    def rewind(self, step: int) -> None:
        """MLflow keeps metric history: a resumed run's repeated steps appear twice."""

    def log_file(self, path: Path, folder: str) -> None:
        """Upload a file as an artifact of the run, under `folder`."""
        self.tracker.retry(self.tracker.client.log_artifact, self.run_id, str(path), folder)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Buffer scalar metrics at an agent step; None values are skipped."""
        now_ms = int(time.time() * 1000)
        self._buffer.extend(
            Metric(key, float(value), now_ms, int(step))
            for key, value in metrics.items()
            if value is not None
        )
        if (
            len(self._buffer) >= self.flush_every
            or time.monotonic() - self._last_flush >= self.flush_secs
            or any(key.startswith(self.flush_prefixes) for key in metrics)
        ):
            self.flush()

    def flush(self) -> None:
        """Send the buffered metrics."""
        if self._buffer:
            batch, self._buffer = self._buffer, []
            self.tracker.log_metrics(self.run_id, batch)
        self._last_flush = time.monotonic()

    def close(self) -> None:
        """Flush, and end the run as FINISHED unless `end` already ended it."""
        self.flush()
        if not self.ended:
            self.end("FINISHED")

    def end(self, status: RunStatus, reason: str | None = None) -> None:
        """Flush and end the run with `status` and `reason` (may override an earlier end)."""
        self.flush()
        self.tracker.end_run(self.run_id, status, reason)
        self.ended = True


def _enable_wal(path: Path) -> None:
    with sqlite3.connect(path, timeout=30) as db:
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
        if mode.lower() != "wal":
            db.execute("PRAGMA journal_mode=WAL")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _text(value: Any) -> str:
    text = str(value)
    if len(text) > MAX_PARAM_VAL_LENGTH:
        return text[: MAX_PARAM_VAL_LENGTH - 3] + "..."
    return text
