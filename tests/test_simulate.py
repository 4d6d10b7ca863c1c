"""simulate/layers: transformations (jit, vmap, grad) and retracing."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import meanfield as mf
from meanfield import observables as obs
from meanfield.particles import _layers, _simulate

TS = jnp.linspace(0.0, 2.0, 5)


def test_vmap_over_initial_conditions_and_beta(key):
    x0s = mf.sphere_uniform(key, 3 * 12, 3).reshape(3, 12, 3)
    betas = jnp.array([0.5, 1.0, 4.0])

    def run(x0, beta):
        return mf.simulate(mf.Attention(beta, mask=mf.Causal()), x0, TS, rtol=1e-10, atol=1e-10).xs

    batched = jax.vmap(run)(x0s, betas)
    looped = jnp.stack([run(x0s[i], betas[i]) for i in range(3)])
    assert batched.shape == (3, 5, 12, 3)
    np.testing.assert_allclose(batched, looped, rtol=0, atol=1e-9)


@pytest.mark.slow
def test_grad_through_solve_matches_finite_difference(key):
    # d/d beta of the final energy (at a fixed measuring temperature) through the whole solve.
    x0 = mf.sphere_uniform(key, 10, 3)

    def final_energy(beta):
        traj = mf.simulate(mf.Attention(beta), x0, TS, rtol=1e-12, atol=1e-12)
        return obs.energy(traj.final, 1.0)

    g = jax.grad(final_energy)(1.3)
    eps = 1e-5
    fd = (final_energy(1.3 + eps) - final_energy(1.3 - eps)) / (2 * eps)
    np.testing.assert_allclose(g, fd, rtol=1e-6)

    # the same for an observable of a different kind (mean pairwise cosine)
    def final_cos(beta):
        return obs.mean_cosine(
            mf.simulate(mf.Attention(beta, form="USA"), x0, TS, rtol=1e-12, atol=1e-12).final
        )

    fd = (final_cos(1.3 + eps) - final_cos(1.3 - eps)) / (2 * eps)
    np.testing.assert_allclose(jax.grad(final_cos)(1.3), fd, rtol=1e-6)


def test_jit_of_simulate_equals_eager_call(key):
    x0 = mf.sphere_uniform(key, 8, 3)
    attn = mf.Attention(2.0, mask=mf.Causal())
    eager = mf.simulate(attn, x0, TS, solver="rk4", dt=0.1).xs
    jitted = jax.jit(lambda a, x: mf.simulate(a, x, TS, solver="rk4", dt=0.1).xs)(attn, x0)
    np.testing.assert_allclose(jitted, eager, rtol=1e-14, atol=1e-15)


def test_new_beta_and_state_do_not_retrace(key):
    x0 = mf.sphere_uniform(key, 9, 3)
    kw = dict(solver="tsit5", rtol=1e-6, atol=1e-8)
    mf.simulate(mf.Attention(1.0), x0, TS, **kw)
    before = eqx.debug.get_num_traces(_simulate)
    mf.simulate(mf.Attention(2.5), x0, TS, **kw)
    mf.simulate(
        mf.Attention(0.1),
        mf.sphere_uniform(jax.random.key(1), 9, 3),
        TS + 1.0,
        rtol=1e-7,
        atol=1e-9,
    )
    assert eqx.debug.get_num_traces(_simulate) == before
    mf.layers(mf.Attention(1.0), x0, 4, h=0.1)
    before = eqx.debug.get_num_traces(_layers)
    mf.layers(mf.Attention(3.0), -x0, 4, h=0.2)
    assert eqx.debug.get_num_traces(_layers) == before


def test_shape_change_retraces(key):
    x0 = mf.sphere_uniform(key, 7, 3)
    mf.simulate(mf.Attention(1.0), x0, TS)
    n = eqx.debug.get_num_traces(_simulate)
    mf.simulate(mf.Attention(1.0), x0[:6], TS)
    assert eqx.debug.get_num_traces(_simulate) == n + 1


def test_post_ln_layers_converge_to_flow_at_order_one(key):
    # x <- n(x + h v) is Euler + retraction: error at depth T = H h is O(h).
    x0 = mf.sphere_uniform(key, 12, 3)
    attn = mf.Attention(1.0, mask=mf.Causal())
    ref = mf.simulate(
        attn, x0, jnp.array([0.0, 1.0]), solver="dopri8", rtol=1e-13, atol=1e-13
    ).final
    hs = [1 / 16, 1 / 32, 1 / 64, 1 / 128]
    errs = [float(jnp.max(jnp.abs(mf.layers(attn, x0, round(1 / h), h=h).final - ref))) for h in hs]
    slope = np.polyfit(np.log(hs), np.log(errs), 1)[0]
    assert abs(slope - 1.0) < 0.3, (errs, slope)


@pytest.mark.parametrize("norm", [mf.PostLN(), mf.PreLN(), mf.PeriLN(), mf.NGPT()])
def test_layer_maps_match_their_formulas(key, norm):
    x0 = mf.sphere_uniform(key, 6, 4)
    attn = mf.Attention(2.0)
    out = mf.layers(attn, x0, 2, h=0.3, norm=norm)
    assert out.xs.shape == (3, 6, 4)
    np.testing.assert_allclose(out.ts, [0.0, 0.3, 0.6])

    def n(y):
        return y / np.linalg.norm(y, axis=-1, keepdims=True)

    F = lambda y: np.asarray(attn(jnp.asarray(y)))
    x = np.asarray(x0)
    for _ in range(2):
        x = {
            "PostLN": lambda x: n(x + 0.3 * F(x)),
            "PreLN": lambda x: x + 0.3 * F(n(x)),
            "PeriLN": lambda x: x + 0.3 * n(F(n(x))),
            "NGPT": lambda x: n(x + 0.3 * (n(F(x)) - x)),
        }[type(norm).__name__](x)
    np.testing.assert_allclose(out.final, x, rtol=1e-12, atol=1e-14)


def test_euclidean_geometry_is_unprojected(key):
    # In R^d the SA flow keeps the token mean's dynamics: with Q=K=V=I, x_i' = v_i - not projected.
    x0 = jax.random.normal(key, (5, 2))
    traj = mf.simulate(
        mf.Attention(0.0),
        x0,
        jnp.array([0.0, 1.0]),
        geometry=mf.Euclidean(),
        rtol=1e-12,
        atol=1e-12,
    )
    # beta = 0: v_i = mean(x) (constant), so x_i(t) = x_i(0) + t * mean(x0) ... and mean moves too:
    # d mean/dt = mean, d x_i/dt = mean  =>  mean(t) = e^t mean0, x_i(t) = x_i0 + (e^t - 1) mean0.
    m0 = x0.mean(0)
    np.testing.assert_allclose(traj.final, x0 + (np.e - 1) * m0, rtol=1e-10)
