r"""Collapse observables of a token cloud.

Every function takes a cloud ``x`` of shape (N, d) *or* any stack of clouds (..., N, d), e.g.
a saved trajectory (T, N, d) or a batch of trajectories (B, T, N, d), and returns one value
per cloud (shape ``x.shape[:-2]``). All are jit/vmap-able.

Definitions (m_i the token masses, default 1/N):

* ``energy``: E_beta = (1 / (2 beta)) sum_ij m_i m_j exp(beta ⟨x_i, x_j⟩)
  (= (1/(2 beta N^2)) sum_ij e^{beta ⟨x_i,x_j⟩} for uniform masses; USA with Q=K=V=I is its
  gradient ascent on the sphere). Maximal (e^beta / (2 beta)) at a single cluster.
* ``diameter``: max_ij |x_i - x_j|.
* ``min_cosine`` / ``mean_cosine``: min and mean over i != j of ⟨x_i, x_j⟩ / (|x_i| |x_j|).
* ``n_clusters``: number of connected components of the graph i ~ j iff |x_i - x_j| < tol.
* ``rank_collapse``: ||X - 1 xbar^T||_F / ||X||_F with xbar the mean token (0 at collapse).
* ``effective_rank``: exp(entropy of the normalised singular values of X) (Roy & Vetterli),
  between 1 (rank one) and min(N, d).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ._errors import require
from ._types import Array, ArrayLike, Clouds, Float, PerCloud, PRNGKeyArray, Real, Shaped


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
def energy(
    x: Clouds,
    beta: Real[ArrayLike, ""],
    mass: Float[ArrayLike, "*#batch n"] | None = None,
    prompt: Float[ArrayLike, "n d"] | None = None,
    weight: Real[ArrayLike, "*#n"] = 1.0,
) -> PerCloud:
    r"""Interaction energy

    $$
    E_\beta(x) = \frac{1}{2\beta} \sum_{i,j} m_i m_j e^{\beta\langle x_i, x_j\rangle}
    + \frac{1}{\beta} \sum_i m_i\, \mathrm{weight}_i\, e^{\beta\langle x_i, p_i\rangle},
    $$

    the second term with parallel prompts ``prompt`` = p (N, d) only
    ([`meanfield.ParallelPrompt`][meanfield.kernel.ParallelPrompt]; ``weight`` a scalar or (N,)). With Q = K = V = I and mask
    Full the SA and USA flows never decrease it."""
    n = x.shape[0]
    beta = jnp.asarray(beta, x.dtype)
    m = jnp.full((n,), 1.0 / n, x.dtype) if mass is None else jnp.asarray(mass, x.dtype)
    e = m @ jnp.exp(beta * (x @ x.T)) @ m / (2 * beta)
    if prompt is not None:
        own = jnp.exp(beta * jnp.sum(x * jnp.asarray(prompt, x.dtype), axis=-1))
        e = e + jnp.sum(m * jnp.asarray(weight, x.dtype) * own) / beta
    return e


@_per_cloud
def diameter(x: Clouds) -> PerCloud:
    """max_ij |x_i - x_j|."""
    return jnp.sqrt(jnp.max(_sq_dists(x)))


@_per_cloud
def min_cosine(x: Clouds) -> PerCloud:
    """min over i != j of the cosine between x_i and x_j (1 at full collapse)."""
    c = _cosines(x)
    n = x.shape[0]
    return (
        jnp.min(jnp.where(jnp.eye(n, dtype=bool), jnp.inf, c)) if n > 1 else jnp.ones((), x.dtype)
    )


@_per_cloud
def mean_cosine(x: Clouds) -> PerCloud:
    """Mean over i != j of the cosine between x_i and x_j."""
    c = _cosines(x)
    n = x.shape[0]
    if n == 1:
        return jnp.ones((), x.dtype)
    return (jnp.sum(c) - jnp.trace(c)) / (n * (n - 1))


@_per_cloud
def n_clusters(x: Clouds, tol=1e-2) -> Shaped[Array, "*batch"]:
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
def rank_collapse(x: Clouds) -> PerCloud:
    """||X - 1 xbar^T||_F / ||X||_F (Dong et al.'s residual; 0 when all tokens coincide)."""
    return jnp.linalg.norm(x - x.mean(axis=0)) / jnp.linalg.norm(x)


@_per_cloud
def effective_rank(x: Clouds) -> PerCloud:
    """exp(-sum p_k log p_k) with p_k = sigma_k / sum sigma (Roy & Vetterli 2007)."""
    s = jnp.linalg.svd(x, compute_uv=False)
    p = s / jnp.sum(s)
    return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)))


