r"""Device meshes and sharded evaluation: JAX's own multi-device machinery, no scheduler of ours.

One mesh with two named axes serves every solver:

* ``"data"``: independent runs (ensembles, sweep points, seeds) are split over it; a vmapped
  batch whose leading axis is placed on it (``shard_leading``) is partitioned by XLA, and
  ``jax.vmap(..., spmd_axis_name="data")`` lets sharded kernels inside the batch know it;
* ``"tokens"``: the tokens of one run are split over it. Under a mesh context
  (``with jax.set_mesh(mesh):``) every [`meanfield.Attention`][meanfield.kernel.Attention] whose ``shard_tokens`` is on
  (the default) evaluates its field with ``jax.shard_map``: each device holds N/P query rows,
  all-gathers the keys/values (positions, masses, features), and runs the dense or chunked
  kernel on its rows (the chunked kernel skips the key blocks a causal or window mask forbids).
  Nothing else changes: ``simulate``, ``layers``, influence profiles and the runner are the same
  code, and the result equals the single-device field up to floating-point reassociation.
  [`meanfield.pde.KineticMeanField`][meanfield.pde.KineticMeanField] splits its rows (the auxiliary variable z) over the
  same axis (the causal prefix in s crosses devices by one all-gather of block summaries).

``make_mesh(spec)`` builds the mesh from a spec string: ``"auto"`` (a sensible default for the
devices present, see [`make_mesh`][meanfield.sharding.make_mesh]), ``"none"``, ``"data"``, ``"tokens"``, ``"data,tokens"``
or explicit sizes ``"data=2,tokens=4"``. The library never enters a mesh context by itself; the
``meanfield`` command and user scripts do.

Multi-host: call ``jax.distributed.initialize()`` first (the ``meanfield`` command does so with
``--distributed`` or when ``JAX_COORDINATOR_ADDRESS`` is set); ``jax.devices()`` then lists the
devices of every process and the mesh spans them. [`to_host`][meanfield.sharding.to_host] gathers a sharded array to
every process as NumPy (so process 0 can write it), and a state saved that way is restored onto
any device count with ``shard_leading``.

Example (8 devices: 2 ensembles of runs x 4 token shards):

    mesh = mf.sharding.make_mesh("data=2,tokens=4")
    with jax.set_mesh(mesh):
        x0s = mf.sharding.shard_leading(x0s, mesh)                  # (B, N, d), B split over data
        run = jax.vmap(lambda x: mf.simulate(attn, x, ts).xs, spmd_axis_name="data")
        xs = jax.jit(run)(x0s)
"""

from __future__ import annotations

import contextlib
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ._arrays import pad_axis
from ._errors import require
from ._types import Array, Shaped

AXES = ("data", "tokens")
TOKENS_PER_DEVICE = 2048
"""``make_mesh("auto")`` splits a run's tokens over devices only when each device keeps at least
this many (below it, the all-gather costs more than the rows save)."""


