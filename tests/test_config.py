"""Settings: one typed conversion path (`coerce`) for every way a value enters a config."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Annotated, Any, Literal

import numpy as np
import pytest
import yaml

from hetero_lr._typed import Gt
from hetero_lr.config import (
    PRESETS,
    AgentConfig,
    EnvConfig,
    TargetConfig,
    TrainConfig,
    apply_preset,
    coerce,
    flatten,
    from_dict,
    load_overrides,
    parse_overrides,
    to_dict,
)

SECTIONS = {"env": EnvConfig, "agent": AgentConfig, "target": TargetConfig}


def nest(key: str, value: Any) -> dict[str, Any]:
    """`("agent.lr", 1)` -> `{"agent": {"lr": 1}}`."""
    *parents, leaf = key.split(".")
    out: dict[str, Any] = {leaf: value}
    for part in reversed(parents):
        out = {part: out}
    return out


def get(cfg: TrainConfig, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def cli_text(value: Any) -> str:
    """How a user would type `value` after `--set KEY=` (JSON is YAML)."""
    return value if isinstance(value, str) else json.dumps(value)


def build(via: str, key: str, value: Any, tmp_path) -> tuple[TrainConfig | None, Any, str]:
    """Enter `value` for `key` one way; return (config or None, value as entered, error)."""
    entered = value
    try:
        if via == "from_dict":
            return from_dict(TrainConfig, nest(key, value)), entered, ""
        if via == "set":
            data = parse_overrides([f"{key}={cli_text(value)}"])
            entered = yaml.safe_load(cli_text(value))
            return from_dict(TrainConfig, data), entered, ""
        path = tmp_path / "overrides.yaml"
        path.write_text(yaml.safe_dump(nest(key, value)))
        entered = get_nested(yaml.safe_load(path.read_text()), key)
        return from_dict(TrainConfig, load_overrides(path)), entered, ""
    except ValueError as err:
        return None, entered, str(err)


def get_nested(data: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        data = data[part]
    return data


VIAS = ["from_dict", "set", "yaml_file"]

GOOD = [
    # int
    ("steps", 12, 12),
    ("steps", "12", 12),
    ("steps", "1_000", 1000),
    ("steps", "1e3", 1000),
    ("steps", 3.0, 3),
    ("agent.batch_size", " 64 ", 64),
    # float, including strings YAML 1.1 leaves as strings
    ("agent.lr", "1e-4", 1e-4),
    ("agent.lr", "1.5E-3", 1.5e-3),
    ("agent.lr", 1, 1.0),
    ("target.lr", 2.5e-4, 2.5e-4),
    ("agent.v_min", -5, -5.0),
    # bool
    ("agent.double", True, True),
    ("agent.double", "yes", True),
    ("agent.double", "OFF", False),
    ("agent.double", "True", True),
    ("agent.double", "0", False),
    ("agent.double", 1, True),
    ("agent.double", 0, False),
    # Literal
    ("target.variant", "taken_action", "taken_action"),
    ("target.rule", "polyak", "polyak"),
    ("agent.loss", "mse", "mse"),
    # float | None
    ("agent.max_grad_norm", None, None),
    ("agent.max_grad_norm", "none", None),
    ("agent.max_grad_norm", "NULL", None),
    ("agent.max_grad_norm", "5", 5.0),
    # float | Literal["auto"] | None: members tried in order
    ("agent.divergence_q", "auto", "auto"),
    ("agent.divergence_q", 200, 200.0),
    ("agent.divergence_q", "1e3", 1000.0),
    ("agent.divergence_q", "none", None),
    ("agent.divergence_q", None, None),
    ("target.replicate_sampling", "prioritized", "prioritized"),
    # str
    ("pair", "impala:nature", "impala:nature"),
    ("env.id", "MinAtar/Breakout-v1", "MinAtar/Breakout-v1"),
    # dict options
    ("online_options", {"width": 2}, {"width": 2}),
    ("online_options", "{width: 2, act: relu}", {"width": 2, "act": "relu"}),
    ("target_options", {}, {}),
]


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize(("key", "value", "expected"), GOOD)
def test_good_values_convert_to_the_declared_type(via, key, value, expected, tmp_path):
    cfg, _, error = build(via, key, value, tmp_path)
    assert error == ""
    got = get(cfg, key)
    assert got == expected and type(got) is type(expected)


BAD = [
    # int
    ("steps", "abc", "an integer"),
    ("agent.batch_size", 3.5, "an integer"),
    ("agent.batch_size", "3.5", "an integer"),
    ("steps", True, "an integer"),
    ("steps", None, "an integer"),
    ("steps", [1], "an integer"),
    ("steps", "1e400", "an integer"),
    # float
    ("agent.lr", "abc", "a finite number"),
    ("agent.lr", float("nan"), "a finite number"),
    ("agent.lr", "nan", "a finite number"),
    ("agent.lr", "inf", "a finite number"),
    ("agent.lr", True, "a finite number"),
    ("agent.lr", {"a": 1}, "a finite number"),
    # bool
    ("agent.double", "maybe", "a boolean (true/false)"),
    ("agent.double", 2, "a boolean (true/false)"),
    ("agent.double", 1.0, "a boolean (true/false)"),
    ("agent.double", None, "a boolean (true/false)"),
    # Literal: exact strings only
    ("target.variant", "some", "one of 'all_actions', 'taken_action'"),
    ("target.variant", "ALL_ACTIONS", "one of 'all_actions', 'taken_action'"),
    ("target.loss", 1, "one of 'mse', 'huber', 'cross_entropy'"),
    # float | None
    ("agent.max_grad_norm", "x", "a finite number or none"),
    ("agent.max_grad_norm", False, "a finite number or none"),
    ("agent.divergence_q", "automatic", "a finite number or one of 'auto' or none"),
    ("agent.divergence_q", True, "a finite number or one of 'auto' or none"),
    # str
    ("pair", 5, "a string"),
    # dict options
    ("online_options", "[1, 2]", "a mapping"),
    ("online_options", "width", "a mapping"),
    ("online_options", 3, "a mapping"),
    # a nested section given as a scalar
    ("agent", 5, "a mapping of AgentConfig settings"),
]


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize(("key", "value", "words"), BAD)
def test_bad_values_are_one_line_errors_naming_key_value_and_type(via, key, value, words, tmp_path):
    cfg, entered, error = build(via, key, value, tmp_path)
    assert cfg is None
    assert error == f"{key}={entered!r} is not {words}"
    assert "\n" not in error


def test_the_brief_s_example_messages():
    cases = {
        "agent.batch_size=3.5": "agent.batch_size=3.5 is not an integer",
        "agent.double=maybe": "agent.double='maybe' is not a boolean (true/false)",
        "target.variant=some": (
            "target.variant='some' is not one of 'all_actions', 'taken_action'"
        ),
        "steps=abc": "steps='abc' is not an integer",
        "target.kr=0": "target.kr=0 must be >= 1",
    }
    for item, message in cases.items():
        with pytest.raises(ValueError) as err:
            from_dict(TrainConfig, parse_overrides([item]))
        assert str(err.value) == message


# (key, bad value just past the bound, good value at or just inside it, requirement)
BOUNDS = [
    *[
        (key, 0, 1, ">= 1")
        for key in (
            "steps",
            "env.num_envs",
            "env.frame_skip",
            "env.frame_stack",
            "env.screen_size",
            "env.max_episode_frames",
            "agent.n_step",
            "agent.batch_size",
            "agent.buffer_size",
            "agent.train_freq",
            "eval_every",
            "eval_episodes",
            "eval_max_steps",
            "log_every",
            "target.kr",
            "target.kl",
            "target.period",
        )
    ],
    ("agent.num_atoms", 1, 2, ">= 2"),
    *[
        (key, -1, 0, ">= 0")
        for key in (
            "env.noop_max",
            "agent.learning_starts",
            "agent.epsilon_decay_steps",
            "checkpoint_every",
            "threads",
        )
    ],
    ("seed", -1, 0, "in [0, 4294967295]"),
    ("seed", 2**32, 2**32 - 1, "in [0, 4294967295]"),
    *[
        (key, bad, good, "in [0, 1]")
        for key in (
            "env.sticky_actions",
            "agent.epsilon_start",
            "agent.epsilon_end",
            "agent.eval_epsilon",
        )
        for bad, good in ((-0.01, 0.0), (1.01, 1.0))
    ],
    *[
        (key, bad, good, "in (0, 1]")
        for key in ("agent.gamma", "target.tau")
        for bad, good in ((0.0, 1e-9), (1.01, 1.0))
    ],
    *[
        (key, 0.0, 1e-12, "> 0")
        for key in (
            "agent.lr",
            "agent.adam_eps",
            "target.lr",
            "agent.max_grad_norm",
            "agent.divergence_q",
        )
    ],
    ("agent.priority_alpha", -0.01, 0.0, ">= 0"),
    ("agent.priority_beta", -0.01, 0.0, ">= 0"),
]


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize(("key", "bad", "good", "requirement"), BOUNDS)
def test_ranges_reject_past_the_bound_and_accept_at_it(via, key, bad, good, requirement, tmp_path):
    cfg, _, error = build(via, key, good, tmp_path)
    assert error == "" and get(cfg, key) == good
    cfg, _, error = build(via, key, bad, tmp_path)
    assert cfg is None and error == f"{key}={bad!r} must be {requirement}"


@pytest.mark.parametrize(("key", "bad", "good", "requirement"), BOUNDS)
def test_direct_construction_checks_ranges_too(key, bad, good, requirement):
    *section, leaf = key.split(".")
    cls = SECTIONS[section[0]] if section else TrainConfig
    assert getattr(cls(**{leaf: good}), leaf) == good
    with pytest.raises(ValueError) as err:
        cls(**{leaf: bad})
    assert str(err.value) == f"{leaf}={bad!r} must be {requirement}"


def test_direct_construction_converts_through_the_same_path():
    assert AgentConfig(lr="1e-4").lr == 1e-4
    assert TrainConfig(env={"num_envs": 2}).env == EnvConfig(num_envs=2)
    with pytest.raises(ValueError, match=r"^double='maybe' is not a boolean"):
        AgentConfig(double="maybe")
    with pytest.raises(ValueError, match=r"^env\.num_envs=0 must be >= 1$"):
        TrainConfig(env={"num_envs": 0})
    with pytest.raises(ValueError, match=r"^steps=0 must be >= 1$"):
        replace(TrainConfig(), steps=0)


def test_yaml_file_reads_1e_minus_4_as_a_float(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("agent:\n  lr: 1e-4\n  double: yes\nsteps: 1_000\ntarget:\n  kr: 2.0\n")
    assert yaml.safe_load(path.read_text())["agent"]["lr"] == "1e-4"  # why coerce exists
    cfg = from_dict(TrainConfig, load_overrides(path))
    assert (cfg.agent.lr, cfg.agent.double, cfg.steps, cfg.target.kr) == (1e-4, True, 1000, 2)
    assert type(cfg.target.kr) is int


def test_cross_field_v_min_below_v_max():
    for v_min in (10.0, 20.0):
        with pytest.raises(ValueError) as err:
            from_dict(TrainConfig, {"agent": {"v_min": v_min}})
        assert str(err.value) == f"agent.v_min={v_min!r} must be < agent.v_max=10.0"
    with pytest.raises(ValueError, match=r"agent\.v_min=1\.0 must be < agent\.v_max=0\.0"):
        TrainConfig(agent=AgentConfig(v_min=1, v_max=0))
    assert from_dict(TrainConfig, {"agent": {"v_min": -1, "v_max": 1}}).agent.v_max == 1.0


def test_defaults_pass_and_round_trip():
    cfg = TrainConfig()
    assert from_dict(TrainConfig, to_dict(cfg)) == cfg
    assert from_dict(TrainConfig, {}) == cfg
    assert replace(cfg, steps=5).steps == 5
    flat = flatten(cfg)
    assert flat["agent.lr"] == 6.25e-5 and flat["target.kr"] == 500
    assert flat["online_options"] == "{}"
    assert all(type(v) in (int, float, str, bool, type(None)) for v in flat.values())


def leaves(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Dotted (key, value) pairs of a nested override mapping."""
    out = []
    for key, value in data.items():
        if key in SECTIONS:
            out += leaves(value, f"{key}.")
        else:
            out.append((prefix + key, value))
    return out


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_passes_checks_and_keeps_its_values(name):
    cfg = apply_preset(name)
    assert from_dict(TrainConfig, to_dict(cfg)) == cfg  # passes every check again
    for key, value in leaves(PRESETS[name]):
        got = get(cfg, key)
        assert got == value and type(got) is type(value), key  # written in the field's type


