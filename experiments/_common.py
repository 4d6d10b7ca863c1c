"""Shared pieces of the particle presets: a base config, the simulate-in-chunks preset, plots."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

import meanfield as mf
from meanfield import observables as obs
from meanfield.particles import available_memory, memory_estimate
from meanfield.run import ConfigError, TracedPreset, RunConfig, grid_param
from meanfield.run.io import atomic_path, observable_vars


@dataclasses.dataclass(frozen=True)
class ToleranceConfig(RunConfig):
    """The adaptive solver's tolerances (every preset that calls ``meanfield.simulate``)."""

    rtol: float = 1e-7
    atol: float = 1e-9

    ranges = {"rtol": "(0, 1)", "atol": "(0, 1)"}


@dataclasses.dataclass(frozen=True)
class SolveConfig(ToleranceConfig):
    """Save times on [0, t1], tolerances and the cluster distance of the particle presets."""

    t1: float = 15.0
    """final time"""
    n_save: int = 61
    """saved times (linear in [0, t1])"""
    cluster_tol: float = 1e-2
    """tokens closer than this are one cluster"""

    ranges = {
        "chunks": "[1, n_save - 1]",
        "t1": "(0, 1e6]",
        "n_save": "[chunks + 1, 100000]",
        "cluster_tol": "(0, 2]",
    }


@dataclasses.dataclass(frozen=True)
class MaskConfig(RunConfig):
    """The mask keys of the particle presets ([`particle_mask`][meanfield_experiments._common.particle_mask])."""

    mask: str = "full"
    """full | causal | alibi | causal-alibi | window | causal-window (ALiBi slope: alibi; width: window)"""
    alibi: float = 0.05
    """ALiBi slope lambda (masks alibi, causal-alibi): score penalty lambda |i - j|"""
    window: int = 8
    """window width w (masks window, causal-window): keys with |i - j| < w"""

    ranges = {
        "mask": "{full, causal, alibi, causal-alibi, window, causal-window}",
        "alibi": "[0, 100]",
        "window": "[1, 2**20]",
    }


@dataclasses.dataclass(frozen=True)
class ParticleConfig(SolveConfig, MaskConfig):
    n: int = 64
    """number of tokens"""
    d: int = 3
    """token dimension (tokens on S^{d-1})"""
    beta: float = 1.0
    """inverse temperature"""
    chunks: int = 6
    """integration chunks (progress, checkpoints)"""

    ranges = {"n": "[2, 2**20]", "d": "[2, 4096]", "beta": "[0, 1000]"}

    def check(self):
        """The memory a solve of n tokens in d dimensions with n_save saves needs
        ([`meanfield.particles.memory_estimate`][meanfield.particles.memory_estimate]) against what the machine has."""
        check_memory(self.n, self.d, self.n_save)


def particle_mask(cfg) -> mf.AbstractMask:
    """The mask named by ``cfg.mask`` (a ParticleConfig key), with its slope ``cfg.alibi`` or width
    ``cfg.window``."""
    base = {"full": mf.Full(), "alibi": mf.ALiBi(cfg.alibi), "window": mf.Window(cfg.window)}
    name = cfg.mask.removeprefix("causal-")
    if cfg.mask == "causal":
        return mf.Causal()
    return mf.Causal() & base[name] if cfg.mask.startswith("causal-") else base[name]


def check_memory(n: int, d: int, n_save: int) -> None:
    """ConfigError when a float64 solve of n tokens in d dimensions, saving n_save states, needs more
    memory than is available ([`meanfield.particles.memory_estimate`][meanfield.particles.memory_estimate])."""
    need = memory_estimate(mf.Attention(1.0), n, d, n_save)["total"]
    avail = available_memory()
    if avail is not None and need > avail:
        raise ConfigError(
            f"n = {n}, d = {d}, n_save = {n_save} need about {need / 2**30:.3g} GB for the solve "
            f"but {avail / 2**30:.3g} GB is available: fewer tokens, dimensions or save times"
        )


def simulate_chunk(attn, x, ts, cfg, aux=None, prompt=None):
    """One chunk of sphere dynamics: (final state retracted onto the sphere, states at ts[1:]).

    The next chunk restarts exactly on the sphere (the solve drifts by ~ its tolerance)."""
    traj = mf.simulate(attn, x, ts, aux=aux, prompt=prompt, rtol=cfg.rtol, atol=cfg.atol)
    return mf.Sphere().retract(traj.xs[-1]), traj.xs[1:]


def circle_w1_to(theta, theta_ref):
    """Exact circle W1 from every cloud of angles in ``theta`` (..., N) to the angles ``theta_ref``."""
    theta = np.asarray(theta)
    flat = jnp.asarray(theta.reshape(-1, theta.shape[-1]))
    ref = jnp.asarray(theta_ref)
    return np.asarray(jax.vmap(lambda t: obs.circle_w1(t, ref))(flat)).reshape(theta.shape[:-1])


PARTICLE_OUTPUTS = frozenset(
    {
        "x",
        "energy",
        "diameter",
        "min_cosine",
        "mean_cosine",
        "n_clusters",
        "rank_collapse",
        "effective_rank",
    }
)
"""What the result of a preset that evolves a token cloud holds: the trajectory ``x`` and the
collapse observables (``observable_vars``); its tiny test run asserts them."""


