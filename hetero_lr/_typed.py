"""Typed settings: convert outside values to a dataclass field's declared type, with bounds.

Generic over frozen config dataclasses (`hetero_lr.config` uses it): `coerce` converts one
value to its `Annotated` type hint and checks the bounds declared there (`Ge`, `Gt`,
`Interval`); `from_dict` builds or overrides a config from a nested mapping through `coerce`;
`coerce_fields` is what a config's `__post_init__` calls, so direct construction is checked too.
"""

from __future__ import annotations

import math
import numbers
import types
from collections.abc import Mapping
from dataclasses import dataclass, fields, is_dataclass, replace
from functools import cache
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

C = TypeVar("C")

# --- Bounds, read from `Annotated[...]` field types --------------------------------------


@dataclass(frozen=True)
class Ge:
    """Bound: value >= lo."""

    lo: float

    def holds(self, x: float) -> bool:
        return x >= self.lo

    def __str__(self) -> str:
        return f">= {self.lo}"


@dataclass(frozen=True)
class Gt:
    """Bound: value > lo."""

    lo: float

    def holds(self, x: float) -> bool:
        return x > self.lo

    def __str__(self) -> str:
        return f"> {self.lo}"


@dataclass(frozen=True)
class Interval:
    """Bound: lo <= value <= hi (lo excluded when `lo_open`)."""

    lo: float
    hi: float
    lo_open: bool = False

    def holds(self, x: float) -> bool:
        return (x > self.lo if self.lo_open else x >= self.lo) and x <= self.hi

    def __str__(self) -> str:
        return f"in {'(' if self.lo_open else '['}{self.lo}, {self.hi}]"


_BOUNDS = (Ge, Gt, Interval)


# --- One conversion path for every value ----------------------------------------------------


class _Mismatch(Exception):
    """Internal: a value is not of the declared type (`coerce` words the message)."""


_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})
_NONE = frozenset({"none", "null"})
_WORDS = {
    int: "an integer",
    float: "a finite number",
    bool: "a boolean (true/false)",
    str: "a string",
}


def coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert `value` to the declared type `hint` of setting `key`, checking `Annotated` bounds.

    Raises:
        ValueError: one line naming `key`, e.g. `agent.batch_size=3.5 is not an integer` or
            `target.kr=0 must be >= 1`.
    """
    try:
        return _convert(value, hint, key)
    except _Mismatch:
        raise ValueError(f"{key}={value!r} is not {_describe(hint)}") from None


def _convert(value: Any, hint: Any, key: str) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if origin is Annotated:
        out = _convert(value, args[0], key)
        for bound in args[1:]:
            # Bounds apply to the numeric member of a union (not to None or a word like "auto").
            if isinstance(bound, _BOUNDS) and _is_number(out) and not bound.holds(out):
                raise ValueError(f"{key}={out!r} must be {bound}")
        return out
    if hint is Any:
        return value
    if hint in _SCALARS:
        return _SCALARS[hint](value)
    if origin is Literal:
        # Type and value must both match: True == 1 and 1.0 == 1 must not pass for a choice 1.
        if any(type(value) is type(choice) and value == choice for choice in args):
            return value
        raise _Mismatch
    if origin in (Union, types.UnionType):
        none = type(None)
        if none in args and (value is None or str(value).strip().lower() in _NONE):
            return None
        # Members are tried in declaration order; the first that accepts the value wins, so
        # `float | Literal["auto"]` reads "2" as 2.0 and "auto" as the word.
        for member in (a for a in args if a is not none):
            try:
                return _convert(value, member, key)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin in (tuple, list):
        if isinstance(value, str):  # "a, b" from the command line
            value = [item.strip() for item in value.split(",")] if value.strip() else []
        if not isinstance(value, list | tuple):
            raise _Mismatch
        if origin is list or args[1:] == (Ellipsis,):
            hints = (args[0] if args else Any,) * len(value)
        elif len(value) == len(args):
            hints = args
        else:
            raise _Mismatch
        items = zip(value, hints, strict=True)
        return origin(coerce(v, h, f"{key}[{i}]") for i, (v, h) in enumerate(items))
    if origin is dict or hint is dict:
        if isinstance(value, str):  # "{width: 2}" from the command line
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                raise _Mismatch from None
        if not isinstance(value, Mapping):
            raise _Mismatch
        kt, vt = args or (Any, Any)
        return {coerce(k, kt, f"{key} key"): coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if isinstance(hint, type) and is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if isinstance(value, Mapping):
            return from_dict(hint, value, prefix=f"{key}.")
        raise _Mismatch
    raise TypeError(f"{key}: unsupported setting type {hint!r}")


def _describe(hint: Any) -> str:
    """The expected type in words, for error messages."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Annotated:
        return _describe(args[0])
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in (Union, types.UnionType):
        words = " or ".join(_describe(a) for a in args if a is not type(None))
        return words + " or none" if type(None) in args else words
    if origin in (tuple, list):
        return "a list (or a comma-separated string)"
    if origin is dict or hint is dict:
        return "a mapping"
    if isinstance(hint, type) and is_dataclass(hint):
        return f"a mapping of {hint.__name__} settings"
    return _WORDS.get(hint, repr(hint))


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _Mismatch


