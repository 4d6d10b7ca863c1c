"""Conservation laws and monotone quantities of the sphere dynamics (float64)."""

import jax.numpy as jnp
import numpy as np
import pytest

import meanfield as mf
from meanfield import observables as obs


@pytest.mark.parametrize("mask", [mf.Full(), mf.Causal()])
def test_tokens_stay_on_sphere(key, mask):
    # d|x|^2/dt = 2 <x, P_x v> = 0 exactly; numerically the drift is set by the tolerance.
    x0 = mf.sphere_uniform(key, 32, 4)
    traj = mf.simulate(
        mf.Attention(2.0, mask=mask), x0, jnp.linspace(0, 20, 41), rtol=1e-12, atol=1e-12
    )
    drift = jnp.max(jnp.abs(jnp.linalg.norm(traj.xs, axis=-1) - 1.0))
    assert drift < 1e-10


@pytest.mark.parametrize("beta", [0.5, 3.0])
def test_usa_is_gradient_ascent_of_energy(key, beta):
    # With Q = K = V = I and masses 1/N, grad_{x_i} E_beta = (1/N^2) sum_j e^{beta <x_i,x_j>} x_j
    # = v_i^USA / N, so dE/dt = N sum_i |P_{x_i} grad_i E|^2 >= 0 along the USA flow.
    x0 = mf.sphere_uniform(key, 24, 3)
    traj = mf.simulate(
        mf.Attention(beta, form="USA"), x0, jnp.linspace(0, 10, 201), rtol=1e-11, atol=1e-11
    )
    e = np.asarray(obs.energy(traj.xs, beta))
    assert np.all(np.diff(e) >= -1e-12 * e[:-1]), np.min(np.diff(e))
    assert e[-1] > e[0]
    # the maximum e^beta / (2 beta) is reached at a single cluster
    assert e[-1] <= np.exp(beta) / (2 * beta) * (1 + 1e-12)


def test_energy_rate_equals_riemannian_gradient_norm(key):
    # dE/dt = N sum_i |P_{x_i} grad_i E|^2 = (1/N) sum_i |P_{x_i} v_i|^2: check with jax.grad.
    import jax

    beta = 1.5
    x = mf.sphere_uniform(key, 10, 3)
    attn = mf.Attention(beta, form="USA")
    rate_field = jnp.sum(mf.velocity(attn, x) ** 2) / x.shape[0]
    g = jax.grad(lambda y: obs.energy(y, beta))(x)
    dedt = jnp.sum(g * mf.velocity(attn, x))
    np.testing.assert_allclose(dedt, rate_field, rtol=1e-12)
