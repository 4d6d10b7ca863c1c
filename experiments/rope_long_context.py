"""RoPE distinguishes neither positions nor tokens at long context (Du et al. 2026).

``rope-long-context``: Monte-Carlo estimates (``meanfield.studies.rope_locality``, Wilson 95 % intervals) of

* the locality probability P(s(q, k, Delta_1) > s(q, k, Delta_2)), Delta_1 < Delta_2 < L, and
* the token-consistency flip probability (the ordering of two keys' scores flips between two
  distances),

against context length L (log x) for several RoPE bases; the base trade-off (locality at a short
context against flips at a long one, one point per base); the fraction of (q, k, Delta) for which
a position at least L/4 away gives the same score (1 % of its spread); and the same two
properties measured on the engine's own multi-head attention after 0 and ``n_layers`` post-LN
layers (``meanfield.studies.rope_locality.engine_locality``).

    meanfield run rope-long-context [--set d=128 --set n_samples=400000]
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

import meanfield as mf
from meanfield.studies import rope_locality as rope
from meanfield.run import register, RunConfig, Step, StepPreset, Var

from ._common import plt, save_figure


@dataclasses.dataclass(frozen=True)
class RopeConfig(RunConfig):
    d: int = 64
    """head dimension"""
    bases: tuple[float, ...] = (10.0, 100.0, 10000.0, 1000000.0)
    lengths: tuple[int, ...] = (4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576)
    signal: float = 1.0
    """shared mean of queries and keys (content similarity), in units of the noise norm"""
    n_samples: int = 131072
    """Monte-Carlo draws per estimate"""
    tradeoff_bases: tuple[float, ...] = (
        3.0,
        10.0,
        30.0,
        100.0,
        1000.0,
        10000.0,
        100000.0,
        1000000.0,
        100000000.0,
    )
    short: int = 16
    """context length of the locality axis of the trade-off"""
    long: int = 4096
    """context length of the flip axis of the trade-off"""
    engine_d: int = 16
    engine_heads: int = 4
    engine_base: float = 100.0
    engine_beta: float = 4.0
    n_layers: int = 2
    engine_lengths: tuple[int, ...] = (16, 64, 256, 1024, 2048)
    n_sequences: int = 4
    twin_max_length: int = 16384
    """the score-twin fraction is measured up to this length (it scans all L positions)"""

    ranges = {
        "d": "[2, 1024], even",
        "bases": "(1, 1e12], distinct",
        "lengths": "[2, 2**24], distinct",
        "signal": "[0, 1000]",
        "n_samples": "[1000, 2**20]",
        "tradeoff_bases": "(1, 1e12], distinct",
        "short": "[2, 2**24]",
        "long": "[2, 2**24]",
        "engine_d": "[2, 1024], even",
        "engine_heads": "[1, 64]",
        "engine_base": "(1, 1e12]",
        "engine_beta": "[0, 1000]",
        "n_layers": "[0, 1000]",
        "engine_lengths": "[3, 16384], distinct",
        "n_sequences": "[1, 1024]",
        "twin_max_length": "[2, 2**24]",
    }


def _est(e):
    return [e.p, e.lo, e.hi]


@register
class RopeLongContext(StepPreset):
    name = "rope-long-context"
    tiny = (
        "d=8",
        "bases=10,100",
        "lengths=4,64",
        "n_samples=2000",
        "tradeoff_bases=10,100",
        "short=8",
        "long=64",
        "engine_d=8",
        "engine_heads=2",
        "engine_lengths=8,16",
        "n_sequences=1",
        "twin_max_length=64",
    )
    slow = True
    outputs = frozenset({"consistency_flip", "engine_locality", "locality", "tradeoff_flip"})
    description = "RoPE at long context (Du et al. 2026): locality and token-consistency failures vs length and base"
    variables = {
        "base": Var("RoPE base", "1", "frequency base of the rotary encoding (d = {d})"),
        "length": Var("context length", "tokens", "distance range of the sampled pairs"),
        "stat": Var(
            "statistic",
            "1",
            "estimate and its 95 % interval (lo, hi) over n_samples = {n_samples} samples",
        ),
        "tradeoff_base": Var(
            "RoPE base (trade-off)",
            "1",
            "bases of the locality vs consistency trade-off, short = {short}, long = {long}",
        ),
        "layers": Var(
            "engine layers",
            "layers",
            "layers of the engine's attention (0 or n_layers = {n_layers})",
        ),
        "engine_length": Var(
            "engine context length", "tokens", "sequence lengths of the engine runs"
        ),
        "locality": Var(
            "locality failure probability",
            "1",
            "P(a farther key outscores a nearer copy of the same key), Du et al. 2026",
        ),
        "consistency_flip": Var(
            "token-consistency failure probability",
            "1",
            "P(the preferred of two keys flips between distances)",
        ),
        "unchanged_position": Var(
            "positions with an identical score",
            "1",
            "share of distances at which the score does not change",
        ),
        "tradeoff_locality": Var("locality failure (trade-off)", "1", "at context short = {short}"),
        "tradeoff_flip": Var("consistency failure (trade-off)", "1", "at context long = {long}"),
        "engine_locality": Var(
            "locality failure, engine",
            "1",
            "through meanfield.Attention with RoPE (heads = {engine_heads}, base = {engine_base}, beta = {engine_beta})",
        ),
        "engine_flip": Var(
            "consistency failure, engine", "1", "through meanfield.Attention with RoPE"
        ),
    }
    Config = RopeConfig

    def steps(self, cfg):
        """One step per base (all lengths), the trade-off curve, and the engine: progress and resume."""
        return [Step(f"base={b!r}", {"index": i, "base": b}) for i, b in enumerate(cfg.bases)] + [
            Step("tradeoff"),
            Step("engine"),
        ]

    def run_step(self, cfg, step, done):
        name = step.name
        key = jax.random.key(cfg.seed)
        dist = rope.QKDistribution(cfg.d, cfg.signal)
        if name == "tradeoff":
            trade = np.array(
                [
                    [
                        *_est(
                            rope.locality_probability(
                                jax.random.fold_in(key, 7000 + i), cfg.short, dist, b, cfg.n_samples
                            )
                        ),
                        *_est(
                            rope.consistency_flip_probability(
                                jax.random.fold_in(key, 8000 + i), cfg.long, dist, b, cfg.n_samples
                            )
                        ),
                    ]
                    for i, b in enumerate(cfg.tradeoff_bases)
                ]
            )
            return {"trade": trade}
        if name == "engine":
            q = jnp.eye(cfg.engine_d) + 0.3 * jax.random.normal(
                jax.random.fold_in(key, 9), (cfg.engine_heads, cfg.engine_d, cfg.engine_d)
            )
            attn = mf.Attention(
                cfg.engine_beta, Q=q, K=q, mask=mf.Causal(), pe=mf.RoPE(cfg.engine_base)
            )
            eng = np.zeros(
                (2, len(cfg.engine_lengths), 2, 3)
            )  # (layers 0 / n_layers, length, locality/flip, est)
            for a, nl in enumerate((0, cfg.n_layers)):
                for j, n in enumerate(cfg.engine_lengths):
                    e_loc, e_flip = rope.engine_locality(
                        attn,
                        jax.random.fold_in(key, 9000 + j),
                        n,
                        d=cfg.engine_d,
                        signal=cfg.signal,
                        n_layers=nl,
                        n_sequences=cfg.n_sequences,
                    )
                    eng[a, j] = [_est(e_loc), _est(e_flip)]
            return {"eng": eng}
        i, b = step.params["index"], step.params["base"]
        loc, flip, same = (np.zeros((len(cfg.lengths), 3)) for _ in range(3))
        for j, n in enumerate(cfg.lengths):
            k = jax.random.fold_in(key, 1000 * i + j)
            loc[j] = _est(
                rope.locality_probability(jax.random.fold_in(k, 0), n, dist, b, cfg.n_samples)
            )
            flip[j] = _est(
                rope.consistency_flip_probability(
                    jax.random.fold_in(k, 1), n, dist, b, cfg.n_samples
                )
            )
            if n <= cfg.twin_max_length:
                same[j] = _est(
                    rope.unchanged_fraction(jax.random.fold_in(k, 2), n, dist, b, n_samples=128)
                )
            else:
                same[j] = np.nan
        return {"loc": loc, "flip": flip, "same": same}

    def step_dataset(self, cfg, results):
        per = [results[f"base={b!r}"] for b in cfg.bases]
        loc, flip, same = (np.stack([r[k] for r in per]) for k in ("loc", "flip", "same"))
        trade, eng = results["tradeoff"]["trade"], results["engine"]["eng"]
        stat = ["p", "lo", "hi"]
        return xr.Dataset(
            {
                "locality": (("base", "length", "stat"), loc),
                "consistency_flip": (("base", "length", "stat"), flip),
                "unchanged_position": (("base", "length", "stat"), same),
                "tradeoff_locality": (("tradeoff_base", "stat"), trade[:, :3]),
                "tradeoff_flip": (("tradeoff_base", "stat"), trade[:, 3:]),
                "engine_locality": (("layers", "engine_length", "stat"), eng[..., 0, :]),
                "engine_flip": (("layers", "engine_length", "stat"), eng[..., 1, :]),
            },
            coords={
                "base": list(cfg.bases),
                "length": list(cfg.lengths),
                "stat": stat,
                "tradeoff_base": list(cfg.tradeoff_bases),
                "layers": [0, cfg.n_layers],
                "engine_length": list(cfg.engine_lengths),
            },
        )

    def plot(self, ds, outdir):
        cfg = self.Config.from_attrs(ds)
        p = plt()
        fig, axes = p.subplots(1, 5, figsize=(25, 4.6))
        cmap = p.get_cmap("viridis")
        nb = len(ds.base)
        for ax, var, title in (
            (axes[0], "locality", "locality: P(nearer copy of a key scores higher)"),
            (axes[1], "consistency_flip", "token consistency: P(two keys' order flips)"),
        ):
            for i, b in enumerate(ds.base.values):
                e = ds[var].sel(base=b)
                c = cmap(i / max(1, nb - 1))
                ax.plot(ds.length, e.sel(stat="p"), "o-", color=c, ms=3, label=f"base {b:g}")
                ax.fill_between(ds.length, e.sel(stat="lo"), e.sel(stat="hi"), color=c, alpha=0.25)
            ax.axhline(0.5, color="k", lw=0.8, ls=":")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("context length L")
            ax.set_title(
                f"{title}\nd = {cfg.d}, signal {cfg.signal}, {cfg.n_samples} draws (bands: 95 %)",
                fontsize=9,
            )
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        ax = axes[2]
        tl, tf = ds.tradeoff_locality.sel(stat="p").values, ds.tradeoff_flip.sel(stat="p").values
        ax.plot(tl, 1 - tf, "o-", color="C3")
        for b, x_, y_ in zip(ds.tradeoff_base.values, tl, 1 - tf):
            ax.annotate(f"{b:g}", (x_, y_), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(f"locality probability at L = {cfg.short} (positions told apart)")
        ax.set_ylabel(f"1 - flip probability at L = {cfg.long} (tokens told apart)")
        ax.set_title("the base trade-off (labels: RoPE base)", fontsize=9)
        ax.grid(alpha=0.3)
        ax = axes[3]
        for a, nl in enumerate(ds.layers.values):
            for var, mk, lab in (
                ("engine_locality", "o-", "locality"),
                ("engine_flip", "s--", "flip"),
            ):
                e = ds[var].sel(layers=nl)
                ax.plot(
                    ds.engine_length,
                    e.sel(stat="p"),
                    mk,
                    color=f"C{a}",
                    ms=4,
                    label=f"{lab}, {nl} layers",
                )
                ax.fill_between(
                    ds.engine_length, e.sel(stat="lo"), e.sel(stat="hi"), color=f"C{a}", alpha=0.2
                )
        ax.axhline(0.5, color="k", lw=0.8, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length")
        ax.set_title(
            f"engine: {cfg.engine_heads} heads, d = {cfg.engine_d}, beta = {cfg.engine_beta}, "
            f"base {cfg.engine_base:g}\nlast token's attention (flip: vs the same heads without RoPE)",
            fontsize=9,
        )
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        ax = axes[4]
        for i, b in enumerate(ds.base.values):
            e = ds.unchanged_position.sel(base=b).dropna("length")
            c = cmap(i / max(1, nb - 1))
            ax.plot(e.length, e.sel(stat="p"), "o-", color=c, ms=3, label=f"base {b:g}")
            ax.fill_between(e.length, e.sel(stat="lo"), e.sel(stat="hi"), color=c, alpha=0.25)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length L")
        ax.set_title(
            "P(a position >= L/4 away gives the same score)\n(to 1 % of the score's spread over positions; 128 draws)",
            fontsize=9,
        )
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = Path(outdir) / "rope-long-context.png"
        save_figure(fig, path, dpi=100)
        return [path]
