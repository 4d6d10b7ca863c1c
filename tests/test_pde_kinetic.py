"""Kinetic solver f(t, s, theta): the scan/FFT fast path against the particle engine's kernel
(direct quadrature), conservation, linear theory of the causal modes, the s-quadrature order,
the influence sum rule and U-shape onset, and agreement with causal particles as N grows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import meanfield as mf
from meanfield import theory
from meanfield.influence import bin_profile, u_shape_onset
from meanfield.pde import (
    CausalCoupling,
    CircleMeanField,
    FullCoupling,
    KineticMeanField,
    engine_face_velocity,
)
from meanfield.pde.circle import density_to_particles


def _state(pde, kappa=1.5):
    return pde.von_mises(kappa, jnp.linspace(0.0, 2.0, pde.n_s)) * (
        1 + 0.2 * jnp.sin(3 * pde.theta)
    )


@pytest.mark.slow
@pytest.mark.parametrize("lam", [0.0, 1.5])
@pytest.mark.parametrize("form", ["SA", "USA"])
def test_fast_causal_path_equals_engine_kernel(lam, form):
    """Associative scan in s + FFT in theta == the engine's Attention on the grid as tokens."""
    pde = KineticMeanField(
        12, 32, beta=2.0, a=1.0, b=0.3, form=form, coupling=CausalCoupling(lam, 1.0)
    )
    f = _state(pde)
    V = jnp.array([[1.0, -0.3], [0.3, 1.0]])  # a I + b J
    attn = mf.Attention(2.0, V=V, form=form, mask=mf.Causal() & mf.ALiBi(lam))
    ue = engine_face_velocity(attn, f, pde.s, pde.w)
    np.testing.assert_allclose(pde.face_velocity(f), ue, rtol=1e-11, atol=1e-12)
    dense = KineticMeanField(
        12, 32, beta=2.0, a=1.0, b=0.3, form=form, coupling=pde.coupling_matrix()
    )
    np.testing.assert_allclose(pde.face_velocity(f), dense.face_velocity(f), rtol=1e-12, atol=1e-13)


def test_matrix_coupling_equals_engine_with_concatenated_encoding():
    """PE case: b(z, z') = scale <A z, z'> through an explicit coupling matrix == ZBias kernel."""
    key = jax.random.key(3)
    S, dz, scale = 10, 3, 0.7
    z = jax.random.normal(key, (S, dz))
    A = jax.random.normal(jax.random.fold_in(key, 1), (dz, dz))
    w = jax.random.uniform(jax.random.fold_in(key, 2), (S,), minval=0.5, maxval=1.5)
    w = w / w.sum()
    c = w[None, :] * jnp.exp(scale * (z @ A.T) @ z.T)
    pde = KineticMeanField(S, 32, beta=1.5, coupling=c, w=w)
    f = _state(pde)
    attn = mf.Attention(1.5, mask=mf.ZBias(A, scale))
    ue = engine_face_velocity(attn, f, pde.s, pde.w, z=z)
    np.testing.assert_allclose(pde.face_velocity(f), ue, rtol=1e-11, atol=1e-12)


def test_one_row_full_coupling_is_the_circle_solver():
    kin = KineticMeanField(1, 64, beta=2.5, b=0.2, coupling=FullCoupling(0.0))
    circ = CircleMeanField(64, beta=2.5, b=0.2)
    rho = _state(kin)[0]
    np.testing.assert_allclose(
        kin.rhs(0.0, rho[None])[0], circ.rhs(0.0, rho), rtol=1e-12, atol=1e-13
    )


