r"""Factual recall with random (non-orthogonal) embeddings (after Vural, Bietti, Soltanolkotabi,
Wu 2026): a one-layer attention model, its token-retrieval task, training with optax, and the
storage capacity.

Task ([`RecallTask`][meanfield.studies.recall.RecallTask]). M *facts* are tokens with random embeddings e_f ~ N(0, I/d) (not
orthogonal once M > d); a noise vocabulary of V tokens has embeddings z_v ~ N(0, I/d). A sample
is a length-L sequence of noise tokens in which one position, uniform in [0, L), holds a fact
token f uniform in [M]; its label is f (a one-to-one map from facts to labels).

Model ([`RecallModel`][meanfield.studies.recall.RecallModel], equinox). One attention layer with a trainable query direction w
(scores s_j = ⟨w, x_j⟩: the key-query product of a fixed query token) and a trainable value-output
map W in R^{M x d}:

    logits(X) = W sum_j softmax_j(⟨w, x_j⟩) x_j ,

started at w = 0, W = 0 (uniform attention: the "early phase" of training is the regime where
attention has not yet learnt to find the fact). Trained on N samples with full-batch gradient
descent or Adam (optax), cross-entropy loss.

Early phase, one gradient step (derivation). At w = W = 0 every probability is 1/M and the
gradient in W is -(1/N) sum_n (e_{y_n} - 1/M) xbar_n^T with xbar_n = (1/L) sum_j x_{n,j}, so after
one step the predicted label of a new sequence X is argmax_m sum_{n: y_n = m} ⟨xbar_n, xbar⟩. The
sequences of label m share (1/L) e_m, so the signal is |e_m|^2 / L^2 = 1/L^2 per such sample
(N/M of them), while (i) the noise tokens add overlaps of size ~ 1/(L sqrt d) per sample and (ii)
the facts overlap the test sequence by ~ sqrt(L/d) / L^2 per sample (non-orthogonality: it grows
with N like the signal). [`early_phase_accuracy`][meanfield.studies.recall.early_phase_accuracy] turns this into a Gaussian model of the
scores: (i) gives M* ~ N d / (2 L^2 log M) for small N (multiplicative in N, d, 1/L^2), (ii) a
ceiling near e^{d/(2L)} sqrt(d/L) as N grows. It matches the simulated one-step accuracy within
0.03 where measured (the tests allow 0.04) and the capacities of the ``recall-capacity`` preset
to ~10 %. Longer sequences store fewer facts: the fact is one token of L under uniform attention.

Capacity ([`capacity`][meanfield.studies.recall.capacity]): the largest M at which the test accuracy (fresh samples of the same
facts), averaged over seeds, is at least ``threshold``, log-interpolated on a doubling grid of M.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._errors import require


class RecallTask(eqx.Module):
    """Fact and noise embeddings of one random instance (see module docstring). ``n_facts`` may
    be traced when ``max_facts`` (static) is given: the fact table then has ``max_facts`` rows
    of which the first ``n_facts`` are used (one compiled program serves every M <= max_facts)."""

    facts: jax.Array  # (max_facts, d)
    noise: jax.Array  # (V, d)
    n_facts: jax.Array
    length: int = eqx.field(static=True)

    def __init__(
        self, key, n_facts, d: int, length: int, n_noise: int = 4096, max_facts: int | None = None
    ):
        if max_facts is None:
            require(int(n_facts) >= 2, f"n_facts must be >= 2, got {n_facts}")
            max_facts = int(n_facts)
        require(
            d >= 1 and length >= 1 and n_noise >= 1,
            f"need d, length, n_noise >= 1, got {d}, {length}, {n_noise}",
        )
        kf, kn = jax.random.split(key)
        self.facts = jax.random.normal(kf, (int(max_facts), d)) / np.sqrt(d)
        self.noise = jax.random.normal(kn, (n_noise, d)) / np.sqrt(d)
        self.n_facts = jnp.asarray(n_facts)
        self.length = int(length)

    def sample(self, key, n: int):
        """n sequences X (n, L, d) and labels y (n,) (the fact index)."""
        kf, kn, kp = jax.random.split(key, 3)
        f = jax.random.randint(kf, (n,), 0, self.n_facts)
        x = self.noise[jax.random.randint(kn, (n, self.length), 0, self.noise.shape[0])]
        pos = jax.random.randint(kp, (n,), 0, self.length)
        return x.at[jnp.arange(n), pos].set(self.facts[f]), f


class RecallModel(eqx.Module):
    """logits(X) = W sum_j softmax_j(⟨w, x_j⟩) x_j; zero-initialised (uniform attention). With
    ``n_labels`` < the rows of W (padding, see [`RecallTask`][meanfield.studies.recall.RecallTask]) the extra logits are -inf, so
    the model is exactly the ``n_labels``-class one."""

    w: jax.Array
    W: jax.Array
    n_labels: jax.Array

    def __init__(self, n_labels, d: int, dtype=jnp.float32, max_labels: int | None = None):
        self.w = jnp.zeros((d,), dtype)
        self.W = jnp.zeros((int(n_labels) if max_labels is None else int(max_labels), d), dtype)
        self.n_labels = jnp.asarray(n_labels)

    def attention(self, x):
        """Attention weights (..., L) over the positions of x (..., L, d)."""
        return jax.nn.softmax(x @ self.w, axis=-1)

    def __call__(self, x):
        logits = jnp.einsum("...l,...ld->...d", self.attention(x), x) @ self.W.T
        return jnp.where(jnp.arange(self.W.shape[0]) < self.n_labels, logits, -jnp.inf)


def optimizer(name: str, lr):
    """'gd' (full-batch gradient descent, optax.sgd) or 'adam'."""
    require(name in ("gd", "adam"), f"optimizer must be 'gd' or 'adam', got {name!r}")
    if not isinstance(lr, jax.core.Tracer):
        require(float(lr) > 0, f"lr must be > 0, got {lr}")
    return optax.sgd(lr) if name == "gd" else optax.adam(lr)


def _default_lr(opt: str, n_facts) -> float:
    """10 M for 'gd' (the gradient in W scales like 1/M at the uniform start), 1e-2 for 'adam'."""
    return 10.0 * n_facts if opt == "gd" else 1e-2


def train(
    key,
    n_facts,
    d: int,
    length: int,
    n_train: int,
    *,
    steps: int = 20,
    opt: str = "gd",
    lr=None,
    n_test: int = 2048,
    n_noise: int = 4096,
    max_facts: int | None = None,
):
    """Train one model on one random instance; returns (model, train accuracy, test accuracy).

    ``lr`` default: 10 M for 'gd' (the gradient in W scales like 1/M at the uniform start),
    1e-2 for 'adam'. Pure JAX: vmap it over keys for seeds (see [`accuracy`][meanfield.studies.recall.accuracy])."""
    lr = _default_lr(opt, n_facts) if lr is None else lr
    kt, ks, kv = jax.random.split(key, 3)
    task = RecallTask(kt, n_facts, d, length, n_noise, max_facts)
    x, y = task.sample(ks, n_train)
    xt, yt = task.sample(kv, n_test)
    model = RecallModel(n_facts, d, max_labels=task.facts.shape[0])
    params, static = eqx.partition(model, eqx.is_inexact_array)
    tx = optimizer(opt, lr)

    def loss(p):
        return optax.softmax_cross_entropy_with_integer_labels(eqx.combine(p, static)(x), y).mean()

    def body(carry, _):
        p, state = carry
        g = jax.grad(loss)(p)
        updates, state = tx.update(g, state, p)
        return (optax.apply_updates(p, updates), state), None

    (params, _), _ = jax.lax.scan(body, (params, tx.init(params)), None, length=int(steps))
    model = eqx.combine(params, static)
    acc = lambda xx, yy: jnp.mean(jnp.argmax(model(xx), -1) == yy)  # noqa: E731
    return model, acc(x, y), acc(xt, yt)


_accuracy = jax.jit(
    jax.vmap(
        lambda k, m, lr, d, L, n, s, o, mx: train(
            k, m, d, L, n, steps=s, opt=o, lr=lr, max_facts=mx
        )[1:],
        in_axes=(0, None, None) + (None,) * 6,
    ),
    static_argnums=(3, 4, 5, 6, 7, 8),
)


def _padded(m: int) -> int:
    """Rows of the fact table for M facts: 64, 512 or 4096, ... (a few compiled programs serve
    every M of a doubling grid; the padding rows are masked out exactly)."""
    size = 64
    while size < m:
        size *= 8
    return size


def accuracy(
    key,
    n_facts: int,
    d: int,
    length: int,
    n_train: int,
    *,
    seeds: int = 4,
    steps: int = 20,
    opt: str = "gd",
    lr: float | None = None,
):
    """(train, test) accuracies (seeds,) of ``seeds`` independent instances, vmapped."""
    require(int(n_facts) >= 2, f"n_facts must be >= 2, got {n_facts}")
    lr = _default_lr(opt, n_facts) if lr is None else lr
    optimizer(opt, lr)  # validate before compiling
    tr, te = _accuracy(
        jax.random.split(key, seeds),
        jnp.asarray(int(n_facts)),
        jnp.asarray(float(lr), jnp.float32),
        int(d),
        int(length),
        int(n_train),
        int(steps),
        opt,
        _padded(int(n_facts)),
    )
    return np.asarray(tr), np.asarray(te)


def capacity(
    key,
    d: int,
    length: int,
    n_train: int,
    *,
    threshold: float = 0.5,
    m_min: int = 4,
    m_max: int = 4096,
    seeds: int = 4,
    steps: int = 20,
    opt: str = "gd",
    lr: float | None = None,
):
    """Largest number of facts M stored at mean test accuracy >= ``threshold``: M doubles from
    ``m_min`` until the accuracy falls below it, and log M is interpolated linearly in the
    accuracy between the last two points. Returns (capacity, {M: per-seed test accuracies});
    nan if the accuracy is below the threshold already at m_min or still above it at m_max."""
    require(0 < threshold < 1, f"threshold must be in (0, 1), got {threshold}")
    accs, m, prev = {}, int(m_min), None
    while m <= m_max:
        _, te = accuracy(
            jax.random.fold_in(key, m),
            m,
            d,
            length,
            n_train,
            seeds=seeds,
            steps=steps,
            opt=opt,
            lr=lr,
        )
        accs[m] = te
        a = float(te.mean())
        if a < threshold:
            if prev is None:
                return float("nan"), accs
            return _crossing(prev, float(accs[prev].mean()), m, a, threshold), accs
        prev, m = m, 2 * m
    return float("nan"), accs


def loglog_fit(x, y):
    """Slope of log y against log x with its 95 % interval (least squares, t quantile):
    (slope, lo, hi)."""
    from scipy import stats

    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    keep = np.isfinite(lx) & np.isfinite(ly)
    lx, ly = lx[keep], ly[keep]
    require(lx.size >= 3, "loglog_fit needs at least 3 finite points")
    res = stats.linregress(lx, ly)
    t = stats.t.ppf(0.975, lx.size - 2)
    return float(res.slope), float(res.slope - t * res.stderr), float(res.slope + t * res.stderr)


def early_phase_accuracy(
    n_facts: int,
    d: int,
    length: int,
    n_train: int,
    *,
    n_noise: int = 4096,
    samples: int = 2000,
    seed: int = 0,
) -> float:
    r"""Test accuracy of the one-step (early-phase) classifier, from a Gaussian model of its
    scores; independent of the simulation (no embeddings are drawn).

    With u = L xbar = e_f + Z for a test sequence of fact f (Z: the sum of its L - 1 noise
    embeddings) and c_m training samples of label m, the score of label m is
    S_m = sum_{n: y_n = m} ⟨L xbar_n, u⟩ = c_m ⟨e_m, u⟩ + ⟨sum_{n: y_n = m} Z_n, u⟩.
    Given u (|u|^2 ~ L, |e_f|^2 ~ 1), to leading order in 1/d:

    * true label: S_f = c_f (1 + ⟨e_f, Z⟩) + ⟨sum Z_n, u⟩, with ⟨e_f, Z⟩ ~ N(0, (L - 1)/d);
    * wrong label m: S_m ~ N(mu_m, sigma_m^2), independent across m given u;
    * sigma_m^2 = L (c_m^2 + c_m (L - 1)) / d + c_m (L - 1)^2 / V and mu_m = c_m (L - 1)^2 / V.
      The first term is the overlap of e_m with a non-orthogonal u; the second is the c_m (L - 1)
      training noise tokens against u; the third and mu_m count noise tokens of the V-word
      vocabulary shared with the test sequence, which overlap by |z|^2 ~ 1. The true label's
      ⟨sum Z_n, u⟩ has the same law.

    The counts c_m are Poisson(N / M). The accuracy is E[prod_{m != f} Phi((S_f - mu_m) / sigma_m)]
    over ``samples`` Monte-Carlo draws of (c, S_f). Consequences: for small N,
    SNR^2 ~ c d / L^2 (c = N / M), so M* ~ N d / (2 L^2 log M): multiplicative in N, d and
    1/L^2. As N -> infinity the c_m^2 term (non-orthogonality of the facts to the test sequence)
    remains, SNR^2 -> d / L, and the capacity saturates where (M - 1) Phibar(sqrt(d / L)) ~ log 2,
    M ~ e^{d / (2L)} sqrt(d / L) (at d = 64, L = 8: about 260 for N >= 10^5): with
    non-orthogonal embeddings more data stops helping, and longer sequences hurt in both regimes.
    """
    from scipy import special

    m, L = int(n_facts), int(length)
    require(
        m >= 2 and d >= 1 and L >= 1 and n_train >= 1,
        f"need n_facts >= 2 and d, length, n_train >= 1, got {m}, {d}, {L}, {n_train}",
    )
    rng = np.random.default_rng(seed)
    lam = n_train / m
    c = rng.poisson(lam, size=(samples, m)).astype(float)  # column 0: the true label
    share = (L - 1) ** 2 / n_noise
    var = L * (c**2 + c * (L - 1)) / d + c * share
    mu = c * share
    cf, vf = c[:, 0], var[:, 0]
    sf = cf * (1.0 + rng.standard_normal(samples) * np.sqrt((L - 1) / d)) + mu[:, 0]
    sf = sf + rng.standard_normal(samples) * np.sqrt(np.maximum(vf - L * cf**2 / d, 0.0))
    sw, muw = np.sqrt(var[:, 1:]), mu[:, 1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sw > 0, (sf[:, None] - muw) / sw, np.where(sf[:, None] > muw, np.inf, -np.inf))
    logp = special.log_ndtr(z).sum(axis=1)
    return float(np.mean(np.where(cf > 0, np.exp(logp), 0.0)))


def early_phase_capacity(
    d: int,
    length: int,
    n_train: int,
    *,
    threshold: float = 0.5,
    n_noise: int = 4096,
    samples: int = 2000,
    m_max: int = 1 << 16,
    seed: int = 0,
) -> float:
    """Largest M with [`early_phase_accuracy`][meanfield.studies.recall.early_phase_accuracy] >= ``threshold``: M doubles from 2 until the
    accuracy falls below it, then bisection in log M to 1 % (the accuracy falls with M), and a
    log-linear interpolation between the last two M. nan if already below at M = 2 or still
    above at ``m_max``."""
    require(0 < threshold < 1, f"threshold must be in (0, 1), got {threshold}")
    acc = lambda mm: early_phase_accuracy(
        mm, d, length, n_train, n_noise=n_noise, samples=samples, seed=seed
    )  # noqa: E731
    lo, a_lo = 2, acc(2)
    if a_lo < threshold:
        return float("nan")
    hi = 4
    while (a_hi := acc(hi)) >= threshold:
        if hi >= m_max:
            return float("nan")
        lo, a_lo, hi = hi, a_hi, min(2 * hi, int(m_max))
    while hi > 1.01 * lo and hi - lo > 1:
        mid = int(round(np.sqrt(lo * hi)))
        mid = min(max(mid, lo + 1), hi - 1)
        a_mid = acc(mid)
        if a_mid >= threshold:
            lo, a_lo = mid, a_mid
        else:
            hi, a_hi = mid, a_mid
    return _crossing(lo, a_lo, hi, a_hi, threshold)


def _crossing(m0, a0, m1, a1, threshold) -> float:
    """M where the accuracy crosses ``threshold`` between (m0, a0 >= threshold) and (m1, a1 <
    threshold), linear in log M."""
    t = (a0 - threshold) / (a0 - a1) if a0 > a1 else 0.0
    return float(np.exp(np.log(m0) + t * np.log(m1 / m0)))
