"""Noisy particles (Stratonovich SDEs on the sphere) and the noise theory: Brownian motion on
S^{d-1}, reproducibility, common noise, refusals; critical noise, the tricritical beta and the
zonal stationary states."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import gamma, iv

import meanfield as mf
from meanfield import theory


def _bm_runs(d, sigma=0.5, t1=1.0, dt=0.05, n=100, runs=100):
    attn = mf.Attention(1.0, V=jnp.zeros((d, d)))  # attention switched off
    x0 = mf.sphere_uniform(jax.random.key(1), n, d)
    ts = jnp.linspace(0.0, t1, 3)
    run = jax.jit(
        jax.vmap(
            lambda k: mf.simulate(attn, x0, ts, noise=mf.Noise(sigma), key=k, dt=dt, throw=False).xs
        )
    )
    return x0, run(jax.random.split(jax.random.key(0), runs))


@pytest.mark.parametrize("d", [2, 3, 8])
def test_brownian_motion_on_the_sphere(d):
    """With attention off, each token is Brownian motion on S^{d-1} with generator (sigma^2/2)
    Laplacian: E<x_t, x_0> = exp(-(d - 1) sigma^2 t / 2), within 3 standard errors over 10^4 paths;
    every saved token on the sphere to round-off. Heun with the retraction has weak order 1
    (benchmarks/noise_weak_order.py: bias 0.09 dt at d = 3, 0.37 dt at d = 8), so dt = 0.05
    (d = 2, 3) and 0.01 (d = 8) keep the bias below a standard error (2.6e-3)."""
    sigma, t1 = 0.5, 1.0
    x0, xs = _bm_runs(d, sigma, t1, dt=0.01 if d == 8 else 0.05)
    c = np.asarray(jnp.sum(xs[:, -1] * x0[None], -1)).ravel()
    expected = np.exp(-(d - 1) * sigma**2 * t1 / 2)
    assert abs(c.mean() - expected) < 3 * c.std() / np.sqrt(c.size), (c.mean(), expected)
    assert float(jnp.max(jnp.abs(jnp.linalg.norm(xs, axis=-1) - 1))) < 1e-12


def test_same_key_same_path_under_jit_and_vmap():
    attn = mf.Attention(2.0, mask=mf.Causal())
    x0 = mf.sphere_uniform(jax.random.key(2), 8, 3)
    ts = jnp.linspace(0.0, 0.5, 3)
    noise = mf.Noise(0.3, common=0.2, n_common=2)

    def run(k):
        return mf.simulate(attn, x0, ts, noise=noise, key=k, dt=0.05).xs

    keys = jax.random.split(jax.random.key(3), 2)
    eager = np.stack([np.asarray(run(k)) for k in keys])
    np.testing.assert_allclose(np.asarray(jax.jit(run)(keys[0])), eager[0], atol=1e-12)
    np.testing.assert_allclose(np.asarray(jax.vmap(run)(keys)), eager, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(run(keys[0])), eager[0])
    assert np.max(np.abs(eager[0] - eager[1])) > 1e-2  # another key, another path


def test_rotation_noise_keeps_the_inner_products_general_common_noise_does_not():
    """Skew maps rotate all tokens together: the exact flow keeps the Gram matrix <x_i, x_j> while
    the tokens move (the control), and the scheme keeps it up to its own first-order error (halving
    dt halves the drift); general maps (Engel & Shalova) change it by O(1). Attention off."""
    d = 3
    attn = mf.Attention(1.0, V=jnp.zeros((d, d)))
    x0 = mf.sphere_uniform(jax.random.key(4), 32, d)
    ts = jnp.linspace(0.0, 2.0, 3)
    gram0 = x0 @ x0.T

    def gram_change(noise, dt):
        x = mf.simulate(attn, x0, ts, noise=noise, key=jax.random.key(5), dt=dt).xs[-1]
        return float(jnp.max(jnp.abs(x - x0))), float(jnp.max(jnp.abs(x @ x.T - gram0)))

    rotation = mf.Noise(0.0, common=1.0, n_common=3, rotation=True)
    moved, coarse = gram_change(rotation, 0.02)
    _, fine = gram_change(rotation, 0.01)
    general = gram_change(mf.Noise(0.0, common=1.0, n_common=3), 0.01)[1]
    assert moved > 0.1 and general > 0.3
    assert fine < 0.05 * general and 1.5 < coarse / fine < 2.7, (coarse, fine, general)


@pytest.mark.parametrize("d,c", [(2, 1.0), (5, 1.5)])
def test_rqf_common_noise_synchronises_at_rate_c_squared(d, c):
    """Engel & Shalova's Random Quadratic Form, attention off: the mean over pairs of
    log sqrt(1 - <x_i, x_j>^2) falls at the almost-sure rate c^2 for every d
    (theory.rqf_synchronisation_rate: the gap lambda_1 - lambda_2 of the linear flow), within 3
    standard errors over 48 independent paths (slopes fitted on t in [1, 4]; 1 / (c^2) of e-folding
    is enough for the transient from a uniform start to pass)."""
    attn = mf.Attention(1.0, V=jnp.zeros((d, d)))
    x0 = mf.sphere_uniform(jax.random.key(8), 8, d)
    ts = jnp.linspace(0.0, 4.0 / c**2, 9)
    iu = np.triu_indices(8, 1)
    noise = mf.Noise(0.0, common=c, model="rqf")

    def log_sine(k):
        xs = mf.simulate(attn, x0, ts, noise=noise, key=k, dt=0.005 / c**2).xs
        g = jnp.einsum("tnd,tmd->tnm", xs, xs)[:, iu[0], iu[1]]
        return 0.5 * jnp.mean(jnp.log(jnp.clip(1 - g**2, 1e-300)), -1)

    v = np.asarray(jax.jit(jax.vmap(log_sine))(jax.random.split(jax.random.key(9), 48)))
    fit = np.asarray(ts) >= 1.0 / c**2
    slopes = np.array([np.polyfit(np.asarray(ts)[fit], r[fit], 1)[0] for r in v])
    rate = theory.rqf_synchronisation_rate(c, d)
    assert rate == c**2
    se = slopes.std(ddof=1) / np.sqrt(slopes.size)
    assert abs(-slopes.mean() - rate) < 3 * se, (-slopes.mean(), se, rate)
    assert se < 0.15 * rate  # the test can tell the rate from half or twice it


def test_rqf_model_maps_and_refusals():
    """model='rqf': the d^2 maps (E_ij + E_ji)/2 (their weighted sum is (B + B^T)/2), skew under
    rotation; no user maps with it; an unknown model is refused by name."""
    m = mf.Noise(0.0, common=1.0, model="rqf").linear_maps(jax.random.key(0), 3, jnp.float64)
    w = jax.random.normal(jax.random.key(1), (9,))
    b = w.reshape(3, 3)
    np.testing.assert_allclose(jnp.einsum("k,kde->de", w, m), (b + b.T) / 2, atol=1e-15)
    r = mf.Noise(0.0, common=1.0, model="rqf", rotation=True).linear_maps(None, 3, jnp.float64)
    np.testing.assert_allclose(jnp.einsum("k,kde->de", w, r), (b - b.T) / 2, atol=1e-15)
    with pytest.raises(ValueError, match="model must be 'layers' or 'rqf'"):
        mf.Noise(0.1, model="RQF")
    with pytest.raises(ValueError, match="maps must be None with model='rqf'"):
        mf.Noise(0.1, model="rqf", maps=jnp.zeros((1, 3, 3)))


def test_noise_with_masks_heads_prompts_and_backends():
    x0 = mf.sphere_uniform(jax.random.key(6), 12, 4)
    ts = jnp.linspace(0.0, 0.2, 2)
    r = np.random.default_rng(0)
    q = jnp.asarray(np.eye(4) + 0.1 * r.standard_normal((2, 4, 4)))
    prompt = mf.Prompt(mf.sphere_uniform(jax.random.key(7), 3, 4))
    for attn in (
        mf.Attention(
            2.0, heads=2, Q=q, mask=mf.Causal() & mf.ALiBi(0.1), backend=mf.kernel.Chunked(8)
        ),
        mf.Attention(1.0, mask=mf.Window(5.0), form="USA", pe=mf.RoPE()),
    ):
        xs = mf.simulate(
            attn,
            x0,
            ts,
            noise=mf.Noise(0.2),
            key=jax.random.key(8),
            dt=0.05,
            prompt=prompt if attn.pe is None else None,
        ).xs
        assert bool(jnp.all(jnp.isfinite(xs)))
        assert float(jnp.max(jnp.abs(jnp.linalg.norm(xs, axis=-1) - 1))) < 1e-12


def test_noise_refusals():
    x0 = mf.sphere_uniform(jax.random.key(0), 8, 3)
    ts = jnp.linspace(0.0, 1.0, 3)
    attn = mf.Attention(1.0)
    with pytest.raises(ValueError, match="not a Stratonovich solver"):
        mf.simulate(
            attn,
            x0,
            ts,
            noise=mf.Noise(0.1),
            key=jax.random.key(0),
            solver="tsit5" if False else diffrax.Tsit5(),
            dt=0.1,
        )
    with pytest.raises(ValueError, match="needs a PRNG key"):
        mf.simulate(attn, x0, ts, noise=mf.Noise(0.1), dt=0.1)
    with pytest.raises(ValueError, match="sigma must be"):
        mf.Noise(-1.0)
    with pytest.raises(ValueError, match="error estimate"):
        mf.simulate(
            attn, x0, ts, noise=mf.Noise(0.1), key=jax.random.key(0), solver=diffrax.EulerHeun()
        )


# ----------------------------------------------------------------------------- theory
def test_tricritical_beta_matches_the_paper():
    """Mun & Rosenzweig 2026: beta_* = 2.4469183, 1.8161545, 1.5752572 for d = 2, 3, 4."""
    for d, want in ((2, 2.4469183), (3, 1.8161545), (4, 1.5752572)):
        assert abs(theory.tricritical_beta(d) - want) < 1e-6
        b = theory.tricritical_beta(d)
        assert abs(iv(d / 2 + 1, b) / iv(d / 2, b) - 1 / d) < 1e-12


@pytest.mark.parametrize("d", [2, 3, 4, 8])
def test_critical_noise_closed_form_and_the_papers_threshold(d):
    """sigma_c^2 = 2 r_1 / (d - 1) = 2^{d/2} Gamma(d/2) I_{d/2}(beta) / beta^{d/2} (USA, a = 1):
    the paper's K_# = 1 / sigma_c^2; for d = 2, 3 r_1 is circle_growth_rate / sphere_growth_rate."""
    for beta in (0.5, 2.0, 6.0):
        s2 = theory.critical_noise(beta, d) ** 2
        assert (
            abs(s2 - 2 ** (d / 2) * gamma(d / 2) * iv(d / 2, beta) / beta ** (d / 2)) < 1e-12 * s2
        )
        k_sharp = beta ** (d / 2) / (2 ** (d / 2) * gamma(d / 2) * iv(d / 2, beta))
        assert abs(1 / s2 - k_sharp) < 1e-12 * k_sharp
        sa = theory.critical_noise(beta, d, form="SA") ** 2
        assert abs(sa - 2 * iv(d / 2, beta) / (beta * iv(d / 2 - 1, beta))) < 1e-12
    for ell in range(1, 7):
        if d == 2:
            ref = theory.circle_growth_rate(ell, 2.0, form="USA")
        elif d == 3:
            ref = theory.sphere_growth_rate(ell, 2.0, form="SA")
        else:
            continue
        form = "USA" if d == 2 else "SA"
        got = theory.noisy_growth_rate(ell, 2.0, 0.3, d, form=form)
        assert abs(got - (ref - 0.045 * ell * (ell + d - 2))) < 1e-12