@pytest.mark.slow
def test_prompt_equals_a_frozen_one_cell_row():
    """A prompt token at a cell centre is exactly a row holding all its mass in that cell which
    attends only to itself (such a row never moves: upwind fluxes into empty cells vanish)."""
    S, M, j = 8, 32, 5
    base = KineticMeanField(S, M, beta=2.0, coupling=CausalCoupling(1.0))
    theta_p = float(base.theta[j])
    pw = 0.3 * jnp.exp(-0.5 * base.s)  # pi_p(s)
    with_prompt = KineticMeanField(
        S,
        M,
        beta=2.0,
        coupling=CausalCoupling(1.0),
        prompt_theta=theta_p,
        prompt_weight=pw[:, None],
    )
    c = np.zeros((S + 1, S + 1))
    c[:S, :S] = np.asarray(base.coupling_matrix())
    c[:S, S] = np.asarray(pw)
    c[S, S] = 1.0
    ext = KineticMeanField(S + 1, M, beta=2.0, coupling=jnp.asarray(c))
    f = _state(base)
    row = jnp.zeros((1, M)).at[0, j].set(1.0 / base.h)
    ts = jnp.linspace(0, 2.0, 3)
    a = with_prompt.solve(f, ts, dt=0.01).f
    b = ext.solve(jnp.concatenate([f, row]), ts, dt=0.01).f
    np.testing.assert_allclose(a, b[:, :S], rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(b[:, S], jnp.broadcast_to(row, (3, M)), atol=1e-14)


@pytest.mark.slow
@pytest.mark.parametrize(
    "coupling", [CausalCoupling(1.0), FullCoupling(1.0)], ids=["causal", "full"]
)
def test_mass_per_row_positivity_and_uniform_stationary(coupling):
    pde = KineticMeanField(16, 64, beta=3.0, b=0.4, coupling=coupling)
    np.testing.assert_allclose(pde.rhs(0.0, pde.uniform()), 0.0, atol=1e-14)
    f0 = _state(pde, kappa=0.5)
    f0 = f0 / (jnp.sum(f0, axis=1, keepdims=True) * pde.h)
    sol = pde.solve(f0, jnp.linspace(0, 6.0, 7))
    np.testing.assert_allclose(jnp.sum(sol.f, axis=2) * pde.h, 1.0, rtol=0, atol=1e-13)
    assert float(sol.f.min()) >= 0.0
    assert float(sol.f[-1].max()) > 2 * float(f0.max())


@pytest.mark.parametrize("form", ["SA", "USA"])
def test_causal_modes_follow_linear_theory(form):
    """f = (1 + eps a(s) cos theta)/2pi: the mode-1 amplitudes at time t equal
    exp(t lambda_1 C~) a(0) (theory.causal_mode_propagator), within 1 %."""
    S, beta, lam, eps = 16, 2.0, 1.0, 1e-6
    pde = KineticMeanField(S, 128, beta=beta, coupling=CausalCoupling(lam), form=form)
    a0 = 1.0 + np.cos(3 * np.asarray(pde.s))  # varies in s
    f0 = (1 + eps * jnp.asarray(a0)[:, None] * jnp.cos(pde.theta)[None, :]) / (2 * np.pi)
    t = 3.0
    sol = pde.solve(f0, jnp.array([0.0, t]), dt=0.01)
    amp = np.real(np.asarray(sol.moment(1))[-1]) * 2 / eps  # h sum cos(th_c) f_c = eps a / 2
    expect = theory.causal_mode_propagator(t, 1, beta, lam, S, form=form) @ a0
    np.testing.assert_allclose(amp, expect, rtol=1e-2)
    assert np.max(expect / a0) > 1.5  # the perturbation does grow


@pytest.mark.slow
@pytest.mark.parametrize("self_weight,order", [(0.5, 2.0), (1.0, 1.0)])
def test_s_quadrature_order(self_weight, order):
    """Refinement in s at fixed theta grid against S = 512: the half-weight own cell is second
    order, the discrete-token convention (full own weight) first order."""
    M, B, ts = 64, 8, jnp.array([0.0, 1.0])

    def run(S):
        pde = KineticMeanField(S, M, beta=2.0, coupling=CausalCoupling(1.0, self_weight))
        f = pde.solve(pde.von_mises(1.0, 1.5 * jnp.pi * pde.s), ts, dt=0.01).f[-1]
        return np.asarray(f).reshape(B, S // B, M).mean(1)

    ref = run(512)
    ss = [8, 16, 32, 64]
    errs = [np.abs(run(S) - ref).sum() / B * 2 * np.pi / M for S in ss]
    slope = -np.polyfit(np.log(ss), np.log(errs), 1)[0]
    assert abs(slope - order) < 0.3, (errs, slope)


@pytest.mark.slow
def test_influence_sum_rule_and_u_shape_onset_matches_linear_theory():
    """Rotating every initial row rotates the output: sum_s w c(t, s) = 1 (up to the grid's
    loss of exact rotation invariance). Around a nearly uniform state (kappa = 0.1) the U-shape
    onset of the binned profile equals the linear theory's tau* / lambda_1(beta)."""
    ts = np.linspace(0, 0.6, 61)
    beta = 2.0
    pde = KineticMeanField(64, 64, beta=beta, coupling=CausalCoupling(1.0))
    c = np.asarray(pde.influence(ts, kappa=0.1))
    prof = bin_profile(c * np.asarray(pde.w), 16)
    np.testing.assert_allclose(prof.sum(-1), 1.0, atol=1e-4)
    lin = bin_profile(
        np.array([theory.causal_mode_propagator(t, 1, beta, 1.0, 64)[-1] for t in ts]), 16
    )
    t_lin, t_kin = u_shape_onset(ts, lin), u_shape_onset(ts, prof)
    assert 0.1 < t_lin < 0.5
    assert abs(t_kin / t_lin - 1) < 0.02, (t_kin, t_lin)
    assert not np.any(np.isnan([t_lin, t_kin]))


@pytest.mark.slow
def test_causal_particles_approach_kinetic_solution():
    """N causal particles (s_i = (i+1/2)/N, ALiBi slope lam in s units) sampled from f_0: the
    per-bin mean of e^{i theta} at t = 2 approaches the kinetic solution like N^{-1/2}."""
    S, M, beta, lam, T, B = 64, 256, 2.0, 1.0, 2.0, 8
    pde = KineticMeanField(S, M, beta=beta, coupling=CausalCoupling(lam))
    f0 = pde.von_mises(1.0, 1.5 * jnp.pi * pde.s)
    ts = jnp.array([0.0, T])
    mk = np.asarray(pde.solve(f0, ts, cfl=0.3).moment(1))[-1].reshape(B, S // B).mean(-1)
    attn = mf.Attention(beta, mask=mf.Causal() & mf.ALiBi(lam))
    ns, errs = [128, 512, 2048], []
    for n in ns:
        s = (jnp.arange(n) + 0.5) / n
        cell = jnp.floor(s * S).astype(int)
        e = []
        for seed in range(4):
            keys = jax.random.split(jax.random.key(seed), n)
            th = jax.vmap(lambda k, c: density_to_particles(k, f0[c], 1)[0])(keys, cell)
            x0 = jnp.stack([jnp.cos(th), jnp.sin(th)], -1)
            xs = mf.simulate(
                attn, x0, ts, aux=mf.TokenAux.default(n, jnp.float64, pos=s), rtol=1e-7, atol=1e-9
            ).final
            mp = np.asarray(xs[:, 0] + 1j * xs[:, 1]).reshape(B, n // B).mean(-1)
            e.append(np.sqrt(np.mean(np.abs(mp - mk) ** 2)))
        errs.append(np.mean(e))
    slope = np.polyfit(np.log(ns), np.log(errs), 1)[0]
    assert errs[0] > errs[1] > errs[2], errs
    assert -0.75 < slope < -0.3, (errs, slope)


def test_coupling_strategies_and_the_removed_strings():
    """CausalCoupling's O(S M) scan equals its own dense matrix; the 0.2 string form and its loose
    keywords were removed in 0.3 and are refused."""
    from meanfield.pde import CausalCoupling, FullCoupling, MatrixCoupling

    f = jax.random.uniform(jax.random.key(3), (12, 16))
    for cpl in (CausalCoupling(lam=1.3, self_weight=0.7), FullCoupling(0.4)):
        pde = KineticMeanField(12, 16, beta=1.0, coupling=cpl)
        np.testing.assert_allclose(pde.mix(f), pde.coupling_matrix() @ f, rtol=1e-13, atol=1e-14)
        dense = KineticMeanField(12, 16, beta=1.0, coupling=MatrixCoupling(pde.coupling_matrix()))
        np.testing.assert_allclose(dense.mix(f), pde.mix(f), rtol=1e-13, atol=1e-14)
    with pytest.raises(ValueError, match="the 0.2 strings 'causal'/'full' were removed"):
        KineticMeanField(12, 16, beta=1.0, coupling="causal")
    with pytest.raises(TypeError, match="lam"):
        KineticMeanField(12, 16, coupling=CausalCoupling(1.0), lam=2.0)
    with pytest.raises(ValueError, match="strictly increasing"):
        KineticMeanField(s=[0.5, 0.2, 0.9], m=16, coupling=CausalCoupling(1.0))
