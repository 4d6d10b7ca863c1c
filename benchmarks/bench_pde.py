"""Cost per right-hand side of the circle mean-field solver vs the number of cells M, with the
fitted exponent of time ~ M^p (FFT convolutions: p ~ 1, i.e. O(M log M)), in one run, against a
direct O(M^2) quadrature of the same velocity (the baseline the FFT replaces).

Run:  python benchmarks/bench_pde.py
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from meanfield.pde import CircleMeanField

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
        loop = jax.jit(lambda r: jax.lax.fori_loop(0, K, lambda i, y: y + 1e-6 * pde.rhs(0.0, y), r))
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


if __name__ == "__main__":
    main()
