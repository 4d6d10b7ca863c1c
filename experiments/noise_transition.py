"""The phase transition of the noisy USA dynamics on S^2 (Mun & Rosenzweig, arXiv 2606.05140), and
synchronisation by common noise alone (Engel & Shalova, arXiv 2603.06187).

``noise-transition`` makes one figure (``noise-transition.png``) and one dataset:

* one panel per beta of ``betas`` (one below and one above the tricritical beta_* = 1.8162 of d = 3):
  the order parameter R = |(1/N) sum_i x_i| against sigma / sigma_c, from
  - particles (Q = K = V = I, USA, ``n`` tokens, ``n_seeds`` independent runs): sigma swept up from a
    concentrated start and down from a uniform start, each stage ``t_stage`` long and starting
    from the previous stage's tokens, R averaged over the stage's second half; the Heun step is
    ``dt / max(1, beta)`` (the drift's stiffness grows with beta). The scheme's weak error lowers
    the effective noise by O(dt), so the
    particles' R sits above the theory by O(dt) (measured: 0.67 dt at beta = 1, 0.85 sigma_c), and
    the loop's upper edge moves past sigma_fold;
  - the S^2 density solver (``SphereMeanField`` with ``sigma=``, band limit ``L``) at each sigma,
    from a concentrated start (exp(3 cos theta)) and from a perturbed uniform start, run to
    ``pde_t`` (NaN where the band limit cannot hold the concentrated state);
  - ``theory.stationary_branch`` (the zonal stationary states, solid where stable) and the uniform
    state (stable above sigma_c).
  Above beta_* the branch folds back to sigma_fold > sigma_c: between sigma_c and sigma_fold a
  concentrated start stays concentrated while the uniform state is stable too (the hysteresis
  loop of the up and down sweeps); below beta_* there is no such band.
* a last panel: common noise alone (no attention), Engel & Shalova's Random Quadratic Form
  (``Noise(common=c, model="rqf")``): the mean over token pairs of log sqrt(1 - <x_i, x_j>^2)
  against time, over ``sync_runs`` runs, against its exact mean, slope -c^2 at every angle
  (``theory.rqf_synchronisation_rate``), and the rotation-only control (``rotation=True``), which
  leaves every inner product unchanged.

    meanfield run noise-transition [--set betas=1,3 --set n=1024 --set n_seeds=4]
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

import meanfield as mf
from meanfield import observables as obs
from meanfield.pde import SphereMeanField
from meanfield.run import register, RunConfig, Step, StepPreset, Var
from meanfield.theory import (
    critical_noise,
    rqf_synchronisation_rate,
    stationary_branch,
    stationary_states,
    tricritical_beta,
)

from ._common import plt, save_figure

DIRECTIONS = ("up", "down")
STARTS = ("concentrated", "uniform")
MODELS = ("rqf", "rotation")


@dataclasses.dataclass(frozen=True)
class NoiseConfig(RunConfig):
    betas: tuple[float, ...] = (1.0, 3.0)
    """inverse temperatures (USA, d = 3): one below and one above beta_* = 1.816"""
    ratios: tuple[float, ...] = (0.85, 0.9, 0.95, 1.0, 1.03, 1.06, 1.1, 1.2)
    """noise levels sigma / sigma_c(beta), swept up and down"""
    n: int = 1024
    """tokens of each particle run"""
    n_seeds: int = 4
    """independent particle runs per sweep"""
    dt: float = 0.03
    """Heun step of the particles at beta <= 1; dt / beta above"""
    t_stage: float = 15.0
    """time spent at each noise level of a sweep"""
    n_avg: int = 9
    """saves per stage (R averaged over those in its second half)"""
    L: int = 16
    """band limit of the S^2 density solver"""
    tail: float = 1e-4
    """relative spectral tail energy at which a density counts as unresolved"""
    pde_t: float = 20.0
    """length of each density run"""
    common: float = 1.0
    """common-noise amplitude c of the synchronisation panel"""
    sync_n: int = 16
    """tokens of the synchronisation panel"""
    sync_runs: int = 128
    """independent common-noise paths"""
    sync_t1: float = 4.0
    """length of the synchronisation runs"""
    sync_dt: float = 0.005
    """Heun step of the synchronisation runs"""

    ranges = {
        "betas": "(0, 20], length >= 1, distinct",
        "ratios": "(0, 10], length >= 2, increasing",
        "n": "[2, 16384]",
        "n_seeds": "[1, 64]",
        "dt": "(0, 1]",
        "t_stage": "(0, 1e4]",
        "n_avg": "[2, 1000]",
        "L": "[8, 64]",
        "tail": "(0, 0.01]",
        "pde_t": "(0, 1e4]",
        "common": "(0, 10]",
        "sync_n": "[2, 4096]",
        "sync_runs": "[2, 1024]",
        "sync_t1": "[sync_dt, 100]",
        "sync_dt": "(0, sync_t1]",
    }


def _concentrated(key, n):
    """Tokens about the north pole: (e_3 + 0.3 g) / |e_3 + 0.3 g|, g standard normal (R ~ 0.9)."""
    x = jnp.array([0.0, 0.0, 1.0]) + 0.3 * jax.random.normal(key, (n, 3))
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def _sync_log_sine(xs):
    """Mean over token pairs i < j of log |x_i - <x_i, x_j> x_j| = log sqrt(1 - <x_i, x_j>^2), at
    each save: (T,). The projection keeps full precision for close pairs, where 1 - <x_i, x_j>^2
    would cancel below 1e-16."""
    g = jnp.einsum("tnd,tmd->tnm", xs, xs)
    iu = jnp.triu_indices(xs.shape[1], 1)
    r = xs[:, iu[0]] - g[:, iu[0], iu[1], None] * xs[:, iu[1]]
    return jnp.mean(jnp.log(jnp.linalg.norm(r, axis=-1)), -1)


@eqx.filter_jit
def _stage(attn, x, keys, sigmas, ts, dt):
    """One noise level of a sweep, for every seed: the final tokens and R at each save."""

    def one(x, key, sigma):
        xs = mf.simulate(attn, x, ts, noise=mf.Noise(sigma), key=key, dt=dt).xs
        return xs[-1], jax.vmap(obs.order_parameter)(xs)

    return jax.vmap(one)(x, keys, sigmas)


@register
class NoiseTransitionPreset(StepPreset):
    name = "noise-transition"
    tiny = (
        "ratios=0.9,1.1",
        "n=32",
        "n_seeds=2",
        "dt=0.05",
        "t_stage=1",
        "n_avg=3",
        "L=8",
        "tail=1e-2",
        "pde_t=0.5",
        "sync_n=8",
        "sync_runs=4",
        "sync_t1=1",
        "sync_dt=0.05",
    )
    slow = True
    outputs = frozenset(
        {"order_particles", "order_pde", "order_theory", "branch_order", "log_sine"}
    )
    description = (
        "noisy USA on S^2: R vs sigma swept up/down (particles, PDE, stationary states; hysteresis "
        "above beta_*) and synchronisation by common noise (Engel & Shalova)"
    )
    variables = {
        "beta": Var("inverse temperature beta", "1", "USA, Q = K = V = I, d = 3"),
        "ratio": Var("noise sigma / sigma_c", "1", "sigma_c = theory.critical_noise(beta, 3)"),
        "direction": Var(
            "sweep direction",
            "1",
            "up: increasing sigma from a concentrated start; down: decreasing sigma from a uniform start",
        ),
        "start": Var(
            "density solver start", "1", "exp(3 cos theta) or (1 + 0.05 cos theta), normalised"
        ),
        "state": Var("stable stationary state", "1", "by increasing R (NaN: none)"),
        "branch_point": Var("point of the continuation", "1", "NaN beyond the branch's end"),
        "model": Var("common-noise model", "1", "rqf (Engel & Shalova) or its rotation control"),
        "run": Var("common-noise path", "1", "independent runs"),
        "sync_time": Var("time", "1", "saves of the synchronisation runs"),
        "sigma": Var("noise sigma", "1", "sigma = ratio * sigma_c(beta)"),
        "sigma_c": Var("critical noise sigma_c", "1", "theory.critical_noise(beta, 3)"),
        "sigma_fold": Var(
            "fold of the stationary branch",
            "1",
            "largest sigma with a non-uniform stationary state (sigma_c below beta_*)",
        ),
        "order_particles": Var(
            "order parameter R, particles",
            "1",
            "|(1/N) sum x_i| averaged over the second half of the stage, N = {n}, one per seed",
        ),
        "order_pde": Var(
            "order parameter R, density solver",
            "1",
            "|int x drho| at t = pde_t = {pde_t}, SphereMeanField L = {L}; NaN: unresolved",
        ),
        "order_theory": Var(
            "order parameter R, stable stationary states",
            "1",
            "theory.stationary_states: the stable states' R (uniform: 0)",
        ),
        "branch_sigma": Var("sigma on the stationary branch", "1", "theory.stationary_branch"),
        "branch_order": Var("R on the stationary branch", "1", "theory.stationary_branch"),
        "branch_stable": Var("stable point of the branch", "1", "1: stable, 0: unstable"),
        "log_sine": Var(
            "mean log sin of the pair angle",
            "1",
            "mean over pairs of log sqrt(1 - <x_i, x_j>^2), {sync_n} tokens, common = {common}",
        ),
    }
    Config = NoiseConfig

    def steps(self, cfg):
        out = [
            Step(f"particles beta={b!r} {way}", {"beta": b, "dt": dt, "way": way})
            for b, dt in ((b, cfg.dt / max(1.0, b)) for b in cfg.betas)
            for way in DIRECTIONS
        ]
        out += [Step(f"pde beta={b!r}", {"beta": b}) for b in cfg.betas]
        return [*out, Step("theory"), Step("common noise")]

    def run_step(self, cfg, step, done):
        prm = step.params
        if step.name.startswith("particles"):
            return self._sweep(cfg, float(prm["beta"]), float(prm["dt"]), prm["way"])
        if step.name.startswith("pde"):
            return self._pde(cfg, float(prm["beta"]))
        if step.name == "theory":
            return self._theory(cfg)
        return self._common(cfg)

    def _sweep(self, cfg, beta, dt, way):
        """One sweep of sigma (up: from a concentrated start; down: from a uniform one), each stage
        starting from the previous stage's tokens, with its own key."""
        sigmas = np.asarray(cfg.ratios) * critical_noise(beta, 3)
        order = sigmas if way == "up" else sigmas[::-1]
        backend = mf.kernel.Chunked(2048) if cfg.n > 4096 else None
        attn = mf.Attention(jnp.asarray(beta), form="USA", backend=backend)  # traced: one compile
        ts = jnp.linspace(0.0, cfg.t_stage, cfg.n_avg)
        late = np.asarray(ts) >= cfg.t_stage / 2
        base = jax.random.fold_in(jax.random.key(cfg.seed), 0 if way == "up" else 1)
        seeds = jax.random.split(base, cfg.n_seeds)
        starts = jax.vmap(
            lambda k: _concentrated(k, cfg.n) if way == "up" else mf.sphere_uniform(k, cfg.n, 3)
        )
        x = starts(seeds)
        out = np.zeros((len(order), cfg.n_seeds))
        for k, s in enumerate(order):
            keys = jax.vmap(lambda kk: jax.random.fold_in(kk, k + 1))(seeds)
            x, r = _stage(attn, x, keys, jnp.full(cfg.n_seeds, s, x.dtype), ts, dt)
            out[k] = np.asarray(r)[:, late].mean(-1)
        return {"order": out if way == "up" else out[::-1]}

    def _pde(self, cfg, beta):
        """The density solver at each sigma from both starts; NaN where L cannot hold the state."""
        sc = critical_noise(beta, 3)
        out = np.full((len(cfg.ratios), len(STARTS)), np.nan)
        ts = jnp.array([0.0, cfg.pde_t])
        for i, r in enumerate(cfg.ratios):
            pde = SphereMeanField(
                cfg.L, beta=jnp.asarray(beta), form="USA", sigma=jnp.asarray(r * sc), tail=cfg.tail
            )
            cos = jnp.cos(pde.theta)[:, None] * jnp.ones((1, 2 * cfg.L - 1))
            for j, rho0 in enumerate((jnp.exp(3.0 * cos), 1.0 + 0.05 * cos)):
                sol = pde.solve(rho0 / pde.mass(rho0), ts, throw=False)
                out[i, j] = float(sol.order_parameter()[-1])
        return {"order": out}

    def _theory(self, cfg):
        """The stable stationary states at every sigma, and each beta's branch."""
        stable = np.full((len(cfg.betas), len(cfg.ratios), 2), np.nan)
        branches = []
        for i, b in enumerate(cfg.betas):
            sc = critical_noise(b, 3)
            for j, r in enumerate(cfg.ratios):
                rs = [s["order"] for s in stationary_states(b, r * sc, 3) if s["stable"]]
                stable[i, j, : len(rs)] = rs[:2]
            branches.append(stationary_branch(b, 3))
        m = max(len(br["sigma"]) for br in branches)
        pad = lambda key: np.stack(  # noqa: E731
            [
                np.pad(br[key].astype(float), (0, m - len(br[key])), constant_values=np.nan)
                for br in branches
            ]
        )
        return {
            "stable": stable,
            "branch_sigma": pad("sigma"),
            "branch_order": pad("order"),
            "branch_stable": pad("stable"),
            "sigma_c": np.array([br["sigma_c"] for br in branches]),
            "sigma_fold": np.array([br["sigma_fold"] for br in branches]),
        }

    def _common(self, cfg):
        """Common noise alone (attention off: V = 0): the RQF and its rotation control."""
        attn = mf.Attention(1.0, V=jnp.zeros((3, 3)))
        x0 = mf.sphere_uniform(jax.random.fold_in(jax.random.key(cfg.seed), 2), cfg.sync_n, 3)
        ts = jnp.linspace(0.0, cfg.sync_t1, 9)
        keys = jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed), 3), cfg.sync_runs)
        out = []
        for rotation in (False, True):
            noise = mf.Noise(0.0, common=cfg.common, model="rqf", rotation=rotation)
            run = jax.jit(
                jax.vmap(
                    lambda k, nz=noise: _sync_log_sine(
                        mf.simulate(attn, x0, ts, noise=nz, key=k, dt=cfg.sync_dt).xs
                    )
                )
            )
            out.append(np.asarray(run(keys)))
        return {"log_sine": np.stack(out), "time": np.asarray(ts)}

    def step_dataset(self, cfg, results):
        parts = np.stack(
            [
                np.stack([results[f"particles beta={b!r} {w}"]["order"] for w in DIRECTIONS], 1)
                for b in cfg.betas
            ]
        )  # (beta, ratio, direction, seed)
        pde = np.stack([results[f"pde beta={b!r}"]["order"] for b in cfg.betas])
        th = results["theory"]
        sync = results["common noise"]
        ts = sync["time"]
        # E[log s_t - log s_0] = -c^2 t exactly (theory.rqf_synchronisation_rate): the slope through
        # the origin of each run's change, over every save
        change = sync["log_sine"][0] - sync["log_sine"][0][:, :1]
        slopes = change @ ts / (ts @ ts)
        sig = np.asarray(cfg.ratios)[None, :] * th["sigma_c"][:, None]
        ds = xr.Dataset(
            {
                "order_particles": (("beta", "ratio", "direction", "seed_index"), parts),
                "order_pde": (("beta", "ratio", "start"), pde),
                "order_theory": (("beta", "ratio", "state"), th["stable"]),
                "sigma": (("beta", "ratio"), sig),
                "sigma_c": (("beta",), th["sigma_c"]),
                "sigma_fold": (("beta",), th["sigma_fold"]),
                "branch_sigma": (("beta", "branch_point"), th["branch_sigma"]),
                "branch_order": (("beta", "branch_point"), th["branch_order"]),
                "branch_stable": (("beta", "branch_point"), th["branch_stable"]),
                "log_sine": (("model", "run", "sync_time"), sync["log_sine"]),
            },
            coords={
                "beta": list(cfg.betas),
                "ratio": list(cfg.ratios),
                "direction": list(DIRECTIONS),
                "seed_index": np.arange(cfg.n_seeds),
                "start": list(STARTS),
                "state": ["first", "second"],
                "branch_point": np.arange(th["branch_sigma"].shape[1]),
                "model": list(MODELS),
                "run": np.arange(cfg.sync_runs),
                "sync_time": ts,
            },
        )
        ds.attrs["beta_star"] = tricritical_beta(3)
        ds.attrs["sync_rate_theory"] = rqf_synchronisation_rate(cfg.common, 3)
        ds.attrs["sync_rate_measured"] = float(-slopes.mean())
        ds.attrs["sync_rate_se"] = float(slopes.std(ddof=1) / np.sqrt(len(slopes)))
        return ds

    def plot(self, ds, outdir):
        p = plt()
        cfg = self.Config.from_attrs(ds)
        nb = len(ds.beta)
        fig, axes = p.subplots(1, nb + 1, figsize=(4.6 * (nb + 1), 4.8))
        for ax, b in zip(axes, ds.beta.values):
            one = ds.sel(beta=b)
            sc = float(one.sigma_c)
            bs, bo, st = (one[k].values for k in ("branch_sigma", "branch_order", "branch_stable"))
            ok = np.isfinite(bs)
            bs, bo, st = bs[ok] / sc, bo[ok], st[ok] > 0.5
            ax.plot(bs, np.where(st, bo, np.nan), "k-", lw=1.2, label="stationary states (stable)")
            ax.plot(bs, np.where(st, np.nan, bo), "k--", lw=0.8, label="(unstable)")
            lo, hi = ds.ratio.values[0], ds.ratio.values[-1]
            ax.plot([1, hi], [0, 0], "k-", lw=1.2)
            ax.plot([lo, 1], [0, 0], "k--", lw=0.8)
            for w, colour, marker in (("up", "C3", "^"), ("down", "C0", "v")):
                r = one.order_particles.sel(direction=w).values
                se = r.std(-1, ddof=1) / np.sqrt(r.shape[-1]) if r.shape[-1] > 1 else 0 * r[:, 0]
                ax.errorbar(
                    ds.ratio.values,
                    r.mean(-1),
                    yerr=se,
                    color=colour,
                    marker=marker,
                    ls=":",
                    capsize=2,
                    label=f"particles, sigma swept {w}",
                )
            for s, colour in zip(STARTS, ("C3", "C0")):
                ax.plot(
                    ds.ratio.values,
                    one.order_pde.sel(start=s).values,
                    "s",
                    mfc="none",
                    color=colour,
                    ms=9,
                    label=f"density solver, {s} start",
                )
            kind = "above" if b > ds.attrs["beta_star"] else "below"
            ax.set_title(
                f"$\\beta$ = {b:g} ({kind} $\\beta_*$ = {ds.attrs['beta_star']:.3f}): "
                f"$\\sigma_{{fold}}/\\sigma_c$ = {float(one.sigma_fold) / sc:.3f}",
                fontsize=9,
            )
            ax.set_xlabel("$\\sigma / \\sigma_c$")
            ax.set_ylabel("order parameter R")
            ax.set_xlim(lo - 0.03, hi + 0.03)
            ax.set_ylim(-0.03, 1.0)
            ax.grid(alpha=0.3)
        ax = axes[-1]
        t = ds.sync_time.values
        for m, colour in zip(ds.model.values, ("C2", "C7")):
            v = ds.log_sine.sel(model=m).values
            se = v.std(0, ddof=1) / np.sqrt(v.shape[0])
            label = "RQF common noise" if m == "rqf" else "rotation only (control)"
            ax.errorbar(
                t, v.mean(0), yerr=se, color=colour, marker="o", ms=4, capsize=2, label=label
            )
        v0 = ds.log_sine.sel(model="rqf").values.mean(0)
        rate = ds.attrs["sync_rate_theory"]
        ax.plot(t, v0[0] - rate * t, "k--", lw=1, label=f"exact mean: slope $-c^2$ = {-rate:g}")
        ax.set_xlabel("time")
        ax.set_ylabel("mean over pairs of log $\\sqrt{1 - \\langle x_i, x_j\\rangle^2}$")
        ax.set_title(
            f"common noise alone, c = {cfg.common:g}: measured rate "
            f"{ds.attrs['sync_rate_measured']:.3f} ± {ds.attrs['sync_rate_se']:.3f}",
            fontsize=9,
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        dts = ", ".join(f"{cfg.dt / max(1.0, b):.3g}" for b in cfg.betas)
        fig.suptitle(
            f"noisy USA on $S^2$: particles N = {cfg.n}, {cfg.n_seeds} seeds, {cfg.t_stage:g} time "
            f"units per noise level, Heun dt = {dts} (weak order 1: bias ~ dt); density solver "
            f"L = {cfg.L}",
            fontsize=10,
        )
        handles, labels = axes[0].get_legend_handles_labels()
        fig.tight_layout(rect=(0, 0.1, 1, 1))
        fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
        path = Path(outdir) / "noise-transition.png"
        save_figure(fig, path, dpi=100)
        return [path]
