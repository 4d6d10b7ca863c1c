r"""Closed forms and independent reference solutions used to check the engine.

Pushforward limit with an additive positional encoding
------------------------------------------------------
Model: USA attention with Q = K = V = I and additive auxiliary variables: token i carries a
fixed u_i = scale * U z_i and attends with y_i = x_i + u_i,

    dx_i/dt = P_{x_i} sum_j m_j exp(beta <y_i, y_j>) y_j ,     x_i on S^{d-1}.

Since d/dx_i of  E(x) = (1 / (2 beta)) sum_ij m_i m_j exp(beta <x_i + u_i, x_j + u_j>)  is
m_i sum_j m_j e^{beta <y_i, y_j>} y_j, this flow is (up to the factor 1/m_i) the Riemannian
gradient ascent of E: along it E never decreases and tokens settle at a (local) maximiser.
In the mean-field limit with a fixed z-distribution rho, the maximiser is a map z -> x*(z)
(one point per auxiliary value): the limit of the tokens is the pushforward (x*)_# rho, not a
Dirac mass. Stationarity reads x*(z) = v(z) / |v(z)| with v(z) = int e^{beta <y(z), y(z')>}
y(z') drho(z'): without auxiliary variables (u = 0) v is the same for every z and the maximiser
is a Dirac mass (all x* equal), with them v depends on z and so does x*.

``additive_pe_pushforward`` computes x* *without the engine*: it maximises log E over
x_k = w_k / |w_k| on a quadrature (z_k, rho_k) of the z-distribution by L-BFGS (scipy) from
several starts and keeps the best.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from scipy.optimize import minimize


def additive_pe_pushforward(u, beta: float, weights=None, *, n_starts: int = 4, seed: int = 0, gtol: float = 1e-10):
    """Energy maximiser x*(z_k) of the additive-PE USA energy (see module docstring).

    Args:
        u: the fixed offsets u_k = scale * U z_k at the quadrature nodes, shape (M, d).
        beta: inverse temperature.
        weights: quadrature weights rho_k (default uniform).
        n_starts: random restarts (plus one start with all x_k equal to the mean direction of u).

    Returns:
        (x_star (M, d) on the unit sphere, the maximal energy E = (1/(2 beta)) sum rho rho e^{...}).
    """
    u = np.asarray(u, dtype=float)
    m, d = u.shape
    rho = np.full(m, 1.0 / m) if weights is None else np.asarray(weights, float) / np.sum(weights)

    def neg_log_energy(w_flat):
        w = w_flat.reshape(m, d)
        r = np.linalg.norm(w, axis=1, keepdims=True)
        x = w / r
        y = x + u
        k = np.exp(beta * (y @ y.T))
        e = rho @ k @ rho
        g_x = 2 * beta * rho[:, None] * ((k * rho[None, :]) @ y) / e  # d log E / d x
        g_w = (g_x - np.sum(g_x * x, axis=1, keepdims=True) * x) / r  # chain rule through x = w/|w|
        return -np.log(e), -g_w.ravel()

    rng = np.random.default_rng(seed)
    mean_dir = u.sum(0)
    mean_dir = mean_dir / np.linalg.norm(mean_dir) if np.linalg.norm(mean_dir) > 0 else np.eye(d)[0]
    starts = [np.tile(mean_dir, (m, 1))] + [rng.normal(size=(m, d)) for _ in range(n_starts)]
    best = None
    for w0 in starts:
        res = minimize(neg_log_energy, w0.ravel(), jac=True, method="L-BFGS-B", options={"maxiter": 20000, "gtol": gtol})
        if best is None or res.fun < best.fun:
            best = res
    w = best.x.reshape(m, d)
    return w / np.linalg.norm(w, axis=1, keepdims=True), float(np.exp(-best.fun) / (2 * beta))


def circle_growth_rate(n: int, beta: float, a: float = 1.0, form: str = "SA") -> float:
    r"""Growth rate of Fourier mode n of a small perturbation of the uniform density on S^1
    (mean-field SA/USA with Q = K = I, V = a I + b J; b only adds a drift, no growth).

    Derivation (see meanfield.pde.circle for the velocity u = N / D): with rho = rho_0 + eps e^{i n t},
    rho_0 = 1/(2 pi), the kernels' Fourier coefficients are K_n = 2 pi I_n(beta) and
    g_n = 2 pi (a (i n / beta) I_n(beta) + b I_n'(beta)); linearising d_t rho + d_t(rho u) = 0 gives
    lambda_n = -i n u_0 - i n rho_0 (g_n / D_0 - N_0 K_n / D_0^2) whose real part is

        SA:  a n^2 I_n(beta) / (beta I_0(beta)),        USA:  a n^2 I_n(beta) / beta.
    """
    from scipy.special import iv

    rate = a * n**2 * iv(n, beta) / beta
    return float(rate / iv(0, beta)) if form == "SA" else float(rate)


def causal_coupling(n_s: int, lam: float, self_weight: float = 0.5) -> np.ndarray:
    r"""Dense (S, S) causal ALiBi coupling c_kj = w e^{-lam (s_k - s_j)} (j < k), self_weight w
    e^0 (j = k), 0 (j > k), on the cell centres s_k = (k + 1/2)/S with w = 1/S: the quadrature of
    int_0^s e^{-lam (s - s')} f(s') ds' that ``meanfield.pde.KineticMeanField`` applies by a scan."""
    s = (np.arange(n_s) + 0.5) / n_s
    diff = s[:, None] - s[None, :]
    c = np.exp(-lam * np.abs(diff)) / n_s
    return np.where(diff > 0, c, 0.0) + np.eye(n_s) * self_weight / n_s


def causal_mode_propagator(t: float, n: int, beta: float, lam: float, n_s: int, *, form: str = "SA",
                           self_weight: float = 0.5) -> np.ndarray:
    r"""exp(t lambda_n C~): the linear evolution of the Fourier mode n of a small perturbation of
    the uniform state of the causal kinetic equation, f_n(t, .) = P f_n(0, .).

    Derivation: at f = 1/2pi the SA denominator is D_0(s) = I_0(beta) sum_j c(s, s_j) and the
    numerator is linear in the perturbation, so the circle computation of
    :func:`circle_growth_rate` goes through with the perturbation replaced by its causal average
    C~ f_n, C~ = C / (row sums of C) (SA); for USA the average is not normalised (C itself).
    lambda_n = circle_growth_rate(n, beta) (V = I).
    """
    from scipy.linalg import expm

    c = causal_coupling(n_s, lam, self_weight)
    if form == "SA":
        c = c / c.sum(axis=1, keepdims=True)
    return expm(t * circle_growth_rate(n, beta, form=form) * c)


# ----------------------------------------------------------------------------- Cesàro theory
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
    r"""Continuum influence density on the last token (x = 1) after H residual layers:

        ((1 - alpha) I + alpha C)^H = sum_k binom(H, k) (1 - alpha)^{H-k} alpha^k C^k,
        (C^k f)(x) = int_0^x (log(x/y))^{k-1} / ((k-1)! x) f(y) dy   (k >= 1),

    (C f)(x) = (1/x) int_0^x f: induction, C^{k+1} has kernel (1/x) int_y^x (log(t/y))^{k-1}/((k-1)! t) dt
    = (log(x/y))^k / (k! x). At x = 1 the density over y in (0, 1) is

        rho_H(y) = sum_{k=1}^H binom(H, k) (1 - alpha)^{H-k} alpha^k (log(1/y))^{k-1} / (k-1)!

    (primacy tail: rho ~ alpha^H (log 1/y)^{H-1}/(H-1)! as y -> 0), plus the recency delta of
    mass ``cesaro_recency(H, alpha)`` = (1 - alpha)^H at y = 1. Each C^k kernel has unit mass, so
    int rho + delta = 1.
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

    Read r as the law of a walk started at j = n: each layer, with probability alpha, jumps to a
    uniform j' in {1..j}, so E[j'/n | j] = (j/n + 1/n)/2 and E[s] obeys
    E[s_{H+1}] = c E[s_H] + alpha/(2n), c = 1 - alpha/2, hence exactly

        E[s_H] = c^H + (1 - c^H) / n          (continuum: (1 - alpha/2)^H, geometric in H).
    """
    c = 1.0 - alpha / 2.0
    return float(c**depth + (1.0 - c**depth) / n)


def mask_walk_drift(alpha: float, lam: float = 0.0, window: float = float("inf")) -> float:
    r"""Mean backward jump per layer of the rollout of a position-only causal mask in the bulk.

    With constant scores (beta = 0) the attention of token i is A_ij ∝ e^{-lam (i - j)} on the
    window 0 <= i - j < w, so away from the first token the rollout is the law of a walk whose
    jumps k = i - j have P(k) ∝ q^k (q = e^{-lam}), k < w, taken with probability alpha per
    layer: the mean position after H layers moves back by H * drift tokens (exactly, as long as
    the walk cannot reach the first token), with

        drift = alpha * sum_{k<w} k q^k / sum_{k<w} q^k
              = alpha q / (1 - q)  (ALiBi, w = inf),   alpha (w - 1) / 2  (window, lam = 0).

    Decay and window masks move the influence back additively (linear in H); the plain causal
    mask moves it multiplicatively (``cesaro_mean_position``)."""
    if lam < 0 or alpha < 0 or not window >= 1:
        raise ValueError(f"need lam >= 0, alpha >= 0, window >= 1; got lam={lam}, alpha={alpha}, window={window}")
    if np.isinf(window):
        if lam == 0:
            return float("inf")
        q = np.exp(-lam)
        return float(alpha * q / (1 - q))
    k = np.arange(int(np.ceil(window)))
    w = np.exp(-lam * k)
    return float(alpha * np.sum(k * w) / np.sum(w))
