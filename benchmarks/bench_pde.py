"""Cost per right-hand side of the density solvers, in one run.

1. Circle solver vs the number of cells M, with the fitted exponent of time ~ M^p (FFT
   convolutions: p ~ 1, i.e. O(M log M)), against a direct O(M^2) quadrature of the same velocity.
2. Causal kinetic solver vs S x M (scan in s, FFT in theta), with the fitted exponent of time vs
   S M, against the dense O(S^2 M) coupling (the same RHS with an explicit S x S matrix) and, at
   small sizes, the engine-kernel quadrature O((S M)^2).

3. Sphere solver (``SphereMeanField``) vs the band limit L, with the fitted exponent.

Run:  python benchmarks/bench_pde.py  (only the sphere rows: --sphere)
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

import meanfield as mf
from meanfield.pde import CausalCoupling, CircleMeanField, KineticMeanField, engine_face_velocity

K = 50


def per_call(f, x):
    f(x).block_until_ready()
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        f(x).block_until_ready()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) / K


def main():
    jax.config.update("jax_enable_x64", True)
    ms = [256, 1024, 4096, 16384, 65536]
    rows = []
    print(f"{'M':>7} | {'FFT RHS us':>11} | {'direct O(M^2) velocity us':>26} | ratio")
    for m in ms:
        pde = CircleMeanField(m, beta=4.0)
        rho = pde.uniform() * (1 + 0.1 * jnp.cos(3 * pde.theta))
        loop = jax.jit(
            lambda r: jax.lax.fori_loop(0, K, lambda i, y: y + 1e-6 * pde.rhs(0.0, y), r)
        )
        t_fft = per_call(loop, rho)
        t_dir = float("nan")
        if m <= 4096:
            th = pde.theta
            face = th + pde.h / 2

            def direct(r):
                def body(i, y):
                    p = face[:, None] - th[None, :]
                    k = jnp.exp(4.0 * jnp.cos(p))
                    u = (k * -jnp.sin(p)) @ y / (k @ y)
                    return y + 1e-6 * u

                return jax.lax.fori_loop(0, K, body, r)

            t_dir = per_call(jax.jit(direct), rho)
        rows.append((m, t_fft))
        print(f"{m:>7} | {t_fft * 1e6:>11.1f} | {t_dir * 1e6:>26.1f} | {t_dir / t_fft:>6.1f}")
    ms_a, ts_a = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
    big = ms_a >= 4096
    p = np.polyfit(np.log(ms_a[big]), np.log(ts_a[big]), 1)[0]
    print(f"fitted exponent of the FFT RHS for M >= 4096: time ~ M^{p:.2f}")
    kinetic()
    sphere()


def _rhs_loop(pde):
    return jax.jit(lambda f: jax.lax.fori_loop(0, K, lambda i, y: y + 1e-6 * pde.rhs(0.0, y), f))


def kinetic():
    print()
    print(
        f"{'S':>5} {'M':>5} | {'scan+FFT RHS us':>15} | {'dense C RHS us':>14} | {'engine quad. us':>15} | dense/scan | engine/scan"
        f" | {'s-mix: scan us':>14} | {'dense C f us':>12}"
    )
    rows = []
    for S, M in [
        (16, 64),
        (64, 64),
        (64, 256),
        (256, 256),
        (256, 1024),
        (1024, 1024),
        (1024, 4096),
    ]:
        pde = KineticMeanField(S, M, beta=2.0, coupling=CausalCoupling(lam=1.0))
        f = pde.von_mises(1.0, 3.0 * pde.s)
        t_scan = per_call(_rhs_loop(pde), f)
        t_dense = float("nan")
        if S <= 1024:
            dense = KineticMeanField(S, M, beta=2.0, coupling=pde.coupling_matrix())
            t_dense = per_call(_rhs_loop(dense), f)
        t_eng = float("nan")
        if S * M <= 4096:
            attn = mf.Attention(2.0, mask=mf.Causal() & mf.ALiBi(1.0))
            eng = jax.jit(
                lambda y: jax.lax.fori_loop(
                    0, K, lambda i, z: z + 1e-6 * engine_face_velocity(attn, z, pde.s, pde.w), y
                )
            )
            t_eng = per_call(eng, f)
        mix_scan = per_call(
            jax.jit(
                lambda y, pde=pde: jax.lax.fori_loop(0, K, lambda i, z: z + 1e-6 * pde.mix(z), y)
            ),
            f,
        )
        cm = pde.coupling_matrix()
        mix_dense = per_call(
            jax.jit(lambda y, cm=cm: jax.lax.fori_loop(0, K, lambda i, z: z + 1e-6 * (cm @ z), y)),
            f,
        )
        rows.append((S * M, t_scan))
        print(
            f"{S:>5} {M:>5} | {t_scan * 1e6:>15.1f} | {t_dense * 1e6:>14.1f} | {t_eng * 1e6:>15.1f} | "
            f"{t_dense / t_scan:>10.1f} | {t_eng / t_scan:>11.1f} | {mix_scan * 1e6:>14.1f} | {mix_dense * 1e6:>12.1f}"
        )
    sm, tt = np.array([r[0] for r in rows], float), np.array([r[1] for r in rows])
    big = sm >= 16384
    p = np.polyfit(np.log(sm[big]), np.log(tt[big]), 1)[0]
    print(f"fitted exponent of the kinetic RHS for S M >= 16384: time ~ (S M)^{p:.2f}")


def sphere(bands=(8, 16, 32, 64)):
    """SphereMeanField: cost per right-hand side against the band limit L (about ten s2fft scalar
    transforms per RHS, half of them at band 2L; s2fft's jax transforms are O(L^3))."""
    from meanfield.pde import SphereMeanField

    print()
    print(f"{'L':>5} | {'sphere RHS us':>13}")
    rows = []
    for L in bands:
        pde = SphereMeanField(L, beta=4.0)
        rho = pde.perturbed(3, 0, 0.05)
        t = per_call(_rhs_loop(pde), rho)
        rows.append((L, t))
        print(f"{L:>5} | {t * 1e6:>13.1f}", flush=True)
    ls, ts = np.array([r[0] for r in rows], float), np.array([r[1] for r in rows])
    big = ls >= 16
    p = np.polyfit(np.log(ls[big]), np.log(ts[big]), 1)[0]
    print(f"fitted exponent of the sphere RHS for L >= 16: time ~ L^{p:.2f}")


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--sphere"]:
        jax.config.update("jax_enable_x64", True)
        sphere()
    else:
        main()
