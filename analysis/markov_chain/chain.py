"""A fixed-policy Markov reward process and its true values, the closed form both experiments
are measured against."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Chain:
    """A fixed-policy Markov reward process.

    Attributes:
        transitions: P `[S, S]`, rows sum to 1.
        rewards: expected reward r `[S]` on leaving each state.
        gamma: discount in [0, 1).
        distribution: state distribution d `[S]` weighting both losses (D = diag(d)).
    """

    transitions: np.ndarray
    rewards: np.ndarray
    gamma: float
    distribution: np.ndarray

    @property
    def num_states(self) -> int:
        """Number of states S."""
        return len(self.rewards)

    def values(self) -> np.ndarray:
        """v_pi = (I - gamma P)^-1 r `[S]`, the fixed point of the Bellman equation."""
        eye = np.eye(self.num_states)
        return np.linalg.solve(eye - self.gamma * self.transitions, self.rewards)


def stationary_distribution(transitions: np.ndarray) -> np.ndarray:
    """The left eigenvector d = d P with eigenvalue 1, normalised to sum 1."""
    eigvals, eigvecs = np.linalg.eig(transitions.T)
    d = np.real(eigvecs[:, np.argmin(np.abs(eigvals - 1.0))])
    return d / d.sum()
