r"""Closed forms and independent reference solutions used to check the engine.

Pushforward limit with an additive positional encoding
------------------------------------------------------
Model: USA attention with $Q = K = V = I$ and additive auxiliary variables: token $i$ carries a
fixed $u_i = \text{scale}\cdot U z_i$ and attends with $y_i = x_i + u_i$,

$$
\frac{dx_i}{dt} = P_{x_i} \sum_j m_j e^{\beta\langle y_i, y_j\rangle} y_j, \qquad x_i \in S^{d-1}.
$$

Since the gradient in $x_i$ of $E(x) = \frac{1}{2\beta} \sum_{i,j} m_i m_j e^{\beta\langle x_i + u_i,\, x_j + u_j\rangle}$ is
$m_i \sum_j m_j e^{\beta\langle y_i, y_j\rangle} y_j$, this flow is (up to the factor $1/m_i$) the Riemannian
gradient ascent of $E$: along it $E$ never decreases and tokens settle at a (local) maximiser.
In the mean-field limit with a fixed $z$-distribution $\rho$, the maximiser is a map $z \mapsto x^*(z)$
(one point per auxiliary value): the limit of the tokens is the pushforward $(x^*)_\# \rho$, not a
Dirac mass. Stationarity reads $x^*(z) = v(z)/|v(z)|$ with
$v(z) = \int e^{\beta\langle y(z), y(z')\rangle} y(z')\, d\rho(z')$: without auxiliary variables ($u = 0$) $v$ is the
same for every $z$ and the maximiser is a Dirac mass (all $x^*$ equal), with them $v$ depends on $z$ and so
does $x^*$.

``additive_pe_pushforward`` computes x* *without the engine*: it maximises log E over
x_k = w_k / |w_k| on a quadrature (z_k, rho_k) of the z-distribution by L-BFGS (scipy) from
several starts and keeps the best.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .._errors import require
from ..geometry import Sphere


@dataclasses.dataclass(frozen=True)
class Maximiser:
    """The result of a global search for the maximiser of an interaction energy over the token
    configuration x_1..x_M (one point per node of the auxiliary distribution).

    Unpacks as ``x, energy = result`` (the best maximiser found and its energy).

    Attributes:
        x: (M, d) the best local maximiser found (on the unit sphere).
        energy: its energy.
        maxima: (K, M, d) the distinct local maximisers found, best first (two are the same when
            max_i |x_i - x'_i| < ``dist_tol``).
        energies: (K,) their energies.
        counts: (K,) how many starts ended at each (a basin-size estimate for the search's starts).
        n_starts: starts tried (multi-start plus basin hopping).
        tie: True when the two best distinct maximisers have energies within ``energy_tol`` (relative):
            the best is then not certified unique.
        hessian_max: the largest eigenvalue of the Hessian of log E in the tangent space at x
            (< 0: a strict local maximum).
        strict: ``hessian_max < -hessian_tol``.
    """

    x: np.ndarray
    energy: float
    maxima: np.ndarray
    energies: np.ndarray
    counts: np.ndarray
    n_starts: int
    tie: bool
    hessian_max: float
    strict: bool

    def __iter__(self):
        return iter((self.x, self.energy))


def _log_energy_and_grad(w_flat, m, d, u, p, c, rho, beta):
    """-log E and its gradient in w (x = w / |w|), E = (1/2b) sum rho rho e^{b ⟨y_i, y_j⟩} +
    (1/b) sum rho_i c_i e^{b ⟨x_i, p_i⟩}, y = x + u."""
    w = w_flat.reshape(m, d)
    r = np.linalg.norm(w, axis=1, keepdims=True)
    x = w / r
    y = x if u is None else x + u
    a = beta * (y @ y.T)
    shift = a.max()
    k = np.exp(a - shift)
    e_pair = rho @ k @ rho / 2.0
    g = rho[:, None] * ((k * rho[None, :]) @ y)  # d e_pair / d x / beta
    if p is not None:
        own = np.exp(beta * np.sum(x * p, axis=1) - shift)
        e_pair = e_pair + np.sum(rho * c * own)
        g = g + (rho * c * own)[:, None] * p
    g_x = beta * g / e_pair
    g_w = (g_x - np.sum(g_x * x, axis=1, keepdims=True) * x) / r
    return -(np.log(e_pair) + shift), -g_w.ravel()


def _maximise(
    u,
    p,
    c,
    beta,
    rho,
    *,
    n_starts,
    hops,
    seed,
    gtol,
    dist_tol,
    energy_tol,
    hessian_tol,
    x0_extra=(),
):
    from scipy.optimize import minimize

    ref = u if u is not None else p
    m, d = ref.shape
    fun = lambda w: _log_energy_and_grad(w, m, d, u, p, c, rho, beta)  # noqa: E731
    rng = np.random.default_rng(seed)

    def unit(v):
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    def fixed_point(x, steps=30, gamma=0.5):
        """Damped fixed point x <- normalise((1 - gamma) x + gamma v / |v|), v the ascent field."""
        for _ in range(steps):
            _, g = fun(x.ravel())
            v = -g.reshape(m, d)
            norm = np.linalg.norm(v, axis=1, keepdims=True)
            x = unit(x + gamma * v / np.maximum(norm.max(), 1e-300))
        return x

    starts = [unit(np.asarray(x, float)) for x in x0_extra]
    n_dirac = max(1, n_starts // 3)
    for _ in range(n_dirac):  # all tokens at one point (a Dirac start), slightly spread
        starts.append(
            unit(np.tile(unit(rng.normal(size=d)), (m, 1)) + 0.01 * rng.normal(size=(m, d)))
        )
    for _ in range(max(1, n_starts // 3)):  # two groups of consecutive nodes
        cut = rng.integers(1, m) if m > 1 else 1
        a, b = unit(rng.normal(size=(2, d)))
        x = np.where((np.arange(m) < cut)[:, None], a, b)
        starts.append(unit(x + 0.01 * rng.normal(size=(m, d))))
    while len(starts) < n_starts + len(x0_extra):
        starts.append(unit(rng.normal(size=(m, d))))

    found = []  # (energy, x)

    def solve(x):
        res = minimize(
            fun,
            fixed_point(x).ravel(),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": 5000, "gtol": gtol, "ftol": 1e-13},
        )
        xs = unit(res.x.reshape(m, d))
        found.append((float(np.exp(-res.fun) / beta), xs))
        return found[-1]

    for x in starts:
        solve(x)
    for it in range(hops):  # basin hopping: perturb a block of consecutive nodes of a top maximiser
        top = sorted(found, key=lambda t: -t[0])[:4]
        x = top[it % len(top)][1].copy()
        a, length = rng.integers(0, m), rng.integers(1, max(2, m // 2))
        idx = (a + np.arange(length)) % m
        x[idx] = unit(x[idx] + rng.normal(scale=rng.choice([0.3, 1.0, 3.0]), size=(len(idx), d)))
        solve(x)

    # distinct maximisers (direct comparison: the auxiliary variables break the rotation symmetry,
    # except with neither offsets nor prompts, where Gram matrices are compared)
    invariant = (u is None or not np.any(u)) and p is None
    key = (lambda x: x @ x.T) if invariant else (lambda x: x)
    order = sorted(found, key=lambda t: -t[0])
    maxima, energies, counts = [], [], []
    for e, x in order:
        for j, y in enumerate(maxima):
            if np.max(np.abs(key(x) - key(y))) < dist_tol:
                counts[j] += 1
                break
        else:
            maxima.append(x)
            energies.append(e)
            counts.append(1)
    best = maxima[0]
    tie = len(energies) > 1 and abs(energies[0] - energies[1]) <= energy_tol * abs(energies[0])
    hmax = _tangent_hessian_max(fun, best)
    return Maximiser(
        x=best,
        energy=energies[0],
        maxima=np.stack(maxima),
        energies=np.asarray(energies),
        counts=np.asarray(counts),
        n_starts=len(found),
        tie=bool(tie),
        hessian_max=hmax,
        strict=bool(hmax < -hessian_tol),
    )


def _tangent_hessian_max(fun, x, h=1e-5):
    """Largest eigenvalue of the Hessian of log E on the product of tangent spaces at x (central
    differences of the analytic gradient along an orthonormal tangent basis)."""
    basis = Sphere().tangent_basis(x)  # (m (d-1), m d)

    def hess_vec(c):
        t = basis.T @ np.ravel(c)
        gp, gm = fun(x.ravel() + h * t)[1], fun(x.ravel() - h * t)[1]
        return basis @ (-(gp - gm) / (2 * h))  # tangent part of the Hessian of +log E times t

    n = basis.shape[0]
    if n <= 64:
        hess = np.stack([hess_vec(e) for e in np.eye(n)], axis=1)
        return float(np.linalg.eigvalsh(0.5 * (hess + hess.T)).max())
    from scipy.sparse.linalg import LinearOperator, eigsh

    op = LinearOperator((n, n), matvec=hess_vec, dtype=float)
    return float(eigsh(op, k=1, which="LA", tol=1e-8, v0=np.ones(n), return_eigenvectors=False)[0])


def _node_weights(m, weights):
    if weights is None:
        return np.full(m, 1.0 / m)
    w = np.asarray(weights, float)
    require(
        w.shape == (m,) and np.all(np.isfinite(w)) and np.all(w > 0),
        f"weights must be {m} positive numbers",
    )
    return w / w.sum()


def additive_pe_pushforward(
    u,
    beta: float,
    weights=None,
    *,
    n_starts: int = 48,
    hops: int = 48,
    seed: int = 0,
    gtol: float = 1e-10,
    dist_tol: float = 1e-3,
    energy_tol: float = 1e-9,
    hessian_tol: float = 1e-8,
) -> Maximiser:
    r"""Energy maximiser x*(z_k) of the additive-PE USA energy (see module docstring), by a
    reproducible global search: ``n_starts`` starts (Dirac starts at random points, two groups of
    consecutive nodes, random configurations), each a damped fixed point then L-BFGS on log E, then
    ``hops`` basin-hopping moves (a block of consecutive nodes of a top maximiser perturbed and
    re-optimised). The landscape has many local maximisers (e.g. M = 64 midpoint nodes,
    u(s) = 0.4 (cos pi s, sin pi s), beta = 4: energies 105.91, 106.58, 106.68, 106.71, ...); the
    result lists the distinct ones found with their basin counts, flags a near tie and checks that
    the best is a strict local maximum (Hessian). The particle dynamics converge to *a* local
    maximiser, which one depends on the start: the best found is the limit only from its basin.

    Args:
        u: the fixed offsets u_k = scale * U z_k at the quadrature nodes, shape (M, d).
        beta: inverse temperature.
        weights: quadrature weights rho_k (default uniform).

    Returns:
        [`Maximiser`][meanfield.theory.Maximiser] (unpacks as ``x_star, energy``), energy $E = \frac{1}{2\beta} \sum_{k,l} \rho_k \rho_l e^{\beta\langle y_k, y_l\rangle}$.
    """
    u = np.asarray(u, dtype=float)
    require(u.ndim == 2 and u.shape[0] >= 1, f"u must have shape (M, d), got {u.shape}")
    require(np.isfinite(beta) and beta > 0, f"beta must be finite and > 0, got {beta}")
    rho = _node_weights(u.shape[0], weights)
    mean_dir = u.sum(0)
    extra = [np.tile(mean_dir, (u.shape[0], 1))] if np.linalg.norm(mean_dir) > 0 else []
    return _maximise(
        u,
        None,
        None,
        float(beta),
        rho,
        n_starts=n_starts,
        hops=hops,
        seed=seed,
        gtol=gtol,
        dist_tol=dist_tol,
        energy_tol=energy_tol,
        hessian_tol=hessian_tol,
        x0_extra=extra,
    )


def prompt_pushforward(
    p,
    beta: float,
    weight=1.0,
    weights=None,
    *,
    n_starts: int = 48,
    hops: int = 48,
    seed: int = 0,
    gtol: float = 1e-10,
    dist_tol: float = 1e-3,
    energy_tol: float = 1e-9,
    hessian_tol: float = 1e-8,
) -> Maximiser:
    r"""Energy maximiser x*(s_k) with parallel prompts ([`meanfield.ParallelPrompt`][meanfield.kernel.ParallelPrompt]):

        E(x) = (1 / 2 beta) sum_kl rho_k rho_l e^{beta ⟨x_k, x_l⟩} + (1 / beta) sum_k rho_k weight_k e^{beta ⟨x_k, p_k⟩}

    over x_k on the unit sphere, for prompts p_k = p(s_k) at the nodes of the auxiliary
    distribution (weights rho_k, default uniform). Its maximiser is a map s -> x*(s): the limit of
    the tokens is the pushforward of the auxiliary distribution, not a Dirac mass (the second term
    is linear in the token distribution but differs between tokens). Same global search and
    diagnostics as [`additive_pe_pushforward`][meanfield.theory.additive_pe_pushforward] (plus a start at x = p).

    Returns:
        [`Maximiser`][meanfield.theory.Maximiser] (unpacks as ``x_star, energy``).
    """
    p = np.asarray(p, dtype=float)
    require(
        p.ndim == 2 and p.shape[0] >= 1 and p.shape[1] >= 2,
        f"p must have shape (M, d), d >= 2, got {p.shape}",
    )
    require(
        np.all(np.isfinite(p)) and np.allclose(np.linalg.norm(p, axis=1), 1.0, atol=1e-6),
        "p must lie on the unit sphere (finite, |p_k| = 1)",
    )
    require(np.isfinite(beta) and beta > 0, f"beta must be finite and > 0, got {beta}")
    m = p.shape[0]
    c = np.broadcast_to(np.asarray(weight, float), (m,)).copy() if np.ndim(weight) <= 1 else None
    require(
        c is not None and c.shape == (m,) and np.all(np.isfinite(c)) and np.all(c >= 0),
        f"weight must be finite and >= 0, a scalar or ({m},), got {weight}",
    )
    rho = _node_weights(m, weights)
    return _maximise(
        None,
        p,
        c,
        float(beta),
        rho,
        n_starts=n_starts,
        hops=hops,
        seed=seed,
        gtol=gtol,
        dist_tol=dist_tol,
        energy_tol=energy_tol,
        hessian_tol=hessian_tol,
        x0_extra=[p],
    )


@dataclasses.dataclass(frozen=True)
class InverseDesign:
    r"""Prompts that make a target configuration a stationary point of the parallel-prompt flow.

    Attributes:
        p: (N, d) the prompts (unit vectors), one per token.
        delta: (N,) angle between each token and its prompt (the smaller root).
        tau: (N,) the tangent pull of the other tokens, $|P_{x_i} \sum_j m_j e^{\beta\langle x_i, x_j\rangle} x_j|$.
        min_weight: the smallest weight for which every balance is solvable.
        hessian_max: largest eigenvalue of the Hessian of log E in the tangent space at the target
            (the flows are gradient ascents of E, so < 0 means linearly stable).
        stable: ``hessian_max < 0``.
    """

    p: np.ndarray
    delta: np.ndarray
    tau: np.ndarray
    min_weight: float
    hessian_max: float
    stable: bool


def inverse_prompt(target, beta: float, weight=1.0, mass=None) -> InverseDesign:
    r"""Parallel prompts p_i that make a chosen configuration ``x*_1..x*_N`` (unit vectors) a stationary
    point of the SA and USA flows with [`meanfield.ParallelPrompt`][meanfield.kernel.ParallelPrompt] (Q = K = V = I, mask Full):
    an exact inverse design of the limit.

    Per token the tangent balance is one scalar equation. With $t_i$ the unit tangent direction of the
    pull $g_i = P_{x_i} \sum_j m_j e^{\beta\langle x_i, x_j\rangle} x_j$, $\tau_i = |g_i|$, and
    $p_i = \cos\delta\, x_i - \sin\delta\, t_i$,

    $$
    \mathrm{weight}_i\, e^{\beta \cos\delta} \sin\delta = \tau_i ,
    $$

    solvable iff $\mathrm{weight}_i \ge \tau_i / \max_\delta \big(e^{\beta\cos\delta} \sin\delta\big)$, the maximum being at
    $\cos\delta^* = (\sqrt{1 + 4\beta^2} - 1)/(2\beta)$; the root in $[0, \delta^*]$ (the smaller angle)
    is taken. Stability: the Hessian of log E at x* on the tangent spaces (see
    [`InverseDesign`][meanfield.theory.InverseDesign]). ``mass``: token masses m_j (default 1/N); ``weight``: the prompts' key
    mass, a scalar or (N,)."""
    from scipy.optimize import brentq

    x = np.asarray(target, dtype=float)
    require(
        x.ndim == 2 and x.shape[0] >= 1 and x.shape[1] >= 2,
        f"target must have shape (N, d), d >= 2, got {x.shape}",
    )
    require(
        np.all(np.isfinite(x)) and np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-8),
        "target must lie on the unit sphere (finite, |x_i| = 1)",
    )
    require(np.isfinite(beta) and beta > 0, f"beta must be finite and > 0, got {beta}")
    n, d = x.shape
    w = (
        np.broadcast_to(np.asarray(weight, float), (n,)).copy()
        if np.ndim(weight) <= 1 and np.size(weight) in (1, n)
        else None
    )
    require(
        w is not None and np.all(np.isfinite(w)) and np.all(w >= 0),
        f"weight must be finite and >= 0, a scalar or ({n},)",
    )
    m = _node_weights(n, mass)
    pull = (m[None, :] * np.exp(beta * (x @ x.T))) @ x
    g = pull - np.sum(pull * x, axis=1, keepdims=True) * x
    tau = np.linalg.norm(g, axis=1)
    cos_star = (np.sqrt(1 + 4 * beta**2) - 1) / (2 * beta)
    d_star = float(np.arccos(cos_star))
    f = lambda dl: np.exp(beta * np.cos(dl)) * np.sin(dl)  # noqa: E731
    fmax = f(d_star)
    need = tau / fmax
    min_weight = float(need.max())
    require(
        np.all(w >= need * (1 - 1e-12)),
        f"weight too small to hold the target: need weight >= {min_weight:.6g} (max_i tau_i / max_delta "
        f"e^(beta cos delta) sin delta), got {float(w.min()):.6g}",
    )
    delta = np.array(
        [
            0.0
            if ti == 0
            else (
                d_star
                if ti >= wi * fmax
                else brentq(lambda dl: wi * f(dl) - ti, 0.0, d_star, xtol=1e-15)
            )
            for ti, wi in zip(tau, w)
        ]
    )
    t = np.where(tau[:, None] > 0, g / np.where(tau[:, None] > 0, tau[:, None], 1.0), 0.0)
    p = np.cos(delta)[:, None] * x - np.sin(delta)[:, None] * t
    p = p / np.linalg.norm(p, axis=1, keepdims=True)
    fun = lambda wf: _log_energy_and_grad(wf, n, d, None, p, w, m, float(beta))  # noqa: E731
    hmax = _tangent_hessian_max(fun, x)
    return InverseDesign(
        p=p, delta=delta, tau=tau, min_weight=min_weight, hessian_max=hmax, stable=bool(hmax < 0)
    )
