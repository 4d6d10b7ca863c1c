"""Field error of each ``Fused`` precision against float64, in Pallas interpret mode (no GPU needed).

"highest" runs both products as three bf16 products of hi/lo splits, "bf16" as one bf16 product,
"tf32" as one float32 product on TF32 tensor cores (in interpret mode on a CPU the "tf32" products
run in full float32, so its printed error is the rest of the kernel's, not TF32's). Causal SA,
Q = K = V = I, tokens uniform on S^{d-1}; the error is max_i |v_i - v_i^64| / max_i |v_i^64|.

Run:  python benchmarks/fused_precision.py [--n 2048] [--d 64] [--betas 1,4,9]
"""

from __future__ import annotations

import argparse

import jax

jax.config.update("jax_enable_x64", True)  # entry point: the float64 reference

import jax.numpy as jnp  # noqa: E402

import meanfield as mf  # noqa: E402
from _timing import field_error  # noqa: E402
from meanfield.kernel import Dense, Fused  # noqa: E402
from meanfield.kernel.backends.fused import PRECISIONS  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--betas", default="1,4,9")
    args = ap.parse_args(argv)
    x = mf.sphere_uniform(jax.random.key(0), args.n, args.d)
    print(
        f"N = {args.n}, d = {args.d}, causal SA; relative field error against float64 dense (interpret mode)"
    )
    print(f"{'beta':>5} | " + " | ".join(f"{p:>9}" for p in PRECISIONS))
    for beta in (float(b) for b in args.betas.split(",")):
        ref = mf.Attention(beta, mask=mf.Causal(), backend=Dense())(x)
        errs = []
        for prec in PRECISIONS:
            out = mf.Attention(
                jnp.float32(beta), mask=mf.Causal(), precision=prec, backend=Fused(64, 64)
            )(x.astype(jnp.float32))
            errs.append(field_error(out, ref))
        print(f"{beta:>5g} | " + " | ".join(f"{e:>9.2e}" for e in errs), flush=True)


if __name__ == "__main__":
    main()
