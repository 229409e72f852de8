"""`HeteroPair`: online and target Q-networks coupled only through a target-update rule.

Lookahead-Replicate (Asadi et al. 2024, "Learning the Target Network in Function Space",
Algorithm 1) alternates `kl` Lookahead steps — ordinary TD steps on the online parameters
theta toward targets bootstrapped from the target network w — with `kr` Replicate steps, gradient
steps on w that shrink the function-space gap

    G(w) = E_s sum_a ( Q_w(s, a) - Q_theta(s, a) )^2        (all actions; or at the replayed a)

with Q_theta held fixed. Nothing else ties theta to w, so the two networks may come from
different families; only their outputs must agree (actions, atoms and support).

The paper's Replicate optimizer, learning rate and KR/KL values are not public; every default
here is this package's own. Deviations: the block schedule counts host optimizer steps, and the
interleaved schedule (spreading the same KR steps evenly over the KL window) is an addition.

Train/eval modes (matters for BatchNorm, e.g. most timm CNNs):
- Lookahead: the host sets the online net's mode (train, as in any agent).
- Replicate: the target is in train mode (batch statistics, running stats updated, as in
  supervised regression); the online net is in eval mode, so the function being replicated is
  the one the online net computes at inference.
- `bootstrap`, `act_values`, `function_gap` and the Replicate loss reported after a phase use eval
  mode for both networks: bootstrap values never depend on the batch they are computed in.
The pair switches modes only inside its own methods and restores the previous mode after.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import Tensor, nn

from hetero_lr.losses import expected_q, gather_actions, replicate_loss

Sample = Callable[[], tuple[Tensor, Tensor]]
"""Returns a fresh replay batch `(obs [B, ...], actions [B])` on the networks' device."""


@contextmanager
def _mode(module: nn.Module, training: bool) -> Iterator[None]:
    previous = module.training
    if previous != training:
        module.train(training)
    try:
        yield
    finally:
        if previous != training:
            module.train(previous)


