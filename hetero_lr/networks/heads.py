"""Q-heads and the `QNetwork` wrapper (input scaling -> encoder -> head).

Heads take `num_features` from the encoder, so every family gets every head (timm's
`forward_features` / `forward_head` split).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LinearHead(nn.Module):
    """Linear Q-values (Mnih et al. 2015), or categorical logits when `num_atoms > 1`."""

    def __init__(self, num_features: int, n_actions: int, num_atoms: int = 1) -> None:
        super().__init__()
        self.n_actions, self.num_atoms = n_actions, num_atoms
        self.fc = nn.Linear(num_features, n_actions * num_atoms)

    def forward(self, features: Tensor) -> Tensor:
        out = self.fc(features)
        return out if self.num_atoms == 1 else out.view(-1, self.n_actions, self.num_atoms)


class DuelingHead(nn.Module):
    """Dueling streams (Wang et al. 2016, eq. 9): Q = V + A - mean_a A, per atom if categorical."""

    def __init__(self, num_features: int, n_actions: int, num_atoms: int = 1) -> None:
        super().__init__()
        self.n_actions, self.num_atoms = n_actions, num_atoms
        self.value = nn.Linear(num_features, num_atoms)
        self.advantage = nn.Linear(num_features, n_actions * num_atoms)

    def forward(self, features: Tensor) -> Tensor:
        value = self.value(features).view(-1, 1, self.num_atoms)
        advantage = self.advantage(features).view(-1, self.n_actions, self.num_atoms)
        out = value + advantage - advantage.mean(dim=1, keepdim=True)
        return out.squeeze(-1) if self.num_atoms == 1 else out


HEADS = {"q": LinearHead, "dueling": DuelingHead, "c51": LinearHead, "dueling_c51": DuelingHead}


class QNetwork(nn.Module):
    """Raw observations -> Q-values `(B, A)` or categorical logits `(B, A, atoms)`.

    uint8 and bool observations are scaled to [0, 1] here, so replay can store raw frames.
    A categorical network carries its atom values in the `support` buffer (`(atoms,)`).
    """

    support: Tensor | None

    def __init__(
        self,
        encoder: nn.Module,
        head: nn.Module,
        *,
        spec: str,
        obs_shape: tuple[int, ...],
        support: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head
        self.spec, self.obs_shape = spec, obs_shape
        self.register_buffer("support", support, persistent=False)

    def forward(self, obs: Tensor) -> Tensor:
        if obs.dtype == torch.uint8:
            obs = obs.float().div_(255.0)
        elif not obs.is_floating_point():
            obs = obs.float()
        return self.head(self.encoder(obs))

    def extra_repr(self) -> str:
        params = sum(p.numel() for p in self.parameters())
        return f"spec={self.spec!r}, obs_shape={self.obs_shape}, params={params:,}"