def summary(x: Clouds, beta: Real[ArrayLike, ""], tol=1e-2) -> dict:
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


# ---------------------------------------------------------------- distances between measures
def _weights(n, w, dtype):
    return jnp.full((n,), 1.0 / n, dtype) if w is None else jnp.asarray(w, dtype) / jnp.sum(w)


@_per_cloud
def order_parameter(x: Clouds, mass: Float[ArrayLike, "*#batch n"] | None = None) -> PerCloud:
    r"""$R = \lVert \sum_i m_i x_i \rVert$ (weights ``mass``, default uniform): 0 for a cloud
    spread evenly over the sphere, 1 for a single point; the order parameter of the noisy phase
    transition (its density analogue is ``DensitySolution.order_parameter()``)."""
    m = _weights(x.shape[0], mass, x.dtype)
    return jnp.linalg.norm(m @ x)


@_per_cloud
def dirac_distance(x: Clouds, mass: Float[ArrayLike, "*#batch n"] | None = None) -> PerCloud:
    """W2 distance from the cloud (weights ``mass``, default uniform) to the nearest Dirac mass
    on the unit sphere. For unit tokens, sum_i m_i |x_i - c|^2 = 2 - 2 ⟨xbar, c⟩ is minimised
    over |c| = 1 by c = xbar / |xbar|, so W2 = sqrt(2 - 2 |xbar|) (xbar = sum_i m_i x_i);
    for general tokens the same algebra gives sqrt(sum m_i |x_i|^2 - 2 |xbar| + 1)."""
    m = _weights(x.shape[0], mass, x.dtype)
    xbar = m @ x
    val = m @ jnp.sum(x * x, axis=-1) - 2 * jnp.linalg.norm(xbar) + 1.0
    return jnp.sqrt(jnp.maximum(val, 0.0))


def wasserstein_1d(
    a: Real[ArrayLike, " na"],
    b: Real[ArrayLike, " nb"],
    wa: Real[ArrayLike, " na"] | None = None,
    wb: Real[ArrayLike, " nb"] | None = None,
    p: int = 2,
) -> Float[Array, ""]:
    """Exact W_p between weighted samples on the line: (int_0^1 |F^-1(u) - G^-1(u)|^p du)^(1/p),
    integrated exactly over the merged breakpoints of the two quantile functions."""
    a, b = jnp.asarray(a), jnp.asarray(b)
    wa, wb = _weights(a.shape[0], wa, a.dtype), _weights(b.shape[0], wb, b.dtype)
    ia, ib = jnp.argsort(a), jnp.argsort(b)
    a, wa, b, wb = a[ia], wa[ia], b[ib], wb[ib]
    ca, cb = jnp.cumsum(wa), jnp.cumsum(wb)
    u = jnp.sort(jnp.concatenate([ca, cb]))
    du = jnp.diff(jnp.concatenate([jnp.zeros(1, u.dtype), u]))
    mid = u - du / 2
    qa = a[jnp.clip(jnp.searchsorted(ca, mid), 0, a.shape[0] - 1)]
    qb = b[jnp.clip(jnp.searchsorted(cb, mid), 0, b.shape[0] - 1)]
    return jnp.sum(du * jnp.abs(qa - qb) ** p) ** (1.0 / p)


