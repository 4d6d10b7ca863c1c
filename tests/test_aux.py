"""Auxiliary variables: positional encodings and prompts in the kernel (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import meanfield as mf
from meanfield.kernel import gaussian, random_fourier, rope_rotate, sinusoidal

N, D = 20, 4


@pytest.fixture
def setup(key):
    x0 = mf.sphere_uniform(key, N, D)
    aux = mf.TokenAux.default(N, jnp.float64, z=sinusoidal(jnp.arange(N), D, base=50.0))
    return x0, aux


@pytest.mark.parametrize(
    "make",
    [
        lambda s: dict(mask=mf.Causal() & mf.ZBias(scale=s)),
        lambda s: dict(mask=mf.Causal(), pe=mf.AdditivePE(scale=s)),
        lambda s: dict(mask=mf.Causal(), pe=mf.RoPE(base=100.0, scale=s)),
    ],
    ids=["concat", "additive", "rotary"],
)
def test_zero_coupling_is_the_plain_engine(setup, make):
    x0, aux = setup
    ts = jnp.linspace(0, 3, 4)
    plain = mf.simulate(
        mf.Attention(2.0, mask=mf.Causal()), x0, ts, aux=aux, rtol=1e-10, atol=1e-10
    ).xs
    off = mf.simulate(mf.Attention(2.0, **make(0.0)), x0, ts, aux=aux, rtol=1e-10, atol=1e-10).xs
    on = mf.simulate(mf.Attention(2.0, **make(1.0)), x0, ts, aux=aux, rtol=1e-10, atol=1e-10).xs
    np.testing.assert_array_equal(off, plain)
    assert float(jnp.max(jnp.abs(on - plain))) > 1e-3  # the coupling does act


def test_rope_scores_match_explicit_rotation_and_are_relative(key):
    d, n = 6, 9
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    pos = rng.uniform(0, 50, size=n)
    base = 30.0

    def rot(p):
        r = np.zeros((d, d))
        for j in range(d // 2):
            a = p * base ** (-2 * j / d)
            r[2 * j : 2 * j + 2, 2 * j : 2 * j + 2] = [
                [np.cos(a), -np.sin(a)],
                [np.sin(a), np.cos(a)],
            ]
        return r

    explicit = np.array(
        [[(rot(pos[i]) @ q[i]) @ (rot(pos[j]) @ k[j]) for j in range(n)] for i in range(n)]
    )
    rq = rope_rotate(jnp.asarray(q), jnp.asarray(pos), base)
    rk = rope_rotate(jnp.asarray(k), jnp.asarray(pos), base)
    np.testing.assert_allclose(rq @ rk.T, explicit, rtol=1e-12, atol=1e-12)
    shifted = (
        rope_rotate(jnp.asarray(q), jnp.asarray(pos + 17.3), base)
        @ rope_rotate(jnp.asarray(k), jnp.asarray(pos + 17.3), base).T
    )
    np.testing.assert_allclose(shifted, explicit, rtol=1e-11, atol=1e-11)
    # through the kernel: attention weights are invariant under a global shift of positions
    x = mf.sphere_uniform(key, n, d)
    attn = mf.Attention(3.0, Q=q[:d, :d] if n >= d else None, pe=mf.RoPE(base=base))
    w0 = attn.weights(x, mf.TokenAux.default(n, pos=jnp.asarray(pos)))
    w1 = attn.weights(x, mf.TokenAux.default(n, pos=jnp.asarray(pos + 17.3)))
    np.testing.assert_allclose(w0, w1, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("backend_pe", ["concat", "additive", "rotary"])
def test_dense_equals_chunked_with_encodings_and_prompt(setup, backend_pe):
    x, aux = setup
    y = mf.sphere_uniform(jax.random.key(3), 3, D)
    prompt = mf.Prompt(y, z=jnp.ones((3, D)) * 0.1)
    kw = {
        "concat": dict(mask=mf.Causal() & mf.ZBias(jnp.eye(D) * 0.7)),
        "additive": dict(mask=mf.Causal(), pe=mf.AdditivePE(0.5)),
        "rotary": dict(mask=mf.Causal(), pe=mf.RoPE(base=100.0)),
    }[backend_pe]
    a = mf.Attention(1.5, **kw)(x, aux, prompt)
    b = mf.Attention(1.5, backend=mf.kernel.Chunked(block=6), **kw)(x, aux, prompt)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


def test_prompt_is_felt_and_never_moves(key):
    # one fixed prompt token with large weight: every moving token flows to it, the prompt
    # itself (not part of the state) is untouched, and without it the tokens go elsewhere.
    x0 = mf.sphere_uniform(key, 16, 3)
    y = jnp.array([[0.0, 0.0, 1.0]])
    prompt = mf.Prompt(y, mass=jnp.array([50.0]))
    traj = mf.simulate(
        mf.Attention(1.0), x0, jnp.linspace(0, 30, 4), prompt=prompt, rtol=1e-10, atol=1e-10
    )
    assert float(jnp.max(jnp.linalg.norm(traj.final - y, axis=-1))) < 1e-6
    np.testing.assert_array_equal(prompt.x, y)
    free = mf.simulate(mf.Attention(1.0), x0, jnp.linspace(0, 30, 4), rtol=1e-10, atol=1e-10).final
    assert float(jnp.min(jnp.linalg.norm(free - y, axis=-1))) > 1e-2


def test_tables():
    s = sinusoidal(jnp.arange(5), 4, base=10.0)
    np.testing.assert_allclose(
        s[3], [np.sin(3), np.cos(3), np.sin(3 / np.sqrt(10)), np.cos(3 / np.sqrt(10))], rtol=1e-12
    )
    r = random_fourier(jax.random.key(0), jnp.arange(7), 64, sigma=0.5)
    assert r.shape == (7, 64) and float(jnp.max(jnp.abs(r))) <= np.sqrt(2 / 64) + 1e-15
    g = gaussian(jax.random.key(0), 4000, 8, sigma=2.0)
    np.testing.assert_allclose(jnp.var(g), 4.0 / 8, rtol=0.05)


def test_missing_z_is_a_clear_error(setup):
    x0, _ = setup
    with pytest.raises(ValueError, match="ZBias needs auxiliary variables"):
        mf.Attention(1.0, mask=mf.ZBias())(x0)
    with pytest.raises(ValueError, match="AdditivePE needs auxiliary variables"):
        mf.Attention(1.0, pe=mf.AdditivePE())(x0)


@pytest.mark.slow
def test_additive_pe_limit_is_the_pushforward_not_a_dirac():
    # u(s) = alpha (cos pi s, sin pi s) at s_i = (i + 1/2)/N on the circle; theory x*(s) from the
    # engine-free energy maximiser on M = 300 nodes. An N-point midpoint sample of a smooth map
    # s -> theta*(s) is at circle-W1 ~ (range of theta*) / (4N) from its continuum pushforward, so
    # we require W1 <= range / N (4x that) and a decrease with N, while the run without the
    # encoding collapses to a Dirac mass (distance < 1e-6) far from the pushforward.
    from meanfield import observables as obs
    from meanfield.theory import additive_pe_pushforward

    beta, alpha = 2.0, 0.8

    def u_of(s):
        return alpha * np.stack([np.cos(np.pi * s), np.sin(np.pi * s)], 1)

    sq = (np.arange(300) + 0.5) / 300
    xq, _ = additive_pe_pushforward(
        u_of(sq), beta, n_starts=1, hops=0
    )  # a smooth, unique maximiser here
    thq = np.arctan2(xq[:, 1], xq[:, 0])
    spread = np.ptp(np.unwrap(thq))
    assert spread > 1.0  # the theory limit is far from a Dirac mass
    w1 = []
    for n in [16, 32, 64, 128]:
        s = (np.arange(n) + 0.5) / n
        aux = mf.TokenAux.default(n, z=jnp.asarray(u_of(s) / alpha))
        x0 = mf.sphere_uniform(jax.random.key(n), n, 2)
        ts = jnp.array([0.0, 100.0])
        with_pe = mf.simulate(
            mf.Attention(beta, form="USA", pe=mf.AdditivePE(alpha)),
            x0,
            ts,
            aux=aux,
            rtol=1e-9,
            atol=1e-9,
        ).final
        without = mf.simulate(
            mf.Attention(beta, form="USA"), x0, ts, aux=aux, rtol=1e-9, atol=1e-9
        ).final
        th = np.arctan2(with_pe[:, 1], with_pe[:, 0])
        w1.append(float(obs.circle_w1(th, thq)))
        assert w1[-1] <= spread / n, (n, w1)
        assert float(obs.dirac_distance(with_pe)) > 0.5
        assert float(obs.dirac_distance(without)) < 1e-6
        th0 = np.arctan2(without[:, 1], without[:, 0])
        assert float(obs.circle_w1(th0, thq)) > 0.3
    assert all(a > b for a, b in zip(w1, w1[1:])), w1


def test_concatenated_channel_still_collapses(key):
    # b_ij = <A z_i, z_j> only reweights attention: every weight stays positive, so the energy
    # sum_ij m_i m_j e^{beta <x_i, x_j> + b_ij} is still maximised by a Dirac mass (each term is
    # maximal at x_i = x_j); the theory limit is the pushforward of a constant map.
    from meanfield import observables as obs

    n = 16
    s = (np.arange(n) + 0.5) / n
    aux = mf.TokenAux.default(n, z=jnp.stack([jnp.cos(jnp.pi * s), jnp.sin(jnp.pi * s)], 1))
    x0 = mf.sphere_uniform(key, n, 3)
    out = mf.simulate(
        mf.Attention(1.0, mask=mf.ZBias(scale=2.0)),
        x0,
        jnp.array([0.0, 60.0]),
        aux=aux,
        rtol=1e-9,
        atol=1e-9,
    )
    assert float(obs.dirac_distance(out.final)) < 1e-6
