"""Field error of the cuDNN route's mapping (``Cudnn``) against float64, on a CPU: the same
augmented coordinates through XLA's reference attention (``implementation="xla"``: bf16 operands,
float32 softmax, the logsumexp returned in bf16 as cuDNN returns it).

Causal, strict, window and two-sided ALiBi masks at lambda N = 10, 10^2, 10^3, 10^4; SA and USA;
d = 64, beta = 1, masses uniform on [0.5, 1.5] / N; and Dense(precision="bf16") beside it. The
error is max_i |v_i - v_i^64| / max_i |v_i^64|.

Run:  python benchmarks/cudnn_error.py [--n 1024]
"""

from __future__ import annotations

import argparse

import jax

jax.config.update("jax_enable_x64", True)  # entry point: the float64 reference

import jax.numpy as jnp  # noqa: E402

import meanfield as mf  # noqa: E402
from _timing import field_error  # noqa: E402
from meanfield.kernel import Cudnn, Dense  # noqa: E402

MASKS = {
    "causal-alibi": lambda lam: mf.Causal() & mf.ALiBi(lam),
    "strict-alibi": lambda lam: mf.Causal(strict=True) & mf.ALiBi(lam),
    "window-alibi": lambda lam: mf.Causal() & mf.Window(64.0) & mf.ALiBi(lam),
    "two-sided-alibi": lambda lam: mf.ALiBi(lam),
}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--d", type=int, default=64)
    args = ap.parse_args(argv)
    n = args.n
    x = mf.sphere_uniform(jax.random.key(0), n, args.d, jnp.float64)
    mass = jax.random.uniform(jax.random.key(1), (n,), minval=0.5, maxval=1.5) / n
    aux = mf.TokenAux.default(n, jnp.float64, mass=mass)
    aux32 = mf.TokenAux.default(n, jnp.float32, mass=mass.astype(jnp.float32))
    print(f"N = {n}, d = {args.d}, beta = 1: relative field error against float64")
    print(
        f"{'mask':>16} {'lambda N':>9} | {'Cudnn SA':>9} {'Cudnn USA':>9} | {'Dense bf16 SA':>13} {'USA':>9}"
    )
    worst = 0.0
    for name, mask in MASKS.items():
        for lam_n in (10.0, 1e2, 1e3, 1e4):
            row = []
            for backend in (Cudnn(implementation="xla"), Dense()):
                for form in ("SA", "USA"):
                    ref = mf.Attention(1.0, mask=mask(lam_n / n), form=form, backend=Dense())(
                        x, aux
                    )
                    attn = mf.Attention(
                        jnp.float32(1.0),
                        mask=mask(jnp.float32(lam_n / n)),
                        form=form,
                        precision="bf16",
                        backend=backend,
                    )
                    row.append(field_error(attn(x.astype(jnp.float32), aux32), ref))
            worst = max(worst, row[0], row[1])
            print(
                f"{name:>16} {lam_n:>9g} | {row[0]:>9.2e} {row[1]:>9.2e} | {row[2]:>13.2e} {row[3]:>9.2e}",
                flush=True,
            )
    print(f"worst Cudnn error: {worst:.2e}")


if __name__ == "__main__":
    main()
