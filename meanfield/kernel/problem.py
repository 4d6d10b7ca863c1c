r"""What a backend evaluates: one [`Problem`][meanfield.kernel.Problem] per field call.

[`Attention`][meanfield.kernel.Attention] builds the problem once per call from the tokens, their
auxiliary data and the prompt (split once), and hands it to its backend
([`meanfield.kernel.backends`][meanfield.kernel.backends]); the sharded path splits its query rows
over the devices. A backend reads nothing else: the projected queries, keys and values, the
slots (indices, positions, features), the key masses, the mask, the
[`Normaliser`][meanfield.kernel.Normaliser], the heads, the precisions and, for the kernels
that apply the heads themselves, the K/V folding ([`Problem.folded`][meanfield.kernel.problem.Problem.folded]).

For head $h$ the scores are $a^h_{ij} = \langle \beta_h q^h_i, k^h_j\rangle + b_h(z_i, z_j) + \log m_j$,
and every path (dense, chunked, the attention matrix, the Pallas epilogues) ends with the one
[`Normaliser.finish`][meanfield.kernel.problem.Normaliser.finish].
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .._errors import check_form
from .._types import Array
from .masks import AbstractMask, Full, Slots, position_normalized


class Normaliser(eqx.Module):
    r"""How a row's weighted sum becomes its field, decided once per problem.

    With a row's running sums over its keys, shifted by $M$ (a running maximum of the scores),
    $A = \sum_j e^{a_{ij} - M} V x_j$ and $L = \sum_j e^{a_{ij} - M}$, and for the positional
    normaliser $L_b = \sum_j m_j e^{b_{ij} - M_b}$:

    - SA: $v_i = A / L$;
    - USA: $v_i = A e^{M}$;
    - USA, position-normalised ([`PositionNormalized`][meanfield.kernel.PositionNormalized]):
      $v_i = A e^{M - M_b} / L_b$.

    A row that sees no key gets a zero field under all three.
    """

    usa: bool = eqx.field(static=True)
    positional: bool = eqx.field(static=True)

    @classmethod
    def of(cls, form: str, mask: AbstractMask) -> Normaliser:
        """The normaliser of ``form`` ("SA" or "USA", checked here) under ``mask``."""
        check_form(form)
        return cls(usa=form == "USA", positional=form == "USA" and position_normalized(mask))

    @property
    def form(self) -> str:
        return "USA" if self.usa else "SA"

    def finish(self, acc, total, shift, pos_total=None, pos_shift=None, exp=jnp.exp):
        """The field from the sums (class docstring): ``acc`` (..., rows, d), the others (..., rows);
        ``exp`` is the exponential of the units the sums are in (``jnp.exp2`` in the Pallas kernel)."""
        if self.positional:
            s = jnp.where((shift > -jnp.inf) & (pos_shift > -jnp.inf), shift - pos_shift, 0.0)
            return acc * (exp(s) / jnp.where(pos_total > 0, pos_total, 1.0))[..., None]
        if self.usa:
            return acc * exp(jnp.where(shift > -jnp.inf, shift, 0.0))[..., None]
        return acc / jnp.where(total > 0, total, 1.0)[..., None]


class Own(eqx.Module):
    """Each query row's own (parallel) prompt key: k (hk, rows, d), v (hv, rows, dv), log mass (rows,)."""

    k: Array
    v: Array
    logm: Array


def finite(m):
    """Row maxima with -inf (fully masked so far) replaced by the most negative finite number, so
    e^{s - m} = 0 there. A ``jnp.maximum``, not a ``where``: XLA:CPU keeps the GEMM, exp and
    row sums in one fused kernel around it (a select splits the fusion; 4-9x slower measured
    under vmap, jax 0.10)."""
    return jnp.maximum(m, jnp.finfo(m.dtype).min)


