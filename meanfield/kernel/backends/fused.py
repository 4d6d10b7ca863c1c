r"""A fused attention-field backend written in Pallas (GPU first; CPU through interpret mode).

One kernel program per (head h, query block i) keeps its query tile on chip and streams key
tiles with the online normaliser (flash-attention style), in base 2 (scores, log-masses and
slopes scaled by log2 e, ``exp2``):

    s_ij = log2(e) (⟨beta_h q_i, k_j⟩ + log m_j - lambda_h |pos_i - pos_j|)   (-inf where the mask forbids)
    m   <- max(m, max_j s_ij),   l <- l 2^{m_old - m} + sum_j 2^{s_ij - m},
    acc <- acc 2^{m_old - m} + sum_j 2^{s_ij - m} v_j,

    SA: v_i = acc / l,        USA: v_i = acc 2^{m}

so no (N x N) score matrix is ever written to memory.

Which key tiles ([`tile_bounds`][meanfield.kernel.backends.fused.tile_bounds], computed in XLA before the kernel): for query block i,
tiles [lo, hi) hold every pair the mask may allow (from the blocks' and tiles' position ranges;
padding tiles are out), and [a, b) inside it only tiles whose every pair is allowed. The kernel
runs three ``fori_loop``s, [lo, a) and [b, hi) with the mask arithmetic and [a, b) without it, and
no control flow around any load, so Triton can pipeline the loads. Under a causal mask in index
order [lo, hi) is the lower triangle, and the query blocks run longest rows first. ALiBi comes from
the exact difference pos_i - pos_j (positions arrive centred, see `centred_positions` (`backends._lowering`)); the
log-masses are the only per-key vector.

Precision (``Attention(precision=...)``), for both products (scores and P V), on tensor cores:
``"highest"``: the scores by 3xTF32 (x = hi + lo with hi, lo TF32 values, three TF32 products,
about 21 bits of each operand: beta amplifies the scores' error), P V by three bf16 products of
hi/lo splits (the weights lie in [0, 1]); the once-per-row V projection uses six products of
three-part bf16 splits. Worst relative field error against float64 over d = 16, 64, beta = 1, 4,
SA/USA, masses, heads, windows, ALiBi up to lambda N = 100 and PositionNormalized: 6.2e-6
(``benchmarks/highest_precision.py``), at any lambda N (positions enter as exact differences).
``"tf32"``: TF32; ``"bf16"``: one bf16 product (~3e-3).
``benchmarks/fused_ir.py`` prints the lowered Triton IR's dots, loads and exponentials.

Supported: masks ``Full``, ``Causal`` (also ``strict``), ``Window``, ``ALiBi`` (scalar or per-head
slopes), their compositions with ``&`` and ``PositionNormalized`` of those (under USA a second
online normaliser, of the positional weights, runs beside the first); SA and USA; token masses;
heads (K folded into the queries, V applied in-kernel to each row's weighted sum of raw tokens,
one key/value copy for all heads); any d (padded with zeros to a power of two >= 16). float32
only. Not supported (a ``ValueError`` names the alternative, ``Chunked()``): ``CustomBias``,
``ZBias``, positional encodings (``RoPE``, ``AdditivePE``), prompts, float64. Derivatives go
through the ``Chunked()`` path (the kernel has no derivative rule).

On a machine without a GPU the kernel runs in Pallas interpret mode (``interpret=None`` picks it
automatically), where the bf16 products are exact emulations of tensor-core products; it is slow
there and meant for checking, not for speed.
"""

from __future__ import annotations

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from ..._arrays import pad_axis
from ..._errors import require
from ..._types import Array
from ..masks import Lowered
from ..problem import Normaliser, Problem
from ._lowering import (
    active_tile_range,
    centred_positions,
    check_supported,
    split3_bf16,
    split_bf16,
    split_tf32,
    with_reference_derivative,
)
from .base import AbstractBackend, projection_bytes, no_fault
from .chunked import reference_field

