"""Circle mean-field solver: conservation, positivity, stationarity, linear growth rates against
the Bessel closed form, grid convergence order, and agreement with particles as N grows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import meanfield as mf
from meanfield.pde.circle import (
    CircleMeanField,
    density_to_particles,
    density_w1,
    particles_to_density,
)
from meanfield.theory import circle_growth_rate


def cell_averages(m):
    """Exact cell averages of rho(t) = (1 + 0.6 cos t + 0.3 sin 2t) / (2 pi)."""
    h = 2 * np.pi / m
    e = np.arange(m + 1) * h
    F = lambda t: (t + 0.6 * np.sin(t) - 0.15 * np.cos(2 * t)) / (2 * np.pi)
    return jnp.asarray((F(e[1:]) - F(e[:-1])) / h)


@pytest.mark.parametrize("form", ["SA", "USA"])
@pytest.mark.parametrize("beta", [1.0, 4.0])
def test_linear_growth_rates_match_bessel_closed_form(form, beta):
    pde = CircleMeanField(256, beta=beta, form=form)
    for n in [1, 2, 3, 4]:
        rate_th = circle_growth_rate(n, beta, form=form)
        rho0 = pde.uniform() * (1 + 1e-7 * jnp.cos(n * pde.theta))
        T = 2.0 / rate_th
        ts = jnp.linspace(0, T, 11)
        sol = pde.solve(rho0, ts, dt=T / 2000)
        amp = np.abs(np.fft.rfft(np.asarray(sol.rho), axis=1)[:, n])
        rate = np.polyfit(np.asarray(ts), np.log(amp), 1)[0]
        assert abs(rate / rate_th - 1) < 0.01, (n, rate, rate_th)


@pytest.mark.parametrize("form", ["SA", "USA"])
def test_mass_positivity_and_uniform_stationary(form):
    pde = CircleMeanField(128, beta=4.0, b=0.5, form=form)
    np.testing.assert_allclose(pde.rhs(0.0, pde.uniform()), 0.0, atol=1e-14)
    rho0 = cell_averages(128)
    sol = pde.solve(rho0, jnp.linspace(0, 8.0 if form == "SA" else 2.0, 9), cfl=0.4)
    mass = jnp.sum(sol.rho, axis=1) * pde.h
    np.testing.assert_allclose(mass, 1.0, rtol=0, atol=1e-13)
    assert float(sol.rho.min()) >= 0.0
    assert float(sol.rho[-1].max()) > 2 * float(rho0.max())  # it does concentrate


@pytest.mark.slow
def test_grid_refinement_is_second_order():
    beta, T = 3.0, 1.0
    ref = (
        CircleMeanField(4096, beta=beta)
        .solve(cell_averages(4096), jnp.array([0.0, T]), cfl=0.2)
        .rho[-1]
    )
    ms = [64, 128, 256, 512]
    errs = []
    for m in ms:
        sol = (
            CircleMeanField(m, beta=beta)
            .solve(cell_averages(m), jnp.array([0.0, T]), cfl=0.2)
            .rho[-1]
        )
        errs.append(float(jnp.sum(jnp.abs(sol - ref.reshape(m, -1).mean(1)))) * 2 * np.pi / m)
    slope = -np.polyfit(np.log(ms), np.log(errs), 1)[0]
    assert abs(slope - 2.0) < 0.3, (errs, slope)


@pytest.mark.slow
def test_particles_converge_to_the_pde_at_rate_n_to_minus_half():
    # N i.i.d. particles from rho0, evolved by the particle engine (SA on S^1); W1 to the PDE
    # density at T: the empirical-measure fluctuation ~ N^{-1/2} dominates (the PDE error at
    # M = 1024 is ~1e-5 in L1).
    beta, T = 3.0, 1.0
    pde = CircleMeanField(1024, beta=beta)
    rho0 = cell_averages(1024)
    rho_t = pde.solve(rho0, jnp.array([0.0, T]), cfl=0.2).rho[-1]
    ns, w1 = [64, 256, 1024, 4096], []
    for n in ns:
        vals = []
        for seed in range(4):
            th0 = density_to_particles(jax.random.key(seed), rho0, n)
            x0 = jnp.stack([jnp.cos(th0), jnp.sin(th0)], 1)
            xt = mf.simulate(
                mf.Attention(beta), x0, jnp.array([0.0, T]), rtol=1e-8, atol=1e-8
            ).final
            vals.append(float(density_w1(jnp.arctan2(xt[:, 1], xt[:, 0]), rho_t)))
        w1.append(np.mean(vals))
    slope = np.polyfit(np.log(ns), np.log(w1), 1)[0]
    assert -0.65 < slope < -0.35, (w1, slope)


@pytest.mark.slow
def test_density_w1_and_conversions():
    m = 512
    rho = cell_averages(m)
    # W1 between a density and itself sampled finely falls to ~0; against a point mass it is large
    th = density_to_particles(jax.random.key(0), rho, 200_000)
    assert float(density_w1(th, rho)) < 0.01
    assert float(density_w1(jnp.zeros(10), rho)) > 1.0
    # exact case: uniform density vs a single atom at 0: W1 = int_0^{2pi} |t/2pi - 1 - c| dt, c* = -1/2 -> pi/2
    np.testing.assert_allclose(
        density_w1(jnp.array([0.0]), jnp.full((m,), 1 / (2 * np.pi))), np.pi / 2, rtol=1e-9
    )
    # kernel density: unit mass, and close to the sampled density for small bandwidth
    kde = particles_to_density(th[:20_000], m, bandwidth=0.05)
    np.testing.assert_allclose(jnp.sum(kde) * 2 * np.pi / m, 1.0, rtol=1e-6)
    assert float(jnp.max(jnp.abs(kde - rho))) < 0.1 * float(rho.max())


@pytest.mark.parametrize("form,t1", [("SA", 2.0), ("USA", 0.5)])
def test_default_step_is_accurate_over_one_save_interval(form, t1):
    """dt=None over a single save interval [0, t1]: near the uniform state max|u| ~ eps, so a
    CFL-only step would be the whole interval; the rate bound keeps the linear growth rates of
    modes 1..3 within 1e-3 (relative) of n^2 I_n(beta) / (beta I_0) (SA) or / beta (USA), for a
    tiny and a small perturbation (Heun's rate error is ~(r dt)^2/6 <= 4e-4; MUSCL's at M = 256
    is below that)."""
    beta = 4.0
    pde = CircleMeanField(256, beta=beta, form=form)
    for n in (1, 2, 3):
        for eps in (1e-8, 1e-4):
            rho0 = pde.uniform() * (1 + eps * jnp.cos(n * pde.theta))
            sol = pde.solve(rho0, [0.0, t1])
            c = [float(jnp.sum(r * jnp.cos(n * pde.theta))) for r in sol.rho]
            rate = np.log(c[1] / c[0]) / t1
            assert abs(rate / circle_growth_rate(n, beta, form=form) - 1) < 1e-3, (n, eps, rate)


def test_solve_rejects_bad_step_arguments():
    pde = CircleMeanField(64, beta=1.0)
    with pytest.raises(ValueError, match="accuracy"):
        pde.solve(pde.uniform(), [0.0, 1.0], accuracy=0.0)
    with pytest.raises(ValueError, match="dt"):
        pde.solve(pde.uniform(), [0.0, 1.0], dt=-0.1)
    with pytest.raises(ValueError, match="rho0"):
        pde.solve(jnp.full((64,), jnp.nan), [0.0, 1.0])
