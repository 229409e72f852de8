"""Read a study back: Optuna trials and MLflow training runs as pandas tables.

Where things are (see `hetero_lr.study`): the Optuna study (trial values, parameters, user
attributes `pairing`, `run_scores`, `run_seeds`) in the journal file `RESULTS/optuna.journal`
(or any Optuna storage URL); the MLflow experiment named like the study, whose runs tagged
`hetero_lr.role=seed` are the training runs, with `objective` (a run's score as the
objective counts it) and the `eval/return_mean` history (raw returns by agent step).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from sqlalchemy.exc import SQLAlchemyError

from hetero_lr.scores import is_normalised, normalizer
from hetero_lr.study.storage import check_storage_url, open_storage
from hetero_lr.tracking import ROLE


@dataclass
class StudyData:
    """A study's trials and training runs."""

    study: optuna.Study
    trials: pd.DataFrame
    """One row per trial: number, state, value, pairing, rule, mlflow_run_id, one column per
    parameter (`kr`, `kl`, ...)."""
    runs: pd.DataFrame
    """One row per search run: trial, pairing, env, seed, status, score, run_id, raw, scale.
    `score` is normalised per environment where `hetero_lr.scores` has references (runs
    logged before a reference existed are normalised here from their raw score), `raw` is
    the raw return where known, `scale` says which."""
    client: MlflowClient
    confirm_runs: pd.DataFrame
    """The confirmation runs (`--confirm`), same columns; empty without confirmation."""


def load_study_data(
    results: str | Path | None = None,
    *,
    study_name: str | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
) -> StudyData:
    """Load a study from its results folder (or explicit storage URL and tracking URI).

    Args:
        results: The study's `--results` folder: `optuna.journal` and `mlflow.db` inside.
        study_name: Needed when the storage holds several studies.
        storage: Optuna storage URL or journal path (default: `RESULTS/optuna.journal`).
        tracking_uri: MLflow tracking URI (default: `sqlite:///RESULTS/mlflow.db`).

    Raises:
        ValueError: no such study, or several and no `study_name`; a storage or tracking URI
            that cannot be read, or an MLflow store without the study's experiment.
    """
    folder = Path(results).resolve() if results is not None else None
    if storage is None or tracking_uri is None:
        if folder is None:
            raise ValueError("give a results folder, or both a storage and a tracking URI")
        storage = storage or str(folder / "optuna.journal")
        tracking_uri = tracking_uri or f"sqlite:///{folder / 'mlflow.db'}"
    if "://" not in storage and not Path(storage).exists():
        raise ValueError(f"no Optuna journal at {storage}")
    check_storage_url(storage)
    try:
        optuna_storage = open_storage(storage)
        # `STUDY/claims` holds an unfinished confirmation's claims, not results.
        names = [n for n in optuna.get_all_study_names(optuna_storage) if not n.endswith("/claims")]
    except (SQLAlchemyError, OSError) as err:
        raise ValueError(f"cannot read the Optuna storage {storage}: {_first_line(err)}") from None
    if study_name is None:
        if len(names) != 1:
            raise ValueError(f"pick a study with --study; the storage holds: {', '.join(names)}")
        study_name = names[0]
    if study_name not in names:
        raise ValueError(f"no study {study_name!r}; the storage holds: {', '.join(names)}")
    study = optuna.load_study(study_name=study_name, storage=optuna_storage)
    client = _open_tracking(tracking_uri, study_name)
    return StudyData(
        study,
        _trials_table(study),
        _runs_table(client, study_name, "seed"),
        client,
        _runs_table(client, study_name, "confirm"),
    )


