"""The figure of the ``kinetic-tcrit`` preset (``meanfield run kinetic-tcrit``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._common import log_axis_ticks, plt, save_figure


def plot(preset, ds, outdir):
    """The figure of a result (the preset's ``plot``)."""
    cfg = preset.Config.from_attrs(ds)
    p = plt()
    nr = len(ds.t_ratio)
    fig = p.figure(figsize=(4.2 * max(nr, 3), 8.4))
    ax = fig.add_subplot(2, max(nr, 3), 1)
    ax.plot(ds.beta_fine, ds.tcrit_closed_fine, "k-", lw=1.2, label="closed form")
    ax.plot(
        ds.beta,
        ds.tcrit_propagator.isel(S=-1),
        "o",
        mfc="none",
        label=f"propagator S = {int(ds.S[-1])}",
    )
    ax.plot(ds.beta, ds.tcrit_pde, "s", mfc="none", label=f"kinetic PDE S = {cfg.pde_s}")
    ax.errorbar(
        ds.beta,
        ds.tcrit_particles,
        yerr=ds.tcrit_particles_se,
        fmt="^",
        ms=5,
        label=f"particles N = {cfg.n_particles} ({cfg.bins} bins)",
    )
    ax.plot(
        ds.beta, ds.tcrit_binned_reference, "x", color="C2", label="propagator S = N, same bins"
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    log_axis_ticks(ax, ds.beta.values, p)
    ax.minorticks_off()
    ax.set_xlabel(r"$\beta$")
    ax.set_ylabel(r"$t_{crit}$")
    ax.set_title(
        rf"end of the U: $t_{{crit}}(\beta)$, $\lambda$ = {cfg.lam:g}, M = {cfg.M:g}",
        fontsize=9,
    )
    ax.legend(fontsize=7)
    ax = fig.add_subplot(2, max(nr, 3), 2)
    err = np.abs(ds.tcrit_propagator_rel_error.values)
    ax.loglog(ds.S, err[0], "o-", label=rf"all $\beta$ (spread {np.ptp(err, axis=0).max():.1e})")
    S = ds.S.values.astype(float)
    ax.loglog(S, err[0, 0] * S[0] / S, "k:", label="1/S")
    log_axis_ticks(ax, S, p)
    ax.set_xlabel("rows S")
    ax.set_ylabel(r"$|t^S_{crit} / t_{crit} - 1|$")
    ax.set_title(
        "discrete propagator: O(1/S) convergence\n(its right-end slope is exactly quadratic in t, "
        "so the ratio is the same for every $\\beta$)",
        fontsize=8,
    )
    ax.legend(fontsize=7)
    ax = fig.add_subplot(2, max(nr, 3), 3)
    ax.axis("off")
    lines = [
        "t_crit",
        f"beta   closed   S={int(ds.S[-1]):<4d}  PDE      S={cfg.pde_s:<4d} particles  S=N,bins",
    ]
    for b in ds.beta.values:
        sel = ds.sel(beta=b)
        lines.append(
            f"{b:4.2f} {float(sel.tcrit_closed):8.4g} {float(sel.tcrit_propagator.isel(S=-1)):8.4g} "
            f"{float(sel.tcrit_pde):8.4g} {float(sel.tcrit_propagator_at_pde_s):8.4g} "
            f"{float(sel.tcrit_particles):8.4g} {float(sel.tcrit_binned_reference):8.4g}"
        )
    lines += [
        "",
        f"PDE: S = {cfg.pde_s} rows, M = {cfg.pde_m} cells, {cfg.pde_modes} modes;",
        "compare it with the propagator at the same S.",
        f"particles: N = {cfg.n_particles}, {cfg.runs} runs, {cfg.bins} bins;",
        "compare them with the propagator at S = N, same bins.",
        "They follow the linear theory only while the",
        "fluctuations e^{a t}/sqrt(N) stay small (nan: no",
        "sign change of the binned slope in the scan).",
    ]
    ax.text(0.0, 1.0, "\n".join(lines), family="monospace", fontsize=8, va="top")
    for j, r in enumerate(ds.t_ratio.values):
        ax = fig.add_subplot(2, max(nr, 3), max(nr, 3) + j + 1)
        sel = ds.sel(t_ratio=r)
        ax.plot(ds.s_fine, sel.profile_closed, "k-", lw=1.2, label="closed form $S_t(s)$")
        ax.plot(
            ds.s_prop[:-1],
            sel.profile_propagator[:-1],
            "-",
            color="C0",
            lw=0.8,
            label=f"propagator S = {int(ds.S[-1])}",
        )
        ax.plot(
            ds.s_pde[:-1],
            sel.profile_pde[:-1],
            "s",
            ms=3,
            mfc="none",
            color="C1",
            label="kinetic PDE",
        )
        ax.errorbar(
            ds.s_bin,
            sel.profile_particles,
            yerr=sel.profile_particles_se,
            fmt="^",
            ms=4,
            color="C3",
            label="particles (bins)",
        )
        ax.plot(
            ds.s_bin,
            sel.profile_propagator_binned,
            "x",
            color="C2",
            label="propagator S = N, same bins",
        )
        ax.set_xlabel("source position s")
        ax.set_ylabel("retrieval density of the last token")
        ax.set_title(
            rf"$\beta$ = {cfg.profile_beta:g}, t = {r:g} $t_{{crit}}$"
            + (
                f"\n(particles at N = {cfg.n_particles}: past the linear regime)"
                if r >= 0.9
                else ""
            ),
            fontsize=9,
        )
        top = float(np.nanmax(sel.profile_closed.values[ds.s_fine.values > 0.05]))
        ax.set_ylim(0, 1.3 * top)
        if j == 0:
            ax.legend(fontsize=6)
    fig.suptitle(
        "kinetic paper's model (strict causal ALiBi, normalised positions, USA, V = βI): "
        "t_crit from four solvers",
        fontsize=10,
    )
    fig.tight_layout()
    path = Path(outdir) / "kinetic-tcrit.png"
    save_figure(fig, path, dpi=110)
    return [path]
