r"""Known collapse results (float64).

Full attention, Q = K = V = I, d = 3, N = 32, beta = 1: tokens from a uniform start
collapse to one point (Geshkovski et al., d >= 3). Near consensus the SA field is
v_i ~ xbar, so P_{x_i} v_i ~ -(x_i - xbar) to first order: the diameter contracts like
e^{-t}. Starting from diameter ~2, once the cloud is in a hemisphere (t ~ 5 here) it needs
another ln(2 / 1e-3) ~ 7.6 time units to reach 1e-3: T = 20 leaves a margin of e^{-5}.

Causal mask: token 1 attends only to itself, v_1 = x_1, P_{x_1} x_1 = 0, so it never moves
(exactly); token k is pulled towards the earlier tokens, and by induction all converge to x_1.
The contraction of the last tokens is slower (they average over all earlier tokens); T = 40
reaches ~3e-5, well under the 1e-3 threshold.
"""

import jax.numpy as jnp
import numpy as np
import pytest

import meanfield as mf
from meanfield import observables as obs


@pytest.mark.slow
def test_full_attention_collapses_to_one_cluster(key):
    x0 = mf.sphere_uniform(key, 32, 3)
    traj = mf.simulate(mf.Attention(1.0), x0, jnp.linspace(0, 20, 21), rtol=1e-10, atol=1e-10)
    diam = np.asarray(obs.diameter(traj.xs))
    assert diam[0] > 1.5
    assert diam[-1] < 1e-3
    assert int(obs.n_clusters(traj.final, 1e-2)) == 1
    # exponential contraction at rate 1 in the final phase
    rate = -np.polyfit(np.asarray(traj.ts[-6:]), np.log(diam[-6:]), 1)[0]
    assert abs(rate - 1.0) < 0.05, rate


@pytest.mark.slow
def test_causal_first_token_fixed_and_rest_converge(key):
    x0 = mf.sphere_uniform(key, 32, 3)
    traj = mf.simulate(
        mf.Attention(1.0, mask=mf.Causal()), x0, jnp.linspace(0, 40, 21), rtol=1e-10, atol=1e-10
    )
    assert float(jnp.max(jnp.abs(traj.xs[:, 0] - x0[0]))) < 1e-14
    dist = jnp.linalg.norm(traj.final - x0[0], axis=-1)
    assert float(jnp.max(dist)) < 1e-3
