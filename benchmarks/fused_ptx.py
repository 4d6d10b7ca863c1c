"""Launch settings from compiled code: the Fused kernel compiled for sm_90a (Hopper) on a machine
without a GPU.

The kernel's Triton module is taken from the lowering for CUDA
(``jax.jit(f).trace(x).lower(lowering_platforms=("cuda",))``, compute capability 9.0), compiled by
the ``triton`` package (pinned in the ``[bench]`` extra) to PTX and a cubin, and the PTX assembled
by the ``ptxas`` triton bundles (``ptxas -v``). Per precision and tile setting
(block_q:block_k:warps:stages) it prints:

* the MMA kind: ``wgmma`` (Hopper's asynchronous warpgroup MMA) or ``mma`` (``mma.sync``, the
  Ampere fallback), and the MMA instructions per key tile (the kernel has three key loops with
  the same body, so the count over the PTX divided by 3);
* registers per thread, spill stores and loads (bytes), shared memory (bytes);
* ``cp.async`` copies (the pipelined loads).

Causal SA with ALiBi, d = 64, N = 4096 (the compiled code does not depend on N).

Run:  python benchmarks/fused_ptx.py [--tiles 64:64:4:3,128:64:8:3,...]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

import meanfield as mf
from meanfield.kernel import Fused
from meanfield.kernel.backends.fused import PRECISIONS

DEFAULT = "64:64:4:3"
"""The defaults: Fused(block_q=64, block_k=64) with Pallas' launch settings (4 warps, 3 stages)."""
H100_SMEM = 227 * 1024
"""The largest dynamic shared memory of one block on sm_90."""
CANDIDATES = ("64:64:4:3", "128:64:8:3", "128:64:8:2", "128:128:8:2", "64:128:4:3")


def triton_module(precision: str, bq: int, bk: int, warps: int, stages: int, d: int = 64) -> str:
    """The Fused kernel's Triton module (MLIR text, no debug locations) as Pallas lowers it for
    compute capability 9.0."""
    from jax._src.pallas.triton import pallas_call_registration as registration  # noqa: PLC0415

    captured = []
    original = registration.lowering.lower_jaxpr_to_triton_module

    def capture(*args, **kwargs):
        result = original(*args, **kwargs)
        captured.append(result.module.operation.get_asm(enable_debug_info=False))
        return result

    attn = mf.Attention(
        1.0,
        mask=mf.Causal() & mf.ALiBi(0.01),
        precision=precision,
        backend=Fused(bq, bk, interpret=False, num_warps=warps, num_stages=stages),
    )
    registration.lowering.lower_jaxpr_to_triton_module = capture
    try:
        jax.jit(lambda y: attn(y)).trace(jax.ShapeDtypeStruct((4096, d), jnp.float32)).lower(
            lowering_platforms=("cuda",)
        )
    finally:
        registration.lowering.lower_jaxpr_to_triton_module = original
    return captured[0]


def compile_sm90(precision: str, bq: int, bk: int, warps: int, stages: int) -> dict:
    """Compile for sm_90a; the numbers `main` prints, as a dict."""
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9's default, said aloud
    import triton  # noqa: PLC0415
    from triton.backends.compiler import GPUTarget  # noqa: PLC0415
    from triton.backends.nvidia.compiler import get_ptxas  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "fused.ttir"
        src.write_text(triton_module(precision, bq, bk, warps, stages))
        kernel = triton.compile(
            str(src),
            target=GPUTarget("cuda", 90, 32),
            options={"num_warps": warps, "num_stages": stages},
        )
        ptx = kernel.asm["ptx"]
        (Path(tmp) / "fused.ptx").write_text(ptx)
        report = subprocess.run(
            [
                get_ptxas(90).path,
                "-v",
                "--gpu-name",
                "sm_90a",
                str(Path(tmp) / "fused.ptx"),
                "-o",
                str(Path(tmp) / "fused.cubin"),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stderr
    wgmma, mma = len(re.findall(r"\bwgmma\.mma_async", ptx)), len(re.findall(r"\bmma\.sync", ptx))
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    return {
        "mma": "wgmma" if wgmma and not mma else ("mma" if mma and not wgmma else "mixed"),
        "mma_per_tile": (wgmma + mma) / 3,
        "registers": int(re.search(r"Used (\d+) registers", report).group(1)),
        "spill_stores": int(spills.group(1)),
        "spill_loads": int(spills.group(2)),
        "shared": int(kernel.metadata.shared),
        "cp_async": len(re.findall(r"\bcp\.async\.(?:ca|cg)", ptx)),
        "warps": warps,
        "stages": stages,
    }


def parse_tile(text: str) -> tuple[int, int, int, int]:
    bq, bk, warps, stages = (int(v) for v in text.split(":"))
    return bq, bk, warps, stages


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiles", default=",".join(CANDIDATES))
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    args = ap.parse_args(argv)
    import triton  # noqa: PLC0415

    print(
        f"jax {jax.__version__}, triton {triton.__version__}: the Fused kernel for sm_90a "
        f"(causal ALiBi, d = 64); defaults {DEFAULT} (block_q:block_k:warps:stages)"
    )
    head = (
        f"{'precision':>9} {'tiles':>11} | {'MMA':>5} {'per tile':>8} | {'regs':>4} "
        f"{'spill st/ld B':>13} | {'smem B':>7} | {'cp.async':>8}"
    )
    print(head)
    print("-" * len(head))
    fails = {}
    for precision in args.precisions.split(","):
        for tile in args.tiles.split(","):
            r = compile_sm90(precision, *parse_tile(tile))
            if r["spill_stores"] or r["spill_loads"] or r["mma"] != "wgmma":
                fails.setdefault(tile, []).append(f"{precision} spills or falls back")
            if r["shared"] > H100_SMEM:
                fails.setdefault(tile, []).append(
                    f"{precision} needs {r['shared']} B of shared memory"
                )
            mark = " (default)" if tile == DEFAULT else ""
            print(
                f"{precision:>9} {tile:>11} | {r['mma']:>5} {r['mma_per_tile']:>8.1f} | "
                f"{r['registers']:>4} {r['spill_stores']:>6}/{r['spill_loads']:<6} | "
                f"{r['shared']:>7} | {r['cp_async']:>8}{mark}",
                flush=True,
            )


if __name__ == "__main__":
    main()