def circle_w1(
    theta_a: Real[ArrayLike, " na"],
    theta_b: Real[ArrayLike, " nb"],
    wa: Real[ArrayLike, " na"] | None = None,
    wb: Real[ArrayLike, " nb"] | None = None,
) -> Float[Array, ""]:
    """Exact W1 on the circle (geodesic distance, angles in radians):
    W1 = min_c int_0^{2 pi} |F(t) - G(t) - c| dt, attained at a weighted median of F - G."""
    ta = jnp.mod(jnp.asarray(theta_a), 2 * jnp.pi)
    tb = jnp.mod(jnp.asarray(theta_b), 2 * jnp.pi)
    wa, wb = _weights(ta.shape[0], wa, ta.dtype), _weights(tb.shape[0], wb, tb.dtype)
    t = jnp.concatenate([ta, tb])
    w = jnp.concatenate([wa, -wb])
    order = jnp.argsort(t)
    t, w = t[order], w[order]
    diff = jnp.cumsum(w)  # F - G on [t_k, t_{k+1})
    length = jnp.diff(jnp.concatenate([t, t[:1] + 2 * jnp.pi]))
    # weighted median of diff with weights length
    o = jnp.argsort(diff)
    cum = jnp.cumsum(length[o])
    c = diff[o][jnp.searchsorted(cum, cum[-1] / 2)]
    return jnp.sum(length * jnp.abs(diff - c))


def sliced_wasserstein(
    x: Real[ArrayLike, "nx d"],
    y: Real[ArrayLike, "ny d"],
    key: PRNGKeyArray,
    n_proj: int = 256,
    wx: Real[ArrayLike, " nx"] | None = None,
    wy: Real[ArrayLike, " ny"] | None = None,
    p: int = 2,
) -> Float[Array, ""]:
    """Sliced W_p between weighted clouds x (n, d) and y (m, d): the W_p of the 1-D projections
    on ``n_proj`` random unit directions, averaged in the p-th power (Monte Carlo over directions,
    exact in each direction)."""
    dirs = jax.random.normal(key, (n_proj, x.shape[-1]), x.dtype)
    dirs = dirs / jnp.linalg.norm(dirs, axis=-1, keepdims=True)
    per = jax.vmap(lambda u: wasserstein_1d(x @ u, y @ u, wx, wy, p) ** p)(dirs)
    return jnp.mean(per) ** (1.0 / p)


def mmd(
    x: Real[ArrayLike, "nx d"],
    y: Real[ArrayLike, "ny d"],
    sigma=0.5,
    wx: Real[ArrayLike, " nx"] | None = None,
    wy: Real[ArrayLike, " ny"] | None = None,
) -> Float[Array, ""]:
    """Maximum mean discrepancy with the Gaussian kernel exp(-|a-b|^2 / (2 sigma^2))
    (weighted V-statistic; >= 0, zero iff the two weighted clouds coincide as measures)."""
    wx, wy = _weights(x.shape[0], wx, x.dtype), _weights(y.shape[0], wy, y.dtype)

    def k(a, b):
        d2 = jnp.sum(a * a, -1)[:, None] + jnp.sum(b * b, -1)[None, :] - 2 * a @ b.T
        return jnp.exp(-jnp.maximum(d2, 0.0) / (2 * sigma**2))

    val = wx @ k(x, x) @ wx + wy @ k(y, y) @ wy - 2 * wx @ k(x, y) @ wy
    return jnp.sqrt(jnp.maximum(val, 0.0))


def plateaus(
    ts: Real[ArrayLike, " time"],
    values: Real[ArrayLike, " time"],
    *,
    min_decades: float = 0.5,
    rtol: float = 1e-3,
):
    """Metastable plateaus of a series on a log-time axis (NumPy post-processing).

    A plateau is a maximal run of saves (at t > 0) over which ``values`` stays within a relative
    band ``rtol`` of its first value (exactly constant for integer series such as cluster counts)
    and which lasts at least ``min_decades`` decades: log10(t_end / t_start) >= min_decades.
    Returns a list of ``(t_start, t_end, value)``.
    """
    ts, values = np.asarray(ts), np.asarray(values)
    keep = ts > 0
    ts, values = ts[keep], values[keep]
    out, start = [], 0
    for i in range(1, len(ts) + 1):
        ref = values[start]
        if i == len(ts) or abs(values[i] - ref) > rtol * max(abs(ref), 1e-300):
            if np.log10(ts[i - 1] / ts[start]) >= min_decades:
                out.append((float(ts[start]), float(ts[i - 1]), float(ref)))
            start = i
    return out
