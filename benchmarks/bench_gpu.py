"""One accelerator: causal SA at N = 10^6, d = 64 — time per RHS and the achieved fraction of the
device's own matmul rate, both measured in this run.

For each score precision (``Attention(precision=...)``: "highest" = full float32, "tf32",
"bf16") the device's GEMM rate is measured on an 8192^3 product in the same precision, and the
engine's chunked causal SA field (block sizes and query batches from the command line) is timed
on N tokens. The useful work of one causal RHS is two GEMMs per allowed pair,
4 d * N (N + 1) / 2 flops (score and value products; the exponentials and the online-softmax
bookkeeping are not counted), so

    fraction of matmul rate = (4 d N (N + 1) / 2 / time per RHS) / GEMM rate (same precision).

A fused vendor kernel (``jax.nn.dot_product_attention(..., implementation="cudnn",
is_causal=True)``, bfloat16) is timed on the same problem as a reference where available.

Run on the GPU:  python benchmarks/bench_gpu.py [--out DIR]
Smoke run on CPU: python benchmarks/bench_gpu.py --n 8192 --blocks 512 --gemm 1024
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _timing import median_time


def gemm_rate(n, precision):
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    if precision == "bf16":
        a = a.astype(jnp.bfloat16)
        mm = jax.jit(lambda u: jnp.matmul(u, u, preferred_element_type=jnp.float32))
    else:
        prec = jax.lax.Precision.HIGHEST if precision == "highest" else jax.lax.Precision.DEFAULT
        mm = jax.jit(lambda u: jnp.matmul(u, u, precision=prec))
    t = median_time(lambda: mm(a).block_until_ready(), repeats=10)
    return 2 * n**3 / t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--blocks", default="1024,2048,4096", help="chunked block sizes to try")
    ap.add_argument("--query-batches", default="1,8", help="query blocks evaluated at once (Attention.query_batch)")
    ap.add_argument("--precisions", default="highest,tf32,bf16")
    ap.add_argument("--gemm", type=int, default=8192, help="size of the square GEMM that measures the matmul rate")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="also write the table (and JSON rows) into this folder")
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp

    import meanfield as mf

    dev = jax.devices()[0]
    lines = [f"# jax {jax.__version__}, {dev.platform} {dev.device_kind}; causal SA, N = {args.n}, d = {args.d}, float32 tokens"]
    n, d = args.n, args.d
    flops = 4 * d * n * (n + 1) / 2
    x = mf.sphere_uniform(jax.random.key(0), n, d, jnp.float32)
    rows = []
    hdr = f"{'precision':>9} {'block':>6} {'qbatch':>6} | {'time/RHS s':>10} {'TFLOP/s':>8} {'GEMM TFLOP/s':>12} {'fraction':>8}"
    lines += [hdr, "-" * len(hdr)]
    print("\n".join(lines), flush=True)
    for prec in args.precisions.split(","):
        rate = gemm_rate(args.gemm, prec)
        for block in (int(b) for b in args.blocks.split(",")):
            for qb in (int(q) for q in args.query_batches.split(",")):
                attn = mf.Attention(1.0, mask=mf.Causal(), backend=mf.kernel.Chunked(block, qb), precision=prec)
                f = jax.jit(lambda y, a=attn: mf.velocity(a, y))
                try:
                    t0 = time.perf_counter()
                    f(x).block_until_ready()
                    compile_s = time.perf_counter() - t0
                    t = median_time(lambda: f(x).block_until_ready(), repeats=args.repeats, min_time=0)
                except Exception as err:  # e.g. out of memory for a large query batch
                    line = f"{prec:>9} {block:>6} {qb:>6} | failed: {type(err).__name__}: {str(err)[:80]}"
                    print(line, flush=True)
                    lines.append(line)
                    continue
                row = {"precision": prec, "block": block, "query_batch": qb, "time_s": t, "first_call_s": compile_s,
                       "tflops": flops / t / 1e12, "gemm_tflops": rate / 1e12, "fraction": flops / t / rate}
                rows.append(row)
                line = (f"{prec:>9} {block:>6} {qb:>6} | {t:>10.3f} {row['tflops']:>8.1f} {row['gemm_tflops']:>12.1f} "
                        f"{row['fraction']:>8.2f}")
                print(line, flush=True)
                lines.append(line)
    try:  # fused vendor kernel, bf16, as a reference
        q = x.astype(jnp.bfloat16)[None, :, None, :]
        fa = jax.jit(lambda u: jax.nn.dot_product_attention(u, u, u, is_causal=True, implementation="cudnn"))
        t = median_time(lambda: fa(q).block_until_ready(), repeats=args.repeats, min_time=0)
        rate = gemm_rate(args.gemm, "bf16")
        line = f"# cuDNN fused attention, bf16: {t:.3f} s per call, {flops / t / 1e12:.1f} TFLOP/s = {flops / t / rate:.2f} of the bf16 GEMM rate"
    except Exception as err:
        line = f"# cuDNN fused attention not available here: {type(err).__name__}: {str(err)[:100]}"
    print(line)
    lines.append(line)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench_gpu.txt").write_text("\n".join(lines) + "\n")
        (out / "bench_gpu.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