def test_rainbow_and_der_presets_match_their_dopamine_configs():
    rainbow = apply_preset("rainbow").agent
    assert (rainbow.categorical, rainbow.n_step, rainbow.prioritized) == (True, 3, True)
    assert (rainbow.double, rainbow.dueling) == (False, False)  # rainbow.gin uses neither
    der = apply_preset("der")
    assert (der.agent.double, der.agent.dueling, der.agent.n_step) == (True, True, 10)
    assert der.env.sticky_actions == 0.0 and der.env.terminal_on_life_loss


def test_unknown_keys_and_presets_stay_errors():
    with pytest.raises(ValueError, match=r"^unknown AgentConfig key 'lrr'; accepted: adam_eps"):
        from_dict(TrainConfig, parse_overrides(["agent.lrr=1"]))
    with pytest.raises(ValueError, match=r"^unknown TrainConfig key 'nope'"):
        from_dict(TrainConfig, {"nope": 1})
    with pytest.raises(ValueError, match=r"^unknown preset 'x'"):
        apply_preset("x")


def test_parse_overrides_nests_and_reads_yaml():
    assert parse_overrides(["agent.lr=1e-4", "steps=100", "online_options={width: 2}"]) == {
        "agent": {"lr": "1e-4"},
        "steps": 100,
        "online_options": {"width": 2},
    }
    assert parse_overrides(["agent.lr=1", "agent.double=true"]) == {
        "agent": {"lr": 1, "double": True}
    }
    assert parse_overrides([]) == {}


