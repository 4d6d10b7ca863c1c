r"""Collapse observables of a token cloud.

Every function takes a cloud ``x`` of shape (N, d) *or* any stack of clouds (..., N, d), e.g.
a saved trajectory (T, N, d) or a batch of trajectories (B, T, N, d), and returns one value
per cloud (shape ``x.shape[:-2]``). All are jit/vmap-able.

Definitions (m_i the token masses, default 1/N):

* ``energy``: E_beta = (1 / (2 beta)) sum_ij m_i m_j exp(beta <x_i, x_j>)
  (= (1/(2 beta N^2)) sum_ij e^{beta <x_i,x_j>} for uniform masses; USA with Q=K=V=I is its
  gradient ascent on the sphere). Maximal (e^beta / (2 beta)) at a single cluster.
* ``diameter``: max_ij |x_i - x_j|.
* ``min_cosine`` / ``mean_cosine``: min and mean over i != j of <x_i, x_j> / (|x_i| |x_j|).
* ``n_clusters``: number of connected components of the graph i ~ j iff |x_i - x_j| < tol.
* ``rank_collapse``: ||X - 1 xbar^T||_F / ||X||_F with xbar the mean token (0 at collapse).
* ``effective_rank``: exp(entropy of the normalised singular values of X) (Roy & Vetterli),
  between 1 (rank one) and min(N, d).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ._errors import require


def _per_cloud(fn):
    """Lift fn(x: (N, d), ...) -> scalar to inputs (..., N, d) by flattening and vmapping."""

    @functools.wraps(fn)
    def wrapped(x, *args, **kwargs):
        x = jnp.asarray(x)
        require(x.ndim >= 2, f"x must have shape (..., N, d), got {x.shape}")
        lead = x.shape[:-2]
        flat = x.reshape((-1,) + x.shape[-2:])
        out = jax.vmap(lambda c: fn(c, *args, **kwargs))(flat)
        return out.reshape(lead + out.shape[1:])

    return wrapped


def _sq_dists(x):
    """Exact squared distances |x_i - x_j|^2 from differences (no Gram cancellation)."""
    return jax.lax.map(lambda xi: jnp.sum((x - xi) ** 2, axis=-1), x, batch_size=256)


def _cosines(x):
    u = x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    return u @ u.T


@_per_cloud
def energy(x, beta, mass=None):
    """Interaction energy E_beta = (1/(2 beta)) sum_ij m_i m_j exp(beta <x_i, x_j>)."""
    n = x.shape[0]
    beta = jnp.asarray(beta, x.dtype)
    m = jnp.full((n,), 1.0 / n, x.dtype) if mass is None else jnp.asarray(mass, x.dtype)
    return m @ jnp.exp(beta * (x @ x.T)) @ m / (2 * beta)


@_per_cloud
def diameter(x):
    """max_ij |x_i - x_j|."""
    return jnp.sqrt(jnp.max(_sq_dists(x)))


@_per_cloud
def min_cosine(x):
    """min over i != j of the cosine between x_i and x_j (1 at full collapse)."""
    c = _cosines(x)
    n = x.shape[0]
    return jnp.min(jnp.where(jnp.eye(n, dtype=bool), jnp.inf, c)) if n > 1 else jnp.ones((), x.dtype)


@_per_cloud
def mean_cosine(x):
    """Mean over i != j of the cosine between x_i and x_j."""
    c = _cosines(x)
    n = x.shape[0]
    if n == 1:
        return jnp.ones((), x.dtype)
    return (jnp.sum(c) - jnp.trace(c)) / (n * (n - 1))


@_per_cloud
def n_clusters(x, tol=1e-2):
    """Connected components of the graph with edges |x_i - x_j| < tol.

    Label propagation (each token takes the smallest label among its neighbours, with pointer
    jumping) run to a fixed point in a ``while_loop``; the count is the number of roots.
    """
    n = x.shape[0]
    adj = _sq_dists(x) < jnp.asarray(tol, x.dtype) ** 2
    labels0 = jnp.arange(n)

    def step(labels):
        new = jnp.min(jnp.where(adj, labels[None, :], n), axis=1)
        return new[new]

    def cond(state):
        labels, prev = state
        return jnp.any(labels != prev)

    def body(state):
        labels, _ = state
        return step(labels), labels

    labels, _ = jax.lax.while_loop(cond, body, (step(labels0), labels0))
    return jnp.sum(labels == labels0)


@_per_cloud
def rank_collapse(x):
    """||X - 1 xbar^T||_F / ||X||_F (Dong et al.'s residual; 0 when all tokens coincide)."""
    return jnp.linalg.norm(x - x.mean(axis=0)) / jnp.linalg.norm(x)


@_per_cloud
def effective_rank(x):
    """exp(-sum p_k log p_k) with p_k = sigma_k / sum sigma (Roy & Vetterli 2007)."""
    s = jnp.linalg.svd(x, compute_uv=False)
    p = s / jnp.sum(s)
    return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)))


def summary(x, beta, tol=1e-2) -> dict:
    """All observables of a cloud or trajectory, as a dict of arrays shaped x.shape[:-2]."""
    return {
        "energy": energy(x, beta),
        "diameter": diameter(x),
        "min_cosine": min_cosine(x),
        "mean_cosine": mean_cosine(x),
        "n_clusters": n_clusters(x, tol),
        "rank_collapse": rank_collapse(x),
        "effective_rank": effective_rank(x),
    }