def test_stationary_states_continuous_below_and_hysteresis_above_beta_star():
    """d = 3, USA. Below beta_* (beta = 1): the concentrated branch leaves R = 0 continuously at
    sigma_c (R ~ sqrt(sigma_c - sigma)) and no non-uniform state exists above it. Above (beta = 3): at 1.03 sigma_c a stable
    concentrated state (R ~ 0.8) coexists with the stable uniform state and an unstable one in
    between (the hysteresis band); at 1.1 sigma_c only the uniform state is left."""
    sc = theory.critical_noise(1.0, 3)
    just_below = theory.stationary_states(1.0, 0.995 * sc, 3)
    below = theory.stationary_states(1.0, 0.98 * sc, 3)
    assert [s["stable"] for s in just_below] == [False, True] and just_below[1]["order"] < 0.25
    # a pitchfork: R ~ sqrt(sigma_c - sigma), so a quarter of the distance halves R
    assert 0.4 < just_below[1]["order"] / below[1]["order"] < 0.6
    assert [s["order"] for s in theory.stationary_states(1.0, 1.03 * sc, 3)] == [0.0]
    sc = theory.critical_noise(3.0, 3)
    band = theory.stationary_states(3.0, 1.03 * sc, 3)
    assert [s["stable"] for s in band] == [True, False, True]
    assert band[2]["order"] > 0.7 and 0.1 < band[1]["order"] < band[2]["order"]
    assert [s["order"] for s in theory.stationary_states(3.0, 1.1 * sc, 3)] == [0.0]
    for s in band:  # each is a probability density on the nodes' law
        assert abs(np.sum(theory.noise._zonal_setup(3.0, 3, 1.0, 96)[1] * s["density"]) - 1) < 1e-12


