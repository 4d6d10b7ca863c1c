"""The attention kernel: dense and chunked backends agree; jit, vmap and grad agree with eager."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import meanfield as mf

N, D, H = 45, 5, 3


def masks():
    return {
        "full": mf.Full(),
        "causal": mf.Causal(),
        "alibi": mf.ALiBi(0.3),
        "causal_alibi_heads": mf.Causal() & mf.ALiBi(jnp.array([0.05, 0.2, 1.0])),
        "window": mf.Window(7),
        "causal_window": mf.Causal() & mf.Window(5),
        "custom": mf.CustomBias.from_bool(np.random.default_rng(0).random((N, N)) < 0.6),
    }


def make(kind, form, heads, mask, dtype, backend=mf.kernel.Dense(), block=8, row_block=1024):
    rng = np.random.default_rng(1)
    if kind == "identity":
        mats = {}
    else:
        shape = (heads, D, D)
        mats = {m: jnp.asarray(rng.normal(size=shape) / np.sqrt(D), dtype) for m in "QKVW"}
    beta = jnp.asarray(np.linspace(0.5, 2.0, heads) if heads > 1 else 1.5, dtype)
    return mf.Attention(
        beta,
        **mats,
        heads=heads,
        form=form,
        mask=mask,
        backend=mf.kernel.Dense(row_block=row_block)
        if backend == "dense"
        else mf.kernel.Chunked(block=block),
    )


@pytest.mark.parametrize(
    "mask_name,form,heads,kind",
    [
        (m, f, h, k)
        for m, f, h, k in itertools.product(masks(), ["SA", "USA"], [1, H], ["identity", "random"])
        if not (m == "causal_alibi_heads" and h == 1)
    ],
)
@pytest.mark.parametrize("dtype,tol", [(jnp.float64, 1e-12), (jnp.float32, 1e-5)])
def test_dense_equals_chunked(mask_name, form, heads, kind, dtype, tol):
    mask = masks()[mask_name]
    x = mf.sphere_uniform(jax.random.key(7), N, D, dtype)
    dense = make(kind, form, heads, mask, dtype)
    dense_slabs = make(kind, form, heads, mask, dtype, row_block=16)  # 3 row slabs, last one padded
    chunked = make(kind, form, heads, mask, dtype, backend=mf.kernel.Chunked(block=8))
    a, b, c = dense(x), chunked(x), dense_slabs(x)
    assert a.dtype == b.dtype == c.dtype == dtype
    scale = float(jnp.max(jnp.abs(a)))
    assert float(jnp.max(jnp.abs(a - b))) <= tol * scale
    assert float(jnp.max(jnp.abs(a - c))) <= tol * scale


@pytest.mark.parametrize("mask", [mf.Full(), mf.Causal() & mf.ALiBi(0.2)])
@pytest.mark.parametrize("form", ["SA", "USA"])
@pytest.mark.parametrize(
    "d", [4, 12], ids=["row-sum-column", "row-sum-gemv"]
)  # the dense SA row sum: d <= 8 / > 8
def test_dense_equals_chunked_with_prompt_and_masses(mask, form, d):
    x = mf.sphere_uniform(jax.random.key(2), 30, d)
    y = mf.sphere_uniform(jax.random.key(3), 5, d)
    mass = jax.random.uniform(jax.random.key(4), (30,), minval=0.5, maxval=1.5) / 30
    aux = mf.TokenAux.default(30, pos=jnp.arange(30.0) * 2.0, mass=mass)
    for prompt in [
        mf.Prompt(y),
        mf.Prompt(y, mass=jnp.full(5, 0.3), pos=jnp.array([0.0, 10, 20, 30, 40])),
    ]:
        a = mf.Attention(2.0, form=form, mask=mask)(x, aux, prompt)
        b = mf.Attention(2.0, form=form, mask=mask, backend=mf.kernel.Chunked(block=7))(
            x, aux, prompt
        )
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * float(jnp.max(jnp.abs(a))))
        # query blocks evaluated 3 at a time (vmapped; the last batch padded): the same field
        c = mf.Attention(
            2.0, form=form, mask=mask, backend=mf.kernel.Chunked(block=7, query_batch=3)
        )(x, aux, prompt)
        np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-12 * float(jnp.max(jnp.abs(a))))


def test_matches_explicit_formula():
    # v_i = sum_h W_h sum_j softmax_j(beta_h <Q_h x_i, K_h x_j> + b_ij + log m_j) V_h x_j, in NumPy.
    x = np.asarray(mf.sphere_uniform(jax.random.key(5), 12, 3))
    rng = np.random.default_rng(2)
    Q, K, V, W = (rng.normal(size=(2, 3, 3)) for _ in range(4))
    beta = np.array([0.7, 1.3])
    slopes = np.array([0.1, 0.4])
    attn = mf.Attention(beta, Q=Q, K=K, V=V, W=W, mask=mf.Causal() & mf.ALiBi(slopes))
    out = np.zeros_like(x)
    for h in range(2):
        for i in range(12):
            a = np.array(
                [
                    beta[h] * (Q[h] @ x[i]) @ (K[h] @ x[j]) - slopes[h] * (i - j)
                    for j in range(i + 1)
                ]
            )
            w = np.exp(a - a.max())
            out[i] += W[h] @ (sum(w[j] * V[h] @ x[j] for j in range(i + 1)) / w.sum())
    np.testing.assert_allclose(attn(jnp.asarray(x)), out, rtol=1e-12, atol=1e-13)


def test_causal_blocks_are_skipped():
    # Rows depend only on earlier tokens: perturbing the last block leaves the earlier rows intact,
    # and the count of active (query, key) blocks of a causal mask is the lower triangle.
    mask = mf.Causal()
    lo = jnp.arange(0, 64, 8.0)
    hi = lo + 7
    active = jax.vmap(
        lambda ql, qh: jax.vmap(lambda kl, kh: mask.block_active(ql, qh, kl, kh))(lo, hi)
    )(lo, hi)
    assert int(active.sum()) == 8 * 9 // 2
    x = mf.sphere_uniform(jax.random.key(0), 64, 3)
    attn = mf.Attention(1.0, mask=mask, backend=mf.kernel.Chunked(block=8))
    x2 = x.at[56:].set(x[:8])
    np.testing.assert_array_equal(attn(x)[:56], attn(x2)[:56])


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["dense", "chunked"])
def test_jit_vmap_grad_agree_with_eager(backend):
    attn = make(
        "random",
        "SA",
        H,
        mf.Causal() & mf.ALiBi(jnp.array([0.1, 0.2, 0.3])),
        jnp.float64,
        backend,
        8,
    )
    xs = mf.sphere_uniform(jax.random.key(9), 4 * N, D).reshape(4, N, D)
    eager = jnp.stack([attn(x) for x in xs])
    np.testing.assert_allclose(jax.jit(lambda x: attn(x))(xs[0]), eager[0], rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(jax.vmap(attn)(xs), eager, rtol=1e-13, atol=1e-14)

    def loss(a, x):
        return jnp.sum(jnp.sin(a(x)))

    g_eager = jax.grad(loss, argnums=1)(attn, xs[0])
    g_jit = jax.jit(jax.grad(loss, argnums=1))(attn, xs[0])
    np.testing.assert_allclose(g_jit, g_eager, rtol=1e-12, atol=1e-14)
    # gradient against central finite differences along a random direction
    u = jax.random.normal(jax.random.key(1), xs[0].shape)
    eps = 1e-6
    fd = (loss(attn, xs[0] + eps * u) - loss(attn, xs[0] - eps * u)) / (2 * eps)
    np.testing.assert_allclose(jnp.sum(g_eager * u), fd, rtol=1e-7)


def test_chunked_grad_equals_dense_grad():
    x = mf.sphere_uniform(jax.random.key(4), 40, 3)
    g = [
        jax.grad(lambda b: jnp.sum(mf.Attention(b, mask=mf.Causal(), backend=be)(x) ** 2))(1.3)
        for be in (mf.kernel.Dense(), mf.kernel.Chunked(block=8))
    ]
    np.testing.assert_allclose(g[0], g[1], rtol=1e-12)


def test_identical_heads_reproduce_single_head():
    x = mf.sphere_uniform(jax.random.key(6), 20, 4)
    Q = jax.random.normal(jax.random.key(1), (4, 4))
    one = mf.Attention(1.0, Q=Q, mask=mf.Causal())(x)
    many = mf.Attention(1.0, Q=jnp.stack([Q] * 3), mask=mf.Causal())(x)
    np.testing.assert_allclose(one, many, rtol=1e-13, atol=1e-15)


def test_weights_rows_are_stochastic_for_sa():
    x = mf.sphere_uniform(jax.random.key(6), 20, 4)
    w = mf.Attention(2.0, mask=mf.Causal() & mf.Window(4)).weights(x)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-13)
    assert float(jnp.max(jnp.abs(jnp.triu(w[0], 1)))) == 0.0
    assert float(jnp.max(jnp.abs(jnp.tril(w[0], -4)))) == 0.0


def test_chunked_memory_is_linear_in_n():
    # XLA's own buffer accounting of the compiled RHS (no run needed): the chunked backend's
    # scratch memory grows like N * block, not N^2. At N = 100,000, d = 16, causal, float32 it
    # must be tens of MiB (a dense (N, N) score matrix alone would be 37 GiB).
    def temp_mib(n):
        x = jax.ShapeDtypeStruct((n, 16), jnp.float32)
        attn = mf.Attention(1.0, mask=mf.Causal(), backend=mf.kernel.Chunked(block=512))
        compiled = jax.jit(lambda y: mf.velocity(attn, y)).lower(x).compile()
        return compiled.memory_analysis().temp_size_in_bytes / 2**20

    small, large = temp_mib(10_000), temp_mib(100_000)
    assert large < 64, large
    assert large / small < 15, (small, large)  # ~10x for 10x more tokens, not 100x


def test_score_precision_options_accuracy():
    """float32 scores at 'highest' precision are float32-accurate; bf16-rounded queries and keys
    (unit roundoff u = 2^-8) perturb each score by at most about 2 beta u |q||k|, so the field's
    relative error is O(beta u): measurably above float32, below beta 2^-8."""
    from meanfield.kernel import precision_report

    x = mf.sphere_uniform(jax.random.key(0), 256, 16)
    beta = 4.0
    rep = precision_report(mf.Attention(beta, mask=mf.Causal() & mf.ALiBi(0.01)), x)
    assert rep["highest"]["max_rel"] < 1e-5
    assert 1e-5 < rep["bf16"]["max_rel"] < beta * 2.0**-8
    if jax.default_backend() == "cpu":  # no TF32 units: the fast default is exact float32
        assert rep["tf32"] == rep["highest"]
    with pytest.raises(ValueError, match="precision must be one of"):
        mf.Attention(1.0, precision="half")


@pytest.mark.slow
def test_backend_strategies_and_the_removed_strings(key):
    """Dense(row_block) and Chunked(block, query_batch) are the backends; the 0.2 strings and
    loose keywords were removed in 0.3 and are refused with a message naming the modules."""
    x = mf.sphere_uniform(key, 37, 4)
    aux = mf.TokenAux.default(37)
    new = mf.Attention(
        1.7, mask=mf.Causal() & mf.ALiBi(0.1), backend=mf.kernel.Chunked(block=8, query_batch=2)
    )
    with pytest.raises(ValueError, match=r"backend must be a backend module such as Dense\(\)"):
        mf.Attention(1.7, backend="chunked")
    with pytest.raises(TypeError, match="block"):
        mf.Attention(1.7, backend=mf.kernel.Chunked(), block=8)
    dense = mf.Attention(
        1.7, mask=mf.Causal() & mf.ALiBi(0.1), backend=mf.kernel.Dense(row_block=16)
    )
    np.testing.assert_allclose(dense(x, aux), new(x, aux), rtol=1e-12, atol=1e-13)
    assert isinstance(mf.Attention(1.0).backend, mf.kernel.Auto)
    # Dense on the CPU at every size, and below 16k tokens on a GPU; Chunked(2048, 8) above (recorded H200 runs)
    assert isinstance(mf.kernel.default_backend(10**6, "cpu"), mf.kernel.Dense)
    assert isinstance(mf.kernel.default_backend(4096, "gpu"), mf.kernel.Dense)
    assert mf.kernel.default_backend(65536, "gpu") == mf.kernel.Chunked(2048, 8)
    assert isinstance(mf.kernel.default_backend(65536, "tpu"), mf.kernel.Dense)
    with pytest.raises(ValueError, match="block must be a positive integer"):
        mf.kernel.Chunked(block=0)


def test_default_row_block_keeps_the_slab_in_cache():
    """The dense backend's default slab (heads x rows x keys) stays within SLAB_BYTES whenever
    the floor of 8 rows allows it, keeps the one-head float32 choice 2^21/N clipped to
    [128, 1024] up to N = 32768, and shrinks with the heads (4 heads at N = 4096: 256 rows,
    where 512 rows ran 2.1x slower on the 2-core CPU)."""
    from meanfield.kernel.backends.dense import SLAB_BYTES, default_row_block

    for heads in (1, 2, 4, 8, 16):
        for n in (64, 256, 1000, 4096, 16384, 65536, 10**6):
            for itemsize in (4, 8):
                b = default_row_block(heads, n, itemsize)
                assert 8 <= b <= 1024
                assert heads * b * n * itemsize <= SLAB_BYTES or b == 8
    for n in (256, 1024, 4096, 16384, 32768):
        assert default_row_block(1, n, 4) == min(1024, max(128, 2**21 // n))
    assert default_row_block(4, 4096, 4) == 256
    assert default_row_block(8, 2048, 4) == 256


@pytest.mark.slow
@pytest.mark.parametrize(
    "mask",
    [
        mf.Causal(),
        mf.Causal(strict=True) & mf.ALiBi(0.1),
        mf.Window(40.0),
        mf.Full(),
        mf.PositionNormalized(mf.Causal() & mf.ALiBi(0.05)),
    ],
    ids=["causal", "strict-alibi", "window", "full", "pn"],
)
@pytest.mark.parametrize("form", ["SA", "USA"])
def test_chunked_batched_query_blocks_equal_dense(mask, form, key):
    """Chunked(query_batch > 1) loops each query block over its own key-tile range, query blocks
    i and nq - 1 - i paired (an odd nq pairs the middle block with itself): equal to dense for
    every mask, odd and even block counts, shuffled positions, and its derivatives are dense's."""
    n = 150
    x = mf.sphere_uniform(key, n, 5)
    ref = mf.Attention(2.0, mask=mask, form=form, backend=mf.kernel.Dense())(x)
    for qb, block in [(3, 32), (8, 20)]:  # 5 and 8 query blocks
        out = mf.Attention(2.0, mask=mask, form=form, backend=mf.kernel.Chunked(block, qb))(x)
        assert float(jnp.max(jnp.abs(out - ref))) < 1e-12
    aux = mf.TokenAux.default(n, pos=jax.random.permutation(key, n).astype(float))
    a, b = (
        mf.Attention(2.0, mask=mask, form=form, backend=be)(x, aux)
        for be in (mf.kernel.Dense(), mf.kernel.Chunked(16, 4))
    )
    assert float(jnp.max(jnp.abs(a - b))) < 1e-12

    def loss(beta):
        return jnp.sum(
            mf.Attention(beta, mask=mask, form=form, backend=mf.kernel.Chunked(16, 4))(x) ** 2
        )

    eps = 1e-5  # central difference of the batched path itself (error ~ eps^2 times the third derivative)
    fd = (loss(1.5 + eps) - loss(1.5 - eps)) / (2 * eps)
    assert abs(float(jax.grad(loss)(1.5) - fd)) < 1e-7 * abs(float(fd))
