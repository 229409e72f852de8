"""Confirmation: the chosen settings run again on fresh seeds; headline numbers use only these.

A search picks each pairing's best trial on the seeds that scored it, so that trial's search
score is biased upward (the winner's curse: the maximum of noisy estimates overstates the
best setting). After the search, each pairing's best complete trial and each baseline run again
with `spec.confirm` seeds that no search run used. Their scores are unbiased for the chosen
settings; the search score travels beside them as "selection". Baselines are confirmed the same
way, so every pairing is compared with a baseline measured on the same footing.

Stored in the Optuna study's user attribute `confirmation` (one entry per arm, written as each
arm finishes, so an interrupted confirmation resumes with the next arm) and in MLflow: a run
per arm tagged `hetero_lr.role=confirm` under the study run, with one nested run per seed
(also `confirm`, tagged `seed`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
from mlflow.entities import Metric

from hetero_lr.config import TrainConfig, from_dict
from hetero_lr.study._console import now_ms, say
from hetero_lr.study.runs import RunFactory, RunSlot, eval_steps
from hetero_lr.study.settings import StudySettings
from hetero_lr.study.spec import StudySpec
from hetero_lr.tracking import Tracker

ATTR = "confirmation"
ROLE = "confirm"


def confirm_seeds(study_seed: int, n: int, exclude: tuple[int, ...]) -> tuple[int, ...]:
    """`n` run seeds for confirmation, from a stream apart from the search's, none in `exclude`."""
    state = np.random.SeedSequence(study_seed, spawn_key=(1,)).generate_state(
        n + len(exclude), dtype=np.uint32
    )
    fresh = [int(s >> 1) for s in state if int(s >> 1) not in exclude]
    return tuple(fresh[:n])


def candidates(study: optuna.Study, spec: StudySpec) -> dict[str, optuna.trial.FrozenTrial]:
    """Arm label -> the trial to confirm: each pairing's best complete trial, each baseline."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    chosen: dict[str, optuna.trial.FrozenTrial] = {}
    for arm in (*spec.pairings, *spec.baseline_arms):
        trials = [t for t in complete if t.user_attrs.get("pairing") == arm.label]
        if trials:
            chosen[arm.label] = max(trials, key=lambda t: t.value)
    return chosen


def trial_config(trial: optuna.trial.FrozenTrial) -> TrainConfig:
    """The resolved settings a trial ran with (its `config` user attribute)."""
    nested: dict[str, Any] = {}
    for key, value in trial.user_attrs["config"].items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return from_dict(TrainConfig, nested)


def run_confirmation(
    study: optuna.Study,
    settings: StudySettings,
    *,
    tracker: Tracker,
    experiment_id: str,
    study_run_id: str,
    run_factory: RunFactory,
) -> dict[str, Any]:
    """Confirm every candidate not yet confirmed with these seeds; returns all records.

    A record: `{"trial", "selection", "seeds", "scores": {env: [score per seed]}, "failed",
    "mlflow_run_id"}`; a diverged or crashed run is listed in `failed` and left out of `scores`.
    """
    from hetero_lr.agent import DivergenceError

    spec = settings.spec
    seeds = confirm_seeds(spec.seed, spec.confirm, settings.run_seeds)
    records: dict[str, Any] = dict(study.user_attrs.get(ATTR, {}))
    for label, trial in candidates(study, spec).items():
        done = records.get(label)
        if done and done["trial"] == trial.number and done["seeds"] == list(seeds):
            continue
        say(f"confirming {label} (trial {trial.number}) on {len(seeds)} fresh seeds")
        cfg = trial_config(trial)
        about = (
            f"Confirmation of {label}: trial {trial.number}'s settings (search score "
            f"{trial.value:.4g}) on {len(seeds)} fresh seeds x {len(spec.env_ids)} environment(s)."
        )
        parent = tracker.start_run(
            experiment_id,
            name=f"confirm {label} t{trial.number:04d}",
            role=ROLE,
            parent_run_id=study_run_id,
            tags={"pairing": label, "optuna.trial_number": trial.number},
            description=f"{about} Running.",
        )
        scores: dict[str, list[float]] = {env: [] for env in spec.env_ids}
        failed: list[str] = []
        for env_id in spec.env_ids:
            for k, seed in enumerate(seeds):
                tags = {"pairing": label, "optuna.trial_number": trial.number}
                game = f" {env_id.split('/')[-1]}" if len(spec.env_ids) > 1 else ""
                slot = RunSlot.of(cfg, env_id, seed, f"c{k} seed={seed}{game}", **tags)
                try:
                    slot.start(
                        run_factory,
                        tracker,
                        experiment_id,
                        role=ROLE,
                        parent_run_id=parent,
                        description=f"Confirmation seed {seed} of {label} on {env_id}.",
                    )
                    for step in eval_steps(slot.cfg):
                        slot.advance(step)
                except DivergenceError as err:
                    slot.end("FAILED", f"{type(err).__name__}: {err}")
                    failed.append(f"{env_id} seed {seed}: {err}")
                    continue
                except BaseException as err:  # a stop signal ends the runs KILLED
                    status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
                    slot.end(status, f"{type(err).__name__}: {err}")
                    tracker.end_run(parent, status, f"{type(err).__name__}: {err}")
                    raise
                scores[env_id].append(slot.finish(spec.last_evals))
        pooled = [s for env_scores in scores.values() for s in env_scores]
        records[label] = {
            "trial": trial.number,
            "selection": trial.value,
            "seeds": list(seeds),
            "scores": scores,
            "failed": failed,
            "mlflow_run_id": parent,
        }
        tracker.set_tags(parent, {"selection": trial.value, "confirm.failed": len(failed)})
        tracker.log_params(parent, {"confirm_seeds": ",".join(map(str, seeds))})
        if pooled:
            objective = Metric("objective", float(np.mean(pooled)), now_ms(), cfg.steps)
            tracker.log_metrics(parent, [objective])
        outcome = f"mean score {np.mean(pooled):.4g} over {len(pooled)} runs" if pooled else ""
        tracker.describe(parent, f"{about} {outcome}; failed runs: {len(failed)}.")
        tracker.end_run(parent, "FINISHED" if pooled else "FAILED", "; ".join(failed) or None)
        study.set_user_attr(ATTR, records)
    return records