class ParticlePreset(TracedPreset):
    """Tokens uniform on S^{d-1} (from ``seed``) evolved by ``simulate`` chunk by chunk."""

    vmap_keys = ("beta", "seed")

    def times(self, cfg):
        return np.linspace(0.0, cfg.t1, cfg.n_save)

    def attention(self, cfg, p):
        return mf.Attention(p["beta"], mask=particle_mask(cfg))

    def init(self, cfg, p):
        return mf.sphere_uniform(jax.random.key(p["seed"]), cfg.n, cfg.d)

    def advance(self, cfg, p, state, ts):
        final, xs = simulate_chunk(self.attention(cfg, p), state, ts, cfg)
        return final, {"x": xs}

    def dataset(self, cfg, ts, recs, grid):
        dims = grid.keys + ("time",)
        beta = grid_param(grid, cfg, "beta")[..., None]
        data = {"x": (dims + ("token", "dim"), recs["x"])}
        data.update(observable_vars(recs["x"], beta, dims, cfg.cluster_tol))
        coords = {"time": ts, **grid.coords()}
        return xr.Dataset(data, coords=coords)


def midpoints(n):
    """The N midpoints s_i = (i + 1/2)/N of [0, 1], shape (N,)."""
    return (np.arange(n) + 0.5) / n


def half_circle_prompts(n):
    """Midpoints s_i = (i + 1/2)/N and the points (cos pi s_i, sin pi s_i) on S^1, shapes (N,), (N, 2)."""
    s = midpoints(n)
    return s, np.stack([np.cos(np.pi * s), np.sin(np.pi * s)], -1)


def log_axis_ticks(ax, values, p):
    """Label a log x-axis at exactly ``values`` (no minor ticks)."""
    ax.set_xticks(values)
    ax.set_xticklabels([f"{v:g}" for v in values])
    ax.xaxis.set_minor_locator(p.NullLocator())


def first_point(ds):
    """The Dataset at the first point of every swept dimension (for single-run figures)."""
    grid = json.loads(ds.attrs.get("grid", "{}"))
    return ds.isel({k: 0 for k in grid}) if grid else ds


def plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def sphere_snapshots(fig, ds, fracs, row, ncols, nrows=2):
    """Scatter the cloud at fractions of the final time on sphere wireframes (3-D) or circles."""
    t, x = ds.time.values, ds.x.values
    picks = np.unique(np.searchsorted(t, np.asarray(fracs) * t[-1]).clip(0, len(t) - 1))
    u, v = np.mgrid[0 : 2 * np.pi : 40j, 0 : np.pi : 20j]
    for k, i in enumerate(picks):
        if x.shape[-1] >= 3:
            ax = fig.add_subplot(nrows, ncols, row * ncols + k + 1, projection="3d")
            ax.plot_wireframe(
                np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v), color="0.9", lw=0.3
            )
            ax.scatter(
                *x[i, :, :3].T, c=np.arange(x.shape[1]), cmap="viridis", s=14, depthshade=False
            )
            ax.set_box_aspect((1, 1, 1))
        else:
            ax = fig.add_subplot(nrows, ncols, row * ncols + k + 1)
            th = np.linspace(0, 2 * np.pi, 200)
            ax.plot(np.cos(th), np.sin(th), color="0.85", lw=0.8)
            ax.scatter(*x[i, :, :2].T, c=np.arange(x.shape[1]), cmap="viridis", s=14)
            ax.set_aspect("equal")
        ax.set_title(f"t = {t[i]:.3g}   clusters = {int(ds.n_clusters.values[i])}", fontsize=9)
        ax.set_axis_off()


def observable_panels(fig, ds, panels, row, ncols, nrows=2, logx=False):
    t = ds.time.values
    for k, (name, label, logy) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, row * ncols + k + 1)
        ax.plot(t, ds[name].values, lw=1.8)
        if logy:
            ax.set_yscale("log")
        if logx:
            ax.set_xscale("symlog", linthresh=max(t[1], 1e-3) if len(t) > 1 else 1.0)
        ax.set_xlabel("t (depth)")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)


def save_figure(fig, path, dpi=110) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix) and close it. The file appears whole or
    not at all: it is written beside the target and moved into place (a crash or Ctrl-C during
    the write leaves the previous figure, if any, untouched)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    plt().close(fig)
    return path


def sweep_figure(ds, outdir, names, logx=False) -> Path | None:
    """One line per sweep point for each observable in ``names``; None for a single run."""
    grid = json.loads(ds.attrs.get("grid", "{}"))
    if not grid:
        return None
    p = plt()
    stacked = ds.stack(point=list(grid))
    fig, axes = p.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        for i in range(stacked.sizes["point"]):
            pt = stacked.isel(point=i)
            lab = ", ".join(f"{k}={pt[k].item()}" for k in grid)
            ax.plot(ds.time.values, pt[name].values, lw=1.2, label=lab)
        ax.set_title(name)
        ax.set_xlabel("t")
        if logx:
            ax.set_xscale("symlog", linthresh=ds.time.values[1])
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path = Path(outdir) / "sweep.png"
    save_figure(fig, path, dpi=100)
    return path
