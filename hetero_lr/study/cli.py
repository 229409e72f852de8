"""The `hetero-lr-study` command line: flags and study file -> `StudySettings`, then a run.

Settings: command-line flag > study file > `DEFAULT_STUDY`. Storage (default: one results
folder): Optuna in a journal file (`JournalFileBackend`; Optuna's FAQ advises against SQLite for
parallel workers) and MLflow in `sqlite:///.../mlflow.db` (the default backend since MLflow 3.7;
the `./mlruns` file store is refused from MLflow 3.13). Running the same command again resumes
the study: it adds `--trials` trials and keeps finished ones.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna

from hetero_lr import tracking
from hetero_lr._cli import OneLineParser
from hetero_lr.faults import outage_patience
from hetero_lr.scores import normalizer
from hetero_lr.study._console import duration
from hetero_lr.study.preflight import (
    EnvInfo,
    available_memory,
    check_memory,
    check_pairings,
    estimate_seconds,
    probe_envs,
    run_device,
)
from hetero_lr.study.runner import run_study, uses_heartbeat
from hetero_lr.study.runs import RunFactory
from hetero_lr.study.settings import SettingsMismatch, StudySettings, run_seeds
from hetero_lr.study.spec import (
    PRUNERS,
    SAMPLERS,
    load_study,
    parse_arm,
    parse_baselines,
    with_overrides,
)
from hetero_lr.study.storage import (
    check_storage_reachable,
    check_storage_url,
    check_tracking_reachable,
    check_tracking_uri,
    masked,
)


def build_parser() -> argparse.ArgumentParser:
    """The `hetero-lr-study` argument parser."""
    p = OneLineParser(
        prog="hetero-lr-study",
        description="Optuna study over Lookahead-Replicate KR/KL and network pairings, logged "
        "to MLflow. Precedence: flag > study file > built-in default study.",
    )
    p.add_argument("--study", metavar="FILE", help="study YAML (default: the built-in study)")
    p.add_argument("--pair", metavar="ONLINE:TARGET", help="fixed pairing, e.g. impala:nature")
    p.add_argument("--pairs", metavar="A:B,C:D", help="pairings to search over")
    p.add_argument(
        "--baselines",
        metavar="auto|none|F,..",
        help="HardCopy baselines: auto (each family), none, or families/arms",
    )
    p.add_argument("--env", metavar="ID", help="environment id, e.g. ALE/Pong-v5")
    p.add_argument("--steps", type=int, metavar="N", help="agent steps per run")
    p.add_argument("--trials", type=int, metavar="N", help="trials this invocation adds")
    p.add_argument("--seeds", type=int, metavar="N", help="seeds (runs) per trial")
    p.add_argument(
        "--confirm",
        type=int,
        metavar="K",
        help="after the search, rerun each pairing's best trial and each baseline on K fresh "
        "seeds; the headline numbers come only from these runs",
    )
    p.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage URL or journal file path (default: RESULTS/optuna.journal)",
    )
    p.add_argument("--study-name", metavar="NAME", help="default: PAIR__STUDY or STUDY")
    p.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="MLflow tracking URI (default: sqlite:///RESULTS/mlflow.db)",
    )
    p.add_argument("--sampler", metavar="|".join(SAMPLERS), help="default: the study's")
    p.add_argument("--pruner", metavar="|".join(PRUNERS), help="default: the study's")
    p.add_argument("--device", metavar="DEV", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--record-video",
        metavar="N",
        help="save N evaluation episodes per evaluation as MP4 artifacts of each seed run",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="local worker processes sharing the study (default 1)",
    )
    p.add_argument(
        "--results",
        default="results",
        metavar="DIR",
        help="folder for the default storage, tracking and checkpoints",
    )
    p.add_argument(
        "--checkpoints",
        metavar="DIR|none",
        help="folder for the runs' checkpoints, reached by every worker (default: "
        "RESULTS/checkpoints); a trial resumes from them after a crash or a stop signal",
    )
    p.add_argument(
        "--heartbeat",
        type=int,
        metavar="SECONDS",
        help="worker heartbeat for database storages: a trial whose worker misses two is failed "
        "and retried (default 60; 0 turns it off)",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=1,
        metavar="N",
        help="times a trial whose worker died is retried from its checkpoints (default 1)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved study and the time estimate, write nothing",
    )
    return p


def resolve(args: argparse.Namespace, argv: Sequence[str] = ()) -> StudySettings:
    """Study file + flags -> settings; checks everything that needs no environment.

    Raises:
        ValueError: bad input, as a one-line message naming the value and what is accepted.
    """
    spec = load_study(args.study)
    outage_patience()  # a bad HETERO_LR_OUTAGE_PATIENCE is bad input, said now
    for flag in ("steps", "trials", "seeds", "workers", "confirm", "heartbeat", "retries"):
        value = getattr(args, flag)
        low = 0 if flag in ("trials", "confirm", "heartbeat", "retries") else 1
        if value is not None and value < low:
            raise ValueError(f"--{flag} must be >= {low}, got {value}")
    if args.pair and args.pairs:
        raise ValueError("give --pair or --pairs, not both")
    pairings = None
    if args.pair or args.pairs:
        texts = [args.pair] if args.pair else [t for t in args.pairs.split(",") if t]
        pairings = tuple(parse_arm(t) for t in texts)
        for arm in pairings:
            if arm.rule != "replicate":
                raise ValueError(f"pairing {arm.label!r}: pass baselines with --baselines")
    baselines = parse_baselines(args.baselines) if args.baselines is not None else None
    config = dict(spec.config)
    if args.steps is not None:
        config["steps"] = args.steps
    if args.device is not None:
        config["device"] = args.device
    if args.record_video is not None:
        config["eval_videos"] = args.record_video
    spec = with_overrides(
        spec,
        pairings=pairings,
        baselines=baselines,
        envs=(args.env,) if args.env else None,
        config=config,
        trials=args.trials,
        seeds=args.seeds,
        confirm=args.confirm,
        sampler=args.sampler,
        pruner=args.pruner,
    )
    results = Path(args.results).resolve()
    storage = args.storage or str(results / "optuna.journal")
    tracking_uri = args.tracking_uri or f"sqlite:///{results / 'mlflow.db'}"
    check_tracking_uri(tracking_uri)
    check_storage_url(storage)
    if args.heartbeat and not uses_heartbeat(storage):
        raise ValueError(
            f"--heartbeat {args.heartbeat}: only database storages (postgresql://, mysql://, "
            "sqlite:///) keep heartbeats; with a journal file, a restart finds dead trials by "
            "their process"
        )
    heartbeat = (60 if uses_heartbeat(storage) else 0) if args.heartbeat is None else args.heartbeat
    checkpoints = args.checkpoints or str(results / "checkpoints")
    db = tracking.sqlite_path(tracking_uri)
    name = args.study_name or (
        f"{spec.pairings[0].pair}__{spec.name}" if len(spec.pairings) == 1 else spec.name
    )
    return StudySettings(
        spec=spec,
        study_name=name,
        storage=storage,
        tracking_uri=tracking_uri,
        artifact_root=str(db.parent / "mlartifacts") if db else None,
        results=str(results),
        workers=args.workers,
        run_seeds=run_seeds(spec.seed, spec.seeds),
        progress=args.workers == 1 and sys.stderr.isatty(),
        command=masked(shlex.join(["hetero-lr-study", *argv])),
        checkpoints=None if checkpoints == "none" else str(Path(checkpoints).resolve()),
        heartbeat=heartbeat or None,
        max_retry=args.retries,
    )


def banner(
    settings: StudySettings, estimate: dict[str, Any] | None, envs: Sequence[EnvInfo] = ()
) -> str:
    """What will run, what its scores mean, where it is stored, and how long it should take."""
    spec, base = settings.spec, settings.spec.base
    baselines = ", ".join(a.label for a in spec.baseline_arms) or "none"
    lines = [
        f"study {settings.study_name!r}: {spec.description or spec.name}",
        f"  pairings   {', '.join(a.label for a in spec.pairings)}   baselines {baselines}",
        f"  envs       {', '.join(spec.env_ids)}   {base.steps:,} steps/run, evaluation every "
        f"{base.eval_every:,} ({base.eval_episodes} episodes), objective: mean of the last "
        f"{spec.last_evals}",
        *(f"  scores     {_score_meaning(env)}" for env in envs),
        f"  seeds      {spec.seeds} per trial {list(settings.run_seeds)} (study seed {spec.seed})"
        + (f"; confirmation on {spec.confirm} fresh seeds" if spec.confirm else ""),
        f"  space      {'; '.join(p.describe() for p in spec.space) or '(pairing only)'}",
        f"  trials     {spec.trials} + {len(spec.baseline_arms)} baselines (each run once)   "
        f"sampler {spec.sampler}   "
        f"pruner {spec.pruner}   workers {settings.workers}",
        f"  storage    {masked(settings.storage)}",
        *(
            [
                "  note       Optuna's FAQ advises against SQLite for parallel workers: use a "
                "journal file or PostgreSQL"
            ]
            if settings.storage.startswith("sqlite") and settings.workers > 1
            else []
        ),
        f"  tracking   {masked(settings.tracking_uri)}   (browse: "
        + (
            f"{masked(settings.tracking_uri)})"
            if settings.tracking_uri.startswith("http")
            else f"mlflow ui --backend-store-uri {masked(settings.tracking_uri)})"
        ),
    ]
    if estimate:
        runs = ", ".join(f"{k} {duration(v)}" for k, v in estimate["per_run"].items())
        lines.append(
            f"  estimate   ~{duration(estimate['total'])} on {estimate['device']} "
            f"(rough; per run: {runs})"
        )
        free = estimate.get("available")
        lines.append(
            f"  memory     replay held at once {estimate['memory'] / 1e9:.2f} GB"
            + (f" (available now {free / 1e9:.1f} GB)" if free else "")
        )
    lines.append(f"  recovery   {_recovery(settings, estimate)}")
    return "\n".join(lines)


def _recovery(settings: StudySettings, estimate: dict[str, Any] | None) -> str:
    """How the study survives a crash: where checkpoints go and their size, the heartbeat."""
    if settings.checkpoints is None:
        text = "no checkpoints (--checkpoints none): a stopped or dead trial restarts from zero"
    else:
        # Two files per run: the latest and the previous good one (`hetero_lr.checkpoint`).
        size = f", up to {2 * estimate['memory'] / 1e9:.2f} GB at once" if estimate else ""
        text = (
            f"checkpoints {settings.checkpoints} (each evaluation, the last two kept{size}; "
            "removed as trials end)"
        )
    if settings.heartbeat:
        text += f"; heartbeat {settings.heartbeat}s"
    return text + f"; a dead worker's trial is retried {settings.max_retry}x"


def _score_meaning(env: EnvInfo) -> str:
    _, note = normalizer(env.env_id)
    if env.random_score is None:
        return f"{env.env_id}: {note}"
    transform, _ = normalizer(env.env_id)
    return (
        f"{env.env_id}: {note}; a random policy scores {transform(env.random_score):.3g} "
        "(measured now)"
    )


def main(argv: Sequence[str] | None = None, *, run_factory: RunFactory | None = None) -> int:
    """`hetero-lr-study` / `python -m hetero_lr.study`. Returns the exit code.

    Bad input (pair syntax, unknown family, incompatible pairing, kr/kl < 1, unreadable study
    file or unknown key, unknown sampler or pruner, a storage URL of an unknown scheme or
    without its driver, a file-store tracking URI, a storage or tracking server that cannot be
    reached or refuses the worker's credentials) prints one line and returns 2 before anything
    is written. URLs are printed and recorded with their passwords masked.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress lines replace its log
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = resolve(args, argv)
        if not args.dry_run:  # a dry run shows the study even where its servers are not
            check_storage_reachable(settings.storage)
            check_tracking_reachable(settings.tracking_uri)
        run_device(settings.spec.base.device)  # e.g. cuda requested where there is none
        envs = probe_envs(settings.spec)
        check_pairings(settings.spec, envs)
        # A dry run reports what would not fit instead of refusing to show the study.
        available = None if args.dry_run else available_memory()
        memory = check_memory(settings.spec, envs, workers=settings.workers, available=available)
    except ValueError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    estimate = estimate_seconds(settings.spec, envs, workers=settings.workers)
    estimate |= {"memory": memory, "available": available_memory()}
    print(banner(settings, estimate, envs), flush=True)
    if args.dry_run:
        import yaml

        print(
            yaml.safe_dump(
                {
                    "study": settings.spec.to_dict(),
                    "study_name": settings.study_name,
                    "storage": masked(settings.storage),
                    "tracking_uri": masked(settings.tracking_uri),
                    "run_seeds": list(settings.run_seeds),
                },
                sort_keys=False,
            )
        )
        return 0
    try:
        return run_study(settings, run_factory=run_factory)
    except SettingsMismatch as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
