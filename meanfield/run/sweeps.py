"""Sweeps beyond one machine, from Python: the points of a grid, one shard of it, and the merge.

Ray tasks, submitit functions, a job array or a notebook drive a sharded sweep with three calls
(the command line's ``meanfield sweep ... --shard I/N`` and ``meanfield merge OUT`` are the same):

    from meanfield.run import sweep_points, run_shard, merge

    grid = {"beta": [1, 2, 4], "seed": [0, 1, 2, 3]}
    sweep_points("clustering", grid)                  # the 12 points, in grid order
    for i in range(3):                                # anywhere: 3 jobs, 3 machines
        run_shard("clustering", grid, (i, 3), "out/sweep", config={"n": 64})
    merge("out/sweep")                                # out/sweep/result.nc, as the unsharded sweep

Each shard is an ordinary run in OUT/shards/I-of-N (own lock, checkpoint, run.json; ``resume=True``
continues it after a preemption). ``merge`` refuses missing points, points present twice and
shards of other grids, configs or versions, and writes OUT/result.nc atomically: nothing partial
is ever left as if complete, and merging twice gives the same file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import xarray as xr

from .. import __version__
from .config import ConfigError, apply_overrides
from .executor import _finish, execute, grid_dataset
from .folders import folder_lock
from .presets import Grid, Preset, get_preset, parse_grid
from .shards import (
    SHARD_FILE,
    check_shard,
    parse_shard,
    shard_dir,
    shard_dirs,
    shard_indices,
    shard_records,
)


def _preset(preset) -> Preset:
    return get_preset(preset) if isinstance(preset, str) else preset


def _config(preset: Preset, config):
    """None (defaults), a Config instance, a dict of key -> value, or ``key=value`` strings."""
    if config is None:
        return preset.Config()
    if isinstance(config, preset.Config):
        return config
    if isinstance(config, dict):
        config = [
            f"{k}={','.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
            for k, v in config.items()
        ]
    return apply_overrides(preset.Config(), list(config))


def _grid(cfg, grid) -> Grid:
    """A Grid, a dict of key -> values, or ``key=v1,v2`` specs (validated like ``--grid``)."""
    if isinstance(grid, Grid):
        return grid
    if isinstance(grid, dict):
        grid = [f"{k}={','.join(map(str, v))}" for k, v in grid.items()]
    return parse_grid(cfg, list(grid))


def sweep_points(preset, grid, config=None) -> list[dict]:
    """The points of ``grid`` (a Grid, a dict key -> values, or ``key=v1,v2`` specs) in grid order,
    each as {key: value}; shard I of N holds ``numpy.array_split(range(P), N)[I]`` of them."""
    cfg = _config(_preset(preset), config)
    g = _grid(cfg, grid)
    return [dict(zip(g.keys, pt)) for pt in g.points()]


def run_shard(
    preset,
    grid,
    shard,
    out,
    *,
    config=None,
    resume: bool = False,
    force: bool = False,
    progress: bool = False,
    mesh="auto",
    checkpoint_every: int = 1,
    max_chunks: int | None = None,
) -> xr.Dataset:
    """Run part ``shard`` (``(i, n)``, ``"i/n"`` or ``"auto"`` in a SLURM array) of the sweep of
    ``preset`` over ``grid`` into OUT/shards/i-of-n; returns the shard's Dataset (shard.nc)."""
    p = _preset(preset)
    cfg = _config(p, config)
    g = _grid(cfg, grid)
    sh = check_shard(parse_shard(shard), len(g.points()))
    return execute(
        p,
        cfg,
        g,
        shard_dir(out, sh),
        resume=resume,
        force=force,
        checkpoint_every=checkpoint_every,
        progress=progress,
        mesh=mesh,
        max_chunks=max_chunks,
        shard=sh,
        invocation={
            "grid_specs": [f"{k}={','.join(map(str, v))}" for k, v in zip(g.keys, g.values)]
        },
    )


