"""Shards of a sweep grid: the partition, the ``--shard`` spec (``I/N`` or ``auto`` from a SLURM job
array) and the Dataset one shard writes.

A grid of P points (in its row-major order, `Grid.points`) is cut into N contiguous parts of
``P // N`` or ``P // N + 1`` points (``numpy.array_split``): part I is the same set for every
process that computes it, so independent jobs need no coordination. A point's random numbers come
from its configuration (``seed`` and the swept values), never from its place in a batch, so a
point computes the same numbers in a shard as in the whole sweep.

Shard I of N writes DIR/shard.nc: each record of the preset stacked over the shard's points
(``record_NAME``, dims ``point``, ``save``, ...), the points' global indices (coordinate ``point``)
and swept values (``grid_KEY``), and attrs that name the preset, config, grid, shard, points,
package version and seed. ``meanfield merge`` ([`meanfield.run.sweeps.merge`][meanfield.run.sweeps.merge]) checks
the shards against each other and builds the result the unsharded sweep writes.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import xarray as xr

from .. import __version__
from .config import ConfigError

SHARD_FILE = "shard.nc"
SHARDS_DIR = "shards"
_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
_DIR = re.compile(r"^(\d+)-of-(\d+)$")


def shard_indices(n_points: int, shard: tuple[int, int]) -> np.ndarray:
    """The global indices of part ``shard = (i, n)`` of ``n_points`` grid points: contiguous and
    balanced (``numpy.array_split``)."""
    i, n = shard
    return np.array_split(np.arange(n_points), n)[i]


def shard_points(grid, shard: tuple[int, int]) -> list[tuple]:
    """The grid points (tuples of swept values) of part ``shard`` of ``grid``."""
    points = grid.points()
    return [points[k] for k in shard_indices(len(points), shard)]


def check_shard(shard: tuple[int, int], n_points: int) -> tuple[int, int]:
    """``(i, n)`` with 0 <= i < n <= n_points, else a one-line ConfigError naming ``--shard``."""
    i, n = int(shard[0]), int(shard[1])
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard {i}/{n}: needs 0 <= I < N")
    if n > n_points:
        raise ConfigError(
            f"--shard {i}/{n}: the grid has {n_points} point(s); use at most {n_points} shards"
        )
    return i, n


def parse_shard(spec, environ=None) -> tuple[int, int]:
    """``"I/N"``, ``(I, N)`` or ``"auto"``: the rank of this SLURM array task,
    I = (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP of
    N = SLURM_ARRAY_TASK_COUNT. An array that cannot be ranked this way (no array, a step that does
    not divide the offset, a count that does not match min, max and step, e.g. ``--array=1,5,7``)
    is refused: give ``--shard I/N`` explicitly then."""
    if isinstance(spec, (tuple, list)):
        return int(spec[0]), int(spec[1])
    text = str(spec).strip()
    if text != "auto":
        m = _SPEC.match(text)
        if not m:
            raise ConfigError(f"--shard expects I/N (e.g. 0/4) or auto, got {spec!r}")
        return int(m.group(1)), int(m.group(2))
    env = os.environ if environ is None else environ
    names = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX")
    missing = [k for k in (*names, "SLURM_ARRAY_TASK_COUNT") if not env.get(k)]
    if missing:
        raise ConfigError(
            f"--shard auto: not in a SLURM job array ({', '.join(missing)} unset); give --shard I/N"
        )
    try:
        task, lo, hi = (int(env[k]) for k in names)
        step = int(env.get("SLURM_ARRAY_TASK_STEP") or 1)
        count = int(env["SLURM_ARRAY_TASK_COUNT"])
    except ValueError:
        raise ConfigError(
            "--shard auto: the SLURM_ARRAY_TASK_* variables are not integers"
        ) from None
    regular = step >= 1 and (hi - lo) % step == 0 and (hi - lo) // step + 1 == count
    if not regular or (task - lo) % step or not lo <= task <= hi:
        raise ConfigError(
            f"--shard auto: cannot rank task {task} of the array min={lo} max={hi} step={step} "
            f"count={count} (not an evenly spaced range); give --shard I/N"
        )
    return (task - lo) // step, count


def shard_dir(out, shard: tuple[int, int]) -> Path:
    """OUT/shards/I-of-N."""
    return Path(out) / SHARDS_DIR / f"{shard[0]}-of-{shard[1]}"


def shard_dirs(out) -> list[tuple[tuple[int, int], Path]]:
    """The shard folders under OUT/shards, as ((i, n), path), sorted."""
    root = Path(out) / SHARDS_DIR
    found = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        m = _DIR.match(path.name)
        if m and path.is_dir():
            found.append(((int(m.group(1)), int(m.group(2))), path))
    return sorted(found)


def shard_dataset(preset, cfg, grid, shard, recs: dict, point_ts: np.ndarray) -> xr.Dataset:
    """The Dataset of one shard: each record stacked over the shard's points, with their global
    indices and swept values, described (long_name, units, description) and labelled (attrs)."""
    index = shard_indices(len(grid.points()), shard)
    points = shard_points(grid, shard)
    data = {}
    for name, a in recs.items():
        dims = ("point", "save") + tuple(f"record_{name}_axis{k}" for k in range(a.ndim - 2))
        data[f"record_{name}"] = xr.Variable(
            dims,
            a,
            {
                "long_name": f"record {name} of {preset.name}",
                "units": "1",
                "description": f"{preset.name}'s record {name!r} at each point of this shard, as the "
                "preset computes it (meanfield merge builds the result's variables from it)",
            },
        )
    coords = {
        "point": xr.Variable(
            "point",
            index,
            {"long_name": "grid point", "units": "1", "description": "row-major index in the grid"},
        ),
        "save_time": xr.Variable(
            ("point", "save"),
            point_ts,
            {"long_name": "save time", "units": "1", "description": "the preset's save times"},
        ),
    }
    for k, key in enumerate(grid.keys):
        coords[f"grid_{key}"] = xr.Variable(
            "point",
            np.asarray([pt[k] for pt in points]),
            {"long_name": f"swept {key}", "units": "1", "description": f"the point's {key}"},
        )
    ds = xr.Dataset(data, coords=coords)
    ds.attrs.update(
        {
            "shard": f"{shard[0]}/{shard[1]}",
            "points": json.dumps([int(k) for k in index]),
            "grid_points": len(grid.points()),
            "meanfield_version": __version__,
        }
    )
    return ds


def shard_records(ds: xr.Dataset) -> tuple[np.ndarray, dict, np.ndarray]:
    """(global indices, {record name: array stacked over points}, save times (P, T)) of a shard."""
    recs = {
        str(v)[len("record_") :]: ds[v].values for v in ds.data_vars if str(v).startswith("record_")
    }
    return ds["point"].values, recs, ds["save_time"].values
