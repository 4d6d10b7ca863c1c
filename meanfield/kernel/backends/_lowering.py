"""Helpers the backends share: derivatives through a reference path, row and key-tile blocking,
tile ranges, bf16 splits, centred positions, and the trace-time refusals of the Pallas kernels."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from ..._arrays import pad_axis
from ..._errors import data_fault, require
from ..masks import Compose, Lowered, PositionNormalized
from ..problem import Own, Problem


DUMMY_LOGM = -1.0e4
"""Log-mass of the dummy key that gives strict-causal rows a finite normaliser."""


# ----------------------------------------------------------------- derivatives
@eqx.filter_custom_jvp
def with_reference_derivative(problem, *, forward, reference):
    """``forward(problem)``, whose derivatives (jvp, and vjp through its transpose) are those of
    ``reference(problem)``: a path that computes the same field and can be differentiated (the
    Pallas kernels and the data-dependent loops of ``Chunked(query_batch > 1)`` cannot)."""
    return forward(problem)


@with_reference_derivative.def_jvp
def _jvp(primals, tangents, *, forward, reference):
    return forward(*primals), eqx.filter_jvp(reference, primals, tangents)[1]


# ----------------------------------------------------------------- blocking
def blocks(a, nb, axis):
    """Split ``axis`` into (nb, block) and move the block index to the front."""
    shape = a.shape[:axis] + (nb, a.shape[axis] // nb) + a.shape[axis + 1 :]
    return jnp.moveaxis(a.reshape(shape), axis, 0)


def block_rows(tree, nb, b, fill="edge"):
    """Pad every array of ``tree`` along its first axis to nb * b and split it into blocks."""
    return jax.tree.map(lambda a: blocks(pad_axis(a, nb * b, 0, fill), nb, 0), tree)


def block_own(own: Own, nb, b) -> Own:
    """The own-prompt arrays split into row blocks like the queries (padding rows get mass 0)."""
    return Own(
        k=blocks(pad_axis(own.k, nb * b, 1, 0.0), nb, 1),
        v=blocks(pad_axis(own.v, nb * b, 1, 0.0), nb, 1),
        logm=blocks(pad_axis(own.logm, nb * b, 0, -jnp.inf), nb, 0),
    )


def active_tile_range(active):
    """(lo, hi) per row of the (query blocks x key tiles) boolean ``active``: the first active tile
    and one past the last (0, 0 for a row with none). The tiles between that are not active are
    computed with their scores masked, so the range may be a superset."""
    some = active.any(axis=1)
    lo = jnp.where(some, jnp.argmax(active, axis=1), 0)
    hi = jnp.where(some, active.shape[1] - jnp.argmax(active[:, ::-1], axis=1), 0)
    return lo, hi


# ----------------------------------------------------------------- Pallas kernels
def lowered_mask(problem: Problem, backend: str) -> Lowered:
    """The problem's mask lowered for a tiled kernel; a ValueError naming the part that does not
    lower and the fallback otherwise."""
    lowered = problem.mask.lower(problem.heads)
    if lowered is None:
        parts = [problem.mask]
        while any(isinstance(m, (Compose, PositionNormalized)) for m in parts):
            parts = [
                q
                for m in parts
                for q in (
                    m.masks
                    if isinstance(m, Compose)
                    else (m.mask,)
                    if isinstance(m, PositionNormalized)
                    else (m,)
                )
            ]
        name = next(
            (type(m).__name__ for m in parts if m.lower(problem.heads) is None),
            type(problem.mask).__name__,
        )
        raise ValueError(
            f"the {backend} backend does not support the mask {name}; use backend=Chunked() "
            "(supported: Full, Causal, Window, ALiBi, their & compositions and PositionNormalized of those)"
        )
    return lowered


def check_supported(problem: Problem, backend: str) -> Lowered:
    """Trace-time refusal of what the fused and splash kernels do not do, naming the fallback; the
    lowered mask otherwise."""
    require(
        problem.raw is not None,
        f"the {backend} backend does not support positional encodings (RoPE, AdditivePE); use backend=Chunked()",
    )
    require(
        problem.n_prompt == 0 and problem.own is None,
        f"the {backend} backend does not support prompts; use backend=Chunked()",
    )
    require(
        problem.q.dtype == jnp.float32,
        f"the {backend} backend computes in float32, got {problem.q.dtype}; use backend=Chunked() or Dense() for float64",
    )
    return lowered_mask(problem, backend)


def split_bf16(x):
    """x = hi + lo with hi = bf16(x), lo = bf16(x - hi): the pair keeps ~16 bits of x's mantissa."""
    hi = x.astype(jnp.bfloat16)
    return hi, (x - hi.astype(jnp.float32)).astype(jnp.bfloat16)


def split3_bf16(x):
    """x = hi + mid + lo in bf16 (~24 bits: float32's mantissa)."""
    hi = x.astype(jnp.bfloat16)
    r = x - hi.astype(jnp.float32)
    mid = r.astype(jnp.bfloat16)
    return hi, mid, (r - mid.astype(jnp.float32)).astype(jnp.bfloat16)


def tf32(x):
    """x (float32) truncated to TF32 (10 explicit mantissa bits, the low 13 bits cleared): a value
    a TF32 tensor core reads exactly, so a product of two of them is exact in float32."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    return jax.lax.bitcast_convert_type(bits & jnp.uint32(0xFFFFE000), jnp.float32)


def split_tf32(x):
    """x = hi + lo + O(2^-21 |x|) with hi and lo TF32 values (``tf32``): three TF32 products
    hi hi + hi lo + lo hi ("3xTF32") keep about 21 bits of each operand."""
    hi = tf32(x)
    return hi, tf32(x - hi)


def centred_positions(qpos, kpos):
    """Query and key positions relative to their common minimum: int32 when the positions are
    integers (exact comparisons and differences at any magnitude, 2^24 and beyond), float32
    otherwise (the subtraction runs in the input dtype, so float64 positions keep their spacing)."""
    ref = jnp.minimum(jnp.min(qpos), jnp.min(kpos))
    if jnp.issubdtype(qpos.dtype, jnp.integer) and jnp.issubdtype(kpos.dtype, jnp.integer):
        return (qpos - ref).astype(jnp.int32), (kpos - ref).astype(jnp.int32)
    dt = jnp.result_type(qpos.dtype, kpos.dtype, jnp.float32)
    return (qpos.astype(dt) - ref.astype(dt)).astype(jnp.float32), (
        kpos.astype(dt) - ref.astype(dt)
    ).astype(jnp.float32)


# ----------------------------------------------------------------- data conditions
def sorted_position_fault(problem: Problem, lowered: Lowered, name: str):
    """The data conditions of a kernel that sorts the tokens by position and masks by index
    (Splash, the cuDNN route): distinct positions under a causal mask, consecutive integers under a
    Window. Concrete positions that break one raise ``ValueError`` naming ``name`` and the
    fallback; traced ones give a scalar flag (no host callback)."""
    ps = jnp.sort(problem.qs.pos)
    fault = jnp.zeros((), bool)
    if lowered.causal:
        fault = fault | data_fault(
            ~jnp.all(jnp.diff(ps) > 0),
            f"the {name} backend needs distinct positions under a causal mask (tied positions); "
            "use backend=Chunked()",
        )
    if lowered.window != math.inf:
        fault = fault | data_fault(
            ~jnp.all(jnp.diff(ps) == 1),
            f"the {name} backend needs consecutive integer positions under a Window mask; "
            "use backend=Chunked()",
        )
    return fault
