r"""Two tokens on S^{d-1} with Q = K = V = I and masses 1/2 follow a scalar ODE.

Derivation. Let rho = <x1, x2>. For SA, v_1 = (e^beta x1 + e^{beta rho} x2) / (e^beta + e^{beta rho});
P_{x1} x1 = 0 and P_{x1} x2 = x2 - rho x1, so dx1/dt = w (x2 - rho x1) with
w = e^{beta rho} / (e^beta + e^{beta rho}), and symmetrically for x2. Then
    d rho/dt = <dx1/dt, x2> + <x1, dx2/dt> = 2 w (1 - rho^2)                      (SA)
For USA with masses 1/2, v_1 = (e^beta x1 + e^{beta rho} x2) / 2, hence
    d rho/dt = e^{beta rho} (1 - rho^2)                                          (USA)
The engine integrates the full 2 x d system; scipy integrates the scalar ODE.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

import meanfield as mf


def rho_dot(form, beta):
    if form == "SA":
        return lambda t, r: 2 * np.exp(beta * r) / (np.exp(beta) + np.exp(beta * r)) * (1 - r**2)
    return lambda t, r: np.exp(beta * r) * (1 - r**2)


@pytest.mark.parametrize("form", ["SA", "USA"])
@pytest.mark.parametrize("beta,d", [(0.5, 3), (2.0, 5), (4.0, 2)])
def test_two_token_overlap_matches_scalar_ode(form, beta, d, key):
    x0 = mf.sphere_uniform(key, 2, d)
    ts = jnp.linspace(0.0, 3.0, 31)
    traj = mf.simulate(
        mf.Attention(beta, form=form), x0, ts, solver="dopri8", rtol=1e-13, atol=1e-13
    )
    rho_engine = np.asarray(jnp.sum(traj.xs[:, 0] * traj.xs[:, 1], axis=-1))
    rho0 = float(jnp.dot(x0[0], x0[1]))
    ref = solve_ivp(
        rho_dot(form, beta),
        (0.0, 3.0),
        [rho0],
        t_eval=np.asarray(ts),
        method="DOP853",
        rtol=1e-13,
        atol=1e-14,
    )
    assert ref.success
    np.testing.assert_allclose(rho_engine, ref.y[0], rtol=0, atol=1e-8)
    assert rho_engine[-1] > rho0  # the two tokens attract
