"""Outputs: xarray Datasets with named dims and the config in attrs; atomic writes."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import xarray as xr

from . import observables as obs


def trajectory_dataset(traj, *, beta, tol=1e-2, config=None, seed=None) -> xr.Dataset:
    """A Dataset of a trajectory: ``x`` (time, token, dim) and every collapse observable
    (time,), with ``config`` (a dataclass or dict), package version and seed in attrs."""
    from . import __version__

    xs = np.asarray(traj.xs)
    data = {"x": (("time", "token", "dim"), xs)}
    for name, val in obs.summary(traj.xs, beta, tol).items():
        data[name] = (("time",), np.asarray(val))
    cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config or {})
    attrs = {"config": json.dumps(cfg, sort_keys=True), "meanfield_version": __version__}
    if seed is not None:
        attrs["seed"] = int(seed)
    return xr.Dataset(data, coords={"time": np.asarray(traj.ts)}, attrs=attrs)


def observable_vars(x, beta, dims, tol=1e-2) -> dict:
    """Every collapse observable of the clouds ``x`` (..., N, d), as Dataset variables with
    ``dims`` (names of x's leading axes). ``beta`` (the energy's temperature) broadcasts
    against ``x.shape[:-2]``, so swept temperatures get their own energy."""
    import jax
    import jax.numpy as jnp

    x = jnp.asarray(x)
    lead = x.shape[:-2]
    flat = x.reshape((-1,) + x.shape[-2:])
    b = jnp.broadcast_to(jnp.asarray(beta, x.dtype), lead).reshape(-1)
    out = jax.jit(jax.vmap(lambda c, bb: obs.summary(c, bb, tol)))(flat, b)
    return {k: (tuple(dims), np.asarray(v).reshape(lead)) for k, v in out.items()}


def write_atomic(ds: xr.Dataset, path) -> Path:
    """Write ``ds`` to netCDF at ``path`` via a temporary file and an atomic rename, so a
    crash never leaves a half-written file where a finished one was expected."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        ds.to_netcdf(tmp, engine="h5netcdf")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
