"""MLflow tracking: explicit run ids, batching, retries on a locked SQLite, run layout."""

from __future__ import annotations

import json
import multiprocessing
import re
import shutil
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE

from hetero_lr.tracking import (
    END_REASON,
    PARENT,
    ROLE,
    SHARED_VIEW_PREFIX,
    TRIALS_VIEW,
    MlflowLogger,
    Tracker,
    retry,
    trials_link,
    trials_view,
)

LOCKED = "(sqlite3.OperationalError) database is locked"


@pytest.fixture
def tracker(tmp_path, empty_db):
    shutil.copy(empty_db, tmp_path / "mlflow.db")
    t = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=tmp_path / "artifacts")
    t.prepare()
    return t


class CountingClient:
    """Wraps a real client; counts `log_batch` calls and can fail the first ones as locked."""

    def __init__(self, client: MlflowClient, *, fail_first: int = 0) -> None:
        self.client, self.fail_first, self.batches, self.calls = client, fail_first, 0, 0

    def log_batch(self, run_id, **kwargs):
        self.calls += 1
        if self.calls <= self.fail_first:
            raise MlflowException(LOCKED, error_code=TEMPORARILY_UNAVAILABLE)
        self.batches += 1
        return self.client.log_batch(run_id, **kwargs)

    def __getattr__(self, name):
        return getattr(self.client, name)


def test_layout_experiment_study_trial_seed_runs(tracker, tmp_path):
    exp = tracker.experiment("my:study")
    assert tracker.experiment("my:study") == exp  # get, not create twice
    location = tracker.client.get_experiment(exp).artifact_location
    assert location.startswith((tmp_path / "artifacts").as_uri())
    study = tracker.study_run(exp, "my:study")
    assert tracker.study_run(exp, "my:study") == study  # resume finds the same parent
    trial = tracker.start_run(exp, name="t0", role="trial", parent_run_id=study, tags={"a": 1})
    seed = tracker.start_run(exp, name="t0s0", role="seed", parent_run_id=trial)
    runs = {r.info.run_id: r for r in tracker.client.search_runs([exp])}
    assert runs[study].data.tags[ROLE] == "study" and PARENT not in runs[study].data.tags
    assert runs[trial].data.tags[PARENT] == study and runs[trial].data.tags["a"] == "1"
    assert runs[seed].data.tags[PARENT] == trial and runs[seed].data.tags[ROLE] == "seed"
    assert all(r.info.status == "RUNNING" for r in runs.values())


def test_logger_batches_metrics_and_flushes_on_eval(tracker):
    exp = tracker.experiment("batching")
    run = tracker.start_run(exp, name="r", role="seed")
    counting = CountingClient(tracker.client)
    tracker.client = counting
    logger = MlflowLogger(tracker, run, flush_secs=3600)
    for step in range(300):
        logger.log_metrics({"loss/td": step / 10, "charts/epsilon": 1.0}, step)
    assert counting.batches == 0  # 600 metrics, below the 1,000 batch: nothing sent yet
    logger.log_metrics({"eval/return_mean": 5.0}, 300)
    assert counting.batches == 1  # an evaluation flushes at once
    for step in range(301, 1000):
        logger.log_metrics({"loss/td": 1.0, "charts/epsilon": 0.5}, step)
    assert counting.batches == 2  # the buffer reached 1,000 metrics once
    logger.close()
    history = tracker.client.get_metric_history(run, "loss/td")
    assert [m.step for m in history] == list(range(300)) + list(range(301, 1000))
    assert tracker.client.get_run(run).info.status == "FINISHED"


def test_end_sets_status_and_reason_and_overrides_close(tracker):
    exp = tracker.experiment("ending")
    run = tracker.start_run(exp, name="r", role="seed")
    logger = MlflowLogger(tracker, run)
    logger.log_params({"agent.lr": 1e-4, "long": "x" * 7000})
    logger.log_metrics({"loss/td": 1.0}, 1)
    logger.end("KILLED", "pruned by median at evaluation 2")
    logger.close()  # after end: flushes, keeps the status
    info = tracker.client.get_run(run)
    assert info.info.status == "KILLED"
    assert info.data.tags[END_REASON] == "pruned by median at evaluation 2"
    assert info.data.params["agent.lr"] == "0.0001" and len(info.data.params["long"]) == 6000
    assert info.data.metrics["loss/td"] == 1.0


