"""The chunked, checkpointed, vmap-batched executor behind ``meanfield run/sweep``.

The executor splits a preset's save times into ``cfg.chunks`` chunks and runs them one after
the other (one jitted, vmapped call each), showing a progress bar, and every
``checkpoint_every`` chunks writes the state and the records so far to ``DIR/checkpoint.npz``
atomically. A run killed at any point and restarted with ``resume=True`` redoes exactly the same
chunk calls from the saved state, so its result is bit-for-bit the uninterrupted one.

Devices (``mesh``, see [`meanfield.sharding`][meanfield.sharding]): the batch of a sweep group (its vmapped
points) is laid on the mesh by [`meanfield.sharding.BatchPlacement`][meanfield.sharding.BatchPlacement] (split over the
``"data"`` axis, padded by repeating the last point, whose copies are dropped), and the run
executes inside ``jax.set_mesh(mesh)``, so the attention kernels of the presets split their
tokens over its ``"tokens"`` axis. Records and checkpoints are gathered to the host (all
processes of a multi-host run) and written by process 0 only; a checkpoint holds no device
layout, so it resumes on any number of devices.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from tqdm import tqdm

from .. import __version__
from ..kernel import default_backend
from ..sharding import BatchPlacement, is_writer
from .config import ConfigError
from .checkpoint import Checkpoint, CheckpointError
from .folders import RUN_RECORD, folder_lock
from .folders import _make_outdir, _remove_if_empty
from .io import atomic_path, write_atomic
from .presets import Grid, Preset, StepPreset
from .shards import SHARD_FILE, check_shard, shard_dataset, shard_points
from .signals import Interrupted, safe_point, sigint_as_flag
from .signals import requested as interrupt_requested
from .variables import annotate


class RunError(RuntimeError):
    """A refused run (existing result, unfinished checkpoint, mismatched resume): exit status 3."""


def _meta(preset, cfg, grid, shard=None) -> str:
    meta = {
        "preset": preset.name,
        "config": dataclasses.asdict(cfg),
        "grid": [grid.keys, grid.values],
        "version": __version__,
    }
    if shard is not None:
        meta["shard"] = list(shard)
    return json.dumps(meta, sort_keys=True, default=list)


def _meta_diff(old: str, new: str) -> str:
    """The keys that differ between two run descriptions (checkpoint vs this call)."""
    try:
        a, b = json.loads(old), json.loads(new)
    except ValueError:
        return "unreadable metadata"
    parts = []
    for top in ("preset", "version", "grid", "shard"):
        if a.get(top) != b.get(top):
            parts.append(f"{top}: {a.get(top)!r} then, {b.get(top)!r} now")
    ca, cb = a.get("config", {}), b.get("config", {})
    for k in sorted(set(ca) | set(cb)):
        if ca.get(k) != cb.get(k):
            parts.append(f"{k} = {ca.get(k)!r} then, {cb.get(k)!r} now")
    return "; ".join(parts) or "same settings"


def _groups(preset, cfg, grid, points=None):
    """Split the grid (or its ``points``, the tuples of one shard) into groups of equal static
    keys; vmapped keys vary inside a group."""
    static = [k for k in grid.keys if k not in preset.vmap_keys]
    batched = [k for k in grid.keys if k in preset.vmap_keys]
    index = {k: i for i, k in enumerate(grid.keys)}
    groups = {}
    for point in grid.points() if points is None else points:
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


def execute(
    preset: Preset,
    cfg,
    grid: Grid,
    outdir,
    *,
    resume=False,
    force=False,
    checkpoint_every=1,
    progress=True,
    mesh="auto",
    max_chunks=None,
    invocation: dict | None = None,
    shard: tuple[int, int] | None = None,
):
    """Run (or sweep) ``preset`` and write DIR/result.nc and DIR/*.png; returns the Dataset.

    ``shard=(i, n)``: run only part i of n of the grid ([`meanfield.run.shards`][meanfield.run.shards]) and write
    its per-point records to DIR/shard.nc (no figures); ``meanfield merge`` combines the parts.

    ``mesh``: a [`meanfield.sharding.make_mesh`][meanfield.sharding.make_mesh] spec (``"auto"``, ``"none"``, ``"data"``,
    ``"tokens"``, ``"data,tokens"``, ``"data=2,tokens=4"``) or a ``jax.sharding.Mesh``.
    ``max_chunks``: stop after that many chunk calls in this call, with the checkpoint written,
    raising [`Paused`][meanfield.run.Paused] (for time-limited job slots; finish later with ``resume=True``).
    ``invocation``: what made this run (the CLI's overrides and grid), written with the resolved
    config to DIR/run.json once the run owns the folder, so ``--resume`` needs no retyping."""
    outdir = Path(outdir)
    if checkpoint_every < 1:
        raise ConfigError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    if max_chunks is not None and max_chunks < 1:
        raise ConfigError(f"max_chunks must be >= 1, got {max_chunks}")
    if shard is not None:
        if isinstance(preset, StepPreset) or not preset.sweepable:
            raise ConfigError(
                f"{preset.name} runs one configuration per run (host steps): --shard applies to "
                "sweepable presets"
            )
        shard = check_shard(shard, len(grid.points()))
    check_run(preset, cfg, grid)
    created = _make_outdir(outdir)
    try:
        # the existence checks and the run under one lock (one writer per folder); Ctrl-C stops at safe points
        with folder_lock(outdir), sigint_as_flag():
            return _locked_execute(
                preset,
                cfg,
                grid,
                outdir,
                resume,
                force,
                checkpoint_every,
                progress,
                mesh,
                max_chunks,
                invocation,
                shard,
            )
    except BaseException as err:
        if created:
            _remove_if_empty(outdir, keep_record=isinstance(err, KeyboardInterrupt))
        raise


def _locked_execute(
    preset,
    cfg,
    grid,
    outdir,
    resume,
    force,
    checkpoint_every,
    progress,
    mesh,
    max_chunks,
    invocation,
    shard,
):
    result = outdir / ("result.nc" if shard is None else SHARD_FILE)
    ckpt = Checkpoint(outdir, _meta(preset, cfg, grid, shard))
    points = None if shard is None else shard_points(grid, shard)
    if shard is not None and resume and not force and not ckpt.exists():
        # a requeued or retried job: a finished shard stands, a fresh one starts
        if result.exists():
            return _finished_shard(result, preset, cfg, grid, shard, progress)
        if progress and is_writer():
            print(
                f"meanfield: nothing checkpointed in {outdir}; running the shard from the start",
                file=sys.stderr,
                flush=True,
            )
        resume = False
    if resume and not force and not ckpt.exists():
        if result.exists():
            raise RunError(
                f"nothing to resume in {outdir}: {result.name} is complete (--force reruns it)"
            )
        if not (outdir / RUN_RECORD).exists():
            raise RunError(f"nothing to resume in {outdir}: no checkpoint and no run record")
        if progress and is_writer():
            print(
                f"meanfield: nothing was checkpointed in {outdir}; running the recorded configuration "
                f"({RUN_RECORD}) from the start",
                file=sys.stderr,
                flush=True,
            )
    if result.exists() and not force:
        raise RunError(f"{result} already exists; pass --force to overwrite it")
    if ckpt.exists() and not (resume or force):
        raise RunError(
            f"{outdir} holds an unfinished run ({ckpt.path.name}); pass --resume to continue it or --force to start over"
        )
    if (
        force and is_writer()
    ):  # --force replaces the earlier run here: its figures go with its result
        for png in outdir.glob("*.png"):
            png.unlink()
    if is_writer() and not (
        resume and ckpt.exists()
    ):  # a resumed run keeps the record of the run it continues
        _write_run_record(preset, cfg, grid, outdir, dict(invocation or {}, shard=shard))
    stepped = isinstance(preset, StepPreset)
    groups = [] if stepped else _groups(preset, cfg, grid, points)
    try:
        dev = BatchPlacement.make(
            mesh, max([len(pts) for _, pts, _ in groups] or [1]), int(getattr(cfg, "n", 0) or 0)
        )
    except ValueError as err:
        raise ConfigError(str(err)) from None
    saved = None
    if resume and ckpt.exists() and not force:
        try:
            saved = ckpt.load(len(groups), _meta_diff)
        except CheckpointError as err:
            raise RunError(str(err)) from None
    if not stepped:
        _check_state_shapes(preset, grid, groups)
    with dev.context():
        if stepped:
            ds = _run_steps(preset, cfg, saved, ckpt, progress, checkpoint_every, max_chunks)
        else:
            recs, point_ts = _run_traced(
                preset,
                cfg,
                groups,
                points or grid.points(),
                saved,
                ckpt,
                dev,
                checkpoint_every,
                progress,
                max_chunks,
            )
            if shard is not None:
                ds = shard_dataset(preset, cfg, grid, shard, recs, point_ts)
                return _finish(preset, cfg, grid, ds, outdir, ckpt, result=result, figures=False)
            ds = grid_dataset(preset, cfg, grid, recs, point_ts)
        return _finish(preset, cfg, grid, ds, outdir, ckpt)


def _finished_shard(path, preset, cfg, grid, shard, progress):
    """``--resume`` on a finished shard: its Dataset, if it is this shard of this run."""
    ds = xr.load_dataset(path)
    labels = _labels(preset, cfg, grid)
    want = {k: labels[k] for k in ("preset", "config", "grid")} | {
        "shard": f"{shard[0]}/{shard[1]}"
    }
    wrong = [k for k, v in want.items() if ds.attrs.get(k) != v]
    if wrong:
        raise RunError(
            f"{path} is a shard of another run (its {', '.join(wrong)} differ); --force reruns it"
        )
    if progress and is_writer():
        print(f"meanfield: {path} is complete; nothing to resume", file=sys.stderr, flush=True)
    return ds


def _write_run_record(preset, cfg, grid, outdir, invocation) -> None:
    n = int(getattr(cfg, "n", 0) or 0)
    record = {
        "preset": preset.name,
        "config": dataclasses.asdict(cfg),
        "grid": dict(zip(grid.keys, grid.values)),
        "platform": jax.default_backend(),
        # what Attention(backend=None) resolves to here (meanfield.kernel.backends.DEFAULT_BACKENDS)
        "default_backend": repr(default_backend(n))
        if n
        else f"by N (meanfield.kernel.default_backend on {jax.default_backend()})",
        **(invocation or {}),
    }
    with atomic_path(outdir / RUN_RECORD) as tmp:
        Path(tmp).write_text(json.dumps(record, indent=1, sort_keys=True, default=list) + "\n")


def _check_state_shapes(preset, grid, groups) -> None:
    """Swept static keys may not change the shape of the state (one stacked result)."""
    shapes = {
        str(
            jax.eval_shape(
                jax.vmap(lambda q, gc=gcfg: preset.init(gc, q)),
                {k: jnp.asarray(v[:1]) for k, v in prm.items()},
            )
        )
        for gcfg, _pts, prm in groups
    }
    if len(shapes) > 1:
        static = [k for k in grid.keys if k not in preset.vmap_keys]
        raise ConfigError(
            f"swept keys {static} change the shape of the state; sweep them in separate runs"
        )


def _stop_or_pause(bar, stop: bool, pause: bool, what: str, held: str, ckpt: Checkpoint) -> None:
    """Ctrl-C (``stop``) or ``max_chunks`` reached (``pause``), after the checkpoint was written."""
    if stop or pause:
        bar.close()
        verb, exc = ("interrupted", Interrupted) if stop else ("paused", Paused)
        raise exc(f"{verb} after {what}; {ckpt.path} holds {held}: continue with --resume")


def _run_steps(preset, cfg, saved, ckpt, progress, checkpoint_every, max_chunks):
    """The preset's steps with a progress bar; after each (every ``checkpoint_every``), the finished
    steps' arrays go to the checkpoint, so a killed run resumes at the next step."""
    steps = list(preset.steps(cfg))
    names = [st.name for st in steps]
    if len(set(names)) != len(names):
        raise ConfigError(f"{preset.name}: step names must be distinct, got {names}")
    results: dict[str, dict] = dict(saved.steps) if saved is not None else {}
    bar = tqdm(
        total=len(steps),
        initial=len(results),
        desc=f"{preset.name} (host steps)",
        unit="step",
        delay=PROGRESS_DELAY,
        file=sys.stderr,
        disable=not progress,
    )
    count = 0
    for step in steps:
        if step.name in results:
            continue
        results[step.name] = {
            k: np.asarray(v) for k, v in preset.run_step(cfg, step, results).items()
        }
        bar.update(1)
        count += 1
        safe_point("step")
        last = len(results) == len(steps)
        stop = interrupt_requested()
        pause = max_chunks is not None and count >= max_chunks and not last
        if ((count % checkpoint_every == 0 or pause) and not last) or stop:
            ckpt.save_steps(results)
        _stop_or_pause(bar, stop, pause, f"{count} host step(s)", "them", ckpt)
    bar.close()
    _post_processing(preset, progress)
    return preset.step_dataset(cfg, results)


def _post_processing(preset, progress) -> None:
    if progress and is_writer():
        print(f"{preset.name}: post-processing (dataset, figures) ...", file=sys.stderr, flush=True)


PROGRESS_DELAY = 2.0  # seconds before a bar shows (runs shorter than this print no bar)


def _restart_clock(bar) -> None:
    """Keep the first call (compilation) out of the bar's rate and ETA: its clock restarts now.

    tqdm's ``close`` draws the final state (100 %, then a newline) only if the bar was drawn after
    ``start_t + delay``. Moving ``start_t`` alone would skip that last refresh and leave the line at
    the first chunk, so the display delay, already served, drops to 0 and a bar already shown counts
    as drawn at the new start."""
    shown = bar.last_print_t >= bar.start_t + bar.delay
    bar.start_t, bar.initial, bar.delay = bar._time(), bar.n, 0.0
    if shown:
        bar.last_print_t = bar.start_t


def check_run(preset: Preset, cfg, grid: Grid) -> None:
    """The checks every preset shares, before any compute: a sweep grid only where the preset
    takes one, and ``chunks`` between 1 and the number of save intervals."""
    if grid.keys and not preset.sweepable:
        raise ConfigError(f"{preset.name} does not take a sweep grid (set its keys with --set)")
    intervals = len(preset.times(cfg)) - 1
    if not 1 <= cfg.chunks <= intervals:
        raise ConfigError(
            f"chunks must be in [1, {intervals}] for {preset.name} ({intervals} save intervals), got {cfg.chunks}"
        )


def _run_traced(
    preset, cfg, groups, points, saved, ckpt, dev, checkpoint_every, progress, max_chunks
):
    """The chunk calls of every group (module docstring): each record stacked over ``points`` (in
    their order; leading axis), and the save times of each point (P, T)."""
    n_chunks = cfg.chunks
    done: list[dict] = list(saved.done) if saved is not None else []
    g0, c0 = (saved.group, saved.chunk) if saved is not None else (0, 0)
    bar = tqdm(
        total=len(groups) * n_chunks,
        initial=g0 * n_chunks + c0,
        desc=preset.name,
        unit="chunk",
        delay=PROGRESS_DELAY,
        file=sys.stderr,
        disable=not progress,
    )
    group_ts = [np.asarray(preset.times(gc)) for gc, _, _ in groups]
    if any(len(t) != len(group_ts[0]) for t in group_ts):
        raise ConfigError("swept keys may not change the number of saved times (n_save)")
    calls = 0
    for g in range(g0, len(groups)):
        gcfg, pts, params = groups[g]
        batch, ts = len(pts), group_ts[g]
        chunks = [c for c in np.array_split(np.arange(1, len(ts)), n_chunks) if len(c)]
        p = dev.put({k: jnp.asarray(v) for k, v in params.items()}, batch)
        init = jax.jit(dev.vmap(lambda q: preset.init(gcfg, q)))
        treedef = jax.tree.structure(jax.eval_shape(init, p))
        advance = jax.jit(
            dev.vmap(lambda q, s, t: preset.advance(gcfg, q, s, t), in_axes=(0, 0, None))
        )
        if saved is not None and g == g0 and c0 > 0:
            state = dev.put(
                jax.tree.unflatten(treedef, [jnp.asarray(a) for a in saved.state]), batch
            )
            recs, start = {n: [a] for n, a in saved.current.items()}, c0
        else:
            state = init(p)
            first = jax.jit(dev.vmap(lambda q, s: preset.record(gcfg, q, s)))(p, state)
            recs, start = {n: [a] for n, a in dev.get(first, batch).items()}, 0
        for c in range(start, len(chunks)):
            idx = chunks[c]
            t_call = time.perf_counter()
            state, rec = advance(p, state, jnp.asarray(ts[np.concatenate([[idx[0] - 1], idx])]))
            for n, a in dev.get(rec, batch).items():
                recs[n].append(a)
            bar.update(1)
            if (
                calls == 0 and progress
            ):  # the first call includes compilation: keep it out of the ETA
                bar.set_postfix_str(
                    f"first chunk incl. compile {time.perf_counter() - t_call:.1f} s", refresh=False
                )
                _restart_clock(bar)
            calls += 1
            safe_point("chunk")
            last = c == len(chunks) - 1 and g == len(groups) - 1
            stop = (
                interrupt_requested()
            )  # Ctrl-C: checkpoint this chunk, then stop (signals module)
            pause = max_chunks is not None and calls >= max_chunks and not last
            if (((c + 1) % checkpoint_every == 0 or pause) and not last) or stop:
                current = {n: np.concatenate(v, axis=1) for n, v in recs.items()}
                if c + 1 == len(
                    chunks
                ):  # group finished: stored as done, the next group starts from scratch
                    ckpt.save_traced(g + 1, 0, done + [current])
                else:
                    ckpt.save_traced(
                        g, c + 1, done, dev.get(jax.tree.leaves(state), batch), current
                    )
            _stop_or_pause(bar, stop, pause, f"{calls} chunk(s)", "the state", ckpt)
        done.append({n: np.concatenate(v, axis=1) for n, v in recs.items()})
    bar.close()
    _post_processing(preset, progress)
    lookup = {pt: (g, b) for g, (_gcfg, pts, _p) in enumerate(groups) for b, pt in enumerate(pts)}
    recs = {n: np.stack([done[lookup[pt][0]][n][lookup[pt][1]] for pt in points]) for n in done[0]}
    return recs, np.stack([group_ts[lookup[pt][0]] for pt in points])


def grid_dataset(preset, cfg, grid, recs, point_ts):
    """The preset's Dataset of a whole grid from each record stacked over ``grid.points()`` (the
    unsharded sweep and ``meanfield merge`` both end here, so their results are the same)."""
    stacked = {n: a.reshape(grid.shape + a.shape[1:]) for n, a in recs.items()}
    ts_all = point_ts[0]
    ds = preset.dataset(cfg, ts_all, stacked, grid)
    if any(not np.array_equal(t, ts_all) for t in point_ts):
        # swept keys changed the save times (e.g. t1): keep the true times of every point
        ds["t"] = (grid.keys + ("time",), point_ts.reshape(grid.shape + ts_all.shape))
        ds = ds.assign_coords(time=np.arange(len(ts_all)))
        ds["time"].attrs["note"] = "save index; the times of each point are in variable t"
    return ds


def _labels(preset, cfg, grid) -> dict:
    """The attrs that say which run made a result (or a shard): preset, config, grid, version."""
    return {
        "preset": preset.name,
        "config": json.dumps(dataclasses.asdict(cfg), sort_keys=True),
        "grid": json.dumps(dict(zip(grid.keys, grid.values))),
        "meanfield_version": __version__,
        "seed": int(getattr(cfg, "seed", 0)),
        "chunks": cfg.chunks,
    }


def _finish(preset, cfg, grid, ds, outdir, ckpt, result=None, figures=True):
    """Describe the Dataset, write DIR/result.nc, drop the checkpoint, draw the figures."""
    result = outdir / "result.nc" if result is None else result
    if figures:
        annotate(ds, preset.variables, cfg)
    ds.attrs.update(_labels(preset, cfg, grid))
    if is_writer():
        write_atomic(ds, result)
        if ckpt is not None:
            ckpt.remove()  # the result is complete: the checkpoint must not block a rerun
        if not figures:
            return ds
        try:
            preset.plot(ds, outdir)
        except OSError as err:  # e.g. a full disk: the result stands, the figures can be redrawn
            raise RunError(
                f"{result} is written, but drawing the figures failed ({err.strerror or err}); "
                f"redraw them with: meanfield plot {outdir}"
            ) from None
    if interrupt_requested():  # Ctrl-C while the outputs were written: they are complete, say so
        raise Interrupted(
            f"interrupted at the end; {result} is complete (redraw the figures with: meanfield plot {outdir})"
        )
    return ds
