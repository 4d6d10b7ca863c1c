"""One TPU: the Splash backend (the splash mapping on the project's kernel) in every precision,
each row a fraction of jax's own splash attention on plain bf16 causal attention at the same N
(the vendor reference), and whether a float32 ``tpu.matmul`` is one MXU pass.

Rows, at N = 4k ... 1M (causal SA, d = 64, one head, time-boxed, the whole run within
``--budget`` seconds):

* ``jax splash bf16``: ``make_splash_mha`` with ``CausalMask`` on bf16 q, k, v (d = 64 padded to
  128 lanes like ours), the reference speed (its mask preprocessing, quadratic in N/b, is outside
  the timing and caps it at ``--jax-max`` tokens);
* ``Splash highest / tf32 / bf16``: the field of ``Attention(mask=Causal() & ALiBi(1 / N))``, with
  masses, through ``Splash()`` at the default blocks;
* the MXU pass probe: an (n x 512) @ (512 x 512) product timed with bf16 operands, float32
  operands at ``Precision.DEFAULT``, and float32 at ``Precision.HIGHEST``; a float32 DEFAULT time
  close to bf16's means one pass, about 3x or 6x means a multi-pass emulation.

Up to ``--check-max`` tokens each Splash field is compared with the dense float64 field.
Unmeasured until a TPU runs it. Smoke run on a CPU (interpret mode, tiny):
python benchmarks/bench_tpu.py --sizes 512 --budget 60 --probe 256

Run on a TPU VM:  python benchmarks/bench_tpu.py --out DIR
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _timing import field_error, median_time


def mxu_probe(n: int) -> dict:
    """Seconds of an (n x 512) @ (512 x 512) product per operand kind."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, 512), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (512, 512), jnp.float32)
    kinds = {
        "bf16": (a.astype(jnp.bfloat16), b.astype(jnp.bfloat16), None),
        "f32 DEFAULT": (a, b, jax.lax.Precision.DEFAULT),
        "f32 HIGHEST": (a, b, jax.lax.Precision.HIGHEST),
    }
    out = {}
    for name, (x, y, prec) in kinds.items():
        f = jax.jit(
            lambda u, v, p=prec: jnp.matmul(u, v, precision=p, preferred_element_type=jnp.float32)
        )
        f(x, y).block_until_ready()
        out[name] = median_time(
            lambda f=f, x=x, y=y: f(x, y).block_until_ready(), repeats=5, min_time=0
        )
    return out


