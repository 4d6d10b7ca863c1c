"""Influence profiles: rollout and Jacobian of uniform causal attention equal the Cesàro power;
the discrete profile converges to the closed-form continuum density at rate 1/n; autodiff
Jacobians match finite differences; the dead-zone laws; the U-shape observables."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import quad

import meanfield as mf
from meanfield import theory
from meanfield.influence import (
    bin_profile,
    flow_influence,
    is_u_shaped,
    jacobian_profile,
    layers_influence,
    profile_stats,
    rollout,
    u_shape_onset,
)


@pytest.mark.parametrize("n,depth,alpha", [(7, 1, 1.0), (20, 3, 0.5), (33, 6, 0.3)])
def test_engine_rollout_and_jacobian_equal_the_cesaro_power(n, depth, alpha):
    power = np.linalg.matrix_power(
        (1 - alpha) * np.eye(n) + alpha * theory.cesaro_matrix(n), depth
    )[-1]
    np.testing.assert_allclose(
        theory.cesaro_rollout(n, depth, alpha), power, rtol=1e-12, atol=1e-15
    )
    attn = mf.Attention(0.0, mask=mf.Causal())  # constant scores: A = Cesàro matrix
    x0 = jax.random.normal(jax.random.key(n), (n, 3))
    xs = mf.layers(attn, x0, depth, h=alpha, norm=mf.Residual()).xs
    np.testing.assert_allclose(rollout(attn, xs[:-1], alpha), power, rtol=1e-12, atol=1e-15)
    # the layer is linear: d x_n(H) / d x_j(0) = power_j * I_d, Frobenius norm sqrt(d) power_j
    jac = layers_influence(attn, x0, depth, h=alpha, norm=mf.Residual())
    np.testing.assert_allclose(jac / np.sqrt(3), power, rtol=1e-12, atol=1e-15)


def test_closed_form_has_unit_mass_with_the_recency_delta():
    for depth, alpha in [(1, 0.5), (4, 0.5), (8, 0.3), (16, 0.9)]:
        mass, _ = quad(
            lambda u: theory.cesaro_density(np.array([np.exp(-u)]), depth, alpha)[0] * np.exp(-u),
            0,
            200,
            limit=400,
        )
        assert abs(mass + theory.cesaro_recency(depth, alpha) - 1) < 1e-8


@pytest.mark.parametrize("depth", [2, 4, 8])
def test_discrete_profile_converges_to_closed_form_at_rate_one_over_n(depth):
    ns = [256, 512, 1024, 2048, 4096]
    errs = []
    for n in ns:
        r = np.asarray(theory.cesaro_rollout(n, depth, 0.5))
        s = np.arange(1, n + 1) / n
        keep = (s >= 0.05) & (s <= 0.95)
        errs.append(np.max(np.abs(n * r[keep] / theory.cesaro_density(s[keep], depth, 0.5) - 1)))
    rate = np.polyfit(np.log(ns), np.log(errs), 1)[0]
    assert abs(rate + 1) < 0.1, (errs, rate)
    assert abs(r[-1] - theory.cesaro_recency(depth, 0.5)) < depth / n  # recency delta, O(H/n)


def test_dead_zone_laws():
    """Attention only (alpha = 1): the mid-sequence density is (log 2)^{H-1}/(H-1)!, i.e. it
    shrinks factorially; measured relative discretisation error ~ H^2/n, so the tolerance is
    2 H^2 / n. With residual mixing the interior minimum sits just before the last token at
    H alpha (1 - alpha)^{H-1} (the one-hop term), within O(H/n)."""
    n = 4096
    for depth in [1, 2, 4, 8, 12, 16]:
        mid = n * float(theory.cesaro_rollout(n, depth, 1.0)[n // 2 - 1])
        law = math.log(2) ** (depth - 1) / math.factorial(depth - 1)
        assert abs(mid / law - 1) < 2 * depth**2 / n + 1e-12, (depth, mid, law)
        st = profile_stats(theory.cesaro_rollout(n, depth, 0.5))
        floor = depth * 0.5 * 0.5 ** (depth - 1)
        assert abs(st["dead_zone_depth"] / floor - 1) < 2 * depth / n + 1e-12, (depth, st, floor)
        assert abs(st["recency_mass"] - 0.5**depth) < depth / n


@pytest.mark.slow
def test_jacobian_matches_finite_differences_nonlinear():
    n, d = 10, 3
    x0 = mf.sphere_uniform(jax.random.key(1), n, d)
    attn = mf.Attention(2.0, mask=mf.Causal() & mf.ALiBi(0.3))
    fn = lambda x: mf.layers(attn, x, 3, h=0.4).xs[-1]  # noqa: E731  (post-LN, nonlinear)
    prof = jacobian_profile(fn, x0)
    eps = 1e-6
    for j in [0, 4, n - 1]:
        block = np.zeros((d, d))
        for b in range(d):
            e = jnp.zeros((n, d)).at[j, b].set(eps)
            block[:, b] = (fn(x0 + e)[-1] - fn(x0 - e)[-1]) / (2 * eps)
        assert abs(np.linalg.norm(block) - float(prof[j])) < 1e-7
    # continuous dynamics: the same through simulate
    t1 = 1.5
    kw = dict(rtol=1e-11, atol=1e-11)
    pf = flow_influence(attn, x0, t1, **kw)
    g = lambda x: mf.simulate(attn, x, jnp.array([0.0, t1]), **kw).xs[-1]  # noqa: E731
    for j in [0, n - 1]:
        block = np.zeros((d, d))
        for b in range(d):
            e = jnp.zeros((n, d)).at[j, b].set(eps)
            block[:, b] = (g(x0 + e)[-1] - g(x0 - e)[-1]) / (2 * eps)
        assert abs(np.linalg.norm(block) - float(pf[j])) < 1e-6


def test_causal_influence_is_zero_on_the_future_and_u_shape_helpers():
    n = 12
    x0 = mf.sphere_uniform(jax.random.key(2), n, 3)
    attn = mf.Attention(1.0, mask=mf.Causal())
    prof = layers_influence(attn, x0, 2, h=0.5, target=5)
    np.testing.assert_array_equal(prof[6:], 0.0)
    assert bool(jnp.all(prof[:6] > 0))
    u = np.array([3.0, 1.0, 0.5, 1.0, 4.0])
    assert is_u_shaped(u) and not is_u_shaped(np.sort(u)) and not is_u_shaped(np.sort(u)[::-1])
    np.testing.assert_array_equal(bin_profile(np.arange(6.0), 3), [1.0, 5.0, 9.0])
    with pytest.raises(ValueError, match="n_bins"):
        bin_profile(np.arange(6.0), 4)
    ts = np.array([0.0, 1.0, 2.0])
    profs = np.array([[0.0, 1.0, 2.0, 3.0], [1.0, 0.5, 1.0, 3.0], [2.0, 0.5, 1.0, 3.0]])
    assert u_shape_onset(ts, profs) == pytest.approx(0.0 + 1.0 * 1.0 / 1.5)


@pytest.mark.slow
@pytest.mark.parametrize("style", ["gpt2", "qwen2"])
def test_random_decoder_step0_u_shape_with_and_without_rope(style):
    """At initialisation the last token's influence profile is U-shaped (primacy at the first
    positions, a dead zone, the recency peak at the last) and RoPE does not change it: the mean
    profiles with and without RoPE differ by less than the seed-to-seed spread (standard error
    of the mean over 8 random inits and inputs, times 3)."""
    from meanfield.studies import DecoderConfig, step0_influence

    n = 32
    prof = {}
    for rope in (False, True):
        cfg = DecoderConfig(style=style, depth=4, width=32, heads=4, rope=rope)
        prof[rope] = np.asarray(step0_influence(cfg, n, jax.random.key(7), n_inits=8))
    spread = prof[False].std(0, ddof=1) / np.sqrt(8)
    assert np.all(np.abs(prof[True].mean(0) - prof[False].mean(0)) <= 3 * spread + 1e-12)
    st = profile_stats(prof[True].mean(0))
    dens = n * prof[True].mean(0)
    assert dens[0] > 1.5 * st["dead_zone_depth"]  # primacy above the dead zone
    assert dens[-1] > 5 * st["dead_zone_depth"]  # isolated recency peak
    assert 0 < st["dead_zone_location"] < 1


# ------------------------------------------------------------------ masks as graphs (Wu et al.)
def test_cesaro_mean_position_is_exact():
    for n, depth, alpha in [(16, 1, 1.0), (100, 5, 0.5), (1000, 12, 0.3)]:
        r = np.asarray(theory.cesaro_rollout(n, depth, alpha))
        s = np.arange(1, n + 1) / n
        assert abs(r @ s - theory.cesaro_mean_position(n, depth, alpha)) < 1e-12


@pytest.mark.parametrize("mask", ["causal", "alibi", "window", "rope"])
def test_causal_masks_make_the_first_token_a_sink(mask):
    """Every causal mask makes token 1 absorbing (A_11 = 1). For a fixed attention matrix A
    (here the engine's at beta = 4 on one random cloud) the rollout's mass on token 1 can only
    grow with depth: ((1 - alpha) r + alpha r A)_1 >= r_1 + alpha sum_{i>1} r_i A_i1 >= r_1.
    Along the real post-LN trajectory (A changes with the layer) it is not monotone in general
    (RoPE is not, here), but it still tends to 1: at n = 24, depth 3n gives 0.2 with RoPE (its
    distance decay holds the influence back) and depth 10n gives > 0.999 for every mask."""
    n = 24
    attn = {
        "causal": mf.Attention(4.0, mask=mf.Causal()),
        "alibi": mf.Attention(4.0, mask=mf.Causal() & mf.ALiBi(0.1)),
        "window": mf.Attention(4.0, mask=mf.Causal() & mf.Window(4)),
        "rope": mf.Attention(4.0, mask=mf.Causal(), pe=mf.RoPE(100.0)),
    }[mask]
    x0 = mf.sphere_uniform(jax.random.key(3), n, 8)
    depths = np.arange(1, 10 * n + 1)
    frozen = np.asarray(rollout(attn, jnp.tile(x0[None], (depths[-1], 1, 1)), 0.5, depths=depths))[
        :, 0
    ]
    assert np.all(np.diff(frozen) >= -1e-14), frozen
    xs = mf.layers(attn, x0, int(depths[-1]), h=1.0).xs[:-1]
    first = np.asarray(rollout(attn, xs, 0.5, depths=depths))[:, 0]
    assert first[0] < 0.2 and first[-1] > 0.999, (first[0], first[-1])


@pytest.mark.parametrize("lam,window", [(0.5, float("inf")), (0.0, 8), (0.3, 6)])
def test_decay_and_window_masks_move_influence_back_by_the_walk_drift(lam, window):
    """With constant scores (beta = 0) the rollout of a causal decay/window mask is the law of a
    walk with jumps P(k) ∝ e^{-lam k}, k < w (``theory.mask_walk_drift``): after one layer the
    profile is that jump law (distance decay inside a layer), after H layers its mean has moved
    back by exactly H * drift tokens while the walk cannot reach the first token, and the
    support is the H-hop reach of the mask graph (window)."""
    n, alpha = 400, 0.5
    mask = mf.Causal()
    if lam > 0:
        mask = mask & mf.ALiBi(lam)
    if np.isfinite(window):
        mask = mask & mf.Window(window)
    attn = mf.Attention(0.0, mask=mask)
    depths = np.arange(1, 21)
    xs = jnp.zeros((depths[-1], n, 2))  # the scores ignore the states at beta = 0
    r = np.asarray(rollout(attn, xs, alpha, depths=depths))
    k = np.arange(n)[::-1]  # jump length to each position
    jump = np.where(k < window, np.exp(-lam * k), 0.0)
    np.testing.assert_allclose(
        r[0], (1 - alpha) * (k == 0) + alpha * jump / jump.sum(), rtol=1e-12, atol=1e-300
    )
    moved = r @ k
    drift = theory.mask_walk_drift(alpha, lam=lam, window=window)
    np.testing.assert_allclose(moved, depths * drift, rtol=1e-10)
    if np.isfinite(window):
        reach = depths * (window - 1)
        for h_, row in zip(depths, r):
            assert np.all(row[k > reach[h_ - 1]] == 0) and row[k == reach[h_ - 1]][0] > 0


def test_rope_on_aligned_tokens_is_a_distance_decay_of_the_scores():
    """For identical tokens x (Q = K = I) RoPE's score depends on the distance only:
    beta sum_k |x_(k)|^2 cos(Delta theta_k), |x_(k)|^2 the energy of x in rotation plane k; the
    engine's weights equal its causal softmax."""
    n, d, beta, base = 40, 8, 3.0, 50.0
    x = jnp.tile(mf.sphere_uniform(jax.random.key(4), 1, d), (n, 1))
    a = np.asarray(mf.Attention(beta, mask=mf.Causal(), pe=mf.RoPE(base)).weights(x))[0, -1]
    energy = np.asarray(x[0, 0::2] ** 2 + x[0, 1::2] ** 2)
    freqs = base ** (-np.arange(0, d, 2) / d)
    dist = np.arange(n)[::-1]
    score = beta * (energy[None] * np.cos(dist[:, None] * freqs[None])).sum(1)
    np.testing.assert_allclose(a, np.exp(score) / np.exp(score).sum(), rtol=1e-12)


@pytest.mark.slow
def test_profiles_at_several_depths_equal_one_depth_at_a_time():
    x0 = mf.sphere_uniform(jax.random.key(5), 10, 4)
    attn = mf.Attention(2.0, mask=mf.Causal() & mf.ALiBi(0.2))
    depths = [1, 3, 5]
    jac = layers_influence(attn, x0, h=0.7, depths=depths)
    xs = mf.layers(attn, x0, 5, h=0.7).xs[:-1]
    roll = rollout(attn, xs, 0.4, depths=depths)
    for i, h_ in enumerate(depths):
        np.testing.assert_allclose(jac[i], layers_influence(attn, x0, h_, h=0.7), rtol=1e-12)
        np.testing.assert_allclose(roll[i], rollout(attn, xs[:h_], 0.4), rtol=1e-12)
    with pytest.raises(ValueError, match="depths"):
        rollout(attn, xs, 0.4, depths=[0, 2])
    with pytest.raises(ValueError, match="depths"):
        layers_influence(attn, x0, depths=[])