LOG2E = 1.4426950408889634
"""log2(e): the kernel works in base 2 (scores, log-masses and slopes scaled by it, exp2)."""
PRECISIONS = ("highest", "tf32", "bf16")


class Fused(AbstractBackend):
    """A fused Pallas kernel (flash-style key tiles with the online normaliser, masks, masses,
    USA and ALiBi slopes in-kernel, forbidden tiles skipped): see [`meanfield.kernel.backends.fused`][meanfield.kernel.backends.fused]
    for what it supports. ``block_q``/``block_k``: tile sizes (powers of two); ``interpret``:
    Pallas interpret mode (``None``: on unless the default backend is a GPU); ``num_warps``,
    ``num_stages``: Triton launch settings on a GPU (``None``: Pallas' defaults)."""

    block_q: int = eqx.field(default=64, static=True)
    block_k: int = eqx.field(default=64, static=True)
    interpret: bool | None = eqx.field(default=None, static=True)
    num_warps: int | None = eqx.field(default=None, static=True)
    num_stages: int | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        for name in ("block_q", "block_k"):
            b = int(getattr(self, name))
            require(b >= 16 and b & (b - 1) == 0, f"{name} must be a power of two >= 16, got {b}")

    def field(self, problem):
        """The per-head field through the kernel; derivatives (jvp, and vjp through it) are those
        of the ``Chunked()`` path, which computes the same field (the kernel has no derivative rule)."""
        check_supported(problem, "Fused")  # refuse before tracing
        return with_reference_derivative(
            problem, forward=functools.partial(_forward, self), reference=reference_field
        )

    def data_fault(self, problem):
        return no_fault()  # any positions, masses and values

    def memory_bytes(self, n, n_keys, d, heads, itemsize):
        return projection_bytes(n, n_keys, d, heads, itemsize)  # the tiles live on chip


def default_interpret() -> bool:
    """Interpret mode unless the default JAX backend is a GPU."""
    return jax.default_backend() != "gpu"


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, pl.next_power_of_2(int(n)))


def _dot(a, b, mode, contract):
    """a . b contracting ``contract`` on tensor cores, float32 accumulation. ``a``, ``b``: a pair
    (hi, lo) of bf16 arrays for "highest" (three products: hi hi + hi lo + lo hi, the lo lo term is
    below float32 rounding), one bf16 array for "bf16", one float32 array for "tf32"; a triple
    (hi, mid, lo) for "highest3" (six products, float32 accuracy; for the once-per-row projection)."""
    dims = (contract, ((), ()))
    if mode == "3xtf32":  # TF32 values: each product exact in float32, on TF32 tensor cores
        (ah, al), (bh, bl) = a, b
        f = lambda x, y: jax.lax.dot_general(  # noqa: E731
            x, y, dims, precision=jax.lax.Precision.DEFAULT, preferred_element_type=jnp.float32
        )
        return f(ah, bh) + (f(ah, bl) + f(al, bh))
    if mode == "highest3":
        (ah, am, al), (bh, bm, bl) = a, b
        f = lambda x, y: jax.lax.dot_general(x, y, dims, preferred_element_type=jnp.float32)  # noqa: E731
        return f(ah, bh) + (f(ah, bm) + f(am, bh)) + (f(ah, bl) + f(am, bm) + f(al, bh))
    if mode == "highest":
        (ah, al), (bh, bl) = a, b
        f = lambda x, y: jax.lax.dot_general(x, y, dims, preferred_element_type=jnp.float32)  # noqa: E731
        return f(ah, bh) + (f(ah, bl) + f(al, bh))
    prec = None if mode == "bf16" else jax.lax.Precision.DEFAULT
    return jax.lax.dot_general(a, b, dims, precision=prec, preferred_element_type=jnp.float32)


def _operand(x, mode):
    """The form ``_dot`` takes for a float32 array ``x``."""
    if mode == "highest3":
        return split3_bf16(x)
    if mode == "highest":
        return split_bf16(x)
    return x.astype(jnp.bfloat16) if mode == "bf16" else x


