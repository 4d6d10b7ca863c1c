"""The driver the index-mask kernels share (Splash on a TPU, the cuDNN route on a GPU): sort the
tokens by position, run one directional kernel call (or two, for two-sided ALiBi, merged by their
logsumexps), apply the USA and positional normalisers, unsort, project the values.

A directional call computes, in sorted order, the softmax field over the keys at or before each
query (``reverse=False``), or after it (``reverse=True``: the sequence reversed, strict, with -p_j),
and returns (out (H, N, d), the true logsumexp of the scores (H, N)).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ..._errors import require
from ..._types import Array
from ..masks import Lowered
from ..problem import Problem
from ._lowering import DUMMY_LOGM


def with_dummy(xk, logm, pos, sign):
    """Keys with the dummy key of a strict causal mask in front: value 0, log-mass ``DUMMY_LOGM``,
    at the smallest directional position (its score stays far below every real one; the first row,
    which sees only it, gets a zero field with a finite logsumexp)."""
    d = xk.shape[1]
    xk = jnp.concatenate([jnp.zeros((1, d), xk.dtype), xk])
    logm = jnp.concatenate([jnp.full((1,), DUMMY_LOGM, logm.dtype), logm])
    pos = jnp.concatenate([jnp.min(sign * pos, keepdims=True) * sign, pos])
    return xk, logm, pos


def index_mask(causal, window):
    """(kind, (left, right) or None) of the index mask of a directional call on sorted tokens."""
    if causal:
        return ("local", (int(window) - 1, 0)) if window != math.inf else ("causal", None)
    if window != math.inf:
        return "local", (int(window) - 1, int(window) - 1)
    return "full", None


def _decayed_logsumexp(logm, gaps):
    """L_i = log sum_{j <= i} m_j e^{-(g_{j+1} + ... + g_i)} for decay gaps g_i >= 0 (g_0 unused),
    by an associative scan of the recurrence L_i = logaddexp(log m_i, L_{i-1} - g_i): the pair
    (a, b) stands for L -> logaddexp(b, L + a), and two compose as (a1 + a2, logaddexp(b1 + a2,
    b2)). No term carries a position itself (as log m_j + lambda p_j would, with float32 rounding
    2^-24 lambda N / 2): only decays, whose rounding matters only where the weight is not
    negligible."""

    def combine(first, second):
        a1, b1 = first
        a2, b2 = second
        return a1 + a2, jnp.logaddexp(b1 + a2, b2)

    return jax.lax.associative_scan(combine, (-gaps, logm))[1]


def log_normaliser(lam, logm, pos, causal, strict):
    """log Z_i = log sum_{j visible} m_j e^{-lambda_h |p_i - p_j|} per head (H, N), in sorted order
    (the positional normaliser of PositionNormalized, and the cuDNN route's row shift), by
    decayed cumulative logsumexps (`_decayed_logsumexp`)."""
    gap = jnp.concatenate([jnp.zeros((1,), pos.dtype), jnp.diff(pos)])  # >= 0: sorted
    neg_inf = jnp.full((1,), -jnp.inf, logm.dtype)

    def one(lh):
        incl = _decayed_logsumexp(logm, lh * gap)  # j <= i
        fwd = jnp.concatenate([neg_inf, incl[:-1] - lh * gap[1:]]) if strict else incl
        if causal:
            return fwd
        rgap = jnp.concatenate([gap[:1] * 0, gap[::-1][:-1]])  # the gaps of the reversed sequence
        rincl = _decayed_logsumexp(logm[::-1], lh * rgap)[::-1]  # j >= i
        after = jnp.concatenate([rincl[1:] - lh * gap[1:], neg_inf])  # j > i
        return jnp.logaddexp(fwd, after)

    return jax.vmap(one)(lam)


def sorted_field(p: Problem, lowered: Lowered, name: str, directional) -> Array:
    """The per-head field of ``p`` through ``directional`` (module docstring) on position-sorted
    tokens: positions centred on the middle of their span, log-masses floored at ``DUMMY_LOGM``,
    the heads' queries (K folded in) over one shared key copy, V_h applied after."""
    causal, has_alibi = lowered.causal, lowered.slopes is not None
    h = p.heads
    q, k, v, vmat = p.folded()  # V_h is applied after the kernel
    require(
        k.shape[0] == 1 and v.shape[0] == 1, f"the {name} backend shares one key copy across heads"
    )
    vmat = None if vmat is None else jnp.broadcast_to(vmat, (h,) + vmat.shape[-2:])
    perm = jnp.argsort(p.qs.pos)
    ps = p.qs.pos[perm]
    ps = (ps - 0.5 * (ps[0] + ps[-1])).astype(jnp.float32)
    logm = jnp.maximum(jnp.log(p.mass[perm].astype(jnp.float32)), DUMMY_LOGM)
    qs, xs = q.astype(jnp.float32)[:, perm], k[0][perm].astype(jnp.float32)
    lam = lowered.slopes.astype(jnp.float32) if has_alibi else jnp.zeros((h,), jnp.float32)
    if causal or not has_alibi:  # one directional call; two-sided ALiBi needs two
        out, lse = directional(
            qs, xs, lam, logm, ps, causal=bool(causal), strict=causal == 2, reverse=False
        )
    else:  # two-sided ALiBi: keys at or before, keys after, merged by logsumexp
        o1, l1 = directional(qs, xs, lam, logm, ps, causal=True, strict=False, reverse=False)
        o2, l2 = directional(qs, xs, lam, logm, ps, causal=True, strict=True, reverse=True)
        lse = jnp.logaddexp(l1, l2)
        out = o1 * jnp.exp(l1 - lse)[..., None] + o2 * jnp.exp(l2 - lse)[..., None]
    if p.normaliser.usa:
        out = out * jnp.exp(lse)[..., None]
        if p.normaliser.positional:
            lz = log_normaliser(lam, logm, ps, bool(causal), causal == 2)
            out = jnp.where(
                jnp.isfinite(lz)[..., None],
                out * jnp.exp(-jnp.where(jnp.isfinite(lz), lz, 0.0))[..., None],
                0.0,
            )
    out = out[:, jnp.argsort(perm)]
    if vmat is not None:
        out = jnp.einsum("hed,hnd->hne", vmat, out, precision=jax.lax.Precision.HIGHEST)
    return out
