"""Causal attention as a kinetic equation over (sequence position s, state theta), and the
position-influence profile that turns U-shaped (lost in the middle).

``kinetic-causal`` runs, for each beta, two things with the same solver
([`meanfield.pde.KineticMeanField`][meanfield.pde.KineticMeanField], causal ALiBi coupling of slope ``lam`` in s units, SA):

* the density f(t, s, theta) from a twisted start (row s concentrated, von Mises ``kappa``,
  around the angle ``twist * s``): causal tokens are dragged towards the first ones;
* the linearised correlation c(t, s) of the last position with every initial position,
  around the untwisted von Mises(``kappa``) state: the tangent of the solver along a rotation of
  each initial row (forward mode, carried chunk by chunk with the state), binned into ``bins``
  equal bins of s. Its U-shape onset (first decreasing, then increasing in s) is reported next
  to the linear theory about the uniform state, tau* / lambda_1(beta)
  (``meanfield.theory.causal_mode_propagator``), its kappa -> 0 limit.

    meanfield run kinetic-causal [--set betas=1,2,3 lam=1 kappa=1]

Convention: this project's SA (softmax over content and positions together, V = I, self weight
1/2), whose mode-n rate n^2 I_n(beta) / (beta I_0(beta)) falls with beta, so the U-shape onset
rises with beta (onset x the SA mode-1 rate is about constant). The kinetic paper's convention
(strictly causal, positions normalised per row, USA content, V = beta I; rates n^2 I_n(beta), so
its times fall with beta) is the ``kinetic-tcrit`` preset.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from meanfield import theory
from meanfield.influence import bin_profile, is_u_shaped, u_shape_onset
from meanfield.pde import CausalCoupling, KineticMeanField
from meanfield.run import TracedPreset, RunConfig, Var, register

from ._common import first_point, midpoints, plt, save_figure


@dataclasses.dataclass(frozen=True)
class KineticConfig(RunConfig):
    n_s: int = 64
    """rows in s (cell centres (k + 1/2)/S)"""
    m: int = 128
    """cells in theta"""
    betas: tuple[float, ...] = (1.0, 2.0, 3.0)
    lam: float = 1.0
    """ALiBi slope in units of s: weight e^{-lam (s - s')}"""
    kappa: float = 1.0
    """initial concentration (von Mises) of every row"""
    twist: float = 4.71238898
    """initial mean angle twist * s of the density run (3 pi / 2)"""
    t_early: float = 1.0
    """fine save times on [0, t_early] (where the U-shape appears) ..."""
    n_early: int = 51
    t1: float = 12.0
    """... then coarse ones up to t1"""
    n_late: int = 12
    bins: int = 16
    """bins of s for the influence profile (must divide n_s)"""
    cfl: float = 0.4
    """fixed step dt = cfl * 2 pi / m (SA speeds are <= 1)"""
    chunks: int = 4

    ranges = {
        "chunks": "[1, n_early + n_late - 1]",
        "n_s": "[bins, 4096], multiple of bins",
        "m": "[8, 8192]",
        "betas": "(0, 100], distinct",
        "lam": "[0, 1e4]",
        "kappa": "[0, 1e4]",
        "twist": "[-1e4, 1e4]",
        "t_early": "(0, t1)",
        "n_early": "[max(3, chunks + 1 - n_late), 100000]",
        "t1": "(t_early, 1e6]",
        "n_late": "[max(1, chunks + 1 - n_early), 100000]",
        "bins": "[3, n_s], divides n_s",
        "cfl": "(0, 0.5]",
    }


def _pde(cfg, beta):
    return KineticMeanField(cfg.n_s, cfg.m, beta=beta, coupling=CausalCoupling(lam=cfg.lam))


@register
class KineticCausal(TracedPreset):
    name = "kinetic-causal"
    tiny = (
        "n_s=16",
        "m=16",
        "betas=1,2",
        "bins=8",
        "t_early=1",
        "n_early=6",
        "t1=1.5",
        "n_late=2",
        "chunks=2",
    )
    slow = True
    outputs = frozenset({"f", "influence", "time", "u_onset"})
    description = "causal kinetic PDE f(t, s, theta) with ALiBi decay; influence profile over s turning U-shaped"
    variables = {
        "s": Var(
            "relative position s",
            "1",
            "row s_k = (k + 1/2) / S of the kinetic density, S = n_s = {n_s}",
        ),
        "theta": Var("angle theta", "rad", "cell centre on the circle, M = m = {m} cells"),
        "s_bin": Var(
            "relative position (bin centre)", "1", "centres of the bins = {bins} bins of s"
        ),
        "f": Var(
            "kinetic density f(t, s, theta)",
            "1/rad",
            "conditional density of the angle of the tokens at position s (each row integrates to 1); causal ALiBi lam = {lam}, this project's SA convention",
        ),
        "influence": Var(
            "influence of position s on the last token",
            "1",
            "linearised correlation c(t, s) of the last row's mean angle with a rotation of row s (forward mode), about von Mises(kappa = {kappa})",
        ),
        "influence_binned": Var(
            "influence (binned)", "1", "influence averaged over bins = {bins} bins of s"
        ),
        "u_shaped": Var(
            "U-shaped profile",
            "1",
            "1 where the binned profile is higher at both ends than in the middle, else 0",
        ),
        "influence_sum": Var(
            "total influence",
            "1",
            "sum_k w_k c(t, s_k) (exactly 1: rotating every row rotates the output)",
        ),
        "u_onset": Var(
            "U-shape onset time",
            "1",
            "first time the profile turns U-shaped (influence.u_shape_onset)",
        ),
        "u_onset_linear_theory": Var(
            "U-shape onset (linear theory)",
            "1",
            "the same onset from the causal mode propagator about the uniform state",
        ),
        "mass": Var("mass per row", "1", "integral of f over theta in each row (1 to round-off)"),
    }
    Config = KineticConfig
    vmap_keys = ("seed",)

    def times(self, cfg):
        early = np.linspace(0.0, cfg.t_early, cfg.n_early)
        late = np.linspace(cfg.t_early, cfg.t1, cfg.n_late + 1)[1:]
        return np.concatenate([early, late])

    def init(self, cfg, p):
        out = {"f": [], "base": [], "tan": []}
        for beta in cfg.betas:
            pde = _pde(cfg, beta)
            out["f"].append(pde.von_mises(cfg.kappa, cfg.twist * pde.s))
            out["base"].append(pde.von_mises(cfg.kappa))
            # d f0 / d delta_k: rotating row k of vM(kappa) by delta_k
            d = jax.jacfwd(lambda dl, pde=pde: pde.von_mises(cfg.kappa, dl))(
                jnp.zeros(cfg.n_s)
            )  # (S, M, S)
            out["tan"].append(jnp.moveaxis(d, -1, 0))
        return {k: jnp.stack(v) for k, v in out.items()}

    def _influence(self, cfg, base, tan):
        """c(s_k) = (1/w_k) d phi_last / d delta_k from the tangents (S, S, M) of the base state."""
        th = (jnp.arange(cfg.m) + 0.5) * 2 * jnp.pi / cfg.m
        last, dlast = base[-1], tan[:, -1]
        cx, sx = jnp.sum(jnp.cos(th) * last), jnp.sum(jnp.sin(th) * last)
        dcx, dsx = dlast @ jnp.cos(th), dlast @ jnp.sin(th)
        return (cx * dsx - sx * dcx) / (cx**2 + sx**2) * cfg.n_s  # d atan2(sx, cx), / w = 1/S

    def record(self, cfg, p, state):
        infl = jnp.stack([self._influence(cfg, b, t) for b, t in zip(state["base"], state["tan"])])
        return {"f": state["f"][None], "influence": infl[None]}

    def advance(self, cfg, p, state, ts):
        dt = cfg.cfl * 2 * np.pi / cfg.m
        new = {"f": [], "base": [], "tan": []}
        recs = {"f": [], "influence": []}
        for i, beta in enumerate(cfg.betas):
            pde = _pde(cfg, beta)

            def run(f0, pde=pde):
                return pde.solve(f0, ts, dt=dt, adjoint=diffrax.ForwardMode()).f[1:]

            fs = run(state["f"][i])
            base, tans = jax.vmap(
                lambda t: jax.jvp(run, (state["base"][i],), (t,)), out_axes=(None, 0)
            )(state["tan"][i])
            new["f"].append(fs[-1])
            new["base"].append(base[-1])
            new["tan"].append(tans[:, -1])
            recs["f"].append(fs)
            recs["influence"].append(
                jax.vmap(lambda b, t: self._influence(cfg, b, t), in_axes=(0, 1))(base, tans)
            )
        new = {k: jnp.stack(v) for k, v in new.items()}
        return new, {k: jnp.stack(v, axis=1) for k, v in recs.items()}  # (L, beta, ...)

    def dataset(self, cfg, ts, recs, grid):
        g = grid.keys
        f = recs["f"]  # (*grid, time, beta, S, M)
        infl = recs["influence"]  # (*grid, time, beta, S)
        binned = bin_profile(infl / cfg.n_s, cfg.bins)  # masses per bin
        onset = np.zeros(binned.shape[:-3] + (len(cfg.betas),))
        for idx in np.ndindex(onset.shape):
            *gi, bi = idx
            onset[idx] = u_shape_onset(ts, binned[tuple(gi) + (slice(None), bi)])
        lin_ts = np.linspace(0.0, cfg.t_early, 4 * (cfg.n_early - 1) + 1)
        lin = np.array(
            [
                u_shape_onset(
                    lin_ts,
                    bin_profile(
                        np.array(
                            [
                                theory.causal_mode_propagator(t, 1, b, cfg.lam, cfg.n_s)[-1]
                                for t in lin_ts
                            ]
                        ),
                        cfg.bins,
                    ),
                )
                for b in cfg.betas
            ]
        )
        s = midpoints(cfg.n_s)
        theta = (np.arange(cfg.m) + 0.5) * 2 * np.pi / cfg.m
        ds = xr.Dataset(
            {
                "f": (g + ("time", "beta", "s", "theta"), f),
                "influence": (g + ("time", "beta", "s"), infl),
                "influence_binned": (g + ("time", "beta", "s_bin"), binned),
                "u_shaped": (g + ("time", "beta"), is_u_shaped(binned)),
                "influence_sum": (g + ("time", "beta"), binned.sum(-1)),
                "u_onset": (g + ("beta",), onset),
                "u_onset_linear_theory": (("beta",), lin),
                "mass": (g + ("time", "beta", "s"), f.sum(-1) * 2 * np.pi / cfg.m),
            },
            coords={
                "time": ts,
                "beta": list(cfg.betas),
                "s": s,
                "theta": theta,
                "s_bin": midpoints(cfg.bins),
                **grid.coords(),
            },
        )
        ds.attrs["influence_definition"] = (
            "c(t, s) = (1/w(s)) d phi_last(t) / d delta(s): response of the last row's mean angle to a "
            "rotation of initial row s, around von Mises(kappa) rows; binned as masses per s-bin. "
            "influence_sum = 1 exactly in the continuum (rotation invariance); it drifts from 1 once the base "
            "state has collapsed to a few cells (the grid is not rotation invariant): trust c only where it is ~1"
        )
        return ds

    def plot(self, ds, outdir):
        one = first_point(ds)
        cfg = self.Config.from_attrs(ds)
        p = plt()
        betas = one.beta.values
        nb = len(betas)
        fig = p.figure(figsize=(4.0 * max(nb, 4), 7.8))
        bsel = betas[min(1, nb - 1)]
        ts = one.time.values
        snap = [
            0,
            int(np.searchsorted(ts, cfg.t_early)),
            int(np.searchsorted(ts, 0.4 * ts[-1])),
            len(ts) - 1,
        ]
        ncol = max(nb, 4)
        for j, ti in enumerate(snap):
            ax = fig.add_subplot(2, ncol, j + 1)
            ax.pcolormesh(
                one.theta.values,
                one.s.values,
                one.f.sel(beta=bsel).isel(time=ti).values,
                shading="auto",
                cmap="magma",
            )
            ax.set_title(f"f(s, $\\theta$), $\\beta$ = {bsel:g}, t = {ts[ti]:.2f}", fontsize=9)
            ax.set_xlabel("$\\theta$")
            ax.set_ylabel("position s")
        cmap = p.get_cmap("viridis")
        early = ts[(ts > 0) & (ts <= cfg.t_early)]
        pick = early[:: max(1, len(early) // 8)]
        for j, b in enumerate(betas):
            ax = fig.add_subplot(2, ncol, ncol + j + 1)
            prof = one.influence_binned.sel(beta=b)
            t_on = float(one.u_onset.sel(beta=b))
            for k, t in enumerate(pick):
                q = prof.sel(time=t).values[:-1]
                ax.plot(
                    one.s_bin.values[:-1],
                    q / q.mean(),
                    color=cmap(k / len(pick)),
                    lw=1.2,
                    ls="-" if t >= t_on else "--",
                    label=f"t = {t:.2f}",
                )
            ax.set_title(
                f"$\\beta$ = {b:g}: U-shape from t = {t_on:.3f}\n(linear theory about uniform: "
                f"{float(one.u_onset_linear_theory.sel(beta=b)):.3f})",
                fontsize=9,
            )
            ax.set_xlabel("input position s (bins; last bin = recency, off scale)")
            ax.set_ylabel("influence on last token / its mean")
            if j == 0:
                ax.legend(fontsize=7)
        ax = fig.add_subplot(2, ncol, 2 * ncol)
        for j, b in enumerate(betas):
            prof = one.influence_binned.sel(beta=b).values
            sel = (ts > 0) & (ts <= cfg.t_early)
            early = prof[
                sel
            ]  # t = 0 is left out: the profile is then zero away from the target (0/0)
            gap = (early[:, 0] - early[:, 1:-1].min(-1)) / early[:, :-1].mean(-1)
            (line,) = ax.plot(ts[sel], gap, label=f"$\\beta$ = {b:g}")
            ax.axvline(float(one.u_onset.sel(beta=b)), color=line.get_color(), lw=0.8)
            ax.axvline(
                float(one.u_onset_linear_theory.sel(beta=b)), color=line.get_color(), lw=0.8, ls=":"
            )
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xlabel("t")
        ax.set_ylabel("(first bin - interior min) / mean")
        ax.set_title("U-shape gap (> 0: U shaped)\nsolid: onset, dotted: linear theory", fontsize=9)
        ax.legend(fontsize=7)
        fig.suptitle(
            f"causal kinetic PDE, ALiBi $\\lambda$ = {cfg.lam:g}, von Mises $\\kappa$ = {cfg.kappa:g}, "
            f"S = {cfg.n_s}, M = {cfg.m} (dashed: not yet U-shaped)",
            fontsize=10,
        )
        fig.tight_layout()
        path = Path(outdir) / "kinetic-causal.png"
        save_figure(fig, path, dpi=110)
        return [path]
