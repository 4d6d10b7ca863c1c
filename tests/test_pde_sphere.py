"""The mean-field PDE on S^2 (pseudo-spectral, s2fft): Funk-Hecke coefficients, linear growth rates
against the closed form, exact mass conservation, the failure of a state beyond the band limit,
closed forms of the observables, and the particle <-> density helpers."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special as sp

import meanfield as mf
from meanfield.pde import RESULTS, SphereMeanField
from meanfield.pde._s2 import grid_points
from meanfield.pde.sphere import (
    density_mmd,
    density_mmd_between,
    density_to_particles,
    evaluate,
    particles_to_density,
    quadrature_weights,
    resample,
    sph_in,
)
from meanfield.theory import sphere_growth_rate, sphere_kinetic_rate


def test_spherical_bessel_in_jax_matches_scipy():
    for beta in (1e-3, 0.5, 4.0, 9.0, 50.0, -3.0):  # i_l(-b) = (-1)^l i_l(b)
        got = np.asarray(sph_in(20, beta))
        assert np.max(np.abs(got / sp.spherical_in(np.arange(21), beta) - 1)) < 1e-12


@pytest.mark.slow
@pytest.mark.parametrize("form", ["SA", "USA"])
@pytest.mark.parametrize("beta", [1.0, 4.0, -2.0])
def test_linear_growth_rates_match_the_closed_form(form, beta):
    """Linear response of the solver: the tangent of the solve at the uniform state (forward mode
    through the time stepping) along all degrees l = 1..6 at once (independent in the linearised
    dynamics), m = 0 and m = l, each projected exactly onto Y_lm after T = 10 / (fastest rate):
    within 1e-3 relative of a l(l+1) i_l / (beta i_0) (SA) or a l(l+1) i_l / beta (USA)."""
    pde = SphereMeanField(8, beta=beta, form=form)
    ells = [ell for ell in range(1, 7) for _ in range(2)]
    ms = [m for ell in range(1, 7) for m in (0, ell)]
    tangent = sum(pde.harmonic(ell, m) for ell, m in zip(ells, ms)) / (4 * np.pi)
    T = 10.0 / float(pde.linear_rate_bound())
    solve = lambda r: pde.solve(r, jnp.array([0.0, T]), adjoint=diffrax.ForwardMode()).rho[-1]  # noqa: E731
    _, response = jax.jvp(solve, (pde.uniform(),), (tangent,))
    c0, c1 = pde.forward(tangent), pde.forward(response)
    for ell, m in zip(ells, ms):
        rate = (
            np.log(float(jnp.abs(c1[ell, pde.L - 1 + m])) / float(jnp.abs(c0[ell, pde.L - 1 + m])))
            / T
        )
        theory = sphere_growth_rate(ell, beta, form=form)
        assert abs(rate / theory - 1) < 1e-3, (ell, m, rate, theory)
    assert sphere_kinetic_rate(3, 2.0) == pytest.approx(12 * sp.spherical_in(3, 2.0))


@pytest.mark.slow
def test_mass_is_conserved_and_an_unresolved_state_fails():
    """SA, beta = 4, perturbed(3, 0, 0.05), L = 16: to T = 3 the run stays resolved and its mass
    drifts by <= 1e-12; the clusters then contract exponentially, and at T = 10 they are beyond the
    band limit (L = 16 fails at t = 3.4, L = 48 at t = 6.3, L = 96 at t = 7.25-7.5: t = 10 would need
    L in the hundreds), which is a SolverError, or RESULTS.unresolved with NaN saves from then on."""
    pde = SphereMeanField(16, beta=4.0)
    rho0 = pde.perturbed(3, 0, 0.05)
    sol = pde.solve(rho0, jnp.linspace(0.0, 3.0, 4))
    mass = np.asarray([float(pde.mass(r)) for r in sol.rho])
    assert np.max(np.abs(mass - 1.0)) <= 1e-12
    assert float(sol.rho[-1].max()) > 1.2 * float(rho0.max())  # it is clustering
    with pytest.raises(
        mf.SolverError, match=r"SphereMeanField.solve failed at t = .*larger band limit L"
    ):
        pde.solve(rho0, jnp.array([0.0, 10.0]))
    bad = pde.solve(rho0, jnp.array([0.0, 3.0, 10.0]), throw=False)
    assert bad.result == RESULTS.unresolved
    assert bool(jnp.all(jnp.isfinite(bad.rho[1]))) and bool(jnp.all(jnp.isnan(bad.rho[2])))


@pytest.mark.slow
def test_observables_closed_forms():
    """Uniform: energy i_0(beta) / (2 beta), degree spectrum only at l = 0 (1/(4 pi)), distance to
    the nearest Dirac sqrt(2); von Mises-Fisher(kappa): mean resultant coth(kappa) - 1/kappa."""
    pde = SphereMeanField(24, beta=2.0)
    u = pde.uniform()
    assert float(pde.energy(u)) == pytest.approx(sp.spherical_in(0, 2.0) / 4.0, rel=1e-12)
    spec = np.asarray(pde.degree_spectrum(u))
    assert spec[0] == pytest.approx(1 / (4 * np.pi), rel=1e-12) and np.all(spec[1:] < 1e-28)
    assert float(pde.dirac_distance(u)) == pytest.approx(np.sqrt(2.0), rel=1e-12)
    kappa = 3.0
    v = pde.von_mises_fisher(kappa, (1.0, 1.0, 0.0))
    m1 = np.asarray(pde.first_moment(v))
    r = 1 / np.tanh(kappa) - 1 / kappa
    np.testing.assert_allclose(m1, r * np.array([1, 1, 0]) / np.sqrt(2), atol=1e-9)
    assert float(pde.mass(v)) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.slow
def test_quadrature_weights_and_point_evaluation_are_exact():
    """The MW quadrature integrates every degree < band exactly (4 pi, and x_3^2 -> 4 pi / 3), and
    the band-limited interpolant reproduces the grid values and a vMF density (its band-16 tail is
    below 1e-13 at kappa = 2) at arbitrary points."""
    L = 16
    w = quadrature_weights(2 * L)
    z = grid_points(2 * L)[..., 2]
    assert float(jnp.sum(w)) == pytest.approx(4 * np.pi, rel=1e-13)
    assert float(jnp.sum(w * z**2)) == pytest.approx(4 * np.pi / 3, rel=1e-13)
    assert abs(float(jnp.sum(w * z**5))) < 1e-13
    pde = SphereMeanField(L, beta=1.0)
    mu = np.array([0.3, 0.2, 1.0]) / np.linalg.norm([0.3, 0.2, 1.0])
    rho = pde.von_mises_fisher(2.0, mu)
    assert (
        float(jnp.max(jnp.abs(evaluate(rho, pde.points().reshape(-1, 3)) - rho.reshape(-1))))
        < 1e-13
    )
    x = jax.random.normal(jax.random.key(1), (300, 3))
    x = x / jnp.linalg.norm(x, axis=1, keepdims=True)
    exact = 2.0 / (2 * np.pi * (-np.expm1(-4.0))) * jnp.exp(2.0 * (x @ mu - 1))
    assert float(jnp.max(jnp.abs(evaluate(rho, x, block=128) - exact))) < 1e-12


@pytest.mark.slow
def test_mmd_of_iid_samples_has_its_exact_expectation():
    """For N i.i.d. samples of rho, E MMD^2 = (e^kappa - sum_l 4 pi i_l(kappa) C_l) / N exactly
    (the V-statistic): the mean over 200 samples of N = 64 agrees within 4 standard errors; and the
    MMD between two densities is zero for the same function on two grids, positive otherwise."""
    pde = SphereMeanField(8, beta=1.0)
    rho = pde.von_mises_fisher(1.0, (0.0, 0.6, 0.8))
    n, kappa = 64, 1.5
    mmd2 = jax.vmap(lambda k: density_mmd(density_to_particles(k, rho, n), rho, kappa=kappa) ** 2)(
        jax.random.split(jax.random.key(3), 200)
    )
    dd = float(jnp.sum(4 * np.pi * sph_in(7, kappa) * pde.degree_spectrum(rho)))
    expected = (np.exp(kappa) - dd) / n
    se = float(jnp.std(mmd2)) / np.sqrt(200)
    assert abs(float(jnp.mean(mmd2)) - expected) < 4 * se, (float(jnp.mean(mmd2)), expected, se)
    assert float(density_mmd_between(rho, resample(rho, 16))) < 1e-12
    assert float(density_mmd_between(rho, pde.uniform())) > 0.1


@pytest.mark.slow
def test_particles_and_density_round_trip():
    """Exact samples of a vMF density have its mean resultant (to the N^-1/2 noise), and their kernel
    density estimate has unit mass and the same mean direction."""
    pde = SphereMeanField(16, beta=1.0)
    kappa, n = 2.0, 20000
    x = density_to_particles(jax.random.key(0), pde.von_mises_fisher(kappa), n)
    assert np.allclose(np.linalg.norm(np.asarray(x), axis=1), 1.0)
    r = 1 / np.tanh(kappa) - 1 / kappa
    assert abs(float(jnp.mean(x[:, 2])) - r) < 5 / np.sqrt(n)
    rho = particles_to_density(x, 16, bandwidth=0.3)
    assert float(pde.mass(rho)) == pytest.approx(1.0, abs=1e-6)
    k_kde = (
        1 / 0.3**2
    )  # the estimate is the sample convolved with a vMF(k_kde): resultants multiply
    assert abs(
        float(pde.first_moment(rho)[2]) - r * (1 / np.tanh(k_kde) - 1 / k_kde)
    ) < 5 / np.sqrt(n)
