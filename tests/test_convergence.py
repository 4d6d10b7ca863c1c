"""Time-stepping accuracy on the N-token causal SA system (float64).

A fine Dopri8 solve (rtol = atol = 1e-14) is the reference; the error at T of fixed-step
Euler and RK4 must fall with the step at slopes 1 and 4 (+- 0.3) on a log-log fit, and the
adaptive Tsit5 must meet its tolerance: on this short, attracting horizon (T = 2) the global
error stays within a small multiple of the local tolerance, so we require err <= 10 tol and a
monotone decrease as tol shrinks.
"""

import jax.numpy as jnp
import numpy as np
import pytest

import meanfield as mf

T = 2.0


@pytest.fixture(scope="module")
def problem():
    import jax

    x0 = mf.sphere_uniform(jax.random.key(3), 16, 3)
    attn = mf.Attention(1.0, mask=mf.Causal())
    ref = mf.simulate(attn, x0, jnp.array([0.0, T]), solver="dopri8", rtol=1e-14, atol=1e-14).final
    return attn, x0, ref


@pytest.mark.parametrize(
    "solver,steps,order", [("euler", [32, 64, 128, 256], 1.0), ("rk4", [8, 16, 32, 64], 4.0)]
)
def test_fixed_step_order(problem, solver, steps, order):
    attn, x0, ref = problem
    errs = []
    for n in steps:
        xf = mf.simulate(attn, x0, jnp.array([0.0, T]), solver=solver, dt=T / n).final
        errs.append(float(jnp.max(jnp.abs(xf - ref))))
    slope = np.polyfit(np.log(T / np.asarray(steps)), np.log(errs), 1)[0]
    assert abs(slope - order) < 0.3, (solver, errs, slope)


def test_adaptive_meets_tolerance(problem):
    attn, x0, ref = problem
    errs = []
    for tol in [1e-6, 1e-8, 1e-10]:
        xf = mf.simulate(attn, x0, jnp.array([0.0, T]), solver="tsit5", rtol=tol, atol=tol).final
        err = float(jnp.max(jnp.abs(xf - ref)))
        assert err <= 10 * tol, (tol, err)
        errs.append(err)
    assert errs[0] > errs[1] > errs[2]


@pytest.mark.slow
def test_implicit_solver_agrees_on_a_stiff_usa_run():
    # USA with additive offsets moves at rates ~ e^{beta |y|^2} (here ~e^{6.5}): the implicit
    # Kvaerno5 and the explicit Tsit5 land on the same state.
    import jax

    n = 12
    s = (jnp.arange(n) + 0.5) / n
    aux = mf.TokenAux.default(n, z=jnp.stack([jnp.cos(jnp.pi * s), jnp.sin(jnp.pi * s)], 1))
    attn = mf.Attention(2.0, form="USA", pe=mf.AdditivePE(0.8))
    x0 = mf.sphere_uniform(jax.random.key(0), n, 2)
    ts = jnp.array([0.0, 20.0])
    explicit = mf.simulate(attn, x0, ts, aux=aux, solver="tsit5", rtol=1e-8, atol=1e-8)
    implicit = mf.simulate(attn, x0, ts, aux=aux, solver="kvaerno5", rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(implicit.final, explicit.final, atol=1e-5)
