"""Trials that survive a crash: SIGKILL and SIGTERM mid-trial, then a restart resumes each run
from its checkpoint and ends with the weights of a run that was never stopped."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from fake_runs import fake_runs
from mlflow import MlflowClient
from test_study import REPO, TINY

from hetero_lr.study import main, run_seeds
from hetero_lr.study.confirm import confirm_seeds
from hetero_lr.study.recovery import Interrupted, TrialCheckpoints, request_stop, stop_signals
from hetero_lr.study.runs import RunSlot
from hetero_lr.tracking import ROLE

# A fixed arm (a single-point grid, no baselines): trial 0 is the same in every study here.
STUDY = {
    **TINY,
    "space": {"kr": [1], "kl": [4]},
    "sampler": "grid",
    "pruner": "none",
    "trials": 1,
    "baselines": "none",
}

# Wraps the real run: saves the final online weights; with HANG_AFTER, the run stops at the
# first `run_until` past that step and either hangs (to be SIGKILLed) or waits for SIGTERM.
SCRIPT = """
import os, sys, time
import torch
from hetero_lr.study import main
from hetero_lr.study.recovery import stop_requested
from hetero_lr.study.runs import training_run

HANG_AFTER = int(os.environ.get("HANG_AFTER", "0"))
HANG_SEED = os.environ.get("HANG_SEED")  # only this seed's run hangs (default: every run)


class Run:
    def __init__(self, cfg, logger):
        self.cfg, self.inner = cfg, training_run(cfg, logger)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def run_until(self, step):
        hangs = HANG_SEED is None or self.cfg.seed == int(HANG_SEED)
        if HANG_AFTER and step > HANG_AFTER and hangs:
            open(os.environ["READY"], "w").close()
            if os.environ["MODE"] == "kill":
                time.sleep(600)
            while not stop_requested():
                time.sleep(0.05)
            return
        self.inner.run_until(step)

    def close(self):
        if self.inner.step >= self.cfg.steps:
            out = os.path.join(os.environ["WEIGHTS"], f"{self.cfg.seed}.pt")
            torch.save(self.inner.pair.online.state_dict(), out)
        self.inner.close()


if __name__ == "__main__":  # `--workers` spawns processes that import this file
    sys.exit(main(sys.argv[1:], run_factory=Run))
"""


def _study(
    tmp_path: Path, name: str, study: dict | None = None, **env: str
) -> tuple[list[str], dict[str, str]]:
    folder = tmp_path / name
    (folder / "weights").mkdir(parents=True)
    (folder / "study.yaml").write_text(yaml.safe_dump(study or STUDY))
    (tmp_path / "run_study.py").write_text(SCRIPT)
    argv = [sys.executable, str(tmp_path / "run_study.py"), "--study", str(folder / "study.yaml")]
    argv += ["--results", str(folder / "results")]
    environ = {**os.environ, "WEIGHTS": str(folder / "weights"), "READY": str(folder / "ready")}
    environ["PYTHONPATH"] = os.pathsep.join([str(REPO), environ.get("PYTHONPATH", "")])
    return argv, environ | env


def _stop_midway(
    argv: list[str], environ: dict[str, str], sig: signal.Signals, console: list | None = None
) -> int:
    """Start the study, wait until its first run is past step 200, send `sig`; exit code (and
    the console's text appended to `console`)."""
    proc = subprocess.Popen(argv, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ready = Path(environ["READY"])
    deadline = time.monotonic() + 300
    while not ready.exists():
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, "the study never reached step 200"
        time.sleep(0.1)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=300)
    if console is not None:
        console.append(out.decode())
    return proc.returncode


def _weights(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.name: torch.load(p) for p in sorted((folder / "weights").glob("*.pt"))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, dict[str, torch.Tensor]]:
    """Final online weights per seed of the trial run without a stop."""
    tmp_path = tmp_path_factory.mktemp("reference")
    argv, environ = _study(tmp_path, "ref")
    done = subprocess.run(argv, env=environ, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    weights = _weights(tmp_path / "ref")
    assert len(weights) == 2  # one per seed
    return weights


def _assert_resumed(folder: Path, reference: dict, *, dead_status: str, storage=None) -> None:
    results = folder / "results"
    study = optuna.load_study(
        study_name="mlp:mlp__tiny",
        storage=storage
        or optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(results / "optuna.journal"))
        ),
    )
    dead, retry = study.trials
    assert dead.state == optuna.trial.TrialState.FAIL
    assert retry.state == optuna.trial.TrialState.COMPLETE
    assert retry.system_attrs["failed_trial"] == 0 and retry.params == dead.params
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    runs = client.search_runs(client.get_experiment_by_name("mlp:mlp__tiny").experiment_id)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    by_trial = {
        n: [r for r in runs if r.data.tags.get("optuna.trial_number") == str(n)] for n in (0, 1)
    }
    # The dead trial: its run and both seed runs ended with the reason.
    assert {r.info.status for r in by_trial[0]} == {dead_status}
    seeds = [r for r in by_trial[1] if r.data.tags[ROLE] == "seed"]
    assert len(seeds) == 2
    for run in seeds:  # each run resumed at its last checkpoint, at evaluation 2 of 3
        assert run.data.tags["resumed_from_step"] == "200"
        assert run.data.tags["resumed_from_trial"] == "0"
        history = client.get_metric_history(run.info.run_id, "eval/return_mean")
        assert sorted(m.step for m in history) == [100, 200, 300]  # the curve is whole
    trial_run = next(r for r in by_trial[1] if r.data.tags[ROLE] == "trial")
    assert trial_run.data.tags["resumed_from_trial"] == "0"
    # Exact resume: the same final weights as the run never stopped.
    resumed = _weights(folder)
    assert resumed.keys() == reference.keys()
    for seed, state in resumed.items():
        for key, value in state.items():
            torch.testing.assert_close(value, reference[seed][key], rtol=0, atol=0)
    assert not list((results / "checkpoints").rglob("*.pt"))  # removed as the trial ended


