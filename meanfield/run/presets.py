"""Presets: one experiment as pure JAX pieces, found through the ``meanfield.presets`` entry points.

A [`Preset`][meanfield.run.Preset] describes one experiment, in one of two kinds:
[`TracedPreset`][meanfield.run.TracedPreset] (traced JAX in chunks, batched over swept keys)
or [`StepPreset`][meanfield.run.StepPreset] (host-side steps, typed
[`Step`][meanfield.run.Step]s). A traced preset has

* ``Config``: a frozen dataclass deriving from [`RunConfig`][meanfield.run.RunConfig] (``chunks``, ``seed``) with the
  preset's own keys, each a typed field with a default;
* ``times(cfg)``: the save times (or depths), shape (T,);
* ``init(cfg, p)``: the initial state (a pytree), where ``p`` maps every key of ``vmap_keys``
  to a traced scalar (so sweeps over those keys are batched by ``jax.vmap``);
* ``advance(cfg, p, state, ts)``: integrate over one chunk of save times ``ts`` (its first
  entry is the chunk's start), returning the new state and a record with a leading time axis
  of length ``len(ts) - 1``; ``record(cfg, p, state)`` is the record of the initial state;
* ``dataset(cfg, ts, recs, grid)`` turns the stacked records into an ``xarray.Dataset``;
  ``plot(ds, outdir)`` writes PNGs (reading the typed config back with ``Config.from_attrs(ds)``).

Every preset also declares its tiny run for the test suite (``tiny``, ``slow``, ``outputs``), so
a preset is its module plus its entry point.

Registration: a module of presets decorates each class with [`register`][meanfield.run.register]; the ``meanfield``
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
import json
from pathlib import Path
from typing import ClassVar

import numpy as np

from .config import ConfigError, check_ranges, coerce

ENTRY_POINTS = "meanfield.presets"
"""The entry-point group whose modules register presets when imported."""

PRESETS: dict[str, Preset] = {}
"""The registry: every registered preset by name (filled by [`register`][meanfield.run.register])."""


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

    @classmethod
    def from_attrs(cls, ds):
        """The typed config a result was made with, read back from its ``config`` attribute (the
        JSON the executor writes): ``cls.from_attrs(xr.open_dataset(path))`` (or a dict of attrs).
        JSON lists become tuples; keys the class does not know (an older preset version) are
        ignored, and keys it lacks keep their defaults. Not validated: a result is plotted as it was made."""
        attrs = getattr(ds, "attrs", ds)
        raw = json.loads(attrs["config"])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: _tuples(v) for k, v in raw.items() if k in known})

    def validate(self, first=()):
        """Every key against its declared range ([`meanfield.run.config.check_ranges`][meanfield.run.config.check_ranges]; the keys
        in ``first``, e.g. those just set, are reported first), then the config's own `check`: once
        per config, before any compute."""
        check_ranges(self, first=first)
        self.check()

    def check(self):
        """Checks across keys beyond their ranges (subclasses; the ranges already hold)."""


def _tuples(value):
    """JSON lists (at any depth) as tuples, the type of a config's sequence fields."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


class Preset(abc.ABC):
    """One experiment (see the module docstring): the class attributes every preset sets. Subclass
    [`TracedPreset`][meanfield.run.TracedPreset] or [`StepPreset`][meanfield.run.StepPreset]."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type] = RunConfig
    vmap_keys: ClassVar[tuple[str, ...]] = ()
    sweepable: ClassVar[bool] = True
    """False: the preset runs one configuration only (``meanfield sweep`` is refused up front)."""
    tiny: ClassVar[tuple[str, ...]] = ()
    """``--set`` overrides of a run small enough for the test suite (seconds): ``tests/test_cli.py``
    runs every registered preset with them."""
    slow: ClassVar[bool] = False
    """True when the tiny run takes over ~20 s on 2 cores (the full suite runs it, ``-m "not slow"`` skips it)."""
    outputs: ClassVar[frozenset[str]] = frozenset()
    """Variables (and dimensions, e.g. ``"time"``) the tiny run's Dataset must hold."""
    variables: ClassVar[dict] = {}
    """What each variable and coordinate of the Dataset is, by name: a
    [`Var`][meanfield.run.Var] ``(long_name, units, description)``, beside the shared
    [`COMMON`][meanfield.run.COMMON] names ([`meanfield.run.variables`][meanfield.run.variables])."""

    @abc.abstractmethod
    def times(self, cfg) -> np.ndarray:
        """The save times (or depths), shape (T,): ``cfg.chunks`` is at most T - 1."""

    def plot(self, ds, outdir) -> list[Path]:
        """Write the figures of a result into ``outdir``; the typed config is ``self.Config.from_attrs(ds)``."""
        return []


class TracedPreset(Preset):
    """A preset whose work is traced JAX: chunks of save times, batched over the swept keys of
    ``vmap_keys`` by ``jax.vmap``, checkpointed after every chunk (module docstring)."""

    @abc.abstractmethod
    def init(self, cfg, p):
        """The initial state (a pytree); ``p`` maps every key of ``vmap_keys`` to a traced scalar."""

    @abc.abstractmethod
    def advance(self, cfg, p, state, ts):
        """(new state, record) over the save times ``ts`` (its first entry is the chunk's start); the
        record has a leading time axis of length ``len(ts) - 1``."""

    @abc.abstractmethod
    def dataset(self, cfg, ts, recs, grid):
        """The ``xarray.Dataset`` from the stacked records (grid shape + time + ...)."""

    def record(self, cfg, p, state):
        """Record of the initial state; default: the state itself, as variable ``x``."""
        return {"x": state[None]}


@dataclasses.dataclass(frozen=True)
class Step:
    """One host-side step of a [`StepPreset`][meanfield.run.StepPreset]: a ``name`` (distinct
    within the run: the key of its results and of its checkpoint entry) and the ``params`` it computes
    with, typed values (never parsed back from the name)."""

    name: str
    params: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not self.name or "::" in self.name:
            raise ValueError(
                f"a step name must be non-empty and contain no '::', got {self.name!r}"
            )


class StepPreset(Preset):
    """A preset whose work is host-side steps (Monte-Carlo batches, trainings, one per grid value,
    each a loop of jitted calls compiled for its own shapes): the executor runs ``steps(cfg)`` one by
    one with a progress bar and a checkpoint after each (a resumed run redoes none of the finished
    steps), then ``step_dataset`` builds the result. One configuration per run (no sweep grid)."""

    sweepable = False

    def times(self, cfg):
        return np.array([0.0, 1.0])  # one piece: chunks = 1

    @abc.abstractmethod
    def steps(self, cfg) -> list[Step]:
        """The steps of the run, in order."""

    @abc.abstractmethod
    def run_step(self, cfg, step: Step, done: dict) -> dict:
        """Compute ``step``; returns a dict of NumPy arrays (``done``: the finished steps' arrays by name)."""

    @abc.abstractmethod
    def step_dataset(self, cfg, results: dict):
        """The Dataset from every step's arrays, ``results[step.name][key]``."""


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
    [`ConfigError`][meanfield.run.ConfigError] listing the available ones otherwise."""
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
            raise ConfigError(
                f"--grid {key}: repeated values {dup} (each grid coordinate must be distinct)"
            )
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
                if isinstance(point_cfg, RunConfig):
                    point_cfg.validate(first=list(point))
                else:
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