def _describe_points(grid: Grid, indices) -> str:
    points = grid.points()
    shown = [
        f"#{k} (" + ", ".join(f"{key}={v}" for key, v in zip(grid.keys, points[k])) + ")"
        for k in list(indices)[:8]
    ]
    more = len(indices) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def merge(out) -> xr.Dataset:
    """Combine OUT/shards/*/shard.nc into OUT/result.nc, the Dataset (and figures) the unsharded
    sweep writes. Refused, with one line naming them, when points are missing (an unfinished or
    absent shard), present twice, or shards come from other presets, grids, configs or versions."""
    out = Path(out)
    found = shard_dirs(out)
    if not found:
        raise ConfigError(
            f"merge: no shards in {out / 'shards'} (run meanfield sweep ... --shard I/N)"
        )
    with folder_lock(out):
        parts, unfinished = [], []
        for sh, path in found:
            if not (path / SHARD_FILE).exists():
                unfinished.append(f"{sh[0]}/{sh[1]}")
                continue
            try:
                parts.append((sh, xr.load_dataset(path / SHARD_FILE)))
            except Exception as err:  # truncated or not netCDF
                raise ConfigError(f"merge: {path / SHARD_FILE} cannot be read ({err})") from None
        if not parts:
            raise ConfigError(
                f"merge: no shard in {out} has finished (unfinished: {', '.join(unfinished)})"
            )
        first = parts[0][1].attrs
        for sh, ds in parts[1:]:
            for key in ("preset", "grid", "config", "meanfield_version"):
                if ds.attrs.get(key) != first.get(key):
                    raise ConfigError(
                        f"merge: shards of different runs: {parts[0][0][0]}/{parts[0][0][1]} and "
                        f"{sh[0]}/{sh[1]} differ in {key} ({first.get(key)} vs {ds.attrs.get(key)})"
                    )
        if first.get("meanfield_version") != __version__:
            raise ConfigError(
                f"merge: the shards were made by meanfield {first.get('meanfield_version')}, this is {__version__}"
            )
        preset = get_preset(first["preset"])
        cfg = preset.Config.from_attrs(first)
        spec = json.loads(first["grid"])
        grid = parse_grid(cfg, [f"{k}={','.join(map(str, v))}" for k, v in spec.items()])
        n_points = len(grid.points())
        owner = np.full(n_points, -1)
        recs, point_ts = None, None
        twice = []
        for k, (sh, ds) in enumerate(parts):
            index, rec, ts = shard_records(ds)
            if not np.array_equal(index, shard_indices(n_points, sh)):
                raise ConfigError(f"merge: shard {sh[0]}/{sh[1]} does not hold its own points")
            twice += [int(i) for i in index if owner[i] >= 0]
            owner[index] = k
            if recs is None:
                recs = {n: np.zeros((n_points,) + a.shape[1:], a.dtype) for n, a in rec.items()}
                point_ts = np.zeros((n_points,) + ts.shape[1:], ts.dtype)
            for n, a in rec.items():
                recs[n][index] = a
            point_ts[index] = ts
        if twice:
            raise ConfigError(
                f"merge: {len(twice)} point(s) present twice (overlapping shards of different N): "
                f"{_describe_points(grid, sorted(set(twice)))}; remove the extra shard folders"
            )
        missing = np.flatnonzero(owner < 0)
        if missing.size:
            hint = (
                f"; unfinished shards: {', '.join(unfinished)} (resume them)" if unfinished else ""
            )
            raise ConfigError(
                f"merge: {missing.size} of {n_points} point(s) missing: "
                f"{_describe_points(grid, missing)}{hint}"
            )
        ds = grid_dataset(preset, cfg, grid, recs, point_ts)
        return _finish(preset, cfg, grid, ds, out, None)


__all__ = ["sweep_points", "run_shard", "merge"]
