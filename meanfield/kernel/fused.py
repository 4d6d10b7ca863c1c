r"""A fused attention-field backend written in Pallas (GPU first; CPU through interpret mode).

One kernel program per (head h, query block i) keeps its query tile on chip and streams the key
tiles j = 0, 1, ... with the online normaliser (flash-attention style):

    s_ij = <beta_h q_i, k_j> + log m_j - lambda_h |pos_i - pos_j|     (-inf where the mask forbids)
    m   <- max(m, max_j s_ij),   l <- l e^{m_old - m} + sum_j e^{s_ij - m},
    acc <- acc e^{m_old - m} + sum_j e^{s_ij - m} v_j,

    SA: v_i = acc / l,        USA: v_i = acc e^{m}

so no (N x N) score matrix is ever written to memory. Tiles that the mask forbids entirely (every
key after every query under a causal mask, keys beyond the window) are skipped (``lax.cond`` on
the tile's position range), as are tiles of padding keys (mass 0).

Supported: masks ``Full``, ``Causal`` (also ``strict``), ``Window``, ``ALiBi`` (scalar or per-head
slopes), their compositions with ``&`` and ``PositionNormalized`` of those (under USA a second
online normaliser, of the positional weights, runs beside the first); SA and USA; token masses; heads (Q, K, V projections and the
output mixing W are applied around the kernel, in XLA); any d (d is padded with zeros to a
power of two >= 16, which changes no inner product). float32 only; the score matmul precision is
``Attention(precision=...)``: ``"highest"`` (full float32), ``"tf32"`` (the backend default) or
``"bf16"`` (queries and keys rounded to bfloat16, float32 accumulation).
Not supported (a ``ValueError`` names the alternative, ``Chunked()``): ``CustomBias``, ``ZBias``,
positional encodings (``RoPE``, ``AdditivePE``), prompts, float64.

On a machine without a GPU the kernel runs in Pallas interpret mode (``interpret=None`` picks it
automatically), which is how the tests check it against the dense backend; it is slow there and
meant for checking, not for speed.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from .._arrays import pad_axis
from .._errors import require
from .._types import Array
from .masks import ALiBi, Causal, Compose, Full, PositionNormalized, Window

_PREC = {"highest": jax.lax.Precision.HIGHEST, "tf32": jax.lax.Precision.DEFAULT, "bf16": None}


def mask_params(mask, heads: int):
    """(causal, window, slopes (heads,), normalized) of a mask the fused kernel supports, with
    causal in {0: none, 1: pos_j <= pos_i, 2: strict}; ValueError otherwise."""
    normalized = isinstance(mask, PositionNormalized)
    mask = mask.mask if normalized else mask
    parts = mask.masks if isinstance(mask, Compose) else (mask,)
    causal, window, slopes = 0, math.inf, jnp.zeros((heads,))
    for m in parts:
        if isinstance(m, Full):
            continue
        if isinstance(m, Causal):
            causal = max(causal, 2 if m.strict else 1)
        elif isinstance(m, Window):
            window = min(window, float(m.width))
        elif isinstance(m, ALiBi):
            slopes = slopes + jnp.broadcast_to(jnp.reshape(m.slope, (-1,)), (heads,)).astype(slopes.dtype)
        else:
            raise ValueError(
                f"the Fused backend does not support the mask {type(m).__name__}; use backend=Chunked() "
                "(supported: Full, Causal, Window, ALiBi, their & compositions and PositionNormalized of those)")
    return causal, window, slopes, normalized


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, pl.next_power_of_2(int(n)))


def _kernel(qpos_ref, kpos_ref, logm_ref, slope_ref, q_ref, k_ref, v_ref, *refs, nk, bk, causal, window, usa,
            precision, normalized=False, project=False):
    vmat_ref, o_ref = refs if project else (None, refs[0])
    q = q_ref[0]  # (bq, D)
    qp = qpos_ref[...]  # (bq,)
    slope = slope_ref[0]
    bq, dv = q.shape[0], v_ref.shape[-1]
    neg = jnp.finfo(jnp.float32).min
    q_lo, q_hi = jnp.min(qp), jnp.max(qp)

    def update(carry, sl, kp, lm):
        mx, l, acc, pmx, pl_ = carry
        k, v = k_ref[0, sl, :], v_ref[0, sl, :]
        if precision is None:  # bf16 scores, float32 accumulation
            s = jax.lax.dot_general(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), (((1,), (1,)), ((), ())),
                                    preferred_element_type=jnp.float32)
        else:
            s = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())), precision=precision,
                                    preferred_element_type=jnp.float32)
        dist = jnp.abs(qp[:, None] - kp[None, :])
        b = lm[None, :] - slope * dist  # positional log-weights log m_j + b_ij
        if causal:
            b = jnp.where(kp[None, :] < qp[:, None] if causal == 2 else kp[None, :] <= qp[:, None], b, -jnp.inf)
        if window != math.inf:
            b = jnp.where(dist < window, b, -jnp.inf)
        s = s + b
        if normalized:  # online positional normaliser sum_j m_j e^{b_ij}
            pm_new = jnp.maximum(pmx, jnp.max(b, axis=1))
            pm_safe = jnp.maximum(pm_new, neg)
            pl_ = pl_ * jnp.exp(pmx - pm_safe) + jnp.sum(jnp.exp(b - pm_safe[:, None]), axis=1)
            pmx = pm_new
        m_new = jnp.maximum(mx, jnp.max(s, axis=1))
        m_safe = jnp.maximum(m_new, neg)
        w = jnp.exp(s - m_safe[:, None])
        scale = jnp.exp(mx - m_safe)
        l = l * scale + jnp.sum(w, axis=1)
        acc = acc * scale[:, None] + jax.lax.dot_general(w, v, (((1,), (0,)), ((), ())),
                                                         precision=jax.lax.Precision.HIGHEST,
                                                         preferred_element_type=jnp.float32)
        return m_new, l, acc, pmx, pl_

    def body(j, carry):
        sl = pl.ds(j * bk, bk)
        kp, lm = kpos_ref[sl], logm_ref[sl]
        active = jnp.max(lm) > -jnp.inf
        if causal:
            active = active & ((jnp.min(kp) < q_hi) if causal == 2 else (jnp.min(kp) <= q_hi))
        if window != math.inf:
            gap = jnp.maximum(jnp.maximum(jnp.min(kp) - q_hi, q_lo - jnp.max(kp)), 0.0)
            active = active & (gap < window)
        return jax.lax.cond(active, lambda c: update(c, sl, kp, lm), lambda c: c, carry)

    init = (jnp.full((bq,), -jnp.inf, jnp.float32), jnp.zeros((bq,), jnp.float32), jnp.zeros((bq, dv), jnp.float32),
            jnp.full((bq,), -jnp.inf, jnp.float32), jnp.zeros((bq,), jnp.float32))
    mx, l, acc, pmx, pl_ = jax.lax.fori_loop(0, nk, body, init)
    if usa and normalized:  # acc e^{mx} / (pl e^{pmx}); zero where the row sees no key
        shift = jnp.where((mx > -jnp.inf) & (pmx > -jnp.inf), mx - pmx, 0.0)
        out = acc * (jnp.exp(shift) / jnp.where(pl_ > 0, pl_, 1.0))[:, None]
    elif usa:
        out = acc * jnp.exp(jnp.maximum(mx, neg))[:, None]
    else:
        out = acc / jnp.where(l > 0, l, 1.0)[:, None]
    if project:  # the head's value projection, in-kernel: V_h sum_j w_ij x_j = sum_j w_ij V_h x_j
        out = jax.lax.dot_general(out, vmat_ref[0], (((1,), (1,)), ((), ())), precision=jax.lax.Precision.HIGHEST,
                                  preferred_element_type=jnp.float32)
    o_ref[0] = out.astype(o_ref.dtype)


def fused_field(q, k, v, qpos, kpos, mass, *, causal, window, slopes, usa, precision, block_q, block_k, interpret,
                num_warps=None, num_stages=None, normalized=False, vmat=None):
    """Per-head field (H, N, dv) of queries q (H, N, d) (beta folded in) over keys k (Hk, M, d)
    and values v (Hv, M, dv) (Hk, Hv in {1, H}: a single copy is shared by every head) with
    positions qpos (N,), kpos (M,), key masses (M,), per-head ALiBi slopes (H,), through the
    Pallas kernel (see module docstring). ``vmat`` (Hm, dout, dv), Hm in {1, H}: a value
    projection applied in-kernel to each row's weighted sum (output (H, N, dout))."""
    h, n, d = q.shape
    m, dv = k.shape[1], v.shape[-1]
    bq = min(block_q, _pow2(n, 16))
    bk = min(block_k, _pow2(m, 16))
    np_, mp = -(-n // bq) * bq, -(-m // bk) * bk
    dp, dvp = _pow2(d), _pow2(dv)
    f32 = jnp.float32
    q = pad_axis(pad_axis(q.astype(f32), dp, 2, 0.0), np_, 1, 0.0)
    k = pad_axis(pad_axis(k.astype(f32), dp, 2, 0.0), mp, 1, 0.0)
    v = pad_axis(pad_axis(v.astype(f32), dvp, 2, 0.0), mp, 1, 0.0)
    qpos = pad_axis(qpos.astype(f32), np_, 0)
    kpos = pad_axis(kpos.astype(f32), mp, 0)
    logm = pad_axis(jnp.log(mass.astype(f32)), mp, 0, -jnp.inf)
    shared = lambda a: (lambda hh, i: (0, 0, 0)) if a.shape[0] == 1 else (lambda hh, i: (hh, 0, 0))  # noqa: E731
    in_specs = [
        pl.BlockSpec((bq,), lambda hh, i: (i,)),
        pl.BlockSpec((mp,), lambda hh, i: (0,)),
        pl.BlockSpec((mp,), lambda hh, i: (0,)),
        pl.BlockSpec((1,), lambda hh, i: (hh,)),
        pl.BlockSpec((1, bq, dp), lambda hh, i: (hh, i, 0)),
        pl.BlockSpec((1, mp, dp), shared(k)),
        pl.BlockSpec((1, mp, dvp), shared(v)),
    ]
    args = [qpos, kpos, logm, slopes.astype(f32), q, k, v]
    dout, doutp = dv, dvp
    if vmat is not None:
        dout = vmat.shape[1]
        doutp = _pow2(dout)
        vmat = pad_axis(pad_axis(vmat.astype(f32), dvp, 2, 0.0), doutp, 1, 0.0)
        in_specs.append(pl.BlockSpec((1, doutp, dvp), shared(vmat)))
        args.append(vmat)
    kernel = functools.partial(_kernel, nk=mp // bk, bk=bk, causal=int(causal), window=window, usa=usa,
                               precision=_PREC[precision], normalized=bool(normalized), project=vmat is not None)
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((h, np_, doutp), f32),
        grid=(h, np_ // bq),
        in_specs=in_specs,
        out_specs=pl.BlockSpec((1, bq, doutp), lambda hh, i: (hh, i, 0)),
        interpret=interpret,
        compiler_params=None if interpret else plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        name="meanfield_fused_attention",
    )(*args)
    return out[:, :n, :dout]


def default_interpret() -> bool:
    """Interpret mode unless the default JAX backend is a GPU."""
    return jax.default_backend() != "gpu"


def check_supported(attn, p) -> None:
    """Trace-time refusal of what the fused kernel does not do, naming the fallback."""
    require(attn.pe is None, "the Fused backend does not support positional encodings (RoPE, AdditivePE); use backend=Chunked()")
    require(p.n_prompt == 0 and p.own is None, "the Fused backend does not support prompts; use backend=Chunked()")
    require(p.q.dtype == jnp.float32, f"the Fused backend computes in float32, got {p.q.dtype}; use backend=Chunked() or Dense() for float64")


def field(spec, attn, p) -> Array:
    """The per-head field of the prepared rows ``p`` for the :class:`~meanfield.kernel.Fused` settings ``spec``."""
    check_supported(attn, p)
    causal, window, slopes, normalized = mask_params(attn.mask, attn.heads)
    h = attn.heads
    q = p.beta * p.q
    vmat = None
    if p.raw is not None and (attn.K is not None or attn.V is not None):
        # heads in-kernel: keys and values are the raw tokens, one copy for every head;
        # <Q_h x_i, K_h x_j> = <K_h^T Q_h x_i, x_j> folds K into the queries, V_h is applied in-kernel
        # to each row's weighted sum of raw tokens
        if attn.K is not None:
            q = jnp.matmul(q, attn.K.astype(q.dtype), precision=attn._proj_precision)  # q_d <- sum_e q_e K_ed
        k = v = p.raw[None]
        vmat = None if attn.V is None else attn.V.astype(q.dtype)
    else:
        k, v = p.k, p.v
    q = jnp.broadcast_to(q, (h,) + q.shape[1:])
    interpret = default_interpret() if spec.interpret is None else spec.interpret
    return fused_field(q, k, v, p.qs.pos, p.ks.pos, p.mass, causal=causal, window=window, slopes=slopes,
                       usa=attn.form == "USA", precision=attn.precision, block_q=int(spec.block_q),
                       block_k=int(spec.block_k), interpret=interpret, num_warps=spec.num_warps,
                       num_stages=spec.num_stages, normalized=normalized and attn.form == "USA", vmat=vmat)
