"""Typed run configurations: frozen dataclasses overridden by ``key=value`` strings or TOML.

We use plain dataclasses + our own coercion rather than tyro: no extra dependency, the same
config class serves the CLI, sweeps (``--grid key=v1,v2``) and Python callers, and the error
messages (unknown key -> list of valid keys; bad value -> expected type) are ours to keep clear.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from pathlib import Path


class ConfigError(ValueError):
    """A bad key or value in a run configuration (the CLI exits with status 2)."""


def field_types(cls) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def type_name(t) -> str:
    """'float', 'tuple[float, ...]', ... as written in the config class."""
    if typing.get_origin(t) is tuple:
        args = typing.get_args(t)
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        return f"tuple[{inner}]"
    return getattr(t, "__name__", str(t))


def describe(cls, cfg=None) -> str:
    """'key: type = value' lines for every field of a config class (its defaults, or the values of
    the instance ``cfg``: the resolved config after overrides)."""
    lines = []
    for f in dataclasses.fields(cls):
        t = field_types(cls)[f.name]
        value = f.default if cfg is None else getattr(cfg, f.name)
        lines.append(f"  {f.name}: {type_name(t)} = {value!r}")
    return "\n".join(lines)


def coerce(cls, key: str, value):
    """Convert ``value`` (a string from the command line, or a TOML value) to the type of
    field ``key`` of ``cls``; raises ConfigError naming the key and the valid keys."""
    types = field_types(cls)
    if key not in types:
        raise ConfigError(f"unknown key {key!r} for {cls.__name__}; valid keys:\n{describe(cls)}")
    t = types[key]
    origin = typing.get_origin(t)
    try:
        if t is bool:
            if isinstance(value, bool):
                return value
            low = str(value).strip().lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ValueError(value)
        if origin is tuple:
            (inner, *_rest) = typing.get_args(t)
            items = value if isinstance(value, (list, tuple)) else [v for v in str(value).split(",") if v.strip()]
            return tuple(_scalar(inner, v) for v in items)
        return _scalar(t, value)
    except (TypeError, ValueError):
        raise ConfigError(f"bad value {value!r} for {key!r}: expected {type_name(t)}") from None


def _scalar(t, value):
    if isinstance(value, bool) and t is not bool:  # TOML true/false is not a number
        raise ValueError(value)
    if t is int:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        if isinstance(value, str) and not value.strip().lstrip("+-").isdigit():
            raise ValueError(value)
        return int(value)
    if t is float:
        return float(value)
    if t is str:
        return str(value)
    raise TypeError(t)


def apply_overrides(cfg, overrides: list[str] | None):
    """Return ``cfg`` with ``key=value`` strings and/or TOML files (``path.toml``) applied in order;
    then run the config's own ``validate()`` if it has one."""
    changes = {}
    for item in overrides or []:
        if "=" not in item:
            path = Path(item)
            if path.suffix != ".toml" or not path.exists():
                raise ConfigError(f"--set expects key=value or an existing .toml file, got {item!r}")
            try:
                with path.open("rb") as fh:
                    table = tomllib.load(fh)
            except tomllib.TOMLDecodeError as err:
                raise ConfigError(f"{path}: invalid TOML: {err}") from None
            for key, value in table.items():
                changes[key] = coerce(type(cfg), key, value)
            continue
        key, value = item.split("=", 1)
        changes[key.strip()] = coerce(type(cfg), key.strip(), value.strip())
    cfg = dataclasses.replace(cfg, **changes)
    check = getattr(cfg, "validate", None)
    if check is not None:
        check()
    return cfg
