"""DistinctSampler: a study's sampler does not propose a point the study already holds."""

from __future__ import annotations

import warnings

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from hetero_lr.study.distinct import MAX_REDRAWS, DistinctSampler
from hetero_lr.study.spec import parse_study, suggest
from hetero_lr.study.storage import make_sampler

optuna.logging.set_verbosity(optuna.logging.WARNING)


class Scripted(optuna.samplers.RandomSampler):
    """Proposes the scripted values in turn: independently per name, or jointly."""

    def __init__(self, independent=(), relative=()) -> None:
        super().__init__(seed=0)
        self.independent = {k: iter(v) for k, v in dict(independent).items()}
        self.relative = iter(relative)
        self.space: dict = {}

    def infer_relative_search_space(self, study, trial):
        return self.space

    def sample_relative(self, study, trial, search_space):
        return next(self.relative, {})

    def sample_independent(self, study, trial, param_name, param_distribution):
        return next(self.independent[param_name])


def study_with(sampler: optuna.samplers.BaseSampler, complete=(), failed=()) -> optuna.Study:
    """A study holding `complete` and `failed` trials (dicts of int parameters)."""
    study = optuna.create_study(sampler=sampler, direction="maximize")
    for point, state in [(p, TrialState.COMPLETE) for p in complete] + [
        (p, TrialState.FAIL) for p in failed
    ]:
        study.enqueue_trial(point)
        trial = study.ask()
        for name in point:
            trial.suggest_int(name, 1, 64)
        study.tell(trial, 1.0 if state == TrialState.COMPLETE else None, state=state)
    return study


def ask(study: optuna.Study) -> dict:
    trial = study.ask()
    trial.suggest_int("kr", 1, 4)
    trial.suggest_int("kl", 1, 64)
    return trial.params


def test_the_last_parameter_is_redrawn_when_it_would_repeat_a_trial() -> None:
    base = Scripted(independent={"kr": [1, 2], "kl": [3, 3, 5, 3]})
    # (1, 3) completed, (2, 5) failed: a failed point counts too (it fails again on these seeds)
    study = study_with(
        DistinctSampler(base), complete=[{"kr": 1, "kl": 3}], failed=[{"kr": 2, "kl": 5}]
    )
    assert ask(study) == {"kr": 1, "kl": 5}  # 3 would repeat trial 0: redrawn twice
    assert ask(study) == {"kr": 2, "kl": 3}  # kl=3 is new beside kr=2: kept


def test_a_repeated_joint_proposal_is_redrawn() -> None:
    base = Scripted(relative=[{"kr": 1, "kl": 3}, {"kr": 1, "kl": 4}])
    base.space = {
        "kr": optuna.distributions.IntDistribution(1, 4),
        "kl": optuna.distributions.IntDistribution(1, 64),
    }
    study = study_with(DistinctSampler(base), complete=[{"kr": 1, "kl": 3}])
    assert ask(study) == {"kr": 1, "kl": 4}


def test_a_space_with_no_new_point_keeps_the_repeat() -> None:
    base = Scripted(independent={"kr": [1], "kl": [3] * (MAX_REDRAWS + 1)})
    study = study_with(DistinctSampler(base), complete=[{"kr": 1, "kl": 3}])
    assert ask(study) == {"kr": 1, "kl": 3}


@pytest.mark.parametrize("seed", range(5))
def test_random_draws_of_a_small_space_are_distinct(seed: int) -> None:
    # 8 points of 2 x 8 (no value of `a` can have all 8 `b` taken yet); plain independent
    # draws give 8 distinct points with probability 16!/(8! 16^8), about 12%.
    study = optuna.create_study(sampler=DistinctSampler(optuna.samplers.RandomSampler(seed)))
    points = []
    for _ in range(8):
        trial = study.ask()
        points.append((trial.suggest_int("a", 1, 2), trial.suggest_int("b", 1, 8)))
        study.tell(trial, 0.0)
    assert len(set(points)) == 8


def test_two_workers_of_a_tpe_study_do_not_run_the_same_point() -> None:
    """The README quick start's space: its workers' start-up draws collide without the guard."""
    with open("studies/quickstart.yaml") as f:
        spec = parse_study(yaml.safe_load(f) | {"trials": 20})
    samplers = [make_sampler(spec, worker=w, n_existing=0) for w in (0, 1)]
    assert all(isinstance(s, DistinctSampler) for s in samplers)
    bare = [s.base for s in samplers]  # the same TPE seeds, unguarded
    for group in (samplers, bare):
        study = optuna.create_study(direction="maximize")
        points = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            for i in range(20):
                study.sampler = group[i % 2]
                trial = study.ask()
                suggest(trial, spec)
                points.append(tuple(sorted(trial.params.items())))
                study.tell(trial, float(i % 3))
        if group is samplers:
            assert len(set(points)) == len(points)
        else:
            assert len(set(points)) < len(points)  # the guard is what keeps them apart