def test_stationary_branch_folds_above_beta_star_only():
    """The branch as a curve: below beta_* (beta = 1) it never passes sigma_c (no band), above
    (beta = 3, 4) it folds at sigma_fold > sigma_c, wider for larger beta; its stable part holds the
    concentrated states of stationary_states (same R at the same sigma, to the continuation's
    interpolation error), and it changes stability at the fold."""
    low = theory.stationary_branch(1.0, 3, max_order=0.9)
    assert low["sigma_fold"] <= low["sigma_c"] * (1 + 1e-6)
    folds = []
    for beta in (3.0, 4.0):
        br = theory.stationary_branch(beta, 3)
        sc = br["sigma_c"]
        folds.append(br["sigma_fold"] / sc)
        top = np.argmax(br["sigma"])
        assert not br["stable"][:top].any() and br["stable"][top + 1 :].all()
        state = theory.stationary_states(beta, 1.03 * sc, 3)[-1]
        on = br["stable"] & (br["sigma"] < 1.06 * sc)
        assert (
            abs(np.interp(1.03 * sc, br["sigma"][on][::-1], br["order"][on][::-1]) - state["order"])
            < 5e-3
        )
    assert 1.04 < folds[0] < folds[1]


def test_order_parameter_of_clouds_and_densities():
    """R = |sum_i m_i x_i|: 1 for a point, 0 for antipodes; the density analogue on the circle,
    |int e^{i theta} rho|, is eps / 2 for rho = (1 + eps cos theta) / 2pi, and on S^2 the first
    moment of rho = (1 + eps cos theta) / 4pi has norm eps / 3 (exact quadrature)."""
    from meanfield.pde import CircleMeanField, SphereMeanField

    point = jnp.tile(jnp.array([[0.0, 0.6, 0.8]]), (5, 1))
    assert abs(float(mf.observables.order_parameter(point)) - 1) < 1e-12
    assert float(mf.observables.order_parameter(jnp.array([[1.0, 0, 0], [-1.0, 0, 0]]))) < 1e-15
    eps = 0.1
    c = CircleMeanField(64, beta=1.0)
    sol = c.solve(c.uniform() * (1 + eps * jnp.cos(c.theta)), jnp.linspace(0.0, 0.1, 2))
    assert abs(float(sol.order_parameter()[0]) - eps / 2) < 1e-12
    s = SphereMeanField(8, beta=1.0)
    rho0 = s.uniform() * (1 + eps * jnp.cos(s.theta))[:, None]
    sol = s.solve(rho0, jnp.linspace(0.0, 0.1, 2))
    assert abs(float(sol.order_parameter()[0]) - eps / 3) < 1e-12


