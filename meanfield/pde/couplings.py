"""Couplings of the kinetic solver's rows: how row k sees the densities of the rows j
([`KineticMeanField`][meanfield.pde.KineticMeanField]), F_k = sum_j c_kj f_j.

One strategy per class behind [`AbstractCoupling`][meanfield.pde.AbstractCoupling]:
[`CausalCoupling`][meanfield.pde.CausalCoupling] (Volterra in s with an ALiBi decay, an
O(S M) scan), [`FullCoupling`][meanfield.pde.FullCoupling] and
[`MatrixCoupling`][meanfield.pde.MatrixCoupling] (explicit weights).
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._errors import check_param, is_concrete, param_fault, require
from .._types import Array
from ..sharding import pad_rows, token_shards


def _float_array(v):
    return jnp.asarray(v, dtype=float)


class AbstractCoupling(eqx.Module):
    """How the rows (auxiliary values z_k, weights w_k) are coupled: F = C f (a strategy module
    passed as ``KineticMeanField(coupling=...)``)."""

    @abc.abstractmethod
    def check(self, s) -> None:
        """Trace-time checks against the row values ``s`` (S,)."""

    @abc.abstractmethod
    def matrix(self, s: Array, w: Array) -> Array:
        """The dense (S, S) weights c_kj (z-marginal weights w_j included)."""

    @abc.abstractmethod
    def mix(self, s: Array, w: Array, f: Array) -> Array:
        """F = C f over the rows, shape (S, M)."""

    @abc.abstractmethod
    def parameter_fault(self) -> Array:
        """True (in the graph) when a traced parameter of the coupling is NaN, infinite or out of range."""


class CausalCoupling(AbstractCoupling):
    r"""Volterra coupling in s with ALiBi decay: $c_{kj} = w_j e^{-\lambda (s_k - s_j)}$ for $s_j < s_k$ and
    ``self_weight`` w_k on the diagonal (1/2: the continuum quadrature, second order in s; 1: one
    discrete token per row that sees itself). Evaluated by a linear-recurrence scan in s (O(S M),
    no S x S matrix; split over the ``"tokens"`` mesh axis under a mesh context).

    ``strict=True``: no diagonal (a token does not see itself; the first row sees nothing and its
    field is zero). ``normalized=True``: each row's weights divided by their sum (the
    position-normalised convention of [`meanfield.PositionNormalized`][meanfield.kernel.PositionNormalized]; the row sums come from
    the same scan on a column of ones, still O(S M)). SA is unchanged by ``normalized`` (it divides
    by the content sum too); USA is not. The kinetic paper's model (Duerinckx, Geshkovski & Rossi
    2026) is ``CausalCoupling(lam, strict=True, normalized=True)`` with ``form="USA"`` and the value
    scale ``a = beta`` (V = beta I): see [`KineticMeanField.paper_model`][meanfield.pde.kinetic.KineticMeanField.paper_model]. With the default
    self weight 1/2 instead of strict rows, each row also sees half of its own cell: an O(1/S)
    change of every weight (and the first row moves)."""

    lam: Array = eqx.field(converter=_float_array)
    self_weight: Array = eqx.field(converter=_float_array)
    strict: bool = eqx.field(static=True)
    normalized: bool = eqx.field(static=True)

    def __init__(
        self, lam=0.0, self_weight=None, *, strict: bool = False, normalized: bool = False
    ):
        if strict:
            require(
                self_weight is None or float(self_weight) == 0.0,
                f"self_weight must be 0 (or omitted) with strict=True, got {self_weight}",
            )
        self.lam = lam
        self.self_weight = 0.0 if strict else (0.5 if self_weight is None else self_weight)
        self.strict, self.normalized = bool(strict), bool(normalized)

    def __check_init__(self):
        require(self.lam.ndim == 0, "lam must be a scalar")
        check_param("lam", self.lam, lo=0)
        check_param("self_weight", self.self_weight, lo=0)

    def parameter_fault(self):
        return param_fault(self.lam, lo=0) | param_fault(self.self_weight, lo=0)

    def check(self, s):
        if is_concrete(s):
            require(
                bool(np.all(np.diff(np.asarray(s)) > 0)),
                "s must be strictly increasing for a causal coupling",
            )

    def matrix(self, s, w):
        diff = s[:, None] - s[None, :]
        c = w[None, :] * jnp.exp(-self.lam * jnp.abs(diff))
        eye = jnp.eye(s.shape[0], dtype=bool)
        c = jnp.where(eye, self.self_weight * c, jnp.where(diff > 0, c, 0.0))
        if self.normalized:
            rows = jnp.sum(c, axis=1, keepdims=True)
            c = c / jnp.where(rows > 0, rows, 1.0)
        return c

    def mix(self, s, w, f):
        out = self._mix(s, w, f)
        if self.normalized:
            rows = self._mix(s, w, jnp.ones((f.shape[0], 1), f.dtype))
            out = out / jnp.where(rows > 0, rows, 1.0)
        return out

    def _mix(self, s, w, f):
        decay = jnp.exp(-self.lam * jnp.diff(s)).astype(f.dtype)  # (S-1,)
        wf = w[:, None].astype(f.dtype) * f
        a = jnp.concatenate([jnp.ones((1,), f.dtype), decay])[:, None] * jnp.ones_like(f)
        bvec = jnp.concatenate([jnp.zeros_like(f[:1]), decay[:, None] * wf[:-1]])
        shards = token_shards()
        acc = (
            _sharded_prefix(a, bvec, shards)
            if shards > 1
            else jax.lax.associative_scan(_combine, (a, bvec))[1]
        )
        return acc + self.self_weight.astype(f.dtype) * wf


class FullCoupling(AbstractCoupling):
    r"""Every row sees every row with two-sided decay: $c_{kj} = w_j e^{-\lambda |s_k - s_j|}$."""

    lam: Array = eqx.field(default=0.0, converter=_float_array)

    def __check_init__(self):
        require(self.lam.ndim == 0, "lam must be a scalar")
        check_param("lam", self.lam, lo=0)

    def parameter_fault(self):
        return param_fault(self.lam, lo=0)

    def check(self, s):
        pass

    def matrix(self, s, w):
        return w[None, :] * jnp.exp(-self.lam * jnp.abs(s[:, None] - s[None, :]))

    def mix(self, s, w, f):
        return self.matrix(s, w).astype(f.dtype) @ f


class MatrixCoupling(AbstractCoupling):
    """An explicit (S, S) matrix of non-negative weights c(z_k, z_j), z-marginal weights included
    (any b(z, z'): concatenated encodings ⟨A z, z'⟩, windows, custom masks); O(S^2 M)."""

    c: Array = eqx.field(converter=_float_array)

    def __check_init__(self):
        require(
            self.c.ndim == 2 and self.c.shape[0] == self.c.shape[1],
            f"coupling matrix must be square, got {self.c.shape}",
        )
        check_param("coupling matrix", self.c, lo=0)

    def parameter_fault(self):
        return param_fault(self.c, lo=0)

    def check(self, s):
        n = s.shape[0]
        require(
            self.c.shape == (n, n),
            f"coupling matrix must have shape ({n}, {n}), got {self.c.shape}",
        )

    def matrix(self, s, w):
        return self.c

    def mix(self, s, w, f):
        return self.c.astype(f.dtype) @ f


def _coupling(coupling) -> AbstractCoupling:
    """The coupling strategy from a module or an (S, S) array."""
    if isinstance(coupling, AbstractCoupling):
        return coupling
    require(
        not isinstance(coupling, str),
        f"coupling must be CausalCoupling(...), FullCoupling(...), MatrixCoupling(c) or an (S, S) array, got {coupling!r} "
        "(the 0.2 strings 'causal'/'full' were removed in 0.3)",
    )
    return MatrixCoupling(coupling)


def _combine(left, right):
    """Composition of the affine maps c -> a c + b (left first): the monoid of the causal scan."""
    (a1, b1), (a2, b2) = left, right
    return a1 * a2, a2 * b1 + b2


def _sharded_prefix(a, b, shards: int):
    """The causal recurrence v_k = a_k v_{k-1} + b_k (v_{-1} = 0) over rows split across the
    ``"tokens"`` mesh axis: each device scans its block from zero, the P block summaries are
    all-gathered and scanned (P values per theta cell), and each block adds its incoming value
    v_in times its local product of a. Rows are padded (a = 1, b = 0 after the end: no effect on
    earlier rows) to a multiple of the axis."""
    n = a.shape[0]
    size = -(-n // shards) * shards
    a, b = pad_rows(a, size, 1.0), pad_rows(b, size, 0.0)

    def local(al, bl):
        ca, cb = jax.lax.associative_scan(_combine, (al, bl))
        ends_a = jax.lax.all_gather(ca[-1], "tokens")  # (P, M)
        ends_b = jax.lax.all_gather(cb[-1], "tokens")
        _, v_end = jax.lax.associative_scan(_combine, (ends_a, ends_b))  # value at each block's end
        idx = jax.lax.axis_index("tokens")
        v_in = jnp.where(idx > 0, v_end[jnp.maximum(idx - 1, 0)], 0.0)
        return ca * v_in[None] + cb

    spec = jax.sharding.PartitionSpec("tokens")
    out = jax.shard_map(local, in_specs=(spec, spec), out_specs=spec, check_vma=False)(a, b)
    return out[:n]
