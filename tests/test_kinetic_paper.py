"""The kinetic lost-in-the-middle model as Duerinckx, Geshkovski & Rossi (2026) state it:
strictly causal, position-normalised ALiBi, USA content with V = beta I. Particles against an
independent NumPy RK4 of the paper's equation, the kernel's normalised field on every backend,
the closed-form profile and t_crit against their series, the discrete propagator and the
kinetic PDE."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import iv

import meanfield as mf
from conftest import EXACT, backend_params
from meanfield import theory
from meanfield.influence import right_end_slope, u_shape_end
from meanfield.kernel import Chunked, Dense, Fused
from meanfield.pde import CausalCoupling, KineticMeanField


def paper_attention(beta, lam, n, backend=None, heads_slopes=None):
    slope = lam / n if heads_slopes is None else jnp.asarray(heads_slopes)
    mask = mf.PositionNormalized(mf.Causal(strict=True) & mf.ALiBi(slope))
    heads = None if heads_slopes is None else len(heads_slopes)
    return mf.Attention(
        beta, V=beta * jnp.eye(2), form="USA", mask=mask, backend=backend, heads=heads
    )


def paper_rhs(theta, beta, lam):
    """dtheta_j/dt = sum_{k<j} w_jk (-beta sin(theta_j - theta_k) e^{beta cos(theta_j - theta_k)})."""
    n = theta.shape[0]
    out = np.zeros(n)
    for j in range(1, n):
        k = np.arange(j)
        w = np.exp(-(lam / n) * (j - k))
        w /= w.sum()
        d = theta[j] - theta[k]
        out[j] = np.sum(w * (-beta * np.sin(d) * np.exp(beta * np.cos(d))))
    return out


def circle(theta):
    return np.stack([np.cos(theta), np.sin(theta)], -1)


@pytest.mark.parametrize("backend", backend_params(EXACT))
def test_position_normalized_usa_field_is_the_papers_w_field(backend):
    n, beta, lam = 13, 2.0, 3.0
    theta = np.random.default_rng(0).uniform(0, 2 * np.pi, n)
    v = np.asarray(mf.velocity(paper_attention(beta, lam, n, backend), circle(theta)))
    tangent = circle(theta + np.pi / 2)
    np.testing.assert_allclose(
        np.sum(v * tangent, -1), paper_rhs(theta, beta, lam), rtol=0, atol=1e-12
    )
    assert np.all(v[0] == 0.0)  # the first token sees no key: zero field, no 0/0


def test_position_normalized_per_head_slopes_and_prompt_keys():
    """Two heads with their own slopes normalise separately; a free prompt key counts in every
    row's positional normaliser (weight m_p e^0)."""
    n, beta = 9, 1.5
    theta = np.random.default_rng(1).uniform(0, 2 * np.pi, n)
    x = circle(theta)
    slopes = np.array([0.2, 1.1])
    p = np.array([[1.0, 0.0]])
    out = {}
    for name, be in (("dense", Dense()), ("chunked", Chunked(block=4))):
        attn = paper_attention(beta, 0.0, n, be, heads_slopes=slopes)
        out[name] = np.asarray(attn(x, prompt=mf.Prompt(p)))
    ref = np.zeros((n, 2))
    for h, lam in enumerate(slopes):
        for i in range(n):
            j = np.arange(i)
            pos_w = np.concatenate(
                [np.exp(-lam * (i - j)) / n, [1.0 / n]]
            )  # keys j < i, then the prompt
            keys = np.concatenate([x[j], p])
            content = np.exp(beta * keys @ x[i])
            ref[i] += (pos_w * content) @ (beta * keys) / pos_w.sum() / len(slopes)
    np.testing.assert_allclose(out["dense"], ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out["chunked"], ref, rtol=1e-12, atol=1e-12)


def test_position_normalized_changes_nothing_under_sa_and_strict_causal_rows():
    x = mf.sphere_uniform(jax.random.key(2), 11, 3)
    for be in (Dense(), Chunked(block=4)):
        a = mf.Attention(2.0, mask=mf.Causal(strict=True) & mf.ALiBi(0.3), backend=be)
        b = mf.Attention(
            2.0, mask=mf.PositionNormalized(mf.Causal(strict=True) & mf.ALiBi(0.3)), backend=be
        )
        np.testing.assert_allclose(a(x), b(x), rtol=1e-13, atol=1e-15)
        assert np.all(np.asarray(a(x))[0] == 0.0)
        w = np.asarray(mf.Attention(2.0, mask=mf.Causal(strict=True), backend=be).weights(x))[0]
        assert np.all(np.triu(w) == 0.0) and np.allclose(w[1:].sum(1), 1.0)
    with pytest.raises(ValueError, match="wrap the whole mask"):
        mf.Causal() & mf.PositionNormalized(mf.ALiBi(1.0))


