r"""Metastability with auxiliary variables: where random starts end, against the best-found maximiser.

For every (beta, auxiliary strength) of two 4 x 4 grids, ``n_starts`` random starts of N tokens on
the circle (SA, Q = K = V = I, mask Full) run to ``t1`` (log-spaced saves):

* ``pe``: additive PE u_i = alpha (cos pi s_i, sin pi s_i) ([`meanfield.AdditivePE`][meanfield.kernel.AdditivePE]),
  alpha in ``alphas`` (0 = no auxiliary variable);
* ``prompt``: parallel prompts p_i = (cos pi s_i, sin pi s_i) ([`meanfield.ParallelPrompt`][meanfield.kernel.ParallelPrompt]),
  weight in ``weights`` (0 = none).

Per grid point: the best maximiser found by the global search of
[`meanfield.theory.additive_pe_pushforward`][meanfield.theory.additive_pe_pushforward] / [`prompt_pushforward`][meanfield.theory.prompt_pushforward]
on the same N nodes (for strength 0: a Dirac mass, energy e^beta / 2 beta), the fraction of starts
whose end state is that maximiser (max distance < ``tol`` up to a rotation when there is no
auxiliary variable), the number of distinct end states (same tolerance), and the median length (in
decades of t) of the longest energy plateau of each run ([`meanfield.observables.plateaus`][meanfield.observables.plateaus];
the final rest state counts as a plateau, so converged runs score high too).
SA and USA share their stationary points; SA is used for its O(1) rates.

    meanfield run aux-metastability [--set betas=1,2,4,8 alphas=0,0.2,0.4,0.8 n_starts=16]
"""

from __future__ import annotations

import dataclasses
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

import meanfield as mf
from meanfield import observables as obs
from meanfield import theory
from meanfield.run import register, Step, StepPreset, Var

from ._common import ToleranceConfig, half_circle_prompts, plt, save_figure


@dataclasses.dataclass(frozen=True)
class AuxMetaConfig(ToleranceConfig):
    n: int = 64
    betas: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    alphas: tuple[float, ...] = (0.0, 0.2, 0.4, 0.8)
    """additive PE scales (0: no auxiliary variable)"""
    weights: tuple[float, ...] = (0.0, 0.25, 1.0, 4.0)
    """parallel prompt weights (0: none)"""
    n_starts: int = 16
    t1: float = 1000.0
    n_save: int = 31
    tol: float = 1e-3
    """two end states are the same when max_i |x_i - y_i| < tol"""
    search_starts: int = 16
    search_hops: int = 16
    rtol: float = 1e-8
    atol: float = 1e-8

    ranges = {
        "n": "[4, 4096]",
        "betas": "(0, 100], distinct",
        "alphas": "[0, 100], distinct",
        "weights": "[0, 1e6], distinct",
        "n_starts": "[2, 4096]",
        "t1": "(0, 1e6]",
        "n_save": "[5, 100000]",
        "tol": "(0, 2]",
        "search_starts": "[1, 4096]",
        "search_hops": "[0, 4096]",
    }


def _distance(x, y, invariant):
    """max_i |x_i - y_i|, minimised over rotations of y when the problem is rotation invariant."""
    if not invariant:
        return float(np.abs(x - y).max())
    # best rotation angle of y onto x (2-D Procrustes)
    c = np.sum(x[:, 0] * y[:, 0] + x[:, 1] * y[:, 1])
    s = np.sum(x[:, 1] * y[:, 0] - x[:, 0] * y[:, 1])
    a = np.arctan2(s, c)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return float(np.abs(x - y @ rot.T).max())