def jax_splash(n: int, d: int, interpret: bool):
    """jax's splash kernel on bf16 causal attention: a callable of (q, k, v)."""
    import jax
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    kernel = sa.make_splash_mha(
        sa.MultiHeadMask([sa.CausalMask((n, n))]),
        block_sizes=sa.BlockSizes(block_q=512, block_kv=512, block_kv_compute=512),
        head_shards=1,
        q_seq_shards=1,
        interpret=interpret,
    )
    return jax.jit(kernel)


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="4096,16384,65536,262144,1048576")
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--precisions", default="highest,tf32,bf16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--check-max", type=int, default=16384)
    ap.add_argument("--jax-max", type=int, default=65536, help="largest N for jax's splash kernel")
    ap.add_argument("--probe", type=int, default=65536, help="rows of the MXU pass probe")
    ap.add_argument("--box", type=float, default=20.0)
    ap.add_argument("--budget", type=float, default=420.0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    t_start = time.perf_counter()

    import jax

    jax.config.update("jax_enable_x64", True)  # entry point: the float64 reference
    import jax.numpy as jnp

    import meanfield as mf
    from meanfield.kernel import Dense, Splash

    dev = jax.devices()[0]
    interpret = dev.platform != "tpu"
    d = args.d
    lines = [
        f"# jax {jax.__version__}, {dev.platform} {dev.device_kind}; causal SA, d = {d}, one head"
    ]

    def emit(line):
        print(line, flush=True)
        lines.append(line)

    probe = mxu_probe(args.probe)
    emit(
        "# MXU probe ((n x 512) @ (512 x 512), n = "
        f"{args.probe}): "
        + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in probe.items())
        + f"; f32 DEFAULT / bf16 = {probe['f32 DEFAULT'] / probe['bf16']:.2f}"
        + f", f32 HIGHEST / bf16 = {probe['f32 HIGHEST'] / probe['bf16']:.2f}"
    )
    hdr = f"{'backend':>18} {'N':>8} | {'time/field s':>12} {'Gpair/s':>8} {'of jax bf16':>11} | {'rel err':>8}"
    emit(hdr)
    emit("-" * len(hdr))
    rows, last = [], {}
    for n in (int(s) for s in args.sizes.split(",")):
        pairs = n * (n + 1) / 2
        x = mf.sphere_uniform(jax.random.key(0), n, d, jnp.float32)
        mass = jax.random.uniform(jax.random.key(1), (n,), jnp.float32, 0.5, 1.5) / n
        aux = mf.TokenAux.default(n, jnp.float32, mass=mass)
        mask = mf.Causal() & mf.ALiBi(jnp.float32(1.0 / n))
        t_ref = None
        if n <= args.jax_max and time.perf_counter() - t_start < args.budget:
            try:
                q = jnp.zeros((1, n, 128), jnp.bfloat16).at[..., :d].set(x.astype(jnp.bfloat16))
                kern = jax_splash(n, d, interpret)
                kern(q, q, q).block_until_ready()
                t_ref = median_time(
                    lambda: kern(q, q, q).block_until_ready(), repeats=args.repeats, min_time=0
                )
                emit(
                    f"{'jax splash bf16':>18} {n:>8} | {t_ref:>12.4f} {pairs / t_ref / 1e9:>8.2f} {1.0:>11.2f} |"
                )
            except Exception as err:
                emit(
                    f"{'jax splash bf16':>18} {n:>8} | failed: {type(err).__name__}: {str(err)[:120]}"
                )
        ref = None
        if n <= args.check_max:
            ref = mf.Attention(1.0, mask=mf.Causal() & mf.ALiBi(1.0 / n), backend=Dense())(
                x.astype(jnp.float64),
                mf.TokenAux.default(n, jnp.float64, mass=mass.astype(jnp.float64)),
            )
        for prec in args.precisions.split(","):
            name = f"Splash {prec}"
            if time.perf_counter() - t_start > args.budget:
                emit(f"{name:>18} {n:>8} | not run: budget of {args.budget:.0f} s spent")
                continue
            if name in last and last[name][1] * (n / last[name][0]) ** 2 > args.box:
                emit(f"{name:>18} {n:>8} | skipped: predicted over the box")
                continue
            attn = mf.Attention(jnp.float32(1.0), mask=mask, precision=prec, backend=Splash())
            f = jax.jit(lambda y, a=attn: a(y, aux))
            try:
                f(x).block_until_ready()
                t = median_time(lambda: f(x).block_until_ready(), repeats=args.repeats, min_time=0)
            except Exception as err:
                emit(f"{name:>18} {n:>8} | failed: {type(err).__name__}: {str(err)[:120]}")
                continue
            last[name] = (n, t)
            err = field_error(f(x), ref) if ref is not None else float("nan")
            frac = t_ref / t if t_ref else float("nan")
            rows.append(
                dict(
                    backend=name,
                    n=n,
                    time_s=t,
                    gpairs_per_s=pairs / t / 1e9,
                    of_jax_bf16=frac,
                    rel_err=err,
                )
            )
            emit(
                f"{name:>18} {n:>8} | {t:>12.4f} {pairs / t / 1e9:>8.2f} {frac:>11.2f} | {err:>8.1e}"
            )
    emit(f"# total {time.perf_counter() - t_start:.0f} s")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench_tpu.txt").write_text("\n".join(lines) + "\n")
        (out / "bench_tpu.json").write_text(json.dumps(dict(probe=probe, rows=rows), indent=1))


if __name__ == "__main__":
    main()
