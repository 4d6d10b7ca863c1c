"""Clustering of self-attention dynamics on the sphere (Geshkovski et al. 2023).

N tokens uniform on S^2 evolve by dx_i/dt = P_{x_i} SA(x)_i with Q = K = V = I; for d >= 3
they collapse to a single point, and the diameter then decays like e^{-t}. The figure shows
the cloud on the sphere at four times and energy, diameter, cluster count and rank-collapse
residual against time.

    python -m experiments.clustering [--out out/clustering] [--beta 1.0] [--n 64] [--t1 15]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import meanfield as mf
from meanfield.io import trajectory_dataset, write_atomic


@dataclasses.dataclass(frozen=True)
class Config:
    n: int = 64
    """number of tokens"""
    d: int = 3
    """dimension (tokens on S^{d-1})"""
    beta: float = 1.0
    """inverse temperature"""
    mask: str = "full"
    """'full' or 'causal'"""
    t1: float = 15.0
    """final time"""
    n_save: int = 61
    """number of saved times"""
    seed: int = 0
    rtol: float = 1e-7
    atol: float = 1e-9
    cluster_tol: float = 1e-2
    """tokens closer than this are one cluster"""


def run(cfg: Config = Config()):
    """Simulate and return an xarray Dataset (time, token, dim) with the observables."""
    if cfg.mask not in ("full", "causal"):
        raise ValueError(f"mask must be 'full' or 'causal', got {cfg.mask!r}")
    mask = mf.Causal() if cfg.mask == "causal" else mf.Full()
    x0 = mf.sphere_uniform(jax.random.key(cfg.seed), cfg.n, cfg.d)
    ts = jnp.linspace(0.0, cfg.t1, cfg.n_save)
    traj = mf.simulate(mf.Attention(cfg.beta, mask=mask), x0, ts, rtol=cfg.rtol, atol=cfg.atol)
    return trajectory_dataset(traj, beta=cfg.beta, tol=cfg.cluster_tol, config=cfg, seed=cfg.seed)


def plot(ds, outdir) -> Path:
    """Sphere snapshots and observables vs time; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir = Path(outdir)
    t = ds.time.values
    x = ds.x.values
    fig = plt.figure(figsize=(13, 6.2))
    picks = np.unique(np.searchsorted(t, np.array([0.0, 0.3, 0.42, 1.0]) * t[-1]).clip(0, len(t) - 1))
    u, v = np.mgrid[0 : 2 * np.pi : 40j, 0 : np.pi : 20j]
    for k, i in enumerate(picks):
        ax = fig.add_subplot(2, 4, k + 1, projection="3d")
        ax.plot_wireframe(np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v), color="0.9", lw=0.3)
        pts = x[i, :, :3] if x.shape[-1] >= 3 else np.pad(x[i], ((0, 0), (0, 3 - x.shape[-1])))
        ax.scatter(*pts.T, c=np.arange(len(pts)), cmap="viridis", s=14, depthshade=False)
        ax.set_title(f"t = {t[i]:.1f}   clusters = {int(ds.n_clusters.values[i])}", fontsize=9)
        ax.set_axis_off()
        ax.set_box_aspect((1, 1, 1))
    panels = [
        ("energy", "energy $E_\\beta$", False),
        ("diameter", "diameter (log)", True),
        ("n_clusters", "clusters at tol", False),
        ("rank_collapse", "$\\|X - 1\\bar x^T\\| / \\|X\\|$ (log)", True),
    ]
    for k, (name, label, logy) in enumerate(panels):
        ax = fig.add_subplot(2, 4, 5 + k)
        ax.plot(t, ds[name].values, lw=1.8)
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("t (depth)")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    import json

    cfg = json.loads(ds.attrs["config"])
    fig.suptitle(
        f"SA dynamics on $S^{{{cfg['d'] - 1}}}$: N = {cfg['n']}, $\\beta$ = {cfg['beta']}, mask = {cfg['mask']}",
        fontsize=11,
    )
    fig.tight_layout()
    outdir.mkdir(parents=True, exist_ok=True)
    path = outdir / "clustering.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    jax.config.update("jax_enable_x64", True)  # entry point: reference precision
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out/clustering", help="output directory")
    defaults = Config()
    for f in dataclasses.fields(Config):
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(defaults, f.name)), default=getattr(defaults, f.name))
    args = ap.parse_args(argv)
    cfg = Config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Config)})
    t0 = time.perf_counter()
    ds = run(cfg)
    out = Path(args.out)
    nc = write_atomic(ds, out / "result.nc")
    png = plot(ds, out)
    print(
        f"clustering: N={cfg.n} d={cfg.d} beta={cfg.beta} mask={cfg.mask}: diameter "
        f"{float(ds.diameter[0]):.3f} -> {float(ds.diameter[-1]):.2e}, clusters "
        f"{int(ds.n_clusters[0])} -> {int(ds.n_clusters[-1])} ({time.perf_counter() - t0:.1f} s)"
    )
    print(f"wrote {nc} and {png}")


if __name__ == "__main__":
    main()