@register
class AuxMetastability(StepPreset):
    name = "aux-metastability"
    tiny = (
        "n=8",
        "betas=1,4",
        "alphas=0,0.4",
        "weights=0,1",
        "n_starts=4",
        "t1=50",
        "search_starts=2",
        "search_hops=0",
    )
    slow = True
    outputs = frozenset({"pe_fraction_best", "pe_plateau_decades", "prompt_distinct"})
    description = "basin maps with auxiliary variables: fraction of random starts reaching the best maximiser, distinct end states, plateaus"
    variables = {
        "alpha": Var(
            "additive PE scale alpha", "1", "scale of the additive positional encoding (0: none)"
        ),
        "weight": Var(
            "parallel prompt weight", "1", "key mass of each token's own prompt (0: none)"
        ),
        "pe_fraction_best": Var(
            "fraction of starts at the best maximiser (PE)",
            "1",
            "share of the n_starts = {n_starts} random starts whose end state (t = {t1}) is within tol = {tol} of the best maximiser found by the search (search_starts = {search_starts}, search_hops = {search_hops}), additive PE",
        ),
        "pe_distinct": Var(
            "distinct end states (PE)",
            "1",
            "number of end states of the n_starts = {n_starts} runs that differ by more than tol = {tol}, additive PE",
        ),
        "pe_plateau_decades": Var(
            "longest energy plateau (PE)",
            "decades of t",
            "median over starts of the longest plateau of the energy on a log-time axis, additive PE",
        ),
        "pe_best_energy": Var(
            "best maximiser's energy (PE)",
            "1",
            "energy of the best maximiser found by the global search, additive PE",
        ),
        "pe_end_energy_max": Var(
            "highest end energy (PE)",
            "1",
            "largest energy reached by the runs at t = {t1}, additive PE",
        ),
        "pe_end_energy_min": Var(
            "lowest end energy (PE)",
            "1",
            "smallest energy reached by the runs at t = {t1}, additive PE",
        ),
        "prompt_fraction_best": Var(
            "fraction of starts at the best maximiser (prompt)",
            "1",
            "share of the n_starts = {n_starts} random starts within tol = {tol} of the best maximiser, parallel prompts",
        ),
        "prompt_distinct": Var(
            "distinct end states (prompt)",
            "1",
            "number of end states that differ by more than tol = {tol}, parallel prompts",
        ),
        "prompt_plateau_decades": Var(
            "longest energy plateau (prompt)",
            "decades of t",
            "median over starts of the longest energy plateau on a log-time axis, parallel prompts",
        ),
        "prompt_best_energy": Var(
            "best maximiser's energy (prompt)",
            "1",
            "energy of the best maximiser found by the global search, parallel prompts",
        ),
        "prompt_end_energy_max": Var(
            "highest end energy (prompt)",
            "1",
            "largest energy reached at t = {t1}, parallel prompts",
        ),
        "prompt_end_energy_min": Var(
            "lowest end energy (prompt)",
            "1",
            "smallest energy reached at t = {t1}, parallel prompts",
        ),
    }
    Config = AuxMetaConfig

    def steps(self, cfg):
        return [
            Step(f"pe beta={b!r} alpha={a!r}", {"kind": "pe", "beta": b, "strength": a})
            for b in cfg.betas
            for a in cfg.alphas
        ] + [
            Step(f"prompt beta={b!r} weight={w!r}", {"kind": "prompt", "beta": b, "strength": w})
            for b in cfg.betas
            for w in cfg.weights
        ]

    def run_step(self, cfg, step, done):
        kind, beta, v = (
            step.params["kind"],
            float(step.params["beta"]),
            float(step.params["strength"]),
        )
        name = step.name  # seeds the starts (as in 0.2)
        n = cfg.n
        _, z = half_circle_prompts(n)
        ts = jnp.asarray(
            np.concatenate([[0.0], np.geomspace(cfg.t1 * 1e-4, cfg.t1, cfg.n_save - 1)])
        )
        if kind == "pe":
            attn = mf.Attention(beta, pe=mf.AdditivePE(v)) if v > 0 else mf.Attention(beta)
            aux, prompt = mf.TokenAux.default(n, z=jnp.asarray(z)), None
            energy = lambda x: float(theory_energy_pe(x, v * z, beta))  # noqa: E731
        else:
            attn, aux = mf.Attention(beta), None
            prompt = mf.ParallelPrompt(z, v) if v > 0 else None
            energy = lambda x: float(obs.energy(jnp.asarray(x), beta, prompt=z, weight=v))  # noqa: E731
        keys = jax.random.split(
            jax.random.fold_in(jax.random.key(cfg.seed), zlib.crc32(name.encode()) % 2**31),
            cfg.n_starts,
        )
        x0 = jax.vmap(lambda k: mf.sphere_uniform(k, n, 2))(keys)
        run = jax.vmap(
            lambda x: (
                mf.simulate(attn, x, ts, aux=aux, prompt=prompt, rtol=cfg.rtol, atol=cfg.atol).xs
            )
        )
        xs = np.asarray(run(x0))  # (starts, T, n, 2)
        if v == 0:  # no auxiliary variable: the maximiser is a Dirac mass (any point)
            best = np.tile([1.0, 0.0], (n, 1))
            best_e = float(np.exp(beta) / (2 * beta))
        elif kind == "pe":
            best, best_e = theory.additive_pe_pushforward(
                v * z, beta, n_starts=cfg.search_starts, hops=cfg.search_hops, seed=cfg.seed
            )
        else:
            best, best_e = theory.prompt_pushforward(
                z, beta, v, n_starts=cfg.search_starts, hops=cfg.search_hops, seed=cfg.seed
            )
        ends = xs[:, -1]
        reach = np.array([_distance(best, e, v == 0) < cfg.tol for e in ends])
        distinct = []
        for e in ends:
            if not any(_distance(d, e, v == 0) < cfg.tol for d in distinct):
                distinct.append(e)
        tt = np.asarray(ts)
        longest = []
        for run_xs in xs:
            es = np.array([energy(x) for x in run_xs])
            pl = obs.plateaus(tt, es, min_decades=0.5, rtol=1e-4)
            longest.append(max((np.log10(b / a) for a, b, _ in pl), default=0.0))
        end_e = np.array([energy(e) for e in ends])
        return {
            "fraction_best": float(reach.mean()),
            "distinct": len(distinct),
            "plateau_decades": float(np.median(longest)),
            "best_energy": best_e,
            "end_energy_max": float(end_e.max()),
            "end_energy_min": float(end_e.min()),
        }

    def step_dataset(self, cfg, results):
        data = {}
        for kind, strengths, dim in (
            ("pe", cfg.alphas, "alpha"),
            ("prompt", cfg.weights, "weight"),
        ):
            for key in (
                "fraction_best",
                "distinct",
                "plateau_decades",
                "best_energy",
                "end_energy_max",
                "end_energy_min",
            ):
                arr = np.array(
                    [
                        [float(results[f"{kind} beta={b!r} {dim}={v!r}"][key]) for v in strengths]
                        for b in cfg.betas
                    ]
                )
                data[f"{kind}_{key}"] = (("beta", dim), arr)
        return xr.Dataset(
            data,
            coords={
                "beta": list(cfg.betas),
                "alpha": list(cfg.alphas),
                "weight": list(cfg.weights),
            },
        )

    def plot(self, ds, outdir):
        cfg = self.Config.from_attrs(ds)
        p = plt()
        fig, axes = p.subplots(2, 3, figsize=(15, 8))
        for row, (kind, dim, label) in enumerate(
            (
                ("pe", "alpha", "additive PE scale alpha"),
                ("prompt", "weight", "parallel prompt weight"),
            )
        ):
            for col, (key, title, cmap) in enumerate(
                (
                    ("fraction_best", "fraction of starts at the best maximiser", "viridis"),
                    ("distinct", "distinct end states", "magma"),
                    ("plateau_decades", "median longest energy plateau (decades)", "cividis"),
                )
            ):
                ax = axes[row, col]
                v = ds[f"{kind}_{key}"].values
                im = ax.imshow(v, origin="lower", cmap=cmap, aspect="auto")
                for i in range(v.shape[0]):
                    for j in range(v.shape[1]):
                        ax.text(
                            j,
                            i,
                            f"{v[i, j]:.2g}",
                            ha="center",
                            va="center",
                            fontsize=8,
                            color="w" if v[i, j] < 0.5 * np.nanmax(v) else "k",
                        )
                ax.set_xticks(range(len(ds[dim])))
                ax.set_xticklabels([f"{x:g}" for x in ds[dim].values])
                ax.set_yticks(range(len(ds.beta)))
                ax.set_yticklabels([f"{b:g}" for b in ds.beta.values])
                ax.set_xlabel(label + " (0: none)")
                ax.set_ylabel(r"$\beta$")
                ax.set_title(title, fontsize=9)
                fig.colorbar(im, ax=ax, shrink=0.8)
        fig.suptitle(
            f"metastability with auxiliary variables: N = {cfg.n} on S$^1$, {cfg.n_starts} random starts per "
            f"cell, t = {cfg.t1:g} (SA)",
            fontsize=10,
        )
        fig.tight_layout()
        path = Path(outdir) / "aux-metastability.png"
        save_figure(fig, path, dpi=110)
        return [path]


def theory_energy_pe(x, u, beta):
    """(1/2 beta) sum_ij m_i m_j e^{beta ⟨y_i, y_j⟩}, y = x + u, m = 1/N: the additive-PE energy."""
    y = np.asarray(x) + u
    m = 1.0 / y.shape[0]
    return m * m * np.sum(np.exp(beta * (y @ y.T))) / (2 * beta)
