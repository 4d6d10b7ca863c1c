"""The figure of the ``universality`` preset (``meanfield run universality``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._common import log_axis_ticks, plt, save_figure


def plot(preset, ds, outdir):
    """The figure of a result (the preset's ``plot``)."""
    cfg = preset.Config.from_attrs(ds)
    p = plt()
    fig = p.figure(figsize=(16, 9.6))
    wrap = lambda th: np.mod(np.asarray(th) + np.pi, 2 * np.pi) - np.pi  # noqa: E731
    ax = fig.add_subplot(2, 3, 1)
    ax.plot(ds.theta_grid, ds.target_pdf, "k-", lw=1.2, label="target density (von Mises mixture)")
    for w in ds.weight.values[:: max(1, len(ds.weight) // 3)]:
        ax.hist(
            wrap(ds.quantile_theta.sel(weight=w).values),
            bins=32,
            range=(-np.pi, np.pi),
            density=True,
            alpha=0.35,
            label=f"quantile prompts, weight {w:g}",
        )
    if np.all(np.isfinite(ds.learned_theta.values)):
        ax.hist(
            wrap(ds.learned_theta.values),
            bins=32,
            range=(-np.pi, np.pi),
            density=True,
            histtype="step",
            color="C3",
            lw=1.5,
            label="learned PE (paired start)",
        )
    ax.set_xlabel(r"$\theta$")
    ax.set_ylabel("density")
    ax.set_title(f"limits, N = {cfg.n}, $\\beta$ = {cfg.beta:g}", fontsize=9)
    ax.legend(fontsize=7)
    ax = fig.add_subplot(2, 3, 2)
    ax.loglog(ds.weight, ds.w1_quantile_prompts, "o-", label="limit of the quantile-prompt runs")
    ax.axhline(
        float(ds.w1_floor),
        color="k",
        ls=":",
        label=f"floor: N quantile midpoints ({float(ds.w1_floor):.2e})",
    )
    ax.axhline(
        float(ds.inverse_s1_w1),
        color="C2",
        ls="--",
        lw=0.8,
        label=f"inverse design (weight {float(ds.inverse_s1_weight):.2g})",
    )
    ax.set_xlabel("prompt weight")
    ax.set_ylabel("circle W1 to the target")
    ax.set_title(f"W1 vs weight against the floor (N = {cfg.n})", fontsize=9)
    ax.legend(fontsize=7)
    ax = fig.add_subplot(2, 3, 3)
    ax.loglog(ds.n_tokens, ds.w1_floor_vs_n, "k:", marker=".", label="floor (N quantile midpoints)")
    ax.loglog(
        ds.n_tokens,
        ds.w1_quantile_vs_n,
        "o-",
        label=f"quantile prompts, weight {cfg.weight_n:g}",
    )
    lw = ds.learned_w1.values
    ax.errorbar(
        ds.n_learned,
        np.median(lw, 1),
        yerr=[np.median(lw, 1) - lw.min(1), lw.max(1) - np.median(lw, 1)],
        fmt="s-",
        color="C3",
        capsize=3,
        label=f"learned PE, K = {cfg.n_freq} (median, min-max over starts)",
    )
    ax.set_xlabel("N")
    ax.set_ylabel("circle W1 to the target")
    ax.set_title("W1 vs N against the floor", fontsize=9)
    log_axis_ticks(ax, sorted(set(ds.n_tokens.values) | set(ds.n_learned.values)), p)
    ax.legend(fontsize=7)
    ax = fig.add_subplot(2, 3, 4)
    for i, n in enumerate(ds.n_learned.values):
        ax.semilogy(
            ds.learned_losses.values[i], color=f"C{i}", lw=1, label=f"paired start, N = {n}"
        )
    ax.semilogy(ds.learned_random_losses, "k--", lw=1, label=f"random start, N = {cfg.n}")
    ax.set_xlabel("Adam step")
    ax.set_ylabel("MMD of the end states (loss)")
    rw = ds.learned_random_w1.values
    ax.set_title(
        f"learned PE: the fit depends on its start (N = {cfg.n}: W1 {np.median(rw):.3f} from a random U)",
        fontsize=9,
    )
    ax.legend(fontsize=7)
    ax = fig.add_subplot(2, 3, 5, projection="3d")
    c, e = ds.learned_s2_cloud.values, ds.learned_s2_end.values
    ax.scatter(
        c[:, 0],
        c[:, 1],
        c[:, 2],
        s=2,
        color="0.6",
        alpha=0.4,
        label="target (vMF mixture draws)",
    )
    ax.scatter(
        e[:, 0], e[:, 1], e[:, 2], s=14, color="C3", label=f"learned-PE limit, N = {e.shape[0]}"
    )
    ax.set_title(
        f"learned PE on S$^2$: MMD {np.median(ds.learned_s2_mmd):.3f} vs {np.mean(ds.learned_s2_mmd_iid):.3f} "
        f"for N i.i.d. draws",
        fontsize=8,
    )
    ax.legend(fontsize=7)
    ax = fig.add_subplot(2, 3, 6, projection="3d")
    t = ds.inverse_s2_target.values
    ax.scatter(
        t[:, 0], t[:, 1], t[:, 2], s=12, color="k", label="target (N draws of a vMF mixture)"
    )
    ax.set_title(
        f"inverse design on S$^2$: {100 * float(ds.inverse_s2_fraction):.0f} % of {len(ds.start)} random starts "
        f"end at the target\n(max error {float(ds.inverse_s2_max_error.max()):.1e}); on S$^1$: "
        f"{100 * float(ds.inverse_s1_fraction):.0f} % (max {float(ds.inverse_s1_max_error.max()):.1e})",
        fontsize=8,
    )
    ax.legend(fontsize=7)
    fig.suptitle(
        "universality: the limit is a chosen target up to the floor (parallel prompts, inverse design, learned PE)",
        fontsize=10,
    )
    fig.tight_layout()
    path = Path(outdir) / "universality.png"
    save_figure(fig, path, dpi=100)
    return [path]
