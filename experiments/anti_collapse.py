"""Auxiliary variables against mode collapse (Imaizumi, Koyama, Isobe, Hayashi 2026).

The same N tokens on the circle evolve (SA by default, Q = K = V = I) with no auxiliary
variable, with an additive positional encoding (sinusoidal, random Fourier, Gaussian), with
the encoding in a concatenated score channel (ZBias), with RoPE, and with P fixed prompt tokens.
Observables: W2 distance to the nearest Dirac mass (all variants) and circle-W1 distance to the
theory limit x*(z) (additive variants: the engine-free energy maximiser of
meanfield.theory.additive_pe_pushforward, on a 600-node quadrature for the sinusoidal encoding
and on the token's own z for the random ones).

What the figure shows: no encoding -> a Dirac mass; additive encodings -> a spread cloud, the
pushforward of the positions (near a local maximiser of the theory energy: the theory search here
is a short one, 4 starts, see meanfield.theory.additive_pe_pushforward); the concatenated channel
only reweights attention (all weights stay positive, the energy is still maximised by a Dirac mass)
and collapses; RoPE (rotation scale alpha pi / N) collapses as well at these settings. The "prompt" variant uses SHARED
prompt tokens (every token sees every prompt): they add a term linear in the token distribution to
a convex energy, whose maximiser is a Dirac mass, and the run collapses (distance to Dirac ~ 0).
The "parallel-prompt" variant is the paper's parallel insertion (one own prompt per token,
meanfield.ParallelPrompt, p_i = (cos pi s_i, sin pi s_i), key mass prompt_weight): it stays spread,
at the theory pushforward of meanfield.theory.prompt_pushforward (right panel); the
``prompt-parallel`` preset studies it against N.

    meanfield run anti-collapse [--set alpha=0.4 --set beta=4]
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
from meanfield.run.io import observable_vars
from meanfield.kernel import gaussian, random_fourier
from meanfield.run import TracedPreset, Var, grid_param, register
from meanfield.theory import additive_pe_pushforward, prompt_pushforward

from ._common import (
    PARTICLE_OUTPUTS,
    SolveConfig,
    circle_w1_to,
    first_point,
    half_circle_prompts,
    midpoints,
    plt,
    save_figure,
    simulate_chunk,
)

VARIANTS = (
    "none",
    "additive-sinusoidal",
    "additive-rff",
    "additive-gaussian",
    "concat",
    "rope",
    "prompt",
    "parallel-prompt",
)
ADDITIVE = VARIANTS[1:4]


@dataclasses.dataclass(frozen=True)
class Config(SolveConfig):
    n: int = 64
    """moving tokens (on the circle S^1)"""
    beta: float = 2.0
    alpha: float = 0.8
    """coupling scale of the auxiliary variables (0 = plain engine)"""
    form: str = "SA"
    """SA (default) or USA. Both have the same stationary configurations (x_i parallel to
    sum_j e^{a_ij} y_j; SA only divides by Z_i > 0), and USA is the gradient flow of the energy
    whose maximiser is the theory limit; but USA moves at rates ~ e^{beta |y|^2} and is stiff
    (300k Tsit5 steps to t = 100 at the defaults), SA at O(1) rates (~200 steps)."""
    rff_sigma: float = 3.0
    """frequency scale of the random Fourier features"""
    prompt_size: int = 4
    prompt_weight: float = 1.0
    """total mass of the prompt tokens (moving tokens have total mass 1)"""
    t1: float = 100.0
    t_first: float = 0.01
    n_save: int = 61
    chunks: int = 6
    rtol: float = 1e-8
    atol: float = 1e-8
    cluster_tol: float = 0.05
    quadrature: int = 600
    """nodes of the theory's z-quadrature (sinusoidal encoding)"""

    ranges = {
        "n": "[2, 65536]",
        "beta": "[0, 100]",
        "alpha": "[0, 100]",
        "form": "{SA, USA}",
        "rff_sigma": "(0, 1000]",
        "prompt_size": "[1, 4096]",
        "prompt_weight": "(0, 1e6]",
        "t1": "(t_first, 1e6]",
        "t_first": "(0, t1)",
        "quadrature": "[10, 100000]",
    }


def z_tables(cfg, seed):
    """The auxiliary variables of each additive variant (unit-scale; multiplied by alpha)."""
    s = midpoints(cfg.n)
    key = jax.random.key(seed)
    k1, k2 = jax.random.split(jax.random.fold_in(key, 7))
    return {
        "additive-sinusoidal": jnp.asarray(half_circle_prompts(cfg.n)[1]),
        "additive-rff": random_fourier(k1, jnp.asarray(s), 2, cfg.rff_sigma),
        "additive-gaussian": gaussian(k2, cfg.n, 2, 1.0),
    }


