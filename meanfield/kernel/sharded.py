"""The attention field with its query rows split over the ``"tokens"`` axis of the mesh context.

The [`Problem`][meanfield.kernel.Problem] is sharded: each device evaluates N/P query
rows (queries, their slots and parallel prompts) against every key (the keys, values, masses and
mask, replicated: XLA all-gathers what it computed sharded) with the attention's own backend; see
[`meanfield.sharding`][meanfield.sharding] for the meshes.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from ..sharding import pad_rows, token_shards
from .problem import Own, Problem


def _rows_first(p: Problem, size: int):
    """The problem's row-indexed arrays with the row axis first, padded to ``size`` rows (padding
    rows repeat the last row, whose result is dropped; padded own prompts get mass 0)."""
    q = pad_rows(jnp.moveaxis(p.q, 1, 0), size)
    qs = jax.tree.map(lambda a: pad_rows(a, size), p.qs)
    own = None
    if p.own is not None:
        own = (
            pad_rows(jnp.moveaxis(p.own.k, 1, 0), size),
            pad_rows(jnp.moveaxis(p.own.v, 1, 0), size),
            pad_rows(p.own.logm, size, -jnp.inf),
        )
    return q, qs, own


def sharded_field(backend, p: Problem):
    """``backend.field(p)`` with the query rows split over the ``"tokens"`` axis of the mesh context
    (see module docstring). The row count need not divide the axis: padding rows are dropped."""
    shards = token_shards()
    n = p.rows
    size = -(-n // shards) * shards
    rows = _rows_first(p, size)
    where = lambda t: (t.q, t.qs, t.own)  # noqa: E731
    keep_none = lambda x: x is None  # noqa: E731
    dyn, static = eqx.partition(p, eqx.is_array)
    dyn = eqx.tree_at(where, dyn, (None, None, None), is_leaf=keep_none)

    def local(dyn, q, qs, own):
        own = (
            None
            if own is None
            else Own(k=jnp.moveaxis(own[0], 0, 1), v=jnp.moveaxis(own[1], 0, 1), logm=own[2])
        )
        mine = eqx.tree_at(where, dyn, (jnp.moveaxis(q, 0, 1), qs, own), is_leaf=keep_none)
        return backend.field(eqx.combine(mine, static))

    out = jax.shard_map(
        local,
        in_specs=(P(), P("tokens"), P("tokens"), None if rows[2] is None else P("tokens")),
        out_specs=P(None, "tokens"),
        check_vma=False,  # the chunked kernel's lax.cond mixes replicated and per-device carries
    )(dyn, *rows)
    return out[:, :n]
