"""A learned positional encoding (fixed number of Fourier coefficients, optax) whose limit is a
chosen target, and the linear-stability check it relies on (universality, Imaizumi et al. 2026)."""

import jax
import numpy as np
import pytest

import meanfield as mf
from meanfield import observables as obs
from meanfield import theory
from meanfield.studies import learned_pe as lp


def _target(n):
    """A two-bump target on S^1 paired with s_i = (i + 1/2)/N (a smooth monotone angle map)."""
    s = (np.arange(n) + 0.5) / n
    th = 2 * np.pi * s + 0.6 * np.sin(4 * np.pi * s)
    return s, np.stack([np.cos(th), np.sin(th)], -1)


def test_linear_stability_of_two_antipodal_tokens_is_the_closed_form():
    """USA, N = 2 on S^1 at angle phi: d phi/dt = -2 m e^{beta cos phi} sin phi. At phi = pi the gap
    grows at rate 2 m e^{-beta} = e^{-beta} (m = 1/2); the common rotation is neutral (0).
    Collapsed (phi = 0): -e^{beta} and 0, so the largest is 0."""
    beta = 1.3
    attn = mf.Attention(beta, form="USA")
    apart = np.array([[1.0, 0.0], [-1.0, 0.0]])
    assert mf.linear_stability(attn, apart) == pytest.approx(np.exp(-beta), rel=1e-12)
    together = np.array([[0.6, 0.8], [0.6, 0.8]])
    assert abs(mf.linear_stability(attn, together)) < 1e-12


def test_linear_stability_equals_n_times_the_energy_hessian_at_a_maximiser():
    """USA with parallel prompts is the gradient flow of E scaled by 1/m = N (grad_{x_i} E = m_i v_i),
    so at a critical point the flow's Jacobian is N x the Riemannian Hessian of E = N E x that of
    log E: jax.jacfwd of the field against theory's finite-difference Hessian of log E."""
    n, beta, w = 8, 2.0, 0.7
    th = np.linspace(0, 1.5 * np.pi, n)
    p = np.stack([np.cos(th), np.sin(th)], -1)
    best = theory.prompt_pushforward(p, beta, w, n_starts=6, hops=0)
    lam = mf.linear_stability(
        mf.Attention(beta, form="USA"), best.x, prompt=mf.ParallelPrompt(p, w)
    )
    assert lam == pytest.approx(n * best.energy * best.hessian_max, rel=1e-4)
    assert lam < 0  # a strict maximiser attracts


def test_residual_fit_makes_the_target_stationary_and_from_the_paired_start_attracting():
    n = 12
    s, tgt = _target(n)
    assert lp.fourier_features(s, 3).shape == (n, 7)
    assert lp.fourier_features(np.stack([s, s[::-1]], -1), 2).shape == (
        n,
        25,
    )  # 1 + 2 * 12 frequencies
    fit = lp.fit_additive_pe(tgt, s, 1.0, n_freq=3, loss="residual", steps=300, init="paired")
    # stationarity residual sum_i m_i |P v_i|^2 falls by orders of magnitude ...
    assert fit.losses[-1] < 1e-3 * fit.losses[0]
    assert fit.stability < 0
    # ... and the target attracts: a random start ends within |v| / |lambda| ~ sqrt(residual) / |lambda|
    end = np.asarray(
        fit.pe.limit(s, np.asarray(mf.sphere_uniform(jax.random.key(3), n, 2), float), 60.0)
    )
    bound = 10 * np.sqrt(n * fit.losses[-1]) / abs(fit.stability)
    assert np.abs(end - tgt).max() < max(bound, 1e-3)


@pytest.mark.slow
def test_fit_through_simulate_lowers_the_distance_of_the_limit_to_the_target():
    """Gradient through simulate (MMD of the end states from two training starts): the loss falls,
    and so does the exact circle W1 to the target from a start the fit never saw."""
    n = 12
    s, tgt = _target(n)
    fit = lp.fit_additive_pe(
        tgt, s, 1.0, n_freq=3, loss="simulate", steps=40, n_starts=2, t1=20.0, init="paired"
    )
    assert fit.losses.shape == (40,) and fit.pe.U.shape == (2, 7)
    assert np.min(fit.losses[-5:]) < 0.75 * fit.losses[0]
    x0 = np.asarray(mf.sphere_uniform(jax.random.key(7), n, 2), float)
    ang = lambda x: np.arctan2(x[:, 1], x[:, 0])  # noqa: E731
    w1 = lambda pe: float(obs.circle_w1(ang(np.asarray(pe.limit(s, x0, 60.0))), ang(tgt)))  # noqa: E731
    before, after = w1(lp.LearnedPE(fit.init, 3, 1.0)), w1(fit.pe)
    assert after < 0.6 * before


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"target": np.ones((12, 2))}, "unit sphere"),
        ({"loss": "mse"}, "loss must be"),
        ({"target": _target(10)[1], "loss": "residual"}, "one target point per token"),
        ({"init": np.zeros((3, 7))}, "init must have shape"),
        ({"s": np.full(12, np.nan)}, "s must have shape"),
        ({"beta": -1.0}, "beta must be"),
        ({"n_freq": 0}, "n_freq"),
    ],
)
def test_bad_input_is_refused_before_compute(kwargs, match):
    s, tgt = _target(12)
    args = {"target": tgt, "s": s, "beta": 1.0, "n_freq": 3, "steps": 1} | kwargs
    with pytest.raises(ValueError, match=match):
        lp.fit_additive_pe(args.pop("target"), args.pop("s"), args.pop("beta"), **args)
