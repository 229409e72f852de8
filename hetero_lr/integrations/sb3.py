"""Stable-Baselines3: `HeteroDQN`, a DQN whose target network is learned by Lookahead-Replicate.

SB3's DQN (`stable_baselines3/dqn/policies.py:163-173`) builds the target as a copy of the online
`QNetwork` and moves it by `polyak_update` every `target_update_interval` environment steps
(`dqn/dqn.py:174`), which fails for a target of another architecture (`common/utils.py:551`
zips the parameter lists with `strict=True`). Here the policy's `_build` puts any registry
network or `nn.Module` in `q_net_target` and couples the two through a `HeteroPair`; `train`
bootstraps from `pair.bootstrap` and calls `pair.step` after every optimizer step, and
`_on_step` no longer touches the target. Save/load go through SB3's own `save`/`load`: the
pair's counters and target optimizer travel in `policy.pth` as the policy's extra state.

Example:
    >>> from hetero_lr import Replicate
    >>> from hetero_lr.integrations.sb3 import HeteroDQN
    >>> model = HeteroDQN("MlpPolicy", "CartPole-v1", target="mlp",
    ...                   target_kwargs={"hidden": (32, 32)},
    ...                   target_update=Replicate(kr=32, kl=128, lr=1e-3))
    >>> model.learn(10_000)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.type_aliases import GymEnv, PyTorchObs, Schedule
from stable_baselines3.dqn import DQN
from stable_baselines3.dqn.policies import CnnPolicy, DQNPolicy, MultiInputPolicy
from torch import Tensor, nn
from torch.nn import functional as F

from hetero_lr.networks import build_network
from hetero_lr.pair import HeteroPair
from hetero_lr.updaters import Replicate, TargetUpdate

TargetSpec = str | nn.Module | None
"""A registry spec (`"mlp"`, `"nature"`, `"timm/test_resnet"`, ...), an `nn.Module` mapping
SB3-preprocessed observations to Q-values `[B, A]`, or None for SB3's own `QNetwork`
architecture (for the `HardCopy`/`Polyak` baselines)."""


def default_target_update() -> Replicate:
    """The rule used when none is given: 32 Replicate steps after every 128 online steps.

    Our choice, not the paper's, measured only on CartPole-v1 with rl-zoo3's DQN schedule (128
    gradient steps per 256 environment steps), a 64x64 online and a 32x32 target MLP: mean
    evaluation returns 200-405 after 30k steps (seeds 0-3; SB3's own hard copy: 500, seed 0),
    while replicating at every or every other step (kr=1, kl=1 or 2) collapsed to about 9.
    Target Adam, learning rate 1e-3.
    """
    return Replicate(kr=32, kl=128, lr=1e-3)


class SB3Preprocessed(nn.Module):
    """Applies SB3's observation preprocessing before a foreign network.

    SB3's `QNetwork` preprocesses inside its forward (`common/policies.py:130`: images / 255,
    one-hot for discrete spaces), so the replay buffer hands both networks raw observations;
    a foreign target has to see the same tensors as the online features extractor.
    """

    def __init__(
        self, net: nn.Module, observation_space: spaces.Space, normalize_images: bool = True
    ) -> None:
        super().__init__()
        self.net = net
        self.observation_space, self.normalize_images = observation_space, normalize_images

    def forward(self, obs: PyTorchObs) -> Tensor:
        return self.net(preprocess_obs(obs, self.observation_space, self.normalize_images))


class HeteroPolicyMixin:
    """DQN policy part: the target is a foreign network coupled to `q_net` by `self.pair`.

    Keyword args (also stored for SB3's save/load through `policy_kwargs`):
        target: see `TargetSpec`.
        target_kwargs: options for `build_network` (e.g. `{"hidden": (32, 32)}` for `mlp`,
            `{"head": "dueling"}`).
        target_update: the rule moving the target (copied, so the argument stays unbound);
            None: `default_target_update()`.
    """

    q_net: nn.Module
    q_net_target: nn.Module
    pair: HeteroPair
    observation_space: spaces.Space
    action_space: spaces.Discrete
    normalize_images: bool

    def __init__(
        self,
        *args: Any,
        target: TargetSpec = "mlp",
        target_kwargs: Mapping[str, Any] | None = None,
        target_update: TargetUpdate | None = None,
        **kwargs: Any,
    ) -> None:
        # DQNPolicy.__init__ ends by calling `_build`, which needs these; a module cannot be
        # assigned before `nn.Module.__init__`, so store them as one plain attribute.
        object.__setattr__(
            self,
            "_target_args",
            {
                "target": target,
                "target_kwargs": dict(target_kwargs or {}),
                "target_update": target_update,
            },
        )
        super().__init__(*args, **kwargs)

    def _build(self, lr_schedule: Schedule) -> None:
        """Online net and optimizer as in `DQNPolicy._build`; target and pair from the kwargs."""
        self.q_net = self.make_q_net()  # type: ignore[attr-defined]
        self.q_net_target = self._make_target()
        rule = self._target_args["target_update"]
        rule = default_target_update() if rule is None else copy.deepcopy(rule)
        example_obs, _ = self.obs_to_tensor(self.observation_space.sample())  # type: ignore[attr-defined]
        # Not a submodule: both networks are already registered as `q_net`/`q_net_target`,
        # so the policy's state_dict keeps SB3's keys; the rule's state rides in extra state.
        object.__setattr__(
            self, "pair", HeteroPair(self.q_net, self.q_net_target, rule, example_obs=example_obs)
        )
        # Only the online parameters, as SB3 >= 2.4 does (PR #1963).
        self.optimizer = self.optimizer_class(  # type: ignore[attr-defined]
            self.q_net.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs
        )

    def _make_target(self) -> nn.Module:
        spec = self._target_args["target"]
        if spec is None:
            return self.make_q_net()  # type: ignore[attr-defined]
        if isinstance(spec, nn.Module):
            net = copy.deepcopy(spec)  # the kwarg stays the untrained prototype that is saved
        else:
            example, _ = self.obs_to_tensor(self.observation_space.sample())  # type: ignore[attr-defined]
            features = preprocess_obs(example, self.observation_space, self.normalize_images)
            if not isinstance(features, Tensor):
                raise ValueError(
                    "registry targets need a Box or Discrete observation space; pass an "
                    "nn.Module target for Dict spaces"
                )
            net = build_network(
                spec,
                tuple(features.shape[1:]),
                int(self.action_space.n),
                **self._target_args["target_kwargs"],
            )
        return SB3Preprocessed(net, self.observation_space, self.normalize_images)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()  # type: ignore[misc]
        data.update(self._target_args)
        return data

    def get_extra_state(self) -> dict[str, Any]:
        """The rule's counters and target optimizer, saved in SB3's `policy.pth`."""
        return {"pair": self.pair.get_extra_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.pair.set_extra_state(state["pair"])


class HeteroDQNPolicy(HeteroPolicyMixin, DQNPolicy):
    """`MlpPolicy` with a foreign target (see `HeteroPolicyMixin`)."""


class HeteroCnnPolicy(HeteroPolicyMixin, CnnPolicy):
    """`CnnPolicy` with a foreign target (see `HeteroPolicyMixin`)."""


class HeteroMultiInputPolicy(HeteroPolicyMixin, MultiInputPolicy):
    """`MultiInputPolicy` with a foreign target (an `nn.Module` taking the preprocessed dict)."""


class HeteroDQN(DQN):
    """SB3 `DQN` whose target network is any registry spec or `nn.Module`, moved by a rule.

    Accepts every `DQN` argument except `tau` and `target_update_interval` (the rule replaces
    them), plus:

    Args:
        target: registry spec, `nn.Module` (fed SB3-preprocessed observations) or None for
            SB3's own `QNetwork` architecture.
        target_kwargs: `build_network` options for a spec target.
        target_update: `Replicate` (default `default_target_update()`), or `HardCopy`/`Polyak`
            with `target=None`. Its schedule counts optimizer (gradient) steps, not the
            environment steps SB3's `target_update_interval` counts (`dqn/dqn.py:182`).
        double_q: select the bootstrap action with the online network (double DQN); SB3's
            DQN does not (`dqn/dqn.py:205`), so the default matches it.

    `model.policy.pair` is the `HeteroPair`; the SB3 logger gets the rule's metrics under
    `target/`.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": HeteroDQNPolicy,
        "CnnPolicy": HeteroCnnPolicy,
        "MultiInputPolicy": HeteroMultiInputPolicy,
    }
    policy: HeteroDQNPolicy

    def __init__(
        self,
        policy: str | type[HeteroPolicyMixin],
        env: GymEnv | str | None,
        *,
        target: TargetSpec = "mlp",
        target_kwargs: Mapping[str, Any] | None = None,
        target_update: TargetUpdate | None = None,
        double_q: bool = False,
        policy_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        for name in ("tau", "target_update_interval"):
            if name in kwargs:
                raise ValueError(
                    f"HeteroDQN has no {name!r}: the target moves by `target_update` "
                    "(e.g. HardCopy(period) or Polyak(tau) with target=None)"
                )
        policy_kwargs = dict(policy_kwargs or {})
        given = {"target": target, "target_kwargs": target_kwargs, "target_update": target_update}
        if given.keys() & policy_kwargs.keys():
            raise ValueError("pass target, target_kwargs and target_update to HeteroDQN itself")
        # In policy_kwargs, SB3 saves them with the model and rebuilds the policy on `load`.
        policy_kwargs.update(given)
        self.double_q = double_q
        super().__init__(policy, env, policy_kwargs=policy_kwargs, **kwargs)  # type: ignore[arg-type]

    def _setup_model(self) -> None:
        super()._setup_model()
        if not isinstance(self.policy, HeteroPolicyMixin):
            raise TypeError(
                f"HeteroDQN needs a policy with HeteroPolicyMixin, got {type(self.policy)}"
            )

    def _on_step(self) -> None:
        """Exploration schedule only: the target moves in `train`, per optimizer step."""
        self._n_calls += 1
        self.exploration_rate = self.exploration_schedule(self._current_progress_remaining)
        self.logger.record("rollout/exploration_rate", self.exploration_rate)

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        """SB3's DQN update (`dqn/dqn.py:190-234`) with the pair's bootstrap and rule step."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        pair = self.policy.pair

        def sample() -> tuple[Tensor, Tensor]:  # a fresh batch for each Replicate step
            data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            return data.observations, data.actions.reshape(-1).long()  # type: ignore[return-value]

        losses: list[float] = []
        metrics: dict[str, list[float]] = {}
        for _ in range(gradient_steps):
            replay_data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            # n-step discounts exist from SB3 2.6 on (`NStepReplayBuffer`)
            discounts = getattr(replay_data, "discounts", None)
            discounts = self.gamma if discounts is None else discounts
            with torch.no_grad():
                next_q_values = pair.bootstrap(replay_data.next_observations, double=self.double_q)
                next_q_values = next_q_values.reshape(-1, 1)
                target_q_values = (
                    replay_data.rewards + (1 - replay_data.dones) * discounts * next_q_values
                )
            current_q_values = torch.gather(
                self.q_net(replay_data.observations), dim=1, index=replay_data.actions.long()
            )
            loss = F.smooth_l1_loss(current_q_values, target_q_values)
            losses.append(loss.item())
            self.policy.optimizer.zero_grad()
            loss.backward()
            # Online parameters only: SB3 clips `policy.parameters()` (`dqn/dqn.py:227`), which
            # would now include the target's gradients left by its last Replicate step.
            nn.utils.clip_grad_norm_(self.q_net.parameters(), self.max_grad_norm)
            self.policy.optimizer.step()
            for key, value in pair.step(sample).items():
                metrics.setdefault(key, []).append(float(value))
        self._n_updates += gradient_steps
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/loss", np.mean(losses))
        for key, values in metrics.items():
            self.logger.record(f"target/{key.rsplit('/', 1)[-1]}", np.mean(values))


__all__ = [
    "HeteroCnnPolicy",
    "HeteroDQN",
    "HeteroDQNPolicy",
    "HeteroMultiInputPolicy",
    "HeteroPolicyMixin",
    "SB3Preprocessed",
    "default_target_update",
]