def _kernel(
    bounds_ref,
    qpos_ref,
    kpos_ref,
    logm_ref,
    slope_ref,
    *refs,
    bk,
    causal,
    window,
    usa,
    mode,
    normalized,
    project,
    has_alibi,
):
    n_qk, n_v = (2, 2) if mode == "highest" else (1, 1)
    smode = (
        "3xtf32" if mode == "highest" else mode
    )  # the scores: 3xTF32 (beta amplifies their error)
    q_refs, refs = refs[:n_qk], refs[n_qk:]
    k_refs, refs = refs[:n_qk], refs[n_qk:]
    v_refs, refs = refs[:n_v], refs[n_v:]
    vmat_ref, o_ref = refs if project else (None, refs[0])
    q = tuple(r[0] for r in q_refs) if n_qk > 1 else q_refs[0][0]  # (bq, D), scores in log2 units
    qp = qpos_ref[...]  # (bq,) int32 or float32, centred
    slope = slope_ref[0]  # log2 units
    bq, dv = qp.shape[0], v_refs[0].shape[-1]
    neg = jnp.finfo(jnp.float32).min
    lo, a, b, hi = bounds_ref[0, 0], bounds_ref[0, 1], bounds_ref[0, 2], bounds_ref[0, 3]

    def tile(j, carry, masked):
        mx, l, acc, pmx, pl_ = carry
        sl = pl.ds(pl.multiple_of(j * bk, bk), bk)
        k = tuple(r[0, sl, :] for r in k_refs) if n_qk > 1 else k_refs[0][0, sl, :]
        v = tuple(r[0, sl, :] for r in v_refs) if n_v > 1 else v_refs[0][0, sl, :]
        s = _dot(q, k, smode, ((1,), (1,)))
        bias = logm_ref[sl][None, :]  # log2 m_j
        if has_alibi or masked:
            diff = qp[:, None] - kpos_ref[sl][None, :]  # exact: int32, or float32 centred positions
        if has_alibi:
            bias = bias - slope * jnp.abs(diff).astype(jnp.float32)
        if masked:
            ok = jnp.full(diff.shape, True)
            if causal:
                ok = diff > 0 if causal == 2 else diff >= 0
            if window != math.inf:
                ok = ok & (jnp.abs(diff).astype(jnp.float32) < window)
            bias = jnp.where(ok, bias, -jnp.inf)
        s = s + bias
        if normalized:  # online positional normaliser sum_j m_j 2^{b_ij}
            pm_new = jnp.maximum(pmx, jnp.max(bias, axis=1))
            pm_safe = jnp.maximum(pm_new, neg)
            pl_ = pl_ * jnp.exp2(pmx - pm_safe) + jnp.sum(jnp.exp2(bias - pm_safe[:, None]), axis=1)
            pmx = pm_new
        m_new = jnp.maximum(mx, jnp.max(s, axis=1))
        m_safe = jnp.maximum(m_new, neg)
        w = jnp.exp2(s - m_safe[:, None])
        scale = jnp.exp2(mx - m_safe)
        l = l * scale + jnp.sum(w, axis=1)
        acc = acc * scale[:, None] + _dot(_operand(w, mode), v, mode, ((1,), (0,)))
        return m_new, l, acc, pmx, pl_

    init = (
        jnp.full((bq,), -jnp.inf, jnp.float32),
        jnp.zeros((bq,), jnp.float32),
        jnp.zeros((bq, dv), jnp.float32),
        jnp.full((bq,), -jnp.inf, jnp.float32),
        jnp.zeros((bq,), jnp.float32),
    )
    # key tiles [lo, a) and [b, hi) may hold forbidden pairs (mask arithmetic); [a, b) are wholly
    # allowed (no mask arithmetic); no control flow around the loads inside any of the loops
    carry = jax.lax.fori_loop(lo, a, lambda j, c: tile(j, c, True), init)
    carry = jax.lax.fori_loop(a, b, lambda j, c: tile(j, c, False), carry)
    mx, l, acc, pmx, pl_ = jax.lax.fori_loop(b, hi, lambda j, c: tile(j, c, True), carry)
    out = Normaliser(usa=usa, positional=normalized).finish(
        acc, l, mx, pl_, pmx, exp=jnp.exp2
    )  # base 2
    if project:  # the head's value projection, in-kernel: V_h sum_j w_ij x_j = sum_j w_ij V_h x_j
        pmode = "highest3" if mode == "highest" else mode
        out = _dot(_operand(out, pmode), _operand(vmat_ref[0], pmode), pmode, ((1,), (1,)))
    o_ref[0] = out.astype(o_ref.dtype)


