r"""The kinetic paper's critical time t_crit (Duerinckx, Geshkovski & Rossi 2026) from four solvers.

The model, as the paper states it (N tokens on the circle, target = the last token):

    dtheta_j/dt = sum_{k<j} w_jk (-beta sin(theta_j - theta_k) e^{beta cos(theta_j - theta_k)}),
    w_jk = e^{-(lam/N)(j - k)} / sum_{k'<j} e^{-(lam/N)(j - k')}

(strictly causal, positional weights normalised per row, content factor not normalised: USA with
V = beta I). About the uniform state mode n grows at a_n = n^2 I_n(beta), and the retrieval profile
of the last token over the source position s in (0, 1) is
S_t(s) = sum_n omega_{n,M} g_{a_n}(t; s), omega_{n,M} = exp(-pi^2 n^2 / (2 M^2)); t_crit is where
its right-end slope turns negative: the END of the U-shaped (primacy + recency) regime.

``kinetic-tcrit`` computes, for each beta:

* ``tcrit_closed``: the closed form 2 (1 - e^{-lam}) sum omega a / sum omega a^2
  ([`meanfield.theory.kinetic_tcrit`][meanfield.theory.kinetic_tcrit]), also on a fine beta grid for the figure;
* ``tcrit_propagator``: the discrete propagator exp(t a_n C~) on S = ``sizes`` rows (cell
  centres s_k = (k + 1/2)/S), its right-end slope from the last two off-diagonal entries: the
  O(1/S) convergence to the closed form;
* ``tcrit_pde``: the kinetic finite-volume solver ([`meanfield.pde.KineticMeanField.paper_model`][meanfield.pde.kinetic.KineticMeanField.paper_model],
  ``pde_s`` rows, ``pde_m`` theta cells), the same slope of its multi-mode linear response
  (one VJP per mode and time about the uniform state);
* ``tcrit_particles``: N = ``n_particles`` tokens under the paper's model through the particle
  engine (``PositionNormalized(Causal(strict=True) & ALiBi(lam / N))``, USA, V = beta I), the
  profile S^N_t(s_k) = N sum_n omega_n Re E[e^{i n theta_N(t)} e^{-i n theta_k(0)}] estimated by
  integration by parts over the uniform initial angles (one VJP per run,
  [`meanfield.influence.circle_retrieval_profile`][meanfield.influence.circle_retrieval_profile]), binned into ``bins`` bins of s; its
  right-end slope is the difference of the last two bins (the target itself excluded). The same
  binned statistic of the discrete propagator at S = N is ``tcrit_binned_reference``: the particle
  estimate should match that one (bins shift the crossing at O(1/bins)), not the closed form.

Profiles at t / t_crit in ``t_ratios`` (for ``profile_beta``) from all four are in the dataset.
Time grids are in units of each beta's t_crit (it falls ~200x from beta = 0.25 to 4).
Positions: the paper's token j = 0..N-1 sits at s = (j + 1/2)/N here; the last token is the target.

    meanfield run kinetic-tcrit [--set betas=0.5,1,2 n_particles=64 runs=256]

This is the paper's convention; ``kinetic-causal`` uses this project's SA convention (content and
positions normalised together, V = I), where the U-shape times rise with beta instead.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

import meanfield as mf
from meanfield import theory
from meanfield.influence import circle_retrieval_profile, u_shape_end
from meanfield.pde import KineticMeanField
from meanfield.run import register, RunConfig, Step, StepPreset, Var

from . import kinetic_tcrit_figure as _figure
from ._common import midpoints


@dataclasses.dataclass(frozen=True)
class KineticTcritConfig(RunConfig):
    betas: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    lam: float = 1.0
    """ALiBi slope in units of s (the paper's e^{-(lam/N)(j-k)})"""
    M: float = 8.0
    """omega bandwidth (not a cell count)"""
    n_max: int = 20
    """Fourier modes 1..n_max"""
    sizes: tuple[int, ...] = (64, 128, 256, 512)
    """rows S of the discrete propagator"""
    pde_s: int = 64
    """rows of the kinetic PDE"""
    pde_m: int = 64
    """theta cells of the kinetic PDE (> 2 pde_modes)"""
    pde_modes: int = 12
    """Fourier modes of the PDE's profile (omega_13 / omega_1 < 2e-5 at M = 8)"""
    n_particles: int = 128
    runs: int = 128
    """particle runs per beta (split into 4 groups for the error bars)"""
    bins: int = 8
    """bins of s for the particle profile (must divide n_particles)"""
    t_ratios: tuple[float, ...] = (0.25, 0.5, 0.9, 1.5)
    """profile times, in units of t_crit"""
    profile_beta: float = 1.0
    """beta of the profile panels (one of betas)"""
    n_times: int = 18
    """times of the slope scans, in [0.3, 2] t_crit"""

    ranges = {
        "betas": "(0, 100], distinct, contains profile_beta",
        "lam": "(0, 1e4]",
        "M": "(0, 1e4]",
        "n_max": "[pde_modes, 1000]",
        "sizes": "[8, 4096], distinct",
        "pde_s": "[8, 1024]",
        "pde_m": "(2 * pde_modes, 4096]",
        "pde_modes": "[1, min(n_max, (pde_m - 1) // 2)]",
        "n_particles": "[max(8, bins), 16384], multiple of bins",
        "runs": "[4, 4096], multiple of 4",
        "bins": "[3, n_particles], divides n_particles",
        "t_ratios": "(0, 100], distinct",
        "profile_beta": "one of betas",
        "n_times": "[5, 10000]",
    }


def _slope_crossing(ts, profiles):
    """u_shape_end on off-diagonal profiles (T, n) (the last entry, the target, dropped)."""
    return u_shape_end(ts, np.asarray(profiles)[:, :-1])


def _binned(prof, bins):
    """Mean density per bin of the off-diagonal profile (..., N): the target's own entry is left
    out of the last bin."""
    p = np.array(prof, dtype=float)
    n = p.shape[-1]
    w = n // bins
    p = p.reshape(p.shape[:-1] + (bins, w))
    last = p[..., -1, :-1].mean(-1)
    out = p.mean(-1)
    out[..., -1] = last
    return out


def _particle_profiles(cfg, beta, ts, seed):
    n = cfg.n_particles
    attn = mf.Attention(
        beta,
        V=beta * jnp.eye(2),
        form="USA",
        mask=mf.PositionNormalized(mf.Causal(strict=True) & mf.ALiBi(cfg.lam / n)),
    )
    groups = []
    for g in range(4):
        key = jax.random.fold_in(jax.random.key(seed), g)
        groups.append(
            np.asarray(
                circle_retrieval_profile(
                    attn,
                    key,
                    jnp.asarray(ts),
                    n,
                    n_runs=cfg.runs // 4,
                    M=cfg.M,
                    n_max=cfg.n_max,
                    rtol=1e-6,
                    atol=1e-8,
                )
            )
        )
    return np.stack(groups)  # (4, T, N)


@register
class KineticTcrit(StepPreset):
    name = "kinetic-tcrit"
    tiny = (
        "betas=1",
        "sizes=16,32",
        "pde_s=8",
        "pde_m=16",
        "pde_modes=4",
        "n_max=6",
        "n_particles=8",
        "runs=8",
        "bins=4",
        "profile_beta=1",
        "n_times=6",
    )
    slow = True
    outputs = frozenset(
        {"profile_pde", "tcrit_closed", "tcrit_particles", "tcrit_pde", "tcrit_propagator"}
    )
    description = "the kinetic paper's t_crit(beta): closed form, discrete propagator (S = 64..512), kinetic PDE, particles"
    variables = {
        "S": Var("number of rows S", "1", "size of the discrete propagator"),
        "t_ratio": Var(
            "time / t_crit",
            "1",
            "times of the retrieval profiles in units of t_crit(beta = {profile_beta})",
        ),
        "s_fine": Var("relative position (fine grid)", "1", "positions of the closed-form profile"),
        "s_prop": Var(
            "relative position (propagator rows)",
            "1",
            "rows (k + 1/2)/S of the discrete propagator",
        ),
        "s_pde": Var(
            "relative position (PDE rows)", "1", "rows of the kinetic PDE, S = pde_s = {pde_s}"
        ),
        "s_bin": Var(
            "relative position (bin centre)",
            "1",
            "centres of the bins = {bins} bins of the particle estimates",
        ),
        "beta_fine": Var(
            "inverse temperature (fine grid)", "1", "beta values of the smooth closed-form curve"
        ),
        "tcrit_closed": Var(
            "t_crit, closed form",
            "1",
            "end of the U-shaped regime of the paper's model: 2 (1 - e^-lam) sum omega a / sum omega a^2, lam = {lam}, M = {M}, n_max = {n_max}",
        ),
        "tcrit_propagator": Var(
            "t_crit, discrete propagator",
            "1",
            "t_crit of the S-row discrete propagator (lam = {lam}, M = {M}, n_max = {n_max})",
        ),
        "tcrit_propagator_rel_error": Var(
            "relative error of the propagator t_crit",
            "1",
            "(tcrit_propagator - tcrit_closed) / tcrit_closed",
        ),
        "propagator_convergence_order": Var(
            "convergence order in S",
            "1",
            "log-log slope of the propagator error against S (theory: 1)",
        ),
        "tcrit_pde": Var(
            "t_crit, kinetic PDE",
            "1",
            "t_crit of KineticMeanField.paper_model (S = {pde_s}, M cells = {pde_m}, modes = {pde_modes})",
        ),
        "tcrit_propagator_at_pde_s": Var(
            "t_crit, propagator at the PDE's S",
            "1",
            "the propagator's t_crit at S = pde_s = {pde_s}, the PDE's reference",
        ),
        "tcrit_particles": Var(
            "t_crit, particles",
            "1",
            "t_crit from runs = {runs} particle runs of N = {n_particles} tokens (NaN where not reached)",
        ),
        "tcrit_particles_se": Var(
            "standard error of the particle t_crit", "1", "over the runs = {runs} runs"
        ),
        "tcrit_binned_reference": Var(
            "t_crit of the binned propagator",
            "1",
            "the propagator's t_crit after the same binning as the particles (bins = {bins})",
        ),
        "tcrit_closed_fine": Var(
            "t_crit, closed form (fine grid)", "1", "tcrit_closed on beta_fine"
        ),
        "profile_closed": Var(
            "retrieval profile, closed form",
            "1",
            "S_t(s) of the last token, beta = {profile_beta}, lam = {lam}",
        ),
        "profile_propagator": Var(
            "retrieval profile, propagator",
            "1",
            "the discrete propagator's S_t(s), beta = {profile_beta}",
        ),
        "profile_pde": Var(
            "retrieval profile, kinetic PDE",
            "1",
            "KineticMeanField.retrieval_profile, beta = {profile_beta}",
        ),
        "profile_particles": Var(
            "retrieval profile, particles",
            "1",
            "particle estimate (circle_retrieval_profile), binned, beta = {profile_beta}",
        ),
        "profile_particles_se": Var(
            "standard error of the particle profile", "1", "over the runs = {runs} runs"
        ),
        "profile_propagator_binned": Var(
            "retrieval profile, propagator, binned",
            "1",
            "the propagator profile with the particles' binning",
        ),
    }
    Config = KineticTcritConfig

    def steps(self, cfg):
        return [Step(f"beta={b!r}", {"beta": b}) for b in cfg.betas]

    def run_step(self, cfg, step, done):
        """Every solver at one beta (one progress step, one checkpoint)."""
        b = step.params["beta"]
        i = cfg.betas.index(b)
        scan = np.linspace(0.3, 2.0, cfg.n_times)
        ratios = np.asarray(cfg.t_ratios)
        n = cfg.n_particles
        tc = theory.kinetic_tcrit(b, cfg.lam, cfg.M, cfg.n_max)
        out = {
            "tc": tc,
            "prop": np.array(
                [
                    theory.kinetic_propagator_tcrit(b, cfg.lam, S, cfg.M, cfg.n_max)
                    for S in cfg.sizes
                ]
            ),
            "prop_pde_s": theory.kinetic_propagator_tcrit(b, cfg.lam, cfg.pde_s, cfg.M, cfg.n_max),
        }
        times = scan * tc
        pde = KineticMeanField.paper_model(cfg.pde_s, cfg.pde_m, b, cfg.lam)
        # one solve for the scan and the profile times (sorted, duplicates merged)
        uniq, back = np.unique(np.concatenate([times, ratios * tc]), return_inverse=True)
        pde_prof = np.asarray(pde.retrieval_profile(jnp.asarray(uniq), cfg.M, cfg.pde_modes))[back]
        out["pde_t"] = _slope_crossing(times, pde_prof[: len(times)])
        groups = _particle_profiles(cfg, b, uniq, cfg.seed + i)[:, back]
        binned = _binned(groups, cfg.bins)  # (4, T, bins)
        per_group = [u_shape_end(times, g[: len(times)]) for g in binned]
        out["part_t"] = u_shape_end(times, binned.mean(0)[: len(times)])
        out["part_err"] = np.nanstd(per_group) / np.sqrt(len(per_group))
        ref = np.stack(
            [theory.kinetic_propagator_profile(t, b, cfg.lam, n, cfg.M, cfg.n_max) for t in times]
        )
        out["ref_binned"] = u_shape_end(times, _binned(ref, cfg.bins))
        if b == cfg.profile_beta:
            out["pde"] = pde_prof[len(times) :]
            out["particles"] = binned.mean(0)[len(times) :]
            out["particles_se"] = binned.std(0)[len(times) :] / np.sqrt(4)
            out["propagator"] = np.stack(
                [
                    theory.kinetic_propagator_profile(
                        r * tc, b, cfg.lam, max(cfg.sizes), cfg.M, cfg.n_max
                    )
                    for r in ratios
                ]
            )
            out["propagator_binned"] = np.stack(
                [
                    _binned(
                        theory.kinetic_propagator_profile(r * tc, b, cfg.lam, n, cfg.M, cfg.n_max),
                        cfg.bins,
                    )
                    for r in ratios
                ]
            )
        return out

    def step_dataset(self, cfg, results):
        per = [results[st.name] for st in self.steps(cfg)]
        col = lambda key: np.array([float(r[key]) for r in per])  # noqa: E731
        tc, pde_t, part_t, part_err, ref_binned, prop_pde_s = (
            col(k) for k in ("tc", "pde_t", "part_t", "part_err", "ref_binned", "prop_pde_s")
        )
        prop = np.stack([r["prop"] for r in per])
        ratios = np.asarray(cfg.t_ratios)
        s_pde = midpoints(cfg.pde_s)
        s_bin = midpoints(cfg.bins)
        pb = cfg.betas.index(cfg.profile_beta)
        prof = per[pb]
        s_fine = np.linspace(0.002, 0.999, 400)
        closed = np.stack(
            [
                theory.kinetic_profile(
                    s_fine, r * tc[pb], cfg.profile_beta, cfg.lam, cfg.M, cfg.n_max
                )
                for r in ratios
            ]
        )
        s_prop = (np.arange(max(cfg.sizes)) + 0.5) / max(cfg.sizes)
        beta_fine = np.geomspace(min(cfg.betas), max(cfg.betas), 60)
        err = prop / tc[:, None] - 1
        rate = np.array(
            [
                np.polyfit(np.log(cfg.sizes), np.log(np.abs(e)), 1)[0]
                if len(cfg.sizes) > 1
                else np.nan
                for e in err
            ]
        )
        ds = xr.Dataset(
            {
                "tcrit_closed": (("beta",), tc),
                "tcrit_propagator": (("beta", "S"), prop),
                "tcrit_propagator_rel_error": (("beta", "S"), err),
                "propagator_convergence_order": (("beta",), -rate),
                "tcrit_pde": (("beta",), pde_t),
                "tcrit_propagator_at_pde_s": (("beta",), prop_pde_s),
                "tcrit_particles": (("beta",), part_t),
                "tcrit_particles_se": (("beta",), part_err),
                "tcrit_binned_reference": (("beta",), ref_binned),
                "tcrit_closed_fine": (
                    ("beta_fine",),
                    np.array(
                        [theory.kinetic_tcrit(b, cfg.lam, cfg.M, cfg.n_max) for b in beta_fine]
                    ),
                ),
                "profile_closed": (("t_ratio", "s_fine"), closed),
                "profile_propagator": (("t_ratio", "s_prop"), prof["propagator"]),
                "profile_pde": (("t_ratio", "s_pde"), prof["pde"]),
                "profile_particles": (("t_ratio", "s_bin"), prof["particles"]),
                "profile_particles_se": (("t_ratio", "s_bin"), prof["particles_se"]),
                "profile_propagator_binned": (("t_ratio", "s_bin"), prof["propagator_binned"]),
            },
            coords={
                "beta": list(cfg.betas),
                "S": list(cfg.sizes),
                "t_ratio": ratios,
                "s_fine": s_fine,
                "s_prop": s_prop,
                "s_pde": s_pde,
                "s_bin": s_bin,
                "beta_fine": beta_fine,
            },
        )
        ds.attrs["conventions"] = (
            "the kinetic paper's model: strictly causal ALiBi, positional weights normalised per row, USA content, "
            "V = beta I; rows/tokens at s = (k + 1/2)/S, target = last; profiles are off-diagonal densities over s "
            "(the target's own identity term removed); particle profiles binned (mean density per bin). "
            "tcrit_particles is nan where the binned right-end slope does not turn negative in the scan: finite-N "
            "particles follow the linear theory only while the fluctuations e^{a t} / sqrt(N) stay small"
        )
        return ds

    def plot(self, ds, outdir):
        return _figure.plot(self, ds, outdir)
