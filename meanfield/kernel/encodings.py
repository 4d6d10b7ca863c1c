r"""Positional encodings: auxiliary variables that enter the attention but never move.

Tables (the per-token z_i, to put in ``TokenAux(z=...)``):

* ``sinusoidal(pos, dim, base)``: z_{i,2k} = sin(pos_i w_k), z_{i,2k+1} = cos(pos_i w_k),
  w_k = base^{-2k/dim} (Vaswani et al.);
* ``random_fourier(key, pos, dim, sigma)``: z_i = sqrt(2/dim) cos(w pos_i + b), w ~ N(0, sigma^2),
  b ~ U[0, 2 pi);
* ``gaussian(key, n, dim, sigma)``: i.i.d. N(0, sigma^2 / dim) vectors;
* learned: any (N, dz) table the user passes.

Three ways z can enter (the ``coupling`` of the kernel):

* concatenated channel, ``ZBias(A, scale)`` (a mask): the score of the token [x; z] with a
  block-diagonal Q^T K = diag(beta Q^T K, A) gains b_ij = scale ⟨A z_i, z_j⟩;
* additive, ``Attention(pe=AdditivePE(scale, U))``: queries, keys (and values) use
  y = x + scale U z instead of x;
* rotary, ``Attention(pe=RoPE(base, scale))``: Q x_i and K x_j are rotated in the planes
  (2k, 2k+1) by the angles scale * pos * base^{-2k/d}, so that the score
  ⟨R(p_i) Q x_i, R(p_j) K x_j⟩ = ⟨Q x_i, R(p_j - p_i) K x_j⟩ depends only on p_j - p_i.

``scale = 0`` switches each coupling off exactly (the plain engine is recovered).
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp

from .._errors import check_param, param_fault, require
from .._types import Array, ArrayLike, Float, PRNGKeyArray, Real
from .masks import AbstractMask


def sinusoidal(
    pos: Real[ArrayLike, " n"], dim: int, base: float = 10000.0
) -> Float[Array, "n {dim}"]:
    """Sinusoidal table, shape (N, dim) (dim even)."""
    require(dim % 2 == 0 and dim > 0, f"sinusoidal: dim must be a positive even integer, got {dim}")
    pos = jnp.asarray(pos, dtype=float)
    w = base ** (-jnp.arange(0, dim, 2, dtype=pos.dtype) / dim)
    ang = pos[:, None] * w[None, :]
    return jnp.stack([jnp.sin(ang), jnp.cos(ang)], axis=-1).reshape(pos.shape[0], dim)


def random_fourier(
    key: PRNGKeyArray, pos: Real[ArrayLike, " n"], dim: int, sigma: float = 1.0
) -> Float[Array, "n {dim}"]:
    """Random Fourier features of the position, shape (N, dim)."""
    pos = jnp.asarray(pos, dtype=float)
    kw, kb = jax.random.split(key)
    w = sigma * jax.random.normal(kw, (dim,), pos.dtype)
    b = jax.random.uniform(kb, (dim,), pos.dtype, 0.0, 2 * jnp.pi)
    return jnp.sqrt(2.0 / dim) * jnp.cos(pos[:, None] * w[None, :] + b[None, :])


def gaussian(key: PRNGKeyArray, n: int, dim: int, sigma: float = 1.0) -> Float[Array, "{n} {dim}"]:
    """I.i.d. Gaussian vectors N(0, sigma^2 I / dim), shape (n, dim)."""
    return sigma * jax.random.normal(key, (n, dim), dtype=float) / jnp.sqrt(dim)


class ZBias(AbstractMask):
    """Concatenated-channel coupling b_ij = scale ⟨A z_i, z_j⟩ (A = I if None)."""

    A: Array | None = None
    scale: Array = eqx.field(default_factory=lambda: jnp.asarray(1.0), converter=jnp.asarray)

    def __check_init__(self):
        check_param("ZBias: A", self.A)
        check_param("ZBias: scale", self.scale)

    def parameter_fault(self):
        return param_fault(self.A) | param_fault(self.scale)

    def bias(self, q, k, heads):
        require(
            q.z is not None and k.z is not None,
            "ZBias needs auxiliary variables: pass aux=TokenAux(..., z=...)",
        )
        zq = q.z if self.A is None else q.z @ self.A.astype(q.z.dtype).T
        return (self.scale.astype(q.pos.dtype) * (zq @ k.z.T))[None]

    def validate(self, n_queries, n_keys, heads):
        pass


class AbstractPE(eqx.Module):
    """How auxiliary variables modify the kernel's inputs (additive) or projections (rotary)."""

    @abc.abstractmethod
    def inputs(self, x, keys, qs, ks):
        """(queries, keys, values) inputs of the projections, from the tokens and key tokens."""

    @abc.abstractmethod
    def rotate(self, q, k, qs, ks):
        """(q, k) after the projections (a rotation for RoPE, the identity otherwise)."""