def tile_bounds(qpos, kpos, logm, bq, bk, causal, window):
    """(nq, 4) int32 (lo, a, b, hi) per query block: key tiles [lo, hi) hold every pair the mask
    may allow (from the blocks' and tiles' position ranges; tiles of padding are out), and
    [a, b) within it holds only tiles whose every pair is allowed, which need no mask arithmetic.
    A superset: the tiles of [lo, a) and [b, hi) that turn out wholly forbidden are computed with
    every score masked. Under a causal mask in index order, [lo, hi) is the causal lower triangle
    and [a, b) all of it but the diagonal tile."""
    nq, nk = qpos.shape[0] // bq, kpos.shape[0] // bk
    qb, kt = qpos.reshape(nq, bq), kpos.reshape(nk, bk)
    live = (logm.reshape(nk, bk).max(1) > -jnp.inf)[None, :]
    active, full = Lowered(causal, window).tiles(
        qb.min(1)[:, None], qb.max(1)[:, None], kt.min(1)[None, :], kt.max(1)[None, :]
    )
    active = jnp.broadcast_to(active & live, (nq, nk))
    full = jnp.broadcast_to(full, (nq, nk))
    idx = jnp.arange(nk)[None, :]
    lo, hi = active_tile_range(active)
    inside = (idx >= lo[:, None]) & (idx < hi[:, None])
    f = full & inside
    a = jnp.where(f.any(1), jnp.argmax(f, 1), hi)
    after = ~full & inside & (idx >= a[:, None])
    b = jnp.where(after.any(1), jnp.argmax(after, 1), hi)
    return jnp.stack([lo, a, b, hi], axis=1).astype(jnp.int32)