@register
class AntiCollapse(TracedPreset):
    name = "anti-collapse"
    tiny = ("n=8", "t1=5", "n_save=7", "chunks=2", "quadrature=40")
    slow = True
    outputs = PARTICLE_OUTPUTS
    description = "no aux variable vs positional encodings (additive, concat, RoPE) vs prompt: Dirac vs pushforward limit"
    variables = {
        "variant": Var(
            "auxiliary-variable variant",
            "1",
            "none, additive PE, concatenated PE (ZBias), RoPE, shared prompt or parallel prompt (module docstring); alpha = {alpha}",
        ),
        "pushforward_w1": Var(
            "circle W1 to the pushforward limit",
            "1",
            "exact circle W1 between the tokens and the engine-free energy maximiser x*(z) of the additive variants (NaN elsewhere); beta = {beta}, alpha = {alpha}, quadrature = {quadrature}",
        ),
        "pushforward_mmd": Var(
            "MMD to the pushforward limit",
            "1",
            "MMD between the tokens and x*(z) (additive variants; NaN elsewhere); beta = {beta}, alpha = {alpha}",
        ),
    }
    Config = Config
    vmap_keys = ("beta", "alpha", "seed")

    def times(self, cfg):
        return np.concatenate([[0.0], np.geomspace(cfg.t_first, cfg.t1, cfg.n_save - 1)])

    def init(self, cfg, p):
        x0 = mf.sphere_uniform(jax.random.key(p["seed"]), cfg.n, 2)
        return jnp.stack([x0] * len(VARIANTS))

    def _setups(self, cfg, p):
        zs = z_tables(cfg, p["seed"])
        n = cfg.n
        plain = mf.TokenAux.default(n)
        sin_aux = mf.TokenAux.default(n, z=zs["additive-sinusoidal"])
        y = mf.sphere_uniform(jax.random.fold_in(jax.random.key(p["seed"]), 11), cfg.prompt_size, 2)
        prompt = mf.Prompt(
            y, mass=jnp.full((cfg.prompt_size,), cfg.prompt_weight / cfg.prompt_size)
        )
        kw = dict(form=cfg.form)
        out = {"none": (mf.Attention(p["beta"], **kw), plain, None)}
        for v in ADDITIVE:
            out[v] = (
                mf.Attention(p["beta"], pe=mf.AdditivePE(p["alpha"]), **kw),
                mf.TokenAux.default(n, z=zs[v]),
                None,
            )
        out["concat"] = (
            mf.Attention(p["beta"], mask=mf.ZBias(scale=p["beta"] * p["alpha"]), **kw),
            sin_aux,
            None,
        )
        out["rope"] = (
            mf.Attention(p["beta"], pe=mf.RoPE(base=10000.0, scale=p["alpha"] * np.pi / n), **kw),
            plain,
            None,
        )
        out["prompt"] = (mf.Attention(p["beta"], **kw), plain, prompt)
        # the paper's parallel insertion: token i's own prompt p_i = (cos pi s_i, sin pi s_i), key mass prompt_weight
        out["parallel-prompt"] = (
            mf.Attention(p["beta"], **kw),
            plain,
            mf.ParallelPrompt(zs["additive-sinusoidal"], cfg.prompt_weight),
        )
        return [out[v] for v in VARIANTS]

    def advance(self, cfg, p, state, ts):
        finals, xs = [], []
        for i, (attn, aux, prompt) in enumerate(self._setups(cfg, p)):
            final, chunk = simulate_chunk(attn, state[i], ts, cfg, aux, prompt)
            finals.append(final)
            xs.append(chunk)
        return jnp.stack(finals), {"x": jnp.stack(xs, axis=1)}  # (L, variant, N, 2)

    def dataset(self, cfg, ts, recs, grid):
        x = recs["x"]  # (*grid, time, variant, N, 2)
        dims = grid.keys + ("time", "variant")
        beta = grid_param(grid, cfg, "beta")[..., None, None]
        data = {
            "x": (dims + ("token", "dim"), x),
            "dirac_distance": (dims, np.asarray(obs.dirac_distance(x))),
        }
        data.update(observable_vars(x, beta, dims, cfg.cluster_tol))
        # theory limit for the additive variants, per grid point
        pts = list(np.ndindex(*grid.shape)) if grid.shape else [()]
        w1 = np.full(x.shape[:-2], np.nan)
        mmd = np.full(x.shape[:-2], np.nan)
        theta = np.arctan2(x[..., 1], x[..., 0])
        for pt in pts:
            g = {k: grid_param(grid, cfg, k)[pt] for k in ("beta", "alpha", "seed")}
            zs = z_tables(cfg, int(g["seed"]))
            for v in ADDITIVE:
                vi = VARIANTS.index(v)
                if v == "additive-sinusoidal":
                    u = g["alpha"] * half_circle_prompts(cfg.quadrature)[1]
                else:
                    u = g["alpha"] * np.asarray(zs[v])
                xs_star, _ = additive_pe_pushforward(u, float(g["beta"]), n_starts=4, hops=0)
                th_star = np.arctan2(xs_star[:, 1], xs_star[:, 0])
                cloud = jnp.asarray(x[pt + (slice(None), vi)])
                w1[pt + (slice(None), vi)] = circle_w1_to(theta[pt + (slice(None), vi)], th_star)
                mmd[pt + (slice(None), vi)] = np.asarray(
                    jax.vmap(lambda c: obs.mmd(c, jnp.asarray(xs_star)))(cloud)
                )
            vi = VARIANTS.index("parallel-prompt")
            xs_star, _ = prompt_pushforward(
                half_circle_prompts(cfg.quadrature)[1],
                float(g["beta"]),
                cfg.prompt_weight,
                n_starts=2,
                hops=0,
            )
            th_star = np.arctan2(xs_star[:, 1], xs_star[:, 0])
            cloud = jnp.asarray(x[pt + (slice(None), vi)])
            w1[pt + (slice(None), vi)] = circle_w1_to(theta[pt + (slice(None), vi)], th_star)
            mmd[pt + (slice(None), vi)] = np.asarray(
                jax.vmap(lambda c: obs.mmd(c, jnp.asarray(xs_star)))(cloud)
            )
        data["pushforward_w1"] = (dims, w1)
        data["pushforward_mmd"] = (dims, mmd)
        coords = {"time": ts, "variant": list(VARIANTS), **grid.coords()}
        return xr.Dataset(data, coords=coords)

    def plot(self, ds, outdir):
        one = first_point(ds)
        p = plt()
        nv = one.sizes["variant"]
        fig = p.figure(figsize=(2.3 * nv, 6.6))
        s = midpoints(one.sizes["token"])
        th = np.linspace(0, 2 * np.pi, 200)
        for i, v in enumerate(one.variant.values):
            ax = fig.add_subplot(2, nv, i + 1)
            xf = one.x.isel(time=-1).sel(variant=v).values
            ax.plot(np.cos(th), np.sin(th), color="0.85", lw=0.8)
            ax.scatter(xf[:, 0], xf[:, 1], c=s, cmap="viridis", s=12, vmin=0, vmax=1)
            ax.set_aspect("equal")
            ax.set_axis_off()
            ax.set_title(
                f"{v}\nDirac dist {float(one.dirac_distance.isel(time=-1).sel(variant=v)):.2f}",
                fontsize=8,
            )
        t = one.time.values
        ax1 = fig.add_subplot(2, 2, 3)
        ax2 = fig.add_subplot(2, 2, 4)
        for v in one.variant.values:
            ax1.plot(t[1:], one.dirac_distance.sel(variant=v).values[1:], label=v, lw=1.5)
            if v in ADDITIVE or v == "parallel-prompt":
                ax2.plot(t[1:], one.pushforward_w1.sel(variant=v).values[1:], label=v, lw=1.5)
        for ax, title in (
            (ax1, "W2 distance to the nearest Dirac mass"),
            (ax2, "circle W1 to the theory pushforward x*(z)"),
        ):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("t (log)")
            ax.set_title(title, fontsize=10)
            ax.grid(alpha=0.3, which="both")
        ax1.legend(fontsize=7)
        ax2.legend(fontsize=7)
        cfg = self.Config.from_attrs(ds)
        fig.suptitle(
            f"auxiliary variables vs collapse: N = {cfg.n} on $S^1$, {cfg.form}, $\\beta$ = {cfg.beta}, "
            f"coupling $\\alpha$ = {cfg.alpha} (colour = position s)"
        )
        fig.subplots_adjust(left=0.05, right=0.98, top=0.88, bottom=0.08, hspace=0.3, wspace=0.2)
        path = Path(outdir) / "anti-collapse.png"
        save_figure(fig, path, dpi=110)
        return [path]
