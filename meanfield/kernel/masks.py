r"""Position couplings b(z_i, z_j): masks and decays, in log-weight form.

A mask adds a log-weight to every score, a_ij = beta ⟨Q x_i, K x_j⟩ + b_ij, with b_ij = -inf
for forbidden pairs. Masks compose by adding their log-weights (``mask1 & mask2``), so
"causal ALiBi with a window" is ``Causal() & ALiBi(0.1) & Window(64)``.

Each mask implements:

* ``bias(q, k, heads)``: the (h, nq, nk) log-weights for query slots ``q`` and key slots
  ``k`` (each a [`Slots`][meanfield.kernel.Slots] of token indices and positions), with h = 1 or ``heads``.
  Positions arrive relative to the smallest token position of the call (subtracted in their own
  dtype, then cast to the tokens' dtype), so a mask must depend on position differences only
  (every mask here does); integer positions beyond 2^24 then stay exact in float32;
* ``lower(heads)``: what a tiled kernel needs to evaluate the mask itself, a
  [`Lowered`][meanfield.kernel.Lowered] (causal kind, window width, per-head ALiBi slopes), or
  ``None`` when it cannot (``CustomBias``, ``ZBias``). Everything about tiles derives from it:
  ``block_active`` (the chunked backend skips blocks for which it is False, e.g. the upper
  triangle of a causal mask), the fused kernel's tile bounds and in-kernel mask arithmetic, and
  the Splash backend's index masks. A mask that lowers to ``None`` runs on the dense and chunked
  backends (every tile computed) and is refused by the fused ones.

and may say ``may_forbid = False`` when its bias is always finite (``Full``, ``ALiBi``): the
dense backend then drops its guard against rows with no visible key, which lets XLA:CPU keep
the score GEMM, row max and exp in one fused kernel. The default (True) is always safe.
"""

from __future__ import annotations

import abc
import math
from typing import NamedTuple

import equinox as eqx
import jax.numpy as jnp

from .._errors import check_param, param_fault, require
from .._types import Array


class Slots(NamedTuple):
    """Token indices (into the query or key array), positions and auxiliary features z."""

    idx: Array
    pos: Array
    z: Array | None = None


class Lowered(NamedTuple):
    """What a tiled kernel needs to apply a mask itself (see module docstring).

    Attributes:
        causal: 0 (none), 1 (pos_j <= pos_i) or 2 (strict, pos_j < pos_i).
        window: pairs need |pos_i - pos_j| < window (``math.inf``: no window).
        slopes: ALiBi slopes, b_ij = -slopes_h |pos_i - pos_j|, shape (heads,) (``None``: no ALiBi).
    """

    causal: int = 0
    window: float = math.inf
    slopes: Array | None = None

    def __and__(self, other: Lowered) -> Lowered:
        slopes = (
            self.slopes
            if other.slopes is None
            else (other.slopes if self.slopes is None else self.slopes + other.slopes)
        )
        return Lowered(max(self.causal, other.causal), min(self.window, other.window), slopes)

    def tiles(self, q_lo, q_hi, k_lo, k_hi):
        """(active, full) for query positions in [q_lo, q_hi] against keys in [k_lo, k_hi]
        (broadcasting arrays): ``active`` when some pair may be allowed, ``full`` when every pair is."""
        active, full = jnp.asarray(True), jnp.asarray(True)
        if self.causal:
            strict = self.causal == 2
            active = active & ((k_lo < q_hi) if strict else (k_lo <= q_hi))
            full = full & ((k_hi < q_lo) if strict else (k_hi <= q_lo))
        if self.window != math.inf:
            gap = jnp.maximum(jnp.maximum(k_lo - q_hi, q_lo - k_hi), 0)
            span = jnp.maximum(q_hi - k_lo, k_hi - q_lo)
            active = active & (gap < self.window)
            full = full & (span < self.window)
        return active, full


