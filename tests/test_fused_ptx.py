"""The Fused kernel at its default launch settings, compiled for sm_90a (Hopper) on this CPU host
with the pinned ``triton`` (benchmarks/fused_ptx.py): every product a warpgroup MMA (no mma.sync
fallback), no register spill, shared memory within an H100's 227 KiB per block."""

import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import fused_ptx  # noqa: E402

H100_SMEM = fused_ptx.H100_SMEM  # the largest dynamic shared memory per block on sm_90


@pytest.mark.parametrize("precision", ["highest", "tf32", "bf16"])
def test_default_tiles_compile_to_wgmma_without_spills(precision):
    r = fused_ptx.compile_sm90(precision, *fused_ptx.parse_tile(fused_ptx.DEFAULT))
    assert r["mma"] == "wgmma", r
    assert r["spill_stores"] == 0 and r["spill_loads"] == 0, r
    assert 0 < r["shared"] <= H100_SMEM, r
    # scores and P V: 3 + 3 products (highest), 1 + 1 otherwise; wgmma instructions per key tile
    # (K = 64: tf32 k-steps of 8, bf16 of 16; N = 64 in one instruction)
    assert r["mma_per_tile"] == {"highest": 36, "tf32": 16, "bf16": 8}[precision], r
