"""Study definitions: a YAML study file -> a typed `StudySpec`; `suggest(trial, spec)` -> config.

A study file holds only overrides and a search space, never a copy of the defaults in
`hetero_lr.config` (DESIGN.md). Its keys:

    name: kr_kl                     # study name stem
    description: ...                # one line, shown in the banner
    preset: dqn                     # a `hetero_lr.config.PRESETS` name (optional)
    config: {env: {id: ALE/Breakout-v5}, steps: 100000}   # TrainConfig overrides
    envs: [ALE/Pong-v5, ...]        # several games: every trial runs each game x seed
    pairings: [impala:nature, nature:impala]              # ONLINE:TARGET, Replicate rule
    baselines: auto                 # auto | none | [nature, impala:impala@hardcopy, ...]
    space:                          # parameter -> distribution
      kr: {int: [1, 8], log: true}  # Replicate steps (target.kr)
      kl: {int: [1, 512], log: true}                      # Lookahead steps (target.kl)
      target.lr: {float: [1.0e-5, 1.0e-3], log: true}
      target.variant: [all_actions, taken_action]         # a list: categorical choices
    seeds: 3                        # seeds per trial, derived from `seed`
    seed: 0                         # study seed: sampler and run seeds
    trials: 20                      # trials each invocation adds
    sampler: tpe                    # tpe | random | grid
    pruner: median                  # median | hyperband | wilcoxon | none
    pruning: {min_evals: 2, patience: 2, startup_trials: 5, min_trials: 3}
    objective: {last_evals: 3}

Following rl-zoo3's `sample_*_params` + `convert_*_params` split: `Param.suggest` samples in
search coordinates, `convert` turns the sampled values into a `TrainConfig` deterministically.
Pairings are arms: a pair and a target-update rule, written `impala:nature` (Replicate) or
`nature:nature@hardcopy` (the same-architecture DQN baseline).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml

from hetero_lr._typed import Ge, Interval, coerce_fields
from hetero_lr.config import TrainConfig, apply_preset, flatten, from_dict

if TYPE_CHECKING:
    import optuna

RULES = ("replicate", "hardcopy", "polyak")
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "wilcoxon", "none")
ALIASES = {"kr": "target.kr", "kl": "target.kl"}
"""The paper's knob names: `kr` Replicate gradient steps on the target per phase, `kl` Lookahead
(online) gradient steps between Replicate phases."""

DEFAULT_STUDY: dict[str, Any] = {
    "name": "default",
    "description": "KR x KL for one pairing on Atari Breakout (Machado et al. 2018 protocol), "
    "DQN agent, 3 seeds, against the same-architecture HardCopy baselines",
    "preset": "dqn",
    # 500k agent steps: two Dopamine epsilon-decay periods (250k) past the 20k warm-up.
    "config": {"env": {"id": "ALE/Breakout-v5"}, "steps": 500_000, "eval_every": 50_000},
    "pairings": ["impala:nature"],
    "baselines": "auto",
    # Our ranges, not the paper's (its KR/KL are not public): at most 8 Replicate steps per
    # Lookahead step bounds a trial's cost at a few times a DQN run's.
    "space": {"kr": {"int": [1, 8], "log": True}, "kl": {"int": [1, 512], "log": True}},
    "seeds": 3,
    "trials": 20,
    "sampler": "tpe",
    "pruner": "median",
    "pruning": {"min_evals": 4, "patience": 2, "startup_trials": 5, "min_trials": 3},
    "objective": {"last_evals": 3},
}
"""The study run when no `--study` file is given (kept in code so it ships with the package)."""


@dataclass(frozen=True)
class Arm:
    """One pairing of a study: an `ONLINE:TARGET` pair and its target-update rule."""

    online: str
    target: str
    rule: Literal["replicate", "hardcopy", "polyak"] = "replicate"

    @property
    def pair(self) -> str:
        """`ONLINE:TARGET`, the `TrainConfig.pair` value."""
        return f"{self.online}:{self.target}"

    @property
    def label(self) -> str:
        """`impala:nature` for Replicate, `nature:nature@hardcopy` for a baseline."""
        return self.pair if self.rule == "replicate" else f"{self.pair}@{self.rule}"


def parse_arm(text: str, *, check_networks: bool = True) -> Arm:
    """Parse `ONLINE:TARGET[@RULE]`; both sides must name networks (`hetero_lr.networks`).

    Raises:
        ValueError: bad syntax, unknown family or rule, or a parameter-space rule between
            different architectures.
    """
    from hetero_lr.networks import parse_pair

    pair, _, rule = str(text).partition("@")
    rule = rule or "replicate"
    try:
        online, target = parse_pair(pair, check=False)
    except ValueError as err:
        raise ValueError(f"{err} (a baseline: nature:nature@hardcopy)") from None
    if rule not in RULES:
        raise ValueError(
            f"unknown target-update rule {rule!r} in {text!r}; accepted: replicate, "
            "hardcopy, polyak"
        )
    if rule != "replicate" and online != target:
        raise ValueError(
            f"{text!r}: {rule} copies parameters, so it needs the same network on "
            "both sides (e.g. nature:nature@hardcopy); use Replicate across families"
        )
    if check_networks:
        try:
            parse_pair(pair)
        except ValueError as err:
            raise ValueError(f"in pair {text!r}: {err}") from None
    return Arm(online, target, rule)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Param:
    """One search dimension.

    `name` is `kr`, `kl` or a dotted `TrainConfig` path (`target.lr`, `agent.gamma`).
    """

    name: str
    kind: Literal["int", "float", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    @property
    def path(self) -> str:
        """The `TrainConfig` field this parameter sets."""
        return ALIASES.get(self.name, self.name)

    def suggest(self, trial: optuna.Trial) -> Any:
        """Sample this dimension in `trial`."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def grid_values(self) -> list[Any]:
        """Every value of a finite dimension (GridSampler).

        Raises:
            ValueError: for a float range or a log-scaled int range.
        """
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int" and not self.log:
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        raise ValueError(
            f"the grid sampler needs finite dimensions, but {self.name!r} is a "
            f"{'log ' if self.log else ''}{self.kind} range; list its values instead, e.g. "
            f"{self.name}: [1, 2, 4]"
        )

    def describe(self) -> str:
        """Short text: `kr int[1, 8] log` or `target.variant in [all_actions, taken_action]`."""
        if self.kind == "categorical":
            return f"{self.name} in {list(self.choices)}"
        scale = " log" if self.log else ""
        step = f" step {self.step}" if self.step else ""
        return f"{self.name} {self.kind}[{self.low}, {self.high}]{scale}{step}"


