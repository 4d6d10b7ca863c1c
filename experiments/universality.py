r"""Universality (Imaizumi, Koyama, Isobe & Hayashi 2026): the limit of the dynamics can be made
(close to) a chosen target distribution, three ways, each against the floor (the circle W1 of the
best N-point configuration, the N quantile midpoints, to the target):

* quantile prompts (S^1): p_i = T(s_i), T the target's quantile map, s_i = (i + 1/2)/N; SA with
  Q = K = V = I and [`meanfield.ParallelPrompt`][meanfield.kernel.ParallelPrompt] ``(p, weight)`` from x(0) = p: the circle W1
  of the limit to the target (a 16384-point quantile sample) for each weight in ``weights`` (at
  N = ``n``) and for each N in ``ns`` (at ``weight_n``). A heavier weight pins tokens nearer their
  prompts, so W1 falls towards the floor.
* exact inverse design ([`meanfield.theory.inverse_prompt`][meanfield.theory.inverse_prompt]): prompts that make the N quantile
  midpoints (S^1), or N draws of the target (S^2), a stationary and stable point; from
  ``n_starts`` random starts, the fraction of runs that end at the target (max distance < 1e-6)
  and their error (solver tolerance, not a floor).
* a learned positional encoding ([`meanfield.studies.learned_pe`][meanfield.studies.learned_pe]): u(s) = U phi(s) with
  ``n_freq`` Fourier frequencies (a size independent of N), fitted with optax Adam through
  [`meanfield.simulate`][meanfield.simulate] (MMD of the end states at ``fit_t1`` from 4 random starts), then run
  to ``t1`` from ``n_starts`` other random starts: W1 vs N (``learned_ns``, fit from the paired
  Fourier start) against the floor, and at N = ``n`` from a random U instead (how the result
  depends on the start). On S^2 (s on a ``s2_side`` x ``s2_side`` grid, 2-D frequencies), the
  MMD of the limit to the target against that of N independent draws of the target.

Targets: a two-component von Mises mixture on S^1 and a two-component von Mises-Fisher mixture on
S^2 (d = 3).

    meanfield run universality [--set n=64 beta=1 weights=0.5,1,2,4,8,16]
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from scipy.special import i0e

import meanfield as mf
from meanfield import observables as obs
from meanfield import theory
from meanfield.run import register, Step, StepPreset, Var
from meanfield.studies import learned_pe

from . import universality_figure as _figure
from ._common import ToleranceConfig, midpoints


@dataclasses.dataclass(frozen=True)
class UniversalityConfig(ToleranceConfig):
    n: int = 64
    """tokens"""
    beta: float = 1.0
    weights: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
    """prompt weights of the quantile-prompt runs"""
    ns: tuple[int, ...] = (16, 32, 64, 128, 256)
    """token counts of the quantile-prompt runs at weight_n"""
    weight_n: float = 16.0
    """prompt weight of the W1-vs-N quantile-prompt runs"""
    t1: float = 200.0
    n_starts: int = 8
    """random starts of the inverse-design runs and of the learned-PE evaluation"""
    margin: float = 1.5
    """inverse design at margin x the smallest sufficient weight"""
    learned_ns: tuple[int, ...] = (16, 32, 64, 128)
    """token counts of the learned-PE fits (S^1)"""
    n_freq: int = 6
    """Fourier frequencies of the learned PE on S^1 (2 per axis on S^2)"""
    fit_steps: int = 200
    """optax Adam steps of each learned-PE fit"""
    fit_t1: float = 30.0
    """time horizon of the simulate loss"""
    s2_side: int = 8
    """learned PE on S^2: s on an s2_side x s2_side grid (N = s2_side^2)"""
    rtol: float = 1e-10
    atol: float = 1e-10

    ranges = {
        "n": "[4, 65536]",
        "beta": "(0, 100]",
        "weights": "(0, 1e6], length >= 2, distinct",
        "ns": "[4, 65536], length >= 2, distinct",
        "weight_n": "(0, 1e6]",
        "t1": "(0, 1e6]",
        "n_starts": "[1, 4096]",
        "margin": "[1, 1000]",
        "learned_ns": "[4, 65536], distinct",
        "n_freq": "[1, 1000]",
        "fit_steps": "[1, 100000]",
        "fit_t1": "(0, 1e6]",
        "s2_side": "[2, 256]",
    }


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
        w = (
            1 + np.log(rng.random() + (1 - rng.random()) * np.exp(-2 * kap[c])) / kap[c]
        )  # vMF on S^2: cos angle
        v = rng.normal(size=3)
        v -= v @ mus[c] * mus[c]
        v /= np.linalg.norm(v)
        out.append(w * mus[c] + np.sqrt(max(0.0, 1 - w * w)) * v)
    return np.asarray(out)


N_FINE = 16384


def _fine(quantile):
    return quantile(midpoints(N_FINE))


def _floor(quantile, n):
    """Circle W1 of the N quantile midpoints to the target (its fine quantile sample)."""
    s = midpoints(n)
    return float(obs.circle_w1(jnp.asarray(quantile(s)), jnp.asarray(_fine(quantile))))


def _grid2(side):
    g = midpoints(side)
    return np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)


@register
class Universality(StepPreset):
    name = "universality"
    tiny = (
        "n=8",
        "weights=1,4",
        "t1=20",
        "n_starts=2",
        "ns=8,16",
        "learned_ns=8",
        "fit_steps=3",
        "s2_side=3",
    )
    slow = True
    outputs = frozenset(
        {
            "inverse_s1_fraction",
            "inverse_s2_max_error",
            "learned_s2_mmd",
            "learned_w1",
            "w1_floor",
            "w1_quantile_prompts",
            "w1_quantile_vs_n",
        }
    )
    description = (
        "a chosen target as the limit: quantile prompts (W1 vs weight and vs N), inverse design (S^1, S^2), "
        "a learned PE (optax, W1 vs N) against the floor"
    )
    variables = {
        "theta_grid": Var("angle (grid)", "rad", "where the target density is tabulated"),
        "weight": Var("prompt weight", "1", "key mass of each token's own (parallel) prompt"),
        "token": Var("token index", "1", "i = 0..N-1 (N = n = {n})"),
        "n_tokens": Var(
            "number of tokens N", "1", "for the quantile-prompt study at weight_n = {weight_n}"
        ),
        "n_learned": Var("number of tokens N (learned PE)", "1", "sizes of the learned-PE study"),
        "fit_step": Var("fit step", "1", "optax step (fit_steps = {fit_steps})"),
        "start": Var(
            "random start", "1", "index of the random initial cloud (n_starts = {n_starts})"
        ),
        "draw": Var("i.i.d. draw", "1", "index of an i.i.d. sample of the target on S^2"),
        "s2_token": Var("token index (S^2)", "1", "tokens of the S^2 study"),
        "cloud_point": Var("target point (S^2)", "1", "points of the S^2 target cloud"),
        "xy": Var("coordinate", "1", "Cartesian coordinate of R^2"),
        "xyz": Var("coordinate", "1", "Cartesian coordinate of R^3"),
        "target_pdf": Var("target density", "1/rad", "von Mises mixture chosen as the limit"),
        "quantile_theta": Var(
            "end angles with quantile prompts",
            "rad",
            "token angles at t = {t1} with prompts p_i = T(s_i), beta = {beta}",
        ),
        "w1_quantile_prompts": Var(
            "circle W1 to the target (quantile prompts)",
            "1",
            "W1 between the tokens at t = {t1} and the target, per weight",
        ),
        "w1_floor": Var(
            "W1 floor",
            "1",
            "W1 of the N quantile midpoints to the target (the best N points can do)",
        ),
        "w1_quantile_vs_n": Var(
            "circle W1 vs N (quantile prompts)", "1", "at weight_n = {weight_n}"
        ),
        "w1_floor_vs_n": Var("W1 floor vs N", "1", "W1 of the N quantile midpoints to the target"),
        "learned_w1": Var(
            "circle W1, learned PE",
            "1",
            "end states (fit_t1 = {fit_t1}) of the learned additive PE (n_freq = {n_freq}) from random starts",
        ),
        "learned_floor": Var("W1 floor (learned PE)", "1", "W1 of the N quantile midpoints"),
        "learned_stability": Var(
            "stability of the learned target",
            "1",
            "largest real part of the linearised flow at the target (< 0: attracts)",
        ),
        "learned_losses": Var("fit loss", "1", "loss of the learned-PE fit per optax step"),
        "learned_theta": Var(
            "end angles, learned PE", "rad", "tokens at fit_t1 = {fit_t1}, largest learned N"
        ),
        "learned_random_w1": Var(
            "circle W1, learned PE from a random U", "1", "the same fit started from a random U"
        ),
        "learned_random_losses": Var("fit loss from a random U", "1", "per optax step"),
        "learned_random_theta": Var(
            "end angles, learned PE from a random U", "rad", "tokens at fit_t1 = {fit_t1}"
        ),
        "learned_random_stability": Var(
            "stability, fit from a random U",
            "1",
            "largest real part of the linearised flow at the target",
        ),
        "learned_s2_mmd": Var(
            "MMD to the S^2 target, learned PE",
            "1",
            "end states from random starts (s2_side = {s2_side})",
        ),
        "learned_s2_mmd_iid": Var(
            "MMD of i.i.d. draws to the S^2 target",
            "1",
            "the reference: N i.i.d. draws of the target",
        ),
        "learned_s2_end": Var("end state on S^2, learned PE", "1", "tokens at the end of one run"),
        "learned_s2_cloud": Var("S^2 target cloud", "1", "the target points"),
        "inverse_s1_target": Var(
            "inverse-design target on S^1",
            "1",
            "the configuration made stationary (theory.inverse_prompt)",
        ),
        "inverse_s1_max_error": Var(
            "max error to the S^1 target", "1", "max_i |x_i - target_i| at the end, per start"
        ),
        "inverse_s1_fraction": Var(
            "fraction of starts reaching the S^1 target", "1", "within margin = {margin}"
        ),
        "inverse_s1_weight": Var(
            "prompt weight of the S^1 design", "1", "weight chosen by the design"
        ),
        "inverse_s1_w1": Var("circle W1 of the S^1 design", "1", "end state to the target"),
        "inverse_s2_target": Var(
            "inverse-design target on S^2", "1", "a von Mises-Fisher mixture sample"
        ),
        "inverse_s2_max_error": Var(
            "max error to the S^2 target", "1", "max_i |x_i - target_i| at the end, per start"
        ),
        "inverse_s2_fraction": Var(
            "fraction of starts reaching the S^2 target", "1", "within margin = {margin}"
        ),
        "inverse_s2_weight": Var(
            "prompt weight of the S^2 design", "1", "weight chosen by the design"
        ),
        "inverse_s2_hessian_max": Var(
            "largest Hessian eigenvalue of the S^2 design",
            "1",
            "negative: the target is a strict local maximum",
        ),
    }
    Config = UniversalityConfig

    def steps(self, cfg):
        return (
            [
                Step(f"quantile weight={w!r}", {"kind": "quantile", "n": cfg.n, "weight": w})
                for w in cfg.weights
            ]
            + [
                Step(f"quantile n={n}", {"kind": "quantile", "n": n, "weight": cfg.weight_n})
                for n in cfg.ns
            ]
            + [
                Step(f"learned n={n}", {"kind": "learned", "n": n, "init": "paired"})
                for n in cfg.learned_ns
            ]
            + [
                Step("learned random-init", {"kind": "learned", "n": cfg.n, "init": "random"}),
                Step("learned S2", {"kind": "learned S2"}),
                Step("inverse S1", {"kind": "inverse", "d": 2}),
                Step("inverse S2", {"kind": "inverse", "d": 3}),
            ]
        )

    def _run(self, cfg, x0, p, weight):
        return np.asarray(
            mf.simulate(
                mf.Attention(cfg.beta),
                jnp.asarray(x0),
                [0.0, cfg.t1],
                prompt=mf.ParallelPrompt(p, weight),
                rtol=cfg.rtol,
                atol=cfg.atol,
            ).final
        )

    def _starts(self, cfg, n, d):
        """The n_starts random starts (N, d), shared by the inverse-design and learned-PE runs."""
        return jnp.stack(
            [
                mf.sphere_uniform(jax.random.fold_in(jax.random.key(cfg.seed), 100 + k), n, d)
                for k in range(cfg.n_starts)
            ]
        )

    def _learned(self, cfg, n, init):
        _, _, quantile = _circle_target()
        s = midpoints(n)
        fit = learned_pe.fit_additive_pe(
            _circle(quantile(s)),
            s,
            cfg.beta,
            n_freq=cfg.n_freq,
            steps=cfg.fit_steps,
            t1=cfg.fit_t1,
            init=init,
            init_scale=2.0 if init == "paired" else 1.0,
            seed=cfg.seed,
        )
        ends = np.asarray(fit.pe.limit(s, self._starts(cfg, n, 2), cfg.t1))
        fine = jnp.asarray(_fine(quantile))
        w1 = np.array(
            [float(obs.circle_w1(jnp.asarray(np.arctan2(x[:, 1], x[:, 0])), fine)) for x in ends]
        )
        return {
            "w1": w1,
            "theta": np.arctan2(ends[0][:, 1], ends[0][:, 0]),
            "losses": fit.losses,
            "stability": fit.stability,
            "floor": _floor(quantile, n),
        }

    def run_step(self, cfg, step, done):
        _, _, quantile = _circle_target()
        kind = step.params["kind"]
        if kind == "quantile":
            n, w = step.params["n"], float(step.params["weight"])
            s = midpoints(n)
            p = _circle(quantile(s))
            x = self._run(cfg, p, p, w)
            th = np.arctan2(x[:, 1], x[:, 0])
            return {
                "theta": th,
                "w1": float(obs.circle_w1(jnp.asarray(th), jnp.asarray(_fine(quantile)))),
                "floor": _floor(quantile, n),
            }
        if kind == "learned":
            return self._learned(cfg, step.params["n"], step.params["init"])
        if kind == "learned S2":
            sg = _grid2(cfg.s2_side)
            n = sg.shape[0]
            cloud = _sphere_target(2048, cfg.seed + 1)
            fit = learned_pe.fit_additive_pe(
                cloud,
                sg,
                cfg.beta,
                n_freq=2,
                steps=cfg.fit_steps,
                t1=cfg.fit_t1,
                init="random",
                init_scale=1.0,
                seed=cfg.seed,
            )
            ends = np.asarray(fit.pe.limit(sg, self._starts(cfg, n, 3), cfg.t1))
            mmd = lambda x: float(obs.mmd(jnp.asarray(x), jnp.asarray(cloud), sigma=0.3))  # noqa: E731
            ref = np.array([mmd(_sphere_target(n, cfg.seed + 50 + k)) for k in range(16)])
            return {
                "mmd": np.array([mmd(x) for x in ends]),
                "mmd_iid": ref,
                "end": ends[0],
                "cloud": cloud[:512],
                "losses": fit.losses,
            }
        d = step.params["d"]
        s = midpoints(cfg.n)
        target = _circle(quantile(s)) if d == 2 else _sphere_target(cfg.n, cfg.seed)
        need = theory.inverse_prompt(target, cfg.beta, 1e6).min_weight
        design = theory.inverse_prompt(target, cfg.beta, cfg.margin * need)
        errs = np.array(
            [
                float(np.abs(self._run(cfg, x0, design.p, cfg.margin * need) - target).max())
                for x0 in self._starts(cfg, cfg.n, d)
            ]
        )
        out = {
            "target": target,
            "prompts": design.p,
            "max_error": errs,
            "weight": cfg.margin * need,
            "min_weight": need,
            "hessian_max": design.hessian_max,
        }
        if d == 2:
            th = np.arctan2(target[:, 1], target[:, 0])
            out["w1_target"] = float(obs.circle_w1(jnp.asarray(th), jnp.asarray(_fine(quantile))))
        return out

    def step_dataset(self, cfg, results):
        th_grid, pdf, quantile = _circle_target()
        q = [results[f"quantile weight={w!r}"] for w in cfg.weights]
        qn = [results[f"quantile n={n}"] for n in cfg.ns]
        ln = [results[f"learned n={n}"] for n in cfg.learned_ns]
        lr, l2 = results["learned random-init"], results["learned S2"]
        i1, i2 = results["inverse S1"], results["inverse S2"]
        ok = lambda e: float(np.mean(e < 1e-6))  # noqa: E731
        n_steps = len(lr["losses"])
        return xr.Dataset(
            {
                "target_pdf": (("theta_grid",), pdf),
                "quantile_theta": (("weight", "token"), np.stack([r["theta"] for r in q])),
                "w1_quantile_prompts": (("weight",), np.array([float(r["w1"]) for r in q])),
                "w1_floor": ((), _floor(quantile, cfg.n)),
                "w1_quantile_vs_n": (("n_tokens",), np.array([r["w1"] for r in qn])),
                "w1_floor_vs_n": (("n_tokens",), np.array([r["floor"] for r in qn])),
                "learned_w1": (("n_learned", "start"), np.stack([r["w1"] for r in ln])),
                "learned_floor": (("n_learned",), np.array([r["floor"] for r in ln])),
                "learned_stability": (("n_learned",), np.array([r["stability"] for r in ln])),
                "learned_losses": (("n_learned", "fit_step"), np.stack([r["losses"] for r in ln])),
                "learned_theta": (
                    ("token",),
                    ln[list(cfg.learned_ns).index(cfg.n)]["theta"]
                    if cfg.n in cfg.learned_ns
                    else np.full(cfg.n, np.nan),
                ),
                "learned_random_w1": (("start",), lr["w1"]),
                "learned_random_losses": (("fit_step",), lr["losses"]),
                "learned_random_theta": (("token",), lr["theta"]),
                "learned_random_stability": ((), float(lr["stability"])),
                "learned_s2_mmd": (("start",), l2["mmd"]),
                "learned_s2_mmd_iid": (("draw",), l2["mmd_iid"]),
                "learned_s2_end": (("s2_token", "xyz"), l2["end"]),
                "learned_s2_cloud": (("cloud_point", "xyz"), l2["cloud"]),
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
            coords={
                "theta_grid": th_grid,
                "weight": list(cfg.weights),
                "token": np.arange(cfg.n),
                "n_tokens": list(cfg.ns),
                "n_learned": list(cfg.learned_ns),
                "fit_step": np.arange(n_steps),
                "start": np.arange(cfg.n_starts),
                "draw": np.arange(16),
                "xy": ["x", "y"],
                "xyz": ["x", "y", "z"],
            },
        )

    def plot(self, ds, outdir):
        return _figure.plot(self, ds, outdir)
