"""One accelerator: the causal SA field of N tokens (d = 64) through the backends — dense XLA
(``Dense()``), chunked XLA (``Chunked(block, query_batch)``), the fused Pallas-Triton kernel
(``Fused(block_q, block_k)``, GPU; the old defaults 64:64 and the candidate 128:64 with 8 warps),
the cuDNN route (``Cudnn()``, precision "bf16" only, augmented coordinates) and the splash mapping
(``Splash(block_q, block_k)``, TPU) — at N = 4k ... 1M in each precision ("highest", "tf32",
"bf16"), each configuration time-boxed. Unmeasured until a device runs it: the numbers in
results_h200_*.txt predate the 3xTF32 "highest", the Cudnn route and the 128:64:8 candidate.
On a GPU, cuDNN's fused attention (bf16) runs first at each N, and every row states its speed as
a fraction of cuDNN's in the same run ("of cuDNN"); up to ``--check-max`` tokens (16k) every
field is compared with the dense backend in float64 ("rel err": max |v - v64| / max |v64|). The
whole run stays within ``--budget`` (420 s) plus the last configuration's time box.

For each row: the time of one field evaluation (median of ``--repeats`` after a warm-up), the pair
throughput (allowed pairs N (N + 1) / 2 per second), the achieved flop rate of the two GEMMs that
an attention field needs per allowed pair (score and value products, 4 d flops per pair; the
exponentials and the online-softmax bookkeeping are not counted), and that rate as a fraction of
the device's own dense GEMM rate in the same precision, measured in this run on an 8192^3
product. cuDNN's fused attention (bf16, ``jax.nn.dot_product_attention``) is the vendor reference.

The largest N that fits is computed from a memory formula, not by probing: the tokens, their
projections and the field (about 4 N d floats of 4 bytes for one head) plus what each backend
holds at once — dense: a (row_block x N) score slab and its exponentials; chunked: query_batch
tiles of block^2 scores; fused: nothing beyond the tokens (tiles live on chip) — against the
device memory that JAX reports.

Time boxes: a configuration is skipped when the previous size's time, scaled by the pair count,
predicts more than ``--box`` seconds per call, and the whole script stops launching new work after
``--budget`` seconds; what ran is printed and written (``--out``).

Run on the GPU or TPU:  python benchmarks/bench_gpu.py --out DIR
Smoke run on CPU (interpret-mode Pallas, tiny): python benchmarks/bench_gpu.py --sizes 256 --gemm 256 --budget 60 --fused 64:64 --splash 128:128 --chunked 128:2
Heads (in-kernel Q, K, V projections of the fused kernel): add ``--heads 4``; pairs, flops and
the memory formula then count heads x pairs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _timing import field_error, median_time


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


def bytes_needed(backend, n, d, *, heads=1, row_block=None, block=2048, query_batch=8):
    """Device bytes one causal SA field evaluation holds at once (float32), by backend."""
    from meanfield.kernel.backends.dense import default_row_block

    base = 4 * ((2 + 3 * heads) * n * d)  # tokens, per-head q/k/v projections, the field
    if (
        backend == "dense"
    ):  # scores, exponentials, weights of one row slab (the backend's default rows)
        rows = row_block or default_row_block(heads, n, 4)
        return base + 4 * 3 * heads * min(rows, n) * n
    if backend == "chunked":
        return base + 4 * 3 * heads * query_batch * block * block
    return base  # fused: tiles stay on chip


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="4096,16384,65536,262144,1048576")
    ap.add_argument("--no-dense", action="store_true", help="skip the dense XLA backend")
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument(
        "--heads",
        type=int,
        default=1,
        help="heads; > 1 draws random per-head Q, K, V (the fused kernel's in-kernel projections)",
    )
    ap.add_argument(
        "--precisions", default="highest,tf32,bf16", help="precisions (Attention.precision)"
    )
    ap.add_argument("--chunked", default="2048:8", help="block:query_batch of the chunked backend")
    ap.add_argument(
        "--fused",
        default=None,
        help="block_q:block_k[:num_warps[:num_stages]] of the fused backend "
        "(default 64:64,128:64 on a GPU, none elsewhere)",
    )
    ap.add_argument(
        "--cudnn-route",
        default=None,
        choices=("on", "off"),
        help="the Cudnn backend (bf16 rows only; default on on a GPU)",
    )
    ap.add_argument(
        "--splash",
        default=None,
        help="block_q:block_k of the splash backend (default 512:512 on a TPU, none elsewhere)",
    )
    ap.add_argument(
        "--gemm",
        type=int,
        default=8192,
        help="size of the square GEMM that measures the matmul rate",
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--check-max",
        type=int,
        default=16384,
        help="up to this N, each field is compared with the dense float64 field (max |diff| / max |ref|)",
    )
    ap.add_argument(
        "--box",
        type=float,
        default=20.0,
        help="skip a configuration predicted slower than this per call (s)",
    )
    ap.add_argument(
        "--budget", type=float, default=420.0, help="launch no new work after this many seconds"
    )
    ap.add_argument(
        "--out", default=None, help="also write the table (and JSON rows) into this folder"
    )
    args = ap.parse_args()
    t_start = time.perf_counter()

    import jax

    jax.config.update(
        "jax_enable_x64", True
    )  # entry point: the float64 reference (tokens stay float32)
    import jax.numpy as jnp

    import meanfield as mf
    from meanfield.kernel import Chunked, Cudnn, Dense, Fused, Splash

    dev = jax.devices()[0]
    try:
        mem = int(dev.memory_stats()["bytes_limit"])
    except Exception:  # CPU: no memory stats
        mem = 0
    d, heads = args.d, args.heads
    mats = {}
    if heads > 1:
        keys = jax.random.split(jax.random.key(3), 3)
        mats = {
            name: jax.random.normal(k, (heads, d, d), jnp.float32) / d**0.5
            for name, k in zip("QKV", keys)
        }
    lines = [
        f"# jax {jax.__version__}, {dev.platform} {dev.device_kind}, device memory {mem / 2**30:.1f} GiB; "
        f"causal SA field, d = {d}, {heads} head(s){' with random Q, K, V' if mats else ''}, float32 tokens; "
        "pairs and flops count head-pairs"
    ]
    rates = {p: gemm_rate(args.gemm, p) for p in args.precisions.split(",")}
    lines.append(
        "# GEMM rate (TFLOP/s, 8192^3): "
        + ", ".join(f"{p} {r / 1e12:.1f}" for p, r in rates.items())
    )
    if mem:
        b = mf.kernel.Chunked().block
        fits = {
            name: int(
                max(
                    n
                    for n in (2**k for k in range(10, 31))
                    if bytes_needed(name, n, d, heads=heads, block=b) <= 0.9 * mem
                )
            )
            for name in ("dense", "chunked", "fused")
        }
        lines.append(
            "# largest N (power of two) by the memory formula: "
            + ", ".join(f"{k} {v:,}" for k, v in fits.items())
        )
    hdr = (
        f"{'backend':>18} {'prec':>7} {'N':>8} | {'time/field s':>12} {'Gpair/s':>8} {'TFLOP/s':>8} "
        f"{'GEMM TFLOP/s':>12} {'fraction':>8} {'of cuDNN':>8} | {'rel err':>8}"
    )
    lines += [hdr, "-" * len(hdr)]
    print("\n".join(lines), flush=True)

    backends = [] if args.no_dense else [("dense", Dense())]
    for spec in filter(None, args.chunked.split(",")):
        blk, qb = (int(v) for v in spec.split(":"))
        backends.append((f"chunked {blk}:{qb}", Chunked(blk, qb)))
    fused = (
        args.fused
        if args.fused is not None
        else ("64:64,128:64:8" if dev.platform == "gpu" else "")
    )
    for spec in filter(None, fused.split(",")):
        vals = [int(v) for v in spec.split(":")] + [None, None]
        backends.append(
            (f"fused {spec}", Fused(vals[0], vals[1], num_warps=vals[2], num_stages=vals[3]))
        )
    splash = (
        args.splash if args.splash is not None else ("512:512" if dev.platform == "tpu" else "")
    )
    for spec in filter(None, splash.split(",")):
        bq, bk = (int(v) for v in spec.split(":"))
        backends.append((f"splash {spec}", Splash(bq, bk)))

    route = args.cudnn_route or ("on" if dev.platform == "gpu" else "off")
    if route == "on":
        backends.append(("cudnn route", Cudnn()))

    rows, last = [], {}
    sizes = [int(s) for s in args.sizes.split(",")]

    def emit(line):
        print(line, flush=True)
        lines.append(line)

    for n in sizes:
        x = mf.sphere_uniform(jax.random.key(0), n, d, jnp.float32)
        pairs = heads * n * (n + 1) / 2
        ref = None
        if n <= args.check_max:  # reference field: dense, float64
            f64 = {k: v.astype(jnp.float64) for k, v in mats.items()}
            ref_attn = mf.Attention(1.0, mask=mf.Causal(), backend=Dense(), **f64)
            ref = jax.jit(lambda y: ref_attn(y))(x.astype(jnp.float64))
        t_cudnn = None
        if dev.platform == "gpu" and heads == 1 and time.perf_counter() - t_start < args.budget:
            try:  # fused vendor kernel, bf16, as the reference speed
                q = x.astype(jnp.bfloat16)[None, :, None, :]
                fa = jax.jit(
                    lambda u: jax.nn.dot_product_attention(
                        u, u, u, is_causal=True, implementation="cudnn"
                    )
                )
                t_cudnn = median_time(
                    lambda: fa(q).block_until_ready(), repeats=args.repeats, min_time=0
                )
                tflops = 4 * d * pairs / t_cudnn / 1e12
                rate = rates.get("bf16") or gemm_rate(args.gemm, "bf16")
                emit(
                    f"{'cuDNN (bf16)':>18} {'bf16':>7} {n:>8} | {t_cudnn:>12.4f} {pairs / t_cudnn / 1e9:>8.2f} {tflops:>8.1f} "
                    f"{rate / 1e12:>12.1f} {tflops * 1e12 / rate:>8.2f} {1.0:>8.2f}"
                )
            except Exception as err:
                emit(
                    f"{'cuDNN (bf16)':>18} {'bf16':>7} {n:>8} | not available: {type(err).__name__}: {str(err)[:100]}"
                )
        for prec in args.precisions.split(","):
            for name, backend in backends:
                key = (name, prec)
                if name == "cudnn route" and prec != "bf16":
                    continue  # the route serves precision="bf16" only
                if time.perf_counter() - t_start > args.budget:
                    emit(
                        f"{name:>18} {prec:>7} {n:>8} | not run: budget of {args.budget:.0f} s spent"
                    )
                    continue
                if key in last:
                    n0, t0 = last[key]
                    predicted = t0 * (n / n0) ** 2 * (2.0 if name == "dense" else 1.0)
                    if predicted > args.box:
                        emit(
                            f"{name:>18} {prec:>7} {n:>8} | skipped: predicted {predicted:.0f} s per call > box"
                        )
                        continue
                need = bytes_needed(name.split()[0], n, d, heads=heads)
                if mem and need > 0.9 * mem:
                    emit(
                        f"{name:>18} {prec:>7} {n:>8} | skipped: memory formula {need / 2**30:.1f} GiB"
                    )
                    continue
                attn = mf.Attention(1.0, mask=mf.Causal(), backend=backend, precision=prec, **mats)
                f = jax.jit(lambda y, a=attn: a(y))
                try:
                    t0 = time.perf_counter()
                    f(x).block_until_ready()
                    first = time.perf_counter() - t0
                    t = median_time(
                        lambda: f(x).block_until_ready(), repeats=args.repeats, min_time=0
                    )
                except Exception as err:
                    emit(
                        f"{name:>18} {prec:>7} {n:>8} | failed: {type(err).__name__}: {str(err)[:160]}"
                    )
                    continue
                last[key] = (n, t)
                err = float("nan")
                if ref is not None:
                    err = field_error(f(x), ref)
                tflops = 4 * d * pairs / t / 1e12
                of_cudnn = t_cudnn / t if t_cudnn else float("nan")
                row = {
                    "backend": name,
                    "precision": prec,
                    "n": n,
                    "d": d,
                    "time_s": t,
                    "first_call_s": first,
                    "gpairs_per_s": pairs / t / 1e9,
                    "tflops": tflops,
                    "gemm_tflops": rates[prec] / 1e12,
                    "fraction": tflops * 1e12 / rates[prec],
                    "of_cudnn_bf16": of_cudnn,
                    "rel_err_vs_dense_f64": err,
                }
                rows.append(row)
                emit(
                    f"{name:>18} {prec:>7} {n:>8} | {t:>12.4f} {row['gpairs_per_s']:>8.2f} {tflops:>8.1f} "
                    f"{rates[prec] / 1e12:>12.1f} {row['fraction']:>8.2f} {of_cudnn:>8.2f} | {err:>8.1e}"
                )
    emit(f"# total {time.perf_counter() - t_start:.0f} s")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench_gpu.txt").write_text("\n".join(lines) + "\n")
        (out / "bench_gpu.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