# ----------------------------------------------------------------------------- density diffusion
def _rate(times, amps):
    return float(np.polyfit(np.asarray(times), np.log(np.asarray(amps)), 1)[0])


@pytest.mark.parametrize("form", ["SA", "USA"])
def test_circle_and_kinetic_linear_response_with_diffusion(form):
    """Mode n of a small perturbation of the uniform state grows at r_n - (sigma^2/2) n^2 (d = 2)
    to 1e-3, n = 1..6; the kinetic solver (diffusion in theta, a uniform coupling, SA) likewise."""
    from meanfield.pde import CircleMeanField, FullCoupling, KineticMeanField

    beta, sigma = 2.0, 0.4
    ts = jnp.linspace(0.0, 0.5, 6)
    pde = CircleMeanField(512, beta=beta, form=form, sigma=sigma)
    for n in range(1, 7):
        sol = pde.solve(pde.uniform() * (1 + 1e-7 * jnp.cos(n * pde.theta)), ts)
        amp = np.abs(np.fft.rfft(np.asarray(sol.rho), axis=1)[:, n])
        assert abs(_rate(ts, amp) - theory.noisy_growth_rate(n, beta, sigma, 2, form=form)) < 1e-3
    if form == "SA":
        kin = KineticMeanField(4, 512, beta=beta, coupling=FullCoupling(0.0), sigma=sigma)
        for n in (1, 4):
            f0 = kin.uniform() * (1 + 1e-7 * jnp.cos(n * kin.theta))[None, :]
            sol = kin.solve(f0, ts)
            amp = np.abs(np.fft.rfft(np.asarray(sol.f[:, 2]), axis=1)[:, n])
            assert (
                abs(_rate(ts, amp) - theory.noisy_growth_rate(n, beta, sigma, 2, form="SA")) < 1e-3
            )