@dataclass(frozen=True)
class Pruning:
    """Guards for pruning noisy RL curves (Optuna PRs #2556 `n_min_trials`, #2636 PatientPruner).

    Attributes:
        min_evals: No trial is pruned before it has reported this many evaluations (for
            `wilcoxon`, which compares whole runs: this many finished runs).
        patience: Wrap the median pruner in `PatientPruner(patience)`; 0 disables.
        startup_trials: Trials that finish before the median pruner starts pruning.
        min_trials: Trials that must have reported a step before it can prune at that step.
        reduction_factor: Hyperband's halving rate.
        p_threshold: WilcoxonPruner's p-value threshold (its default, 0.1).
    """

    min_evals: Annotated[int, Ge(1)] = 2
    patience: Annotated[int, Ge(0)] = 2
    startup_trials: Annotated[int, Ge(1)] = 5
    min_trials: Annotated[int, Ge(1)] = 3
    reduction_factor: Annotated[int, Ge(2)] = 3
    p_threshold: Annotated[float, Interval(0, 1, lo_open=True)] = 0.1

    def __post_init__(self) -> None:
        coerce_fields(self)


@dataclass(frozen=True)
class StudySpec:
    """A resolved study definition (study file, then command-line flags, over defaults)."""

    name: str
    description: str = ""
    preset: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    """`TrainConfig` overrides (nested mapping), applied after the preset."""
    envs: tuple[str, ...] = ()
    """Environments every trial runs; empty means the config's `env.id`."""
    pairings: tuple[Arm, ...] = ()
    """The pairings searched over; one pairing makes a fixed-pair study."""
    baselines: Literal["auto"] | tuple[Arm, ...] = ()
    """Enqueued fixed trials; `auto`: a HardCopy baseline per family of the pairings."""
    space: tuple[Param, ...] = ()
    seeds: int = 3
    seed: int = 0
    trials: int = 20
    sampler: str = "tpe"
    pruner: str = "median"
    pruning: Pruning = field(default_factory=Pruning)
    last_evals: int = 3
    """Objective: mean of the last `last_evals` evaluations of a run."""
    confirm: int = 0
    """Fresh seeds on which each pairing's best trial and each baseline run again after the
    search (`hetero_lr.study.confirm`); 0 skips confirmation."""

    @property
    def base(self) -> TrainConfig:
        """Defaults, then the preset, then the study's config overrides."""
        base = apply_preset(self.preset) if self.preset else TrainConfig()
        return from_dict(TrainConfig, self.config, base=base)

    @property
    def env_ids(self) -> tuple[str, ...]:
        """The environments each trial runs."""
        return self.envs or (self.base.env.id,)

    @property
    def baseline_arms(self) -> tuple[Arm, ...]:
        """The enqueued baseline arms, with `auto` resolved."""
        if self.baselines != "auto":
            return self.baselines
        families = dict.fromkeys(n for arm in self.pairings for n in (arm.online, arm.target))
        return tuple(Arm(f, f, "hardcopy") for f in families)

    def grid(self) -> dict[str, list[Any]]:
        """The GridSampler search space (the pairing is a dimension when there are several)."""
        grid = {p.name: p.grid_values() for p in self.space}
        if len(self.pairings) > 1:
            grid = {"pair": [arm.label for arm in self.pairings], **grid}
        return grid

    def to_dict(self) -> dict[str, Any]:
        """Plain form in study-file syntax (for `--dry-run` and provenance)."""
        space: dict[str, Any] = {}
        for p in self.space:
            if p.kind == "categorical":
                space[p.name] = list(p.choices)
            else:
                entry: dict[str, Any] = {p.kind: [p.low, p.high]}
                if p.log:
                    entry["log"] = True
                if p.step:
                    entry["step"] = p.step
                space[p.name] = entry
        baselines = self.baselines
        return {
            "name": self.name,
            "description": self.description,
            "preset": self.preset,
            "config": dict(self.config),
            "envs": list(self.env_ids),
            "pairings": [arm.label for arm in self.pairings],
            "baselines": [arm.label for arm in self.baseline_arms]
            if baselines != "auto"
            else "auto",
            "space": space,
            "seeds": self.seeds,
            "seed": self.seed,
            "trials": self.trials,
            "sampler": self.sampler,
            "pruner": self.pruner,
            "pruning": vars(self.pruning).copy(),
            "objective": {"last_evals": self.last_evals},
            "confirm": self.confirm,
        }