class AbstractMask(eqx.Module):
    """Base class: a log-weight b(z_i, z_j) added to the attention scores."""

    @abc.abstractmethod
    def bias(self, q: Slots, k: Slots, heads: int) -> Array:
        """The (h, nq, nk) log-weights, h = 1 or ``heads``."""

    def lower(self, heads: int | None) -> Lowered | None:
        """What a tiled kernel needs to apply this mask itself, with the ALiBi slopes broadcast to
        ``heads`` (``None``: left as given), or ``None`` when a kernel cannot (the default)."""
        return None

    def block_active(self, q_lo, q_hi, k_lo, k_hi):
        """Whether any pair of the position ranges may have finite weight: from
        [`lower`][meanfield.kernel.masks.AbstractMask.lower] (always True for a mask that does not lower)."""
        lowered = self.lower(None)
        return jnp.asarray(True) if lowered is None else lowered.tiles(q_lo, q_hi, k_lo, k_hi)[0]

    @abc.abstractmethod
    def validate(self, n_queries: int, n_keys: int, heads: int) -> None:
        """Trace-time shape checks against the problem size."""

    @property
    def may_forbid(self) -> bool:
        """Whether ``bias`` may hold -inf (a forbidden pair), so that a row may see no key at all.
        True unless the mask says otherwise; the dense backend skips its guard against fully
        forbidden rows when False (a guard that costs XLA:CPU its fused GEMM-softmax kernel).

        Example:
            ```python
            Full().may_forbid, ALiBi(0.1).may_forbid, (Causal() & ALiBi(0.1)).may_forbid
            # (False, False, True)
            ```
        """
        return True

    def __and__(self, other: AbstractMask) -> Compose:
        require(
            not isinstance(other, PositionNormalized),
            "PositionNormalized must wrap the whole mask: write PositionNormalized(m1 & m2)",
        )
        left = self.masks if isinstance(self, Compose) else (self,)
        right = other.masks if isinstance(other, Compose) else (other,)
        return Compose(left + right)


def _zeros(q: Slots, k: Slots) -> Array:
    return jnp.zeros((1, q.pos.shape[0], k.pos.shape[0]), dtype=q.pos.dtype)


class Full(AbstractMask):
    """Every token attends to every token: b = 0."""

    may_forbid = False

    def bias(self, q, k, heads):
        return _zeros(q, k)

    def lower(self, heads):
        return Lowered()

    def validate(self, n_queries, n_keys, heads):
        pass


class Causal(AbstractMask):
    """Token i attends to j iff pos_j <= pos_i (the first token attends only to itself).

    ``strict=True``: iff pos_j < pos_i, a token does not see itself (the kinetic paper's rows,
    Duerinckx, Geshkovski & Rossi 2026); a row with no visible key (the first token) has a zero
    field under SA and USA (no 0/0)."""

    strict: bool = eqx.field(default=False, static=True)

    def bias(self, q, k, heads):
        kp, qp = k.pos[None, None, :], q.pos[None, :, None]
        allowed = kp < qp if self.strict else kp <= qp
        return jnp.where(allowed, 0.0, -jnp.inf).astype(q.pos.dtype)

    def validate(self, n_queries, n_keys, heads):
        pass

    def lower(self, heads):
        return Lowered(causal=2 if self.strict else 1)


class Window(AbstractMask):
    """Sliding window: i attends to j iff |pos_i - pos_j| < width (compose with Causal for a
    causal window of ``width`` tokens including the token itself)."""

    width: float

    def __init__(self, width):
        check_param("Window: width", width, lo=0, lo_open=True)
        self.width = float(width)

    def bias(self, q, k, heads):
        allowed = jnp.abs(q.pos[None, :, None] - k.pos[None, None, :]) < self.width
        return jnp.where(allowed, 0.0, -jnp.inf).astype(q.pos.dtype)

    def validate(self, n_queries, n_keys, heads):
        pass

    def lower(self, heads):
        return Lowered(window=self.width)


class ALiBi(AbstractMask):
    """Exponential decay with distance: b_ij = -slope_h |pos_i - pos_j| (ALiBi, Press et al.).

    ``slope`` is a scalar or one slope per head (shape (heads,)). Composed with
    [`Causal`][meanfield.kernel.Causal] this is the usual causal ALiBi b = -lambda (i - j), j <= i. With positions
    s = pos/(N-1) in [0, 1] it reads b = -lambda (N-1) (s_i - s_j).
    """

    slope: Array
    may_forbid = False

    def __init__(self, slope):
        slope = jnp.asarray(slope)
        require(
            slope.ndim <= 1, f"ALiBi: slope must be a scalar or shape (heads,), got {slope.shape}"
        )
        check_param("ALiBi: slope", slope, lo=0)
        self.slope = slope

    def parameter_fault(self):
        return param_fault(self.slope, lo=0)

    def validate(self, n_queries, n_keys, heads):
        if self.slope.ndim == 1:
            require(
                self.slope.shape[0] in (1, heads),
                f"ALiBi: slope has {self.slope.shape[0]} entries but the attention has {heads} heads",
            )

    def bias(self, q, k, heads):
        dist = jnp.abs(q.pos[:, None] - k.pos[None, :])
        slope = jnp.reshape(self.slope, (-1, 1, 1)).astype(q.pos.dtype)
        return -slope * dist[None]

    def lower(self, heads):
        slopes = jnp.reshape(self.slope, (-1,))
        return Lowered(slopes=slopes if heads is None else jnp.broadcast_to(slopes, (heads,)))


