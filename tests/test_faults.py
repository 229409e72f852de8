"""Faults a long study meets on shared machines: damaged, partial and planted checkpoints.

Checkpoints hold plain data (tensors, numbers, strings, containers) and load with
`torch.load(weights_only=True)`; every write records a sha256 and keeps the previous good file.
The study tests kill a tiny CartPole study mid-trial (`test_recovery`'s harness), damage its
checkpoint files, run the same command again and check that one line names the fault, no
traceback shows, the retried trial completes without using up another retry, and its final
weights equal those of the study never stopped.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from mlflow import MlflowClient
from test_recovery import _stop_midway, _study, _weights
from test_study import REPO
from tiny_configs import tiny

from hetero_lr import checkpoint
from hetero_lr.checkpoint import CheckpointError
from hetero_lr.config import EnvConfig
from hetero_lr.envs import MINATAR_GAMES, make_env
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