def _to_int(value: Any) -> int:
    if isinstance(value, bool):  # bool is an int subclass, never a count
        raise _Mismatch
    if isinstance(value, numbers.Integral):  # numpy integers included
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)  # "12", " -3 ", "1_000"
        except ValueError:
            value = _to_float(value)  # "1e3", "3.0"; "3.5" fails below
    if isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
        return int(value)  # 3.0 from YAML or a float search dimension
    raise _Mismatch


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise _Mismatch
    try:
        # YAML 1.1 reads `1e-4` (no dot) as a string, hence the strings.
        number = float(value) if isinstance(value, str | numbers.Real) else math.nan
    except (ValueError, OverflowError):
        raise _Mismatch from None
    if not math.isfinite(number):
        raise _Mismatch
    return number


def _to_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise _Mismatch


_SCALARS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


@cache
def _hints(cls: type) -> dict[str, Any]:
    """Field types of a dataclass, `Annotated` bounds kept (resolved once per class)."""
    hints = get_type_hints(cls, include_extras=True)
    return {f.name: hints[f.name] for f in fields(cls)}


def coerce_fields(obj: Any) -> None:
    """Convert and check every field of a frozen config in place (its `__post_init__`).

    Keys in errors are bare field names here; `from_dict` has already checked its values with
    their dotted keys before it constructs anything.
    """
    for name, hint in _hints(type(obj)).items():
        object.__setattr__(obj, name, coerce(getattr(obj, name), hint, name))


def from_dict(
    cls: type[C], data: Mapping[str, Any], *, base: C | None = None, prefix: str = ""
) -> C:
    """Build (or override `base` of) a config dataclass from a nested mapping.

    Every value goes through `coerce`. `prefix` is the dotted path of `cls` inside the root
    config (e.g. "agent."), so that errors name keys as users write them.

    Raises:
        ValueError: one line, on an unknown key (naming it and the accepted ones) or a value
            that does not fit its field's type or range.
    """
    if not isinstance(data, Mapping):
        where = prefix.rstrip(".") or cls.__name__
        raise ValueError(f"{where}={data!r} is not a mapping of {cls.__name__} settings")
    base = cls() if base is None else base
    hints = _hints(cls)
    changes: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in hints:
            raise ValueError(
                f"unknown {cls.__name__} key {key!r}; accepted: {', '.join(sorted(hints))}"
            )
        current = getattr(base, name)
        if is_dataclass(current) and isinstance(value, Mapping):
            value = from_dict(type(current), value, base=current, prefix=f"{prefix}{name}.")
        else:
            value = coerce(value, hints[name], prefix + name)
        changes[name] = value
    return replace(base, **changes)
