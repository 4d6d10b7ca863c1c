"""Lost in the middle at birth: random-initialisation GPT-2- and Qwen2-style decoders, with and
without RoPE, against the Cesàro theory (Chowdhury 2026).

``step0``: influence of each input position on the last position's output
(||d h_last / d emb_j||, ``meanfield.studies.step0_influence``), averaged over ``n_inits`` random
inits and inputs, for gpt2/qwen2 x RoPE off/on, on a log-log density plot with the seed-to-seed
spread, next to the discrete Cesàro profile whose residual weight alpha is matched to the
measured recency mass ((1 - alpha)^H = recency).

    meanfield run step0 [--set n=128 --set depth=12]
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np
import xarray as xr

from meanfield import theory
from meanfield.influence import profile_stats
from meanfield.studies.decoders import DecoderConfig, step0_influence
from meanfield.run import TracedPreset, RunConfig, Var, register

from ._common import plt, save_figure

VARIANTS = (("gpt2", False), ("gpt2", True), ("qwen2", False), ("qwen2", True))


@dataclasses.dataclass(frozen=True)
class Step0Config(RunConfig):
    n: int = 64
    """sequence length"""
    depth: int = 8
    width: int = 64
    heads: int = 4
    n_inits: int = 8
    """random (model, input) pairs averaged"""

    ranges = {
        "n": "[4, 16384]",
        "depth": "[1, 1024]",
        "width": "[2 * heads, 4096], multiple of 2 * heads",
        "heads": "[1, width // 2], divides width // 2",
        "n_inits": "[2, 1024]",
    }


@register
class Step0(TracedPreset):
    name = "step0"
    tiny = ("n=8", "depth=2", "width=8", "heads=2", "n_inits=2")
    slow = True
    outputs = frozenset({"alpha_matched", "influence", "influence_mean"})
    description = "random-init GPT-2/Qwen2-style decoders, RoPE on/off: last-token influence U-shape vs Cesàro theory"
    variables = {
        "variant": Var(
            "decoder variant",
            "1",
            "GPT-2- or Qwen2-style decoder, RoPE on or off (depth = {depth}, width = {width}, heads = {heads})",
        ),
        "position": Var("input position j", "1", "token index of the input, N = n = {n}"),
        "init": Var("initialisation index", "1", "random initialisation (n_inits = {n_inits})"),
        "influence": Var(
            "last-token influence",
            "1",
            "||d h_last / d x_j|| of the random-init decoder, normalised over positions",
        ),
        "influence_mean": Var(
            "mean last-token influence", "1", "mean of influence over initialisations"
        ),
        "influence_sem": Var("standard error of the influence", "1", "over initialisations"),
        "cesaro_matched": Var(
            "Cesàro profile (matched)",
            "1",
            "the uniform-causal rollout with alpha fitted to the profile",
        ),
        "alpha_matched": Var(
            "matched residual weight alpha", "1", "alpha of the best-fitting Cesàro profile"
        ),
        "primacy_mass": Var(
            "primacy mass", "1", "influence mass on the first positions (profile_stats)"
        ),
        "recency_mass": Var(
            "recency mass", "1", "influence mass on the last positions (profile_stats)"
        ),
        "dead_zone_depth": Var(
            "dead-zone depth", "1", "depth of the influence minimum relative to the ends"
        ),
        "dead_zone_location": Var(
            "dead-zone location", "1", "relative position of the influence minimum"
        ),
        "u_ratio": Var("U ratio", "1", "(first + last influence) / (2 x middle influence)"),
    }
    Config = Step0Config
    sweepable = False

    def times(self, cfg):
        return np.array([0.0, 1.0])

    vmap_keys = ("seed",)

    def init(self, cfg, p):
        return jax.numpy.zeros((len(VARIANTS), cfg.n_inits, cfg.n))

    def advance(self, cfg, p, state, ts):
        out = []
        for style, rope in VARIANTS:
            dc = DecoderConfig(
                style=style,
                depth=cfg.depth,
                width=cfg.width,
                heads=cfg.heads,
                rope=rope,
                max_len=max(cfg.n, 8),
            )
            out.append(step0_influence(dc, cfg.n, jax.random.key(p["seed"]), n_inits=cfg.n_inits))
        new = jax.numpy.stack(out)  # (variant, init, n); the same inits for RoPE on and off
        return new, {"x": new[None]}

    def dataset(self, cfg, ts, recs, grid):
        return _dataset(cfg, np.asarray(recs["x"][-1]))

    def plot(self, ds, outdir):
        cfg = self.Config.from_attrs(ds)
        p = plt()
        fig, axes = p.subplots(1, 2, figsize=(12, 4.8))
        n = cfg.n
        s = ds.position.values
        for i, v in enumerate(ds.variant.values):
            m, e = (
                n * ds.influence_mean.sel(variant=v).values,
                n * ds.influence_sem.sel(variant=v).values,
            )
            ax = axes[0] if v.startswith("gpt2") else axes[1]
            ls = "-" if v.endswith("-rope") else "--"
            (line,) = ax.plot(
                s, m, ls, lw=1.5, label=f"{v}: recency {float(ds.recency_mass.sel(variant=v)):.3f}"
            )
            ax.fill_between(
                s, np.maximum(m - 2 * e, 1e-6), m + 2 * e, color=line.get_color(), alpha=0.2
            )
            if v.endswith("-rope"):
                ax.plot(
                    s,
                    n * ds.cesaro_matched.sel(variant=v).values,
                    "k:",
                    lw=1.2,
                    label=f"Cesàro, alpha matched = {float(ds.alpha_matched.sel(variant=v)):.3f}",
                )
        for ax, title in zip(
            axes,
            ("GPT-2 style (learned positions, pre-LN, GELU)", "Qwen2 style (RMSNorm, SwiGLU, GQA)"),
        ):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("input position j / n")
            ax.set_ylabel("influence density on the last token")
            ax.set_title(
                f"{title}\nH = {cfg.depth}, width {cfg.width}, n = {n}, {cfg.n_inits} inits (bands: 2 s.e.)",
                fontsize=9,
            )
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = Path(outdir) / "step0.png"
        save_figure(fig, path, dpi=110)
        return [path]


def _dataset(cfg, prof):
    names = [f"{s}-{'rope' if r else 'norope'}" for s, r in VARIANTS]
    mean = prof.mean(1)
    stats = [profile_stats(m) for m in mean]
    alpha = np.array([1 - st["recency_mass"] ** (1 / cfg.depth) for st in stats])
    ces = np.stack([np.asarray(theory.cesaro_rollout(cfg.n, cfg.depth, a)) for a in alpha])
    data = {
        "influence": (("variant", "init", "position"), prof),
        "influence_mean": (("variant", "position"), mean),
        "influence_sem": (("variant", "position"), prof.std(1, ddof=1) / np.sqrt(prof.shape[1])),
        "cesaro_matched": (("variant", "position"), ces),
        "alpha_matched": (("variant",), alpha),
    }
    for key in ("primacy_mass", "recency_mass", "dead_zone_depth", "dead_zone_location", "u_ratio"):
        data[key] = (("variant",), np.array([st[key] for st in stats]))
    return xr.Dataset(
        data,
        coords={
            "variant": names,
            "position": np.arange(1, cfg.n + 1) / cfg.n,
            "init": np.arange(prof.shape[1]),
        },
    )
