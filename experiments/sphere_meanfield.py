"""The mean-field PDE on the sphere S^2 (``meanfield.pde.SphereMeanField``): densities, linear growth
rates, and particles against the PDE.

``sphere-meanfield`` makes three figures and one dataset:

* ``sphere-meanfield.png``: the density on S^2 (Mollweide maps) for SA and USA at each beta of
  ``betas``, from rho_0 = (1 + eps Y_3) / 4 pi, Y_3 a fixed random combination of the degree-3
  harmonics (max |Y_3| = 1). Each run lasts ``efolds`` e-foldings of its fastest linear mode
  (times differ between cases: USA at beta = 9 moves ~500 times faster than at beta = 1); the
  clusters contract until the band limit L no longer resolves them, and the solve stops there
  (``throw=False``: the saves after that time are NaN, ``resolved_until`` records it). The maps are
  at 0, 1/3, 2/3 and the end of the resolved time.
* ``sphere-meanfield-rates.png``: growth rates of degrees l = 1..ell_max (m = 0 and m = l) about
  the uniform state, measured by linear response of the solver (forward-mode tangent of the solve
  at ``rate_L``) against a l(l+1) i_l(beta) / (beta i_0(beta)) (SA) and a l(l+1) i_l(beta) / beta
  (USA) ([`meanfield.theory.sphere_growth_rate`][meanfield.theory.sphere_growth_rate]).
* ``sphere-meanfield-particles.png``: N particles sampled exactly from rho_0 = (1 + Y_1/2 + 3 Y_3/10)
  / 4 pi and evolved by the particle engine (SA, Q = K = V = I, d = 3) against the PDE at time
  ``pvp_t1``: the MMD with kernel e^{kappa ⟨x, y⟩} versus N (log-log, fitted slope; -1/2 is the
  empirical-measure fluctuation), with the PDE at L = pvp_L and at 2 pvp_L (their distance, as a
  fraction of the distance at the largest N, is ``pde_l_vs_2l``).

    meanfield run sphere-meanfield [--set betas=1,4,9 --set L=32 --set ns=256,1024,4096,16384]
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

import meanfield as mf
from meanfield.pde import SphereMeanField
from meanfield.pde.sphere import density_mmd, density_mmd_between, density_to_particles
from meanfield.run import register, Step, StepPreset, Var
from meanfield.theory import sphere_growth_rate

from ._common import ToleranceConfig, plt, save_figure

FORMS = ("SA", "USA")
DENSE_MAX = 4096
"""Particle runs above this many tokens use the Chunked backend (Dense would hold N^2 floats)."""


@dataclasses.dataclass(frozen=True)
class SphereConfig(ToleranceConfig):
    L: int = 32
    """band limit of the density maps (degrees < L; grid L x (2L - 1))"""
    betas: tuple[float, ...] = (1.0, 4.0, 9.0)
    """inverse temperatures (maps and growth rates)"""
    eps: float = 0.05
    """amplitude of the degree-3 perturbation of the maps"""
    efolds: float = 16.0
    """length of each map run, in e-foldings of its fastest linear mode"""
    n_save: int = 33
    """saved times of each map run"""
    tail: float = 1e-8
    """relative spectral tail energy at which a density counts as unresolved"""
    rate_L: int = 8
    """band limit of the growth-rate measurement"""
    ell_max: int = 6
    """growth rates of degrees 1..ell_max"""
    pvp_beta: float = 4.0
    """inverse temperature of the particles-against-PDE comparison"""
    pvp_t1: float = 1.0
    """time of the particles-against-PDE comparison"""
    ns: tuple[int, ...] = (256, 1024, 4096, 16384)
    """particle numbers"""
    n_seeds: int = 4
    """particle samples per N"""
    pvp_L: int = 16
    """band limit of the PDE against particles (also run at 2 pvp_L)"""
    kappa: float = 1.0
    """MMD kernel e^{kappa ⟨x, y⟩}"""
    rtol: float = 1e-7
    atol: float = 1e-9

    ranges = {
        "L": "[8, 128]",
        "betas": "(0, 50], distinct",
        "eps": "(0, 0.5]",
        "efolds": "(0, 100]",
        "n_save": "[3, 10000]",
        "tail": "(0, 0.01]",
        "rate_L": "[ell_max + 1, 64]",
        "ell_max": "[1, rate_L - 1]",
        "pvp_beta": "(0, 20]",
        "pvp_t1": "(0, 10]",
        "ns": "[8, 65536], length >= 2, distinct",
        "n_seeds": "[1, 64]",
        "pvp_L": "[8, 64]",
        "kappa": "(0, 10]",
    }


def _degree3(pde: SphereMeanField, seed: int):
    """A fixed random combination of the seven real degree-3 harmonics, max |Y| = 1."""
    w = np.random.default_rng(seed).normal(size=7)
    y = sum(float(wi) * pde.harmonic(3, m) for wi, m in zip(w, range(-3, 4)))
    return y / jnp.max(jnp.abs(y))


def _pvp_rho0(pde: SphereMeanField):
    """(1 + Y_10 / 2 + 3 Y_32 / 10) / 4 pi (max |Y| = 1, so rho_0 >= 0.2 / 4 pi): smooth, not a
    stationary state."""
    return (1.0 + 0.5 * pde.harmonic(1, 0) + 0.3 * pde.harmonic(3, 2)) / (4 * np.pi)


@eqx.filter_jit
def _linear_response(pde: SphereMeanField, tangent, T):
    """Coefficients of the tangent and of its image under the linearised solve over [0, T] about
    the uniform state (forward mode through the time stepping; one compilation per L and form)."""

    def solve(r):
        return pde.solve(r, jnp.stack([jnp.zeros_like(T), T]), adjoint=diffrax.ForwardMode()).rho[
            -1
        ]

    _, response = jax.jvp(solve, (pde.uniform(),), (tangent,))
    return pde.forward(tangent), pde.forward(response)


def _map_steps(cfg):
    return [
        Step(f"density {form} beta={b!r}", {"form": form, "beta": b})
        for form in FORMS
        for b in cfg.betas
    ]


@register
class SphereMeanFieldPreset(StepPreset):
    name = "sphere-meanfield"
    tiny = (
        "L=8",
        "betas=4",
        "efolds=1.5",
        "n_save=4",
        "ell_max=3",
        "ns=16,32",
        "n_seeds=2",
        "pvp_L=8",
        "pvp_t1=0.5",
        "tail=1e-3",
    )
    slow = True
    outputs = frozenset({"growth_rate", "growth_rate_theory", "mmd", "resolved_until", "rho"})
    description = "mean-field PDE on S^2: density maps (SA/USA), growth rates vs theory, particles vs PDE (MMD vs N)"
    variables = {
        "form": Var("attention form", "1", "SA (softmax) or USA (unnormalised)"),
        "efold": Var(
            "save index (e-foldings)",
            "1",
            "saves at equal fractions of efolds = {efolds} e-foldings of the fastest linear mode",
        ),
        "theta": Var("colatitude theta", "rad", "McEwen-Wiaux grid of band L = {L}"),
        "phi": Var("longitude phi", "rad", "McEwen-Wiaux grid of band L = {L}"),
        "ell": Var("degree l", "1", "spherical-harmonic degree 1..ell_max = {ell_max}"),
        "m_kind": Var("order", "1", "m = 0 or m = l"),
        "n": Var("number of particles N", "1", "tokens of each particle run"),
        "stage": Var("stage", "1", "t = 0 (the samples) or t = pvp_t1 = {pvp_t1}"),
        "pvp_theta": Var(
            "colatitude theta (particles vs PDE)", "rad", "grid of band pvp_L = {pvp_L}"
        ),
        "pvp_phi": Var("longitude phi (particles vs PDE)", "rad", "grid of band pvp_L = {pvp_L}"),
        "rho": Var(
            "density rho on S^2",
            "1/sr",
            "SphereMeanField solution from (1 + eps Y_3)/(4 pi), eps = {eps}, L = {L}, tail = {tail}; NaN after resolved_until",
        ),
        "time": Var(
            "time of each save",
            "1",
            "t of each save (NaN after the band limit stops resolving the solve)",
        ),
        "mass": Var("total mass", "1", "integral of rho over S^2 (1 to round-off)"),
        "fastest_rate": Var(
            "fastest linear rate r",
            "1/time",
            "max over degrees of the growth rate about the uniform state",
        ),
        "resolved_until": Var(
            "resolved until", "1", "last save time at which band L = {L} resolves the solve"
        ),
        "growth_rate": Var(
            "growth rate by linear response",
            "1/time",
            "rate of the solver's tangent (forward mode) about the uniform state, band rate_L = {rate_L}",
        ),
        "growth_rate_theory": Var(
            "growth rate (theory)",
            "1/time",
            "l(l+1) i_l(beta)/(beta i_0(beta)) (SA) or l(l+1) i_l(beta)/beta (USA)",
        ),
        "growth_rate_rel_error": Var(
            "relative error of the growth rate",
            "1",
            "|growth_rate - growth_rate_theory| / growth_rate_theory",
        ),
        "mmd": Var(
            "MMD, particles to PDE",
            "1",
            "MMD with kernel exp(kappa <x, y>), kappa = {kappa}, between N particles and the PDE density (pvp_beta = {pvp_beta}, SA, pvp_L = {pvp_L}); one value per seed",
        ),
        "rho_pvp": Var(
            "initial density (particles vs PDE)",
            "1/sr",
            "the band-limited start the particles are sampled from",
        ),
    }
    Config = SphereConfig

    def steps(self, cfg):
        return [
            *_map_steps(cfg),
            Step("growth rates"),
            Step("pde"),
            *(Step(f"particles N={n}", {"n": n}) for n in cfg.ns),
        ]

    def run_step(self, cfg, step, done):
        name = step.name
        if "form" in step.params:
            return self._maps(cfg, step.params["form"], float(step.params["beta"]))
        if name == "growth rates":
            return self._rates(cfg)
        if name == "pde":
            return self._pde(cfg)
        return self._particles(cfg, step.params["n"], done["pde"])

    def _maps(self, cfg, form, beta):
        """One map run: efolds / (fastest rate) long, n_save saves, NaN after the band limit fails."""
        pde = SphereMeanField(cfg.L, beta=beta, form=form, tail=cfg.tail)
        rate = float(pde.linear_rate_bound())
        ts = np.linspace(0.0, cfg.efolds / rate, cfg.n_save)
        rho0 = (1.0 + cfg.eps * _degree3(pde, cfg.seed)) / (4 * np.pi)
        sol = pde.solve(rho0, jnp.asarray(ts), throw=False)
        rho = np.asarray(sol.rho)
        ok = np.isfinite(rho).reshape(len(ts), -1).all(1)
        last = int(np.flatnonzero(ok)[-1])
        mass = np.array([float(pde.mass(r)) if k else np.nan for r, k in zip(rho, ok)])
        dirac = np.array([float(pde.dirac_distance(r)) if k else np.nan for r, k in zip(rho, ok)])
        return {
            "rho": rho,
            "time": ts,
            "fastest_rate": rate,
            "resolved_until": ts[last],
            "mass": mass,
            "dirac_distance": dirac,
        }

    def _rates(self, cfg):
        """Linear response: the tangent of the solve at the uniform state along all degrees at
        once (independent in the linearised dynamics), projected onto each Y_lm after 10 / (fastest
        rate) (as in tests/test_pde_sphere.py)."""
        ells = list(range(1, cfg.ell_max + 1))
        measured = np.zeros((len(FORMS), len(cfg.betas), len(ells), 2))
        theory = np.zeros((len(FORMS), len(cfg.betas), len(ells)))
        pairs = [(ell, m) for ell in ells for m in (0, ell)]
        for i, form in enumerate(FORMS):
            for j, b in enumerate(cfg.betas):
                pde = SphereMeanField(cfg.rate_L, beta=b, form=form)
                tangent = sum(pde.harmonic(ell, m) for ell, m in pairs) / (4 * np.pi)
                T = 10.0 / float(pde.linear_rate_bound())
                c0, c1 = (np.asarray(c) for c in _linear_response(pde, tangent, jnp.asarray(T)))
                for k, ell in enumerate(ells):
                    for q, m in enumerate((0, ell)):
                        idx = (ell, cfg.rate_L - 1 + m)
                        measured[i, j, k, q] = np.log(abs(c1[idx]) / abs(c0[idx])) / T
                    theory[i, j, k] = sphere_growth_rate(ell, b, form=form)
        return {"measured": measured, "theory": theory}

    def _pde(self, cfg):
        """The PDE at L and 2L from the same rho_0 (degree 3 < L: the same function at both), saved
        at n_save times like the maps (a solve of the same band limit then reuses their compilation)."""
        out = {}
        ts = jnp.linspace(0.0, cfg.pvp_t1, cfg.n_save)
        for key, L in (("rho_l", cfg.pvp_L), ("rho_2l", 2 * cfg.pvp_L)):
            pde = SphereMeanField(L, beta=cfg.pvp_beta, tail=cfg.tail)
            out[key] = np.asarray(pde.solve(_pvp_rho0(pde), ts).rho[-1])
        out["rho0"] = np.asarray(_pvp_rho0(SphereMeanField(cfg.pvp_L)))
        out["l_vs_2l"] = float(
            density_mmd_between(
                jnp.asarray(out["rho_l"]), jnp.asarray(out["rho_2l"]), kappa=cfg.kappa
            )
        )
        return out

    def _particles(self, cfg, n, pde_out):
        """n_seeds samples of n particles from rho_0, evolved to pvp_t1; MMD to the PDE at 0 and t1."""
        backend = mf.kernel.Chunked(2048) if n > DENSE_MAX else None
        attn = mf.Attention(cfg.pvp_beta, backend=backend)
        rho0, rho_l, rho_2l = (jnp.asarray(pde_out[k]) for k in ("rho0", "rho_l", "rho_2l"))
        ts = jnp.array([0.0, cfg.pvp_t1])

        @jax.jit
        def one(key):
            x0 = density_to_particles(key, rho0, n)
            x1 = mf.simulate(attn, x0, ts, rtol=cfg.rtol, atol=cfg.atol).final
            return jnp.stack(
                [
                    density_mmd(x0, rho0, kappa=cfg.kappa),
                    density_mmd(x1, rho_l, kappa=cfg.kappa),
                    density_mmd(x1, rho_2l, kappa=cfg.kappa),
                ]
            )

        keys = [
            jax.random.fold_in(jax.random.key(cfg.seed), 1000 * n + s) for s in range(cfg.n_seeds)
        ]
        return {"mmd": np.stack([np.asarray(one(k)) for k in keys], -1)}  # (3, seed)

    def step_dataset(self, cfg, results):
        maps = [results[st.name] for st in _map_steps(cfg)]
        nb = len(cfg.betas)
        shape = (len(FORMS), nb)
        stack = lambda key: np.stack([m[key] for m in maps]).reshape(shape + np.shape(maps[0][key]))  # noqa: E731
        rates = results["growth rates"]
        mmd = np.stack([results[f"particles N={n}"]["mmd"] for n in cfg.ns])  # (n, 3, seed)
        ns = np.asarray(cfg.ns, float)
        mean_t1 = mmd[:, 1].mean(-1)
        slope = float(np.polyfit(np.log(ns), np.log(mean_t1), 1)[0])
        pde = results["pde"]
        ells = np.arange(1, cfg.ell_max + 1)
        rel = np.abs(rates["measured"] / rates["theory"][..., None] - 1)
        s = np.linspace(0.0, cfg.efolds, cfg.n_save)
        L2 = cfg.pvp_L
        ds = xr.Dataset(
            {
                "rho": (("form", "beta", "efold", "theta", "phi"), stack("rho")),
                "time": (("form", "beta", "efold"), stack("time")),
                "mass": (("form", "beta", "efold"), stack("mass")),
                "dirac_distance": (("form", "beta", "efold"), stack("dirac_distance")),
                "fastest_rate": (("form", "beta"), stack("fastest_rate")),
                "resolved_until": (("form", "beta"), stack("resolved_until")),
                "growth_rate": (("form", "beta", "ell", "m_kind"), rates["measured"]),
                "growth_rate_theory": (("form", "beta", "ell"), rates["theory"]),
                "growth_rate_rel_error": (("form", "beta", "ell", "m_kind"), rel),
                "mmd": (("n", "stage", "seed_index"), mmd),
                "rho_pvp": (("pvp_theta", "pvp_phi"), pde["rho_l"]),
            },
            coords={
                "form": list(FORMS),
                "beta": list(cfg.betas),
                "efold": s,
                "theta": np.asarray(SphereMeanField(cfg.L).theta),
                "phi": np.asarray(SphereMeanField(cfg.L).phi),
                "ell": ells,
                "m_kind": ["m=0", "m=l"],
                "n": list(cfg.ns),
                "stage": ["t=0", f"t={cfg.pvp_t1:g}, L={L2}", f"t={cfg.pvp_t1:g}, L={2 * L2}"],
                "seed_index": np.arange(cfg.n_seeds),
                "pvp_theta": np.asarray(SphereMeanField(L2).theta),
                "pvp_phi": np.asarray(SphereMeanField(L2).phi),
            },
        )
        ds.attrs["fitted_slope_at_t1"] = slope
        ds.attrs["pde_l_vs_2l"] = float(pde["l_vs_2l"]) / float(mean_t1[-1])
        ds.attrs["growth_rate_max_rel_error"] = float(rel.max())
        return ds

    def plot(self, ds, outdir):
        return [
            self._plot_maps(ds, outdir),
            self._plot_rates(ds, outdir),
            self._plot_particles(ds, outdir),
        ]

    def _plot_maps(self, ds, outdir):
        p = plt()
        cfg = self.Config.from_attrs(ds)
        lon = np.where(ds.phi.values > np.pi, ds.phi.values - 2 * np.pi, ds.phi.values)
        order = np.argsort(lon)
        lat = np.pi / 2 - ds.theta.values
        rows = [(f, b) for f in ds.form.values for b in ds.beta.values]
        fig = p.figure(figsize=(13.5, 2.3 * len(rows)))
        grid = fig.add_gridspec(
            len(rows),
            5,
            width_ratios=[1, 1, 1, 1, 0.035],
            left=0.12,
            right=0.95,
            top=0.95,
            bottom=0.02,
            wspace=0.08,
            hspace=0.3,
        )
        for r, (form, b) in enumerate(rows):
            one = ds.sel(form=form, beta=b)
            rho = one.rho.values * 4 * np.pi
            ok = np.flatnonzero(np.isfinite(rho).reshape(len(rho), -1).all(1))
            picks = ok[np.round(np.linspace(0, len(ok) - 1, 4)).astype(int)]
            vmax = np.nanmax(rho[picks])
            for c, k in enumerate(picks):
                ax = fig.add_subplot(grid[r, c], projection="mollweide")
                im = ax.pcolormesh(
                    lon[order],
                    lat,
                    rho[k][:, order],
                    shading="auto",
                    cmap="magma",
                    vmin=0,
                    vmax=vmax,
                )
                ax.set_xticklabels([])
                ax.set_yticklabels([])
                ax.grid(alpha=0.2)
                ax.set_title(
                    f"t = {float(one.time.values[k]):.3g}  (max {rho[k].max():.2f})", fontsize=8
                )
                if c == 0:
                    ax.text(
                        -0.08,
                        0.5,
                        f"{form}, $\\beta$ = {b:g}\nresolved to t = {float(one.resolved_until):.3g}",
                        transform=ax.transAxes,
                        ha="right",
                        va="center",
                        fontsize=9,
                    )
            fig.colorbar(im, cax=fig.add_subplot(grid[r, 4]), label="$4\\pi\\rho$")
        fig.suptitle(
            f"mean-field density on $S^2$ (L = {cfg.L}), $\\rho_0 = (1 + {cfg.eps:g}\\,Y_3)/4\\pi$: "
            f"each row runs {cfg.efolds:g} e-foldings of its fastest mode, shown up to where L resolves it",
            fontsize=10,
        )
        path = Path(outdir) / "sphere-meanfield.png"
        save_figure(fig, path, dpi=90)
        return path

    def _plot_rates(self, ds, outdir):
        p = plt()
        fig, axes = p.subplots(1, 2, figsize=(10, 4.2), sharey=True)
        ells = ds.ell.values
        for ax, form in zip(axes, ds.form.values):
            for j, b in enumerate(ds.beta.values):
                colour = f"C{j}"
                th = ds.growth_rate_theory.sel(form=form, beta=b).values
                ax.plot(ells, th, "-", color=colour, lw=1, label=f"$\\beta$ = {b:g}: closed form")
                for q, marker in zip(ds.m_kind.values, ("o", "x")):
                    ax.plot(
                        ells,
                        ds.growth_rate.sel(form=form, beta=b, m_kind=q).values,
                        marker,
                        color=colour,
                        ms=6 if marker == "o" else 8,
                        mfc="none",
                        label=f"solver, {q}" if j == 0 else None,
                    )
            ax.set_yscale("log")
            ax.set_xlabel("degree $\\ell$")
            ax.set_title(
                f"{form}: growth rate of $Y_{{\\ell m}}$ about the uniform state", fontsize=10
            )
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
        axes[0].set_ylabel("rate")
        fig.suptitle(
            f"linear response of SphereMeanField against $\\ell(\\ell+1) i_\\ell(\\beta)/\\beta$ (/ $i_0$ for SA): "
            f"max relative error {ds.attrs['growth_rate_max_rel_error']:.1e}",
            fontsize=10,
        )
        fig.tight_layout()
        path = Path(outdir) / "sphere-meanfield-rates.png"
        save_figure(fig, path, dpi=110)
        return path

    def _plot_particles(self, ds, outdir):
        p = plt()
        fig, ax = p.subplots(figsize=(6, 4.6))
        ns = ds.n.values
        for k, marker in zip(range(3), ("s", "o", "x")):
            w = ds.mmd.isel(stage=k).values
            ax.errorbar(
                ns,
                w.mean(-1),
                yerr=w.std(-1),
                marker=marker,
                capsize=3,
                label=str(ds.stage.values[k]),
                ls="-" if k < 2 else ":",
            )
        ref = ds.mmd.isel(stage=1).values.mean(-1)
        ax.plot(ns, ref[0] * (ns / ns[0]) ** -0.5, "k--", lw=1, label="$N^{-1/2}$")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("N particles")
        ax.set_ylabel("MMD to the PDE density")
        cfg = self.Config.from_attrs(ds)
        ax.set_title(
            f"particles vs SphereMeanField (SA, $\\beta$ = {cfg.pvp_beta:g}): fitted slope "
            f"{ds.attrs['fitted_slope_at_t1']:.2f}\nPDE at L vs 2L: {100 * ds.attrs['pde_l_vs_2l']:.1g}% "
            f"of the distance at N = {ns[-1]}",
            fontsize=9,
        )
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = Path(outdir) / "sphere-meanfield-particles.png"
        save_figure(fig, path, dpi=110)
        return path
