"""Field error of the Splash backend (``precision="highest"``) against float64 as the ALiBi span
lambda N grows, for two query-block sizes.

The kernel adds lambda_h (p_j - c_b) to the scores, c_b the position at the middle of the query
block, and the logsumexp carries the row constant lambda_h (p_i - c_b): its float32 rounding,
about 2^-24 lambda b_q / 2, is what USA (which multiplies by e^{lse}) sees. The error therefore
depends on lambda times the block, not on lambda N. Causal ALiBi, Q = K = V = I, masses 1/N, in
Pallas interpret mode on the CPU.

Run:  python benchmarks/splash_error.py [--n 2048] [--lams 0.005,0.05,0.5,5] [--blocks 128,512]
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
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--d", type=int, default=16)
    ap.add_argument("--lams", default="0.005,0.05,0.5,5")
    ap.add_argument("--blocks", default="128,512")
    args = ap.parse_args(argv)
    x = mf.sphere_uniform(jax.random.key(0), args.n, args.d)
    print(
        f"N = {args.n}, d = {args.d}, beta = 1, Causal() & ALiBi(lambda); relative field error vs float64 dense"
    )
    blocks = [int(b) for b in args.blocks.split(",")]
    print(
        f"{'lambda':>7} | {'lambda N':>8} | "
        + " | ".join(f"{'SA b=' + str(b):>10} | {'USA b=' + str(b):>10}" for b in blocks)
    )
    for lam in (float(v) for v in args.lams.split(",")):
        errs = []
        for b in blocks:
            for form in ("SA", "USA"):
                mask = mf.Causal() & mf.ALiBi(lam)
                ref = mf.Attention(1.0, mask=mask, form=form, backend=Dense())(x)
                out = mf.Attention(jnp.float32(1.0), mask=mask, form=form, backend=Splash(b, b))(
                    x.astype(jnp.float32)
                )
                errs.append(field_error(out, ref))
        print(
            f"{lam:>7g} | {lam * args.n:>8g} | " + " | ".join(f"{e:>10.2e}" for e in errs),
            flush=True,
        )


if __name__ == "__main__":
    main()
