"""Typed run configurations: frozen dataclasses overridden by ``key=value`` strings or TOML.

We use plain dataclasses + our own coercion rather than tyro: no extra dependency, the same
config class serves the CLI, sweeps (``--grid key=v1,v2``) and Python callers, and the error
messages (unknown key -> list of valid keys; bad value -> expected type) are ours to keep clear.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import tomllib
import typing
from pathlib import Path

from .ranges import Range, is_numeric


class ConfigError(ValueError):
    """A bad key or value in a run configuration (the CLI exits with status 2)."""


@functools.cache
@typing.no_type_check  # pure-Python config parsing, no arrays (see meanfield.run.ranges)
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


@functools.cache
@typing.no_type_check
def key_ranges(cls) -> dict[str, Range]:
    """The declared range of every key of a config class: the ``ranges`` dicts of the class and
    its bases, merged (a subclass overrides its bases), parsed ([`meanfield.run.ranges`][meanfield.run.ranges])."""
    merged: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        merged.update(klass.__dict__.get("ranges", {}))
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: Range.parse(v) for k, v in merged.items() if k in names}


def describe(cls, cfg=None) -> str:
    """'key: type = value  in RANGE' lines for every field of a config class (its defaults, or
    the values of the instance ``cfg``: the resolved config after overrides)."""
    ranges = key_ranges(cls)
    rows = []
    for f in dataclasses.fields(cls):
        t = field_types(cls)[f.name]
        value = f.default if cfg is None else getattr(cfg, f.name)
        rows.append(
            (
                f"  {f.name}: {type_name(t)} = {value!r}",
                ranges[f.name].text if f.name in ranges else "",
            )
        )
    width = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{width}}  in {r}" if r else a for a, r in rows)


@typing.no_type_check
def check_ranges(cfg, first=()) -> None:
    """Every key of ``cfg`` against its declared range ([`key_ranges`][meanfield.run.config.key_ranges]); a key without one
    must at least be finite when it is a float. Raises a one-line [`ConfigError`][meanfield.run.ConfigError] naming the
    key, the value and the range (and the values of the other keys the range names). The keys in
    ``first`` (those the user set) are checked first, so that the error names the key the user
    typed when a range ties two keys."""
    cls = type(cfg)
    ranges = key_ranges(cls)
    types = field_types(cls)
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)}
    order = [k for k in first if k in values] + [k for k in values if k not in first]
    for key in order:
        value = values[key]
        rng = ranges.get(key)
        if rng is None:
            if is_numeric(types[key]):
                bad = [
                    v
                    for v in (value if isinstance(value, tuple) else (value,))
                    if isinstance(v, float) and not math.isfinite(v)
                ]
                if bad:
                    raise ConfigError(f"{key} = {value!r} is out of range: must be finite")
            continue
        why = rng.check(value, values)
        if why is not None:
            named = [
                w
                for w in dict.fromkeys(re.findall(r"[A-Za-z_]\w*", rng.text))
                if w in values and w != key and f"{w} = " not in why
            ]
            where = "".join(f", {w} = {values[w]!r}" for w in named)
            raise ConfigError(f"{key} = {value!r} is out of range: {why}{where}")


def coerce(cls, key: str, value):
    """Convert ``value`` (a string from the command line, or a TOML value) to the type of
    field ``key`` of ``cls``; raises ConfigError naming the key and the valid keys."""
    types = field_types(cls)
    if key not in types:
        close = difflib.get_close_matches(key, list(types), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"unknown key {key!r} for {cls.__name__}{hint}; valid keys:\n{describe(cls)}"
        )
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
            items = (
                value
                if isinstance(value, (list, tuple))
                else [v for v in str(value).split(",") if v.strip()]
            )
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


def read_toml(path: Path) -> dict:
    """The table of a TOML config file; a one-line ConfigError naming the file when it cannot be read
    (a folder, no permission, not UTF-8, not TOML)."""
    try:
        with Path(path).open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: {err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: not a UTF-8 text file (byte {err.start}); TOML files are UTF-8"
        ) from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the TOML file ({err.strerror or err})") from None


def override_keys(overrides: list[str] | None) -> set[str]:
    """The config keys that ``key=value`` items and TOML files among ``overrides`` set."""
    keys = set()
    for item in overrides or []:
        if "=" in item:
            keys.add(item.split("=", 1)[0].strip())
        elif Path(item).suffix == ".toml" and Path(item).exists():
            keys.update(read_toml(Path(item)))
    return keys


def apply_overrides(cfg, overrides: list[str] | None):
    """Return ``cfg`` with ``key=value`` strings and/or TOML files (``path.toml``) applied in order;
    then run the config's own ``validate()`` if it has one."""
    changes = {}
    for item in overrides or []:
        if "=" not in item:
            path = Path(item)
            if path.suffix != ".toml" or not path.exists():
                raise ConfigError(
                    f"--set expects key=value or an existing .toml file, got {item!r}"
                )
            table = read_toml(path)
            for key, value in table.items():
                changes[key] = coerce(type(cfg), key, value)
            continue
        key, value = item.split("=", 1)
        changes[key.strip()] = coerce(type(cfg), key.strip(), value.strip())
    cfg = dataclasses.replace(cfg, **changes)
    validate = getattr(cfg, "validate", None)
    if validate is not None and hasattr(type(cfg), "check"):  # a RunConfig: ranges and checks, once
        validate(first=list(changes))
    elif dataclasses.is_dataclass(cfg) and hasattr(type(cfg), "ranges"):
        check_ranges(cfg, first=list(changes))
    elif validate is not None:
        validate()
    return cfg
