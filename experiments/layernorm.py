"""Discrete layers with different normalisations, from the same start.

Post-LN x <- n(x + h F(x)), pre-LN x <- x + h F(n(x)), peri-LN x <- x + h n(F(n(x))) and nGPT
x <- n(x + h (n(F(x)) - x)) (F = SA attention, n = projection on the sphere; see
meanfield.geometry). All four act on the same uniform start; the observables are taken on the
normalised tokens n(x) (what the next layer sees), plus the mean token norm |x| (which grows
for pre-/peri-LN, whose residual stream is not normalised). The figure compares how fast each
collapses (mean cosine, rank-collapse residual, effective rank) and the norm growth.

    meanfield run layernorm [--set beta=4 --set h=0.5 --set n_layers=64]
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
from meanfield.run import TracedPreset, Var, grid_param, register

from ._common import PARTICLE_OUTPUTS, MaskConfig, first_point, particle_mask, plt, save_figure

NORMS = {"post-LN": mf.PostLN(), "pre-LN": mf.PreLN(), "peri-LN": mf.PeriLN(), "nGPT": mf.NGPT()}


@dataclasses.dataclass(frozen=True)
class Config(MaskConfig):
    n: int = 32
    d: int = 8
    beta: float = 2.0
    h: float = 0.25
    """step size (residual weight) of every layer"""
    n_layers: int = 96
    chunks: int = 4
    cluster_tol: float = 1e-2

    ranges = {
        "chunks": "[1, n_layers]",
        "n": "[2, 65536]",
        "d": "[2, 4096]",
        "beta": "[0, 1000]",
        "h": "(0, 100]",
        "n_layers": "[chunks, 100000]",
        "cluster_tol": "(0, 2]",
    }


@register
class LayerNorm(TracedPreset):
    name = "layernorm"
    tiny = ("n=6", "d=4", "n_layers=6", "chunks=2")
    slow = False
    outputs = PARTICLE_OUTPUTS
    description = "post-LN vs pre-LN vs peri-LN vs nGPT discrete layers from one start: collapse speed and norm growth"
    variables = {
        "norm": Var(
            "layer normalisation",
            "1",
            "post-LN, pre-LN, peri-LN or nGPT discrete layer map (step h = {h})",
        ),
        "mean_norm": Var(
            "mean token norm",
            "1",
            "mean over tokens of |x_i| (the residual stream's growth under pre-LN)",
        ),
    }
    Config = Config
    vmap_keys = ("beta", "h", "seed")

    def times(self, cfg):
        return cfg.h * np.arange(cfg.n_layers + 1)

    def init(self, cfg, p):
        x0 = mf.sphere_uniform(jax.random.key(p["seed"]), cfg.n, cfg.d)
        return jnp.stack([x0] * len(NORMS))

    def advance(self, cfg, p, state, ts):
        attn = mf.Attention(p["beta"], mask=particle_mask(cfg))
        n_layers = ts.shape[0] - 1
        outs = [
            mf.layers(attn, state[i], n_layers, h=p["h"], norm=norm).xs[1:]
            for i, norm in enumerate(NORMS.values())
        ]
        xs = jnp.stack(outs, axis=1)  # (L, norm, N, d)
        return xs[-1], {"x": xs}

    def dataset(self, cfg, ts, recs, grid):
        x = recs["x"]
        dims = grid.keys + ("time", "norm")
        u = x / np.linalg.norm(x, axis=-1, keepdims=True)
        beta = grid_param(grid, cfg, "beta")[..., None, None]
        data = {
            "x": (dims + ("token", "dim"), x),
            "mean_norm": (dims, np.linalg.norm(x, axis=-1).mean(-1)),
        }
        data.update(observable_vars(u, beta, dims, cfg.cluster_tol))
        coords = {"time": ts, "norm": list(NORMS), **grid.coords()}
        ds = xr.Dataset(data, coords=coords)
        ds["time"].attrs["long_name"] = "depth h * layer"
        return ds

    def plot(self, ds, outdir):
        one = first_point(ds)
        p = plt()
        panels = [
            ("mean_cosine", "mean pairwise cosine", False),
            ("rank_collapse", "rank-collapse residual", True),
            ("effective_rank", "effective rank", False),
            ("mean_norm", "mean |x| (residual stream)", True),
        ]
        fig, axes = p.subplots(1, 4, figsize=(16, 4))
        layer = np.arange(one.sizes["time"])
        for ax, (name, label, logy) in zip(axes, panels):
            for norm in one.norm.values:
                ax.plot(layer, one[name].sel(norm=norm).values, lw=1.6, label=norm)
            if logy:
                ax.set_yscale("log")
            ax.set_xlabel("layer")
            ax.set_title(label, fontsize=10)
            ax.grid(alpha=0.3)
        axes[0].legend()
        cfg = self.Config.from_attrs(ds)
        fig.suptitle(
            f"SA layers, N = {cfg.n}, d = {cfg.d}, $\\beta$ = {cfg.beta}, h = {cfg.h}, mask = {cfg.mask}"
        )
        fig.tight_layout()
        path = Path(outdir) / "layernorm.png"
        save_figure(fig, path, dpi=110)
        return [path]
