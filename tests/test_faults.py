"""Faults a long study meets on shared machines: damaged, partial and planted checkpoints.

Checkpoints hold plain data (tensors, numbers, strings, containers) and load with
`torch.load(weights_only=True)`; every write records a sha256 and keeps the previous good file.
The study tests kill a tiny CartPole study mid-trial (`test_recovery`'s harness), damage its
checkpoint files, run the same command again and check that one line names the fault, no
traceback shows, the retried trial completes without using up another retry, and its final
weights equal those of the study never stopped.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE
from test_recovery import _stop_midway, _study, _weights
from test_study import REPO
from tiny_configs import tiny

from hetero_lr import checkpoint, tracking
from hetero_lr.checkpoint import CheckpointError
from hetero_lr.config import EnvConfig
from hetero_lr.envs import MINATAR_GAMES, make_env
from hetero_lr.faults import PATIENCE_ENV, DiskFull, Unreachable
from hetero_lr.run import TrainingRun
from hetero_lr.train import train

# ---------------------------------------------------------------------------------------------
# Games as plain data


GAMES = ["CartPole-v1", "Acrobot-v1", *(f"MinAtar/{game}-v1" for game in MINATAR_GAMES)]


@pytest.mark.parametrize("env_id", GAMES)
def test_a_saved_game_continues_exactly_from_plain_data(env_id, tmp_path):
    # Short episodes and sticky actions: resets and every random stream are exercised.
    cfg = EnvConfig(id=env_id, num_envs=2, sticky_actions=0.1, max_episode_frames=60)
    rng = np.random.default_rng(0)
    with closing(make_env(cfg, seed=1)) as played, closing(make_env(cfg, seed=2)) as restored:
        played.reset(), restored.reset()
        for _ in range(150):
            played.step(rng.integers(played.n_actions, size=2))
        torch.save(played.state_dict(), tmp_path / "env.pt")
        assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "env.pt") == []
        assert restored.load_state_dict(torch.load(tmp_path / "env.pt", weights_only=True))
        ended = 0
        for _ in range(300):
            actions = rng.integers(played.n_actions, size=2)
            a, b = played.step(actions), restored.step(actions)
            for name in ("obs", "final_obs", "rewards", "terminated", "truncated", "ended"):
                assert np.array_equal(getattr(a, name), getattr(b, name)), name
            assert a.episode_returns == b.episode_returns
            ended += len(a.episode_returns)
        assert ended >= 4


def test_an_older_versions_checkpoint_is_refused_in_one_line(tmp_path):
    with TrainingRun(tiny()) as run:
        run.run_until(100)
        old = run.state_dict()
        old["obs"] = old["obs"].numpy()  # as versions before this one saved it (and pickled games)
        torch.save(old, tmp_path / "checkpoint.pt")
        with pytest.raises(CheckpointError) as err:
            run.load(tmp_path / "checkpoint.pt")
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "checkpoint.pt") in message
    assert "written by an older version of hetero_lr" in message
    assert "cannot be loaded safely" in message


# ---------------------------------------------------------------------------------------------
# Checkpoint files: verified, two deep, never unpickled


def _state(step: int) -> dict:
    return {"step": step, "weights": torch.full((10_000,), float(step)), "name": "run"}


def _truncate(path: Path) -> None:
    """A partial copy: the first half of the file."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_a_byte(path: Path) -> None:
    """A bad disk: one byte changed, the size unchanged."""
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))


