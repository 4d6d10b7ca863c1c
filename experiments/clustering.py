"""Clustering of self-attention dynamics on the sphere (Geshkovski et al. 2023), and its
causal-mask variant (Karagodin et al. 2024).

N tokens uniform on S^{d-1} evolve by dx_i/dt = P_{x_i} SA(x)_i with Q = K = V = I. With full
attention and d >= 3 they collapse to one point and the diameter then decays like e^{-t}.
With the causal mask token 1 never moves; at beta = 1 every later token converges to it, at
larger beta (the preset uses 4) they form long-lived clusters, one of them at token 1
(Karagodin et al.). Figures: the cloud at four times; energy, diameter, cluster count and
rank-collapse residual against time; for the causal preset also each token's distance to
token 1 over time.

    meanfield run clustering [--set beta=4 --set n=128]
    meanfield run causal-clustering
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from meanfield.run import register

from ._common import (
    PARTICLE_OUTPUTS,
    ParticleConfig,
    ParticlePreset,
    first_point,
    observable_panels,
    plt,
    save_figure,
    sphere_snapshots,
    sweep_figure,
)

PANELS = [
    ("energy", "energy $E_\\beta$", False),
    ("diameter", "diameter (log)", True),
    ("n_clusters", "clusters at tol", False),
    ("rank_collapse", "$\\|X - 1\\bar x^T\\| / \\|X\\|$ (log)", True),
]


@dataclasses.dataclass(frozen=True)
class Config(ParticleConfig):
    pass


@dataclasses.dataclass(frozen=True)
class CausalConfig(ParticleConfig):
    mask: str = "causal"
    beta: float = 4.0
    t1: float = 40.0
    n_save: int = 81
    chunks: int = 8


def _title(ds):
    cfg = Config.from_attrs(ds)
    return (
        f"SA dynamics on $S^{{{cfg.d - 1}}}$: N = {cfg.n}, $\\beta$ = {cfg.beta}, mask = {cfg.mask}"
    )


def _figure(preset, ds, outdir, fracs, ncols, extra=None):
    """Snapshots on top, observable panels below (plus ``extra(fig, ds)`` if given)."""
    one = first_point(ds)
    p = plt()
    fig = p.figure(figsize=(3.2 * ncols + 0.2, 6.2))
    sphere_snapshots(fig, one, fracs, 0, ncols)
    observable_panels(fig, one, PANELS, 1, ncols)
    if extra is not None:
        extra(fig, one)
    fig.suptitle(_title(ds), fontsize=11)
    fig.tight_layout()
    path = Path(outdir) / f"{preset.name}.png"
    save_figure(fig, path, dpi=110)
    return [q for q in (path, sweep_figure(ds, outdir, ["diameter", "n_clusters", "energy"])) if q]


def _distance_to_first(fig, one):
    ax = fig.add_subplot(2, 5, 10)
    x = one.x.values
    dist = np.linalg.norm(x - x[:, :1], axis=-1).T  # (token, time)
    im = ax.pcolormesh(
        one.time.values,
        np.arange(x.shape[1]) + 1,
        np.log10(np.maximum(dist, 1e-12)),
        shading="auto",
        cmap="magma",
    )
    fig.colorbar(im, ax=ax, label="log10 |x_i - x_1|")
    ax.set_xlabel("t")
    ax.set_ylabel("token i")
    ax.set_title("distance to token 1", fontsize=9)


@register
class Clustering(ParticlePreset):
    name = "clustering"
    tiny = ("n=8", "t1=3", "n_save=7", "chunks=2")
    slow = False
    outputs = PARTICLE_OUTPUTS
    description = "SA on S^2 with Q=K=V=I: tokens collapse to one point (snapshots, energy, diameter, clusters)"
    Config = Config

    def plot(self, ds, outdir):
        return _figure(self, ds, outdir, [0.0, 0.3, 0.42, 1.0], 4)


@register
class CausalClustering(Clustering):
    name = "causal-clustering"  # the tiny run (tiny, slow, outputs) is Clustering's
    description = "causal SA on S^2: token 1 never moves; later tokens form long-lived clusters (one at token 1)"
    Config = CausalConfig

    def plot(self, ds, outdir):
        return _figure(self, ds, outdir, [0.0, 0.1, 0.3, 1.0], 5, _distance_to_first)