@pytest.mark.parametrize("item", ["x", "=1", "agent..lr=1", ".lr=1", "agent.=1"])
def test_parse_overrides_rejects_items_that_are_not_key_value(item):
    with pytest.raises(ValueError) as err:
        parse_overrides([item])
    assert str(err.value) == f"bad --set {item!r}; expected KEY=VALUE, e.g. agent.lr=1e-4"


def test_parse_overrides_one_line_errors_for_bad_yaml_and_conflicts():
    with pytest.raises(ValueError) as err:
        parse_overrides(["online_options={a: ["])
    message = str(err.value)
    assert message.startswith("bad --set 'online_options={a: ['") and "\n" not in message
    with pytest.raises(ValueError, match=r"'agent' was given a value earlier"):
        parse_overrides(["agent=1", "agent.lr=1"])


def test_load_overrides_errors_are_one_line(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    assert load_overrides(tmp_path / "empty.yaml") == {}
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "bad.yaml").write_text("agent: {lr: [\n")
    cases = {
        tmp_path / "missing.yaml": "cannot read config file",
        tmp_path: "cannot read config file",
        tmp_path / "list.yaml": "must hold a mapping of settings, not list",
        tmp_path / "bad.yaml": "is not valid YAML",
    }
    for path, message in cases.items():
        with pytest.raises(ValueError) as err:
            load_overrides(path)
        assert message in str(err.value) and str(path) in str(err.value)
        assert "\n" not in str(err.value)


