"""Particles, the S^2 density solver and ``theory.stationary_states`` on the noisy USA dynamics
(Q = K = V = I, d = 3): the order parameter R = |int x drho| after a long run, on both sides of the
critical noise, from a uniform and from a concentrated start.

Particles: N tokens, ``--seeds`` independent runs (mean and standard error of R); the S^2 solver at
band limit ``--L``; the theory's stable states at the same sigma. Below sigma_c the uniform start
grows to the concentrated branch; above it both starts relax to R = 0, except in the band above
beta_* where a concentrated start stays concentrated (hysteresis).

Run:  python benchmarks/noise_agreement.py [--n 1024] [--seeds 4] [--t1 40]
"""

from __future__ import annotations

import argparse

import jax

jax.config.update("jax_enable_x64", True)  # entry point

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import meanfield as mf  # noqa: E402
from meanfield import theory  # noqa: E402
from meanfield.pde import SphereMeanField  # noqa: E402


def particles(beta, sigma, start, n, seeds, t1, dt=0.05):
    attn = mf.Attention(beta, form="USA")
    out = []
    for seed in range(seeds):
        k0, k1 = jax.random.split(jax.random.key(seed))
        x0 = mf.sphere_uniform(k0, n, 3)
        if start == "concentrated":
            x0 = x0 * 0.3 + jnp.array([0.0, 0.0, 1.0])
            x0 = x0 / jnp.linalg.norm(x0, axis=-1, keepdims=True)
        xs = mf.simulate(attn, x0, jnp.array([0.0, t1]), noise=mf.Noise(sigma), key=k1, dt=dt).xs
        out.append(float(mf.observables.order_parameter(xs[-1])))
    return np.mean(out), np.std(out) / np.sqrt(len(out))


def density(beta, sigma, start, L, t1):
    pde = SphereMeanField(L, beta=beta, form="USA", sigma=sigma)
    if start == "concentrated":
        rho0 = jnp.exp(3.0 * jnp.cos(pde.theta))[:, None] * jnp.ones((1, 2 * L - 1))
        rho0 = rho0 / (
            4 * np.pi * jnp.mean(rho0 * pde.uniform() * 4 * np.pi)
        )  # rough, renormalised below
    else:
        rho0 = pde.uniform() * (1 + 0.05 * jnp.cos(pde.theta))[:, None]
    rho0 = pde.project(rho0) if hasattr(pde, "project") else rho0
    sol = pde.solve(rho0 / (jnp.sum(rho0 * mf.pde._s2.quadrature_weights(L))), jnp.array([0.0, t1]))
    return float(sol.order_parameter()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--L", type=int, default=32)
    ap.add_argument("--t1", type=float, default=40.0)
    args = ap.parse_args(argv)
    print(
        f"USA on S^2, N = {args.n}, {args.seeds} seeds, L = {args.L}, T = {args.t1}; beta_* = {theory.tricritical_beta(3):.4f}"
    )
    print(
        f"{'beta':>4} {'sigma/sc':>8} {'start':>12} | {'particles R (se)':>18} | {'PDE R':>7} | theory stable R"
    )
    for beta, ratios in ((1.0, (0.8, 1.2)), (3.0, (0.8, 1.03, 1.2))):
        sc = theory.critical_noise(beta, 3)
        for ratio in ratios:
            stable = [
                round(s["order"], 4)
                for s in theory.stationary_states(beta, ratio * sc, 3)
                if s["stable"]
            ]
            for start in ("uniform", "concentrated"):
                r, se = particles(beta, ratio * sc, start, args.n, args.seeds, args.t1)
                try:
                    rp = density(beta, ratio * sc, start, args.L, args.t1)
                except Exception as err:  # a density the band limit cannot hold
                    rp = float("nan")
                    print(f"    (PDE: {type(err).__name__}: {str(err)[:80]})")
                print(
                    f"{beta:>4g} {ratio:>8g} {start:>12} | {r:>10.4f} ({se:.4f}) | {rp:>7.4f} | {stable}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
