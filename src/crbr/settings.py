"""Typed settings from plain data: build (nested) dataclasses from dicts with names checked and
simple types coerced, and apply `a.b.c=value` overrides. Used by experiment configs and model
configs alike; knows nothing of either.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import yaml


class UnknownSetting(KeyError, ValueError):
    """A setting name the dataclass does not have (a KeyError and a ValueError, so callers of
    either kind catch it); the message names it and lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if value is None:
        return None
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise TypeError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and dataclasses.is_dataclass(args[0]) and value == {}:
            return None  # an optional nested config given as {} is absent (how older files wrote "none")
        return _coerce(args[0], value, where) if len(args) == 1 else value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            value = [value]
        (inner, *_) = typing.get_args(tp) or (Any,)
        out = [_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return out if origin is list else tuple(out)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise TypeError(f"{where}: expected true/false, got {value!r}")
    if tp in (int, float):
        try:
            out = tp(value)
        except (TypeError, ValueError):
            raise TypeError(f"{where}: expected {tp.__name__}, got {value!r}") from None
        if tp is int and isinstance(value, float) and value != out:
            raise TypeError(f"{where}: expected an integer, got {value!r}")
        return out
    if tp is str:
        return str(value)
    return value


def from_dict(cls: type, d: dict[str, Any], where: str = "") -> Any:
    """Build dataclass `cls` from a (nested) dict, checking names and coercing simple types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = set(d) - names
    if unknown:
        raise UnknownSetting(f"{where or cls.__name__}: unknown setting(s) {sorted(unknown)}; known: {sorted(names)}")
    kw = {k: _coerce(hints[k], v, f"{where + '.' if where else ''}{k}") for k, v in d.items()}
    return cls(**kw)


def nested_config(cls: type, value: Any, parent: Any, where: str) -> Any:
    """An optional nested config (e.g. a tower inside a retriever) given as settings: a dict
    becomes `cls`, with the sizes it does not give (n_items, n_actions) taken from `parent`, the
    model that contains it; {} (how older files wrote "none") becomes None; a `cls` stays."""
    if not isinstance(value, dict):
        return value
    if not value:
        return None
    inherit = {k: getattr(parent, k) for k in ("n_items", "n_actions") if hasattr(parent, k)}
    return from_dict(cls, {**inherit, **value}, where)


def inner_config(cls: type, value: Any, parent: Any, checkpoint: str, where: str) -> Any:
    """The config a model builds its inner model from: `value` (a nested config) sized to the
    parent's catalogue, or a default `cls` with the parent's actions when none is given. A
    checkpoint setting whose config was never read (`value` None) is an error naming `where`."""
    if checkpoint and value is None:
        raise ValueError(f"{where} {checkpoint!r} is set but its config was not read "
                         "(build the model with crbr.models.build_model)")
    inner = value if value is not None else cls(n_actions=parent.n_actions)
    return dataclasses.replace(inner, n_items=parent.n_items)


def call_options(pairs: list[str], allowed: "tuple[str, ...] | list[str]", owner: str,
                 option: str = "--rank-option") -> dict[str, Any]:
    """NAME=VALUE strings (values parsed as YAML) -> {name: value}, every name one of `allowed`
    (what `owner` declares it accepts), else an error naming the option and the allowed names."""
    for p in pairs:
        if "=" not in p or p.split("=", 1)[0].strip() not in allowed:
            names = ", ".join(allowed) if allowed else "none"
            raise ValueError(f"{option} {p!r}: {owner} accepts {names} (as NAME=VALUE)")
    return apply_overrides({}, pairs)  # names are plain (no dots): one level


def apply_overrides(d: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set `a.b.c=value` entries (value parsed as YAML) into a nested dict, in place."""
    for ov in overrides:
        if "=" not in ov:
            raise ValueError(f"override {ov!r}: expected key=value (e.g. train.lr=1e-3)")
        key, raw = ov.split("=", 1)
        try:
            val = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ValueError(f"override {ov!r}: the value {raw!r} is not valid YAML ({problem})") from None
        node = d
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {ov!r}: {p!r} is not a section")
        node[parts[-1]] = val
    return d


def json_default(v: Any) -> str:
    return "null" if v is None else (str(v).lower() if isinstance(v, bool) else str(v))