def _parse(spec: str, n_dev: int, batch: int, n_tokens: int) -> tuple[int, int]:
    spec = spec.replace(" ", "")
    if spec in ("none", "single"):
        return 1, 1
    if spec == "data":
        return n_dev, 1
    if spec == "tokens":
        return 1, n_dev
    if spec in ("data,tokens", "tokens,data"):
        data = math.gcd(max(batch, 1), n_dev) if batch > 1 else max(1, n_dev // 2)
        return data, n_dev // data
    if spec == "auto":
        data = math.gcd(max(batch, 1), n_dev)
        rest = n_dev // data
        tokens = rest if n_tokens >= TOKENS_PER_DEVICE * rest else 1
        return data, tokens
    m = re.fullmatch(r"(data|tokens)=(\d+)(?:,(data|tokens)=(\d+))?", spec)
    if m is None:
        raise ValueError(
            f"mesh: unknown spec {spec!r}; expected auto, none, data, tokens, data,tokens or sizes like data=2,tokens=4"
        )
    sizes = {"data": 1, "tokens": 1}
    sizes[m.group(1)] = int(m.group(2))
    if m.group(3):
        require(m.group(3) != m.group(1), f"mesh: axis {m.group(1)!r} given twice in {spec!r}")
        sizes[m.group(3)] = int(m.group(4))
    return sizes["data"], sizes["tokens"]


def make_mesh(spec: str = "auto", *, batch: int = 1, n_tokens: int = 0, devices=None) -> Mesh:
    """A ("data", "tokens") mesh over ``devices`` (default: all of ``jax.devices()``).

    Args:
        spec: ``"auto"``: the batch over ``data`` (gcd(batch, devices) devices), the rest over
            ``tokens`` if each device keeps >= ``TOKENS_PER_DEVICE`` tokens, else left idle (one
            device per data shard: small runs gain nothing from splitting their tokens);
            ``"none"``: one device; ``"data"`` / ``"tokens"``: every device on that axis;
            ``"data,tokens"``: data = gcd(batch, devices), tokens = the rest;
            ``"data=2,tokens=4"``: explicit sizes (their product may be less than the devices).
        batch: number of independent runs to split (for ``auto`` / ``data,tokens``).
        n_tokens: tokens per run (for ``auto``).
    """
    devs = list(jax.devices() if devices is None else devices)
    data, tokens = _parse(str(spec), len(devs), int(batch), int(n_tokens))
    require(
        data >= 1 and tokens >= 1,
        f"mesh: axis sizes must be >= 1, got data={data}, tokens={tokens}",
    )
    require(
        data * tokens <= len(devs),
        f"mesh: {spec!r} needs data x tokens = {data * tokens} devices but {len(devs)} are present",
    )
    grid = np.asarray(devs[: data * tokens], dtype=object).reshape(data, tokens)
    return Mesh(grid, AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2)


def _axis_size(name: str) -> int:
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or name not in mesh.axis_names or name in mesh.manual_axes:
        return 1
    return int(mesh.shape[name])


def token_shards() -> int:
    """Size of the ``"tokens"`` axis of the mesh context (1 outside a mesh context)."""
    return _axis_size("tokens")


def data_shards() -> int:
    """Size of the ``"data"`` axis of the mesh context (1 outside a mesh context)."""
    return _axis_size("data")


def pad_rows(
    a: Shaped[Array, "n *rest"],  # noqa: F821 (jaxtyping dimensions, not names)
    size: int,
    value=None,
) -> Shaped[Array, "{size} *rest"]:  # noqa: F821
    """Pad the leading axis of ``a`` to ``size`` (repeating the last row, or with ``value``)."""
    return pad_axis(jnp.asarray(a), max(size, a.shape[0]), 0, "edge" if value is None else value)


def shard_leading(tree, mesh: Mesh, axis: str = "data"):
    """Place every array of ``tree`` on ``mesh`` with its leading axis split over ``axis``
    (the other axes replicated); the leading size must be a multiple of the axis size."""
    size = int(mesh.shape[axis])

    def put(a):
        a = jnp.asarray(a)
        require(
            a.ndim >= 1 and a.shape[0] % size == 0,
            f"shard_leading: leading axis of shape {a.shape} is not a multiple of the {axis!r} axis ({size})",
        )
        return jax.device_put(a, NamedSharding(mesh, P(axis)))

    return jax.tree.map(put, tree)


def to_host(tree):
    """Every array of ``tree`` as a NumPy array on this process, gathered from all devices (and
    from all processes in a multi-host run: ``multihost_utils.process_allgather``)."""

    def get(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(a, tiled=True))
        return np.asarray(a)

    return jax.tree.map(get, tree)


def is_writer() -> bool:
    """True on the process that writes outputs (process 0 of a multi-host run)."""
    return jax.process_index() == 0


ENSEMBLE_SCORES = 2**20
"""Attention scores that [`ensemble_vmap`][meanfield.sharding.ensemble_vmap] lets one vmapped chunk of runs hold (about
k N^2 <= 2^20, 4 MiB of float32: a chunk's score slabs stay in cache)."""


def ensemble_chunk(n_tokens: int, scores: int = ENSEMBLE_SCORES) -> int:
    """Runs per vmapped chunk for runs of ``n_tokens`` tokens: max(1, scores // n_tokens^2)."""
    require(int(n_tokens) >= 0, f"n_tokens must be >= 0, got {n_tokens}")
    return max(1, int(scores) // max(1, int(n_tokens)) ** 2)


def ensemble_vmap(
    fn, n_tokens: int, *, in_axes=0, spmd_axis_name=None, scores: int = ENSEMBLE_SCORES
):
    """``jax.vmap(fn, in_axes)`` for an ensemble of runs of ``n_tokens`` tokens each, evaluated
    in chunks of k = [`ensemble_chunk`][meanfield.sharding.ensemble_chunk] runs (``jax.lax.map(..., batch_size=k)``: a scan
    over chunks, each chunk vmapped).

    Why: a vmapped dense kernel evaluates the score slabs of every run at once, B N^2 numbers.
    Once that leaves the cache the ensemble runs memory-bound (measured on 2 CPU cores: B = 64
    runs of N = 512 took 2.8x the time per pair of one run with the same pairs; in chunks of 4,
    0.6x; ``benchmarks/bench_scale.py``). The result equals the plain vmap (the same per-run
    program). Arguments with ``in_axes`` None are closed over; the mapped ones share their
    leading size B. With ``spmd_axis_name`` (a batch split over a mesh axis) this is the plain
    vmap: each device then already holds only its share of the runs.
    """
    if spmd_axis_name is not None:
        return jax.vmap(fn, in_axes=in_axes, spmd_axis_name=spmd_axis_name)
    k = ensemble_chunk(n_tokens, scores)

    def call(*args):
        axes = in_axes if isinstance(in_axes, (tuple, list)) else (in_axes,) * len(args)
        require(
            len(axes) == len(args),
            f"ensemble_vmap: in_axes has {len(axes)} entries for {len(args)} arguments",
        )
        require(
            all(a in (0, None) for a in axes),
            f"ensemble_vmap: in_axes entries must be 0 or None, got {in_axes}",
        )
        mapped = tuple(a for a, ax in zip(args, axes) if ax == 0)
        sizes = {leaf.shape[0] for leaf in jax.tree.leaves(mapped)}
        require(
            len(sizes) == 1,
            f"ensemble_vmap: mapped arguments have different leading sizes {sorted(sizes)}",
        )
        if sizes.pop() <= k:
            return jax.vmap(fn, in_axes=in_axes)(*args)

        def one(m):
            it = iter(m)
            return fn(*(next(it) if ax == 0 else a for a, ax in zip(args, axes)))

        return jax.lax.map(one, mapped, batch_size=k)

    return call


class BatchPlacement:
    """How a batch of independent runs (a sweep group, an ensemble) is laid on a mesh.

    On a mesh with more than one device the batch is split over its ``"data"`` axis (padded to a
    multiple of it by repeating the last run; [`get`][meanfield.sharding.BatchPlacement.get] drops the copies) and the batch map is a
    ``jax.vmap`` with ``spmd_axis_name="data"``; on one device the batch map is
    [`ensemble_vmap`][meanfield.sharding.ensemble_vmap] (chunks of runs whose scores stay in cache). [`context`][meanfield.sharding.BatchPlacement.context] enters the
    mesh (``jax.set_mesh``) so that the kernels inside split their tokens over ``"tokens"``.

    Example:
        ```python
        place = BatchPlacement.make("auto", batch=16, n_tokens=512)
        with place.context():
            xs = place.get(jax.jit(place.vmap(run))(place.put(x0s, 16)), 16)
        ```
    """

    def __init__(self, mesh: Mesh | None, n_tokens: int = 0):
        self.mesh = mesh
        self.on = mesh is not None and mesh.size > 1
        self.data = int(mesh.shape["data"]) if self.on else 1
        self.n_tokens = int(n_tokens)

    @classmethod
    def make(cls, spec, batch: int, n_tokens: int) -> BatchPlacement:
        """From a [`make_mesh`][meanfield.sharding.make_mesh] spec string or a ``jax.sharding.Mesh``."""
        if isinstance(spec, Mesh):
            return cls(spec, n_tokens)
        return cls(make_mesh(spec, batch=batch, n_tokens=n_tokens), n_tokens)

    def context(self):
        """The mesh as a context manager (``jax.set_mesh``), or a null context without one."""
        return jax.set_mesh(self.mesh) if self.on else contextlib.nullcontext()

    def vmap(self, fn, **kw):
        """The batch map: split over the data axis on a mesh; on one device, in chunks of runs
        small enough that their attention scores stay in cache ([`ensemble_vmap`][meanfield.sharding.ensemble_vmap])."""
        return ensemble_vmap(fn, self.n_tokens, spmd_axis_name="data" if self.on else None, **kw)

    def put(self, tree, batch: int):
        """Pad the leading (batch) axis to a multiple of the data axis and split it over it."""
        size = -(-batch // self.data) * self.data
        tree = jax.tree.map(lambda a: pad_rows(jnp.asarray(a), size), tree)
        return shard_leading(tree, self.mesh) if self.on else tree

    @staticmethod
    def get(tree, batch: int):
        """The first ``batch`` runs of every array, as NumPy on this process."""
        return jax.tree.map(lambda a: a[:batch], to_host(tree))
