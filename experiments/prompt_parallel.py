r"""Parallel prompt insertion (Imaizumi, Koyama, Isobe & Hayashi 2026): the limit is a pushforward
of the prompt distribution, while shared prompts collapse to a Dirac mass.

``prompt-parallel`` runs N tokens on the circle (SA, Q = K = V = I, mask Full) with prompts
p_i = (cos pi s_i, sin pi s_i) at the midpoints s_i = (i + 1/2)/N, from the start x_i(0) = p_i,
in two ways:

* parallel: [`meanfield.ParallelPrompt`][meanfield.kernel.ParallelPrompt] ``(p, weight)``, token i's own key p_i (mass ``weight``);
* shared: [`meanfield.Prompt`][meanfield.kernel.Prompt] ``(p, mass = weight / N)``, every p_j a key of every token
  (the same total prompt mass).

The parallel limit is compared with the energy maximiser on ``quadrature`` nodes
([`meanfield.theory.prompt_pushforward`][meanfield.theory.prompt_pushforward], its search diagnostics in the dataset) by the exact
circle W1, for every N (a midpoint sample of a smooth map is at W1 ~ 1/N: the fitted slope is in
the dataset); the distance to the nearest Dirac mass is recorded along time for both.

    meanfield run prompt-parallel [--set beta=1 weight=1 ns=32,64,128]
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import xarray as xr

import meanfield as mf
from meanfield import observables as obs
from meanfield import theory
from meanfield.run import register, Step, StepPreset, Var

from ._common import (
    ToleranceConfig,
    half_circle_prompts as _prompts,
    log_axis_ticks,
    plt,
    save_figure,
)


@dataclasses.dataclass(frozen=True)
class PromptParallelConfig(ToleranceConfig):
    beta: float = 1.0
    weight: float = 1.0
    """key mass of each own prompt (shared prompts: weight / N each, the same total)"""
    ns: tuple[int, ...] = (32, 64, 128)
    """token numbers"""
    t1: float = 200.0
    n_save: int = 41
    """saved times (geometric in [t1 / 1000, t1], plus 0)"""
    quadrature: int = 512
    """nodes of the theory maximiser"""
    n_starts: int = 8
    hops: int = 8
    """global search of the theory maximiser (see meanfield.theory.prompt_pushforward)"""
    rtol: float = 1e-10
    atol: float = 1e-10

    ranges = {
        "beta": "(0, 100]",
        "weight": "[0, 1e6]",
        "ns": "[2, 65536], length >= 2, distinct",
        "t1": "(0, 1e6]",
        "n_save": "[3, 100000]",
        "quadrature": "[8, 100000]",
        "n_starts": "[1, 4096]",
        "hops": "[0, 4096]",
    }


def _times(cfg):
    return np.concatenate([[0.0], np.geomspace(cfg.t1 / 1000, cfg.t1, cfg.n_save - 1)])


def _angles(x):
    x = np.asarray(x)
    return np.arctan2(x[..., 1], x[..., 0])


@register
class PromptParallel(StepPreset):
    name = "prompt-parallel"
    tiny = ("ns=8,16", "t1=5", "n_save=4", "quadrature=32", "n_starts=2", "hops=0")
    slow = True
    outputs = frozenset(
        {"dirac_distance_parallel", "dirac_distance_shared", "theta_star", "w1_to_pushforward"}
    )
    description = "parallel vs shared prompts on S^1: pushforward limit (W1 ~ 1/N to the theory maximiser) vs Dirac collapse"
    variables = {
        "s_q": Var(
            "auxiliary variable s (quadrature)",
            "1",
            "quadrature nodes (i + 1/2)/M, M = quadrature = {quadrature}",
        ),
        "n": Var("number of tokens N", "1", "tokens of each run"),
        "s": Var("auxiliary variable s", "1", "s_i = (i + 1/2)/N of the largest run"),
        "maximum": Var(
            "local maximiser index",
            "1",
            "distinct local maximisers found by the search, best first",
        ),
        "theta_star": Var(
            "pushforward limit theta*(s)",
            "rad",
            "angle of the energy maximiser x*(s) (theory.prompt_pushforward; beta = {beta}, weight = {weight}, n_starts = {n_starts}, hops = {hops})",
        ),
        "theory_energy": Var(
            "energy of the best maximiser", "1", "energy per node weight 1/M of x*"
        ),
        "theory_energies_found": Var(
            "energies of the maximisers found", "1", "one per distinct local maximiser"
        ),
        "theory_basin_counts": Var(
            "basin counts", "1", "how many search starts reached each maximiser"
        ),
        "theory_hessian_max": Var(
            "largest Hessian eigenvalue at the best maximiser",
            "1",
            "negative: a strict local maximum",
        ),
        "theory_tie": Var(
            "near-tie flag", "1", "1 if another maximiser's energy is within round-off of the best"
        ),
        "w1_to_pushforward": Var(
            "circle W1 to the pushforward limit",
            "1",
            "parallel prompts: W1 between the tokens at t = {t1} and theta*(s)",
        ),
        "w1_slope": Var("fitted slope of W1 against N", "1", "log-log slope (theory: -1)"),
        "energy_parallel": Var(
            "energy of the parallel run", "1", "energy (weight 1/N per token) at t = {t1}"
        ),
        "dirac_distance_parallel": Var(
            "W2 to the nearest Dirac mass (parallel)", "1", "parallel prompts"
        ),
        "dirac_distance_shared": Var(
            "W2 to the nearest Dirac mass (shared)",
            "1",
            "shared prompts (every p_j of mass weight / N)",
        ),
        "theta_parallel": Var(
            "end angles (parallel)", "rad", "token angles at t = {t1}, largest N"
        ),
        "theta_shared": Var("end angles (shared)", "rad", "token angles at t = {t1}, largest N"),
    }
    Config = PromptParallelConfig

    def steps(self, cfg):
        return [Step("theory")] + [Step(f"n={n}", {"n": n}) for n in cfg.ns]

    def run_step(self, cfg, step, done):
        if step.name == "theory":
            _, pq = _prompts(cfg.quadrature)
            best = theory.prompt_pushforward(
                pq, cfg.beta, cfg.weight, n_starts=cfg.n_starts, hops=cfg.hops, seed=cfg.seed
            )
            return {
                "theta_star": _angles(best.x),
                "energy": best.energy,
                "energies": best.energies,
                "counts": best.counts,
                "hessian_max": best.hessian_max,
                "tie": int(best.tie),
            }
        n = step.params["n"]
        th_star = done["theory"]["theta_star"]
        times = _times(cfg)
        s, p = _prompts(n)
        run = lambda prompt: (
            mf.simulate(
                mf.Attention(cfg.beta),
                jnp.asarray(p),
                jnp.asarray(times),  # noqa: E731
                prompt=prompt,
                rtol=cfg.rtol,
                atol=cfg.atol,
            ).xs
        )
        xp = np.asarray(run(mf.ParallelPrompt(p, cfg.weight)))
        xs = np.asarray(run(mf.Prompt(p, jnp.full((n,), cfg.weight / n))))
        return {
            "w1": float(obs.circle_w1(jnp.asarray(_angles(xp[-1])), jnp.asarray(th_star))),
            "dirac_par": np.asarray(obs.dirac_distance(jnp.asarray(xp))),
            "dirac_sh": np.asarray(obs.dirac_distance(jnp.asarray(xs))),
            "energy": float(obs.energy(jnp.asarray(xp[-1]), cfg.beta, prompt=p, weight=cfg.weight)),
            "theta_parallel": _angles(xp[-1]),
            "theta_shared": _angles(xs[-1]),
            "s": s,
        }

    def step_dataset(self, cfg, results):
        sq, _ = _prompts(cfg.quadrature)
        th = results["theory"]
        th_star = th["theta_star"]
        times = _times(cfg)
        per = [results[f"n={n}"] for n in cfg.ns]
        w1 = [float(r["w1"]) for r in per]
        dirac_par = [r["dirac_par"] for r in per]
        dirac_sh = [r["dirac_sh"] for r in per]
        energy_par = [float(r["energy"]) for r in per]
        finals = {
            "parallel": per[-1]["theta_parallel"],
            "shared": per[-1]["theta_shared"],
            "s": per[-1]["s"],
        }
        slope = float(np.polyfit(np.log(cfg.ns), np.log(w1), 1)[0])
        ds = xr.Dataset(
            {
                "theta_star": (("s_q",), th_star),
                "theory_energy": ((), float(th["energy"])),
                "theory_energies_found": (("maximum",), th["energies"]),
                "theory_basin_counts": (("maximum",), th["counts"]),
                "theory_hessian_max": ((), float(th["hessian_max"])),
                "theory_tie": ((), int(th["tie"])),
                "w1_to_pushforward": (("n",), np.asarray(w1)),
                "w1_slope": ((), slope),
                "energy_parallel": (("n",), np.asarray(energy_par)),
                "dirac_distance_parallel": (("n", "time"), np.stack(dirac_par)),
                "dirac_distance_shared": (("n", "time"), np.stack(dirac_sh)),
                "theta_parallel": (("s",), finals["parallel"]),
                "theta_shared": (("s",), finals["shared"]),
            },
            coords={
                "s_q": sq,
                "n": list(cfg.ns),
                "time": times,
                "s": finals["s"],
                "maximum": np.arange(len(th["energies"])),
            },
        )
        ds.attrs["conventions"] = (
            "SA, Q = K = V = I, mask Full, tokens on S^1 from x(0) = p; p_i = (cos pi s_i, sin pi s_i), s_i = (i + 1/2)/N; "
            "parallel: own key p_i of mass weight; shared: every p_j of mass weight / N; theory: prompt_pushforward on "
            "the quadrature nodes (energy per node weight 1/M), its energy compared with energy_parallel (1/N)"
        )
        return ds

    def plot(self, ds, outdir):
        cfg = self.Config.from_attrs(ds)
        p = plt()
        fig, axes = p.subplots(1, 3, figsize=(15, 4.6))
        ax = axes[0]
        ax.plot(
            ds.s_q, np.unwrap(ds.theta_star), "k-", lw=1.2, zorder=3, label="theory maximiser x*(s)"
        )
        ax.plot(
            ds.s,
            np.unwrap(ds.theta_parallel),
            "o",
            ms=3,
            label=f"parallel prompts, N = {int(ds.n[-1])}",
        )
        ax.plot(ds.s, ds.theta_shared, "x", ms=3, label="shared prompts (collapsed)")
        ax.plot(ds.s_q, np.pi * ds.s_q, ":", color="gray", label=r"prompt angle $\pi s$")
        ax.set_xlabel("auxiliary variable s")
        ax.set_ylabel(r"final angle $\theta$")
        ax.set_title(
            rf"limit vs theory, $\beta$ = {cfg.beta:g}, weight = {cfg.weight:g}", fontsize=9
        )
        ax.legend(fontsize=7)
        ax = axes[1]
        n = ds.n.values.astype(float)
        ax.loglog(n, ds.w1_to_pushforward, "o-", label=f"parallel (slope {float(ds.w1_slope):.2f})")
        ax.loglog(n, ds.w1_to_pushforward.values[0] * n[0] / n, "k:", label="1/N")
        log_axis_ticks(ax, n, p)
        ax.set_xlabel("tokens N")
        ax.set_ylabel("circle W1 to the theory pushforward")
        ax.set_title("convergence to the pushforward", fontsize=9)
        ax.legend(fontsize=7)
        ax = axes[2]
        t = ds.time.values[1:]
        for i, nv in enumerate(ds.n.values):
            ax.semilogx(
                t,
                ds.dirac_distance_parallel.isel(n=i).values[1:],
                "-",
                color=f"C{i}",
                label=f"parallel N = {nv}",
            )
            ax.semilogx(
                t,
                ds.dirac_distance_shared.isel(n=i).values[1:],
                "--",
                color=f"C{i}",
                label=f"shared N = {nv}",
            )
        ax.set_xlabel("t")
        ax.set_ylabel("distance to the nearest Dirac mass")
        ax.set_title("shared prompts collapse, parallel prompts do not", fontsize=9)
        ax.legend(fontsize=7)
        fig.suptitle("parallel vs shared prompt insertion (Imaizumi et al. 2026)", fontsize=10)
        fig.tight_layout()
        path = Path(outdir) / "prompt-parallel.png"
        save_figure(fig, path, dpi=110)
        return [path]