_KEYS = {
    "name", "description", "preset", "config", "envs", "pairings", "baselines", "space",
    "seeds", "seed", "trials", "sampler", "pruner", "pruning", "objective", "confirm",
}  # fmt: skip


def load_study(path: str | Path | None = None) -> StudySpec:
    """Read a study file (None: the built-in `DEFAULT_STUDY`).

    Raises:
        ValueError: an unreadable file, invalid YAML, an unknown key or a bad value; the
            message is one line naming the value and what is accepted.
    """
    if path is None:
        return parse_study(DEFAULT_STUDY)
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ValueError(f"cannot read study file {str(path)!r}: {err.strerror or err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ValueError(f"study file {str(path)!r} is not valid YAML{where}") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"study file {str(path)!r} must hold a mapping of study keys")
    data = dict(data)
    data.setdefault("name", Path(path).stem)
    try:
        return parse_study(data)
    except ValueError as err:
        raise ValueError(f"study file {str(path)!r}: {err}") from None


def parse_study(data: Mapping[str, Any]) -> StudySpec:
    """Validate a study mapping (study-file syntax) into a `StudySpec`.

    Raises:
        ValueError: one line naming the bad key or value and what is accepted.
    """
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}; accepted: {', '.join(sorted(_KEYS))}")
    name = str(data.get("name") or "study")
    config = data.get("config") or {}
    if not isinstance(config, Mapping):
        raise ValueError("'config' must be a mapping of TrainConfig overrides")
    envs = _str_list(data.get("envs"), "envs")
    pairings = tuple(parse_arm(p) for p in _str_list(data.get("pairings"), "pairings"))
    for arm in pairings:
        if arm.rule != "replicate":
            raise ValueError(f"pairing {arm.label!r}: baselines go under 'baselines'")
    baselines = parse_baselines(data.get("baselines", "none"))
    space = tuple(_parse_param(k, v) for k, v in (data.get("space") or {}).items())
    pruning_data = data.get("pruning") or {}
    objective = data.get("objective") or {}
    if set(objective) - {"last_evals"}:
        raise ValueError(f"unknown objective key {sorted(objective)[0]!r}; accepted: last_evals")
    pruning = from_dict(Pruning, pruning_data, prefix="pruning.")
    spec = StudySpec(
        name=name,
        description=str(data.get("description") or ""),
        preset=data.get("preset"),
        config=dict(config),
        envs=envs,
        pairings=pairings,
        baselines=baselines,
        space=space,
        seeds=_int(data.get("seeds", 3), "seeds", 1),
        seed=_int(data.get("seed", 0), "seed", 0),
        trials=_int(data.get("trials", 20), "trials", 0),
        sampler=_choice(data.get("sampler", "tpe"), "sampler", SAMPLERS),
        pruner=_choice(data.get("pruner", "median"), "pruner", PRUNERS),
        pruning=pruning,
        last_evals=_int(objective.get("last_evals", 3), "objective.last_evals", 1),
        confirm=_int(data.get("confirm", 0), "confirm", 0),
    )
    check_spec(spec)
    return spec


