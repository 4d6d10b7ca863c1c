"""Metastability: at large beta tokens on the circle first form several clusters, which then
merge pairwise over exponentially long times (Geshkovski, Koubbi, Polyanskiy, Rigollet 2024).
On a log-time axis the energy rises in a staircase and the cluster count drops in plateaus.

    meanfield run metastability [--set beta=12 --set t1=1e6]
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from meanfield import observables as obs
from meanfield.run import register

from ._common import (
    PARTICLE_OUTPUTS,
    ParticleConfig,
    ParticlePreset,
    first_point,
    plt,
    save_figure,
    sphere_snapshots,
)


@dataclasses.dataclass(frozen=True)
class Config(ParticleConfig):
    n: int = 48
    d: int = 2
    beta: float = 9.0
    t1: float = 1.0e5
    t_first: float = 0.01
    """first positive save time (saves are log-spaced from t_first to t1)"""
    n_save: int = 121
    chunks: int = 8
    cluster_tol: float = 0.05
    rtol: float = 1e-6
    atol: float = 1e-8

    ranges = {
        "t1": "(t_first, 1e9]",
        "t_first": "(0, t1)",
    }


@register
class Metastability(ParticlePreset):
    name = "metastability"
    tiny = ("n=8", "t1=50", "n_save=9", "chunks=2")
    slow = False
    outputs = PARTICLE_OUTPUTS
    description = (
        "large beta on the circle: energy staircase and cluster-count plateaus on a log-time axis"
    )
    Config = Config

    def times(self, cfg):
        return np.concatenate([[0.0], np.geomspace(cfg.t_first, cfg.t1, cfg.n_save - 1)])

    def plot(self, ds, outdir):
        one = first_point(ds)
        p = plt()
        fig = p.figure(figsize=(14, 6.4))
        t = one.time.values
        # snapshots at the start of the run and in the middle of the longest plateaus
        nc = one.n_clusters.values
        sphere_snapshots(fig, one, [0.0, 2e-5, 1e-3, 1.0], 0, 4)
        for k, (name, label) in enumerate(
            [("energy", "energy $E_\\beta$"), ("n_clusters", "clusters at tol")]
        ):
            ax = fig.add_subplot(2, 2, 3 + k)
            ax.plot(
                t[1:],
                one[name].values[1:],
                lw=1.8,
                drawstyle="steps-post" if name == "n_clusters" else "default",
            )
            if name == "n_clusters":
                for t0, t1, val in obs.plateaus(t, one.n_clusters.values, min_decades=0.5):
                    ax.axvspan(t0, t1, color="C1", alpha=0.12)
                    ax.text(
                        np.sqrt(t0 * t1),
                        val,
                        f"{int(val)}",
                        ha="center",
                        va="bottom",
                        fontsize=8,
                        color="C1",
                    )
            ax.set_xscale("log")
            ax.set_xlabel("t (log)")
            ax.set_title(
                label + (" (shaded: plateaus >= 0.5 decade)" if name == "n_clusters" else ""),
                fontsize=10,
            )
            ax.grid(alpha=0.3, which="both")
        cfg = self.Config.from_attrs(ds)
        fig.suptitle(
            f"metastable clusters on $S^{{{cfg.d - 1}}}$: N = {cfg.n}, $\\beta$ = {cfg.beta} "
            f"(clusters {int(nc[0])} -> {int(nc[-1])})"
        )
        fig.tight_layout()
        path = Path(outdir) / "metastability.png"
        save_figure(fig, path, dpi=110)
        return [path]
