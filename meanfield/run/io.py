"""Outputs: xarray Datasets with named dims and the config in attrs; atomic writes."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from .. import observables as obs


def observable_vars(x, beta, dims, tol=1e-2) -> dict:
    """Every collapse observable of the clouds ``x`` (..., N, d), as Dataset variables with
    ``dims`` (names of x's leading axes). ``beta`` (the energy's temperature) broadcasts
    against ``x.shape[:-2]``, so swept temperatures get their own energy."""
    x = jnp.asarray(x)
    lead = x.shape[:-2]
    flat = x.reshape((-1,) + x.shape[-2:])
    b = jnp.broadcast_to(jnp.asarray(beta, x.dtype), lead).reshape(-1)
    out = jax.jit(jax.vmap(lambda c, bb: obs.summary(c, bb, tol)))(flat, b)
    return {k: (tuple(dims), np.asarray(v).reshape(lead)) for k, v in out.items()}


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at start-up (os.umask can only be read by setting it)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path`` in one
    step (os.replace), on any error it is removed. A crash never leaves a half-written file
    where a finished one was expected, and never destroys the previous version."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    except (
        OSError
    ) as err:  # a full disk, a read-only folder: name the file that could not be written
        raise OSError(err.errno, err.strerror, str(path)) from None
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs follow the umask like any file
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.remove(tmp)
        if (
            isinstance(err, OSError)
            and not isinstance(err, (FileNotFoundError, PermissionError))
            and err.errno
        ):
            raise OSError(err.errno, err.strerror, str(path)) from None
        raise


def write_atomic(ds: xr.Dataset, path) -> Path:
    """Write ``ds`` to netCDF (h5netcdf) at ``path`` atomically."""
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="h5netcdf")
    return Path(path)


def save_npz_atomic(path, arrays: dict) -> Path:
    """``np.savez`` to ``path`` atomically (fsynced before the rename)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    return Path(path)