def test_save_keeps_the_previous_checkpoint_and_records_both_hashes(tmp_path):
    path = tmp_path / "run.pt"
    for step in (1, 2):
        checkpoint.save(_state(step), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.pt", "run.pt.prev", "run.pt.sha256"]
    loaded = checkpoint.load(path)
    assert loaded.state["step"] == 2 and not loaded.previous and loaded.fault is None
    assert torch.load(tmp_path / "run.pt.prev", weights_only=True)["step"] == 1
    if shutil.which("sha256sum"):  # the record is sha256sum's format: checkable by hand
        subprocess.run(["sha256sum", "--check", "--quiet", "run.pt.sha256"], cwd=tmp_path,
                       check=True)  # fmt: skip
    checkpoint.remove(path)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("damage", [_truncate, _flip_a_byte], ids=["truncated", "flipped"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage):
    path = tmp_path / "run.pt"
    checkpoint.save(_state(1), path)
    checkpoint.save(_state(2), path)
    damage(path)
    loaded = checkpoint.load(path)
    assert loaded.state["step"] == 1 and loaded.previous
    assert (
        loaded.fault
        == f"checkpoint {path} is damaged (its sha256 is not the one recorded when written)"
    )
    # The next save drops the damaged file, not the good previous one: two good ones again.
    checkpoint.save(_state(3), path)
    assert checkpoint.load(path).state["step"] == 3
    _truncate(path)
    assert checkpoint.load(path).state["step"] == 1


def test_no_good_checkpoint_raises_one_line_naming_each_file(tmp_path):
    path = tmp_path / "run.pt"
    checkpoint.save(_state(1), path)
    checkpoint.save(_state(2), path)
    _truncate(path)
    _flip_a_byte(tmp_path / "run.pt.prev")
    with pytest.raises(CheckpointError) as err:
        checkpoint.load(path)
    message = str(err.value)
    assert "\n" not in message
    assert f"{path} is damaged" in message and f"{path}.prev is damaged" in message
    assert checkpoint.load(tmp_path / "none.pt") is None  # no checkpoint is no fault


class Payload:
    """Creates the marker file when unpickled: what a planted checkpoint could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_carrying_a_pickle_is_refused_without_running_it(tmp_path):
    marker, path = tmp_path / "ran", tmp_path / "run.pt"
    torch.save({"step": torch.tensor(1), "payload": Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="written by an older version") as err:
        checkpoint.load(path)
    assert str(err.value).endswith("cannot be loaded safely") and not marker.exists()
    # A forged record passes the hash check; `weights_only` still refuses the pickle.
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    (tmp_path / "run.pt.sha256").write_text(f"{digest}  run.pt\n")
    with pytest.raises(CheckpointError, match="holds pickled objects"):
        checkpoint.load(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is live: a full unpickling runs it
    assert marker.exists()


# A process that saves a checkpoint, then SIGKILLs itself during the second save: while the new
# file's bytes are written, or just before one of the three renames that follow.
KILL_SCRIPT = """
import os, signal, sys
import torch
from hetero_lr import checkpoint

path, point = sys.argv[1], sys.argv[2]
state = lambda step: {"step": step, "weights": torch.full((10_000,), float(step))}
checkpoint.save(state(1), path)
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
if point == "writing":
    write, calls = checkpoint._HashingWriter.write, []
    def slow_write(self, data):
        calls.append(1)
        if len(calls) == 3:
            die()
        return write(self, data)
    checkpoint._HashingWriter.write = slow_write
else:
    replace, calls = os.replace, []
    before = ["recording", "moving-aside", "renaming"].index(point) + 1
    def dying_replace(src, dst):
        calls.append(1)
        if len(calls) == before:
            die()
        replace(src, dst)
    os.replace = dying_replace
checkpoint.save(state(2), path)
"""


@pytest.mark.parametrize("point", ["writing", "recording", "moving-aside", "renaming"])
def test_sigkill_during_a_checkpoint_write_leaves_the_previous_one_usable(tmp_path, point):
    path = tmp_path / "run.pt"
    environ = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(path), point], env=environ,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr
    loaded = checkpoint.load(path)
    assert loaded.state["step"] == 1  # the save that was cut short is not half-there
    checkpoint.save(_state(3), path)  # the next save cleans up and keeps two good files
    assert checkpoint.load(path).state["step"] == 3
    _truncate(path)
    assert checkpoint.load(path).state["step"] == 1


def test_train_resumes_from_the_previous_checkpoint_or_says_why_it_cannot(tmp_path, capsys):
    from hetero_lr.train import main

    first = train(tiny(), out=tmp_path, progress=False)  # checkpoints at 400 and 800
    _truncate(tmp_path / "checkpoint.pt")
    resumed = train(tiny(steps=1_200), out=tmp_path, resume=True, progress=False)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.endswith("is damaged (its sha256 is not the one recorded when written); "
                         "resumed from the previous one")  # fmt: skip
    assert resumed.eval_steps == [400, 800, 1_200]
    assert resumed.eval_returns[:2] == first.eval_returns  # the same run, from step 400
    for name in ("checkpoint.pt", "checkpoint.pt.prev"):
        _flip_a_byte(tmp_path / name)
    argv = ["--pair", "mlp:mlp", "--env", "CartPole-v1", "--out", str(tmp_path), "--resume"]
    assert main([*argv, "--no-progress"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "is damaged" in line and line.endswith("run without --resume to start from step 0")


def test_a_runs_checkpoints_say_in_one_line_how_it_resumed(tmp_path):
    from fake_runs import fake_runs

    from hetero_lr.study.recovery import TrialCheckpoints
    from hetero_lr.study.runs import RunSlot
    from hetero_lr.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = tracker.experiment("x")
    parent = tracker.start_run(experiment, name="arm", role="trial")
    checkpoints = TrialCheckpoints(tmp_path / "ckpt", "x", 0, arm="mlp:mlp")

    def slot_at(step: int) -> RunSlot:
        slot = RunSlot.of(tiny(), "CartPole-v1", 7, "c0 seed=7", pairing="mlp:mlp")
        slot.start(fake_runs(lambda c, s: s), tracker, experiment, role="confirm",
                   parent_run_id=parent, description="d")  # fmt: skip
        if step:
            slot.run.run_until(step)  # type: ignore[union-attr]
        return slot

    assert checkpoints.resume(slot_at(0)).line("its") is None  # no checkpoint: nothing to say
    for step in (100, 200):
        checkpoints.save(slot_at(step))
    assert checkpoints.resume(slot_at(0)).line("its") == "resumed at step 200 from its checkpoint"
    (path,) = (tmp_path / "ckpt").rglob("*.pt")
    _truncate(path)
    resumed = checkpoints.resume(slot_at(0))
    assert resumed.line("its") == (
        f"resumed at step 100 from its previous checkpoint (checkpoint {path} is damaged "
        "(its sha256 is not the one recorded when written))"
    )
    assert resumed.tags == {"resumed_from_step": 100, "checkpoint_fault": resumed.fault}
    _flip_a_byte(path.with_name(path.name + ".prev"))
    resumed = checkpoints.resume(slot_at(0))
    assert resumed.step is None and resumed.line("its").startswith("starts from step 0 (")
    checkpoints.discard(slot_at(0))
    assert not list((tmp_path / "ckpt").rglob("*.*"))


# ---------------------------------------------------------------------------------------------
# A study killed mid-trial whose checkpoints are then damaged


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> tuple[dict[str, dict[str, torch.Tensor]], Path]:
    """Final weights of the study never stopped, and the same study SIGKILLed past step 200:
    each of its two runs has its checkpoint at step 200 and the previous one at step 100."""
    tmp_path = tmp_path_factory.mktemp("faults")
    argv, environ = _study(tmp_path, "reference")
    done = subprocess.run(argv, env=environ, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    argv, environ = _study(tmp_path, "killed", HANG_AFTER="200", MODE="kill")
    assert _stop_midway(argv, environ, signal.SIGKILL) == -signal.SIGKILL
    return _weights(tmp_path / "reference"), tmp_path / "killed"


def _restart(tmp_path: Path, killed: Path, damage) -> tuple[str, Path, Path]:
    """Copy the killed study, `damage(checkpoint)` its first run's, run the same command again.

    Returns the console output, the study's folder and the checkpoint that was damaged. (The
    copy's MLflow artifacts still go to the original's folder, recorded at creation: harmless.)
    """
    folder = tmp_path / "study"
    shutil.copytree(killed, folder)
    first = sorted((folder / "results" / "checkpoints").rglob("*.pt"))[0]
    damage(first)
    argv, environ = _study(tmp_path, "restart")
    argv[argv.index("--results") + 1] = str(folder / "results")
    environ["WEIGHTS"] = str(folder / "weights")
    done = subprocess.run(argv, env=environ, capture_output=True, text=True, timeout=600)
    console = done.stdout + done.stderr
    assert done.returncode == 0, console
    assert "Traceback" not in console
    return console, folder, first


def _assert_completed(folder: Path, reference: dict) -> None:
    """The retried trial completed (no further retry), nothing is left RUNNING or on disk, and
    the final weights are those of the study never stopped."""
    results = folder / "results"
    backend = optuna.storages.journal.JournalFileBackend(str(results / "optuna.journal"))
    study = optuna.load_study(
        study_name="mlp:mlp__tiny", storage=optuna.storages.JournalStorage(backend)
    )
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    runs = client.search_runs(client.get_experiment_by_name("mlp:mlp__tiny").experiment_id)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    assert not [p for p in (results / "checkpoints").rglob("*") if p.is_file()]
    weights = _weights(folder)
    assert weights.keys() == reference.keys()
    for seed, state in weights.items():
        for key, value in state.items():
            torch.testing.assert_close(value, reference[seed][key], rtol=0, atol=0)


def _lines(console: str, text: str) -> list[str]:
    return [line for line in console.splitlines() if text in line]


def test_a_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path, killed):
    reference, study = killed
    console, folder, damaged = _restart(tmp_path, study, _truncate)
    (line,) = _lines(console, "is damaged")
    assert "resumed at step 100 from trial 0's previous checkpoint" in line
    assert f"(checkpoint {damaged} is damaged" in line
    assert (
        len(_lines(console, "resumed at step 200 from trial 0's checkpoint")) == 1
    )  # the other run
    _assert_completed(folder, reference)


def test_both_checkpoints_damaged_restart_the_run_from_step_0(tmp_path, killed):
    def damage_both(path: Path) -> None:
        _truncate(path)
        _flip_a_byte(path.with_name(path.name + ".prev"))

    reference, study = killed
    console, folder, damaged = _restart(tmp_path, study, damage_both)
    (line,) = _lines(console, "is damaged")
    assert "starts from step 0 (" in line
    assert f"{damaged} is damaged" in line and f"{damaged}.prev is damaged" in line
    _assert_completed(folder, reference)  # a run is deterministic: from 0 it ends the same


def test_a_checkpoint_carrying_a_pickle_is_refused_and_the_run_restarts(tmp_path, killed):
    marker = tmp_path / "ran"

    def plant(path: Path) -> None:  # an older version's file: one .pt, no hash record
        checkpoint.remove(path)
        torch.save({"step": torch.tensor(200), "payload": Payload(marker)}, path)

    reference, study = killed
    console, folder, planted = _restart(tmp_path, study, plant)
    (line,) = _lines(console, "cannot be loaded safely")
    assert f"starts from step 0 (checkpoint {planted} was written by an older version" in line
    assert not marker.exists()
    _assert_completed(folder, reference)


def test_a_write_cut_short_by_sigkill_leaves_the_last_checkpoint_in_use(tmp_path, killed):
    def partial_write(path: Path) -> None:  # what a save killed mid-write leaves beside it
        data = path.read_bytes()
        path.with_name(path.name + ".tmp").write_bytes(data[: len(data) // 3])

    reference, study = killed
    console, folder, _ = _restart(tmp_path, study, partial_write)
    assert len(_lines(console, "resumed at step 200 from trial 0's checkpoint")) == 2
    assert not _lines(console, "is damaged")
    _assert_completed(folder, reference)


# ---------------------------------------------------------------------------------------------
# A full disk and a store out of reach: recognised at once, stop the trial resumably


def _sqlite_full() -> MlflowException:
    """What MLflow's SQLite store raises when SQLite answers SQLITE_FULL (a lock looks alike)."""
    return MlflowException(
        "(sqlite3.OperationalError) database or disk is full", error_code=TEMPORARILY_UNAVAILABLE
    )


def test_a_full_disk_is_never_retried_as_an_outage(tmp_path):
    calls = []

    def full() -> None:
        calls.append(1)
        raise _sqlite_full()

    assert not tracking.is_transient(_sqlite_full())
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(DiskFull) as err:
        tracking.retry(full, store=store)
    assert len(calls) == 1  # not retried
    assert str(err.value).startswith(f"no space left in {tmp_path} (an MLflow write failed)")

    def artifact() -> None:  # the local artifact store's copy names the file
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "a" / "curve.png"))

    with pytest.raises(DiskFull, match=f"no space left in {tmp_path / 'a'} "):
        tracking.retry(artifact, store=store)


