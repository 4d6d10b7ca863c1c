"""Bad input fails with a ValueError that names the parameter, before any solve is traced."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest

import meanfield as mf
from meanfield.particles import _layers, _simulate

TS = jnp.linspace(0.0, 1.0, 3)


@pytest.fixture
def x0(key):
    return mf.sphere_uniform(key, 6, 3)


def no_trace(fn, match):
    """``fn`` raises our one-line ValueError before tracing. These tests check the messages users
    get, so jaxtyping's test-time hook (which would reject a wrong shape first, with its own
    TypeCheckError) is off inside them."""
    before = eqx.debug.get_num_traces(_simulate) + eqx.debug.get_num_traces(_layers)
    disabled = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        with pytest.raises(ValueError, match=match):
            fn()
    finally:
        jaxtyping.config.update("jaxtyping_disable", disabled)
    assert eqx.debug.get_num_traces(_simulate) + eqx.debug.get_num_traces(_layers) == before


def test_wrong_state_shape(x0):
    no_trace(lambda: mf.simulate(mf.Attention(1.0), x0[0], TS), r"x0 must have shape \(N, d\)")
    no_trace(
        lambda: mf.simulate(mf.Attention(1.0, Q=jnp.eye(4)), x0, TS),
        r"Q has shape \(1, 4, 4\).*d = 3",
    )
    no_trace(
        lambda: mf.simulate(mf.Attention(1.0), x0, jnp.array([0.0])), r"ts must be a 1-D array"
    )
    no_trace(lambda: mf.layers(mf.Attention(1.0, V=jnp.eye(2)), x0, 3), r"V has shape")


def test_tokens_not_on_sphere(x0):
    no_trace(
        lambda: mf.simulate(mf.Attention(1.0), 1.5 * x0, TS),
        r"x0: tokens must lie on the unit sphere",
    )
    no_trace(
        lambda: mf.layers(mf.Attention(1.0), 1.5 * x0, 2), r"x0: tokens must lie on the unit sphere"
    )
    # Euclidean geometry and pre-LN layers accept any finite state
    mf.simulate(mf.Attention(1.0), 1.5 * x0, TS, geometry=mf.Euclidean())
    mf.layers(mf.Attention(1.0), 1.5 * x0, 2, norm=mf.PreLN())


@pytest.mark.parametrize("beta", [float("inf"), float("nan")])
def test_bad_beta(x0, beta):
    with pytest.raises(ValueError, match="beta must be finite"):
        mf.Attention(beta)
    # a beta smuggled in after construction is caught by simulate before the solve
    import equinox as eqx

    attn = eqx.tree_at(lambda a: a.beta, mf.Attention(1.0), jnp.asarray(beta))
    no_trace(lambda: mf.simulate(attn, x0, TS), "beta must be finite")


def test_traced_bad_beta_is_a_result_code(x0):
    """Inside a user's jit the value is unknown at trace time: the solve returns
    RESULTS.invalid_parameter with NaN states (computed in the graph, no host callback);
    beta < 0 is a valid model."""
    from meanfield.particles import RESULTS

    f = jax.jit(lambda b: mf.simulate(mf.Attention(b), x0, TS))
    assert f(-1.0).result == RESULTS.successful
    bad = f(jnp.nan)
    assert bad.result == RESULTS.invalid_parameter and bool(jnp.all(jnp.isnan(bad.xs)))


def test_mask_length_mismatch(x0):
    no_trace(
        lambda: mf.simulate(mf.Attention(1.0, mask=mf.CustomBias(jnp.zeros((5, 5)))), x0, TS),
        r"CustomBias: matrix has shape \(5, 5\).*N = 6",
    )
    no_trace(
        lambda: mf.simulate(
            mf.Attention(1.0, mask=mf.Causal()), x0, TS, aux=mf.TokenAux.default(7)
        ),
        r"aux.pos must have shape \(6,\)",
    )
    no_trace(
        lambda: mf.simulate(mf.Attention(1.0, heads=2, mask=mf.ALiBi(jnp.ones(3))), x0, TS),
        r"ALiBi: slope has 3 entries but the attention has 2 heads",
    )


def test_non_square_and_inconsistent_matrices():
    with pytest.raises(ValueError, match=r"Q must be square"):
        mf.Attention(1.0, Q=np.ones((3, 4)))
    with pytest.raises(ValueError, match=r"K must have shape"):
        mf.Attention(1.0, K=np.ones(3))
    with pytest.raises(ValueError, match=r"inconsistent number of heads"):
        mf.Attention(1.0, Q=np.ones((2, 3, 3)), V=np.ones((3, 3, 3)))
    with pytest.raises(ValueError, match=r"form must be one of"):
        mf.Attention(1.0, form="softmax")
    with pytest.raises(ValueError, match=r"backend must be a backend module"):
        mf.Attention(1.0, backend="flash")


def test_solver_and_step_errors(x0):
    no_trace(lambda: mf.simulate(mf.Attention(1.0), x0, TS, solver="rk5"), r"solver must be one of")
    no_trace(
        lambda: mf.simulate(mf.Attention(1.0), x0, TS, solver="euler"), r"dt: adaptive stepping"
    )
    no_trace(
        lambda: mf.simulate(mf.Attention(1.0), x0, TS, solver="euler", dt=-0.1),
        r"dt must be finite and > 0",
    )
    no_trace(
        lambda: mf.simulate(mf.Attention(1.0), x0, TS[::-1]), r"ts must be strictly increasing"
    )
    no_trace(lambda: mf.layers(mf.Attention(1.0), x0, 2, h=0.0), r"h must be finite and > 0")
