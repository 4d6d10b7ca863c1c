"""Position bias from the attention mask (Wu, Wang, Jegelka, Jadbabaie 2025): masks as directed
graphs. The causal mask makes the first token a sink that every path through depth can reach,
so deeper layers weigh early positions more; decay (ALiBi) and window masks, and RoPE, add
distance decay inside each layer, which holds the influence near the end for more layers, and
across depth this trades off against the cumulative weight of early positions.

``masks``: the same start (tokens around one direction, ``spread``), H post-LN layers
x <- n(x + h A x) of causal / causal + ALiBi / causal window / causal + RoPE attention. For each
mask and each depth H in ``depths``, the last token's influence profile two ways (the Jacobian
||d x_last(H) / d x_j(0)|| through the engine's layers, and the attention rollout
prod_l ((1 - alpha) I + alpha A_l) from the engine's own attention matrices), averaged over
``n_starts`` random starts, and the mask graph alone (beta = 0) as the reference. The theory
of the graph alone (``meanfield.theory``): the causal mask moves the mean influence position
geometrically, E[s] = (1 - alpha/2)^H (``cesaro_mean_position``); decay and window masks move it
back additively, by ``mask_walk_drift`` tokens per layer.

    meanfield run masks [--set beta=4 --set alibi=0.1 --set window=16]
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

import meanfield as mf
from meanfield import theory
from meanfield.influence import layers_influence, rollout
from meanfield.run import TracedPreset, RunConfig, Var, register

from ._common import plt, save_figure

MASKS = ("causal", "alibi", "window", "rope")


@dataclasses.dataclass(frozen=True)
class MasksConfig(RunConfig):
    n: int = 128
    """tokens"""
    d: int = 16
    """token dimension (even, for RoPE)"""
    beta: float = 4.0
    depths: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    h: float = 1.0
    """post-LN layer step: x <- n(x + h A x)"""
    alpha: float = 0.5
    """rollout residual weight: prod ((1 - alpha) I + alpha A); h / (1 + h) matches post-LN of aligned tokens"""
    alibi: float = 0.1
    """ALiBi slope per token: b_ij = -alibi (i - j)"""
    window: int = 16
    """causal window: i attends to j iff 0 <= i - j < window"""
    rope_base: float = 10000.0
    spread: float = 1.0
    """start: x_i = n(e_1 + spread g_i), g_i standard Gaussian (large = uniform on the sphere)"""
    n_starts: int = 4
    """random starts averaged"""

    ranges = {
        "n": "[max(8, window + 1), 16384]",
        "d": "[2, 4096], even",
        "beta": "[0, 1000]",
        "depths": "[1, 10000], length >= 2, increasing",
        "h": "(0, 100]",
        "alpha": "(0, 1]",
        "alibi": "(0, 1e4]",
        "window": "[1, n)",
        "rope_base": "(1, 1e12]",
        "spread": "(0, 1e6]",
        "n_starts": "[1, 1024]",
    }


def attention(cfg, mask: str, beta) -> mf.Attention:
    """The engine kernel of one mask variant."""
    if mask == "causal":
        return mf.Attention(beta, mask=mf.Causal())
    if mask == "alibi":
        return mf.Attention(beta, mask=mf.Causal() & mf.ALiBi(cfg.alibi))
    if mask == "window":
        return mf.Attention(beta, mask=mf.Causal() & mf.Window(cfg.window))
    if mask == "rope":
        return mf.Attention(beta, mask=mf.Causal(), pe=mf.RoPE(cfg.rope_base))
    raise ValueError(f"unknown mask {mask!r}; expected one of {MASKS}")


def drift(cfg, mask: str) -> float:
    """Tokens per layer by which the graph-only (beta = 0) rollout moves back (inf: causal, geometric)."""
    if mask == "alibi":
        return theory.mask_walk_drift(cfg.alpha, lam=cfg.alibi)
    if mask == "window":
        return theory.mask_walk_drift(cfg.alpha, window=cfg.window)
    return float("inf")


def _profiles(cfg, attn, x0):
    """(Jacobian, rollout) profiles on the last token after each depth, each (len(depths), n), unit mass."""
    norm = mf.PostLN()
    jac = layers_influence(attn, x0, h=cfg.h, norm=norm, depths=cfg.depths)
    xs = mf.layers(attn, x0, max(cfg.depths), h=cfg.h, norm=norm).xs[:-1]
    roll = rollout(attn, xs, cfg.alpha, depths=cfg.depths)
    return jac / jnp.sum(jac, axis=-1, keepdims=True), roll


@register
class Masks(TracedPreset):
    name = "masks"
    tiny = ("n=12", "d=4", "depths=1,3", "window=3", "n_starts=2")
    slow = False
    outputs = frozenset({"first_token_mass", "influence", "mean_position_graph_theory"})
    description = "causal vs ALiBi vs window vs RoPE: last-token influence across depth (Wu et al. 2025), Jacobian and rollout"
    variables = {
        "mask": Var(
            "mask",
            "1",
            "causal, causal + ALiBi (alibi = {alibi}), causal + window (window = {window}) or causal + RoPE (rope_base = {rope_base})",
        ),
        "estimator": Var(
            "influence estimator",
            "1",
            "jacobian (||d x_last(H) / d x_j(0)||), rollout (prod ((1 - alpha) I + alpha A), alpha = {alpha}) or graph (beta = 0 rollout)",
        ),
        "depth": Var("depth", "layers", "number of layers H (step h = {h})"),
        "position": Var("input position j", "1", "token index of the input"),
        "decay_mask": Var("decay mask", "1", "the masks whose walk drift has a closed form"),
        "influence": Var(
            "influence of input position on the last token",
            "1",
            "normalised profile over input positions, beta = {beta}, n_starts = {n_starts} starts",
        ),
        "first_token_mass": Var("first-token mass", "1", "share of the influence on position 0"),
        "primacy_mass": Var(
            "primacy mass", "1", "influence mass on the first positions (profile_stats)"
        ),
        "recency_mass": Var(
            "recency mass", "1", "influence mass on the last positions (profile_stats)"
        ),
        "mean_position": Var(
            "mean influence position", "1", "influence-weighted mean of j / (N - 1)"
        ),
        "drift_theory": Var(
            "walk drift per layer (theory)",
            "tokens",
            "how far decay and window masks move the mean influence position back per layer (theory.mask_walk_drift)",
        ),
        "mean_position_graph_theory": Var(
            "mean influence position (graph theory)",
            "1",
            "beta = 0 reference: (1 - alpha/2)^H for causal (theory.cesaro_mean_position), drift for the others",
        ),
    }
    Config = MasksConfig
    sweepable = False
    vmap_keys = ("beta", "seed")

    def times(self, cfg):
        return np.array([0.0, 1.0])

    def init(self, cfg, p):
        return jnp.zeros((len(MASKS), 3, len(cfg.depths), cfg.n))

    def advance(self, cfg, p, state, ts):
        keys = jax.random.split(jax.random.key(p["seed"]), cfg.n_starts)
        e1 = jnp.zeros(cfg.d).at[0].set(1.0)
        x0s = jax.vmap(
            lambda k: mf.geometry.normalise(e1 + cfg.spread * jax.random.normal(k, (cfg.n, cfg.d)))
        )(keys)
        out = []
        for mask in MASKS:
            attn = attention(cfg, mask, p["beta"])
            jac, roll = jax.vmap(lambda x: _profiles(cfg, attn, x))(x0s)
            graph = rollout(
                attention(cfg, mask, 0.0),
                x0s[0][None].repeat(max(cfg.depths), 0),
                cfg.alpha,
                depths=cfg.depths,
            )  # beta = 0: the scores are constant, only the mask graph acts
            out.append(jnp.stack([jac.mean(0), roll.mean(0), graph]))
        new = jnp.stack(out)  # (mask, method, depth, position)
        return new, {"x": new[None]}

    def dataset(self, cfg, ts, recs, grid):
        prof = np.asarray(recs["x"][-1])
        s = np.arange(1, cfg.n + 1) / cfg.n
        dims = ("mask", "estimator", "depth")
        data = {
            "influence": (dims + ("position",), prof),
            "first_token_mass": (dims, prof[..., 0]),
            "primacy_mass": (dims, prof[..., s <= 0.1].sum(-1)),
            "recency_mass": (dims, prof[..., s > 0.9].sum(-1)),
            "mean_position": (dims, (prof * s).sum(-1)),
            "drift_theory": (
                ("decay_mask",),
                np.array([drift(cfg, m) for m in ("alibi", "window")]),
            ),
        }
        hs = np.asarray(cfg.depths, float)
        theory_pos = np.stack(
            [
                np.array([theory.cesaro_mean_position(cfg.n, int(hh), cfg.alpha) for hh in hs])
                if not np.isfinite(drift(cfg, m))
                else np.maximum(1.0 - hs * drift(cfg, m) / cfg.n, 1.0 / cfg.n)
                for m in MASKS
            ]
        )
        data["mean_position_graph_theory"] = (("mask", "depth"), theory_pos)
        coords = {
            "mask": list(MASKS),
            "estimator": ["jacobian", "rollout", "graph"],
            "depth": list(cfg.depths),
            "position": s,
            "decay_mask": ["alibi", "window"],
        }
        return xr.Dataset(data, coords=coords)

    def plot(self, ds, outdir):
        cfg = self.Config.from_attrs(ds)
        p = plt()
        fig, axes = p.subplots(2, 4, figsize=(18, 8.4))
        cmap = p.get_cmap("viridis")
        depths = ds.depth.values
        s = ds.position.values
        n = len(s)
        titles = {
            "causal": "causal",
            "alibi": f"causal + ALiBi (slope {cfg.alibi})",
            "window": f"causal window (w = {cfg.window})",
            "rope": f"causal + RoPE (base {cfg.rope_base:g})",
        }
        for ax, mask in zip(axes[0], ds.mask.values):
            for i, hh in enumerate(depths):
                c = cmap(i / max(1, len(depths) - 1))
                prof = ds.influence.sel(mask=mask, depth=hh)
                ax.plot(
                    s,
                    n * prof.sel(estimator="jacobian").values,
                    "-",
                    color=c,
                    lw=1.3,
                    label=f"H = {hh}",
                )
                ax.plot(s, n * prof.sel(estimator="rollout").values, ":", color=c, lw=1.0)
            ax.set_yscale("log")
            ax.set_ylim(1e-4, 2 * n)
            ax.set_xlabel("input position j / n")
            ax.set_title(
                f"{titles[mask]}\nsolid: Jacobian, dotted: rollout (alpha = {cfg.alpha})",
                fontsize=9,
            )
        axes[0][0].set_ylabel("influence density on the last token")
        axes[0][0].legend(fontsize=7, ncol=2)
        colors = dict(zip(ds.mask.values, ("C0", "C1", "C2", "C3")))
        panels = (
            ("first_token_mass", "mass on the first token (sink)", True),
            ("recency_mass", "mass on the last 10 % of positions", False),
            ("mean_position", "mean influence position E[s]", False),
        )
        for ax, (var, label, logy) in zip(axes[1][:3], panels):
            for mask in ds.mask.values:
                ax.plot(
                    depths,
                    ds[var].sel(mask=mask, estimator="jacobian").values,
                    "o-",
                    color=colors[mask],
                    label=mask,
                )
                ax.plot(
                    depths,
                    ds[var].sel(mask=mask, estimator="graph").values,
                    "x--",
                    color=colors[mask],
                    lw=0.8,
                    alpha=0.7,
                )
            if var == "mean_position":
                for mask in ds.mask.values:
                    ax.plot(depths, ds.mean_position_graph_theory.sel(mask=mask).values, "k:", lw=1)
            ax.set_xscale("log", base=2)
            if logy:
                ax.set_yscale("log")
                ax.set_ylim(1e-6, 1.5)
            ax.set_xlabel("depth H")
            ax.set_title(
                label + ("\ndotted: theory of the mask graph" if var == "mean_position" else ""),
                fontsize=9,
            )
            ax.grid(alpha=0.3)
        axes[1][0].legend(fontsize=8)
        ax = axes[1][3]
        for mask in ds.mask.values:
            ax.plot(
                ds.recency_mass.sel(mask=mask, estimator="jacobian").values,
                ds.primacy_mass.sel(mask=mask, estimator="jacobian").values,
                "o-",
                color=colors[mask],
                label=mask,
            )
        ax.set_xlabel("recency mass (last 10 %)")
        ax.set_ylabel("primacy mass (first 10 %)")
        ax.set_title("trade-off across depth (H increases from right to left)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.suptitle(
            f"n = {n}, d = {cfg.d}, post-LN layers h = {cfg.h}, beta = {cfg.beta}, "
            f"{cfg.n_starts} starts (spread {cfg.spread}).  Bottom: o- Jacobian at beta = {cfg.beta}, "
            "x-- the mask graph alone (beta = 0, rollout)",
            fontsize=10,
        )
        fig.tight_layout()
        path = Path(outdir) / "masks.png"
        save_figure(fig, path, dpi=100)
        return [path]