def test_retry_recovers_from_locked_database(tracker):
    exp = tracker.experiment("locked")
    run = tracker.start_run(exp, name="r", role="seed")
    tracker.client = CountingClient(tracker.client, fail_first=3)
    logger = MlflowLogger(tracker, run)
    logger.log_metrics({"eval/return_mean": 1.5}, 10)  # flushes; fails 3 times, then lands
    assert tracker.client.calls == 4
    assert tracker.client.client.get_run(run).data.metrics["eval/return_mean"] == 1.5


def test_retry_gives_up_and_passes_other_errors_through():
    calls = []

    def locked():
        calls.append(1)
        raise MlflowException(LOCKED, error_code=TEMPORARILY_UNAVAILABLE)

    with pytest.raises(MlflowException, match="locked"):
        retry(locked, attempts=3, delay=0.001)
    assert len(calls) == 3

    def invalid():
        calls.append(1)
        raise MlflowException("bad value", error_code=INVALID_PARAMETER_VALUE)

    calls.clear()
    with pytest.raises(MlflowException, match="bad value"):
        retry(invalid, attempts=3, delay=0.001)
    assert len(calls) == 1


def _hammer(uri: str, run_id: str, key: str, n: int) -> None:
    logger = MlflowLogger(Tracker(uri), run_id, flush_every=1)  # one write per metric
    for step in range(n):
        logger.log_metrics({key: float(step)}, step)
    logger.flush()


def test_two_processes_writing_one_sqlite_database_lose_nothing(tracker):
    """Two processes write at once to the same SQLite store, one transaction per metric."""
    exp = tracker.experiment("contention")
    runs = [tracker.start_run(exp, name=f"r{i}", role="seed") for i in range(2)]
    ctx = multiprocessing.get_context("spawn")
    n = 80
    procs = [
        ctx.Process(target=_hammer, args=(tracker.tracking_uri, runs[i], f"m{i}", n))
        for i in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    for i in range(2):
        history = tracker.client.get_metric_history(runs[i], f"m{i}")
        assert sorted(m.step for m in history) == list(range(n))


def test_the_shared_view_format_is_the_one_the_installed_mlflow_ui_reads():
    """The trial view is an experiment tag the UI finds by prefix and reads as JSON with the
    experiment page's keys; this fails when an MLflow upgrade renames any of them."""
    import mlflow

    build = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    bundle = "".join(p.read_text(errors="ignore") for p in build.glob("*.js"))
    assert f'"{SHARED_VIEW_PREFIX}"' in bundle and '"viewStateShareKey"' in bundle
    for key in trials_view():
        assert f'"{key}"' in bundle, key
    assert "JSON.parse" in bundle and "workflowType" in bundle
    # A shared view is ignored while the URL has any of the page's own query keys.
    (facets,) = re.findall(r'=\[("searchFilter","orderByKey","orderByAsc"[^\]]*)\]', bundle)
    facets = set(json.loads(f"[{facets}]"))
    assert {"searchFilter", "orderByKey", "orderByAsc"} <= facets & set(trials_view())
    link = trials_link("sqlite:///x.db", "1")
    assert not facets & set(parse_qs(urlsplit(link).fragment.split("?", 1)[1]))


def test_the_study_saves_its_trial_view_and_links_to_it(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracker.prepare()
    experiment = tracker.experiment("s")
    tracker.share_trials_view(experiment)
    tags = tracker.client.get_experiment(experiment).tags
    assert json.loads(tags[SHARED_VIEW_PREFIX + TRIALS_VIEW]) == trials_view()
    link = trials_link(f"sqlite:///{tmp_path / 'mlflow.db'}", experiment)
    assert f"viewStateShareKey={TRIALS_VIEW}" in link and "workflowType=machine_learning" in link
