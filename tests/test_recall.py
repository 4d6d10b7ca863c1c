"""Factual recall with random embeddings: training learns a tiny instance, one gradient step is
the closed-form early-phase classifier, its accuracy matches a Gaussian theory of its scores,
capacity grows with d and falls with L (early phase)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from meanfield.studies import recall


@pytest.mark.slow
@pytest.mark.parametrize("opt,steps,lr", [("gd", 200, None), ("adam", 300, 0.05)])
def test_tiny_instance_is_learnt_to_full_train_accuracy(opt, steps, lr):
    _, train_acc, test_acc = recall.train(
        jax.random.key(0), 4, 32, 4, 256, steps=steps, opt=opt, lr=lr
    )
    assert float(train_acc) == 1.0 and float(test_acc) > 0.95


@pytest.mark.slow
def test_one_gradient_step_is_the_closed_form_early_phase_classifier():
    """From w = W = 0 one GD step predicts argmax_m sum_{n: y_n = m} <xbar_n, xbar> (module
    docstring): the trained model's test predictions equal it."""
    key = jax.random.key(3)
    m, d, length, n = 16, 24, 6, 512
    kt, ks, kv = jax.random.split(key, 3)
    task = recall.RecallTask(kt, m, d, length)
    x, y = task.sample(ks, n)
    xt, _ = task.sample(kv, 300)
    params, static = eqx.partition(recall.RecallModel(m, d), eqx.is_inexact_array)
    tx = optax.sgd(10.0 * m)
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
        eqx.combine(p, static)(x), y
    ).mean()  # noqa: E731
    upd, _ = tx.update(jax.grad(loss)(params), tx.init(params), params)
    model = eqx.combine(optax.apply_updates(params, upd), static)
    pred = np.argmax(np.asarray(model(xt)), -1)
    xbar, xtbar = np.asarray(x.mean(1)), np.asarray(xt.mean(1))
    scores = np.stack([(xtbar @ xbar[np.asarray(y) == k].T).sum(1) for k in range(m)], 1)
    np.testing.assert_array_equal(pred, np.argmax(scores, 1))
    assert float(jnp.abs(model.w).max()) == 0.0  # attention does not move in the first step (W = 0)


@pytest.mark.slow
def test_capacity_grows_with_d_in_the_early_phase():
    """One GD step (the early phase), N = 1024, L = 8, 2 seeds. Capacity at d = 16 / 32 / 64
    measured 8 / 22 / 68 (Gaussian theory: 8.4 / 19.3 / 49). Asserted: each doubling of d stores
    > 1.5x more facts."""
    key = jax.random.key(1)
    by_d = [recall.capacity(key, d, 8, 1024, steps=1, seeds=2, m_max=256)[0] for d in (16, 32, 64)]
    assert np.all(np.isfinite(by_d)) and by_d[1] > 1.5 * by_d[0] and by_d[2] > 1.5 * by_d[1], by_d


@pytest.mark.slow
@pytest.mark.parametrize(
    "m,d,length,n", [(16, 32, 2, 1024), (16, 32, 4, 1024), (16, 32, 8, 1024), (64, 64, 8, 1024)]
)
def test_early_phase_accuracy_matches_its_gaussian_theory(m, d, length, n):
    """Simulated one-step test accuracy (8 instances x 2048 test sequences; standard error
    <= 0.012) against ``early_phase_accuracy``, a Gaussian model of the classifier's scores that
    draws no embeddings. Measured differences <= 0.012 at these points (up to 0.03 at N / M >= 30,
    where the neglected O(1/d) terms grow). Tolerance 0.04."""
    _, te = recall.accuracy(jax.random.key(5), m, d, length, n, seeds=8, steps=1)
    assert abs(float(te.mean()) - recall.early_phase_accuracy(m, d, length, n)) <= 0.04


def test_early_phase_theory_length_and_data_dependence():
    """The theory's capacity falls with L (measured 594 / 226 / 70 / 19.5 at L = 2 / 4 / 8 / 16,
    d = 64, N = 2048: slope about -1.7, between -2, the small-N law N d / (2 L^2 log M), and the
    ceiling's e^{d / 2L}) and grows with N toward a ceiling (36 at N = 512, 70 at 2048, 263 at N = 10^6: 500x the data,
    < 5x the facts)."""
    by_l = [recall.early_phase_capacity(64, length, 2048) for length in (2, 4, 8, 16)]
    assert all(a > 2 * b for a, b in zip(by_l, by_l[1:])), by_l
    by_n = [recall.early_phase_capacity(64, 8, n) for n in (512, 2048, 10**6)]
    assert by_n[0] < by_n[1] < by_n[2] < 5 * by_n[1], by_n
    with pytest.raises(ValueError, match="n_facts >= 2"):
        recall.early_phase_accuracy(1, 8, 4, 100)


def test_loglog_fit_and_errors():
    x = np.array([1.0, 2.0, 4.0, 8.0])
    s, lo, hi = recall.loglog_fit(x, 3.0 * x**1.7)
    assert abs(s - 1.7) < 1e-12 and lo <= s <= hi
    with pytest.raises(ValueError, match="optimizer must be"):
        recall.optimizer("sgd-momentum", 0.1)
    with pytest.raises(ValueError, match="n_facts must be >= 2"):
        recall.RecallTask(jax.random.key(0), 1, 4, 4)