def test_past_the_window_an_outage_stops_and_the_next_call_does_not_wait(monkeypatch):
    waits = []
    monkeypatch.setattr(tracking.time, "sleep", waits.append)
    monkeypatch.setenv(PATIENCE_ENV, "0")
    down = MlflowException(
        "API request to http://h:5000/x failed with exception Connection refused"
    )

    def gone() -> None:
        raise down

    with pytest.raises(Unreachable, match=r"MLflow tracking http://h:5000 unreachable for \d+s"):
        tracking.retry(gone, store="http://user:pw@h:5000")
    with pytest.raises(Unreachable):  # the same outage: no second window
        tracking.retry(gone, store="http://user:pw@h:5000")
    assert waits == []
    assert tracking.retry(lambda: 1, store="http://user:pw@h:5000") == 1  # back: forgotten


def test_a_journal_append_cut_short_by_a_full_disk_leaves_the_journal_whole(tmp_path, monkeypatch):
    from hetero_lr.study import storage as storage_module

    path = tmp_path / "optuna.journal"
    study = optuna.create_study(study_name="s", storage=storage_module.open_storage(str(path)))
    study.set_user_attr("before", 1)
    size = path.stat().st_size

    class HalfWritten:
        """A file on a full disk: half the bytes land, then ENOSPC."""

        def __init__(self, file) -> None:
            self.file = file

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.file.close()

        def write(self, data: bytes) -> None:
            self.file.write(data[: len(data) // 2])
            self.file.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    half = lambda p, mode: HalfWritten(open(p, mode))  # noqa: E731, SIM115 (closed by HalfWritten)
    monkeypatch.setattr(storage_module, "open", half, raising=False)
    with pytest.raises(DiskFull, match=f"no space left in {tmp_path} "):
        study.set_user_attr("lost", "x" * 1000)
    assert path.stat().st_size == size  # no half line left behind
    monkeypatch.undo()
    study.set_user_attr("after", 2)  # the next append is readable
    reloaded = optuna.load_study(study_name="s", storage=storage_module.open_storage(str(path)))
    assert reloaded.user_attrs == {"before": 1, "after": 2}


def test_a_full_sqlite_storage_stops_at_once(tmp_path):
    from sqlalchemy import event

    from hetero_lr.study.storage import open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(study_name="s", storage=storage)

    def cap(conn, cursor, *args) -> None:  # SQLite's own SQLITE_FULL: no page may be added
        cursor.execute("PRAGMA max_page_count = 1")  # (never below the current size)

    event.listen(storage.engine, "before_cursor_execute", cap)
    with pytest.raises(DiskFull, match=f"no space left in {tmp_path} "):
        study.set_user_attr("big", "x" * 100_000)
    event.remove(storage.engine, "before_cursor_execute", cap)
    assert optuna.load_study(study_name="s", storage=storage).user_attrs == {}


def test_the_log_file_on_a_full_disk_drops_what_it_cannot_write(tmp_path, capsys):
    import logging

    from hetero_lr.study._console import quiet_libraries

    class Full:
        """A file on a full disk: every write and flush fails with ENOSPC."""

        def __init__(self, file) -> None:
            self.file = file

        def write(self, text: str = "") -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        flush = write

        def close(self) -> None:
            self.file.close()
            self.flush()

    optuna_log = logging.getLogger("optuna")
    with quiet_libraries(tmp_path) as path:
        optuna_log.warning("kept")
        handler = optuna_log.handlers[0]
        handler.stream = Full(handler.stream)
        optuna_log.warning("lost")  # neither this nor closing the file prints anything
    assert path.read_text().count("kept") == 1 and "lost" not in path.read_text()
    assert capsys.readouterr() == ("", "")


# ---------------------------------------------------------------------------------------------
# Claims: one taker per run, whatever the number of commands


def _claims(path: Path, study: str = "s"):
    """A command's view of `study`'s claims: its own storage object (its own journal writer, as
    another process would have)."""
    from hetero_lr.study.claims import Claims
    from hetero_lr.study.storage import open_storage

    return Claims(open_storage(str(path)), study)


def test_claims_give_each_key_to_one_taker_and_back_when_released(tmp_path):
    path = tmp_path / "optuna.journal"
    one, two = _claims(path), _claims(path)
    assert one.offer(["a", "b"]) == ["a", "b"]
    assert two.offer(["b", "c"]) == ["c"]  # "b" is on offer already
    a = one.take(["a", "b"])
    b = two.take(["a", "b"])  # "a" is taken: the next one
    assert (a.key, b.key) == ("a", "b")
    assert one.take(["a", "b"]) is None and two.holders(["a", "b", "c"]).keys() == {"a", "b"}
    one.release(a, "stopped")  # offered again, to resume
    again = two.take(["a"])
    assert again.key == "a"
    two.done(b)
    one.done(one.take(["c"]))
    assert one.take(["a", "b", "c"]) is None  # done is done
    one.drop()  # "a" is still taken: kept
    assert "s/claims" in optuna.get_all_study_names(one.storage)
    two.done(again)
    one.drop()
    assert "s/claims" not in optuna.get_all_study_names(one.storage)


def test_a_key_offered_twice_at_once_is_still_taken_once(tmp_path):
    from hetero_lr.study.claims import KEY

    path = tmp_path / "optuna.journal"
    one, two = _claims(path), _claims(path)
    for claims in (one, two):  # both saw no claim of "a" and offered it
        claims.study.enqueue_trial({}, user_attrs={KEY: "a"})
    later = max(two._trials(), key=lambda t: t.number)
    assert two._take(later) is None  # the later claim is dropped as a duplicate
    first = one.take(["a"])
    assert first is not None and first.number < later.number
    assert two.take(["a"]) is None


def test_a_claim_whose_process_is_gone_is_released(tmp_path):
    from hetero_lr.study.claims import WORKER

    path = tmp_path / "optuna.journal"
    one = _claims(path)
    one.offer(["a"])
    claim = one.take(["a"])
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    one.storage.set_trial_user_attr(claim.trial_id, WORKER, f"{socket.gethostname()}:{gone}")
    assert _claims(path).recover() == ["a"]
    assert _claims(path).take(["a"]) is not None


def test_a_command_with_nothing_left_to_confirm_says_so_in_one_line(tmp_path, empty_db, capsys):
    from fake_runs import fake_runs
    from test_recovery import CONFIRM_SEEDS, CONFIRMED

    from hetero_lr.study import main
    from hetero_lr.study.confirm import _claim_key

    (tmp_path / "results").mkdir()
    shutil.copy(empty_db, tmp_path / "results" / "mlflow.db")
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(CONFIRMED))
    argv = ["--study", str(tmp_path / "study.yaml"), "--results", str(tmp_path / "results")]
    run = fake_runs(lambda cfg, step: float(step))
    assert main([*argv, "--confirm", "0"], run_factory=run) == 0  # the search alone
    other = _claims(tmp_path / "results" / "optuna.journal", "mlp:mlp__tiny")  # another command
    keys = [_claim_key(f"confirm/mlp:mlp/CartPole-v1/{s}", 0, CONFIRM_SEEDS) for s in CONFIRM_SEEDS]
    other.offer(keys)
    held = [other.take([key]) for key in keys]
    capsys.readouterr()
    assert main(argv, run_factory=run) == 0
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if "confirmation:" in line]
    assert line.endswith(f"nothing left for this command: 2 run(s) left, all being trained by "
                         f"{socket.gethostname()}:{os.getpid()}")  # fmt: skip
    assert "confirmed mlp:mlp" not in out and "Traceback" not in out
    for claim in held:  # that command stops: the next start takes its runs
        other.release(claim, "stopped")
    assert main(argv, run_factory=run) == 0
    assert "confirmation" in _journal_study(tmp_path / "results").user_attrs
    assert "mlp:mlp__tiny/claims" not in optuna.get_all_study_names(other.storage)  # dropped