@pytest.mark.parametrize("L", [16, 32, 64])
def test_sphere_linear_response_and_step_count_with_diffusion(L):
    """Degree l on S^2 grows at r_l - (sigma^2/2) l (l + 1) to 1e-3 (l = 1..6, SA); the diffusion is
    exact (Strang splitting with the heat flow in the harmonic basis), so the adaptive solve to
    T = 1 at beta = 4 takes at most 1.2x the steps of the same solve without noise (measured: 14
    and 14 at every L)."""
    from meanfield.pde import SphereMeanField

    beta, sigma = 2.0, 0.4
    pde = SphereMeanField(L, beta=beta, sigma=sigma)
    ts = jnp.linspace(0.0, 0.5, 6)
    for ell in range(1, 7) if L == 16 else ():
        sol = pde.solve(pde.uniform() + 1e-7 * pde.harmonic(ell, 0), ts)
        amp = [abs(complex(pde.forward(r)[ell, L - 1])) for r in sol.rho]
        assert abs(_rate(ts, amp) - theory.noisy_growth_rate(ell, beta, sigma, 3, form="SA")) < 1e-3
    rho0 = pde.uniform() * (1 + 0.5 * jnp.cos(pde.theta))[:, None]
    steps = [
        int(
            SphereMeanField(L, beta=4.0, sigma=s)
            .solve(rho0, jnp.array([0.0, 1.0]))
            .stats["num_steps"]
        )
        for s in (0.0, sigma)
    ]
    assert steps[1] <= 1.2 * steps[0], steps


def test_diffusion_keeps_mass_and_positivity():
    """A concentrated start under strong noise: mass conserved to round-off, no negative cell, and
    the density relaxes towards uniform (R falls) above the critical noise."""
    from meanfield.pde import CircleMeanField

    sigma = 2.0 * theory.critical_noise(1.0, 2, form="SA")
    pde = CircleMeanField(256, beta=1.0, sigma=sigma)
    rho0 = jnp.exp(8 * jnp.cos(pde.theta))
    rho0 = rho0 / (jnp.sum(rho0) * pde.h)
    sol = pde.solve(rho0, jnp.linspace(0.0, 2.0, 5))
    np.testing.assert_allclose(jnp.sum(sol.rho, axis=1) * pde.h, 1.0, atol=1e-13)
    assert float(sol.rho.min()) >= 0.0
    r = np.asarray(sol.order_parameter())
    assert np.all(np.diff(r) < 0) and r[-1] < 0.1 * r[0]


def test_traced_noise_amplitudes_fail_their_own_point_only():
    """Under vmap over sigma, a negative or NaN amplitude makes that point's result
    RESULTS.invalid_parameter with NaN states; the other points run (no host callback)."""
    from meanfield.particles import RESULTS

    x0 = mf.sphere_uniform(jax.random.key(0), 8, 3)
    ts = jnp.linspace(0.0, 0.2, 2)
    run = jax.vmap(
        lambda s: mf.simulate(
            mf.Attention(1.0),
            x0,
            ts,
            noise=mf.Noise(s),
            key=jax.random.key(1),
            dt=0.05,
            throw=False,
        )
    )
    out = run(jnp.array([0.3, -0.3, jnp.nan]))
    assert out.result._value.tolist() == [0] + [RESULTS.invalid_parameter._value] * 2
    assert bool(jnp.all(jnp.isfinite(out.xs[0]))) and bool(jnp.all(jnp.isnan(out.xs[1:])))
