"""The chunked backend: online softmax over (query block, key block) tiles (flash-attention style),
O(N * block) memory; tiles the mask forbids are skipped."""

from __future__ import annotations

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp

from ..._arrays import pad_axis
from ..._errors import is_concrete, require
from ..._types import Array
from ..problem import Problem, finite
from ._lowering import active_tile_range, block_own, block_rows, blocks, with_reference_derivative
from .base import AbstractBackend, projection_bytes, no_fault


class Chunked(AbstractBackend):
    """Online softmax over (query block, key block) tiles of size ``block``, O(N * block) memory;
    tiles the mask forbids are skipped. ``query_batch``: query blocks evaluated at once
    (``jax.lax.map``'s ``batch_size``). 1: one after the other, a ``lax.cond`` per tile skips every
    forbidden tile. Larger values expose more parallelism to a GPU: each query block then loops
    over its own key-tile range [lo, hi) (the first and last tile the mask allows, from the tiles'
    position ranges), with query blocks i and nq - 1 - i paired in one loop, so that under a
    causal mask every batched loop runs nq + 1 tiles and the forbidden upper half is not computed
    (under batching a cond would become a select and compute every tile). Derivatives of that
    path (jvp, and vjp through it) are those of the ``query_batch=1`` path."""

    block: int = eqx.field(default=512, static=True)
    query_batch: int = eqx.field(default=1, static=True)

    def __check_init__(self):
        require(int(self.block) > 0, f"block must be a positive integer, got {self.block}")
        require(
            int(self.query_batch) > 0,
            f"query_batch must be a positive integer, got {self.query_batch}",
        )

    def field(self, problem):
        if int(self.query_batch) == 1:
            return chunked_field(problem, int(self.block), 1)
        # its loops have data-dependent lengths, which reverse mode cannot differentiate
        forward = functools.partial(
            chunked_field, block=int(self.block), query_batch=int(self.query_batch)
        )
        return with_reference_derivative(problem, forward=forward, reference=reference_field)

    def data_fault(self, problem):
        return no_fault()  # any positions, masses and values

    def memory_bytes(self, n, n_keys, d, heads, itemsize):
        slab = heads * min(self.block, n) * min(self.block, n_keys) * self.query_batch
        return projection_bytes(n, n_keys, d, heads, itemsize) + 3 * slab * itemsize


def reference_field(problem: Problem) -> Array:
    """The field through ``Chunked()`` (one query block at a time): the derivative of the paths that
    have none of their own (``Fused``, ``Splash``, ``Chunked(query_batch > 1)``)."""
    return chunked_field(problem, 512, 1)


