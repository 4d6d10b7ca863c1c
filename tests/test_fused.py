"""The fused Pallas backend (interpret mode on CPU) against the dense backend in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import meanfield as mf
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


def _compare(attn_kw, x, aux, heads_kw=None):
    """max |fused - dense64| / max |dense64| for float32 inputs (dense evaluated in float64)."""
    heads_kw = heads_kw or {}
    f64 = lambda t: jax.tree.map(lambda a: a.astype(jnp.float64) if eqx_is_float(a) else a, t)  # noqa: E731
    ref = mf.Attention(**attn_kw, **f64(heads_kw))(x.astype(jnp.float64), f64(aux))
    fused = mf.Attention(**attn_kw, **heads_kw, backend=Fused(16, 16))(x, aux)
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
    assert err < 2e-6, err


@pytest.mark.parametrize("d", [2, 16, 64])
def test_fused_heads_projections_and_per_head_slopes(d, key):
    """Two heads with their own Q, K, V, output mixing W, beta and causal ALiBi slopes."""
    n, h = 40, 2
    ks = jax.random.split(key, 6)
    x = mf.sphere_uniform(ks[0], n, d, F32)
    mats = {nm: jax.random.normal(k, (h, d, d), F32) / np.sqrt(d) for nm, k in zip("QKVW", ks[1:5])}
    aux = mf.TokenAux.default(n, F32)
    err = _compare(dict(beta=jnp.asarray([1.5, 3.0], F32), mask=mf.Causal() & mf.ALiBi(jnp.asarray([0.05, 0.3], F32)),
                        precision="highest"), x, aux, mats)
    assert err < 2e-6, err


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
    mats = {"K": {"K": per_head(ks[1])}, "V": {"V": shared(ks[2])},
            "QK-mixed-heads": {"Q": per_head(ks[1]), "K": shared(ks[2])},
            "QKV-USA": {"Q": shared(ks[1]), "K": per_head(ks[2]), "V": per_head(ks[3])}}[which]
    form = "USA" if which == "QKV-USA" else "SA"
    kw = dict(beta=jnp.asarray([1.0, 2.5], F32), mask=mf.Causal() & mf.ALiBi(0.1), form=form, precision="highest")
    if "Q" not in mats and "K" not in mats and "V" in mats:
        kw["heads"] = h
    err = _compare(kw, x, mf.TokenAux.default(n, F32), mats)
    assert err < 2e-6, err
