"""The fused Pallas backend (interpret mode on CPU) against the dense backend in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import meanfield as mf
from conftest import backend_params
from meanfield.kernel import Fused

F32 = jnp.float32
MASKS = {
    "full": mf.Full(),
    "causal": mf.Causal(),
    "window": mf.Window(6.0),
    "alibi": mf.ALiBi(0.2),
    "causal-alibi": mf.Causal() & mf.ALiBi(0.15),
    "causal-window": mf.Causal() & mf.Window(5.0),
}


# "highest" runs both products as three bf16 products of hi/lo splits on tensor cores; the
# contract is a relative field error <= 1e-5 against float64 for beta <= 4 (about 5e-6 measured at
# these sizes; full float32 would give ~1e-7)
HIGHEST_TOL = 1e-5


def _compare(attn_kw, x, aux, heads_kw=None, backend=None):
    """max |fused - dense64| / max |dense64| for float32 inputs (dense evaluated in float64)."""
    heads_kw = heads_kw or {}
    f64 = lambda t: jax.tree.map(lambda a: a.astype(jnp.float64) if eqx_is_float(a) else a, t)  # noqa: E731
    ref = mf.Attention(**attn_kw, **f64(heads_kw))(x.astype(jnp.float64), f64(aux))
    fused = mf.Attention(**attn_kw, **heads_kw, backend=backend or Fused(16, 16))(x, aux)
    assert fused.dtype == F32 and fused.shape == ref.shape
    return float(jnp.max(jnp.abs(fused - ref)) / jnp.max(jnp.abs(ref)))


def eqx_is_float(a):
    return isinstance(a, jax.Array) and jnp.issubdtype(a.dtype, jnp.floating)


@pytest.mark.parametrize("form", ["SA", "USA"])
@pytest.mark.parametrize("mask", list(MASKS))
def test_fused_equals_dense_mask_form_grid(mask, form, key):
    """N = 37 (not a multiple of the 16-tiles: padded queries and keys), d = 3 (padded to 16),
    random masses and shuffled positions; float32 agreement to ~1e-6 relative."""
    n = 37
    kx, km, kp = jax.random.split(key, 3)
    x = mf.sphere_uniform(kx, n, 3, F32)
    mass = jax.random.uniform(km, (n,), F32, 0.5, 1.5) / n
    aux = mf.TokenAux(pos=jax.random.permutation(kp, n).astype(F32), mass=mass)
    err = _compare(dict(beta=F32(2.0), mask=MASKS[mask], form=form, precision="highest"), x, aux)
    assert err < HIGHEST_TOL, err


@pytest.mark.parametrize("d", [2, 16, 64])
def test_fused_heads_projections_and_per_head_slopes(d, key):
    """Two heads with their own Q, K, V, output mixing W, beta and causal ALiBi slopes."""
    n, h = 40, 2
    ks = jax.random.split(key, 6)
    x = mf.sphere_uniform(ks[0], n, d, F32)
    mats = {nm: jax.random.normal(k, (h, d, d), F32) / np.sqrt(d) for nm, k in zip("QKVW", ks[1:5])}
    aux = mf.TokenAux.default(n, F32)
    err = _compare(
        dict(
            beta=jnp.asarray([1.5, 3.0], F32),
            mask=mf.Causal() & mf.ALiBi(jnp.asarray([0.05, 0.3], F32)),
            precision="highest",
        ),
        x,
        aux,
        mats,
    )
    assert err < HIGHEST_TOL, err


def test_fused_refuses_what_it_does_not_do(key):
    x = mf.sphere_uniform(key, 20, 4, F32)
    with pytest.raises(ValueError, match="does not support the mask CustomBias"):
        mf.Attention(1.0, mask=mf.CustomBias(jnp.zeros((20, 20))), backend=Fused())(x)
    with pytest.raises(ValueError, match="positional encodings"):
        mf.Attention(1.0, pe=mf.RoPE(), backend=Fused())(x)
    with pytest.raises(ValueError, match="prompts"):
        mf.Attention(1.0, backend=Fused())(x, prompt=mf.Prompt(x[:3]))
    with pytest.raises(ValueError, match="float32"):
        mf.Attention(1.0, backend=Fused())(x.astype(jnp.float64))
    with pytest.raises(ValueError, match="power of two"):
        Fused(block_q=24)


@pytest.mark.parametrize("which", ["K", "V", "QK-mixed-heads", "QKV-USA"])
def test_fused_in_kernel_projections(which, key):
    """Heads in-kernel: K folded into the queries (<Q x_i, K x_j> = <K^T Q x_i, x_j>) and V applied
    in-kernel to each row's weighted sum of raw tokens, for every way the matrices can be given
    (one shared matrix, one per head, only some of them), against the dense float64 field."""
    n, d, h = 29, 5, 2
    ks = jax.random.split(key, 5)
    x = mf.sphere_uniform(ks[0], n, d, F32)
    per_head = lambda k: jax.random.normal(k, (h, d, d), F32) / np.sqrt(d)  # noqa: E731
    shared = lambda k: jax.random.normal(k, (d, d), F32) / np.sqrt(d)  # noqa: E731
    mats = {
        "K": {"K": per_head(ks[1])},
        "V": {"V": shared(ks[2])},
        "QK-mixed-heads": {"Q": per_head(ks[1]), "K": shared(ks[2])},
        "QKV-USA": {"Q": shared(ks[1]), "K": per_head(ks[2]), "V": per_head(ks[3])},
    }[which]
    form = "USA" if which == "QKV-USA" else "SA"
    kw = dict(
        beta=jnp.asarray([1.0, 2.5], F32),
        mask=mf.Causal() & mf.ALiBi(0.1),
        form=form,
        precision="highest",
    )
    if "Q" not in mats and "K" not in mats and "V" in mats:
        kw["heads"] = h
    err = _compare(kw, x, mf.TokenAux.default(n, F32), mats)
    # the split products' score error scales with the scores: with these random Q, K (max |s| = 5.2
    # here, against beta = 2.5 for Q = K = I) the bound doubles
    assert err < 2 * HIGHEST_TOL, err


STRICT_MASKS = {
    "strict": mf.Causal(strict=True),
    "strict-alibi": mf.Causal(strict=True) & mf.ALiBi(0.3),
    "pn-causal-alibi": mf.PositionNormalized(mf.Causal() & mf.ALiBi(0.2)),
    "pn-strict-window": mf.PositionNormalized(mf.Causal(strict=True) & mf.Window(7.0)),
}


@pytest.mark.slow
@pytest.mark.parametrize("form", ["SA", "USA"])
@pytest.mark.parametrize("mask", list(STRICT_MASKS))
@pytest.mark.parametrize("heads", [1, 3])
def test_fused_strict_normalized_heads_masses(mask, form, heads, key):
    """Strict causal rows (the first sees nothing: zero field), PositionNormalized, several heads
    with per-head beta, random masses, positions in index order (so [a, b) interior tiles run without
    mask arithmetic), N = 45 with 16-tiles (a partial last tile)."""
    n = 45
    kx, km = jax.random.split(key)
    x = mf.sphere_uniform(kx, n, 6, F32)
    aux = mf.TokenAux(
        pos=jnp.arange(n, dtype=F32), mass=jax.random.uniform(km, (n,), F32, 0.5, 1.5) / n
    )
    beta = jnp.linspace(1.0, 3.0, heads).astype(F32) if heads > 1 else F32(2.0)
    kw = dict(beta=beta, mask=STRICT_MASKS[mask], form=form, precision="highest")
    if heads > 1:
        kw["heads"] = heads
    err = _compare(kw, x, aux)
    assert err < HIGHEST_TOL, err


@pytest.mark.parametrize(
    "precision,tol", [("highest", HIGHEST_TOL), ("tf32", 1e-5), ("bf16", 3e-2)]
)
@pytest.mark.parametrize("beta", [1.0, 4.0])
def test_fused_precisions(precision, tol, beta, key):
    """Each precision on both products, N = 200, d = 64, causal ALiBi, against float64. In
    interpret mode "tf32" products run in full float32 (the CPU has no tf32): the bound then checks
    the rest of the kernel; bf16 rounds P and V to 8 bits, ~1e-2."""
    n, d = 200, 64
    x = mf.sphere_uniform(key, n, d, F32)
    err = _compare(
        dict(beta=F32(beta), mask=mf.Causal() & mf.ALiBi(0.05), precision=precision),
        x,
        mf.TokenAux.default(n, F32),
        backend=Fused(32, 32),
    )
    assert err < tol, (precision, beta, err)


@pytest.mark.parametrize("backend", backend_params())
def test_integer_positions_beyond_2_24(backend, key):
    """Integer positions 2^24 + 0..47 (float32 cannot hold them: every backend used to cast them to
    the tokens' dtype, a relative field error of 1.0), strict causal with ALiBi, shuffled: positions
    are taken relative to their minimum before the cast, and the float32 field agrees with float64
    dense."""
    n = 48
    x = mf.sphere_uniform(key, n, 4, F32)
    pos = 2**24 + jax.random.permutation(jax.random.fold_in(key, 1), n)
    aux = mf.TokenAux(pos=pos.astype(jnp.int32), mass=jnp.full((n,), 1.0 / n, F32))
    ref = mf.Attention(2.0, mask=mf.Causal(strict=True) & mf.ALiBi(0.05))(
        x.astype(jnp.float64),
        mf.TokenAux(pos=pos.astype(jnp.float64), mass=aux.mass.astype(jnp.float64)),
    )
    out = mf.Attention(F32(2.0), mask=mf.Causal(strict=True) & mf.ALiBi(0.05), backend=backend)(
        x, aux
    )
    assert float(jnp.max(jnp.abs(out - ref)) / jnp.max(jnp.abs(ref))) < HIGHEST_TOL


@pytest.mark.slow
@pytest.mark.parametrize("form", ["SA", "USA"])
def test_fused_grad_and_jvp(form, key):
    """jax.grad and jax.jvp through Fused (derivatives through the Chunked path) equal those of
    the dense backend."""
    n = 33
    x = mf.sphere_uniform(key, n, 3, F32)
    mask = mf.Causal() & mf.ALiBi(0.1)

    def loss(b, y, backend):
        return jnp.sum(mf.Attention(b, mask=mask, form=form, backend=backend)(y) ** 2)

    g_f = jax.grad(loss, argnums=(0, 1))(F32(1.5), x, Fused(16, 16))
    g_d = jax.grad(loss, argnums=(0, 1))(F32(1.5), x, mf.kernel.Dense())
    for a, b in zip(g_f, g_d):
        assert float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) < 1e-4
    t = jax.random.normal(key, x.shape, F32)
    f = lambda backend: jax.jvp(
        lambda y: mf.Attention(1.5, mask=mask, form=form, backend=backend)(y), (x,), (t,)
    )[1]  # noqa: E731
    tf, td = f(Fused(16, 16)), f(mf.kernel.Dense())
    assert float(jnp.max(jnp.abs(tf - td)) / jnp.max(jnp.abs(td))) < 1e-4


def test_tile_bounds_skip_the_causal_upper_half():
    """Positions in index order under a causal mask: [lo, hi) is the lower triangle (hi = i + 1)
    and [a, b) every tile below the diagonal; a window keeps only the band."""
    from meanfield.kernel.backends.fused import tile_bounds

    pos = jnp.arange(64, dtype=jnp.int32)
    logm = jnp.zeros(64)
    b = np.asarray(tile_bounds(pos, pos, logm, 16, 16, 1, np.inf))
    assert (b[:, 0] == 0).all() and (b[:, 3] == np.arange(1, 5)).all()
    # block 0 has no wholly allowed tile (a = b = hi: its one tile is masked); block i >= 1 runs
    # tiles 0..i-1 without mask arithmetic and its diagonal tile with it
    assert (b[:, 1] == [1, 0, 0, 0]).all() and (b[:, 2] == [1, 1, 2, 3]).all()
    w = np.asarray(tile_bounds(pos, pos, logm, 16, 16, 1, 20.0))  # causal window of 20: two tiles
    assert (w[:, 3] - w[:, 0] <= 3).all() and (w[:, 3] == np.arange(1, 5)).all()
