"""Beyond one machine: PostgreSQL storage shared by workers, an mlflow server (with and without
basic auth), the gRPC storage proxy, passwords kept out of every record, and servers that cannot
be reached. Services run on loopback (`tests/services.py`) and are stopped after."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from mlflow import MlflowClient
from services import free_port, start_mlflow_server, start_postgres
from test_study import fake_train, write_study

from hetero_lr.faults import Unreachable
from hetero_lr.study import main
from hetero_lr.study import storage as storage_module
from hetero_lr.study.storage import RetryingRDBStorage, masked, open_storage
from hetero_lr.tracking import ROLE


def _results(tmp_path: Path, empty_db: Path | None = None) -> Path:
    folder = tmp_path / "results"
    folder.mkdir()
    if empty_db is not None:
        (folder / "mlflow.db").write_bytes(empty_db.read_bytes())
    return folder


def _runs(tracking_uri: str, study_name: str) -> dict[str, list]:
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(study_name)
    by_role: dict[str, list] = {"study": [], "trial": [], "seed": [], "confirm": []}
    for run in client.search_runs([exp.experiment_id], max_results=1000):
        by_role[run.data.tags[ROLE]].append(run)
    return by_role


def _database(postgres, prefix: str) -> str:
    return postgres.create_database(f"{prefix}_{secrets.token_hex(4)}")


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, shown",
    [
        ("postgresql://u:s3cret@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql+psycopg://u:p@ss@h/db", "postgresql+psycopg://u:***@h/db"),
        ("postgresql://u@h/db?password=s3cret&sslmode=require", "?password=***&sslmode"),
        ("https://alice:s3cret@mlflow.example:5000", "https://alice:***@mlflow.example:5000"),
        ("http://host:5000/path", "http://host:5000/path"),
        ("results/optuna.journal", "results/optuna.journal"),
        (
            "hetero-lr-study --storage=postgresql://u:s3cret@h/db --tracking-uri http://a:b@h2",
            "--storage=postgresql://u:***@h/db --tracking-uri http://a:***@h2",
        ),
    ],
)
def test_masked_hides_every_password(text, shown):
    out = masked(text)
    assert shown in out
    assert "s3cret" not in out and "p@ss" not in out


@pytest.mark.slow
def test_two_workers_share_one_postgres_study(tmp_path, postgres, empty_db):
    """Two processes, one PostgreSQL study: the trials asked for, each once, runs all ended."""
    url = _database(postgres, "workers")
    results = _results(tmp_path, empty_db)
    study_file = write_study(tmp_path, trials=4, seeds=1)
    args = ["--study", str(study_file), "--results", str(results), "--storage", url]
    assert main([*args, "--study-name", "pg", "--workers", "2"]) == 0

    trials = optuna.load_study(study_name="pg", storage=url).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]  # no number twice
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both processes ran trials
    for t in trials:
        assert set(t.params) == {"pair", "kr", "kl"}

    tracking = f"sqlite:///{results / 'mlflow.db'}"
    runs = _runs(tracking, "pg")
    assert [r.info.status for r in runs["study"]] == ["FINISHED"]
    numbers = [int(r.data.tags["optuna.trial_number"]) for r in runs["trial"]]
    assert sorted(numbers) == [0, 1, 2, 3]  # one MLflow run per trial
    by_number = {t.number: t for t in trials}
    for run in runs["trial"]:
        trial = by_number[int(run.data.tags["optuna.trial_number"])]
        assert run.info.status == "FINISHED"
        assert run.data.params["kr"] == str(trial.params["kr"])
        assert run.data.params["kl"] == str(trial.params["kl"])
    assert len(runs["seed"]) == 4 and {r.info.status for r in runs["seed"]} == {"FINISHED"}


def test_mlflow_server_as_tracking_uri(tmp_path, mlflow_server):
    """A mini study logs through an `mlflow server`: runs and artifacts are there, all ended."""
    results = _results(tmp_path)
    study_file = write_study(tmp_path, trials=2, seeds=1)
    args = ["--study", str(study_file), "--results", str(results), "--study-name", "served"]
    code = main([*args, "--tracking-uri", mlflow_server.url], run_factory=fake_train)
    assert code == 0
    assert not (results / "mlflow.db").exists()  # nothing tracked locally

    runs = _runs(mlflow_server.url, "served")
    assert len(runs["study"]) == 1 and len(runs["trial"]) == 2 and len(runs["seed"]) == 2
    for run in runs["study"] + runs["trial"] + runs["seed"]:
        assert run.info.status == "FINISHED"
    client = MlflowClient(mlflow_server.url)
    trial_run = runs["trial"][0]
    assert "curve.png" in {a.path for a in client.list_artifacts(trial_run.info.run_id)}
    history = client.get_metric_history(runs["seed"][0].info.run_id, "eval/return_mean")
    assert [m.step for m in history] == [100, 200, 300]


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory, empty_db):
    server = start_mlflow_server(
        tmp_path_factory.mktemp("mlflow-auth"), backend_db=empty_db, auth=True
    )
    try:
        yield server
    finally:
        server.stop()


def test_basic_auth_server_needs_the_workers_credentials(
    tmp_path, auth_server, monkeypatch, capsys
):
    """Behind `--app-name basic-auth`: without credentials one line and exit 2, nothing
    written; with MLFLOW_TRACKING_USERNAME/PASSWORD the study logs its runs."""
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    study_file = write_study(tmp_path, trials=1, seeds=1)
    results = tmp_path / "results"
    args = ["--study", str(study_file), "--results", str(results), "--study-name", "guarded"]
    args += ["--tracking-uri", auth_server.url]
    assert main(args, run_factory=fake_train) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert auth_server.url in err and "MLFLOW_TRACKING_USERNAME" in err
    assert not results.exists()

    user, password = auth_server.admin
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    assert main(args, run_factory=fake_train) == 0
    runs = _runs(auth_server.url, "guarded")
    assert len(runs["trial"]) == 1 and runs["trial"][0].info.status == "FINISHED"
    assert password not in capsys.readouterr().out


def test_storage_password_is_in_no_record_and_no_printed_line(tmp_path, postgres, empty_db, capsys):
    """A role with a password: the study runs (so the password was used) and the password is
    in no Optuna attribute, no MLflow tag, param or artifact, and no line the CLI prints."""
    password = f"pw{secrets.token_hex(8)}"
    url = postgres.create_role(f"role_{secrets.token_hex(3)}", password)
    results = _results(tmp_path, empty_db)
    study_file = write_study(tmp_path, trials=2, seeds=1)
    args = ["--study", str(study_file), "--results", str(results), "--storage", url]
    assert main([*args, "--study-name", "secret"], run_factory=fake_train) == 0
    captured = capsys.readouterr()
    assert password not in captured.out + captured.err
    assert masked(url) in captured.out  # the banner names the storage, masked

    study = optuna.load_study(study_name="secret", storage=url)
    records = [study.user_attrs, study._storage.get_study_system_attrs(study._study_id)]
    for t in study.get_trials():
        records += [t.user_attrs, t.system_attrs, t.params]
    assert "postgresql://" in json.dumps(records)  # the command was recorded, masked
    assert password not in json.dumps(records, default=str)

    tracking = f"sqlite:///{results / 'mlflow.db'}"
    runs = _runs(tracking, "secret")
    for run in [r for group in runs.values() for r in group]:
        assert password not in json.dumps([run.data.tags, run.data.params])
    assert runs["study"][0].data.tags["optuna.storage"] == masked(url)
    # Every byte MLflow stored: its database and the artifacts (study.yaml, tables, figures).
    stored = [results / "mlflow.db", *(results / "mlartifacts").rglob("*")]
    for path in stored:
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("what", ["postgresql", "grpc", "http"])
def test_unreachable_service_at_start_is_one_line_exit_2_and_writes_nothing(
    tmp_path, what, monkeypatch, capsys
):
    monkeypatch.setattr(storage_module, "CONNECT_TIMEOUT", 2)
    port = free_port()  # nothing listens there
    service = {
        "postgresql": ("--storage", f"postgresql://u:hidden-pw@127.0.0.1:{port}/db"),
        "grpc": ("--storage", f"grpc://127.0.0.1:{port}"),
        "http": ("--tracking-uri", f"http://u:hidden-pw@127.0.0.1:{port}"),
    }[what]
    monkeypatch.chdir(tmp_path)
    study_file = write_study(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(
        ["--study", str(study_file), "--results", "results", *service], run_factory=fake_train
    )
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert masked(service[1]) in err and "cannot be reached" in err
    assert "hidden-pw" not in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_storage_calls_wait_for_a_database_that_comes_back(capsys):
    """A database that goes away for a while: the call waits for it, says so twice, and a
    trial finished once stays finished once; past the patience it stops in one line."""
    cluster = start_postgres()  # ours: stopped and started below
    try:
        url = cluster.create_database("outage")
        storage = open_storage(url)
        study = optuna.create_study(study_name="outage", storage=storage, direction="maximize")
        trial = study.ask()
        cluster.stop()
        restart = threading.Timer(2.0, cluster.start)
        restart.start()
        study.tell(trial, 1.0)
        restart.join()
        out = capsys.readouterr().out
        assert "unreachable" in out and "reachable again" in out
        assert masked(url) in out
        trials = optuna.load_study(study_name="outage", storage=url).get_trials()
        assert [(t.number, t.state.name, t.value) for t in trials] == [(0, "COMPLETE", 1.0)]

        cluster.stop()
        start = time.monotonic()
        with pytest.raises(Unreachable, match=r"unreachable for \d+s"):
            RetryingRDBStorage(url, patience=2.0, engine_kwargs={"pool_pre_ping": True})
        assert time.monotonic() - start < 30
    finally:
        cluster.remove()


def test_a_lost_answer_to_a_finished_trial_is_not_applied_twice(tmp_path):
    """The commit went through but its answer was lost: the retry finds the trial finished and
    reports success instead of failing the trial or finishing it again."""
    storage = RetryingRDBStorage(f"sqlite:///{tmp_path / 'o.db'}")
    study = optuna.create_study(storage=storage, direction="maximize")
    trial = study.ask()
    calls = []

    def commit_then_lose_answer() -> bool:
        calls.append(1)
        done = optuna.storages.RDBStorage.set_trial_state_values(
            storage, trial._trial_id, optuna.trial.TrialState.COMPLETE, [2.0]
        )
        if len(calls) == 1:
            raise sqlalchemy.exc.OperationalError("COMMIT", {}, Exception("connection reset"))
        return done

    assert storage._retrying(commit_then_lose_answer, "set_trial_state_values") is True
    assert len(calls) == 2
    assert [(t.state.name, t.value) for t in study.get_trials()] == [("COMPLETE", 2.0)]


def test_grpc_storage_proxy(tmp_path, postgres, empty_db):
    """`--storage grpc://HOST:PORT`: an Optuna gRPC proxy in front of PostgreSQL."""
    url = _database(postgres, "grpc")
    port = free_port()
    code = (
        "from optuna.storages import get_storage, run_grpc_proxy_server\n"
        f"run_grpc_proxy_server(get_storage({url!r}), host='127.0.0.1', port={port})\n"
    )
    proxy = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL)
    try:
        open_storage(f"grpc://127.0.0.1:{port}").wait_server_ready(timeout=120)
        results = _results(tmp_path, empty_db)
        study_file = write_study(tmp_path, trials=2, seeds=1)
        args = ["--study", str(study_file), "--results", str(results), "--study-name", "proxied"]
        assert main([*args, "--storage", f"grpc://127.0.0.1:{port}"], run_factory=fake_train) == 0
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)
    trials = optuna.load_study(study_name="proxied", storage=url).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 2


def test_tracking_calls_wait_for_a_server_that_comes_back(monkeypatch, capsys):
    """MLflow calls during a tracking outage: retried with two lines (no URL credentials in
    them); past the patience the call stops the work (`faults.Unreachable`), naming the cause."""
    from mlflow.exceptions import MlflowException

    from hetero_lr import tracking

    monkeypatch.setattr(tracking.time, "sleep", lambda seconds: None)
    down = MlflowException(
        "API request to http://u:hidden-pw@127.0.0.1:5000/api/2.0/mlflow/runs/create failed "
        "with exception HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded"
    )
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise down
        return "run"

    assert tracking.retry(flaky) == "run" and len(calls) == 3
    out = capsys.readouterr().out
    assert "MLflow tracking unreachable" in out and "reachable again" in out
    assert "hidden-pw" not in out and "port=5000" in out

    def gone() -> str:
        raise down

    with pytest.raises(Unreachable, match="Max retries"):
        tracking.retry(gone, patience=0.0)
