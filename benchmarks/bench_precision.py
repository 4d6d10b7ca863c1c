"""Accuracy (and time) of the score-precision options of ``meanfield.Attention``.

For causal SA on the sphere, the field v in float32 with the scores computed at
``precision="highest"`` (full float32), ``"tf32"`` (the backend's fast default: TF32 tensor
cores on recent NVIDIA GPUs; exact float32 on CPU) and ``"bf16"`` (queries and keys rounded to
bfloat16, products accumulated in float32), each against a float64 evaluation
(``meanfield.kernel.precision_report``), and the time per evaluation relative to "highest".

Run:  python benchmarks/bench_precision.py [--quick]
"""

from __future__ import annotations

import argparse

from _timing import median_time


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    import dataclasses

    import jax

    jax.config.update("jax_enable_x64", True)  # entry point: the float64 reference
    import jax.numpy as jnp

    import meanfield as mf
    from meanfield.kernel import precision_report

    print(f"# jax {jax.__version__} on {jax.default_backend()} ({jax.devices()[0].device_kind})")
    print(
        f"{'N':>6} {'d':>3} {'beta':>5} | {'highest max':>11} {'tf32 max':>9} {'bf16 max':>9} {'bf16 rms':>9} | "
        f"{'t tf32/highest':>14} {'t bf16/highest':>14}"
    )
    sizes = [(1024, 16)] if args.quick else [(1024, 16), (4096, 16), (4096, 64)]
    for n, d in sizes:
        x = mf.sphere_uniform(jax.random.key(n + d), n, d)
        x32 = x.astype(jnp.float32)
        for beta in (1.0, 4.0, 16.0):
            attn = mf.Attention(beta, mask=mf.Causal())
            rep = precision_report(attn, x)
            times = {}
            for opt in ("highest", "tf32", "bf16"):
                a = jax.tree.map(
                    lambda v: v.astype(jnp.float32) if eqx_is_float(v) else v,
                    dataclasses.replace(attn, precision=opt),
                )
                f = jax.jit(lambda y, a=a: mf.velocity(a, y))
                times[opt] = median_time(lambda f=f: f(x32).block_until_ready(), repeats=5)
            print(
                f"{n:>6} {d:>3} {beta:>5g} | {rep['highest']['max_rel']:>11.1e} {rep['tf32']['max_rel']:>9.1e} "
                f"{rep['bf16']['max_rel']:>9.1e} {rep['bf16']['rms_rel']:>9.1e} | "
                f"{times['tf32'] / times['highest']:>14.2f} {times['bf16'] / times['highest']:>14.2f}"
            )
    print("# max: max_i |v_i - v_i^64| / max_i |v_i^64|; rms: the same in root mean square")


def eqx_is_float(v):
    import jax.numpy as jnp

    return hasattr(v, "dtype") and jnp.issubdtype(v.dtype, jnp.floating)


if __name__ == "__main__":
    main()