def _journal_study(results: Path) -> optuna.Study:
    backend = optuna.storages.journal.JournalFileBackend(str(results / "optuna.journal"))
    return optuna.load_study(
        study_name="mlp:mlp__tiny", storage=optuna.storages.JournalStorage(backend)
    )


# ---------------------------------------------------------------------------------------------
# A study that meets a full disk, a full database, an outage and a full journal in turn

# `test_recovery`'s study script with faults switched on by the environment once a run has
# reached FAULT_AFTER steps (the process's first trial is then mid-way, past a checkpoint), and,
# for HANG_SEED's run, a wait past step 200 until the file RELEASE exists.
FAULT_SCRIPT = """
import builtins, errno, os, sys, time
import torch
from hetero_lr.run import TrainingRun
from hetero_lr.study import main
from hetero_lr.study.runs import training_run

FAULT, AFTER = os.environ.get("FAULT", ""), int(os.environ.get("FAULT_AFTER", "0"))
HANG_SEED = os.environ.get("HANG_SEED")
armed = []


def full(*args):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


run_until = TrainingRun.run_until
def arming(self, step):
    run_until(self, step)
    if FAULT and self.step >= AFTER:
        armed.append(True)
TrainingRun.run_until = arming

if FAULT == "checkpoint":  # the checkpoint's bytes do not fit
    from hetero_lr import checkpoint
    write = checkpoint._HashingWriter.write
    checkpoint._HashingWriter.write = lambda self, data: full() if armed else write(self, data)
elif FAULT == "mlflow-full":  # every write to MLflow's database meets SQLITE_FULL
    import sqlite3
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    def full_db(conn, cursor, statement, *args):
        reads = statement.lstrip().upper().startswith(("SELECT", "PRAGMA"))
        if armed and str(conn.engine.url).endswith("mlflow.db") and not reads:
            raise sqlite3.OperationalError("database or disk is full")
    event.listen(Engine, "before_cursor_execute", full_db)
elif FAULT == "outage":  # MLflow's database stops answering (a network mount gone, say)
    import sqlite3
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    def gone(conn, cursor, statement, *args):
        if armed and str(conn.engine.url).endswith("mlflow.db"):
            raise sqlite3.OperationalError("unable to open database file")
    event.listen(Engine, "before_cursor_execute", gone)
elif FAULT == "journal-full":  # an append writes half its bytes, then ENOSPC
    from hetero_lr.study import storage
    class Half:
        def __init__(self, file):
            self.file = file
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            self.file.close()
        def write(self, data):
            self.file.write(data[: len(data) // 2])
            self.file.flush()
            full()
    def half_open(path, mode="r"):
        file = builtins.open(path, mode)
        return Half(file) if armed and mode == "ab" else file
    storage.open = half_open


class Run:
    def __init__(self, cfg, logger):
        self.cfg, self.inner = cfg, training_run(cfg, logger)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def run_until(self, step):
        if HANG_SEED and self.cfg.seed == int(HANG_SEED) and step > 200:
            open(os.environ["READY"], "w").close()
            while not os.path.exists(os.environ["RELEASE"]):
                time.sleep(0.1)
        self.inner.run_until(step)

    def close(self):
        if self.inner.step >= self.cfg.steps:
            out = os.path.join(os.environ["WEIGHTS"], f"{self.cfg.seed}.pt")
            torch.save(self.inner.pair.online.state_dict(), out)
        self.inner.close()


if __name__ == "__main__":  # `--workers` spawns processes that import this file
    sys.exit(main(sys.argv[1:], run_factory=Run))
"""


