"""Presets and the chunked, checkpointed, vmap-batched executor behind ``meanfield run/sweep``.

A :class:`Preset` describes one experiment as pure JAX pieces:

* ``times(cfg)``: the save times (or depths), shape (T,);
* ``init(cfg, p)``: the initial state (a pytree), where ``p`` maps every key of ``vmap_keys``
  to a traced scalar (so sweeps over those keys are batched by ``jax.vmap``);
* ``advance(cfg, p, state, ts)``: integrate over one chunk of save times ``ts`` (its first
  entry is the chunk's start), returning the new state and a record with a leading time axis
  of length ``len(ts) - 1``; ``record(cfg, p, state)`` is the record of the initial state;
* ``dataset(cfg, ts, recs, grid)`` turns the stacked records into an ``xarray.Dataset``;
  ``plot(ds, outdir)`` writes PNGs.

The executor splits the save times into ``cfg.chunks`` chunks and runs them one after the other
(one jitted, vmapped call each), showing a progress bar, and every ``checkpoint_every`` chunks
writes the state and the records so far to ``DIR/checkpoint.npz`` atomically. A run killed at
any point and restarted with ``resume=True`` redoes exactly the same chunk calls from the saved
state, so its result is bit-for-bit the uninterrupted one.

Devices (``mesh``, see :mod:`meanfield.sharding`): the batch of a sweep group (its vmapped
points) is split over the mesh's ``"data"`` axis (padded to a multiple of it by repeating the
last point, whose copies are dropped), and the run executes inside ``jax.set_mesh(mesh)``, so
the attention kernels of the presets split their tokens over its ``"tokens"`` axis. Records and
checkpoints are gathered to the host (all processes of a multi-host run) and written by process
0 only; a checkpoint holds no device layout, so it resumes on any number of devices.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .config import ConfigError, coerce

PRESETS: dict[str, Preset] = {}


class RunError(RuntimeError):
    """A refused run (existing result, unfinished checkpoint, mismatched resume): exit status 3."""


class Preset:
    name: str = ""
    description: str = ""
    Config: type = None
    vmap_keys: tuple[str, ...] = ()

    def times(self, cfg) -> np.ndarray:
        raise NotImplementedError

    def init(self, cfg, p):
        raise NotImplementedError

    def advance(self, cfg, p, state, ts):
        raise NotImplementedError

    def record(self, cfg, p, state):
        """Record of the initial state; default: the state itself, as variable ``x``."""
        return {"x": state[None]}

    def dataset(self, cfg, ts, recs, grid):
        raise NotImplementedError

    def plot(self, ds, outdir) -> list[Path]:
        return []


def register(preset_cls):
    """Class decorator: instantiate and add to PRESETS under ``preset_cls.name``."""
    inst = preset_cls()
    PRESETS[inst.name] = inst
    return preset_cls


def load_presets() -> dict[str, Preset]:
    """Import the experiment modules (they register themselves) and return the registry."""
    import experiments  # noqa: F401  (imports every experiment module)

    return PRESETS


def get_preset(name: str) -> Preset:
    presets = load_presets()
    if name not in presets:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(sorted(presets))}")
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


def parse_grid(cfg, specs: list[str] | None) -> Grid:
    """``["beta=1,2,4", "seed=0,1"]`` -> Grid, values coerced to the config's field types."""
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
        keys.append(key)
        values.append(vals)
    return Grid(tuple(keys), tuple(values))


# ------------------------------------------------------------------------- execution
def _meta(preset, cfg, grid) -> str:
    from . import __version__

    return json.dumps(
        {"preset": preset.name, "config": dataclasses.asdict(cfg), "grid": [grid.keys, grid.values], "version": __version__},
        sort_keys=True,
        default=list,
    )


def _groups(preset, cfg, grid):
    """Split the grid into groups of equal static keys; vmapped keys vary inside a group."""
    static = [k for k in grid.keys if k not in preset.vmap_keys]
    batched = [k for k in grid.keys if k in preset.vmap_keys]
    index = {k: i for i, k in enumerate(grid.keys)}
    groups = {}
    for point in grid.points():
        skey = tuple(point[index[k]] for k in static)
        groups.setdefault(skey, []).append(point)
    out = []
    for skey, pts in groups.items():
        gcfg = dataclasses.replace(cfg, **dict(zip(static, skey)))
        params = {k: [getattr(gcfg, k)] * len(pts) for k in preset.vmap_keys}
        for k in batched:
            params[k] = [pt[index[k]] for pt in pts]
        out.append((gcfg, pts, {k: np.asarray(v) for k, v in params.items()}))
    return out


class Paused(Exception):
    """``max_chunks`` reached: the state is in DIR/checkpoint.npz; continue with ``resume=True``."""


