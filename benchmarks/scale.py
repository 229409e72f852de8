"""Trials per hour with 1 and 2 worker processes, and what PostgreSQL + an mlflow server cost per
trial against the local journal + SQLite (not a test).

    python benchmarks/scale.py [--quick] [--trials N] [--fake-trials N]

Starts a throwaway PostgreSQL cluster and an `mlflow server` on loopback (`tests/services.py`;
needs `initdb` and the `postgres` extra), then runs, one after another in this one invocation:

- `fake`: trials whose runs train nothing (scripted scores, a few metrics each), one worker:
  what remains is the study's own cost per trial (Optuna ask/tell, MLflow runs, params,
  metrics, the trial's curve figure), on the journal + SQLite and on PostgreSQL + the server;
- `tiny`: real CartPole trials with tiny MLPs (300 agent steps, about a second of compute), with
  1 and 2 workers on each pair of stores: trials per hour, and how that scales on this machine.

Rates are measured over the trials themselves (first trial start to last trial end, from
Optuna's timestamps), so process start-up, the pre-flight checks and the end-of-study summary
are left out. Each line prints the figures; the ratios at the end compare lines of this run.

Measured
--------
See docs/scaling.md, which quotes the last `--quick` run with the machine's load at the time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # services.py: throwaway PostgreSQL and mlflow server
from tiny_configs import TINY_STUDY  # noqa: E402  (the test suite's tiny CartPole study)

TINY = {**TINY_STUDY, "name": "scale", "seeds": 1, "pruner": "none"}


class FakeRun:
    """A run that trains nothing: a TD-loss point per advance, a scripted evaluation."""

    def __init__(self, cfg, logger) -> None:
        self.cfg, self.logger, self.step = cfg, logger, 0

    def params(self) -> dict:
        from hetero_lr.config import flatten

        return flatten(self.cfg) | {"online_params": 10, "target_params": 10}

    def run_until(self, step: int) -> None:
        self.step = min(step, self.cfg.steps)
        self.logger.log_metrics({"loss/td": 1.0 / self.step}, self.step)

    def evaluate(self) -> float:
        value = float(self.cfg.target.kl)
        self.logger.log_metrics({"eval/return_mean": value}, self.step)
        return value

    def close(self) -> None:
        pass


def fake_run(cfg, logger) -> FakeRun:
    """A picklable `RunFactory` (spawned workers import this module)."""
    return FakeRun(cfg, logger)


@contextlib.contextmanager
def quiet(log: Path) -> Iterator[None]:
    """Send this process's and its workers' output (file descriptors 1 and 2) to `log`."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with log.open("ab") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def run_one(
    folder: Path, name: str, storage: str, tracking: str, workers: int, trials: int, fake: bool
) -> dict[str, float]:
    """One study of `trials` trials; rates from the trials' own timestamps."""
    import optuna

    from hetero_lr.study.cli import build_parser, resolve
    from hetero_lr.study.runner import run_study
    from hetero_lr.study.storage import open_storage

    study_file = folder / f"{name}.yaml"
    study_file.write_text(yaml.safe_dump({**TINY, "trials": trials}))
    argv = ["--study", str(study_file), "--results", str(folder / "results"), "--study-name"]
    argv += [name, "--storage", storage, "--tracking-uri", tracking, "--workers", str(workers)]
    settings = resolve(build_parser().parse_args(argv), argv)
    start = time.perf_counter()
    with quiet(folder / "studies.log"):
        code = run_study(settings, run_factory=fake_run if fake else None)
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"study {name} exited {code}; see {folder / 'studies.log'}")
    done = optuna.load_study(study_name=name, storage=open_storage(storage)).get_trials()
    complete = [t for t in done if t.state.name == "COMPLETE"]
    span = (
        max(t.datetime_complete for t in complete) - min(t.datetime_start for t in complete)
    ).total_seconds()
    return {
        "trials": len(complete),
        "span": span,
        "per_trial": span / len(complete),
        "per_hour": len(complete) / span * 3600,
        "wall": wall,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer trials (about 3 minutes)")
    p.add_argument("--trials", type=int, help="real tiny trials per study (default 16; quick 4)")
    p.add_argument("--fake-trials", type=int, help="fake trials per study (default 30; quick 8)")
    args = p.parse_args()
    trials = args.trials or (4 if args.quick else 16)
    fake_trials = args.fake_trials or (8 if args.quick else 30)

    from services import start_mlflow_server, start_postgres

    from hetero_lr.tracking import Tracker

    folder = Path(tempfile.mkdtemp(prefix="hetero-lr-scale-"))
    template = folder / "template.db"
    Tracker(f"sqlite:///{template}").prepare()  # the schema once, copied for each store
    cluster = start_postgres()
    server = start_mlflow_server(folder / "server", backend_db=template)
    print(f"PostgreSQL {cluster.url}, mlflow server {server.url}, work in {folder}", flush=True)
    results: dict[tuple[str, str, int], dict[str, float]] = {}
    try:
        plan = [("fake", 1, fake_trials)] + [("tiny", w, trials) for w in (1, 2)]
        for kind, workers, n in plan:
            for stores in ("journal+sqlite", "postgres+server"):
                name = f"{kind}_{workers}_{stores.split('+')[0]}"
                if stores == "journal+sqlite":
                    db = folder / f"{name}.db"
                    shutil.copy(template, db)
                    storage, tracking = str(folder / f"{name}.journal"), f"sqlite:///{db}"
                else:
                    storage, tracking = cluster.create_database(name), server.url
                r = run_one(folder, name, storage, tracking, workers, n, kind == "fake")
                results[(kind, stores, workers)] = r
                print(
                    f"{kind:5} {stores:16} workers {workers}  {r['trials']:3d} trials  "
                    f"{r['per_trial']:6.2f} s/trial  {r['per_hour']:8.0f} trials/h  "
                    f"(span {r['span']:.1f}s, wall {r['wall']:.1f}s)",
                    flush=True,
                )
    finally:
        server.stop()
        cluster.remove()
    fake_local = results[("fake", "journal+sqlite", 1)]["per_trial"]
    fake_remote = results[("fake", "postgres+server", 1)]["per_trial"]
    print(
        f"study cost per trial (fake trials): postgres+server / journal+sqlite = "
        f"{fake_remote / fake_local:.2f} ({fake_remote * 1000:.0f} ms vs "
        f"{fake_local * 1000:.0f} ms)"
    )
    for stores in ("journal+sqlite", "postgres+server"):
        one = results[("tiny", stores, 1)]["per_hour"]
        two = results[("tiny", stores, 2)]["per_hour"]
        print(f"tiny trials/h, 2 workers / 1 worker, {stores}: {two / one:.2f}")
    one_local = results[("tiny", "journal+sqlite", 1)]["per_hour"]
    one_remote = results[("tiny", "postgres+server", 1)]["per_hour"]
    ratio = one_remote / one_local
    print(f"tiny trials/h, 1 worker, postgres+server / journal+sqlite: {ratio:.2f}")
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