def _fault_study(tmp_path: Path, empty_db: Path, study: dict | None = None):
    """The command line and environment of a study run by `FAULT_SCRIPT` (MLflow's schema
    copied in: creating it takes seconds)."""
    argv, environ = _study(tmp_path, "study", study)
    (tmp_path / "faulty.py").write_text(FAULT_SCRIPT)
    argv[1] = str(tmp_path / "faulty.py")
    results = tmp_path / "study" / "results"
    results.mkdir()
    shutil.copy(empty_db, results / "mlflow.db")
    environ["RELEASE"] = str(tmp_path / "release")
    return argv, environ, results


def _mlflow_runs(results: Path) -> list:
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    return client.search_runs(client.get_experiment_by_name("mlp:mlp__tiny").experiment_id)


FAULTS = {
    # FAULT: (the line naming it, the few words on the stopped trial's line)
    "checkpoint": ("no space left in {checkpoints} (a checkpoint write failed)", "disk full"),
    "mlflow-full": ("no space left in {results} (an MLflow write failed)", "disk full"),
    "outage": (
        "MLflow tracking sqlite:///{results}/mlflow.db unreachable for",
        "store unreachable",
    ),
    "journal-full": ("no space left in {results} (an Optuna journal write failed)", "disk full"),
}


def test_each_fault_stops_the_trial_in_one_line_and_the_same_command_resumes_it(
    tmp_path, empty_db, killed
):
    reference, _ = killed
    argv, environ, results = _fault_study(tmp_path, empty_db)
    checkpoints = results / "checkpoints" / "mlp_mlp__tiny" / "t0000"
    environ |= {"FAULT_AFTER": "200", PATIENCE_ENV: "1"}
    for number, (fault, (text, short)) in enumerate(FAULTS.items()):
        text = text.format(checkpoints=checkpoints, results=results)
        done = subprocess.run(argv, env=environ | {"FAULT": fault}, capture_output=True,
                              text=True, timeout=600)  # fmt: skip
        console = done.stdout + done.stderr
        assert done.returncode == 75, console
        assert "Traceback" not in console and "[W " not in console, console
        (line,) = _lines(console, text)
        assert f"stopped: {text}" in line, line
        (stopped,) = _lines(console, f"trial {number} stopped (")
        assert f"({short}" in stopped, stopped
        assert (
            console.strip()
            .splitlines()[-1]
            .endswith(
                "to resume, run the same command again: hetero-lr-study " + " ".join(argv[2:])
            )
        )
        if fault == "mlflow-full":  # the database SQLite refused to grow is whole
            with sqlite3.connect(results / "mlflow.db") as db:
                assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    # The same command, the faults gone: the trial resumes from its last good checkpoint.
    done = subprocess.run(argv, env=environ, capture_output=True, text=True, timeout=600)
    console = done.stdout + done.stderr
    assert done.returncode == 0 and "Traceback" not in console, console
    # The journal's fault came after the checkpoints at step 200 (the others before).
    assert len(_lines(console, "resumed at step 200 from trial 3's checkpoint")) == 2, console
    states = [t.state.name for t in _journal_study(results).trials]
    assert states == ["FAIL"] * len(FAULTS) + ["COMPLETE"]
    assert not [r.info.run_name for r in _mlflow_runs(results) if r.info.status == "RUNNING"]
    assert not [p for p in (results / "checkpoints").rglob("*") if p.is_file()]
    weights = _weights(tmp_path / "study")
    assert weights.keys() == reference.keys()
    for seed, state in weights.items():
        for key, value in state.items():
            torch.testing.assert_close(value, reference[seed][key], rtol=0, atol=0)
    assert "Traceback" in (results / "study.log").read_text()  # the libraries' view, kept


