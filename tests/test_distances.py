"""Distances between measures and plateau detection, against independent references."""

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

import meanfield as mf
from meanfield import observables as obs


def test_dirac_distance_closed_form_vs_brute_force(key):
    x = mf.sphere_uniform(key, 30, 3)
    x = x.at[:20].set(x[0])  # a lopsided cloud
    c = np.asarray(mf.sphere_uniform(jax.random.key(1), 200_000, 3))
    brute = np.sqrt(np.min(np.mean(np.sum((np.asarray(x)[None] - c[:, None]) ** 2, -1), axis=1)))
    np.testing.assert_allclose(obs.dirac_distance(x), brute, rtol=2e-3)
    assert float(obs.dirac_distance(jnp.tile(x[:1], (5, 1)))) < 1e-7
    e = jnp.array([[1.0, 0, 0], [-1.0, 0, 0]])
    np.testing.assert_allclose(obs.dirac_distance(e), np.sqrt(2.0), rtol=1e-12)


def test_wasserstein_1d_matches_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=37), rng.normal(1.0, 2.0, size=53)
    wa, wb = rng.uniform(0.1, 1, 37), rng.uniform(0.1, 1, 53)
    ref = scipy.stats.wasserstein_distance(a, b, wa, wb)
    np.testing.assert_allclose(obs.wasserstein_1d(a, b, wa, wb, p=1), ref, rtol=1e-12)
    c, d = rng.normal(size=40), rng.normal(size=40)
    np.testing.assert_allclose(
        obs.wasserstein_1d(c, d, p=2), np.sqrt(np.mean((np.sort(c) - np.sort(d)) ** 2)), rtol=1e-12
    )


def test_circle_w1_closed_forms_and_brute_force():
    # two Diracs at angular distance phi: W1 = min(phi, 2 pi - phi)
    for phi in [0.3, 2.0, 4.0]:
        np.testing.assert_allclose(
            obs.circle_w1(jnp.array([0.1]), jnp.array([0.1 + phi])),
            min(phi, 2 * np.pi - phi),
            rtol=1e-12,
        )
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0, 2 * np.pi, 15), rng.vonmises(1.0, 2.0, 25)
    grid = np.linspace(0, 2 * np.pi, 200_001)
    F = (np.mod(a, 2 * np.pi)[None, :] <= grid[:, None]).mean(1)
    G = (np.mod(b, 2 * np.pi)[None, :] <= grid[:, None]).mean(1)
    diff = F - G
    brute = min(
        np.trapezoid(np.abs(diff - c), grid) for c in np.linspace(diff.min(), diff.max(), 2001)
    )
    np.testing.assert_allclose(obs.circle_w1(a, b), brute, rtol=2e-3)
    # rotation invariance
    np.testing.assert_allclose(obs.circle_w1(a + 1.0, b + 1.0), obs.circle_w1(a, b), rtol=1e-10)


def test_sliced_wasserstein_of_a_translation(key):
    # every projection of a translated copy is shifted by <u, v>: SW2^2 = E_u <u, v>^2 = |v|^2 / d
    x = jax.random.normal(key, (50, 4))
    v = jnp.array([0.3, -0.2, 0.5, 0.1])
    sw = obs.sliced_wasserstein(x, x + v, jax.random.key(1), n_proj=4000)
    np.testing.assert_allclose(sw, jnp.linalg.norm(v) / 2.0, rtol=0.05)
    assert float(obs.sliced_wasserstein(x, x[::-1], jax.random.key(2))) < 1e-12


def test_mmd_properties(key):
    x = jax.random.normal(key, (40, 3))
    assert float(obs.mmd(x, x[::-1])) < 1e-7
    near, far = obs.mmd(x, x + 0.1), obs.mmd(x, x + 1.0)
    assert 0 < near < far
    np.testing.assert_allclose(obs.mmd(x, x + 1.0), obs.mmd(x + 1.0, x), rtol=1e-10)


def test_plateaus_on_a_staircase():
    ts = np.concatenate([[0.0], np.geomspace(1e-2, 1e4, 601)])
    counts = np.where(ts < 1.0, 10, np.where(ts < 300.0, 4, 2))
    found = obs.plateaus(ts, counts, min_decades=0.5)
    assert [int(v) for *_, v in found] == [10, 4, 2]
    (s0, e0, _), (s1, e1, _), (s2, e2, _) = found
    assert s0 == ts[1] and e0 < 1.0 <= s1 and e1 < 300.0 <= s2 and e2 == 1e4
    assert obs.plateaus(ts, counts, min_decades=2.2) == [
        (s1, e1, 4.0)
    ]  # 2.47 decades; the others < 2
