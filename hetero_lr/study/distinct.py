"""A sampler wrapper that does not propose a point the study already holds.

Every trial of a study runs on the same seeds (`run_seeds`: common random numbers), so two
trials with equal settings give equal scores and the second one is a wasted trial. TPE's random
start-up draws ignore the trials already in the study, and on a small integer space they
collide often: two draws of log-uniform ints KR in [1, 4] and KL in [1, 64] are the same
point with probability 2.7%, so TPE's default 10 start-up trials repeat a point with
probability 0.64 (20 trials: 0.98; Monte Carlo over Optuna's log-int rounding). Optuna's
FAQ handles duplicates inside the objective (return the earlier value or prune); this redraws
at sampling time instead, so no trial of the budget is spent on a repeat.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

# Redraws before a repeat is accepted (the space may have no new point left).
MAX_REDRAWS = 32


class DistinctSampler(optuna.samplers.BaseSampler):
    """Delegates to `base` and redraws a proposal that would complete a trial equal in every
    parameter to another trial of the study, in any state (a failed point fails again on the
    same seeds).

    A proposal is checked when it would complete such a parameter set: the last independent
    parameter of the trial (only it is redrawn: the earlier ones are already set), or a
    relative (joint) sample. After `MAX_REDRAWS` repeats in a row the repeat is kept (every
    value of the last parameter may already be taken beside the earlier ones).
    """

    def __init__(self, base: optuna.samplers.BaseSampler) -> None:
        self.base = base

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self.base.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        params = self.base.sample_relative(study, trial, search_space)
        for _ in range(MAX_REDRAWS):
            if not params or not _repeats(study, trial, trial.params | params):
                break
            params = self.base.sample_relative(study, trial, search_space)
        return params

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        value = self.base.sample_independent(study, trial, param_name, param_distribution)
        for _ in range(MAX_REDRAWS):
            if not _repeats(study, trial, trial.params | {param_name: value}):
                break
            value = self.base.sample_independent(study, trial, param_name, param_distribution)
        return value

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()


def _repeats(study: optuna.Study, trial: FrozenTrial, params: dict[str, Any]) -> bool:
    """Whether another trial of `study` has exactly `params` (same names, same values)."""
    return any(
        other.number != trial.number and other.params == params
        for other in study.get_trials(deepcopy=False)
    )