def chunked_field(p: Problem, block: int, query_batch: int) -> Array:
    """Online-softmax evaluation over (query block, key block) tiles; O(N * block) memory."""
    n, m = p.q.shape[1], p.k.shape[1]
    bq, bk = min(block, n), min(block, m)
    nq, nk = math.ceil(n / bq), math.ceil(m / bk)
    h = p.heads
    d_out = p.v.shape[-1]
    dt = p.q.dtype
    nrm = p.normaliser

    q = blocks(pad_axis(p.q, nq * bq, 1, 0.0), nq, 1)  # (nq, hq, bq, d)
    qslots = block_rows(p.qs, nq, bq)
    k = blocks(pad_axis(p.k, nk * bk, 1, 0.0), nk, 1)
    v = blocks(pad_axis(p.v, nk * bk, 1, 0.0), nk, 1)
    kslots = block_rows(p.ks, nk, bk)
    logm = blocks(pad_axis(jnp.log(p.mass), nk * bk, 0, -jnp.inf), nk, 0)
    free = blocks(pad_axis(p.free, nk * bk, 0, False), nk, 0)
    k_lo, k_hi = kslots.pos.min(axis=1), kslots.pos.max(axis=1)
    k_live = jnp.any(jnp.isfinite(logm), axis=1)
    k_free = jnp.any(free, axis=1)

    def raw_update(carry, kb, qi, qs):
        mx, l, acc, pmx, pl = carry
        kj, vj, ks, lm, fr = kb
        s = p.scores(qi, qs, ks, fr, lm, k=kj)
        s = jnp.broadcast_to(s, (h, bq, bk))
        m_new = jnp.maximum(mx, s.max(axis=-1))
        m_safe = finite(m_new)
        w = jnp.exp(s - m_safe[..., None])
        scale = jnp.exp(mx - m_safe)
        l = l * scale + w.sum(axis=-1)
        acc = acc * scale[..., None] + w @ vj
        if (
            nrm.positional
        ):  # online positional normaliser sum_j m_j e^{b_ij}, scaled by its running max
            b = jnp.broadcast_to(p.position_logw(qs, ks, fr, lm), (h, bq, bk))
            pm_new = jnp.maximum(pmx, b.max(axis=-1))
            pm_safe = finite(pm_new)
            pl = pl * jnp.exp(pmx - pm_safe) + jnp.exp(b - pm_safe[..., None]).sum(axis=-1)
            pmx = pm_new
        return m_new, l, acc, pmx, pl

    update = jax.checkpoint(raw_update)

    def init_state(qi, own):
        if own is not None:  # the row's own prompt starts the online normalisers
            so = jnp.broadcast_to(p.own_scores(qi, own), (h, bq))
            w0 = jnp.exp(so - finite(so))
            pl0 = jnp.broadcast_to(jnp.exp(own.logm - finite(own.logm)), (h, bq))
            return (
                so,
                w0,
                w0[..., None] * jnp.broadcast_to(own.v, (h, bq, d_out)),
                jnp.broadcast_to(own.logm, (h, bq)),
                pl0,
            )
        return (
            jnp.full((h, bq), -jnp.inf, dt),
            jnp.zeros((h, bq), dt),
            jnp.zeros((h, bq, d_out), dt),
            jnp.full((h, bq), -jnp.inf, dt),
            jnp.zeros((h, bq), dt),
        )

    def finish(carry):
        mx, l, acc, pmx, pl = carry
        return nrm.finish(acc, l, mx, pl, pmx)

    def one_query_block(qb):
        qi, qs, own = qb
        q_lo, q_hi = qs.pos.min(), qs.pos.max()

        def body(carry, kb):
            tile, (live, has_free, lo, hi) = kb
            active = (p.mask.block_active(q_lo, q_hi, lo, hi) | has_free) & live
            return jax.lax.cond(
                active, lambda c, t: update(c, t, qi, qs), lambda c, _: c, carry, tile
            ), None

        tiles = ((k, v, kslots, logm, free), (k_live, k_free, k_lo, k_hi))
        carry, _ = jax.lax.scan(body, init_state(qi, own), tiles)
        return finish(carry)

    def every_tile(qb):  # no tile can be skipped: a plain scan (under batching a cond is a select)
        qi, qs, own = qb
        tiles = (k, v, kslots, logm, free)
        carry, _ = jax.lax.scan(
            lambda c, t: (raw_update(c, t, qi, qs), None), init_state(qi, own), tiles
        )
        return finish(carry)

    own = None if p.own is None else block_own(p.own, nq, bq)
    if query_batch == 1:
        out = jax.lax.map(one_query_block, (q, qslots, own))  # (nq, h, bq, d)
    else:
        mask_active = p.mask.block_active(
            qslots.pos.min(axis=1)[:, None],
            qslots.pos.max(axis=1)[:, None],
            k_lo[None, :],
            k_hi[None, :],
        )
        if is_concrete(mask_active) and bool(
            jnp.all(mask_active)
        ):  # e.g. Full, ALiBi: known at trace time
            out = jax.lax.map(every_tile, (q, qslots, own), batch_size=min(query_batch, nq))
        else:
            active = jnp.broadcast_to(
                (mask_active | k_free[None, :]) & k_live[None, :], (nq, k_lo.shape[0])
            )
            out = _paired_blocks(
                q,
                qslots,
                own,
                (k, v, kslots, logm, free),
                active,
                init_state,
                update,
                finish,
                min(query_batch, -(-nq // 2)),
            )
    out = jnp.moveaxis(out, 0, 1).reshape(h, nq * bq, d_out)
    return out[:, :n]


def _paired_blocks(q, qslots, own, tiles, active, init_state, update, finish, batch):
    """The query blocks i and nq - 1 - i in one loop over t < n_i + n_{nq-1-i}, where n_i = hi_i - lo_i
    counts the key tiles from the first to the last one ``active`` (nq x nk) allows for block i (a
    superset: the forbidden tiles inside it are computed with their scores masked). Pairs are
    mapped with ``batch_size=batch``; under a causal mask in index order every pair runs nq + 1 tiles."""
    nq = q.shape[0]
    lo, hi = active_tile_range(active)
    pairs = -(-nq // 2)
    a_idx = jnp.arange(pairs)
    b_idx = nq - 1 - a_idx
    pick = lambda tree, i: jax.tree.map(lambda x: x[i], tree)  # noqa: E731

    def one_pair(ab):
        a, b = ab
        qa, qb = q[a], q[b]
        sa, sb = pick(qslots, a), pick(qslots, b)
        oa, ob = (None, None) if own is None else (pick(own, a), pick(own, b))
        na = hi[a] - lo[a]
        nb = jnp.where(b != a, hi[b] - lo[b], 0)

        def body(t, carry):
            ca, cb = carry
            first = t < na
            j = jnp.where(first, lo[a] + t, lo[b] + t - na)
            sel = lambda x, y: jax.tree.map(lambda u, w: jnp.where(first, u, w), x, y)  # noqa: E731
            new = update(sel(ca, cb), pick(tiles, j), sel(qa, qb), sel(sa, sb))
            return sel(new, ca), sel(cb, new)

        ca, cb = jax.lax.fori_loop(0, na + nb, body, (init_state(qa, oa), init_state(qb, ob)))
        return finish(ca), finish(cb)

    out_a, out_b = jax.lax.map(one_pair, (a_idx, b_idx), batch_size=batch)
    out = jnp.zeros((nq,) + out_a.shape[1:], out_a.dtype)
    return out.at[b_idx].set(out_b).at[a_idx].set(out_a)