class TargetUpdate(ABC):
    """A rule moving the target network toward the online one; owns its counters and state."""

    def bind(self, online: nn.Module, target: nn.Module) -> None:  # noqa: B027  (optional hook)
        """Attach to a pair's networks (called once by `HeteroPair`); checks and set-up."""

    @abstractmethod
    def step(self, pair: HeteroPair, sample: Sample) -> dict[str, float]:
        """Called after each host (Lookahead) step; returns metrics incl. `replicate_steps`."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Counters (and optimizer state) for checkpoints."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""


class Replicate(TargetUpdate):
    """Lookahead-Replicate: `kr` gradient steps on the target per `kl` online steps.

    Args:
        kr: Replicate gradient steps on the target per Replicate phase (>= 1).
        kl: Lookahead (online) gradient steps between Replicate phases (>= 1).
        lr: learning rate of the target's own optimizer.
        variant: `all_actions` regresses every action's output (the paper's strongest
            variant); `taken_action` only the replayed action's.
        loss: `mse`, `huber` (on Q-values) or `cross_entropy` (categorical heads).
        schedule: `block` runs all `kr` steps after every `kl`-th call (Algorithm 1);
            `interleaved` spreads them evenly: call t runs floor(t kr / kl) - floor((t-1) kr / kl).
        optimizer: `adam` or `sgd` for the target network.
        max_grad_norm: clip the target's gradient norm; None disables.

    Counters: `online_steps` counts `step` calls, `replicate_steps` target updates. After
    `t` calls exactly `floor(t / kl) * kr` (block) or `floor(t * kr / kl)` (interleaved)
    Replicate steps have run.
    """

    def __init__(
        self,
        kr: int,
        kl: int,
        *,
        lr: float = 1e-4,
        variant: Literal["all_actions", "taken_action"] = "all_actions",
        loss: Literal["mse", "huber", "cross_entropy"] = "mse",
        schedule: Literal["block", "interleaved"] = "block",
        optimizer: Literal["adam", "sgd"] = "adam",
        max_grad_norm: float | None = None,
    ) -> None:
        for name, value in (("kr", kr), ("kl", kl)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        _check_choice("variant", variant, ("all_actions", "taken_action"))
        _check_choice("loss", loss, ("mse", "huber", "cross_entropy"))
        _check_choice("schedule", schedule, ("block", "interleaved"))
        _check_choice("optimizer", optimizer, ("adam", "sgd"))
        self.kr, self.kl, self.lr = kr, kl, lr
        self.variant, self.loss, self.schedule = variant, loss, schedule
        self.optimizer_name, self.max_grad_norm = optimizer, max_grad_norm
        self.online_steps = 0
        self.replicate_steps = 0
        self.optimizer: torch.optim.Optimizer | None = None

    def bind(self, online: nn.Module, target: nn.Module) -> None:
        params = [p for p in target.parameters() if p.requires_grad]
        if not params:
            raise ValueError("Replicate needs a target network with trainable parameters")
        if self.loss == "cross_entropy" and getattr(target, "support", None) is None:
            raise ValueError("Replicate(loss='cross_entropy') needs categorical (c51) heads")
        # Fused Adam is 6-9x faster than the default implementation on CPU (measured here).
        fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
        if self.optimizer_name == "adam":
            self.optimizer = torch.optim.Adam(params, lr=self.lr, fused=fused or None)
        else:
            self.optimizer = torch.optim.SGD(params, lr=self.lr)

    def due(self, call: int) -> int:
        """Replicate steps to run at the `call`-th `step` call (1-based)."""
        if self.schedule == "block":
            return self.kr if call % self.kl == 0 else 0
        return call * self.kr // self.kl - (call - 1) * self.kr // self.kl

    def step(self, pair: HeteroPair, sample: Sample) -> dict[str, float]:
        self.online_steps += 1
        n = self.due(self.online_steps)
        if n == 0:
            return {"replicate_steps": 0}
        assert self.optimizer is not None, "Replicate.step before bind"
        before = after = math.nan
        with _mode(pair.online, False), _mode(pair.target, True):
            for i in range(n):
                obs, actions = sample()
                with torch.no_grad():
                    out_online = pair.online(obs)
                loss = pair.replicate_loss_from(pair.target(obs), out_online, actions)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.max_grad_norm is not None:
                    nn.utils.clip_grad_norm_(pair.target.parameters(), self.max_grad_norm)
                self.optimizer.step()
                if i == 0:
                    before = loss.item()
            with _mode(pair.target, False), torch.no_grad():
                after = pair.replicate_loss_from(pair.target(obs), out_online, actions).item()
        self.replicate_steps += n
        return {
            "replicate_steps": n,
            "replicate_loss_before": before,
            "replicate_loss_after": after,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "online_steps": self.online_steps,
            "replicate_steps": self.replicate_steps,
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.online_steps = state["online_steps"]
        self.replicate_steps = state["replicate_steps"]
        if self.optimizer is not None and state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])

    def __repr__(self) -> str:
        return (
            f"Replicate(kr={self.kr}, kl={self.kl}, lr={self.lr}, variant={self.variant!r}, "
            f"loss={self.loss!r}, schedule={self.schedule!r}, "
            f"optimizer={self.optimizer_name!r})"
        )


class _ParameterSpaceUpdate(TargetUpdate):
    """Shared checks of the parameter-space baselines (same architecture only)."""

    def bind(self, online: nn.Module, target: nn.Module) -> None:
        online_state, target_state = online.state_dict(), target.state_dict()
        mismatch = [
            k
            for k in online_state.keys() | target_state.keys()
            if k not in online_state
            or k not in target_state
            or online_state[k].shape != target_state[k].shape
        ]
        if mismatch:
            raise ValueError(
                f"{type(self).__name__} needs online and target networks with identical "
                f"parameters ({len(mismatch)} differ, e.g. {sorted(mismatch)[0]!r}); "
                "use Replicate for different architectures"
            )
        # The target starts as a copy and is never trained by gradient (DQN, Mnih et al. 2015).
        target.load_state_dict(online_state)
        target.requires_grad_(False)


class HardCopy(_ParameterSpaceUpdate):
    """Copy the online parameters and buffers into the target every `period` calls (DQN).

    After `t` calls, `t // period` copies have happened.
    """

    def __init__(self, period: int) -> None:
        if not isinstance(period, int) or period < 1:
            raise ValueError(f"period must be an integer >= 1, got {period!r}")
        self.period = period
        self.online_steps = 0

    def step(self, pair: HeteroPair, sample: Sample) -> dict[str, float]:
        self.online_steps += 1
        if self.online_steps % self.period == 0:
            pair.target.load_state_dict(pair.online.state_dict())
            return {"replicate_steps": 0, "target_copies": 1}
        return {"replicate_steps": 0}

    def state_dict(self) -> dict[str, Any]:
        return {"online_steps": self.online_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.online_steps = state["online_steps"]

    def __repr__(self) -> str:
        return f"HardCopy(period={self.period})"


class Polyak(_ParameterSpaceUpdate):
    """`w <- (1 - tau) w + tau theta` at every call; buffers (BatchNorm stats) are copied,
    as SB3 does (stable-baselines3 GH #996)."""

    def __init__(self, tau: float) -> None:
        if not 0.0 < tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {tau!r}")
        self.tau = tau
        self.online_steps = 0

    @torch.no_grad()
    def step(self, pair: HeteroPair, sample: Sample) -> dict[str, float]:
        self.online_steps += 1
        for w, theta in zip(pair.target.parameters(), pair.online.parameters(), strict=True):
            w.lerp_(theta, self.tau)
        for w, theta in zip(pair.target.buffers(), pair.online.buffers(), strict=True):
            w.copy_(theta)
        return {"replicate_steps": 0}

    def state_dict(self) -> dict[str, Any]:
        return {"online_steps": self.online_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.online_steps = state["online_steps"]

    def __repr__(self) -> str:
        return f"Polyak(tau={self.tau})"


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
        if example_obs is not None:
            with torch.no_grad(), _mode(online, False), _mode(target, False):
                shapes = tuple(online(example_obs).shape), tuple(target(example_obs).shape)
            if shapes[0] != shapes[1]:
                raise ValueError(
                    f"online outputs {shapes[0]} but target outputs {shapes[1]} "
                    "for the same observations"
                )
        update.bind(online, target)

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
        with _mode(self.online, False):
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
        with _mode(self.target, False):
            out_target = self.target(next_obs)
        if double:
            with _mode(self.online, False):
                q_select = expected_q(self.online(next_obs), self.support)
        else:
            q_select = expected_q(out_target, self.support)
        best = q_select.argmax(dim=1)
        if self.support is None:
            return gather_actions(out_target, best)
        return gather_actions(out_target.softmax(dim=-1), best)

    def replicate_loss(self, obs: Tensor, actions: Tensor | None = None) -> Tensor:
        """The rule's Replicate loss on `obs` (current modes); gradients reach only the target.

        Uses the `Replicate` rule's variant and loss (all-actions MSE for other rules);
        `actions` `[B]` are required by the taken-action variant.
        """
        with torch.no_grad():
            out_online = self.online(obs)
        return self.replicate_loss_from(self.target(obs), out_online, actions)

    def replicate_loss_from(
        self, out_target: Tensor, out_online: Tensor, actions: Tensor | None
    ) -> Tensor:
        """Replicate loss from precomputed outputs (`out_online` must carry no gradient)."""
        variant = getattr(self.update, "variant", "all_actions")
        if variant == "taken_action" and actions is None:
            raise ValueError("the taken_action Replicate variant needs the replayed actions")
        return replicate_loss(
            out_target,
            out_online.detach(),
            support=self.support,
            actions=actions if variant == "taken_action" else None,
            kind=getattr(self.update, "loss", "mse"),
        )

    @torch.no_grad()
    def function_gap(self, obs: Tensor) -> float:
        """Mean over states and actions of `(Q_target - Q_online)^2` (expected Q), eval mode."""
        with _mode(self.online, False), _mode(self.target, False):
            q_online = expected_q(self.online(obs), self.support)
            q_target = expected_q(self.target(obs), self.support)
        return (q_target - q_online).square().mean().item()

    def step(self, sample: Sample) -> dict[str, float]:
        """Advance the target rule after one host Lookahead step (see the rule's docstring)."""
        return self.update.step(self, sample)

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


def _check_choice(name: str, value: str, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(accepted)}")


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


__all__ = ["HardCopy", "HeteroPair", "Polyak", "Replicate", "Sample", "TargetUpdate"]
