"""Presets: one experiment as pure JAX pieces, found through the ``meanfield.presets`` entry points.

A [`Preset`][meanfield.run.presets.Preset] describes one experiment:

* ``Config``: a frozen dataclass deriving from [`RunConfig`][meanfield.run.presets.RunConfig] (``chunks``, ``seed``) with the
  preset's own keys, each a typed field with a default;
* ``times(cfg)``: the save times (or depths), shape (T,);
* ``init(cfg, p)``: the initial state (a pytree), where ``p`` maps every key of ``vmap_keys``
  to a traced scalar (so sweeps over those keys are batched by ``jax.vmap``);
* ``advance(cfg, p, state, ts)``: integrate over one chunk of save times ``ts`` (its first
  entry is the chunk's start), returning the new state and a record with a leading time axis
  of length ``len(ts) - 1``; ``record(cfg, p, state)`` is the record of the initial state;
* ``dataset(cfg, ts, recs, grid)`` turns the stacked records into an ``xarray.Dataset``;
  ``plot(ds, outdir)`` writes PNGs.

Registration: a module of presets decorates each class with [`register`][meanfield.run.presets.register]; the ``meanfield``
command imports every module named in the ``meanfield.presets`` entry-point group (this project's
``experiments/`` folder, installed as ``meanfield_experiments``, and any other installed package
that declares presets there). Nothing in the engine knows presets exist.
"""

from __future__ import annotations

import abc
import dataclasses
import difflib
import importlib.metadata
import itertools
from pathlib import Path
from typing import ClassVar

import numpy as np

from .config import ConfigError, check_ranges, coerce

ENTRY_POINTS = "meanfield.presets"
"""The entry-point group whose modules register presets when imported."""

PRESETS: dict[str, Preset] = {}
"""The registry: every registered preset by name (filled by [`register`][meanfield.run.presets.register])."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The keys every preset has: how many chunks the run is cut into, and its random seed.

    ``chunks`` is checked once by the executor against the preset's save times (between 1 and
    the number of intervals); a preset whose work is one piece has two save times, so 1 is the
    only valid value."""

    chunks: int = 1
    """integration chunks (progress bar, checkpoints)"""
    seed: int = 0
    """random seed"""

    ranges: ClassVar[dict[str, str]] = {"chunks": "[1, 1]", "seed": "[0, 2**31 - 1]"}
    """The valid range of each key ([`meanfield.run.ranges`][meanfield.run.ranges]), merged with those of the
    subclasses; ``chunks`` is at most the number of save intervals of the preset's times."""

    def validate(self):
        """Every key against its declared range ([`meanfield.run.config.check_ranges`][meanfield.run.config.check_ranges]), before
        any compute; subclasses that add checks call ``super().validate()`` first."""
        check_ranges(self)


class Preset(abc.ABC):
    """One experiment (see the module docstring). Subclasses set the class attributes and
    implement the abstract methods; ``record`` and ``plot`` have defaults."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type] = RunConfig
    vmap_keys: ClassVar[tuple[str, ...]] = ()
    sweepable: ClassVar[bool] = True
    """False: the preset runs one configuration only (``meanfield sweep`` is refused up front)."""
    variables: ClassVar[dict] = {}
    """What each variable and coordinate of the Dataset is, by name: a
    [`Var`][meanfield.run.variables.Var] ``(long_name, units, description)``, beside the shared
    [`COMMON`][meanfield.run.variables.COMMON] names ([`meanfield.run.variables`][meanfield.run.variables])."""

    @abc.abstractmethod
    def times(self, cfg) -> np.ndarray: ...

    @abc.abstractmethod
    def init(self, cfg, p): ...

    @abc.abstractmethod
    def advance(self, cfg, p, state, ts): ...

    @abc.abstractmethod
    def dataset(self, cfg, ts, recs, grid): ...

    def record(self, cfg, p, state):
        """Record of the initial state; default: the state itself, as variable ``x``."""
        return {"x": state[None]}

    def plot(self, ds, outdir) -> list[Path]:
        return []

    # host-side work in steps (optional): progress, checkpoints and resume at step granularity
    def host_steps(self, cfg) -> list[str] | None:
        """Names of host-side steps (Monte-Carlo batches, trainings, one per grid value, ...) that
        the executor runs one by one after the traced chunks, with a progress bar and a checkpoint
        after each (a resumed run redoes none of the finished steps). None: no host steps, and
        ``dataset`` builds the result. Otherwise [`host_step`][meanfield.run.presets.Preset.host_step] and [`host_dataset`][meanfield.run.presets.Preset.host_dataset] are used."""
        return None

    def host_step(self, cfg, name: str, done: dict) -> dict:
        """Compute step ``name``; returns a dict of NumPy arrays (``done``: the finished steps)."""
        raise NotImplementedError

    def host_dataset(self, cfg, results: dict):
        """The Dataset from every step's arrays, ``results[name][key]``."""
        raise NotImplementedError