def check_spec(spec: StudySpec) -> None:
    """Check everything that can be checked without building environments or networks.

    Raises:
        ValueError: unknown preset, config key or value (type or range), a search dimension
            that names no `TrainConfig` field or reaches a value its field rejects, a bad
            sampler or pruner, or no pairing.
    """
    base = spec.base  # unknown preset or config keys, or values out of range, raise here
    _choice(spec.sampler, "sampler", SAMPLERS)
    _choice(spec.pruner, "pruner", PRUNERS)
    if not spec.pairings:
        raise ValueError(
            "no pairing: give --pair ONLINE:TARGET, --pairs or 'pairings' in the study file"
        )
    fields = flatten(base)
    for p in spec.space:
        if p.path in ("pair", "seed") or p.path not in fields:
            raise ValueError(
                f"search dimension {p.name!r} names no TrainConfig setting; use kr, kl or a "
                "dotted path such as target.lr, target.variant, agent.lr"
            )
        values = p.choices if p.kind == "categorical" else (p.low, p.high)
        for value in values:  # each end of a range, each choice: type and range checked
            try:
                convert(base, {p.name: value}, spec.pairings[0])
            except ValueError as err:
                raise ValueError(f"search dimension {p.name!r}: {err}") from None
    if spec.sampler == "grid":
        spec.grid()


def convert(base: TrainConfig, values: Mapping[str, Any], arm: Arm) -> TrainConfig:
    """Turn sampled values (search names) and an arm into a `TrainConfig`.

    Raises:
        ValueError: a value the config rejects (e.g. a bad Literal).
    """
    nested: dict[str, Any] = {"pair": arm.pair, "target": {"rule": arm.rule}}
    for name, value in values.items():
        *parents, leaf = ALIASES.get(name, name).split(".")
        node = nested
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return from_dict(TrainConfig, nested, base=base)


def suggest(trial: optuna.Trial, spec: StudySpec) -> tuple[Arm, TrainConfig]:
    """Sample a trial's arm and settings and convert them to a `TrainConfig`.

    An enqueued baseline trial carries its arm in the user attribute `baseline` and samples
    nothing: KR and KL mean nothing to HardCopy. Every trial records its arm (`pairing`) as a
    user attribute; `trial_config` rebuilds its settings.
    """
    if "baseline" in trial.user_attrs:
        arm = parse_arm(trial.user_attrs["baseline"], check_networks=False)
        cfg = convert(spec.base, {}, arm)
    else:
        labels = [a.label for a in spec.pairings]
        label = trial.suggest_categorical("pair", labels)
        arm = spec.pairings[labels.index(label)]
        cfg = convert(spec.base, {p.name: p.suggest(trial) for p in spec.space}, arm)
    trial.set_user_attr("pairing", arm.label)
    return arm, cfg