def test_fused_backend_matches_the_papers_field_in_interpret_mode():
    n, beta, lam = 37, 2.0, 3.0
    theta = np.random.default_rng(3).uniform(0, 2 * np.pi, n)
    x = jnp.asarray(circle(theta), jnp.float32)
    v = np.asarray(
        mf.velocity(paper_attention(beta, lam, n, Fused(block_q=16, block_k=16)), x), np.float64
    )
    ref = paper_rhs(theta, beta, lam)
    np.testing.assert_allclose(
        np.sum(v * circle(theta + np.pi / 2), -1), ref, rtol=0, atol=2e-5 * np.abs(ref).max()
    )


def test_particles_match_an_independent_rk4_of_the_papers_equation():
    n, beta, lam, t1 = 12, 1.5, 2.0, 1.0
    theta0 = np.random.default_rng(4).uniform(0, 2 * np.pi, n)
    th, dt = theta0.copy(), 1e-3
    for _ in range(int(round(t1 / dt))):
        k1 = paper_rhs(th, beta, lam)
        k2 = paper_rhs(th + dt / 2 * k1, beta, lam)
        k3 = paper_rhs(th + dt / 2 * k2, beta, lam)
        k4 = paper_rhs(th + dt * k3, beta, lam)
        th = th + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    traj = mf.simulate(
        paper_attention(beta, lam, n), circle(theta0), [0.0, t1], rtol=1e-11, atol=1e-12
    )
    x = np.asarray(traj.final)
    got = np.arctan2(x[:, 1], x[:, 0])
    np.testing.assert_allclose(np.angle(np.exp(1j * (got - th))), 0.0, atol=1e-9)
    assert got[0] == pytest.approx(
        np.angle(np.exp(1j * theta0[0])), abs=1e-14
    )  # the first token never moves


# ------------------------------------------------------------------------------------ theory
def test_closed_form_psi_equals_its_series_and_lambda_zero_is_a_limit():
    for c, y in [(0.3, 0.2), (2.3, 0.7), (5.0, 3.0)]:
        series = sum(
            c ** (k + 1) * y**k / (math.factorial(k) * math.factorial(k + 1)) for k in range(60)
        )
        assert theory.kinetic_psi(c, y) == pytest.approx(series, rel=1e-13)
    assert theory.kinetic_psi(1.7, 0.0) == pytest.approx(1.7)
    s = np.linspace(0.05, 1.0, 7)
    np.testing.assert_allclose(
        theory.kinetic_green(s, 0.7, 1.3, 1e-9), theory.kinetic_green(s, 0.7, 1.3, 0.0), rtol=1e-8
    )


@pytest.mark.parametrize("beta,lam", [(0.25, 1.0), (1.0, 1.0), (4.0, 0.5), (2.0, 3.0)])
def test_tcrit_is_where_the_closed_form_right_end_slope_changes_sign(beta, lam):
    """Independent of the derivation: the sign change of dS_t/ds(1), by a one-sided finite
    difference of the closed-form profile, brackets the closed-form t_crit."""
    tc = theory.kinetic_tcrit(beta, lam)
    slope = lambda t: (
        theory.kinetic_profile(1.0, t, beta, lam) - theory.kinetic_profile(1.0 - 1e-6, t, beta, lam)
    )  # noqa: E731
    assert slope(0.98 * tc) > 0 > slope(1.02 * tc)
    ts = np.linspace(0.02, 3.0, 150) * tc
    prof = np.stack(
        [theory.kinetic_profile(np.array([1 - 2e-6, 1 - 1e-6, 1.0]), t, beta, lam) for t in ts]
    )
    assert u_shape_end(ts, prof) == pytest.approx(tc, rel=1e-3)
    assert right_end_slope(prof[0]) > 0


def test_tcrit_decreases_about_200x_from_beta_quarter_to_four():
    ratio = theory.kinetic_tcrit(0.25) / theory.kinetic_tcrit(4.0)
    assert 150 < ratio < 260, ratio
    assert theory.kinetic_tcrit(1.0, lam=0.0) == 0.0


