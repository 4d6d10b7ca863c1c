"""Field error of the Splash backend against float64 as the ALiBi span lambda N grows.

The lambda_h p_j coordinate of the augmented keys carries the ALiBi term; split in three bf16
parts against the three parts of lambda_h (every cross product), it keeps float32 accuracy, so the
error should not grow with lambda N (a single float32 coordinate would cost ~2^-24 lambda N).
Causal ALiBi, Q = K = V = I, d = 16, in Pallas interpret mode on the CPU.

Run:  python benchmarks/splash_error.py [--n 1024] [--lams 0.01,0.1,1,10]
"""

from __future__ import annotations

import argparse

import jax

jax.config.update("jax_enable_x64", True)  # entry point: the float64 reference

import jax.numpy as jnp  # noqa: E402

import meanfield as mf  # noqa: E402
from _timing import field_error  # noqa: E402
from meanfield.kernel import Dense, Splash  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--d", type=int, default=16)
    ap.add_argument("--lams", default="0.01,0.1,1,10")
    args = ap.parse_args(argv)
    x = mf.sphere_uniform(jax.random.key(0), args.n, args.d)
    print(
        f"N = {args.n}, d = {args.d}, beta = 1, Causal() & ALiBi(lambda); relative field error vs float64 dense"
    )
    print(f"{'lambda':>7} | {'lambda N':>8} | {'SA':>9} | {'USA':>9}")
    for lam in (float(v) for v in args.lams.split(",")):
        errs = []
        for form in ("SA", "USA"):
            mask = mf.Causal() & mf.ALiBi(lam)
            ref = mf.Attention(1.0, mask=mask, form=form, backend=Dense())(x)
            out = mf.Attention(jnp.float32(1.0), mask=mask, form=form, backend=Splash(256, 256))(
                x.astype(jnp.float32)
            )
            errs.append(field_error(out, ref))
        print(f"{lam:>7g} | {lam * args.n:>8g} | {errs[0]:>9.2e} | {errs[1]:>9.2e}", flush=True)


if __name__ == "__main__":
    main()