def execute(preset: Preset, cfg, grid: Grid, outdir, *, resume=False, force=False, checkpoint_every=1, progress=True,
            mesh="auto", max_chunks=None):
    """Run (or sweep) ``preset`` and write DIR/result.nc and DIR/*.png; returns the Dataset.

    ``mesh``: a :func:`meanfield.sharding.make_mesh` spec (``"auto"``, ``"none"``, ``"data"``,
    ``"tokens"``, ``"data,tokens"``, ``"data=2,tokens=4"``) or a ``jax.sharding.Mesh``.
    ``max_chunks``: stop after that many chunk calls in this call, with the checkpoint written,
    raising :class:`Paused` (for time-limited job slots; finish later with ``resume=True``)."""
    outdir = Path(outdir)
    result, ckpt = outdir / "result.nc", outdir / "checkpoint.npz"
    if result.exists() and not force:
        raise RunError(f"{result} already exists; pass --force to overwrite it")
    if ckpt.exists() and not (resume or force):
        raise RunError(f"{outdir} holds an unfinished run ({ckpt.name}); pass --resume to continue it or --force to start over")
    if checkpoint_every < 1:
        raise ConfigError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    if max_chunks is not None and max_chunks < 1:
        raise ConfigError(f"max_chunks must be >= 1, got {max_chunks}")
    outdir.mkdir(parents=True, exist_ok=True)
    meta = _meta(preset, cfg, grid)
    groups = _groups(preset, cfg, grid)
    dev = _Devices.make(mesh, max(len(pts) for _, pts, _ in groups), int(getattr(cfg, "n", 0) or 0))
    saved = None
    if resume and ckpt.exists() and not force:
        saved = dict(np.load(ckpt, allow_pickle=False))
        if str(saved["meta"]) != meta:
            raise RunError(f"{ckpt} was written by a different preset/config/grid; refusing to resume (use --force)")

    shapes = {
        str(jax.eval_shape(jax.vmap(lambda q, gc=gcfg: preset.init(gc, q)), {k: jnp.asarray(v[:1]) for k, v in prm.items()}))
        for gcfg, _pts, prm in groups
    }
    if len(shapes) > 1:
        static = [k for k in grid.keys if k not in preset.vmap_keys]
        raise ConfigError(f"swept keys {static} change the shape of the state; sweep them in separate runs")
    with dev.context():
        return _execute(preset, cfg, grid, outdir, groups, saved, meta, dev, checkpoint_every, progress, max_chunks)