def test_coerce_sequences_and_edge_types():
    assert coerce("1, 2", tuple[int, ...], "k") == (1, 2)
    assert coerce([1, "2"], tuple[int, ...], "k") == (1, 2)
    assert coerce("", tuple[int, ...], "k") == ()
    assert coerce(["1e-4"], list[float], "k") == [1e-4]
    assert coerce(("a", 1), tuple[str, int], "k") == ("a", 1)
    with pytest.raises(ValueError, match=r"^k\[1\]='x' is not an integer$"):
        coerce("1, x", tuple[int, ...], "k")
    with pytest.raises(ValueError, match=r"^k=\('a',\) is not a list"):
        coerce(("a",), tuple[str, int], "k")
    with pytest.raises(ValueError, match=r"^k=5 is not a list"):
        coerce(5, list[int], "k")
    with pytest.raises(ValueError, match=r"^k\.a='x' is not an integer$"):
        coerce({"a": "x"}, dict[str, int], "k")
    # numpy scalars from a sampler are plain numbers
    assert type(coerce(np.int64(3), int, "k")) is int
    assert coerce(np.float32(0.5), float, "k") == 0.5
    assert math.isclose(coerce(np.float64(1e-4), float, "k"), 1e-4)
    with pytest.raises(TypeError):
        coerce(1, set[int], "k")


def test_coerce_unions_try_members_in_declaration_order():
    hint = Annotated[float | Literal["auto"] | None, Gt(0)]
    assert coerce("auto", hint, "k") == "auto"
    assert coerce("2", hint, "k") == 2.0 and coerce("NULL", hint, "k") is None
    with pytest.raises(ValueError, match=r"^k=-1\.0 must be > 0$"):  # bounds: numbers only
        coerce(-1, hint, "k")
    assert coerce("1", int | str, "k") == 1  # the first member that accepts the value wins
    assert coerce("1", str | int, "k") == "1"
    assert coerce("x", int | str, "k") == "x"
    with pytest.raises(ValueError, match=r"^k='x' is not an integer or one of 'a'$"):
        coerce("x", int | Literal["a"], "k")  # no None member: no "or none" either
