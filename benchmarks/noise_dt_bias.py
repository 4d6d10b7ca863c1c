"""The weak time-step bias of the noisy particles (Heun with the retraction) on the order
parameter of the noisy USA dynamics on S^2, and its Richardson extrapolation against
``theory.stationary_states``.

N tokens from a concentrated start run to T at noise ratio * sigma_c with steps dt and dt/2; R is
averaged over the second half of the run and over seeds. Weak order 1 makes R(dt) = R + b dt +
o(dt), so 2 R(dt/2) - R(dt) removes the bias. Also: the RQF synchronisation rate (mean change of
log sqrt(1 - <x_i, x_j>^2) per unit time, exact value c^2) at two steps.

Run:  python benchmarks/noise_dt_bias.py [--n 1024] [--seeds 4] [--t1 15]
"""

from __future__ import annotations

import argparse

import jax

jax.config.update("jax_enable_x64", True)  # entry point

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import meanfield as mf  # noqa: E402
from meanfield import theory  # noqa: E402


def order(beta, ratio, n, seeds, t1, dt):
    sigma = ratio * theory.critical_noise(beta, 3)
    attn = mf.Attention(jnp.asarray(beta), form="USA")
    ts = jnp.linspace(0.0, t1, 9)

    def one(key):
        x = jnp.array([0.0, 0.0, 1.0]) + 0.3 * jax.random.normal(key, (n, 3))
        x = x / jnp.linalg.norm(x, axis=-1, keepdims=True)
        xs = mf.simulate(attn, x, ts, noise=mf.Noise(sigma), key=key, dt=dt).xs
        return jax.vmap(mf.observables.order_parameter)(xs)[4:].mean()

    r = np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(0), seeds)))
    return r.mean(), r.std(ddof=1) / np.sqrt(seeds)


def rqf_rate(dt, runs=2048, n=8, d=3, t1=4.0):
    attn = mf.Attention(1.0, V=jnp.zeros((d, d)))
    x0 = mf.sphere_uniform(jax.random.key(2), n, d)
    ts = jnp.linspace(0.0, t1, 9)
    iu = np.triu_indices(n, 1)

    def one(key):
        xs = mf.simulate(
            attn, x0, ts, noise=mf.Noise(0.0, common=1.0, model="rqf"), key=key, dt=dt
        ).xs
        g = jnp.einsum("tnd,tmd->tnm", xs, xs)[:, iu[0], iu[1], None]
        s = jnp.mean(jnp.log(jnp.linalg.norm(xs[:, iu[0]] - g * xs[:, iu[1]], axis=-1)), -1)
        return s[-1] - s[0]

    c = np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(0), runs)))
    return -c.mean() / t1, c.std(ddof=1) / np.sqrt(runs) / t1


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--t1", type=float, default=15.0)
    args = ap.parse_args(argv)
    print(f"USA on S^2, N = {args.n}, {args.seeds} seeds, T = {args.t1}, concentrated start")
    print(
        f"{'beta':>4} {'ratio':>6} {'dt':>6} | {'R(dt)':>14} {'R(dt/2)':>14} | {'2R(dt/2)-R(dt)':>14} | theory"
    )
    for beta, ratio, dt in ((1.0, 0.85, 0.025), (3.0, 0.9, 0.01), (3.0, 1.03, 0.01)):
        a, sa = order(beta, ratio, args.n, args.seeds, args.t1, dt)
        b, sb = order(beta, ratio, args.n, args.seeds, args.t1, dt / 2)
        th = max(
            s["order"]
            for s in theory.stationary_states(beta, ratio * theory.critical_noise(beta, 3), 3)
            if s["stable"]
        )
        print(
            f"{beta:>4g} {ratio:>6g} {dt:>6g} | {a:.4f} ({sa:.4f}) {b:.4f} ({sb:.4f}) | {2 * b - a:>14.4f} | {th:.4f}",
            flush=True,
        )
    for dt in (0.02, 0.01):
        r, se = rqf_rate(dt)
        print(
            f"RQF synchronisation rate (c = 1, d = 3, 2048 paths of 8 tokens, T = 4) at dt = {dt}: {r:.4f} ({se:.4f}); exact 1"
        )


if __name__ == "__main__":
    main()
