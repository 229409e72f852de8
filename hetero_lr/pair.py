"""`HeteroPair`: online and target Q-networks coupled only through a target-update rule.

Lookahead-Replicate (Asadi et al. 2024, "Learning the Target Network in Function Space") keeps
the target equal to the online network in function space rather than in parameter space, so
the two networks may come from different families; only their outputs must agree (actions,
atoms and support). The rules themselves (`Replicate`, `HardCopy`, `Polyak`) live in
`hetero_lr.updaters`; the pair binds its rule to the two networks once and calls `rule.step`.

Train/eval modes (matters for BatchNorm, e.g. most timm CNNs):
- Lookahead: the host sets the online net's mode (train, as in any agent).
- Replicate: the rule sets them (see `Replicate`): target in train mode, online in eval mode.
- `bootstrap`, `act_values` and `function_gap` use eval mode for both networks: bootstrap
  values never depend on the batch they are computed in.
The pair switches modes only inside its own methods and restores the previous mode after. The
target rests in eval mode (set at construction; it is trained only inside Replicate phases), so
bootstrapping needs no switch. Switches go through `hetero_lr.updaters.Modes`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor, nn

from hetero_lr.losses import expected_q, gather_actions
from hetero_lr.updaters import Metrics, Modes, Replicate, Sample, TargetUpdate


class HeteroPair(nn.Module):
    """Online and target Q-networks, possibly of different families, and their update rule.

    The networks share no parameter or buffer storage (checked); they must map the same
    observations to outputs of the same shape: Q-values `[B, A]` or categorical logits
    `[B, A, N]` with equal `support` buffers. Any `nn.Module`s qualify, not only registry ones.
    The online optimizer belongs to the host agent; the rule owns the target's.

    Args:
        online: the acting network, trained by the host's TD (Lookahead) steps.
        target: the network that supplies bootstrap values.
        update: a `Replicate`, `HardCopy` or `Polyak` rule (or another `TargetUpdate`).
        example_obs: a batch of observations to check at construction that both networks
            produce outputs of the same shape.

    Raises:
        ValueError: shared storage, mismatched outputs or supports, or a rule that cannot
            serve these networks (e.g. HardCopy between different architectures).

    Example:
        >>> pair = HeteroPair(build_network("impala", (4, 84, 84), 6),
        ...                   build_network("nature", (4, 84, 84), 6), Replicate(kr=1, kl=4))
    """

    def __init__(
        self,
        online: nn.Module,
        target: nn.Module,
        update: TargetUpdate,
        *,
        example_obs: Tensor | None = None,
    ) -> None:
        super().__init__()
        if online is target:
            raise ValueError("online and target must be two distinct networks")
        self.online, self.target = online, target
        self.update = update
        _check_no_shared_storage(online, target)
        support_online = getattr(online, "support", None)
        support_target = getattr(target, "support", None)
        if (support_online is None) != (support_target is None) or (
            support_online is not None and not torch.equal(support_online, support_target)
        ):
            raise ValueError(
                "online and target must both be scalar, or categorical with the same support"
            )
        self._modes = Modes(online=online, target=target)
        if example_obs is not None:
            with torch.no_grad(), self.modes(online=False, target=False):
                shapes = tuple(online(example_obs).shape), tuple(target(example_obs).shape)
            if shapes[0] != shapes[1]:
                raise ValueError(
                    f"online outputs {shapes[0]} but target outputs {shapes[1]} "
                    "for the same observations"
                )
        update.bind(online, target)
        target.eval()  # the target rests in eval mode (module docstring)

    def modes(
        self, *, online: bool | None = None, target: bool | None = None
    ) -> AbstractContextManager[None]:
        """Context: each network given in train (True) or eval (False) mode, restored after."""
        return self._modes(online=online, target=target)

    @property
    def support(self) -> Tensor | None:
        """Atom values `[N]` of categorical heads, None for scalar heads."""
        return getattr(self.online, "support", None)

    def forward(self, obs: Tensor) -> Tensor:
        """Online Q-values `[B, A]` (expected values for categorical heads), current mode."""
        return expected_q(self.online(obs), self.support)

    @torch.no_grad()
    def act_values(self, obs: Tensor) -> Tensor:
        """Online Q-values `[B, A]` for acting: eval mode, no gradient."""
        with self.modes(online=False):
            return expected_q(self.online(obs), self.support)

    @torch.no_grad()
    def bootstrap(self, next_obs: Tensor, double: bool = False) -> Tensor:
        """Bootstrap values from the target network, eval mode, no gradient.

        Args:
            next_obs: observations to bootstrap from `[B, ...]`.
            double: select the action with the online network (van Hasselt et al. 2016)
                instead of the target's own argmax.

        Returns:
            `max_a Q_target(s', a)` (or at the online argmax) `[B]`; for categorical heads the
            target's probabilities at that action `[B, N]`.
        """
        with self.modes(target=False):
            out_target = self.target(next_obs)
        if double:
            with self.modes(online=False):
                q_select = expected_q(self.online(next_obs), self.support)
        else:
            q_select = expected_q(out_target, self.support)
        best = q_select.argmax(dim=1)
        if self.support is None:
            return gather_actions(out_target, best)
        return gather_actions(out_target.softmax(dim=-1), best)

    def replicate_loss(
        self, obs: Tensor, actions: Tensor | None = None, *, weights: Tensor | None = None
    ) -> Tensor:
        """The rule's Replicate loss on `obs` in the current modes (`Replicate.replicate_loss`).

        Raises:
            TypeError: the pair's rule is not `Replicate`.
        """
        if not isinstance(self.update, Replicate):
            raise TypeError(f"replicate_loss needs a Replicate rule, not {self.update!r}")
        return self.update.replicate_loss(obs, actions, weights=weights)

    @torch.no_grad()
    def function_gap(self, obs: Tensor) -> float:
        """Mean over states and actions of `(Q_target - Q_online)^2` (expected Q), eval mode."""
        with self.modes(online=False, target=False):
            q_online = expected_q(self.online(obs), self.support)
            q_target = expected_q(self.target(obs), self.support)
        return (q_target - q_online).square().mean().item()

    def step(self, sample: Sample) -> Metrics:
        """Advance the target rule after one host Lookahead step (see the rule's docstring).

        Metric values are Python numbers or detached 0-d tensors (`hetero_lr.updaters`).
        """
        return self.update.step(sample)

    def online_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters for the host's (online) optimizer."""
        return self.online.parameters()

    def get_extra_state(self) -> dict[str, Any]:
        return {"update": self.update.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.update.load_state_dict(state["update"])

    def extra_repr(self) -> str:
        n_online = sum(p.numel() for p in self.online.parameters())
        n_target = sum(p.numel() for p in self.target.parameters())
        return f"online_params={n_online:,}, target_params={n_target:,}, update={self.update!r}"


def _check_no_shared_storage(online: nn.Module, target: nn.Module) -> None:
    """Raise if any parameter or buffer of one network aliases storage of the other."""

    def storages(module: nn.Module) -> dict[int, str]:
        tensors = list(module.named_parameters()) + list(module.named_buffers())
        return {t.untyped_storage().data_ptr(): name for name, t in tensors if t.numel()}

    shared = storages(online).keys() & storages(target).keys()
    if shared:
        name = storages(online)[next(iter(shared))]
        raise ValueError(
            f"online and target share storage (e.g. {name!r}); "
            "pass two separate networks (copy.deepcopy the online one)"
        )


__all__ = ["HeteroPair", "Sample"]
