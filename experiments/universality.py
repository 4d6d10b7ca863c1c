r"""Universality with parallel prompts (Imaizumi, Koyama, Isobe & Hayashi 2026): the limit of the
dynamics can be made (close to) a chosen target distribution.

Two of the issue's three ways, against the floor (the distance of the best N-point configuration,
the N quantile midpoints, to the target):

* quantile prompts (S^1): p_i = T(s_i), T the target's quantile map, s_i = (i + 1/2)/N; SA with
  Q = K = V = I and :class:`meanfield.ParallelPrompt` ``(p, weight)`` from x(0) = p, for each
  weight in ``weights``: the circle W1 of the limit to the target (a 4096-point quantile sample)
  against the floor. A heavier weight pins tokens nearer their prompts, so W1 falls towards the floor.
* exact inverse design (:func:`meanfield.theory.inverse_prompt`): prompts that make the N quantile
  midpoints (S^1), or N draws of the target (S^2), a stationary and stable point; from
  ``n_starts`` random starts, the fraction of runs that end at the target (max distance < 1e-6)
  and their error (solver tolerance, not a floor).

Targets: a two-component von Mises mixture on S^1 and a two-component von Mises-Fisher mixture on
S^2 (d = 3). (A learned positional encoding, the third way, is not part of this preset.)

    meanfield run universality [--set n=64 beta=1 weights=0.5,1,2,4,8,16]
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from scipy.special import i0e

import meanfield as mf
from meanfield import observables as obs
from meanfield import theory
from meanfield.run import register

from ._common import HostPreset, ToleranceConfig, plt, require


@dataclasses.dataclass(frozen=True)
class UniversalityConfig(ToleranceConfig):
    n: int = 64
    """tokens"""
    beta: float = 1.0
    weights: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
    """prompt weights of the quantile-prompt runs"""
    t1: float = 200.0
    n_starts: int = 8
    """random starts of the inverse-design runs"""
    margin: float = 1.5
    """inverse design at margin x the smallest sufficient weight"""
    rtol: float = 1e-10
    atol: float = 1e-10

    def validate(self):
        super().validate()
        require(self.n >= 4 and self.beta > 0 and self.t1 > 0, "need n >= 4, beta > 0, t1 > 0")
        require(len(self.weights) >= 2 and min(self.weights) > 0, "weights must be > 0 (at least two)")
        require(self.n_starts >= 1 and self.margin >= 1, "need n_starts >= 1 and margin >= 1")


def _circle_target():
    """Two-component von Mises mixture: its density on a fine grid and its quantile map."""
    th = np.linspace(-np.pi, np.pi, 20001)[:-1]
    vm = lambda mu, k: np.exp(k * (np.cos(th - mu) - 1)) / (2 * np.pi * i0e(k))  # noqa: E731
    pdf = 0.6 * vm(0.0, 8.0) + 0.4 * vm(2.2, 4.0)
    cut = th[np.argmin(pdf)]  # start the CDF where the density is smallest
    grid = cut + np.linspace(0, 2 * np.pi, 20001)
    dens = np.interp(np.mod(grid + np.pi, 2 * np.pi) - np.pi, th, pdf, period=2 * np.pi)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(grid))])
    cdf /= cdf[-1]
    quantile = lambda s: np.interp(s, cdf, grid)  # noqa: E731
    return th, pdf / np.trapezoid(pdf, th), quantile


def _circle(theta):
    return np.stack([np.cos(theta), np.sin(theta)], -1)


def _sphere_target(n, seed):
    """N draws of a two-component von Mises-Fisher mixture on S^2 (kappa 10 and 6)."""
    rng = np.random.default_rng(seed)
    mus = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    kap = np.array([10.0, 6.0])
    comp = rng.random(n) < 0.5
    out = []
    for c in comp.astype(int):
        w = 1 + np.log(rng.random() + (1 - rng.random()) * np.exp(-2 * kap[c])) / kap[c]  # vMF on S^2: cos angle
        v = rng.normal(size=3)
        v -= v @ mus[c] * mus[c]
        v /= np.linalg.norm(v)
        out.append(w * mus[c] + np.sqrt(max(0.0, 1 - w * w)) * v)
    return np.asarray(out)


@register
class Universality(HostPreset):
    name = "universality"
    description = "parallel prompts make a chosen target the limit: quantile prompts (W1 vs weight, floor) and inverse design (S^1, S^2)"
    Config = UniversalityConfig

    def host_steps(self, cfg):
        return [f"quantile weight={w!r}" for w in cfg.weights] + ["inverse S1", "inverse S2"]

    def _run(self, cfg, x0, p, weight):
        return np.asarray(mf.simulate(mf.Attention(cfg.beta), jnp.asarray(x0), [0.0, cfg.t1],
                                      prompt=mf.ParallelPrompt(p, weight), rtol=cfg.rtol, atol=cfg.atol).final)

    def host_step(self, cfg, name, done):
        _, _, quantile = _circle_target()
        s = (np.arange(cfg.n) + 0.5) / cfg.n
        fine = quantile((np.arange(4096) + 0.5) / 4096)
        if name.startswith("quantile"):
            w = float(name.split("=")[1])
            p = _circle(quantile(s))
            x = self._run(cfg, p, p, w)
            th = np.arctan2(x[:, 1], x[:, 0])
            return {"theta": th, "w1": float(obs.circle_w1(jnp.asarray(th), jnp.asarray(fine)))}
        d = 2 if name.endswith("S1") else 3
        target = _circle(quantile(s)) if d == 2 else _sphere_target(cfg.n, cfg.seed)
        need = theory.inverse_prompt(target, cfg.beta, 1e6).min_weight
        design = theory.inverse_prompt(target, cfg.beta, cfg.margin * need)
        errs = []
        for k in range(cfg.n_starts):
            x0 = mf.sphere_uniform(jax.random.fold_in(jax.random.key(cfg.seed), 100 + k), cfg.n, d)
            errs.append(float(np.abs(self._run(cfg, x0, design.p, cfg.margin * need) - target).max()))
        errs = np.asarray(errs)
        out = {"target": target, "prompts": design.p, "max_error": errs, "weight": cfg.margin * need,
               "min_weight": need, "hessian_max": design.hessian_max}
        if d == 2:
            th = np.arctan2(target[:, 1], target[:, 0])
            out["w1_target"] = float(obs.circle_w1(jnp.asarray(th), jnp.asarray(fine)))
        return out

    def host_dataset(self, cfg, results):
        th_grid, pdf, quantile = _circle_target()
        s = (np.arange(cfg.n) + 0.5) / cfg.n
        fine = quantile((np.arange(4096) + 0.5) / 4096)
        floor = float(obs.circle_w1(jnp.asarray(np.mod(quantile(s) + np.pi, 2 * np.pi) - np.pi), jnp.asarray(fine)))
        q = [results[f"quantile weight={w!r}"] for w in cfg.weights]
        i1, i2 = results["inverse S1"], results["inverse S2"]
        ok = lambda e: float(np.mean(e < 1e-6))  # noqa: E731
        return xr.Dataset(
            {
                "target_pdf": (("theta_grid",), pdf),
                "quantile_theta": (("weight", "token"), np.stack([r["theta"] for r in q])),
                "w1_quantile_prompts": (("weight",), np.array([float(r["w1"]) for r in q])),
                "w1_floor": ((), floor),
                "inverse_s1_target": (("token", "xy"), i1["target"]),
                "inverse_s1_max_error": (("start",), i1["max_error"]),
                "inverse_s1_fraction": ((), ok(i1["max_error"])),
                "inverse_s1_weight": ((), float(i1["weight"])),
                "inverse_s1_w1": ((), float(i1["w1_target"])),
                "inverse_s2_target": (("token", "xyz"), i2["target"]),
                "inverse_s2_max_error": (("start",), i2["max_error"]),
                "inverse_s2_fraction": ((), ok(i2["max_error"])),
                "inverse_s2_weight": ((), float(i2["weight"])),
                "inverse_s2_hessian_max": ((), float(i2["hessian_max"])),
            },
            coords={"theta_grid": th_grid, "weight": list(cfg.weights), "token": np.arange(cfg.n),
                    "start": np.arange(cfg.n_starts), "xy": ["x", "y"], "xyz": ["x", "y", "z"]},
        )

    def plot(self, ds, outdir):
        cfg = json.loads(ds.attrs["config"])
        p = plt()
        fig = p.figure(figsize=(16, 4.8))
        ax = fig.add_subplot(1, 3, 1)
        ax.plot(ds.theta_grid, ds.target_pdf, "k-", lw=1.2, label="target density (von Mises mixture)")
        for i, w in enumerate(ds.weight.values[:: max(1, len(ds.weight) // 3)]):
            th = ds.quantile_theta.sel(weight=w).values
            ax.hist(np.mod(th + np.pi, 2 * np.pi) - np.pi, bins=32, range=(-np.pi, np.pi), density=True, alpha=0.35,
                    label=f"limit, weight {w:g}")
        ax.set_xlabel(r"$\theta$")
        ax.set_ylabel("density")
        ax.set_title(f"quantile prompts p_i = T(s_i), N = {cfg['n']}, $\\beta$ = {cfg['beta']:g}", fontsize=9)
        ax.legend(fontsize=7)
        ax = fig.add_subplot(1, 3, 2)
        ax.loglog(ds.weight, ds.w1_quantile_prompts, "o-", label="limit of the quantile-prompt runs")
        ax.axhline(float(ds.w1_floor), color="k", ls=":", label=f"floor: N quantile midpoints ({float(ds.w1_floor):.2e})")
        ax.axhline(float(ds.inverse_s1_w1), color="C2", ls="--", lw=0.8,
                   label=f"inverse design (weight {float(ds.inverse_s1_weight):.2g})")
        ax.set_xlabel("prompt weight")
        ax.set_ylabel("circle W1 to the target")
        ax.set_title("W1 vs weight against the floor", fontsize=9)
        ax.legend(fontsize=7)
        ax = fig.add_subplot(1, 3, 3, projection="3d")
        t = ds.inverse_s2_target.values
        ax.scatter(t[:, 0], t[:, 1], t[:, 2], s=12, color="k", label="target (N draws of a vMF mixture)")
        ax.set_title(f"inverse design on S$^2$: {100 * float(ds.inverse_s2_fraction):.0f} % of {len(ds.start)} random starts "
                     f"end at the target\n(max error {float(ds.inverse_s2_max_error.max()):.1e}); on S$^1$: "
                     f"{100 * float(ds.inverse_s1_fraction):.0f} % (max {float(ds.inverse_s1_max_error.max()):.1e})",
                     fontsize=8)
        ax.legend(fontsize=7)
        fig.suptitle("universality with parallel prompts: the limit is the chosen target up to the floor", fontsize=10)
        fig.tight_layout()
        path = Path(outdir) / "universality.png"
        fig.savefig(path, dpi=110)
        p.close(fig)
        return [path]
