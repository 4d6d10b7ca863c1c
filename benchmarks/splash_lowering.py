"""Lowering the Splash field for a TPU from this host (no device): the trace-and-lower time and the
kernel's scalar-prefetch (SMEM) bytes at N = 2^16, 2^18, 2^20, against jax's splash kernel, whose
mask preprocessing (``process_mask``) builds three (N/b)^2 arrays in a per-block loop.

Causal + ALiBi, SA, one head, d = 64, precision "bf16", the default blocks (512).

Run:  python benchmarks/splash_lowering.py [--ns 16,18,20] [--jax-ns 12,14]
"""

from __future__ import annotations

import argparse
import re
import time

import jax
import jax.numpy as jnp

import meanfield as mf
from meanfield.kernel import Splash
from meanfield.kernel.backends._tpu_kernel import mosaic_modules, smem_bytes


def ours(n: int, d: int = 64):
    attn = mf.Attention(
        jnp.float32(1.0),
        mask=mf.Causal() & mf.ALiBi(1.0 / n),
        precision="bf16",
        backend=Splash(interpret=False),
    )
    t0 = time.perf_counter()
    text = (
        jax.jit(lambda x: attn(x))
        .trace(jax.ShapeDtypeStruct((n, d), jnp.float32))
        .lower(lowering_platforms=("tpu",))
        .as_text()
    )
    seconds = time.perf_counter() - t0
    kernel = next(
        line
        for line in mosaic_modules(text)[0].splitlines()
        if "func.func @meanfield_splash_fwd" in line
    )  # its signature: the scalar-prefetch operands in SMEM
    smem = sum(
        int(n_) * {"i32": 4, "f32": 4}[t]
        for n_, t in re.findall(r"memref<(\d+)x(\w+), #tpu.memory_space<smem>>", kernel)
    )
    # the dummy key of a strict mask adds one key; here m = n
    assert smem == smem_bytes(n, n, 512, 512, "causal"), (
        smem,
        smem_bytes(n, n, 512, 512, "causal"),
    )
    return seconds, smem


def jax_splash(n: int):
    from jax.experimental.pallas.ops.tpu import splash_attention as sa  # noqa: PLC0415

    t0 = time.perf_counter()
    kernel = sa.make_splash_mqa(
        sa.MultiHeadMask([sa.CausalMask((n, n))]),
        block_sizes=sa.BlockSizes(block_q=512, block_kv=512, block_kv_compute=512),
        head_shards=1,
        q_seq_shards=1,
    )
    seconds = time.perf_counter() - t0
    info = kernel.fwd_mask_info
    smem = sum(
        int(a.nbytes) for a in (info.data_next, info.mask_next, info.block_mask) if a is not None
    )
    return seconds, smem


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--ns", default="16,18,20")
    ap.add_argument("--jax-ns", default="12,14")
    args = ap.parse_args(argv)
    print(f"jax {jax.__version__}, lowering for TPU on {jax.devices()[0].platform}")
    print(f"{'N':>8} | {'ours: lower s':>13} | {'SMEM bytes':>10}")
    for e in (int(v) for v in args.ns.split(",") if v):
        s, b = ours(2**e)
        print(f"{'2^' + str(e):>8} | {s:>13.2f} | {b:>10}", flush=True)
    print(f"{'N':>8} | {'jax process_mask s':>18} | {'SMEM bytes':>10}   (jax's splash kernel)")
    for e in (int(v) for v in args.jax_ns.split(",") if v):
        s, b = jax_splash(2**e)
        print(f"{'2^' + str(e):>8} | {s:>18.2f} | {b:>10}", flush=True)


if __name__ == "__main__":
    main()
