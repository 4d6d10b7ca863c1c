"""Sweeps of the auxiliary-variable strength (companions of ``anti-collapse``, SA on the circle).

``pe-sweep``: additive sinusoidal encoding u(s) = alpha (cos(pi f s), sin(pi f s)) at positions
s_i = (i + 1/2)/N, on an alpha x beta grid advanced in one vmapped solve per chunk; heatmaps of
the final cluster count, the W2 distance to the nearest Dirac mass and the circle-W1 distance
to the theory pushforward (meanfield.theory.additive_pe_pushforward on a quadrature).

``prompt-sweep``: P fixed prompt tokens evenly spaced on the circle (random global rotation per
seed), total prompt mass w (moving tokens have total mass 1), on a P x w grid; heatmaps of the
final cluster count and distance to the nearest Dirac mass.

    meanfield run pe-sweep [--set alphas=0,0.2,0.4,0.8 --set betas=1,2,4]
    meanfield run prompt-sweep [--set sizes=1,2,4,8 --set weights=0.1,1,10]
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

import meanfield as mf
from meanfield import observables as obs
from meanfield.run import TracedPreset, Var, register
from meanfield.theory import additive_pe_pushforward

from ._common import (
    SolveConfig,
    circle_w1_to,
    first_point,
    midpoints,
    plt,
    save_figure,
    simulate_chunk,
)


def _u(s, freq):
    return np.stack([np.cos(np.pi * freq * s), np.sin(np.pi * freq * s)], 1)


@dataclasses.dataclass(frozen=True)
class PEConfig(SolveConfig):
    n: int = 48
    alphas: tuple[float, ...] = (0.0, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0)
    """PE coupling scales (heatmap columns)"""
    betas: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    """inverse temperatures (heatmap rows)"""
    freq: float = 1.0
    """PE frequency f: u(s) = alpha (cos(pi f s), sin(pi f s))"""
    t1: float = 60.0
    n_save: int = 31
    chunks: int = 3
    atol: float = 1e-8
    cluster_tol: float = 0.05
    quadrature: int = 300

    ranges = {
        "n": "[2, 65536]",
        "alphas": "[0, 100], distinct",
        "betas": "[0, 1000], distinct",
        "freq": "[-1000, 1000]",
        "quadrature": "[10, 100000]",
    }


@dataclasses.dataclass(frozen=True)
class PromptConfig(SolveConfig):
    n: int = 48
    sizes: tuple[int, ...] = (1, 2, 3, 4, 6, 8)
    """numbers of prompt tokens P (heatmap columns)"""
    weights: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0)
    """total prompt masses w (heatmap rows)"""
    beta: float = 4.0
    t1: float = 60.0
    n_save: int = 31
    chunks: int = 3
    atol: float = 1e-8
    cluster_tol: float = 0.05

    ranges = {
        "n": "[2, 65536]",
        "sizes": "[1, 4096], distinct",
        "weights": "(0, 1e6], distinct",
        "beta": "[0, 1000]",
    }


class _GridPreset(TracedPreset):
    """A preset whose own 2-D parameter grid (rows x cols) advances in one vmapped solve."""

    vmap_keys = ("seed",)
    rows: tuple[str, str] = ("", "")  # (dimension name, config field holding its values)
    cols: tuple[str, str] = ("", "")

    def times(self, cfg):
        return np.linspace(0.0, cfg.t1, cfg.n_save)

    def init(self, cfg, p):
        x0 = mf.sphere_uniform(jax.random.key(p["seed"]), cfg.n, 2)
        shape = (len(getattr(cfg, self.rows[1])), len(getattr(cfg, self.cols[1])))
        return jnp.broadcast_to(x0, shape + x0.shape)

    def advance(self, cfg, p, state, ts):
        rows = jnp.asarray(getattr(cfg, self.rows[1]), float)
        cols = jnp.asarray(getattr(cfg, self.cols[1]), float)

        def one(r, c, x):
            attn, aux, prompt = self.setup(cfg, p, r, c)
            return simulate_chunk(attn, x, ts, cfg, aux, prompt)

        xf, xs = jax.vmap(lambda r, xr_: jax.vmap(lambda c, x: one(r, c, x))(cols, xr_))(
            rows, state
        )
        return xf, {"x": jnp.moveaxis(xs, 2, 0)}

    def base_dataset(self, cfg, ts, recs, grid):
        k = len(grid.keys)
        x = np.moveaxis(recs["x"], k, k + 2)  # (*grid, rows, cols, time, N, 2)
        dims = grid.keys + (self.rows[0], self.cols[0], "time")
        data = {
            "x": (dims + ("token", "dim"), x),
            "dirac_distance": (dims, np.asarray(obs.dirac_distance(x))),
            "n_clusters": (dims, np.asarray(obs.n_clusters(x, cfg.cluster_tol))),
        }
        coords = {
            "time": ts,
            self.rows[0]: list(getattr(cfg, self.rows[1])),
            self.cols[0]: list(getattr(cfg, self.cols[1])),
        }
        coords.update(grid.coords())
        return xr.Dataset(data, coords=coords)

    def heatmaps(self, ds, outdir, names, title):
        one = first_point(ds).isel(time=-1)
        p = plt()
        fig, axes = p.subplots(1, len(names), figsize=(4.8 * len(names), 4.0), squeeze=False)
        for ax, (name, label) in zip(axes[0], names):
            vals = one[name].values
            im = ax.imshow(vals, origin="lower", aspect="auto", cmap="viridis")
            for (i, j), v in np.ndenumerate(vals):
                ax.text(j, i, f"{v:.2g}", ha="center", va="center", color="w", fontsize=7)
            ax.set_xticks(
                range(one.sizes[self.cols[0]]), [f"{v:g}" for v in one[self.cols[0]].values]
            )
            ax.set_yticks(
                range(one.sizes[self.rows[0]]), [f"{v:g}" for v in one[self.rows[0]].values]
            )
            ax.set_xlabel(self.cols[0])
            ax.set_ylabel(self.rows[0])
            ax.set_title(label, fontsize=10)
            fig.colorbar(im, ax=ax)
        fig.suptitle(title)
        fig.tight_layout()
        path = Path(outdir) / f"{self.name}.png"
        save_figure(fig, path, dpi=110)
        return [path]


@register
class PESweep(_GridPreset):
    name = "pe-sweep"
    tiny = ("n=6", "alphas=0,0.5", "betas=1,2", "t1=2", "n_save=5", "chunks=2", "quadrature=30")
    slow = True
    outputs = frozenset({"dirac_distance", "n_clusters", "x"})
    description = "additive PE scale x beta grid: heatmaps of final clusters, distance to Dirac and to the pushforward"
    variables = {
        "alpha": Var(
            "additive PE scale alpha",
            "1",
            "scale of the additive positional encoding y = x + alpha u(z)",
        ),
        "pushforward_w1": Var(
            "circle W1 to the pushforward limit",
            "1",
            "exact circle W1 between the tokens and the energy maximiser x*(z) (quadrature = {quadrature}); depends on beta and alpha",
        ),
    }
    Config = PEConfig
    rows, cols = ("beta", "betas"), ("alpha", "alphas")

    def setup(self, cfg, p, beta, alpha):
        z = jnp.asarray(_u(midpoints(cfg.n), cfg.freq))
        return mf.Attention(beta, pe=mf.AdditivePE(alpha)), mf.TokenAux.default(cfg.n, z=z), None

    def dataset(self, cfg, ts, recs, grid):
        return self._pushforward(cfg, self.base_dataset(cfg, ts, recs, grid), grid)

    def _pushforward(self, cfg, ds, grid):
        sq = midpoints(cfg.quadrature)
        theta = np.arctan2(
            ds.x.values[..., 1], ds.x.values[..., 0]
        )  # (*grid, beta, alpha, time, N)
        w1 = np.zeros(theta.shape[:-1])
        for bi, b in enumerate(cfg.betas):
            for ai, a in enumerate(cfg.alphas):
                xs, _ = additive_pe_pushforward(a * _u(sq, cfg.freq), float(b), n_starts=4, hops=0)
                w1[..., bi, ai, :] = circle_w1_to(
                    theta[..., bi, ai, :, :], np.arctan2(xs[:, 1], xs[:, 0])
                )
        ds["pushforward_w1"] = (ds.dirac_distance.dims, w1)
        return ds

    def plot(self, ds, outdir):
        cfg = self.Config.from_attrs(ds)
        return self.heatmaps(
            ds,
            outdir,
            [
                ("n_clusters", "clusters at t1"),
                ("dirac_distance", "W2 to nearest Dirac at t1"),
                ("pushforward_w1", "circle W1 to theory pushforward at t1"),
            ],
            f"additive sinusoidal PE (f = {cfg.freq}), N = {cfg.n} on $S^1$, SA, t1 = {cfg.t1}",
        )


@register
class PromptSweep(_GridPreset):
    name = "prompt-sweep"
    tiny = ("n=6", "sizes=1,3", "weights=0.5,2", "t1=2", "n_save=5", "chunks=2")
    slow = False
    outputs = frozenset({"dirac_distance", "n_clusters", "x"})
    description = "number x total weight of fixed prompt tokens: heatmaps of final clusters and distance to Dirac"
    variables = {
        "weight": Var(
            "total prompt weight", "1", "total key mass of the fixed shared prompt tokens"
        ),
        "size": Var(
            "number of prompt tokens", "1", "P fixed shared prompt tokens seen by every token"
        ),
    }
    Config = PromptConfig
    rows, cols = ("weight", "weights"), ("size", "sizes")

    def setup(self, cfg, p, weight, size):
        pmax = max(cfg.sizes)
        k = jnp.arange(pmax)
        phase = jax.random.uniform(
            jax.random.fold_in(jax.random.key(p["seed"]), 3), (), maxval=2 * jnp.pi
        )
        ang = phase + 2 * jnp.pi * k / size
        y = jnp.stack([jnp.cos(ang), jnp.sin(ang)], 1)
        mass = jnp.where(
            k < size, weight / size, 0.0
        )  # unused slots get zero mass (same shapes for vmap)
        return mf.Attention(cfg.beta), mf.TokenAux.default(cfg.n), mf.Prompt(y, mass=mass)

    def dataset(self, cfg, ts, recs, grid):
        return self.base_dataset(cfg, ts, recs, grid)

    def plot(self, ds, outdir):
        cfg = self.Config.from_attrs(ds)
        return self.heatmaps(
            ds,
            outdir,
            [("n_clusters", "clusters at t1"), ("dirac_distance", "W2 to nearest Dirac at t1")],
            f"prompt tokens evenly spaced on $S^1$, N = {cfg.n}, SA, $\\beta$ = {cfg.beta}, t1 = {cfg.t1}",
        )