class CustomBias(AbstractMask):
    """An explicit log-weight matrix indexed by token index: shape (N, N_keys) or
    (heads, N, N_keys), with N_keys = N + P when a prompt is present (prompt keys last).
    Use ``-inf`` to forbid a pair. ``CustomBias.from_bool(allowed)`` builds it from a mask."""

    matrix: Array

    def __init__(self, matrix):
        matrix = jnp.asarray(matrix)
        require(matrix.ndim in (2, 3), f"CustomBias: matrix must be 2-D or 3-D, got {matrix.shape}")
        check_param("CustomBias: matrix (-inf forbids a pair)", matrix, allow_neg_inf=True)
        self.matrix = matrix if matrix.ndim == 3 else matrix[None]

    def parameter_fault(self):
        return param_fault(self.matrix, allow_neg_inf=True)

    @classmethod
    def from_bool(cls, allowed) -> CustomBias:
        allowed = jnp.asarray(allowed, dtype=bool)
        return cls(jnp.where(allowed, 0.0, -jnp.inf))

    def validate(self, n_queries, n_keys, heads):
        h, nq, nk = self.matrix.shape
        require(
            (nq, nk) == (n_queries, n_keys),
            f"CustomBias: matrix has shape {(nq, nk)} but the attention has "
            f"N = {n_queries} queries and {n_keys} keys (mask length must equal N)",
        )
        require(h in (1, heads), f"CustomBias: matrix has {h} heads but the attention has {heads}")

    def bias(self, q, k, heads):
        n_q, n_k = self.matrix.shape[1:]
        qi = jnp.clip(q.idx, 0, n_q - 1)
        ki = jnp.clip(k.idx, 0, n_k - 1)
        return self.matrix[:, qi][:, :, ki].astype(q.pos.dtype)


class PositionNormalized(AbstractMask):
    r"""Row-normalised positional weights: with the wrapped mask's log-weights b_ij and key masses
    m_j, head h of row i uses

        pi_ij = m_j e^{b_ij} / sum_{j'} m_{j'} e^{b_ij'}    (over every key row i can see,
                                                             prompt keys included)

    in place of m_j e^{b_ij}, before the content factor e^{beta ⟨Q x_i, K x_j⟩} multiplies it.
    USA then reads v_i = sum_j pi_ij e^{beta ⟨Q x_i, K x_j⟩} V x_j (the kinetic paper's causal ALiBi
    model: ``PositionNormalized(Causal(strict=True) & ALiBi(lam / N))``, V = beta I, form "USA");
    SA divides by the content sum as well, so it is unchanged. A row that sees no key has a zero
    field. Per-head slopes give per-head normalisers. Supported by the dense, chunked (an online
    normaliser beside the softmax one), sharded and fused backends.

    Example:
        ```python
        mask = PositionNormalized(Causal(strict=True) & ALiBi(1.0 / n))
        ```
    """

    mask: AbstractMask

    def __check_init__(self):
        require(
            isinstance(self.mask, AbstractMask),
            f"PositionNormalized: mask must be a mask, got {self.mask!r}",
        )
        require(
            not isinstance(self.mask, PositionNormalized),
            "PositionNormalized: the mask is already position-normalised",
        )

    def bias(self, q, k, heads):
        return self.mask.bias(q, k, heads)

    def lower(self, heads):
        return self.mask.lower(heads)

    def block_active(self, q_lo, q_hi, k_lo, k_hi):
        return self.mask.block_active(q_lo, q_hi, k_lo, k_hi)

    def validate(self, n_queries, n_keys, heads):
        self.mask.validate(n_queries, n_keys, heads)

    @property
    def may_forbid(self) -> bool:
        return self.mask.may_forbid

    def __and__(self, other: AbstractMask) -> AbstractMask:
        raise ValueError(
            "PositionNormalized must wrap the whole mask: write PositionNormalized(m1 & m2)"
        )


def position_normalized(mask: AbstractMask) -> bool:
    """Whether ``mask`` row-normalises the positional weights ([`PositionNormalized`][meanfield.kernel.PositionNormalized])."""
    return isinstance(mask, PositionNormalized)


class Compose(AbstractMask):
    """Sum of log-weights of several masks (``m1 & m2``): a pair is allowed iff all allow it."""

    masks: tuple

    def bias(self, q, k, heads):
        total = _zeros(q, k)
        for m in self.masks:
            total = total + m.bias(q, k, heads)
        return total

    def lower(self, heads):
        out = Lowered()
        for m in self.masks:
            part = m.lower(heads)
            if part is None:
                return None
            out = out & part
        return out

    def block_active(self, q_lo, q_hi, k_lo, k_hi):
        # a part that does not lower (e.g. CustomBias) still lets the others skip tiles
        active = jnp.asarray(True)
        for m in self.masks:
            active = active & m.block_active(q_lo, q_hi, k_lo, k_hi)
        return active

    def validate(self, n_queries, n_keys, heads):
        for m in self.masks:
            m.validate(n_queries, n_keys, heads)

    @property
    def may_forbid(self) -> bool:
        return any(m.may_forbid for m in self.masks)