def test_sigkill_mid_trial_then_restart_resumes_from_checkpoints(tmp_path, reference):
    argv, environ = _study(tmp_path, "killed", HANG_AFTER="200", MODE="kill")
    assert _stop_midway(argv, environ, signal.SIGKILL) == -signal.SIGKILL
    checkpoints = list((tmp_path / "killed" / "results" / "checkpoints").rglob("*.pt"))
    assert len(checkpoints) == 2
    # The restart finds trial 0 RUNNING with its process gone: fails it, retries it once.
    argv, environ = _study(tmp_path, "restart")  # fresh WEIGHTS/READY folders...
    environ["WEIGHTS"] = str(tmp_path / "killed" / "weights")  # ...but the killed study's
    argv[argv.index("--results") + 1] = str(tmp_path / "killed" / "results")
    done = subprocess.run(argv, env=environ, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "trial 0: worker" in done.stdout and "process is gone; queued again" in done.stdout
    assert "resumed at step 200 from trial 0's checkpoint" in done.stdout
    _assert_resumed(tmp_path / "killed", reference, dead_status="FAILED")


def test_heartbeat_fails_a_dead_workers_trial_and_another_worker_resumes_it(
    tmp_path, reference, postgres
):
    url = postgres.create_database(f"recovery_{secrets.token_hex(4)}")
    argv, environ = _study(tmp_path, "pg", HANG_AFTER="200", MODE="kill")
    argv += ["--storage", url, "--heartbeat", "1"]
    assert _stop_midway(argv, environ, signal.SIGKILL) == -signal.SIGKILL
    time.sleep(3)  # past Optuna's grace period, two heartbeats
    environ.pop("HANG_AFTER")
    done = subprocess.run(argv, env=environ, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "missed its heartbeats; queued again" in done.stdout
    _assert_resumed(tmp_path / "pg", reference, dead_status="FAILED", storage=url)


def test_sigterm_checkpoints_ends_runs_killed_and_the_next_start_resumes(tmp_path, reference):
    argv, environ = _study(tmp_path, "stopped", HANG_AFTER="200", MODE="term")
    console: list[str] = []
    assert _stop_midway(argv, environ, signal.SIGTERM, console) == 130
    results = tmp_path / "stopped" / "results"
    # A stop reads as a stop: one line for the trial, the command that resumes it last; what
    # Optuna and MLflow make of it (a failed trial's traceback, warnings) in the log file only.
    (text,) = console
    assert "Traceback" not in text and "[W " not in text and "Downloading" not in text, text
    (line,) = [line for line in text.splitlines() if " stopped " in line]
    assert line.endswith("trial 0 stopped (SIGTERM); queued again to resume from its checkpoints")
    resume = "to resume, run the same command again: hetero-lr-study " + " ".join(argv[2:])
    assert text.strip().splitlines()[-1].endswith(resume)
    assert "Trial 0 failed" in (results / "study.log").read_text()
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    runs = client.search_runs(client.get_experiment_by_name("mlp:mlp__tiny").experiment_id)
    trial_runs = [r for r in runs if r.data.tags[ROLE] in ("trial", "seed")]
    assert {r.info.status for r in trial_runs} == {"KILLED"}
    assert all("SIGTERM" in r.data.tags["hetero_lr.end_reason"] for r in trial_runs)
    study_run = next(r for r in runs if r.data.tags[ROLE] == "study")
    assert study_run.info.status == "KILLED"
    # Restart with the same command: the queued retry resumes.
    environ.pop("HANG_AFTER")
    done = subprocess.run(argv, env=environ, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    _assert_resumed(tmp_path / "stopped", reference, dead_status="KILLED")


def test_a_stop_request_interrupts_a_run_between_chunks_of_steps(tmp_path):
    from tiny_configs import tiny

    from hetero_lr.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = tracker.experiment("x")
    parent = tracker.start_run(experiment, name="trial", role="trial")
    cfg = tiny(steps=3_000, eval_every=3_000)
    slot = RunSlot.of(cfg, cfg.env.id, 7, "s0 seed=7", pairing="mlp:mlp")
    slot.start(fake_runs(lambda c, s: s), tracker, experiment, role="seed",
               parent_run_id=parent, description="d")  # fmt: skip
    with stop_signals():
        slot.run.run_until(1_000)  # type: ignore[union-attr]
        request_stop("interrupted (SIGTERM)")
        with pytest.raises(Interrupted, match="SIGTERM"):
            slot.advance(3_000)
    assert slot.run.step == 1_000  # type: ignore[union-attr]  # stopped at a clean step
    checkpoints = TrialCheckpoints(tmp_path / "ckpt", "x", 0)
    checkpoints.save(slot)
    fresh = RunSlot.of(cfg, cfg.env.id, 7, "s0 seed=7", pairing="mlp:mlp")
    fresh.start(fake_runs(lambda c, s: s), tracker, experiment, role="seed",
                parent_run_id=parent, description="d")  # fmt: skip
    assert checkpoints.restore(fresh) == 1_000
    assert fresh.advance(3_000) == 3_000  # continues after the stop is over
    checkpoints.remove()
    assert not (tmp_path / "ckpt" / "x" / "t0000").exists()


def test_heartbeat_needs_a_database_storage(tmp_path, capsys):
    argv = [
        "--study",
        str(REPO / "studies/smoke.yaml"),
        "--results",
        str(tmp_path),
        "--heartbeat",
        "5",
    ]
    assert main(argv, run_factory=fake_runs(lambda c, s: 1.0)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--heartbeat 5" in err[0] and "database" in err[0]
    assert not tmp_path.joinpath("optuna.journal").exists()


# ---------------------------------------------------------------------------------------------
# Confirmation: split over worker processes, resumable within an arm.

CONFIRMED = {**STUDY, "confirm": 2}
CONFIRM_SEEDS = confirm_seeds(0, 2, run_seeds(0, 2))


def _journal(results: Path) -> optuna.Study:
    backend = optuna.storages.journal.JournalFileBackend(str(results / "optuna.journal"))
    return optuna.load_study(
        study_name="mlp:mlp__tiny", storage=optuna.storages.JournalStorage(backend)
    )


def _confirm_runs(results: Path) -> list:
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    runs = client.search_runs(client.get_experiment_by_name("mlp:mlp__tiny").experiment_id)
    return [r for r in runs if r.data.tags[ROLE] == "confirm"]


@pytest.fixture(scope="module")
def confirmed(tmp_path_factory) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """The confirmation record and final weights per seed of a study confirmed in one process,
    never stopped."""
    tmp_path = tmp_path_factory.mktemp("confirmed")
    argv, environ = _study(tmp_path, "ref", CONFIRMED)
    done = subprocess.run(argv, env=environ, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    record = _journal(tmp_path / "ref" / "results").user_attrs["confirmation"]["mlp:mlp"]
    weights = _weights(tmp_path / "ref")
    assert len(weights) == 4  # two search seeds, two confirmation seeds
    return record, weights


def _assert_same_confirmation(folder: Path, confirmed: tuple) -> list:
    """The study in `folder` confirmed as the never-stopped one; returns its confirm runs."""
    record, weights = confirmed
    results = folder / "results"
    found = _journal(results).user_attrs["confirmation"]["mlp:mlp"]
    assert found["seeds"] == list(CONFIRM_SEEDS) == record["seeds"]
    assert found["scores"] == record["scores"] and not found["failed"]
    assert len(found["scores"]["CartPole-v1"]) == 2
    resumed = _weights(folder)
    assert resumed.keys() == weights.keys()
    for seed, state in resumed.items():
        for key, value in state.items():
            torch.testing.assert_close(value, weights[seed][key], rtol=0, atol=0)
    runs = _confirm_runs(results)
    (parent,) = [r for r in runs if "seed" not in r.data.tags]
    assert parent.info.status == "FINISHED" and parent.info.run_id == found["mlflow_run_id"]
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert not list((results / "checkpoints").rglob("*.pt"))  # removed as the arm ended
    return runs


def test_confirmation_split_over_two_workers_matches_one_process(tmp_path, confirmed, capsys):
    argv, environ = _study(tmp_path, "two", CONFIRMED)
    done = subprocess.run([*argv, "--workers", "2"], env=environ, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "confirming mlp:mlp (trial 0) on 2 fresh seeds: 2 of 2 runs to go" in done.stdout
    first, second = CONFIRM_SEEDS  # run i goes to process i % 2
    assert f"[w0] confirmed mlp:mlp: c0 seed={first} score" in done.stdout
    assert f"[w1] confirmed mlp:mlp: c1 seed={second} score" in done.stdout
    runs = _assert_same_confirmation(tmp_path / "two", confirmed)
    assert sorted(int(r.data.tags["seed"]) for r in runs if "seed" in r.data.tags) == sorted(
        CONFIRM_SEEDS
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_confirmation_stopped_mid_run_resumes_it_from_its_checkpoint(tmp_path, confirmed, sig):
    first, second = CONFIRM_SEEDS
    mode = "term" if sig == signal.SIGTERM else "kill"
    argv, environ = _study(
        tmp_path, "stopped", CONFIRMED, HANG_AFTER="200", HANG_SEED=str(first), MODE=mode
    )
    code = _stop_midway(argv, environ, sig)
    assert code == (130 if sig == signal.SIGTERM else -signal.SIGKILL)
    results = tmp_path / "stopped" / "results"
    study = _journal(results)
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE  # the search is over
    assert "confirmation" not in study.user_attrs  # ...its confirmation is not
    (checkpoint,) = (results / "checkpoints").rglob("*.pt")
    assert checkpoint.parent.name == "confirm-mlp_mlp-t0000"
    assert checkpoint.name == f"CartPole-v1__seed{first}.pt"
    stopped = _confirm_runs(results)
    if sig == signal.SIGTERM:
        assert {r.info.status for r in stopped} == {"KILLED"}
    # The same command again: the stopped run resumes at its last evaluation, the other starts.
    environ.pop("HANG_AFTER")
    done = subprocess.run(argv, env=environ, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 of 2 runs to go" in done.stdout
    assert f"c0 seed={first} resumed at step 200 from its checkpoint" in done.stdout
    runs = _assert_same_confirmation(tmp_path / "stopped", confirmed)
    by_seed = {}
    for run in runs:
        if "seed" in run.data.tags:
            by_seed.setdefault(int(run.data.tags["seed"]), []).append(run)
    dead, resumed = sorted(by_seed[first], key=lambda r: r.info.start_time)
    assert dead.info.status == ("KILLED" if sig == signal.SIGTERM else "FAILED")
    assert resumed.info.status == "FINISHED" and resumed.data.tags["resumed_from_step"] == "200"
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    history = client.get_metric_history(resumed.info.run_id, "eval/return_mean")
    assert sorted(m.step for m in history) == [100, 200, 300]
    (fresh,) = by_seed[second]
    assert fresh.info.status == "FINISHED" and "resumed_from_step" not in fresh.data.tags