class Problem(eqx.Module):
    """Everything a backend reads for one field evaluation (module docstring).

    Attributes:
        q: projected queries of the rows to evaluate, (hq, rows, d), hq in {1, heads}.
        k: projected keys, (hk, M, d); v: projected values, (hv, M, dv).
        qs: the rows' slots (indices into the tokens, positions relative to the smallest token
            position, features z); ks: the keys' slots.
        mass: key masses (M,); free: prompt keys that bypass the mask (M,).
        beta: inverse temperatures, (hb, 1, 1).
        mask: the position coupling; normaliser: SA, USA or USA position-normalised.
        heads: number of heads; precision: score precision ("highest", "tf32", "bf16").
        n_prompt: prompt keys (the last ``n_prompt`` keys); own: each row's parallel prompt.
        raw: the keys before the K and V projections (M, d), ``None`` under a positional encoding;
        K, V: the key and value matrices (heads or 1, d, d) or ``None`` (identity), for
            [`folded`][meanfield.kernel.problem.Problem.folded].
    """

    q: Array
    k: Array
    v: Array
    qs: Slots
    ks: Slots
    mass: Array
    free: Array
    beta: Array
    mask: AbstractMask
    normaliser: Normaliser
    K: Array | None
    V: Array | None
    heads: int = eqx.field(static=True)
    precision: str = eqx.field(static=True)
    n_prompt: int = eqx.field(static=True)
    own: Own | None = None
    raw: Array | None = None

    @property
    def rows(self) -> int:
        return self.q.shape[1]

    @property
    def proj_precision(self):
        """Q, K, V projections and the output mixing: full precision under ``"highest"`` (on a GPU
        XLA's float32 default is TF32), the backend's default otherwise."""
        return proj_precision(self.precision)

    # ------------------------------------------------------------------ scores
    def scores(self, q, qs, ks=None, free=None, logm=None, k=None):
        """a_ij = ⟨beta q_i, k_j⟩ + b(z_i, z_j) [+ log m_j], shape (h, nq, nk), for query rows
        ``q``/``qs`` against the keys (all of them unless ``k``, ``ks``, ``free`` give a tile)."""
        k = self.k if k is None else k
        ks = self.ks if ks is None else ks
        free = self.free if free is None else free
        bias = self.mask.bias(qs, ks, self.heads)
        bias = jnp.where(free[None, None, :], 0.0, bias)
        # contracting the last axes directly (no transposed copy of the keys: one XLA:CPU kernel
        # fewer, +5-20 % at N = 256 measured); "..." broadcasts one shared head against h
        if self.precision == "bf16":
            s = jnp.einsum(
                "...id,...jd->...ij",
                (self.beta * q).astype(jnp.bfloat16),
                k.astype(jnp.bfloat16),
                preferred_element_type=q.dtype,
            )
        else:
            prec = (
                jax.lax.Precision.HIGHEST
                if self.precision == "highest"
                else jax.lax.Precision.DEFAULT
            )
            s = jnp.einsum("...id,...jd->...ij", self.beta * q, k, precision=prec)
        if not isinstance(self.mask, Full):
            s = s + bias
        return s if logm is None else s + logm

    def own_scores(self, q, own):
        """beta ⟨q_i, k_own_i⟩ + log w_i, shape (h, rows)."""
        return jnp.sum((self.beta * q) * own.k, axis=-1) + own.logm

    def position_logw(self, qs, ks=None, free=None, logm=None):
        """log(m_j e^{b_ij}): the positional log-weights that
        [`PositionNormalized`][meanfield.kernel.PositionNormalized] normalises per row (prompt
        keys that bypass the mask count with b = 0), shape (h, nq, nk)."""
        ks = self.ks if ks is None else ks
        free = self.free if free is None else free
        logm = jnp.log(self.mass) if logm is None else logm
        bias = self.mask.bias(qs, ks, self.heads)
        return jnp.where(free[None, None, :], 0.0, bias) + logm

    def weights(self):
        """The attention matrix of the rows (h, rows, M [+ 1 with parallel prompts]), through
        [`Normaliser.finish`][meanfield.kernel.problem.Normaliser.finish]."""
        s = self.scores(self.q, self.qs, logm=jnp.log(self.mass))
        if self.own is not None:  # one more key column: each row's own prompt
            so = jnp.broadcast_to(self.own_scores(self.q, self.own), s.shape[:-1])
            s = jnp.concatenate([s, so[..., None]], axis=-1)
        nrm = self.normaliser
        if nrm.positional:
            b = self.position_logw(self.qs)
            if self.own is not None:
                own_b = jnp.broadcast_to(self.own.logm[None, :, None], b.shape[:-1] + (1,))
                b = jnp.concatenate([b, own_b], axis=-1)
            bmax = finite(jnp.max(b, axis=-1))
            return nrm.finish(
                jnp.exp(s - bmax[..., None]),
                None,
                bmax,
                jnp.sum(jnp.exp(b - bmax[..., None]), -1),
                bmax,
            )
        if nrm.usa:
            return nrm.finish(jnp.exp(s), None, jnp.zeros(s.shape[:-1], s.dtype))
        smax = jnp.max(s, axis=-1)
        smax = jnp.where(jnp.isfinite(smax), smax, 0.0)
        w = jnp.exp(s - smax[..., None])
        return nrm.finish(w, jnp.sum(w, axis=-1), smax)

    # ------------------------------------------------------------------ folding
    def folded(self):
        """(q (H, rows, d) with beta folded in, keys (Hk, M, d), values (Hv, M, dv), V or None) for
        kernels that apply the heads themselves. With K or V given, keys and values are the raw
        tokens, one copy for every head: ⟨Q_h x_i, K_h x_j⟩ = ⟨K_h^T Q_h x_i, x_j⟩ folds K into the
        queries, and V_h (returned) is applied to each row's weighted sum of raw tokens."""
        q = self.beta * self.q
        vmat = None
        if self.raw is not None and (self.K is not None or self.V is not None):
            if self.K is not None:
                q = jnp.matmul(
                    q, self.K.astype(q.dtype), precision=self.proj_precision
                )  # q_d <- sum_e q_e K_ed
            k = v = self.raw[None]
            vmat = None if self.V is None else self.V.astype(q.dtype)
        else:
            k, v = self.k, self.v
        return jnp.broadcast_to(q, (self.heads,) + q.shape[1:]), k, v, vmat


def proj_precision(precision: str):
    """The matmul precision of projections under a score precision (see ``Problem.proj_precision``)."""
    return jax.lax.Precision.HIGHEST if precision == "highest" else jax.lax.Precision.DEFAULT
