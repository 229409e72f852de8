"""TorchRL: bootstrap `DQNLoss` from a `HeteroPair` target and move it with `pair.step`.

TorchRL's loss modules cannot hold a separately parameterised target. `DQNLoss.__init__`
(`torchrl/objectives/dqn.py:172`) takes no target network; `convert_to_functional(...,
create_target_params=delay_value)` (`dqn.py:201`) clones the *online* parameters as the target
(`objectives/common.py:579-590`), and the loss runs the one value network with them
(`dqn.py:336`), so a target must have the online architecture. Its updaters (`SoftUpdate`,
`HardUpdate`) copy those clones in parameter space and refuse a loss without them
(`objectives/utils.py:397`).

The nearest working integration keeps `DQNLoss` unchanged:

- `DQNLoss(actor, delay_value=False)`: no cloned target (its "target" is the detached online
  parameters, `objectives/common.py:619-621`, which `PairTD0Estimator` ignores);
- `loss.make_value_estimator(PairTD0Estimator(pair, gamma=...))` (an instance is accepted,
  `objectives/common.py:912`): TD(0) with `next_value = pair.bootstrap(next observation)`,
  passed to `TD0Estimator.value_estimate` (`objectives/value/advantages.py:1268`);
- `PairUpdater(pair, replay_buffer).step()` after each optimizer step, in place of
  `HardUpdate(loss).step()`.

The target is not part of `loss.state_dict()`: checkpoint `PairUpdater.state_dict()` as well.
`DistributionalDQNLoss` takes no custom estimator (`dqn.py:407`), so C51 pairs need a
`LossModule` subclass; not provided here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torch import Tensor
from torchrl.objectives.value import TD0Estimator

from hetero_lr.pair import HeteroPair

Metrics = dict[str, float | Tensor]


def _flat(obs: Tensor, batch_dims: int) -> Tensor:
    """`[*batch, *obs_shape]` -> `[prod(batch), *obs_shape]` (the pair takes one batch dim)."""
    return obs.reshape(-1, *obs.shape[batch_dims:])


class PairTD0Estimator(TD0Estimator):
    """TD(0) value estimator whose bootstrap values come from a `HeteroPair`'s target.

    `r + gamma * (1 - terminated) * pair.bootstrap(s')`; `s'` is read at `("next", obs_key)`.

    Args:
        pair: the online/target pair; `pair.online` must be the network inside the loss's
            `QValueActor`. Held as a plain reference, not a submodule, so that
            `loss.parameters()` (the online optimizer's list) never includes the target.
        gamma: discount factor.
        obs_key: observation key of the value network's input.
        double: select the bootstrap action with the online network (double DQN; TorchRL's
            `double_dqn=True` needs `delay_value=True`, `dqn.py`).
        **kwargs: other `TD0Estimator` keyword arguments (`average_rewards`, keys, ...).
    """

    def __init__(
        self,
        pair: HeteroPair,
        *,
        gamma: float,
        obs_key: NestedKey = "observation",
        double: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(gamma=gamma, value_network=None, **kwargs)
        object.__setattr__(self, "pair", pair)  # not registered: see the class docstring
        self.obs_key, self.double = obs_key, double

    def value_estimate(
        self,
        tensordict: TensorDictBase,
        target_params: TensorDictBase | None = None,
        next_value: Tensor | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """TD(0) targets `[*batch, 1]`; `target_params` (the loss's own) are ignored."""
        if next_value is None:
            next_obs = tensordict.get(("next", self.obs_key))
            batch = tensordict.batch_size
            values = self.pair.bootstrap(_flat(next_obs, len(batch)), double=self.double)
            next_value = values.reshape(*batch, 1)
        return super().value_estimate(tensordict, next_value=next_value, **kwargs)


class PairUpdater:
    """TorchRL-style target updater: `step()` after each optimizer step calls `pair.step`.

    Plays the role of `torchrl.objectives.HardUpdate`/`SoftUpdate` (same `step()` name), but
    moves the pair's own target by its rule (e.g. `Replicate`), whatever its architecture.

    Args:
        pair: the pair whose target the rule moves.
        source: where Replicate batches come from: an object with `sample()` (a TorchRL
            replay buffer) or a callable, returning a TensorDict with one batch dimension.
        obs_key: observation key in the sampled TensorDict.
        action_key: action key (one-hot or index actions; used by the taken-action variant).
    """

    def __init__(
        self,
        pair: HeteroPair,
        source: Callable[[], TensorDictBase] | Any,
        *,
        obs_key: NestedKey = "observation",
        action_key: NestedKey = "action",
    ) -> None:
        self.pair = pair
        self._draw: Callable[[], TensorDictBase] = getattr(source, "sample", source)
        self.obs_key, self.action_key = obs_key, action_key

    def sample(self) -> tuple[Tensor, Tensor]:
        """One Replicate batch `(obs [B, ...], action indices [B])` from the source."""
        td = self._draw()
        batch_dims = len(td.batch_size)
        obs = _flat(td.get(self.obs_key), batch_dims)
        actions = td.get(self.action_key)
        if actions.dim() > batch_dims:  # one-hot (TorchRL's default action space) or [*, 1]
            actions = actions.squeeze(-1) if actions.shape[-1] == 1 else actions.argmax(-1)
        return obs, actions.reshape(-1).long()

    def step(self) -> Metrics:
        """Advance the rule by one online step; returns its metrics (`hetero_lr.updaters`)."""
        return self.pair.step(self.sample)

    def state_dict(self) -> dict[str, Any]:
        """Target weights and the rule's counters and optimizer: outside `loss.state_dict()`."""
        return {"target": self.pair.target.state_dict(), "update": self.pair.update.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pair.target.load_state_dict(state["target"])
        self.pair.update.load_state_dict(state["update"])


__all__ = ["PairTD0Estimator", "PairUpdater"]
