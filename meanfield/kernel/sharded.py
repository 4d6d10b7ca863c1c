"""The attention field with the tokens split over the ``"tokens"`` axis of the mesh context.

Each device holds N/P query rows, all-gathers the keys/values (positions, masses, features) and
evaluates its rows with the attention's own backend ([`Attention.rows`][meanfield.kernel.attention.Attention.rows]); see
[`meanfield.sharding`][meanfield.sharding] for the meshes.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from ..sharding import pad_rows, token_shards
from .tokens import ParallelPrompt, TokenAux, split_prompt


def sharded_field(attn, x, aux=None, prompt=None):
    """The field ``attn(x, aux, prompt)`` with the N tokens split over the ``"tokens"`` axis of
    the mesh context (see module docstring). N need not divide the axis: padding tokens get mass
    0 (never a key) and a position after every real token, and their rows are dropped."""
    shards = token_shards()
    n, dt = x.shape[0], x.dtype
    aux = TokenAux.default(n, dt) if aux is None else aux
    n_loc = -(-n // shards)
    size = n_loc * shards
    pos = aux.pos.astype(dt)
    xp = pad_rows(x, size)
    posp = pad_rows(pos, size, jnp.max(pos) + 1) if size > n else pos
    massp = pad_rows(aux.mass.astype(dt), size, 0.0)
    zp = None if aux.z is None else pad_rows(aux.z, size)
    prompt, parallel = split_prompt(prompt)
    if prompt is not None and prompt.mass is None:  # its default, 1/N, counts the real tokens only
        prompt = type(prompt)(prompt.x, jnp.full((prompt.size,), 1.0 / n, dt), prompt.pos, prompt.z)
    if parallel is not None:  # one prompt per (padded) row; each device slices its own rows
        parallel = ParallelPrompt(pad_rows(parallel.p, size), pad_rows(parallel.weight, size, 0.0))
    prompt = tuple(q for q in (prompt, parallel) if q is not None) or None
    dyn, static = eqx.partition((attn, prompt), eqx.is_array)
    spec = P("tokens")

    def local(dyn, xl, posl, massl, zl):
        attn_, prompt_ = eqx.combine(dyn, static)
        gather = lambda a: None if a is None else jax.lax.all_gather(a, "tokens", tiled=True)  # noqa: E731
        aux_all = TokenAux(pos=gather(posl), mass=gather(massl), z=gather(zl))
        start = jax.lax.axis_index("tokens") * n_loc
        return attn_.rows(gather(xl), start, n_loc, aux_all, prompt_)

    out = jax.shard_map(
        local,
        in_specs=(P(), spec, spec, spec, None if zp is None else spec),
        out_specs=spec,
        check_vma=False,  # the chunked kernel's lax.cond mixes replicated and per-device carries
    )(dyn, xp, posp, massp, zp)
    return out[:n]
