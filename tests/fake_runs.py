"""A stand-in for `TrainingRun` in study tests: scripted evaluation returns, no training."""

from __future__ import annotations

from collections.abc import Callable

from hetero_lr.agent import DivergenceError
from hetero_lr.config import TrainConfig, flatten

Score = Callable[[TrainConfig, int], float]
"""(run settings, agent step) -> the evaluation return at that step."""


class FakeRun:
    """Logs a TD-loss point per `run_until` and an evaluation per `evaluate`."""

    def __init__(self, cfg: TrainConfig, logger, score: Score, diverges: bool) -> None:
        self.cfg, self.logger, self.score, self.diverges = cfg, logger, score, diverges
        self.step = 0
        self.eval_returns: list[float] = []

    def params(self) -> dict:
        return flatten(self.cfg) | {"online_params": 10, "target_params": 10}

    def run_until(self, step: int) -> None:
        if self.diverges:
            raise DivergenceError("diverged: mean |Q| 1.26e+03 > 200")
        self.step = min(step, self.cfg.steps)
        self.logger.log_metrics(
            {
                "loss/td": 1.0 / self.step,
                "gap/function": 2.0 / self.step,
                "q/online_abs_mean": self.step / self.cfg.steps,
            },
            self.step,
        )
        # One training episode per call, scoring half the evaluation score at this step.
        self.logger.log_metrics(
            {"charts/episodic_return": self.score(self.cfg, self.step) / 2}, self.step
        )

    def evaluate(self) -> float:
        value = self.score(self.cfg, self.step)
        self.eval_returns.append(value)
        self.logger.log_metrics({"eval/return_mean": value}, self.step)
        return value

    def state_dict(self) -> dict:
        return {"step": self.step, "evaluations": {"steps": [], "returns": []}}

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]

    def close(self) -> None:
        pass


def fake_runs(score: Score, diverges: Callable[[TrainConfig], bool] = lambda cfg: False):
    """A `RunFactory` whose runs return `score(cfg, step)` and raise where `diverges(cfg)`."""
    return lambda cfg, logger: FakeRun(cfg, logger, score, diverges(cfg))