def _open_tracking(tracking_uri: str, study_name: str) -> MlflowClient:
    """A client for the study's MLflow store; refuses a URI that cannot hold the study (and
    never creates a database where none is)."""
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri.removeprefix("sqlite:///"))
        if not path.exists():
            raise ValueError(f"no MLflow database at {path} (--tracking-uri)")
    try:
        client = MlflowClient(tracking_uri)
        experiment = client.get_experiment_by_name(study_name)
    except (MlflowException, OSError, SQLAlchemyError) as err:
        raise ValueError(f"cannot read MLflow at {tracking_uri}: {_first_line(err)}") from None
    if experiment is None:
        raise ValueError(f"no MLflow experiment {study_name!r} at {tracking_uri}")
    return client


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def study_run(data: StudyData) -> str | None:
    """The id of the study's MLflow run (`hetero_lr.role=study`): the study's
    `mlflow_study_run_id` user attribute, else the experiment's run with that tag."""
    run_id = data.study.user_attrs.get("mlflow_study_run_id")
    if run_id:
        return str(run_id)
    experiment = data.client.get_experiment_by_name(data.study.study_name)
    if experiment is None:
        return None
    runs = data.client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{ROLE}` = 'study'", max_results=1
    )
    return runs[0].info.run_id if runs else None


def _trials_table(study: optuna.Study) -> pd.DataFrame:
    rows = []
    for t in study.get_trials(deepcopy=False):
        pairing = t.user_attrs.get("pairing", "")
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "pairing": pairing,
                "rule": pairing.partition("@")[2] or "replicate",
                "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
                **{k: v for k, v in t.params.items() if k != "pair"},
            }
        )
    return pd.DataFrame(rows)


def _runs_table(client: MlflowClient, study_name: str, role: str) -> pd.DataFrame:
    experiment = client.get_experiment_by_name(study_name)
    columns = ["trial", "pairing", "env", "seed", "status", "score", "run_id", "raw", "scale"]
    if experiment is None:
        return pd.DataFrame(columns=columns)
    rows, token = [], None
    while True:
        page = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`{ROLE}` = '{role}'",
            max_results=1000,
            page_token=token,
        )
        for run in page:
            tags = run.data.tags
            if "seed" not in tags:  # a confirmation's per-arm run
                continue
            env = tags.get("env.id", "")
            score = run.data.metrics.get("objective", np.nan)
            logged = tags.get("objective.normalization", "raw return")
            raw = np.nan if is_normalised(logged) else score
            if not is_normalised(logged):
                transform, logged = normalizer(env)
                score = transform(score)
            rows.append(
                {
                    "trial": int(tags["optuna.trial_number"]),
                    "pairing": tags.get("pairing", ""),
                    "env": env,
                    "seed": int(tags["seed"]),
                    "status": run.info.status,
                    "score": score,
                    "run_id": run.info.run_id,
                    "raw": raw,
                    "scale": logged,
                }
            )
        token = page.token
        if not token:
            break
    return pd.DataFrame(rows, columns=columns).sort_values(["trial", "env", "seed"])


def best_trials(data: StudyData) -> dict[str, int]:
    """The best complete trial of each pairing (baselines included): `{pairing: number}`.

    Picking the best of many trials flatters it (the winner's curse): a study run with
    `--confirm K` reruns these trials on fresh seeds, and the report's headline uses only those.
    """
    done = data.trials[data.trials["state"] == "COMPLETE"]
    if done.empty:
        return {}
    best = done.loc[done.groupby("pairing")["value"].idxmax()]
    return dict(zip(best["pairing"], best["number"].astype(int), strict=True))


def load_curves(
    data: StudyData,
    trials: list[int],
    *,
    key: str = "eval/return_mean",
    confirmed: bool = False,
) -> pd.DataFrame:
    """Metric histories of the finished runs of `trials`: one row per run and logged step.

    Args:
        key: the metric: `eval/return_mean` (then `score` is what the objective counts:
            human-normalised on Atari, raw otherwise), or any training metric such as
            `gap/function` or `loss/td` (then `score` is the value itself).
        confirmed: read the confirmation runs instead of the search runs.

    Columns: trial, pairing, env, seed, step, raw (the logged value), score.
    """
    rows = []
    table = data.confirm_runs if confirmed else data.runs
    runs = table[table["trial"].isin(trials) & (table["status"] == "FINISHED")]
    for run in runs.itertuples():
        transform = normalizer(run.env)[0] if key == "eval/return_mean" else float
        for m in data.client.get_metric_history(run.run_id, key):
            rows.append(
                {
                    "trial": run.trial,
                    "pairing": run.pairing,
                    "env": run.env,
                    "seed": run.seed,
                    "step": m.step,
                    "raw": m.value,
                    "score": transform(m.value),
                }
            )
    columns = ["trial", "pairing", "env", "seed", "step", "raw", "score"]
    return pd.DataFrame(rows, columns=columns)
