r"""Cesàro theory of position bias (uniform causal attention with a residual) and masks as graphs
(Wu et al. 2025): the averaging matrix, its rollout, the continuum density, and the mask walk."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def cesaro_matrix(n: int) -> np.ndarray:
    """Uniform causal averaging A_ij = 1/i for j <= i (1-based), the attention matrix of causal
    attention with constant scores (beta = 0 or Q = K = 0)."""
    i = np.arange(1, n + 1)
    return np.tril(np.ones((n, n))) / i[:, None]


def cesaro_rollout(n: int, depth: int, alpha):
    """Last row of ((1 - alpha) I + alpha A)^H for the Cesàro matrix A: the influence of every
    input position on the last token after H residual layers of uniform causal attention (sums
    to 1). (r A)_j = sum_{i >= j} r_i / i is a reversed cumulative sum, so each layer is O(n)
    and the power is never formed; jnp, so it runs under jit/vmap (alpha may be traced)."""
    inv_i = 1.0 / jnp.arange(1, n + 1, dtype=float)
    row = jnp.zeros(n).at[-1].set(1.0)
    for _ in range(depth):
        row = (1 - alpha) * row + alpha * jnp.cumsum((row * inv_i)[::-1])[::-1]
    return row


def cesaro_density(y, depth: int, alpha: float) -> np.ndarray:
    r"""Continuum influence density on the last token ($x = 1$) after $H$ residual layers:

    $$
    \big((1 - \alpha) I + \alpha C\big)^H = \sum_k \binom{H}{k} (1 - \alpha)^{H-k} \alpha^k C^k, \qquad
    (C^k f)(x) = \int_0^x \frac{(\log(x/y))^{k-1}}{(k-1)!\, x} f(y)\, dy \quad (k \ge 1),
    $$

    with $(C f)(x) = \frac1x \int_0^x f$: by induction, $C^{k+1}$ has kernel
    $\frac1x \int_y^x \frac{(\log(t/y))^{k-1}}{(k-1)!\, t} dt = \frac{(\log(x/y))^k}{k!\, x}$. At $x = 1$ the density over
    $y \in (0, 1)$ is

    $$
    \rho_H(y) = \sum_{k=1}^H \binom{H}{k} (1 - \alpha)^{H-k} \alpha^k \frac{(\log(1/y))^{k-1}}{(k-1)!}
    $$

    (primacy tail: $\rho \sim \alpha^H (\log 1/y)^{H-1}/(H-1)!$ as $y \to 0$), plus the recency delta of
    mass ``cesaro_recency(H, alpha)`` $= (1 - \alpha)^H$ at $y = 1$. Each $C^k$ kernel has unit mass, so
    $\int \rho + \delta = 1$.
    """
    from scipy.special import comb, gammaln, xlogy

    y = np.asarray(y, dtype=float)
    with np.errstate(divide="ignore"):
        log_inv = -np.log(y)
    out = np.zeros_like(y)
    for k in range(1, depth + 1):
        logterm = xlogy(k - 1, log_inv) - gammaln(k)  # log((log 1/y)^{k-1} / (k-1)!), 0^0 = 1
        out = out + comb(depth, k) * (1 - alpha) ** (depth - k) * alpha**k * np.exp(logterm)
    return out


def cesaro_recency(depth: int, alpha: float) -> float:
    """Mass (1 - alpha)^H of the isolated recency delta on the last token."""
    return float((1 - alpha) ** depth)


# ------------------------------------------------------------- masks as graphs (Wu et al. 2025)
def cesaro_mean_position(n: int, depth: int, alpha: float) -> float:
    r"""Mean input position E[s] = sum_j (j/n) r_j (j = 1..n) of the Cesàro rollout r on the last
    token after H residual layers of uniform causal attention (``cesaro_rollout``).

    Read $r$ as the law of a walk started at $j = n$: each layer, with probability $\alpha$, jumps to a
    uniform $j' \in \{1, \dots, j\}$, so $\mathbb{E}[j'/n \mid j] = (j/n + 1/n)/2$ and
    $\mathbb{E}[s_{H+1}] = c\, \mathbb{E}[s_H] + \alpha/(2n)$, $c = 1 - \alpha/2$, hence exactly

    $$
    \mathbb{E}[s_H] = c^H + (1 - c^H)/n \qquad \text{(continuum: } (1 - \alpha/2)^H\text{, geometric in } H).
    $$
    """
    c = 1.0 - alpha / 2.0
    return float(c**depth + (1.0 - c**depth) / n)


def mask_walk_drift(alpha: float, lam: float = 0.0, window: float = float("inf")) -> float:
    r"""Mean backward jump per layer of the rollout of a position-only causal mask in the bulk.

    With constant scores ($\beta = 0$) the attention of token $i$ is $A_{ij} \propto e^{-\lambda (i - j)}$ on the
    window $0 \le i - j < w$, so away from the first token the rollout is the law of a walk whose
    jumps $k = i - j$ have $P(k) \propto q^k$ ($q = e^{-\lambda}$), $k < w$, taken with probability $\alpha$ per
    layer: the mean position after $H$ layers moves back by $H \cdot$ drift tokens (exactly, as long as
    the walk cannot reach the first token), with

    $$
    \text{drift} = \alpha \frac{\sum_{k<w} k q^k}{\sum_{k<w} q^k}
    = \frac{\alpha q}{1 - q} \ \text{(ALiBi, } w = \infty), \qquad \frac{\alpha (w - 1)}{2} \ \text{(window, } \lambda = 0).
    $$

    Decay and window masks move the influence back additively (linear in H); the plain causal
    mask moves it multiplicatively (``cesaro_mean_position``)."""
    if lam < 0 or alpha < 0 or not window >= 1:
        raise ValueError(
            f"need lam >= 0, alpha >= 0, window >= 1; got lam={lam}, alpha={alpha}, window={window}"
        )
    if np.isinf(window):
        if lam == 0:
            return float("inf")
        q = np.exp(-lam)
        return float(alpha * q / (1 - q))
    k = np.arange(int(np.ceil(window)))
    w = np.exp(-lam * k)
    return float(alpha * np.sum(k * w) / np.sum(w))
