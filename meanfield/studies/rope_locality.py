r"""RoPE at long context: Monte-Carlo estimates of its two failures (Du et al. 2026).

Scores. With rotary embeddings (the engine's [`meanfield.kernel.rope_rotate`][meanfield.kernel.rope_rotate], frequencies
theta_c = base^{-2c/d}, c = 0..d/2-1) a query at position i and a key at position j score

    s(q, k, Delta) = ⟨R(i) q, R(j) k⟩ = sum_c Re( q_c conj(k_c) e^{-i Delta theta_c} ),   Delta = i - j,

with q_c = q_{2c} + i q_{2c+1} the c-th rotation plane: the score depends on the distance only.

Query/key distribution ([`QKDistribution`][meanfield.studies.rope_locality.QKDistribution]): q = signal * u + g / sqrt(d), k = signal * u +
g' / sqrt(d), g, g' standard Gaussian, u a fixed unit vector (default: equal energy in every
plane). ``signal`` = 0 makes q and k independent and centred, then every ordering is a fair coin by
symmetry (k -> -k); ``signal`` > 0 is a content similarity that RoPE's rotation can keep (short
distances, small angles) or scramble (long distances).

Failures (each an indicator averaged over independent samples; the estimate is the sample mean
with a Wilson score interval, [`Estimate`][meanfield.studies.rope_locality.Estimate]):

* locality: two distances 0 <= Delta_1 < Delta_2 < L drawn uniformly; success = the same key scores
  higher nearer, s(q, k, Delta_1) > s(q, k, Delta_2). ``locality_probability`` estimates
  P(success); RoPE has a locality bias when it is well above 1/2 and loses it when -> 1/2.
* token consistency: two keys k1, k2 and two distances Delta, Delta' uniform in [0, L); failure =
  the ordering of s(q, k1, .) and s(q, k2, .) flips between Delta and Delta'.
  ``consistency_flip_probability`` estimates P(flip); 1/2 means no consistent token relevance.

Both tend to 1/2 as L grows (Du et al.): once L theta_c >> 1 for most planes, the phases
Delta theta_c are spread over the circle and the sign of a score difference is a coin flip. A
larger base slows the low frequencies (helps token consistency) and makes distant positions look
alike (hurts locality): [`locality_probability`][meanfield.studies.rope_locality.locality_probability] vs [`consistency_flip_probability`][meanfield.studies.rope_locality.consistency_flip_probability]
over bases is the trade-off curve.

Score-preserving moves ([`score_preserving_moves`][meanfield.studies.rope_locality.score_preserving_moves], [`token_swaps`][meanfield.studies.rope_locality.token_swaps]): positions Delta' far
from Delta (or another key k' at some Delta') with |s - s(q, k, Delta)| <= tol: the score cannot tell
those positions (tokens) apart.

Engine versions (multi-head, multi-layer, any Q/K): [`engine_locality`][meanfield.studies.rope_locality.engine_locality] measures the same two
properties on the attention of a ``meanfield.Attention`` with ``pe=RoPE(base)`` after H layers of
the engine, on random token sequences (see its docstring).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._errors import require
from .._types import ArrayLike, Real
from ..geometry import PostLN, normalise
from ..kernel.encodings import rope_rotate
from ..particles import layers


class Estimate(NamedTuple):
    """A Monte-Carlo probability: mean of ``n`` indicators, Wilson 95 % interval [lo, hi]."""

    p: float
    lo: float
    hi: float
    n: int

    @property
    def se(self) -> float:
        return float(np.sqrt(max(self.p * (1 - self.p), 1e-300) / self.n))


def wilson(successes, n, z: float = 1.959963984540054) -> Estimate:
    """Wilson score interval for a binomial proportion (95 % by default)."""
    successes, n = float(successes), int(n)
    require(n > 0, "wilson: need n > 0 samples")
    p = successes / n
    den = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / den
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), n)


def frequencies(d: int, base: Real[ArrayLike, ""], dtype=float):
    """theta_c = base^{-2c/d}, c = 0..d/2-1 (the engine's RoPE)."""
    require(d % 2 == 0 and d > 0, f"d must be a positive even integer, got {d}")
    return jnp.asarray(base, dtype) ** (-jnp.arange(0, d, 2, dtype=dtype) / d)


def rope_score(q, k, delta, base: Real[ArrayLike, ""] = 10000.0):
    """s(q, k, Delta) = ⟨R(Delta) q, R(0) k⟩ through the engine's rotation (q at position Delta,
    k at 0); q, k: (..., d), delta: (...) broadcast against them."""
    q, k = jnp.asarray(q), jnp.asarray(k)
    delta = jnp.asarray(delta, q.dtype)
    shape = jnp.broadcast_shapes(q.shape[:-1], k.shape[:-1], delta.shape)
    qb = jnp.broadcast_to(q, shape + q.shape[-1:]).reshape(-1, q.shape[-1])
    kb = jnp.broadcast_to(k, shape + k.shape[-1:]).reshape(-1, k.shape[-1])
    db = jnp.broadcast_to(delta, shape).reshape(-1)
    rq = rope_rotate(qb, db, base)
    return jnp.sum(rq * kb, axis=-1).reshape(shape)


def rope_score_complex(q, k, delta, base: Real[ArrayLike, ""] = 10000.0):
    """The same score from the complex formula sum_c Re(q_c conj(k_c) e^{i Delta theta_c})
    (independent of ``rope_rotate``; used to check it)."""
    q, k = jnp.asarray(q), jnp.asarray(k)
    th = frequencies(q.shape[-1], base, q.dtype)
    qc = q[..., 0::2] + 1j * q[..., 1::2]
    kc = k[..., 0::2] + 1j * k[..., 1::2]
    ph = jnp.exp(1j * jnp.asarray(delta, q.dtype)[..., None] * th)
    return jnp.sum(jnp.real(qc * ph * jnp.conj(kc)), axis=-1)


class QKDistribution(eqx.Module):
    """q = signal u + noise g / sqrt(d), k = signal u + noise g' / sqrt(d) (see module
    docstring); ``noise`` = 0 gives q = k = signal u (a deterministic case with closed forms)."""

    d: int = eqx.field(static=True)
    signal: float = 1.0
    noise: float = 1.0
    u: jax.Array | None = None

    def direction(self, dtype=float):
        if self.u is not None:
            u = jnp.asarray(self.u, dtype)
            return u / jnp.linalg.norm(u)
        return jnp.full((self.d,), 1.0 / np.sqrt(self.d), dtype)

    def sample(self, key, n: int, dtype=float):
        """(n, d) vectors of this distribution."""
        g = jax.random.normal(key, (n, self.d), dtype)
        return self.signal * self.direction(dtype) + self.noise * g / np.sqrt(self.d)


def _distances(key, n, length, dtype):
    """n pairs 0 <= Delta_1 < Delta_2 < L, uniform over the L (L - 1) / 2 pairs."""
    a = jax.random.randint(key, (n, 2), 0, length)
    ka = jax.random.fold_in(key, 1)
    b = jax.random.randint(
        ka, (n,), 1, length
    )  # resample equal pairs deterministically: (a0 + b) mod L
    a1 = jnp.where(a[:, 0] == a[:, 1], (a[:, 0] + b) % length, a[:, 1])
    lo, hi = jnp.minimum(a[:, 0], a1), jnp.maximum(a[:, 0], a1)
    return lo.astype(dtype), hi.astype(dtype)


def _check(length, n_samples, base):
    require(int(length) >= 2, f"length must be >= 2, got {length}")
    require(int(n_samples) >= 1, f"n_samples must be >= 1, got {n_samples}")
    require(float(base) > 1, f"base must be > 1, got {base}")


def locality_probability(
    key,
    length: int,
    dist: QKDistribution,
    base: Real[ArrayLike, ""] = 10000.0,
    n_samples: int = 100_000,
    *,
    batch: int = 65_536,
    dtype=jnp.float32,
) -> Estimate:
    """P(s(q, k, Delta_1) > s(q, k, Delta_2)) for Delta_1 < Delta_2 uniform in [0, L) (see module
    docstring), from ``n_samples`` (rounded up to whole batches) independent draws; compiled once
    per (distribution, batch, dtype): new lengths and bases do not recompile."""
    _check(length, n_samples, base)
    return _run(_locality_count, key, length, base, dist, n_samples, batch, dtype)


def consistency_flip_probability(
    key,
    length: int,
    dist: QKDistribution,
    base: Real[ArrayLike, ""] = 10000.0,
    n_samples: int = 100_000,
    *,
    batch: int = 65_536,
    dtype=jnp.float32,
) -> Estimate:
    """P(the ordering of s(q, k1, .) and s(q, k2, .) flips between two distances Delta, Delta'
    uniform in [0, L)) (see module docstring)."""
    _check(length, n_samples, base)
    return _run(_flip_count, key, length, base, dist, n_samples, batch, dtype)


@eqx.filter_jit
def _locality_count(k, length, base, dist, batch, dtype):
    kq, kk, kd = jax.random.split(k, 3)
    q, kv = dist.sample(kq, batch, dtype), dist.sample(kk, batch, dtype)
    d1, d2 = _distances(kd, batch, length, dtype)
    return jnp.sum(rope_score(q, kv, d1, base) > rope_score(q, kv, d2, base))


@eqx.filter_jit
def _flip_count(k, length, base, dist, batch, dtype):
    kq, k1, k2, kd = jax.random.split(k, 4)
    q = dist.sample(kq, batch, dtype)
    a, b = dist.sample(k1, batch, dtype), dist.sample(k2, batch, dtype)
    dd = jax.random.randint(kd, (2, batch), 0, length).astype(dtype)
    before = rope_score(q, a, dd[0], base) > rope_score(q, b, dd[0], base)
    after = rope_score(q, a, dd[1], base) > rope_score(q, b, dd[1], base)
    return jnp.sum(before != after)


def _run(count, key, length, base, dist, n_samples, batch, dtype):
    batch = min(int(batch), int(n_samples))
    rounds = -(-int(n_samples) // batch)
    length, base = jnp.asarray(length), jnp.asarray(base, dtype)
    hits = sum(
        int(count(k, length, base, dist, batch, dtype)) for k in jax.random.split(key, rounds)
    )
    return wilson(hits, rounds * batch)


# ------------------------------------------------------------------- score-preserving moves
def score_preserving_moves(
    q,
    k,
    delta: int,
    length: int,
    base: Real[ArrayLike, ""] = 10000.0,
    *,
    tol: float = 1e-3,
    min_shift: int = 1,
):
    """Distances Delta' in [0, L) with |Delta' - Delta| >= ``min_shift`` whose score equals
    s(q, k, Delta) to ``tol`` (absolute): moving the key there leaves the score unchanged.
    Returns (distances (m,), their scores)."""
    require(0 <= delta < length, f"delta must lie in [0, length), got {delta}")
    ds = jnp.arange(length, dtype=jnp.asarray(q).dtype)
    s = rope_score(q, k, ds, base)
    target = s[delta]
    ok = (jnp.abs(s - target) <= tol) & (jnp.abs(ds - delta) >= min_shift)
    idx = np.flatnonzero(np.asarray(ok))
    return idx, np.asarray(s)[idx]


def token_swaps(
    q, k, delta: int, pool, length: int, base: Real[ArrayLike, ""] = 10000.0, *, tol: float = 1e-3
):
    """Pairs (m, Delta') such that the key pool[m] (another token) at distance Delta' scores
    s(q, k, Delta) to ``tol``: replacing the key by that token and moving it leaves the score
    unchanged. Returns (pool indices (r,), distances (r,))."""
    require(0 <= delta < length, f"delta must lie in [0, length), got {delta}")
    pool = jnp.asarray(pool)
    target = rope_score(q, k, delta, base)
    ds = jnp.arange(length, dtype=pool.dtype)
    s = rope_score(q[None, None], pool[:, None], ds[None, :], base)  # (M, L)
    m, dpos = np.nonzero(np.asarray(jnp.abs(s - target) <= tol))
    return m, dpos


def unchanged_fraction(
    key,
    length: int,
    dist: QKDistribution,
    base: Real[ArrayLike, ""] = 10000.0,
    *,
    tol: float = 1e-2,
    min_shift: int | None = None,
    n_samples: int = 512,
    dtype=jnp.float32,
) -> Estimate:
    """Fraction of random (q, k, Delta) for which some distance at least ``min_shift`` (default
    L / 4) away gives the same score to ``tol`` x the score scale (the std of s over
    distances): a position the score cannot tell apart."""
    _check(length, n_samples, base)
    shift = max(1, length // 4) if min_shift is None else int(min_shift)

    @jax.jit
    def one(k):
        kq, kk, kd = jax.random.split(k, 3)
        q, kv = dist.sample(kq, 1, dtype)[0], dist.sample(kk, 1, dtype)[0]
        delta = jax.random.randint(kd, (), 0, length)
        ds = jnp.arange(length, dtype=dtype)
        s = rope_score(q, kv, ds, base)
        scale = jnp.std(s) + 1e-30
        far = jnp.abs(ds - delta) >= shift
        return jnp.any(far & (jnp.abs(s - s[delta]) <= tol * scale))

    hits = jnp.sum(jax.vmap(one)(jax.random.split(key, n_samples)))
    return wilson(int(hits), n_samples)


# ------------------------------------------------------------------------ engine versions
def engine_locality(
    attn,
    key,
    length: int,
    *,
    d: int,
    signal: float = 1.0,
    n_layers: int = 0,
    h: float = 1.0,
    n_sequences: int = 8,
    n_triples: int = 4096,
) -> tuple[Estimate, Estimate]:
    """Locality and token consistency of the engine's own attention (any heads, Q, K; RoPE
    through ``attn.pe``), on ``n_sequences`` random sequences of ``length`` tokens
    x_i = normalise(signal u + g_i / sqrt(d)) after ``n_layers`` post-LN layers of the engine
    (0: the input layer). With A the causal attention of the last token i = L - 1 (heads
    averaged) and ``n_triples`` random key pairs j1 < j2 < i per sequence:

    * locality = P(A_{i, j2} > A_{i, j1}) (the nearer key j2 wins);
    * consistency flip = P(the ordering of A_{i, j1}, A_{i, j2} differs from the ordering of the
      same pair without positional encoding (``attn.pe = None``): RoPE overturned the content
      ranking.

    Returns (locality, consistency_flip) estimates. Their Wilson intervals treat the triples as
    independent; triples of one sequence share its tokens, so the spread across seeds is larger
    (raise ``n_sequences`` for tight intervals)."""
    require(int(length) >= 3, f"length must be >= 3, got {length}")
    nope = dataclasses.replace(attn, pe=None)
    u = jnp.full((d,), 1.0 / np.sqrt(d))

    def one(k):
        kx, kt = jax.random.split(k)
        x = normalise(signal * u + jax.random.normal(kx, (length, d)) / np.sqrt(d))
        if n_layers > 0:
            x = layers(attn, x, n_layers, h=h, norm=PostLN()).xs[-1]
        a = jnp.mean(attn.weights(x), axis=0)[-1, :length]
        b = jnp.mean(nope.weights(x), axis=0)[-1, :length]
        j = jax.random.randint(kt, (2, n_triples), 0, length - 1)
        j1, j2 = jnp.minimum(j[0], j[1]), jnp.maximum(j[0], j[1])
        keep = j1 < j2
        near = jnp.sum(keep & (a[j2] > a[j1]))
        flip = jnp.sum(keep & ((a[j2] > a[j1]) != (b[j2] > b[j1])))
        return near, flip, jnp.sum(keep)

    near, flip, total = jax.jit(jax.vmap(one))(jax.random.split(key, n_sequences))
    n = int(total.sum())
    return wilson(int(near.sum()), n), wilson(int(flip.sum()), n)
