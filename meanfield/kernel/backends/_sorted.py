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


def log_normaliser(lam, logm, pos, causal, strict):
    """log Z_i = log sum_{j visible} m_j e^{-lambda_h |p_i - p_j|} per head (H, N), in sorted order,
    by cumulative logsumexps (the positional normaliser of PositionNormalized)."""

    def one(lh):
        incl = jax.lax.cumlogsumexp(logm + lh * pos)  # j <= i
        before = (
            jnp.concatenate([jnp.full((1,), -jnp.inf, incl.dtype), incl[:-1]]) if strict else incl
        )
        fwd = before - lh * pos
        if causal:
            return fwd
        rincl = jax.lax.cumlogsumexp(logm - lh * pos, reverse=True)  # j >= i
        after = (
            jnp.concatenate([rincl[1:], jnp.full((1,), -jnp.inf, rincl.dtype)]) + lh * pos
        )  # j > i
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