class AdditivePE(AbstractPE):
    """y = x + scale U z for queries and keys (and values if ``values``); U = I if None
    (then dz must equal d)."""

    scale: Array = eqx.field(default_factory=lambda: jnp.asarray(1.0), converter=jnp.asarray)
    U: Array | None = None
    values: bool = eqx.field(default=True, static=True)

    def __check_init__(self):
        check_param("AdditivePE: scale", self.scale)
        check_param("AdditivePE: U", self.U)

    def parameter_fault(self):
        return param_fault(self.scale) | param_fault(self.U)

    def inputs(self, x, keys, qs, ks):
        require(
            qs.z is not None, "AdditivePE needs auxiliary variables: pass aux=TokenAux(..., z=...)"
        )
        dt = x.dtype

        def add(y, z):
            uz = z if self.U is None else z @ self.U.astype(dt).T
            require(
                uz.shape[-1] == y.shape[-1],
                f"AdditivePE: U z has dimension {uz.shape[-1]}, tokens have {y.shape[-1]}",
            )
            return y + self.scale.astype(dt) * uz

        xq, xk = add(x, qs.z), add(keys, ks.z)
        return xq, xk, (xk if self.values else keys)

    def rotate(self, q, k, qs, ks):
        return q, k


class RoPE(AbstractPE):
    """Rotary position embedding of Q x and K x (d even); angles scale * pos * base^{-2k/d}."""

    base: float = eqx.field(default=10000.0, static=True)
    scale: Array = eqx.field(default_factory=lambda: jnp.asarray(1.0), converter=jnp.asarray)

    def __check_init__(self):
        check_param("RoPE: base", self.base, lo=0, lo_open=True)
        check_param("RoPE: scale", self.scale)

    def parameter_fault(self):
        return param_fault(self.scale)

    def inputs(self, x, keys, qs, ks):
        return x, keys, keys

    def rotate(self, q, k, qs, ks):
        return rope_rotate(q, qs.pos, self.base, self.scale), rope_rotate(
            k, ks.pos, self.base, self.scale
        )


def rope_rotate(
    v: Float[Array, "*batch n d"], pos: Real[ArrayLike, " n"], base=10000.0, scale=1.0
) -> Float[Array, "*batch n d"]:
    """Rotate the last axis of ``v`` (..., N, d) in planes (2k, 2k+1) by scale*pos*base^{-2k/d}."""
    d = v.shape[-1]
    require(d % 2 == 0, f"RoPE needs an even dimension, got d = {d}")
    theta = jnp.asarray(base, v.dtype) ** (-jnp.arange(0, d, 2, dtype=v.dtype) / d)
    ang = jnp.asarray(scale, v.dtype) * pos.astype(v.dtype)[:, None] * theta[None, :]
    c, s = jnp.cos(ang), jnp.sin(ang)
    ve, vo = v[..., 0::2], v[..., 1::2]
    return jnp.stack([ve * c - vo * s, ve * s + vo * c], axis=-1).reshape(v.shape)