def fused_field(
    q,
    k,
    v,
    qpos,
    kpos,
    mass,
    *,
    causal,
    window,
    slopes,
    usa,
    precision,
    block_q,
    block_k,
    interpret,
    num_warps=None,
    num_stages=None,
    normalized=False,
    vmat=None,
    has_alibi=True,
):
    """Per-head field (H, N, dv) of queries q (H, N, d) (beta folded in) over keys k (Hk, M, d)
    and values v (Hv, M, dv) (Hk, Hv in {1, H}: a single copy is shared by every head) with
    positions qpos (N,), kpos (M,), key masses (M,), per-head ALiBi slopes (H,), through the
    Pallas kernel (see module docstring). ``vmat`` (Hm, dout, dv), Hm in {1, H}: a value
    projection applied in-kernel to each row's weighted sum (output (H, N, dout))."""
    require(precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {precision!r}")
    h, n, d = q.shape
    m, dv = k.shape[1], v.shape[-1]
    bq = min(block_q, _pow2(n, 16))
    bk = min(block_k, _pow2(m, 16))
    np_, mp = -(-n // bq) * bq, -(-m // bk) * bk
    nq = np_ // bq
    dp, dvp = _pow2(d), _pow2(dv)
    f32 = jnp.float32
    q = pad_axis(pad_axis(q.astype(f32) * LOG2E, dp, 2, 0.0), np_, 1, 0.0)
    k = pad_axis(pad_axis(k.astype(f32), dp, 2, 0.0), mp, 1, 0.0)
    v = pad_axis(pad_axis(v.astype(f32), dvp, 2, 0.0), mp, 1, 0.0)
    qpos, kpos = centred_positions(qpos, kpos)
    qpos, kpos = (
        pad_axis(qpos, np_, 0),
        pad_axis(kpos, mp, 0),
    )  # edge padding keeps the tile ranges tight
    logm = pad_axis(jnp.log(mass.astype(f32)) * LOG2E, mp, 0, -jnp.inf)
    bounds = tile_bounds(qpos, kpos, logm, bq, bk, int(causal), window)
    # longest rows first under a causal mask (the grid runs in ascending program order)
    row = (lambda i: nq - 1 - i) if causal else (lambda i: i)
    shared = lambda a: (lambda hh, i: (0, 0, 0)) if a.shape[0] == 1 else (lambda hh, i: (hh, 0, 0))  # noqa: E731
    ops = lambda x, split: (
        split(x)
        if precision == "highest"
        else ((x.astype(jnp.bfloat16),) if precision == "bf16" else (x,))
    )  # noqa: E731
    # "highest": scores from TF32 hi/lo splits, three TF32 products (~21 bits: beta amplifies the
    # scores' error), P V from bf16 hi/lo splits (the weights lie in [0, 1])
    qs, ks, vs = ops(q, split_tf32), ops(k, split_tf32), ops(v, split_bf16)
    in_specs = [
        pl.BlockSpec((1, 4), lambda hh, i: (row(i), 0)),
        pl.BlockSpec((bq,), lambda hh, i: (row(i),)),
        pl.BlockSpec((mp,), lambda hh, i: (0,)),
        pl.BlockSpec((mp,), lambda hh, i: (0,)),
        pl.BlockSpec((1,), lambda hh, i: (hh,)),
        *[pl.BlockSpec((1, bq, dp), lambda hh, i: (hh, row(i), 0)) for _ in qs],
        *[pl.BlockSpec((1, mp, dp), shared(k)) for _ in ks],
        *[pl.BlockSpec((1, mp, dvp), shared(v)) for _ in vs],
    ]
    args = [bounds, qpos, kpos, logm, slopes.astype(f32) * LOG2E, *qs, *ks, *vs]
    dout, doutp = dv, dvp
    if vmat is not None:
        dout = vmat.shape[1]
        doutp = _pow2(dout)
        vmat = pad_axis(pad_axis(vmat.astype(f32), dvp, 2, 0.0), doutp, 1, 0.0)
        in_specs.append(pl.BlockSpec((1, doutp, dvp), shared(vmat)))
        args.append(vmat)
    kernel = functools.partial(
        _kernel,
        bk=bk,
        causal=int(causal),
        window=window,
        usa=usa,
        mode=precision,
        normalized=bool(normalized),
        project=vmat is not None,
        has_alibi=bool(has_alibi),
    )
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((h, np_, doutp), f32),
        grid=(h, nq),
        in_specs=in_specs,
        out_specs=pl.BlockSpec((1, bq, doutp), lambda hh, i: (hh, row(i), 0)),
        interpret=interpret,
        compiler_params=None
        if interpret
        else plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        name="meanfield_fused_attention",
    )(*args)
    return out[:, :n, :dout]


def _forward(spec: Fused, p: Problem) -> Array:
    lowered = check_supported(p, "Fused")
    q, k, v, vmat = p.folded()  # V_h is applied in-kernel
    interpret = default_interpret() if spec.interpret is None else spec.interpret
    slopes = jnp.zeros((p.heads,), jnp.float32) if lowered.slopes is None else lowered.slopes
    return fused_field(
        q,
        k,
        v,
        p.qs.pos,
        p.ks.pos,
        p.mass,
        causal=lowered.causal,
        window=lowered.window,
        slopes=slopes,
        usa=p.normaliser.usa,
        precision=p.precision,
        block_q=int(spec.block_q),
        block_k=int(spec.block_k),
        interpret=interpret,
        num_warps=spec.num_warps,
        num_stages=spec.num_stages,
        normalized=p.normaliser.positional,
        vmat=vmat,
        has_alibi=lowered.slopes is not None,
    )
