"""Observables against closed forms and their behaviour on trajectories."""

import jax
import jax.numpy as jnp
import numpy as np

import meanfield as mf
from meanfield import observables as obs


def test_closed_forms_single_cluster_and_antipodes():
    e = jnp.array([1.0, 0.0, 0.0])
    one = jnp.tile(e, (10, 1))
    np.testing.assert_allclose(obs.energy(one, 2.0), np.exp(2.0) / 4.0, rtol=1e-14)
    assert float(obs.diameter(one)) == 0.0
    assert float(obs.rank_collapse(one)) == 0.0
    np.testing.assert_allclose(obs.effective_rank(one), 1.0, rtol=1e-12)
    assert int(obs.n_clusters(one)) == 1
    two = jnp.stack([e] * 5 + [-e] * 5)
    # E = (1/2b)(1/2 e^b + 1/2 e^-b) for two antipodal half-masses
    np.testing.assert_allclose(obs.energy(two, 1.0), 0.5 * np.cosh(1.0), rtol=1e-14)
    np.testing.assert_allclose(obs.diameter(two), 2.0, rtol=1e-14)
    np.testing.assert_allclose(obs.min_cosine(two), -1.0, rtol=1e-14)
    # mean over i != j: 20 pairs at +1, 25*2 = 50 at -1 out of 90
    np.testing.assert_allclose(obs.mean_cosine(two), (40 - 50) / 90, rtol=1e-14)
    assert int(obs.n_clusters(two)) == 2
    np.testing.assert_allclose(obs.rank_collapse(two), 1.0, rtol=1e-14)


def test_effective_rank_of_orthonormal_frame():
    np.testing.assert_allclose(obs.effective_rank(jnp.eye(5)), 5.0, rtol=1e-12)


def test_cluster_count_on_chains_and_blobs(key):
    # a chain of points 0.5*tol apart is one component even if its ends are far apart
    t = jnp.linspace(0, 1, 41)[:, None] * jnp.array([1.0, 0.0])
    assert int(obs.n_clusters(t, tol=0.05)) == 1
    assert int(obs.n_clusters(t, tol=0.02)) == 41
    centers = mf.sphere_uniform(key, 4, 3) * 10
    pts = jnp.repeat(centers, 6, axis=0) + 1e-3 * jax.random.normal(key, (24, 3))
    pts = jax.random.permutation(jax.random.key(1), pts)
    assert int(obs.n_clusters(pts, tol=0.1)) == 4


def test_trajectory_and_batch_shapes(key):
    xs = mf.sphere_uniform(key, 2 * 3 * 8, 3).reshape(2, 3, 8, 3)
    for f in (
        obs.diameter,
        obs.min_cosine,
        obs.mean_cosine,
        obs.rank_collapse,
        obs.effective_rank,
        obs.n_clusters,
    ):
        out = f(xs)
        assert out.shape == (2, 3)
        np.testing.assert_allclose(out[1, 2], f(xs[1, 2]))
    assert obs.energy(xs, 1.0).shape == (2, 3)
    jitted = jax.jit(obs.summary, static_argnums=())(xs, 1.0)
    assert set(jitted) >= {"energy", "diameter", "n_clusters", "rank_collapse", "effective_rank"}


def test_energy_matches_numpy(key):
    x = np.asarray(mf.sphere_uniform(key, 13, 4))
    beta = 1.7
    ref = np.exp(beta * x @ x.T).sum() / (2 * beta * 13**2)
    np.testing.assert_allclose(obs.energy(jnp.asarray(x), beta), ref, rtol=1e-13)


def test_diameter_is_exact_in_float32_at_small_scale():
    # differences, not Gram expansions: a 1e-4 cluster is measured to f32 precision
    x = jnp.array([[1.0, 0.0, 0.0], [1.0, 1e-4, 0.0]], jnp.float32)
    x = x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    np.testing.assert_allclose(obs.diameter(x), 1e-4, rtol=1e-3)
