"""Phase diagram of clustering for random Q, K, V: cluster count over beta x time.

For every beta in ``betas`` and every seed in 0..n_seeds-1, draw Q, K, V = I + sigma G / sqrt(d)
(G standard Gaussian, per seed) and a uniform start on S^{d-1}, and run the SA dynamics. All
beta x seed runs advance together in one vmapped solve per chunk. The heatmap shows the cluster
count (mean over seeds) against beta and time; small beta collapses quickly to one cluster,
large beta lingers in many (metastable) clusters.

    meanfield run phase-diagram [--set betas=0.5,1,2,4,8,16,32 --set n_seeds=8]
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

import meanfield as mf
from meanfield.run.io import observable_vars
from meanfield.run import TracedPreset, RunConfig, register

from ._common import PARTICLE_OUTPUTS, first_point, plt, save_figure, simulate_chunk


@dataclasses.dataclass(frozen=True)
class Config(RunConfig):
    n: int = 32
    """tokens"""
    d: int = 3
    betas: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
    """inverse temperatures (heatmap rows)"""
    n_seeds: int = 4
    """random (Q, K, V, start) draws per beta"""
    sigma: float = 0.5
    """size of the random perturbation of Q, K, V around I"""
    t1: float = 30.0
    n_save: int = 31
    chunks: int = 3
    rtol: float = 1e-6
    atol: float = 1e-8
    cluster_tol: float = 0.05

    ranges = {
        "chunks": "[1, n_save - 1]",
        "n": "[2, 65536]",
        "d": "[2, 4096]",
        "betas": "[0, 1000], distinct",
        "n_seeds": "[1, 1024]",
        "sigma": "[0, 100]",
        "t1": "(0, 1e6]",
        "n_save": "[chunks + 1, 100000]",
        "rtol": "(0, 1)",
        "atol": "(0, 1)",
        "cluster_tol": "(0, 2]",
    }


def _attention(cfg, beta, s):
    kq, kk, kv = jax.random.split(jax.random.key(1_000_003 + s), 3)
    eye = jnp.eye(cfg.d)
    mats = [
        eye + cfg.sigma * jax.random.normal(k, (cfg.d, cfg.d)) / np.sqrt(cfg.d)
        for k in (kq, kk, kv)
    ]
    return mf.Attention(beta, Q=mats[0], K=mats[1], V=mats[2])


@register
class PhaseDiagram(TracedPreset):
    name = "phase-diagram"
    tiny = ("n=6", "betas=1,8", "n_seeds=2", "t1=2", "n_save=5", "chunks=2")
    slow = True
    outputs = PARTICLE_OUTPUTS
    description = (
        "cluster count over beta x time for random Q, K, V (batched over seeds and beta): heatmap"
    )
    Config = Config
    vmap_keys = ("seed",)

    def _grid(self, cfg, p):
        betas = jnp.asarray(cfg.betas)
        seeds = p["seed"] + jnp.arange(cfg.n_seeds)
        return jnp.meshgrid(betas, seeds, indexing="ij")  # (nb, ns) each

    def times(self, cfg):
        return np.linspace(0.0, cfg.t1, cfg.n_save)

    def init(self, cfg, p):
        _, seeds = self._grid(cfg, p)
        return jax.vmap(jax.vmap(lambda s: mf.sphere_uniform(jax.random.key(s), cfg.n, cfg.d)))(
            seeds
        )

    def advance(self, cfg, p, state, ts):
        betas, seeds = self._grid(cfg, p)

        def one(b, s, x):
            return simulate_chunk(_attention(cfg, b, s), x, ts, cfg)

        xf, xs = jax.vmap(jax.vmap(one))(betas, seeds, state)
        return xf, {"x": jnp.moveaxis(xs, 2, 0)}  # time first

    def dataset(self, cfg, ts, recs, grid):
        x = np.moveaxis(
            recs["x"], len(grid.keys), len(grid.keys) + 2
        )  # (*grid, beta, seed, time, N, d)
        dims = grid.keys + ("beta", "seed_index", "time")
        beta = np.asarray(cfg.betas)[:, None, None]
        data = {"x": (dims + ("token", "dim"), x)}
        data.update(observable_vars(x, beta, dims, cfg.cluster_tol))
        coords = {"time": ts, "beta": list(cfg.betas), "seed_index": np.arange(cfg.n_seeds)}
        coords.update(grid.coords())
        return xr.Dataset(data, coords=coords)

    def plot(self, ds, outdir):
        one = first_point(ds)
        p = plt()
        fig, axes = p.subplots(1, 3, figsize=(15, 4.4))
        mean_nc = one.n_clusters.mean("seed_index")
        im = axes[0].pcolormesh(
            one.time.values,
            np.arange(one.sizes["beta"]),
            mean_nc.values,
            shading="nearest",
            cmap="viridis",
            norm=p.matplotlib.colors.LogNorm(vmin=1, vmax=max(2, float(mean_nc.max()))),
        )
        axes[0].set_yticks(np.arange(one.sizes["beta"]), [f"{b:g}" for b in one.beta.values])
        axes[0].set_xlabel("t")
        axes[0].set_ylabel("$\\beta$")
        axes[0].set_title("clusters (mean over seeds, log colour)")
        fig.colorbar(im, ax=axes[0])
        cmap = p.get_cmap("plasma")
        for i, b in enumerate(one.beta.values):
            c = cmap(i / max(1, one.sizes["beta"] - 1))
            axes[1].plot(one.time.values, mean_nc.values[i], color=c, label=f"$\\beta$={b:g}")
            axes[2].plot(one.time.values, one.rank_collapse.mean("seed_index").values[i], color=c)
        axes[1].set_xlabel("t")
        axes[1].set_title("clusters vs time")
        axes[1].legend(fontsize=7, ncol=2)
        axes[2].set_yscale("log")
        axes[2].set_xlabel("t")
        axes[2].set_title("rank-collapse residual (mean over seeds)")
        for ax in axes[1:]:
            ax.grid(alpha=0.3)
        cfg = self.Config.from_attrs(ds)
        fig.suptitle(
            f"random Q, K, V = I + {cfg.sigma} G/sqrt(d); N = {cfg.n}, d = {cfg.d}, {cfg.n_seeds} seeds"
        )
        fig.tight_layout()
        path = Path(outdir) / "phase-diagram.png"
        save_figure(fig, path, dpi=110)
        return [path]
