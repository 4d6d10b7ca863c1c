"""The dense backend: an exact row softmax over all keys, a slab of query rows at a time."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from ..._arrays import pad_axis
from ..._errors import require
from ..._types import Array
from ..problem import Problem, finite
from ._lowering import block_own, block_rows, blocks
from .base import AbstractBackend, projection_bytes, no_fault

SLAB_BYTES = 2**24  # the dense backend's default cap on one (heads x rows x keys) score slab
MASS_COLUMN_MAX_D = (
    8  # up to this value dimension the row sum rides in the value GEMM (see dense_field)
)


class Dense(AbstractBackend):
    """Exact row softmax over all keys, ``row_block`` query rows per slab (memory heads x
    row_block x (N + P)); ``None`` picks [`default_row_block`][meanfield.kernel.backends.default_row_block]: 2^21 / (N + P) rows clipped
    to [128, 1024], then fewer rows if the (heads x rows x keys) slab would pass 16 MiB."""

    row_block: int | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        require(
            self.row_block is None or int(self.row_block) > 0,
            f"row_block must be a positive integer or None, got {self.row_block}",
        )

    def field(self, problem):
        return dense_field(problem, self.row_block)

    def data_fault(self, problem):
        return no_fault()  # any positions, masses and values

    def memory_bytes(self, n, n_keys, d, heads, itemsize):
        rb = self.row_block or default_row_block(heads, n_keys, itemsize)
        return (
            projection_bytes(n, n_keys, d, heads, itemsize)
            + 3 * heads * min(rb, n) * n_keys * itemsize
        )


def default_row_block(heads: int, n_keys: int, itemsize: int = 4) -> int:
    """Query rows per slab of the dense backend: 2^21 / n_keys clipped to [128, 1024], then
    reduced (down to 8) so that the heads x rows x n_keys slab stays within ``SLAB_BYTES``
    (16 MiB, half the L3 of the 2-core CPU it was measured on). Interleaved measurements
    (``benchmarks/bench_kernel.py`` machine, float32): with one head, 2^21 / N is within noise of
    the best block for N = 1k..32k; with 4-8 heads a slab above the L3 (e.g. 4 x 512 x 4096)
    runs 2.1-3x slower than one within it (4 heads, N = 4096, d = 64: 476 vs 1045 Mpair/s).

    Example:
        ```python
        default_row_block(1, 4096)      # 512 rows: 2^21 / 4096
        default_row_block(4, 4096)      # 256 rows: 4 x 256 x 4096 float32 scores = 16 MiB
        ```
    """
    keys = max(int(n_keys), 1)
    b = min(1024, max(128, 2**21 // keys))
    cap = SLAB_BYTES // (max(int(heads), 1) * keys * int(itemsize))
    return int(max(8, min(b, cap)))


def dense_field(p: Problem, row_block: int | None) -> Array:
    """Exact row softmax, ``row_block`` query rows at a time (lax.map over row slabs).

    The masses enter the value products instead of the exponent: with e_ij = e^{a_ij - max_j a_ij}
    (a without log m), the SA field is (e @ m V x) / (e @ m): one exp pass over the
    (rows x keys) slab, then for d <= 8 one GEMM against [m V x, m] (numerator and row sum
    together) and otherwise a GEMM and a GEMV (the d + 1 output columns of the joint GEMM cost
    10-16 % at d = 64, the GEMV 10 % at d = 3; measured interleaved on a 2-core CPU). XLA:CPU
    (jax >= 0.10, YNN fusions) runs the score GEMM, the row max and the exp as one fused kernel
    as long as nothing else sits between them, so the guard against fully forbidden rows
    (`finite`) is applied only for masks that may forbid pairs (without a forbidding
    mask it cost 1.4-1.9x at d = 3).
    """
    n, d_out = p.q.shape[1], p.v.shape[-1]
    nrm = p.normaliser
    mv = p.mass[:, None] * p.v  # the masses enter the value GEMM and the row-sum GEMV
    mv1 = None
    if d_out <= MASS_COLUMN_MAX_D:  # [m_j v_j, m_j]: one GEMM gives the numerator and the row sum
        mv1 = jnp.concatenate(
            [mv, jnp.broadcast_to(p.mass[:, None], mv.shape[:-1] + (1,))], axis=-1
        )

    def rows(q, qs, own):
        s = p.scores(q, qs)
        so = (
            None if own is None else p.own_scores(q, own)[..., None]
        )  # (h, rows, 1), log w_i included
        if nrm.positional:
            # sum_j m_j e^{s_ij} v_j / sum_j m_j e^{b_ij}, both shifted by max_j (b_ij + log m_j)
            b = p.position_logw(qs)
            bmax = jnp.max(b, axis=-1, keepdims=True)
            if own is not None:
                bmax = jnp.maximum(bmax, own.logm[None, :, None])
            bmax = finite(bmax)
            num = jnp.exp(s - bmax) @ mv
            den = jnp.sum(jnp.exp(b - bmax), axis=-1, keepdims=True)
            if own is not None:
                num = num + jnp.exp(so - bmax) * own.v
                den = den + jnp.exp(own.logm[None, :, None] - bmax)
            return nrm.finish(num, None, bmax[..., 0], den[..., 0], bmax[..., 0])
        if nrm.usa:
            num = jnp.exp(s) @ mv
            num = num if own is None else num + jnp.exp(so) * own.v
            return nrm.finish(num, None, jnp.zeros(num.shape[:-1], num.dtype))
        smax = jnp.max(s, axis=-1, keepdims=True)
        if own is not None:
            smax = jnp.maximum(smax, so)
        if (
            p.mask.may_forbid
        ):  # a row may see no key (max = -inf); without it XLA:CPU keeps one fused kernel
            smax = finite(smax)
        e = jnp.exp(s - smax)
        if mv1 is not None:  # small d: numerator and row sum from one GEMM
            out = e @ mv1
            num, den = out[..., :d_out], out[..., d_out:]
        else:
            num, den = e @ mv, e @ p.mass[:, None]
        if own is not None:
            w_own = jnp.exp(so - smax)
            num, den = num + w_own * own.v, den + w_own
        # a fully masked row has num = den = 0 and gets 0; any other row has den >= max_j m_j
        return nrm.finish(num, den[..., 0], smax[..., 0])

    b = row_block
    if b is None:
        b = default_row_block(p.heads, p.k.shape[1], jnp.dtype(p.q.dtype).itemsize)
    if n <= b:
        return rows(p.q, p.qs, p.own)
    nb = math.ceil(n / b)
    q = blocks(pad_axis(p.q, nb * b, 1, 0.0), nb, 1)
    own = None if p.own is None else block_own(p.own, nb, b)
    out = jax.lax.map(lambda a: rows(*a), (q, block_rows(p.qs, nb, b), own))  # (nb, h, b, d)
    out = jnp.moveaxis(out, 0, 1)
    return out.reshape(out.shape[0], nb * b, d_out)[:, :n]
