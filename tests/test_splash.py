"""The TPU backend (jax's splash attention through augmented coordinates), in Pallas interpret mode
on the CPU, against the dense backend in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import meanfield as mf
from meanfield.kernel import Splash

F32 = jnp.float32
# "highest": content scores from three-part bf16 splits (six products, float32-accurate), P V from
# hi/lo splits: the issue-36 bound, 1e-5 relative (benchmarks/highest_precision.py: worst 7e-6)
TOL = 1e-5
MASKS = {
    "full": mf.Full(),
    "causal": mf.Causal(),
    "strict": mf.Causal(strict=True),
    "causal-alibi": mf.Causal() & mf.ALiBi(0.05),
    "strict-alibi": mf.Causal(strict=True) & mf.ALiBi(0.1),
    "two-sided-alibi": mf.ALiBi(0.05),
    "window": mf.Window(9.0),
    "causal-window-alibi": mf.Causal() & mf.Window(12.0) & mf.ALiBi(0.1),
    "pn-causal-alibi": mf.PositionNormalized(mf.Causal() & mf.ALiBi(0.05)),
    "pn-two-sided": mf.PositionNormalized(mf.ALiBi(0.05)),
    "pn-strict": mf.PositionNormalized(mf.Causal(strict=True) & mf.ALiBi(0.2)),
}


def _err(attn_kw, x, aux, heads_kw=None):
    heads_kw = heads_kw or {}
    f64 = lambda t: jax.tree.map(
        lambda a: (
            a.astype(jnp.float64)
            if isinstance(a, jax.Array) and jnp.issubdtype(a.dtype, jnp.floating)
            else a
        ),
        t,
    )  # noqa: E731
    ref = mf.Attention(**attn_kw, **f64(heads_kw))(x.astype(jnp.float64), f64(aux))
    out = mf.Attention(**attn_kw, **heads_kw, backend=Splash(128, 128))(x, aux)
    assert out.dtype == F32 and out.shape == ref.shape
    return float(jnp.max(jnp.abs(out - ref)) / jnp.max(jnp.abs(ref)))


@pytest.mark.slow
@pytest.mark.parametrize("form", ["SA", "USA"])
@pytest.mark.parametrize("mask", list(MASKS))
def test_splash_equals_dense(mask, form, key):
    """N = 200 (padded to the 128-blocks: padding excluded by segment ids), random masses,
    positions 0..N-1 given shuffled (the backend sorts them, and unsorts the field)."""
    n = 200
    kx, km, kp = jax.random.split(key, 3)
    x = mf.sphere_uniform(kx, n, 8, F32)
    mass = jax.random.uniform(km, (n,), F32, 0.5, 1.5) / n
    aux = mf.TokenAux(pos=jax.random.permutation(kp, n).astype(F32), mass=mass)
    assert _err(dict(beta=F32(2.0), mask=MASKS[mask], form=form), x, aux) < TOL


@pytest.mark.slow
@pytest.mark.parametrize("form", ["SA", "USA"])
def test_splash_heads_share_one_key_copy(form, key):
    """Three heads with their own Q, K, V, beta and ALiBi slopes: K folded into the queries, V
    applied after, one key/value copy (make_splash_mqa)."""
    n, d, h = 150, 6, 3
    ks = jax.random.split(key, 5)
    x = mf.sphere_uniform(ks[0], n, d, F32)
    mats = {nm: jax.random.normal(k, (h, d, d), F32) / np.sqrt(d) for nm, k in zip("QKV", ks[1:4])}
    kw = dict(
        beta=jnp.asarray([0.5, 1.0, 2.0], F32),
        form=form,
        mask=mf.Causal() & mf.ALiBi(jnp.asarray([0.02, 0.05, 0.1], F32)),
    )
    assert _err(kw, x, mf.TokenAux.default(n, F32), mats) < TOL


def test_splash_refusals(key):
    x = mf.sphere_uniform(key, 20, 4, F32)
    with pytest.raises(ValueError, match="Splash backend does not support the mask CustomBias"):
        mf.Attention(1.0, mask=mf.CustomBias(jnp.zeros((20, 20))), backend=Splash())(x)
    with pytest.raises(ValueError, match="positional encodings.*Chunked"):
        mf.Attention(1.0, pe=mf.RoPE(), backend=Splash())(x)
    with pytest.raises(ValueError, match="prompts.*Chunked"):
        mf.Attention(1.0, backend=Splash())(x, prompt=mf.Prompt(x[:3]))
    with pytest.raises(ValueError, match="tied positions"):
        mf.Attention(1.0, mask=mf.Causal(), backend=Splash())(
            x, mf.TokenAux.default(20, F32, pos=jnp.zeros(20))
        )
    with pytest.raises(ValueError, match="consecutive integer positions"):
        mf.Attention(1.0, mask=mf.Window(3.0), backend=Splash())(
            x, mf.TokenAux.default(20, F32, pos=2.0 * jnp.arange(20))
        )
    with pytest.raises(ValueError, match="multiple of 128"):
        Splash(block_q=100)


@pytest.mark.slow
def test_splash_grad(key):
    """jax.grad through Splash (derivatives through the Chunked path) equals dense's."""
    n = 130
    x = mf.sphere_uniform(key, n, 4, F32)

    def loss(b, backend):
        return jnp.sum(mf.Attention(b, mask=mf.Causal() & mf.ALiBi(0.05), backend=backend)(x) ** 2)

    g_s, g_d = (
        jax.grad(loss)(F32(1.5), Splash(128, 128)),
        jax.grad(loss)(F32(1.5), mf.kernel.Dense()),
    )
    assert abs(float(g_s - g_d)) < 1e-4 * abs(float(g_d))


@pytest.mark.parametrize("causal, strict", [(True, False), (True, True), (False, False)])
def test_positional_normaliser_against_the_direct_sum(causal, strict):
    """log Z_i = log sum_{j visible} m_j e^{-lambda |p_i - p_j|} (PositionNormalized's normaliser,
    the cuDNN route's row shift) by decayed cumulative logsumexps: equal to the direct float64 sum
    to round-off, and in float32 at lambda N = 10^4 to 1e-5 absolute (no term carries lambda p_j,
    whose float32 rounding would be 2^-24 lambda N / 2 ~ 3e-4)."""
    from meanfield.kernel.backends._sorted import log_normaliser

    r = np.random.default_rng(0)
    n = 400
    pos = np.sort(r.choice(4 * n, n, replace=False)).astype(float)
    logm = np.log(r.uniform(0.5, 1.5, n) / n)
    lam = np.array([0.01, 2.5, 25.0 / 4])  # lambda N up to 10^4 (positions span 4N)
    d = pos[:, None] - pos[None, :]
    vis = (d > 0) if strict else (d >= 0)
    vis = vis if causal else np.ones_like(vis)
    w = np.where(vis[None], np.exp(logm[None, None] - lam[:, None, None] * np.abs(d)[None]), 0.0)
    with np.errstate(divide="ignore"):
        ref = np.log(w.sum(-1))
    for dt, tol in ((jnp.float64, 1e-12), (jnp.float32, 1e-5)):
        got = np.asarray(
            log_normaliser(
                jnp.asarray(lam, dt),
                jnp.asarray(logm, dt),
                jnp.asarray(pos - pos.mean(), dt),
                causal,
                strict,
            )
        )
        assert np.array_equal(np.isfinite(got), np.isfinite(ref))
        fin = np.isfinite(ref)
        assert np.max(np.abs(got[fin] - ref[fin])) < tol, dt
