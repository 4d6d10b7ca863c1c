"""Mean-field densities on the circle (N -> infinity) and their agreement with particles.

``meanfield-circle``: rho(t, theta) from rho_0 = (1 + eps cos 3 theta + small noise) / 2 pi for SA
and USA at several beta (heatmaps theta x t): the uniform state is linearly unstable with growth
rates a n^2 I_n(beta) / (beta I_0(beta)) (SA), so clusters nucleate at the fastest mode.

``particles-vs-pde``: N particles sampled from rho_0 and evolved by the particle engine against
the PDE density at time T: exact circle W1 versus N on a log-log plot, with the fitted slope
(expected -1/2, the empirical-measure fluctuation).

    meanfield run meanfield-circle [--set betas=0.5,1,2,4]
    meanfield run particles-vs-pde [--set ns=64,256,1024,4096,16384]
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

import meanfield as mf
from meanfield.pde.circle import CircleMeanField, density_to_particles, density_w1
from meanfield.run import TracedPreset, RunConfig, Var, register
from meanfield.theory import circle_growth_rate

from ._common import ToleranceConfig, first_point, plt, save_figure

FORMS = ("SA", "USA")


@dataclasses.dataclass(frozen=True)
class CircleConfig(RunConfig):
    m: int = 256
    """cells"""
    betas: tuple[float, ...] = (1.0, 2.0, 4.0)
    """(USA moves at rates ~ e^beta: beyond ~5 it needs a much shorter t1)"""
    eps: float = 0.05
    """amplitude of the initial cos(3 theta) perturbation"""
    t1: float = 12.0
    n_save: int = 61
    chunks: int = 4
    cfl: float = 0.4

    ranges = {
        "chunks": "[1, n_save - 1]",
        "m": "[8, 65536]",
        "betas": "(0, 100], distinct",
        "eps": "[0, 1)",
        "t1": "(0, 1e6]",
        "n_save": "[chunks + 1, 100000]",
        "cfl": "(0, 0.5]",
    }


@register
class MeanFieldCircle(TracedPreset):
    name = "meanfield-circle"
    tiny = ("m=32", "betas=1,2", "t1=1", "n_save=5", "chunks=2")
    slow = True
    outputs = frozenset({"mass", "rho", "time"})
    description = (
        "density rho(theta, t) on S^1 for SA and USA at several beta (PDE solver, heatmaps)"
    )
    variables = {
        "theta": Var("angle theta", "rad", "cell centre on the circle, M = m = {m} cells"),
        "form": Var("attention form", "1", "SA (softmax) or USA (unnormalised)"),
        "rho": Var(
            "density rho(theta, t)",
            "1/rad",
            "cell averages of the mean-field density from (1 + eps cos 3 theta)/(2 pi), eps = {eps}; CircleMeanField, cfl = {cfl}",
        ),
        "mass": Var("total mass", "1", "integral of rho (1 to round-off)"),
        "growth_rate_mode3": Var(
            "growth rate of mode 3 (theory)",
            "1/time",
            "9 I_3(beta) / (beta I_0(beta)) (SA) or 9 I_3(beta) / beta (USA)",
        ),
    }
    Config = CircleConfig
    vmap_keys = ("seed",)

    def times(self, cfg):
        return np.linspace(0.0, cfg.t1, cfg.n_save)

    def init(self, cfg, p):
        th = (jnp.arange(cfg.m) + 0.5) * 2 * jnp.pi / cfg.m
        noise = 1e-3 * jax.random.normal(jax.random.key(p["seed"]), (cfg.m,))
        rho = (1 + cfg.eps * jnp.cos(3 * th) + noise - jnp.mean(noise)) / (2 * jnp.pi)
        return jnp.broadcast_to(rho, (len(FORMS), len(cfg.betas), cfg.m))

    def advance(self, cfg, p, state, ts):
        out = []
        for i, form in enumerate(FORMS):

            def one(beta, rho, form=form):
                return (
                    CircleMeanField(cfg.m, beta=beta, form=form).solve(rho, ts, cfl=cfg.cfl).rho[1:]
                )

            out.append(jax.vmap(one)(jnp.asarray(cfg.betas), state[i]))
        rho = jnp.stack(out)  # (form, beta, L, M)
        return rho[:, :, -1], {"x": jnp.moveaxis(rho, 2, 0)}

    def dataset(self, cfg, ts, recs, grid):
        rho = np.moveaxis(
            recs["x"], len(grid.keys), len(grid.keys) + 2
        )  # (*grid, form, beta, time, M)
        dims = grid.keys + ("form", "beta", "time", "theta")
        theta = (np.arange(cfg.m) + 0.5) * 2 * np.pi / cfg.m
        rates = np.array([[circle_growth_rate(3, b, form=f) for b in cfg.betas] for f in FORMS])
        data = {
            "rho": (dims, rho),
            "mass": (dims[:-1], rho.sum(-1) * 2 * np.pi / cfg.m),
            "growth_rate_mode3": (("form", "beta"), rates),
        }
        coords = {"time": ts, "theta": theta, "form": list(FORMS), "beta": list(cfg.betas)}
        coords.update(grid.coords())
        return xr.Dataset(data, coords=coords)

    def plot(self, ds, outdir):
        one = first_point(ds)
        p = plt()
        nb = one.sizes["beta"]
        fig, axes = p.subplots(2, nb, figsize=(4.2 * nb, 6.6), squeeze=False)
        for i, form in enumerate(one.form.values):
            for j, b in enumerate(one.beta.values):
                ax = axes[i][j]
                r = one.rho.sel(form=form, beta=b).values
                im = ax.pcolormesh(
                    one.time.values,
                    one.theta.values,
                    r.T,
                    shading="auto",
                    cmap="magma",
                    norm=p.matplotlib.colors.LogNorm(vmin=max(r.min(), 1e-4), vmax=r.max()),
                )
                fig.colorbar(im, ax=ax)
                rate = float(one.growth_rate_mode3.sel(form=form, beta=b))
                ax.set_title(f"{form}, $\\beta$ = {b:g}  (mode-3 rate {rate:.2f})", fontsize=9)
                ax.set_xlabel("t")
                ax.set_ylabel("$\\theta$")
        cfg = self.Config.from_attrs(ds)
        fig.suptitle(
            f"mean-field density on $S^1$ (M = {cfg.m}), $\\rho_0 \\propto 1 + {cfg.eps} \\cos 3\\theta$ (log colour)"
        )
        fig.tight_layout()
        path = Path(outdir) / "meanfield-circle.png"
        save_figure(fig, path, dpi=110)
        return [path]


@dataclasses.dataclass(frozen=True)
class PvPConfig(ToleranceConfig):
    beta: float = 3.0
    t1: float = 1.0
    ns: tuple[int, ...] = (64, 256, 1024, 4096)
    """particle numbers"""
    n_seeds: int = 4
    m: int = 1024
    """PDE cells"""
    rtol: float = 1e-8
    atol: float = 1e-8

    ranges = {
        "beta": "[0, 100]",
        "t1": "(0, 1e6]",
        "ns": "[2, 65536], length >= 2, distinct",
        "n_seeds": "[1, 1024]",
        "m": "[8, 65536]",
    }


def _rho0(m):
    h = 2 * np.pi / m
    e = np.arange(m + 1) * h
    F = lambda t: (t + 0.6 * np.sin(t) - 0.15 * np.cos(2 * t)) / (2 * np.pi)
    return jnp.asarray((F(e[1:]) - F(e[:-1])) / h)


@register
class ParticlesVsPDE(TracedPreset):
    name = "particles-vs-pde"
    tiny = ("ns=8,16", "n_seeds=2", "m=64", "t1=0.5")
    slow = True
    outputs = frozenset({"time", "w1", "w1_mean"})
    description = "W1 between N particles and the mean-field PDE density at time T, vs N (log-log, fitted slope)"
    variables = {
        "n": Var("number of particles N", "1", "tokens of each particle run"),
        "w1": Var(
            "circle W1, particles to PDE",
            "1",
            "exact circle W1 between N particles and the PDE density (M = m = {m} cells), beta = {beta}; one value per seed",
        ),
        "w1_mean": Var(
            "mean circle W1, particles to PDE", "1", "mean of w1 over the n_seeds = {n_seeds} seeds"
        ),
    }
    Config = PvPConfig
    vmap_keys = ("seed",)

    def times(self, cfg):
        return np.array([0.0, cfg.t1])

    def init(self, cfg, p):
        rho0 = _rho0(cfg.m)
        out = {}
        for n in cfg.ns:
            th = jax.vmap(lambda s: density_to_particles(jax.random.key(s), rho0, n))(
                p["seed"] * 1000 + jnp.arange(cfg.n_seeds)
            )
            out[f"n{n}"] = jnp.stack([jnp.cos(th), jnp.sin(th)], -1)
        out["rho"] = rho0
        return out

    def _w1(self, cfg, state):
        return jnp.stack(
            [
                jax.vmap(lambda x: density_w1(jnp.arctan2(x[:, 1], x[:, 0]), state["rho"]))(
                    state[f"n{n}"]
                )
                for n in cfg.ns
            ]
        )  # (n, seed)

    def record(self, cfg, p, state):
        return {"w1": self._w1(cfg, state)[None]}

    def advance(self, cfg, p, state, ts):
        new = {
            "rho": CircleMeanField(cfg.m, beta=cfg.beta).solve(state["rho"], ts, cfl=0.2).rho[-1]
        }
        for n in cfg.ns:
            run = lambda x: (
                mf.simulate(mf.Attention(cfg.beta), x, ts, rtol=cfg.rtol, atol=cfg.atol).final
            )
            new[f"n{n}"] = jax.vmap(run)(state[f"n{n}"])
        return new, {"w1": self._w1(cfg, new)[None]}

    def dataset(self, cfg, ts, recs, grid):
        dims = grid.keys + ("time", "n", "seed_index")
        w1 = recs["w1"]
        mean = w1.mean(-1)
        slope = np.polyfit(
            np.log(cfg.ns), np.log(mean[..., -1, :].reshape(-1, len(cfg.ns)).mean(0)), 1
        )[0]
        ds = xr.Dataset(
            {"w1": (dims, w1), "w1_mean": (dims[:-1], mean)},
            coords={
                "time": ts,
                "n": list(cfg.ns),
                "seed_index": np.arange(cfg.n_seeds),
                **grid.coords(),
            },
        )
        ds.attrs["fitted_slope_at_t1"] = float(slope)
        return ds

    def plot(self, ds, outdir):
        one = first_point(ds)
        p = plt()
        fig, ax = p.subplots(figsize=(5.6, 4.4))
        ns = one.n.values
        for ti, label in ((0, "t = 0 (sampling)"), (-1, f"t = {one.time.values[-1]:g}")):
            w = one.w1.isel(time=ti).values
            ax.errorbar(ns, w.mean(-1), yerr=w.std(-1), marker="o", capsize=3, label=label)
        ref = one.w1_mean.isel(time=-1).values
        ax.plot(ns, ref[0] * (ns / ns[0]) ** -0.5, "k--", lw=1, label="$N^{-1/2}$")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("N particles")
        ax.set_ylabel("circle W1 to the PDE density")
        ax.set_title(
            f"particles vs mean-field PDE: fitted slope {ds.attrs['fitted_slope_at_t1']:.2f}",
            fontsize=10,
        )
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = Path(outdir) / "particles-vs-pde.png"
        save_figure(fig, path, dpi=110)
        return [path]
