"""Lost in the middle at birth (Chowdhury 2026): uniform causal attention with residual mixing is
the Cesàro model, ((1 - alpha) I + alpha A)^H, and its influence profile on the last token has a
closed-form continuum limit (``meanfield.theory.cesaro_density``): a primacy tail diverging like
(log 1/s)^{H-1}, an isolated recency delta (1 - alpha)^H, and a dead zone in between.

``cesaro``: for H = 1, 2, 4, 8, 16 the discrete profile (n = 512 and 4096 tokens,
``theory.cesaro_rollout``; the engine's Jacobian and attention rollout of uniform causal
attention with ``Residual`` layers equal it to round-off, see tests/test_influence.py) against
the closed form on a log-log scale; the interior error vs n
with its fitted rate; and the dead-zone depth vs H: the residual floor H alpha (1 - alpha)^{H-1}
(the density just before the last token), and the attention-only (alpha = 1) mid-sequence
density (log 2)^{H-1}/(H-1)! against 1/(H-1)!.

    meanfield run cesaro [--set alpha=0.5]
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import xarray as xr

from meanfield import theory
from meanfield.influence import profile_stats
from meanfield.run import register, RunConfig, Step, StepPreset, Var

from ._common import plt, save_figure


@dataclasses.dataclass(frozen=True)
class CesaroConfig(RunConfig):
    depths: tuple[int, ...] = (1, 2, 4, 8, 16)
    ns: tuple[int, ...] = (512, 4096)
    """token counts drawn against the closed form"""
    n_conv: tuple[int, ...] = (256, 512, 1024, 2048, 4096, 8192)
    """token counts of the convergence fit"""
    alpha: float = 0.5
    """residual mixing weight (layer: (1 - alpha) x + alpha A x)"""
    interior: float = 0.05
    """the error is measured on s in [interior, 1 - interior]"""

    ranges = {
        "depths": "[1, 1024], distinct",
        "ns": "[8, 2**24], distinct",
        "n_conv": "[8, 2**24], length >= 3, distinct",
        "alpha": "(0, 1]",
        "interior": "(0, 0.5)",
    }


def _interior_error(n, depth, alpha, interior):
    r = np.asarray(theory.cesaro_rollout(n, depth, alpha))
    s = np.arange(1, n + 1) / n
    keep = (s >= interior) & (s <= 1 - interior)
    return float(np.max(np.abs(n * r[keep] / theory.cesaro_density(s[keep], depth, alpha) - 1)))


@register
class Cesaro(StepPreset):
    name = "cesaro"
    tiny = ("depths=1,2,4", "ns=64,128", "n_conv=64,128,256")
    slow = False
    outputs = frozenset({"dead_zone_depth_n128", "interior_rel_error", "profile_n64"})
    description = "Cesàro theory of position bias: discrete vs closed-form influence for H = 1..16, dead zone vs H"
    variables = {
        "depth": Var("depth H", "layers", "number of causal attention layers"),
        "n_conv": Var(
            "sequence length (convergence)", "tokens", "the lengths of the convergence study"
        ),
        "s*": Var("relative position s", "1", "s = j / n of input token j (1..n)"),
        "profile_n*": Var(
            "influence of input position on the last token",
            "1",
            "last row of the discrete uniform-causal rollout ((1 - alpha) I + alpha C)^H, alpha = {alpha}, at each depth",
        ),
        "closed_form_n*": Var(
            "continuum influence density (Cesàro)",
            "1",
            "closed-form continuum limit of the rollout: sum_k binom(H, k) alpha^k (1 - alpha)^(H - k) (log 1/s)^(k-1) / (k-1)!, alpha = {alpha} (NaN at s = 1, the recency atom)",
        ),
        "primacy_mass_n*": Var(
            "primacy mass", "1", "influence mass on the first positions (profile_stats)"
        ),
        "recency_mass_n*": Var(
            "recency mass", "1", "influence mass on the last positions (profile_stats)"
        ),
        "dead_zone_depth_n*": Var(
            "dead-zone depth",
            "1",
            "depth of the influence minimum relative to the ends (profile_stats)",
        ),
        "dead_zone_location_n*": Var(
            "dead-zone location",
            "1",
            "relative position s of the influence minimum (profile_stats)",
        ),
        "interior_rel_error": Var(
            "interior relative error",
            "1",
            "max relative difference between the discrete profile and the closed form over the interior fraction {interior} of positions",
        ),
        "error_rate": Var(
            "convergence rate", "1", "log-log slope of interior_rel_error against n (theory: -1)"
        ),
        "recency_theory": Var(
            "recency mass (theory)",
            "1",
            "closed-form weight of the last token after H layers, alpha = {alpha}",
        ),
        "floor_theory": Var(
            "profile floor (theory)", "1", "H alpha (1 - alpha)^(H-1), alpha = {alpha}"
        ),
        "midpoint_depth_attention_only": Var(
            "midpoint influence (attention only)",
            "1",
            "n times the influence of the middle token with alpha = 1",
        ),
        "midpoint_depth_theory": Var(
            "midpoint influence (theory)",
            "1",
            "(log 2)^(H-1) / (H-1)!, the continuum value at s = 1/2 with alpha = 1",
        ),
    }
    Config = CesaroConfig

    def steps(self, cfg):
        """One step per n of the profiles, one per depth of the convergence fit."""
        return [Step(f"n={n}", {"n": n}) for n in cfg.ns] + [
            Step(f"conv H={h}", {"depth": h}) for h in cfg.depths
        ]

    def run_step(self, cfg, step, done):
        if "n" in step.params:
            n = step.params["n"]
            return {
                "profile": np.stack(
                    [np.asarray(theory.cesaro_rollout(n, h, cfg.alpha)) for h in cfg.depths]
                )
            }
        h = step.params["depth"]
        return {
            "error": np.array([_interior_error(n, h, cfg.alpha, cfg.interior) for n in cfg.n_conv])
        }

    def step_dataset(self, cfg, results):
        data, coords = {}, {"depth": list(cfg.depths), "n_conv": list(cfg.n_conv)}
        for n in cfg.ns:
            prof = results[f"n={n}"]["profile"]  # (H, n)
            s = np.arange(1, n + 1) / n
            data[f"profile_n{n}"] = (("depth", f"s{n}"), prof)
            data[f"closed_form_n{n}"] = (
                ("depth", f"s{n}"),
                np.stack(
                    [
                        np.append(theory.cesaro_density(s[:-1], h, cfg.alpha), np.nan)
                        for h in cfg.depths
                    ]
                ),
            )
            coords[f"s{n}"] = s
            stats = [profile_stats(p) for p in prof]
            for key in ("primacy_mass", "recency_mass", "dead_zone_depth", "dead_zone_location"):
                data[f"{key}_n{n}"] = (("depth",), np.array([st[key] for st in stats]))
        err = np.stack([results[f"conv H={h}"]["error"] for h in cfg.depths])
        data["interior_rel_error"] = (("depth", "n_conv"), err)
        rates = [
            np.polyfit(np.log(cfg.n_conv), np.log(e), 1)[0] if np.all(e > 0) else np.nan
            for e in err
        ]
        data["error_rate"] = (("depth",), np.array(rates))
        data["recency_theory"] = (
            ("depth",),
            np.array([theory.cesaro_recency(h, cfg.alpha) for h in cfg.depths]),
        )
        data["floor_theory"] = (
            ("depth",),
            np.array([h * cfg.alpha * (1 - cfg.alpha) ** (h - 1) for h in cfg.depths]),
        )
        nmax = max(cfg.ns)
        mid = np.array(
            [nmax * float(theory.cesaro_rollout(nmax, h, 1.0)[nmax // 2 - 1]) for h in cfg.depths]
        )
        data["midpoint_depth_attention_only"] = (("depth",), mid)
        data["midpoint_depth_theory"] = (
            ("depth",),
            np.array([math.log(2) ** (h - 1) / math.factorial(h - 1) for h in cfg.depths]),
        )
        return xr.Dataset(data, coords=coords)

    def plot(self, ds, outdir):
        cfg = self.Config.from_attrs(ds)
        p = plt()
        fig, axes = p.subplots(1, 3, figsize=(16, 4.8))
        ax = axes[0]
        cmap = p.get_cmap("plasma")
        depths = ds.depth.values
        ns = cfg.ns
        for i, h in enumerate(depths):
            c = cmap(i / max(1, len(depths)))
            for n, ls in zip(ns, ("--", "-")):
                s = ds[f"s{n}"].values
                ax.plot(
                    s[:-1],
                    n * ds[f"profile_n{n}"].sel(depth=h).values[:-1],
                    ls=ls,
                    color=c,
                    lw=1.2,
                    label=f"H = {h}" if n == ns[-1] else None,
                )
            s = ds[f"s{ns[-1]}"].values
            ax.plot(
                s[:-1], ds[f"closed_form_n{ns[-1]}"].sel(depth=h).values[:-1], ":", color="k", lw=1
            )
            ax.plot(
                [1.0], [ns[-1] * ds[f"profile_n{ns[-1]}"].sel(depth=h).values[-1]], "o", color=c
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(1e-6, None)
        ax.set_xlabel("input position s = j/n")
        ax.set_ylabel("influence density n p_j on the last token")
        ax.set_title(
            f"discrete (n = {ns[0]} dashed, {ns[-1]} solid) vs closed form (dotted)\n"
            f"alpha = {cfg.alpha}; dots: last token (recency delta, times n)",
            fontsize=9,
        )
        ax.legend(fontsize=7)
        ax = axes[1]
        nc = ds.n_conv.values
        for i, h in enumerate(depths):
            rate = float(ds.error_rate.sel(depth=h))
            if not np.isfinite(rate):
                continue  # H = 1: the discrete profile is exactly the closed form
            ax.loglog(
                nc,
                ds.interior_rel_error.sel(depth=h).values,
                "o-",
                color=cmap(i / len(depths)),
                label=f"H = {h}: rate {rate:.2f}",
            )
        ax.set_xticks(nc, [str(v) for v in nc])
        ax.minorticks_off()
        ax.set_xlabel("n tokens")
        ax.set_ylabel(f"max relative error on s in [{cfg.interior}, {1 - cfg.interior}]")
        ax.set_title("discrete -> continuum convergence", fontsize=9)
        ax.legend(fontsize=7)
        ax = axes[2]
        nmax = max(ns)
        ax.semilogy(
            depths, ds[f"dead_zone_depth_n{nmax}"].values, "o", label=f"residual floor, n = {nmax}"
        )
        ax.semilogy(depths, ds.floor_theory.values, "-", label="H alpha (1 - alpha)^{H-1}")
        ax.semilogy(
            depths,
            ds.midpoint_depth_attention_only.values,
            "s",
            label=f"alpha = 1, density at s = 1/2, n = {nmax}",
        )
        ax.semilogy(depths, ds.midpoint_depth_theory.values, "-", label="(log 2)^{H-1} / (H-1)!")
        ax.semilogy(depths, [1 / math.factorial(h - 1) for h in depths], "k:", label="1 / (H-1)!")
        ax.set_xlabel("depth H")
        ax.set_ylabel("dead-zone depth (density)")
        ax.set_title("dead zone vs depth", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = Path(outdir) / "cesaro.png"
        save_figure(fig, path, dpi=110)
        return [path]
