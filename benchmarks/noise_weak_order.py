"""Weak order of the noisy particle scheme (Heun + retraction, Stratonovich): Brownian motion on
S^{d-1} with attention switched off, the bias of E<x_T, x_0> against exp(-(d - 1) sigma^2 T / 2)
at halving steps, over ``--paths`` paths (tokens x keys), with its standard error and the fitted
slope log2(bias(dt) / bias(dt/2)).

Run:  python benchmarks/noise_weak_order.py [--d 3,8] [--paths 40000]
"""

from __future__ import annotations

import argparse

import jax

jax.config.update("jax_enable_x64", True)  # entry point

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import meanfield as mf  # noqa: E402


def bias(d, dt, sigma=0.5, t1=1.0, paths=40000, n=200):
    attn = mf.Attention(1.0, V=jnp.zeros((d, d)))
    x0 = mf.sphere_uniform(jax.random.key(1), n, d)
    ts = jnp.array([0.0, t1])
    run = jax.jit(
        jax.vmap(lambda k: mf.simulate(attn, x0, ts, noise=mf.Noise(sigma), key=k, dt=dt).xs[-1])
    )
    c = np.asarray(
        jnp.sum(run(jax.random.split(jax.random.key(0), paths // n)) * x0[None], -1)
    ).ravel()
    return c.mean() - np.exp(-(d - 1) * sigma**2 * t1 / 2), c.std() / np.sqrt(c.size)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", default="3,8")
    ap.add_argument("--dts", default="0.1,0.05,0.025,0.0125")
    ap.add_argument("--paths", type=int, default=40000)
    args = ap.parse_args(argv)
    print("sigma = 0.5, T = 1: bias of E<x_T, x_0> (standard error)")
    for d in (int(v) for v in args.d.split(",")):
        prev = None
        for dt in (float(v) for v in args.dts.split(",")):
            b, se = bias(d, dt, paths=args.paths)
            slope = f"  order {np.log2(abs(prev) / abs(b)):.2f}" if prev else ""
            print(f"d = {d}, dt = {dt:<7g} bias {b:+.2e} (se {se:.1e}){slope}", flush=True)
            prev = b


if __name__ == "__main__":
    main()