def test_discrete_propagator_tcrit_converges_at_first_order_in_S():
    beta, lam = 1.0, 1.0
    tc = theory.kinetic_tcrit(beta, lam)
    errs = [theory.kinetic_propagator_tcrit(beta, lam, S) / tc - 1 for S in (64, 128, 256)]
    ratios = [errs[0] / errs[1], errs[1] / errs[2]]
    assert all(1.8 < r < 2.2 for r in ratios), (errs, ratios)
    assert abs(errs[-1]) < 0.01


def test_causal_mode_propagator_separates_content_and_position_normalisation():
    n, beta, lam, S, t = 2, 1.5, 1.0, 32, 0.4
    paper = theory.causal_mode_propagator(
        t, n, beta, lam, S, form="USA", value=beta, normalized=True, strict=True
    )
    c = theory.causal_coupling(S, lam, strict=True, normalized=True)
    from scipy.linalg import expm

    np.testing.assert_allclose(paper, expm(t * n**2 * iv(n, beta) * c), rtol=1e-12)
    assert np.allclose(c[1:].sum(1), 1.0) and np.all(c[0] == 0)
    with pytest.raises(ValueError, match="normalized=False"):
        theory.causal_mode_propagator(t, n, beta, lam, S, form="SA", normalized=False)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: theory.kinetic_tcrit(1.0, lam=-1.0), "lam"),
        (lambda: theory.kinetic_tcrit(1.0, M=0.0), "M"),
        (lambda: theory.kinetic_tcrit(1.0, n_max=0), "n_max"),
        (lambda: theory.kinetic_profile(0.5, 1.0, -1.0), "beta"),
        (lambda: theory.kinetic_green(0.5, 1.0, 1.0, -0.5), "lam"),
        (lambda: CausalCoupling(-1.0), "lam"),
        (lambda: CausalCoupling(1.0, 0.5, strict=True), "self_weight"),
    ],
)
def test_bad_kinetic_parameters_are_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ------------------------------------------------------------------------------- kinetic PDE
@pytest.mark.parametrize("strict", [False, True])
def test_normalized_causal_scan_equals_the_dense_matrix(strict):
    s = (np.arange(10) + 0.5) / 10
    w = np.full(10, 0.1)
    f = np.random.default_rng(5).uniform(0.1, 1.0, (10, 7))
    cp = CausalCoupling(1.7, strict=strict, normalized=True)
    np.testing.assert_allclose(
        cp.mix(jnp.asarray(s), jnp.asarray(w), jnp.asarray(f)), cp.matrix(s, w) @ f, rtol=1e-12
    )
    np.testing.assert_allclose(
        cp.matrix(s, w),
        theory.causal_coupling(10, 1.7, strict=strict, normalized=True)
        if strict
        else theory.causal_coupling(10, 1.7, 0.5, normalized=True),
        rtol=1e-12,
    )


def test_pde_growth_rate_with_self_weighted_normalised_rows_is_n2_In_with_the_default_step():
    """Rows summing to 1 (self weight 1/2, normalised) make a uniform-in-s mode n grow at exactly
    a_n = n^2 I_n(beta) (V = beta I, USA); one save interval, default step, M = 256."""
    beta, lam = 1.0, 1.0
    for n in (1, 2, 3):
        pde = KineticMeanField(
            16, 256, beta=beta, a=beta, form="USA", coupling=CausalCoupling(lam, normalized=True)
        )
        f0 = jnp.broadcast_to(pde.uniform()[0] * (1 + 1e-6 * jnp.cos(n * pde.theta)), (16, 256))
        sol = pde.solve(f0, [0.0, 1.0])
        c = np.asarray(sol.f @ jnp.cos(n * pde.theta))
        np.testing.assert_allclose(np.log(c[1] / c[0]) / (n**2 * iv(n, beta)), 1.0, atol=1e-3)


@pytest.mark.slow
def test_pde_mode_response_is_the_discrete_propagator_row():
    beta, lam, S = 1.0, 1.0, 32
    tc = theory.kinetic_tcrit(beta, lam)
    pde = KineticMeanField.paper_model(S, 64, beta, lam)
    R = np.asarray(pde.mode_response(jnp.array([0.0, tc]), 2))
    P = theory.causal_mode_propagator(
        tc, 2, beta, lam, S, form="USA", value=beta, normalized=True, strict=True
    )
    np.testing.assert_allclose(R[0] / S, np.eye(S)[-1], atol=1e-12)
    np.testing.assert_allclose(R[1] / S, P[-1], atol=3e-3)
