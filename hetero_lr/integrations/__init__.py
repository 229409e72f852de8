"""Adapters that put a `HeteroPair` inside other RL libraries' agents.

Each submodule imports its library, which is an optional dependency; import the one you need:

- `hetero_lr.integrations.sb3`: `HeteroDQN`, a Stable-Baselines3 `DQN` whose target network is
  any registry spec or `nn.Module`, moved by a target-update rule (`pip install hetero-lr[sb3]`).
- `hetero_lr.integrations.torchrl`: a TD(0) value estimator bootstrapping from the pair and an
  updater with TorchRL's `step()` name, for `DQNLoss(delay_value=False)`
  (`pip install hetero-lr[torchrl]`).

See docs/integrations.md.
"""