def test_two_confirming_commands_share_the_runs_and_train_each_once(tmp_path, empty_db):
    from test_recovery import CONFIRM_SEEDS, CONFIRMED

    first, second = CONFIRM_SEEDS
    argv, environ, results = _fault_study(tmp_path, empty_db, CONFIRMED)
    one = subprocess.Popen(argv, env=environ | {"HANG_SEED": str(first)},
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        while not Path(environ["READY"]).exists():  # the first is in its first confirmation run
            assert one.poll() is None, one.stdout.read()
            time.sleep(0.1)
        two = subprocess.run(argv, env=environ, capture_output=True, text=True, timeout=600)
        (tmp_path / "release").touch()
        out, _ = one.communicate(timeout=600)
    finally:
        one.kill()
    assert one.returncode == 0 and "Traceback" not in out, out
    assert two.returncode == 0 and "Traceback" not in two.stdout + two.stderr, two.stdout
    (line,) = _lines(two.stdout, "confirmation:")
    assert f"1 run(s) being trained by {socket.gethostname()}:{one.pid}" in line
    assert line.endswith("this command takes the other 1")
    assert _lines(out, "confirmed mlp:mlp: c") == _lines(out, f"c0 seed={first} score")
    assert _lines(two.stdout, "confirmed mlp:mlp: c") == _lines(two.stdout, f"c1 seed={second}")
    record = _journal_study(results).user_attrs["confirmation"]["mlp:mlp"]
    assert len(record["scores"]["CartPole-v1"]) == 2 and not record["failed"]
    runs = [r for r in _mlflow_runs(results) if r.data.tags.get("hetero_lr.role") == "confirm"]
    trained = sorted(int(r.data.tags["seed"]) for r in runs if "seed" in r.data.tags)
    assert trained == sorted(CONFIRM_SEEDS)  # one run each: none trained twice
    assert {r.info.status for r in runs} == {"FINISHED"}
