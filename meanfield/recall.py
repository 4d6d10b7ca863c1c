r"""Factual recall with random (non-orthogonal) embeddings (after Vural, Bietti, Soltanolkotabi,
Wu 2026): a one-layer attention model, its token-retrieval task, training with optax, and the
storage capacity.

Task (:class:`RecallTask`). M *facts* are tokens with random embeddings e_f ~ N(0, I/d) (not
orthogonal once M > d); a noise vocabulary of V tokens has embeddings z_v ~ N(0, I/d). A sample
is a length-L sequence of noise tokens in which one position, uniform in [0, L), holds a fact
token f uniform in [M]; its label is f (a one-to-one map from facts to labels).

Model (:class:`RecallModel`, equinox). One attention layer with a trainable query direction w
(scores s_j = <w, x_j>: the key-query product of a fixed query token) and a trainable value-output
map W in R^{M x d}:

    logits(X) = W sum_j softmax_j(<w, x_j>) x_j ,

started at w = 0, W = 0 (uniform attention: the "early phase" of training is the regime where
attention has not yet learnt to find the fact). Trained on N samples with full-batch gradient
descent or Adam (optax), cross-entropy loss.

Early phase, one gradient step (derivation). At w = W = 0 every probability is 1/M and the
gradient in W is -(1/N) sum_n (e_{y_n} - 1/M) xbar_n^T with xbar_n = (1/L) sum_j x_{n,j}, so after
one step the predicted label of a new sequence X is argmax_m sum_{n: y_n = m} <xbar_n, xbar>. The
sequences of label m share (1/L) e_m, so the signal is |e_m|^2 / L^2 = 1/L^2 per such sample
(N/M of them), while (i) the noise tokens add overlaps of size ~ 1/(L sqrt d) per sample and (ii)
the other facts overlap e_m by ~ 1/sqrt d (non-orthogonality, independent of N). The first gives a
capacity M ~ N d / L^2 when N is small; the second caps it as N grows (only d helps). Measured
exponents are in the ``recall-capacity`` preset.

Capacity (:func:`capacity`): the largest M at which the test accuracy (fresh samples of the same
facts), averaged over seeds, is at least ``threshold``, log-interpolated on a doubling grid of M.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._errors import require


class RecallTask(eqx.Module):
    """Fact and noise embeddings of one random instance (see module docstring). ``n_facts`` may
    be traced when ``max_facts`` (static) is given: the fact table then has ``max_facts`` rows
    of which the first ``n_facts`` are used (one compiled program serves every M <= max_facts)."""

    facts: jax.Array  # (max_facts, d)
    noise: jax.Array  # (V, d)
    n_facts: jax.Array
    length: int = eqx.field(static=True)

    def __init__(self, key, n_facts, d: int, length: int, n_noise: int = 4096, max_facts: int | None = None):
        if max_facts is None:
            require(int(n_facts) >= 2, f"n_facts must be >= 2, got {n_facts}")
            max_facts = int(n_facts)
        require(d >= 1 and length >= 1 and n_noise >= 1, f"need d, length, n_noise >= 1, got {d}, {length}, {n_noise}")
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
    """logits(X) = W sum_j softmax_j(<w, x_j>) x_j; zero-initialised (uniform attention). With
    ``n_labels`` < the rows of W (padding, see :class:`RecallTask`) the extra logits are -inf, so
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


def train(key, n_facts, d: int, length: int, n_train: int, *, steps: int = 20, opt: str = "gd", lr=None,
          n_test: int = 2048, n_noise: int = 4096, max_facts: int | None = None):
    """Train one model on one random instance; returns (model, train accuracy, test accuracy).

    ``lr`` default: 10 M for 'gd' (the gradient in W scales like 1/M at the uniform start),
    1e-2 for 'adam'. Pure JAX: vmap it over keys for seeds (see :func:`accuracy`)."""
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
    jax.vmap(lambda k, m, lr, d, L, n, s, o, mx: train(k, m, d, L, n, steps=s, opt=o, lr=lr, max_facts=mx)[1:],
             in_axes=(0, None, None) + (None,) * 6),
    static_argnums=(3, 4, 5, 6, 7, 8))


def _padded(m: int) -> int:
    """Rows of the fact table for M facts: 64, 512 or 4096, ... (a few compiled programs serve
    every M of a doubling grid; the padding rows are masked out exactly)."""
    size = 64
    while size < m:
        size *= 8
    return size


def accuracy(key, n_facts: int, d: int, length: int, n_train: int, *, seeds: int = 4, steps: int = 20, opt: str = "gd",
             lr: float | None = None):
    """(train, test) accuracies (seeds,) of ``seeds`` independent instances, vmapped."""
    require(int(n_facts) >= 2, f"n_facts must be >= 2, got {n_facts}")
    lr = _default_lr(opt, n_facts) if lr is None else lr
    optimizer(opt, lr)  # validate before compiling
    tr, te = _accuracy(jax.random.split(key, seeds), jnp.asarray(int(n_facts)), jnp.asarray(float(lr), jnp.float32),
                       int(d), int(length), int(n_train), int(steps), opt, _padded(int(n_facts)))
    return np.asarray(tr), np.asarray(te)


def capacity(key, d: int, length: int, n_train: int, *, threshold: float = 0.5, m_min: int = 4, m_max: int = 4096,
             seeds: int = 4, steps: int = 20, opt: str = "gd", lr: float | None = None):
    """Largest number of facts M stored at mean test accuracy >= ``threshold``: M doubles from
    ``m_min`` until the accuracy falls below it, and log M is interpolated linearly in the
    accuracy between the last two points. Returns (capacity, {M: per-seed test accuracies});
    nan if the accuracy is below the threshold already at m_min or still above it at m_max."""
    require(0 < threshold < 1, f"threshold must be in (0, 1), got {threshold}")
    accs, m, prev = {}, int(m_min), None
    while m <= m_max:
        _, te = accuracy(jax.random.fold_in(key, m), m, d, length, n_train, seeds=seeds, steps=steps, opt=opt, lr=lr)
        accs[m] = te
        a = float(te.mean())
        if a < threshold:
            if prev is None:
                return float("nan"), accs
            a0 = float(accs[prev].mean())
            t = (a0 - threshold) / (a0 - a)
            return float(np.exp(np.log(prev) + t * np.log(m / prev))), accs
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