class _Devices:
    """The mesh of a run and how a group's batch is laid on it."""

    def __init__(self, mesh, n_tokens: int = 0):
        self.mesh = mesh
        self.on = mesh is not None and mesh.size > 1
        self.data = int(mesh.shape["data"]) if self.on else 1
        self.n_tokens = int(n_tokens)

    @classmethod
    def make(cls, spec, batch, n_tokens):
        from .sharding import make_mesh

        if isinstance(spec, jax.sharding.Mesh):
            return cls(spec, n_tokens)
        try:
            return cls(make_mesh(spec, batch=batch, n_tokens=n_tokens), n_tokens)
        except ValueError as err:
            raise ConfigError(str(err)) from None

    def context(self):
        return jax.set_mesh(self.mesh) if self.on else contextlib.nullcontext()

    def vmap(self, fn, **kw):
        """The batch map: split over the data axis on a mesh; on one device, in chunks of runs
        small enough that their attention scores stay in cache (``sharding.ensemble_vmap``)."""
        from .sharding import ensemble_vmap

        return ensemble_vmap(fn, self.n_tokens, spmd_axis_name="data" if self.on else None, **kw)

    def put(self, tree, batch):
        """Pad the leading (batch) axis to a multiple of the data axis and split it over it."""
        from .sharding import pad_rows, shard_leading

        size = -(-batch // self.data) * self.data
        tree = jax.tree.map(lambda a: pad_rows(jnp.asarray(a), size), tree)
        return shard_leading(tree, self.mesh) if self.on else tree

    @staticmethod
    def get(tree, batch):
        from .sharding import to_host

        return jax.tree.map(lambda a: a[:batch], to_host(tree))


def _execute(preset, cfg, grid, outdir, groups, saved, meta, dev, checkpoint_every, progress, max_chunks):
    from tqdm import tqdm

    from .io import save_npz_atomic, write_atomic
    from .sharding import is_writer

    result, ckpt = outdir / "result.nc", outdir / "checkpoint.npz"
    n_chunks = cfg.chunks

    done: list[dict] = []
    g0, c0 = (int(saved["pos"][0]), int(saved["pos"][1])) if saved is not None else (0, 0)
    for g in range(g0):
        names = [k[len(f"done{g}_") :] for k in saved if k.startswith(f"done{g}_")]
        done.append({n: saved[f"done{g}_{n}"] for n in names})

    bar = tqdm(total=len(groups) * n_chunks, initial=g0 * n_chunks + c0, desc=preset.name, unit="chunk",
               delay=2.0, file=sys.stderr, disable=not progress)
    group_ts = [np.asarray(preset.times(gc)) for gc, _, _ in groups]
    ts_all = group_ts[0]
    if any(len(t) != len(ts_all) for t in group_ts):
        raise ConfigError("swept keys may not change the number of saved times (n_save)")
    calls = 0
    for g in range(g0, len(groups)):
        gcfg, pts, params = groups[g]
        batch = len(pts)
        ts = group_ts[g]
        chunks = [c for c in np.array_split(np.arange(1, len(ts)), n_chunks) if len(c)]
        p = dev.put({k: jnp.asarray(v) for k, v in params.items()}, batch)
        init = jax.jit(dev.vmap(lambda q: preset.init(gcfg, q)))
        state_shape = jax.eval_shape(init, p)
        treedef = jax.tree.structure(state_shape)
        advance = jax.jit(dev.vmap(lambda q, s, t: preset.advance(gcfg, q, s, t), in_axes=(0, 0, None)))
        if saved is not None and g == g0 and c0 > 0:
            state = jax.tree.unflatten(treedef, [jnp.asarray(saved[f"state_{i}"]) for i in range(treedef.num_leaves)])
            state = dev.put(state, batch)
            names = [k[4:] for k in saved if k.startswith("cur_")]
            recs = {n: [saved[f"cur_{n}"]] for n in names}
            start = c0
        else:
            state = init(p)
            first = jax.jit(dev.vmap(lambda q, s: preset.record(gcfg, q, s)))(p, state)
            recs = {n: [a] for n, a in dev.get(first, batch).items()}
            start = 0
        for c in range(start, len(chunks)):
            idx = chunks[c]
            t_chunk = jnp.asarray(ts[np.concatenate([[idx[0] - 1], idx])])
            state, rec = advance(p, state, t_chunk)
            for n, a in dev.get(rec, batch).items():
                recs[n].append(a)
            bar.update(1)
            calls += 1
            last = c == len(chunks) - 1 and g == len(groups) - 1
            pause = max_chunks is not None and calls >= max_chunks and not last
            if ((c + 1) % checkpoint_every == 0 or pause) and not last:
                arrays = {"meta": np.asarray(meta), "pos": np.asarray([g, c + 1])}
                if c + 1 == len(chunks):  # group finished: store it as done, next group from scratch
                    arrays["pos"] = np.asarray([g + 1, 0])
                else:
                    host = dev.get(jax.tree.leaves(state), batch)
                    arrays.update({f"state_{i}": a for i, a in enumerate(host)})
                    arrays.update({f"cur_{n}": np.concatenate(v, axis=1) for n, v in recs.items()})
                for gg, dd in enumerate(done + ([{n: np.concatenate(v, axis=1) for n, v in recs.items()}] if c + 1 == len(chunks) else [])):
                    arrays.update({f"done{gg}_{n}": a for n, a in dd.items()})
                if is_writer():
                    save_npz_atomic(ckpt, arrays)
            if pause:
                bar.close()
                raise Paused(f"paused after {calls} chunk(s); {ckpt} holds the state: continue with --resume")
        done.append({n: np.concatenate(v, axis=1) for n, v in recs.items()})
    bar.close()

    # stack per-point records into the grid shape, in the user's grid order
    lookup = {}
    for g, (_gcfg, pts, _p) in enumerate(groups):
        for b, pt in enumerate(pts):
            lookup[pt] = (g, b)
    names = list(done[0])
    stacked = {}
    for n in names:
        arrs = [done[lookup[pt][0]][n][lookup[pt][1]] for pt in grid.points()]
        stacked[n] = np.stack(arrs).reshape(grid.shape + arrs[0].shape)
    ds = preset.dataset(cfg, ts_all, stacked, grid)
    if any(not np.array_equal(t, ts_all) for t in group_ts):
        # swept keys changed the save times (e.g. t1): keep the true times of every point
        t_pts = np.stack([group_ts[lookup[pt][0]] for pt in grid.points()]).reshape(grid.shape + ts_all.shape)
        ds["t"] = (grid.keys + ("time",), t_pts)
        ds = ds.assign_coords(time=np.arange(len(ts_all)))
        ds["time"].attrs["note"] = "save index; the times of each point are in variable t"
    from . import __version__

    ds.attrs.update({
        "preset": preset.name,
        "config": json.dumps(dataclasses.asdict(cfg), sort_keys=True),
        "grid": json.dumps(dict(zip(grid.keys, grid.values))),
        "meanfield_version": __version__,
        "seed": int(getattr(cfg, "seed", 0)),
        "chunks": n_chunks,
    })
    if is_writer():
        write_atomic(ds, result)
        preset.plot(ds, outdir)
        if ckpt.exists():
            ckpt.unlink()
    return ds


def grid_param(grid: Grid, cfg, key: str) -> np.ndarray:
    """The value of config ``key`` at every grid point, shape ``grid.shape``."""
    if key in grid.keys:
        i = grid.keys.index(key)
        vals = np.asarray(grid.values[i])
        shape = [1] * len(grid.keys)
        shape[i] = len(vals)
        return np.broadcast_to(vals.reshape(shape), grid.shape)
    return np.full(grid.shape, getattr(cfg, key))