def trial_config(trial: optuna.trial.FrozenTrial, spec: StudySpec) -> TrainConfig:
    """The settings a trial ran with, rebuilt from its arm and parameters as `suggest` built
    them (the settings check on resume makes `spec` the one the study ran under)."""
    arm = parse_arm(trial.user_attrs["pairing"], check_networks=False)
    return convert(spec.base, {k: v for k, v in trial.params.items() if k != "pair"}, arm)


def recorded_config(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """A trial's resolved settings as dotted keys, from the study's storage alone (analysis
    without the study file): the study's recorded base settings with the trial's arm and
    parameters, or the `config` attribute that studies kept before the config became a file."""
    if "config" in trial.user_attrs:
        return dict(trial.user_attrs["config"])
    config = dict(study.user_attrs.get("settings", {}).get("config", {}))
    arm = parse_arm(trial.user_attrs["pairing"], check_networks=False)
    config.update({"pair": arm.pair, "target.rule": arm.rule})
    config.update({ALIASES.get(k, k): v for k, v in trial.params.items() if k != "pair"})
    return config


def parse_baselines(value: Any) -> Literal["auto"] | tuple[Arm, ...]:
    """`auto`, `none`, or families / `PAIR@RULE` arms (a list, or a comma-separated string).

    A bare family `nature` means its HardCopy baseline `nature:nature@hardcopy`.

    Raises:
        ValueError: a bad arm, or an arm without a parameter-space rule.
    """
    if value == "auto":
        return "auto"
    if value in ("none", None):
        return ()
    items = value.split(",") if isinstance(value, str) else _str_list(value, "baselines")
    arms = []
    for text in filter(None, items):
        arm = parse_arm(text if ":" in text else f"{text}:{text}@hardcopy")
        if arm.rule == "replicate":
            raise ValueError(f"baseline {text!r} needs a rule: write {text}@hardcopy or @polyak")
        arms.append(arm)
    return tuple(arms)


def _parse_param(name: str, value: Any) -> Param:
    if isinstance(value, list):
        if not value:
            raise ValueError(f"search dimension {name!r} has no choices")
        return Param(name, "categorical", choices=tuple(value))
    if not isinstance(value, Mapping):
        raise ValueError(
            f"search dimension {name!r}: expected a list of choices or a mapping "
            "like {int: [1, 8], log: true}"
        )
    kinds = [k for k in ("int", "float") if k in value]
    extra = set(value) - {"int", "float", "log", "step"}
    if len(kinds) != 1 or extra:
        raise ValueError(
            f"search dimension {name!r}: accepted keys are one of int/float plus "
            f"log and step, got {sorted(value)}"
        )
    kind = kinds[0]
    bounds = value[kind]
    if not (isinstance(bounds, Sequence) and len(bounds) == 2) or not all(
        isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds
    ):
        raise ValueError(f"search dimension {name!r}: {kind} needs [low, high], got {bounds!r}")
    low, high = bounds
    if kind == "int" and not all(float(b).is_integer() for b in bounds):
        raise ValueError(f"search dimension {name!r}: int bounds must be integers, got {bounds}")
    log = bool(value.get("log", False))
    if low > high or (log and low <= 0) or not all(map(math.isfinite, bounds)):
        raise ValueError(
            f"search dimension {name!r}: bad range {bounds}{' (log needs low > 0)' if log else ''}"
        )
    return Param(name, kind, low=low, high=high, log=log, step=value.get("step"))


def _str_list(value: Any, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{key!r} must be a list of strings, got {value!r}")
    return tuple(value)


def _int(value: Any, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _choice(value: Any, key: str, accepted: tuple[str, ...]) -> str:
    if value not in accepted:
        raise ValueError(f"unknown {key} {value!r}; accepted: {', '.join(accepted)}")
    return value


def with_overrides(spec: StudySpec, **changes: Any) -> StudySpec:
    """`spec` with the given fields replaced (None values ignored), checked again."""
    changes = {k: v for k, v in changes.items() if v is not None}
    new = replace(spec, **changes)
    check_spec(new)
    return new
