"""Storage capacity of a one-layer attention model with random (non-orthogonal) embeddings
(after Vural, Bietti, Soltanolkotabi, Wu 2026): ``meanfield.studies.recall``.

``recall-capacity``: the largest number of facts M stored at mean test accuracy >= ``threshold``
(``recall.capacity``, ``seeds`` instances vmapped) against the embedding dimension d, the
sequence length L and the sample size N (the other two fixed at ``d0, L0, N0``), for the early
phase (``early_steps`` steps of full-batch gradient descent from the uniform-attention start) and
after training with Adam (``adam_steps``); log-log, with fitted exponents and 95 % intervals, and
the early-phase Gaussian theory (``recall.early_phase_capacity``, no simulation) as a dashed line.

    meanfield run recall-capacity [--set ds=16,32,64,128 --set seeds=8]
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np
import xarray as xr

from meanfield.studies import recall
from meanfield.run import register, RunConfig, Step, StepPreset, Var

from ._common import plt, save_figure

AXES = ("d", "L", "N")


@dataclasses.dataclass(frozen=True)
class RecallConfig(RunConfig):
    ds: tuple[int, ...] = (16, 32, 64, 128)
    ls: tuple[int, ...] = (2, 4, 8, 16)
    ns: tuple[int, ...] = (512, 1024, 2048, 4096, 8192)
    d0: int = 64
    l0: int = 8
    n0: int = 2048
    threshold: float = 0.5
    """test accuracy at which a number of facts counts as stored"""
    seeds: int = 4
    early_steps: int = 1
    """gradient-descent steps of the early phase (lr = 10 M)"""
    adam_steps: int = 100
    adam_lr: float = 0.01
    regimes: tuple[str, ...] = ("early-gd", "adam")
    """early-gd: early_steps of gradient descent; adam: adam_steps of Adam"""
    m_min: int = 4
    """the doubling grid of M starts here ..."""
    m_max: int = 4096
    """... and stops here"""

    ranges = {
        "ds": "[1, 4096], length >= 3, distinct",
        "ls": "[1, 4096], length >= 3, distinct",
        "ns": "[1, 65536], length >= 3, distinct",
        "d0": "[1, 4096]",
        "l0": "[1, 4096]",
        "n0": "[1, 65536]",
        "threshold": "(0, 1)",
        "seeds": "[1, 1024]",
        "early_steps": "[1, 100000]",
        "adam_steps": "[1, 100000]",
        "adam_lr": "(0, 100]",
        "regimes": "{early-gd, adam}, distinct",
        "m_min": "[2, m_max)",
        "m_max": "(m_min, 2**20]",
    }


REGIMES = ("early-gd", "adam")


@register
class RecallCapacity(StepPreset):
    name = "recall-capacity"
    tiny = (
        "ds=4,8,16",
        "ls=2,4,8",
        "ns=32,64,128",
        "d0=8",
        "l0=4",
        "n0=64",
        "seeds=1",
        "regimes=early-gd",
        "m_min=2",
        "m_max=16",
    )
    slow = True
    outputs = frozenset({"capacity_vs_N", "capacity_vs_d", "exponent_L", "theory_vs_L"})
    description = "storage capacity of one-layer attention with random embeddings vs d, L, N (Vural et al. 2026), log-log fits"
    variables = {
        "regime": Var(
            "training regime",
            "1",
            "early-stopped gradient descent (early_steps = {early_steps}) or Adam (adam_steps = {adam_steps}, adam_lr = {adam_lr})",
        ),
        "fit": Var("fit statistic", "1", "slope and its 95 % interval (lo, hi) of the log-log fit"),
        "d": Var("embedding dimension d", "1", "swept with L = l0 = {l0}, N = n0 = {n0}"),
        "L": Var("sequence length L", "1", "swept with d = d0 = {d0}, N = n0 = {n0}"),
        "N": Var("number of labels N", "1", "swept with d = d0 = {d0}, L = l0 = {l0}"),
        "capacity_vs_d": Var(
            "storage capacity vs d",
            "facts",
            "largest number of facts stored at accuracy >= threshold = {threshold}",
        ),
        "capacity_vs_L": Var(
            "storage capacity vs L",
            "facts",
            "largest number of facts stored at accuracy >= threshold = {threshold}",
        ),
        "capacity_vs_N": Var(
            "storage capacity vs N",
            "facts",
            "largest number of facts stored at accuracy >= threshold = {threshold}",
        ),
        "exponent_d": Var("capacity exponent in d", "1", "log-log slope of capacity against d"),
        "exponent_L": Var("capacity exponent in L", "1", "log-log slope of capacity against L"),
        "exponent_N": Var("capacity exponent in N", "1", "log-log slope of capacity against N"),
        "theory_vs_d": Var(
            "capacity vs d (theory)", "facts", "Vural et al. 2026 scaling at the same settings"
        ),
        "theory_vs_L": Var(
            "capacity vs L (theory)", "facts", "Vural et al. 2026 scaling at the same settings"
        ),
        "theory_vs_N": Var(
            "capacity vs N (theory)", "facts", "Vural et al. 2026 scaling at the same settings"
        ),
        "theory_exponent_d": Var(
            "capacity exponent in d (theory)", "1", "log-log slope of theory_vs_d"
        ),
        "theory_exponent_L": Var(
            "capacity exponent in L (theory)", "1", "log-log slope of theory_vs_L"
        ),
        "theory_exponent_N": Var(
            "capacity exponent in N (theory)", "1", "log-log slope of theory_vs_N"
        ),
    }
    Config = RecallConfig

    def steps(self, cfg):
        """One capacity measurement per (axis, regime, value): progress and resume at that grain."""
        return [
            Step(
                f"{axis}:{regime}:{i}",
                {"axis": axis, "regime": regime, "regime_index": r, "index": i, "value": v},
            )
            for axis, values in zip(AXES, (cfg.ds, cfg.ls, cfg.ns))
            for r, regime in enumerate(cfg.regimes)
            for i, v in enumerate(values)
        ]

    def run_step(self, cfg, step, done):
        axis, regime, i, r, v = (
            step.params[k] for k in ("axis", "regime", "index", "regime_index", "value")
        )
        kw = (
            dict(steps=cfg.early_steps, opt="gd")
            if regime == "early-gd"
            else dict(steps=cfg.adam_steps, opt="adam", lr=cfg.adam_lr)
        )
        d, ll, n = (
            (v if axis == "d" else cfg.d0),
            (v if axis == "L" else cfg.l0),
            (v if axis == "N" else cfg.n0),
        )
        cap, _ = recall.capacity(
            jax.random.fold_in(jax.random.key(cfg.seed), 7919 * r + i),
            d,
            ll,
            n,
            threshold=cfg.threshold,
            seeds=cfg.seeds,
            m_min=cfg.m_min,
            m_max=cfg.m_max,
            **kw,
        )
        return {"capacity": cap}

    def step_dataset(self, cfg, results):
        data, coords = {}, {"regime": list(cfg.regimes), "fit": ["slope", "lo", "hi"]}
        for axis, values in zip(AXES, (cfg.ds, cfg.ls, cfg.ns)):
            caps = np.array(
                [
                    [float(results[f"{axis}:{regime}:{i}"]["capacity"]) for i in range(len(values))]
                    for regime in cfg.regimes
                ]
            )
            fits = np.array(
                [
                    recall.loglog_fit(values, c) if np.isfinite(c).sum() >= 3 else (np.nan,) * 3
                    for c in caps
                ]
            )
            theory = np.array(
                [
                    recall.early_phase_capacity(
                        v if axis == "d" else cfg.d0,
                        v if axis == "L" else cfg.l0,
                        v if axis == "N" else cfg.n0,
                        threshold=cfg.threshold,
                    )
                    for v in values
                ]
            )
            data[f"capacity_vs_{axis}"] = (("regime", axis), caps)
            data[f"exponent_{axis}"] = (("regime", "fit"), fits)
            data[f"theory_vs_{axis}"] = ((axis,), theory)
            data[f"theory_exponent_{axis}"] = (
                ("fit",),
                np.array(
                    recall.loglog_fit(values, theory)
                    if np.isfinite(theory).sum() >= 3
                    else (np.nan,) * 3
                ),
            )
            coords[axis] = list(values)
        return xr.Dataset(data, coords=coords)

    def plot(self, ds, outdir):
        cfg = self.Config.from_attrs(ds)
        p = plt()
        fig, axes = p.subplots(1, 3, figsize=(15, 4.4))
        fixed = {
            "d": f"L = {cfg.l0}, N = {cfg.n0}",
            "L": f"d = {cfg.d0}, N = {cfg.n0}",
            "N": f"d = {cfg.d0}, L = {cfg.l0}",
        }
        labels = {
            "early-gd": f"early phase ({cfg.early_steps} GD step)",
            "adam": f"Adam, {cfg.adam_steps} steps",
        }
        for ax, axis in zip(axes, AXES):
            x = ds[axis].values
            for r, regime in enumerate(ds.regime.values):
                c = ds[f"capacity_vs_{axis}"].sel(regime=regime).values
                s, lo, hi = ds[f"exponent_{axis}"].sel(regime=regime).values
                ax.loglog(
                    x,
                    c,
                    "o-",
                    color=f"C{REGIMES.index(regime)}",
                    label=f"{labels[regime]}: slope {s:.2f} [{lo:.2f}, {hi:.2f}]",
                )
            if f"theory_vs_{axis}" in ds:
                s = float(ds[f"theory_exponent_{axis}"].values[0])
                ax.loglog(
                    x,
                    ds[f"theory_vs_{axis}"].values,
                    "k--",
                    lw=1,
                    label=f"early-phase Gaussian theory: slope {s:.2f}",
                )
            ax.set_xticks(x, [str(v) for v in x])
            ax.minorticks_off()
            ax.set_xlabel(axis)
            ax.set_ylabel(f"capacity: facts stored at test accuracy >= {cfg.threshold}")
            ax.set_title(f"capacity vs {axis} ({fixed[axis]}, {cfg.seeds} seeds)", fontsize=9)
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3, which="both")
        fig.tight_layout()
        path = Path(outdir) / "recall-capacity.png"
        save_figure(fig, path, dpi=110)
        return [path]