def register(preset_cls):
    """Class decorator: instantiate and add to PRESETS under ``preset_cls.name``."""
    if not preset_cls.name:
        raise TypeError(f"{preset_cls.__name__} has no name")
    if not issubclass(preset_cls.Config, RunConfig):
        raise TypeError(f"{preset_cls.__name__}.Config must derive from meanfield.run.RunConfig")
    inst = preset_cls()
    PRESETS[inst.name] = inst
    return preset_cls


def load_presets() -> dict[str, Preset]:
    """Import every module of the ``meanfield.presets`` entry-point group (they register
    themselves) and return the registry."""
    for ep in importlib.metadata.entry_points(group=ENTRY_POINTS):
        ep.load()
    return PRESETS


def get_preset(name: str) -> Preset:
    """The registered preset called ``name`` (every preset module loaded first); a
    [`ConfigError`][meanfield.run.config.ConfigError] listing the available ones otherwise."""
    presets = load_presets()
    if name not in presets:
        close = difflib.get_close_matches(name, list(presets), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown preset {name!r}{hint}; available: {', '.join(sorted(presets))}")
    return presets[name]


# ----------------------------------------------------------------------------- grids
@dataclasses.dataclass(frozen=True)
class Grid:
    """Swept keys (in the user's order) and their values; empty for a single run."""

    keys: tuple[str, ...] = ()
    values: tuple[tuple, ...] = ()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(v) for v in self.values)

    def points(self):
        return list(itertools.product(*self.values))

    def coords(self) -> dict:
        """Coordinates of the swept dimensions, for an xarray Dataset."""
        return {k: list(v) for k, v in zip(self.keys, self.values)}


GRID_CHECK_LIMIT = 100_000
"""Grids up to this many points are validated point by point (every combination); larger ones
value by value against the base config."""


def parse_grid(cfg, specs: list[str] | None) -> Grid:
    """``["beta=1,2,4", "seed=0,1"]`` -> Grid, values coerced to the config's field types and every
    grid point validated (``cfg`` with the point's values, ``validate()``) before any compute."""
    keys, values = [], []
    for spec in specs or []:
        if "=" not in spec:
            raise ConfigError(f"--grid expects key=v1,v2,..., got {spec!r}")
        key, raw = (s.strip() for s in spec.split("=", 1))
        if key in keys:
            raise ConfigError(f"--grid key {key!r} given twice")
        vals = tuple(coerce(type(cfg), key, v) for v in raw.split(",") if v.strip())
        if not vals:
            raise ConfigError(f"--grid {key}: no values")
        dup = sorted({v for v in vals if vals.count(v) > 1}, key=str)
        if dup:
            raise ConfigError(f"--grid {key}: repeated values {dup} (each grid coordinate must be distinct)")
        keys.append(key)
        values.append(vals)
    grid = Grid(tuple(keys), tuple(values))
    check = getattr(cfg, "validate", None)
    if check is not None and keys:
        if int(np.prod(grid.shape)) <= GRID_CHECK_LIMIT:
            points = [dict(zip(keys, pt)) for pt in grid.points()]
        else:
            points = [{k: v} for k, vals in zip(keys, values) for v in vals]
        for point in points:
            try:
                point_cfg = dataclasses.replace(cfg, **point)
                check_ranges(point_cfg, first=list(point))
                point_cfg.validate()
            except ConfigError as err:
                raise ConfigError(f"--grid: {err}") from None
    return grid


def grid_param(grid: Grid, cfg, key: str) -> np.ndarray:
    """The value of config ``key`` at every grid point, shape ``grid.shape``."""
    if key in grid.keys:
        i = grid.keys.index(key)
        vals = np.asarray(grid.values[i])
        shape = [1] * len(grid.keys)
        shape[i] = len(vals)
        return np.broadcast_to(vals.reshape(shape), grid.shape)
    return np.full(grid.shape, getattr(cfg, key))
