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

import dataclasses

import jax.numpy as jnp
import numpy as np

from ._errors import require
from .geometry import Sphere


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
    """-log E and its gradient in w (x = w / |w|), E = (1/2b) sum rho rho e^{b <y_i, y_j>} +
    (1/b) sum rho_i c_i e^{b <x_i, p_i>}, y = x + u."""
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


def _maximise(u, p, c, beta, rho, *, n_starts, hops, seed, gtol, dist_tol, energy_tol, hessian_tol, x0_extra=()):
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
        starts.append(unit(np.tile(unit(rng.normal(size=d)), (m, 1)) + 0.01 * rng.normal(size=(m, d))))
    for _ in range(max(1, n_starts // 3)):  # two groups of consecutive nodes
        cut = rng.integers(1, m) if m > 1 else 1
        a, b = unit(rng.normal(size=(2, d)))
        x = np.where((np.arange(m) < cut)[:, None], a, b)
        starts.append(unit(x + 0.01 * rng.normal(size=(m, d))))
    while len(starts) < n_starts + len(x0_extra):
        starts.append(unit(rng.normal(size=(m, d))))

    found = []  # (energy, x)

    def solve(x):
        res = minimize(fun, fixed_point(x).ravel(), jac=True, method="L-BFGS-B",
                       options={"maxiter": 5000, "gtol": gtol, "ftol": 1e-13})
        xs = unit(res.x.reshape(m, d))
        found.append((float(np.exp(-res.fun) / beta), xs))
        return found[-1]

    for x in starts:
        solve(x)
    for it in range(hops):  # basin hopping: perturb a block of consecutive nodes of a top maximiser
        top = sorted(found, key=lambda t: -t[0])[: 4]
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
    return Maximiser(x=best, energy=energies[0], maxima=np.stack(maxima), energies=np.asarray(energies),
                     counts=np.asarray(counts), n_starts=len(found), tie=bool(tie), hessian_max=hmax,
                     strict=bool(hmax < -hessian_tol))


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
    require(w.shape == (m,) and np.all(np.isfinite(w)) and np.all(w > 0), f"weights must be {m} positive numbers")
    return w / w.sum()


def additive_pe_pushforward(u, beta: float, weights=None, *, n_starts: int = 48, hops: int = 48, seed: int = 0,
                            gtol: float = 1e-10, dist_tol: float = 1e-3, energy_tol: float = 1e-9,
                            hessian_tol: float = 1e-8) -> Maximiser:
    """Energy maximiser x*(z_k) of the additive-PE USA energy (see module docstring), by a
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
        :class:`Maximiser` (unpacks as ``x_star, energy``), energy E = (1/(2 beta)) sum rho rho e^{...}.
    """
    u = np.asarray(u, dtype=float)
    require(u.ndim == 2 and u.shape[0] >= 1, f"u must have shape (M, d), got {u.shape}")
    require(np.isfinite(beta) and beta > 0, f"beta must be finite and > 0, got {beta}")
    rho = _node_weights(u.shape[0], weights)
    mean_dir = u.sum(0)
    extra = [np.tile(mean_dir, (u.shape[0], 1))] if np.linalg.norm(mean_dir) > 0 else []
    return _maximise(u, None, None, float(beta), rho, n_starts=n_starts, hops=hops, seed=seed, gtol=gtol,
                     dist_tol=dist_tol, energy_tol=energy_tol, hessian_tol=hessian_tol, x0_extra=extra)


def prompt_pushforward(p, beta: float, weight=1.0, weights=None, *, n_starts: int = 48, hops: int = 48,
                       seed: int = 0, gtol: float = 1e-10, dist_tol: float = 1e-3, energy_tol: float = 1e-9,
                       hessian_tol: float = 1e-8) -> Maximiser:
    r"""Energy maximiser x*(s_k) with parallel prompts (:class:`meanfield.ParallelPrompt`):

        E(x) = (1 / 2 beta) sum_kl rho_k rho_l e^{beta <x_k, x_l>} + (1 / beta) sum_k rho_k weight_k e^{beta <x_k, p_k>}

    over x_k on the unit sphere, for prompts p_k = p(s_k) at the nodes of the auxiliary
    distribution (weights rho_k, default uniform). Its maximiser is a map s -> x*(s): the limit of
    the tokens is the pushforward of the auxiliary distribution, not a Dirac mass (the second term
    is linear in the token distribution but differs between tokens). Same global search and
    diagnostics as :func:`additive_pe_pushforward` (plus a start at x = p).

    Returns:
        :class:`Maximiser` (unpacks as ``x_star, energy``).
    """
    p = np.asarray(p, dtype=float)
    require(p.ndim == 2 and p.shape[0] >= 1 and p.shape[1] >= 2, f"p must have shape (M, d), d >= 2, got {p.shape}")
    require(np.all(np.isfinite(p)) and np.allclose(np.linalg.norm(p, axis=1), 1.0, atol=1e-6),
            "p must lie on the unit sphere (finite, |p_k| = 1)")
    require(np.isfinite(beta) and beta > 0, f"beta must be finite and > 0, got {beta}")
    m = p.shape[0]
    c = np.broadcast_to(np.asarray(weight, float), (m,)).copy() if np.ndim(weight) <= 1 else None
    require(c is not None and c.shape == (m,) and np.all(np.isfinite(c)) and np.all(c >= 0),
            f"weight must be finite and >= 0, a scalar or ({m},), got {weight}")
    rho = _node_weights(m, weights)
    return _maximise(None, p, c, float(beta), rho, n_starts=n_starts, hops=hops, seed=seed, gtol=gtol,
                     dist_tol=dist_tol, energy_tol=energy_tol, hessian_tol=hessian_tol, x0_extra=[p])


@dataclasses.dataclass(frozen=True)
class InverseDesign:
    """Prompts that make a target configuration a stationary point of the parallel-prompt flow.

    Attributes:
        p: (N, d) the prompts (unit vectors), one per token.
        delta: (N,) angle between each token and its prompt (the smaller root).
        tau: (N,) the tangent pull of the other tokens, |P_{x_i} sum_j m_j e^{beta <x_i, x_j>} x_j|.
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
    r"""Parallel prompts p_i that make a chosen configuration x*_1..x*_N (unit vectors) a stationary
    point of the SA and USA flows with :class:`meanfield.ParallelPrompt` (Q = K = V = I, mask Full):
    an exact inverse design of the limit.

    Per token the tangent balance is one scalar equation. With t_i the unit tangent direction of the
    pull g_i = P_{x_i} sum_j m_j e^{beta <x_i, x_j>} x_j, tau_i = |g_i|, and
    p_i = cos(delta) x_i - sin(delta) t_i,

        weight_i e^{beta cos delta} sin delta = tau_i,

    solvable iff weight_i >= tau_i / max_delta (e^{beta cos delta} sin delta), the maximum being at
    cos delta* = (sqrt(1 + 4 beta^2) - 1) / (2 beta); the root in [0, delta*] (the smaller angle)
    is taken. Stability: the Hessian of log E at x* on the tangent spaces (see
    :class:`InverseDesign`). ``mass``: token masses m_j (default 1/N); ``weight``: the prompts' key
    mass, a scalar or (N,)."""
    from scipy.optimize import brentq

    x = np.asarray(target, dtype=float)
    require(x.ndim == 2 and x.shape[0] >= 1 and x.shape[1] >= 2, f"target must have shape (N, d), d >= 2, got {x.shape}")
    require(np.all(np.isfinite(x)) and np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-8),
            "target must lie on the unit sphere (finite, |x_i| = 1)")
    require(np.isfinite(beta) and beta > 0, f"beta must be finite and > 0, got {beta}")
    n, d = x.shape
    w = np.broadcast_to(np.asarray(weight, float), (n,)).copy() if np.ndim(weight) <= 1 and np.size(weight) in (1, n) else None
    require(w is not None and np.all(np.isfinite(w)) and np.all(w >= 0), f"weight must be finite and >= 0, a scalar or ({n},)")
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
    require(np.all(w >= need * (1 - 1e-12)),
            f"weight too small to hold the target: need weight >= {min_weight:.6g} (max_i tau_i / max_delta "
            f"e^(beta cos delta) sin delta), got {float(w.min()):.6g}")
    delta = np.array([0.0 if ti == 0 else (d_star if ti >= wi * fmax else brentq(lambda dl: wi * f(dl) - ti, 0.0, d_star,
                                                                                   xtol=1e-15))
                      for ti, wi in zip(tau, w)])
    t = np.where(tau[:, None] > 0, g / np.where(tau[:, None] > 0, tau[:, None], 1.0), 0.0)
    p = np.cos(delta)[:, None] * x - np.sin(delta)[:, None] * t
    p = p / np.linalg.norm(p, axis=1, keepdims=True)
    fun = lambda wf: _log_energy_and_grad(wf, n, d, None, p, w, m, float(beta))  # noqa: E731
    hmax = _tangent_hessian_max(fun, x)
    return InverseDesign(p=p, delta=delta, tau=tau, min_weight=min_weight, hessian_max=hmax, stable=bool(hmax < 0))


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


def sphere_growth_rate(ell: int, beta: float, a: float = 1.0, form: str = "SA") -> float:
    r"""Growth rate of a degree-``ell`` perturbation of the uniform density on S^2 (mean-field SA/USA
    with Q = K = I, V = a I; every order m grows alike).

    Derivation (see meanfield.pde.sphere): with rho = rho_0 + eps Y_lm, rho_0 = 1/(4 pi), Funk-Hecke
    gives G = i_0(beta) + eps 4 pi i_l(beta) Y_lm; the potential phi = (a/beta) log G (SA) or
    (a/beta) G (USA) and d_t rho = -div(rho grad phi) ~ -rho_0 Lap phi = rho_0 l(l+1) phi_lm Y_lm, so

        SA:  a l(l+1) i_l(beta) / (beta i_0(beta)),        USA:  a l(l+1) i_l(beta) / beta,

    the analogues of the circle's a n^2 I_n(beta) / (beta I_0(beta)). The kinetic paper's
    convention (USA, V = beta I) gives :func:`sphere_kinetic_rate`, l(l+1) i_l(beta).
    """
    from scipy.special import spherical_in

    rate = a * ell * (ell + 1) * spherical_in(int(ell), beta) / beta
    return float(rate / spherical_in(0, beta)) if form == "SA" else float(rate)


def sphere_kinetic_rate(ell: int, beta: float) -> float:
    """a_l = l(l+1) i_l(beta): :func:`sphere_growth_rate` in the kinetic paper's convention (USA, V = beta I)."""
    return sphere_growth_rate(ell, beta, a=beta, form="USA")


def causal_coupling(n_s: int, lam: float, self_weight: float = 0.5, *, strict: bool = False,
                    normalized: bool = False) -> np.ndarray:
    r"""Dense (S, S) causal ALiBi coupling c_kj = w e^{-lam (s_k - s_j)} (j < k), self_weight w
    e^0 (j = k; 0 when ``strict``), 0 (j > k), on the cell centres s_k = (k + 1/2)/S with w = 1/S:
    the quadrature of int_0^s e^{-lam (s - s')} f(s') ds' that ``meanfield.pde.KineticMeanField``
    applies by a scan. ``normalized``: rows divided by their sums (a zero row stays zero)."""
    _check_kinetic(lam=lam)
    s = (np.arange(n_s) + 0.5) / n_s
    diff = s[:, None] - s[None, :]
    c = np.exp(-lam * np.abs(diff)) / n_s
    c = np.where(diff > 0, c, 0.0) + np.eye(n_s) * (0.0 if strict else self_weight) / n_s
    if normalized:
        rows = c.sum(axis=1, keepdims=True)
        c = c / np.where(rows > 0, rows, 1.0)
    return c


def causal_mode_propagator(t: float, n: int, beta: float, lam: float, n_s: int, *, form: str = "SA",
                           value: float = 1.0, normalized: bool | None = None, strict: bool = False,
                           self_weight: float = 0.5) -> np.ndarray:
    r"""exp(t lambda_n C~): the linear evolution of the Fourier mode n of a small perturbation of
    the uniform state of the causal kinetic equation, f_n(t, .) = P f_n(0, .).

    Derivation: at f = 1/2pi the SA denominator is D_0(s) = I_0(beta) sum_j c(s, s_j) and the
    numerator is linear in the perturbation, so the circle computation of
    :func:`circle_growth_rate` goes through with the perturbation replaced by its causal average
    C~ f_n. Content and position normalisation are separate choices:

    * ``form`` (content): "SA" gives lambda_n = value n^2 I_n / (beta I_0) and always the
      row-normalised C~ = C / (row sums) (the softmax divides the positional weights too);
      "USA" gives lambda_n = value n^2 I_n / beta with C~ = C, or C / (row sums) when
      ``normalized`` (positional weights normalised per row, :class:`meanfield.PositionNormalized`).
    * ``value``: V = value I (the kinetic paper uses V = beta I, so its rate is n^2 I_n(beta)).
    * ``strict``: no self weight (a token does not see itself; the first row is frozen).

    The kinetic paper's model (Duerinckx, Geshkovski & Rossi 2026) is
    ``form="USA", value=beta, normalized=True, strict=True``.
    """
    from scipy.linalg import expm

    _check_kinetic(beta=beta, lam=lam)
    require(form in ("SA", "USA"), f"form must be 'SA' or 'USA', got {form!r}")
    require(not (form == "SA" and normalized is False), "normalized=False is not available for SA (the softmax normalises the positions)")
    norm = True if form == "SA" else bool(normalized)
    c = causal_coupling(n_s, lam, self_weight, strict=strict, normalized=norm)
    return expm(t * circle_growth_rate(n, beta, a=value, form=form) * c)


# ----------------------------------------------------------------------------- kinetic paper
def _check_kinetic(beta=None, lam=None, M=None, n_max=None):
    if beta is not None:
        require(np.all(np.isfinite(beta)) and np.all(np.asarray(beta) >= 0), f"beta must be finite and >= 0, got {beta}")
    if lam is not None:
        require(np.all(np.isfinite(lam)) and np.all(np.asarray(lam) >= 0), f"lam must be finite and >= 0, got {lam}")
    if M is not None:
        require(np.isfinite(M) and M > 0, f"M (the omega bandwidth) must be > 0, got {M}")
    if n_max is not None:
        require(int(n_max) == n_max and n_max >= 1, f"n_max must be an integer >= 1, got {n_max}")


def kinetic_rates(beta: float, n_max: int = 20) -> np.ndarray:
    """a_n = n^2 I_n(beta), n = 1..n_max: the growth rates of the Fourier modes about the uniform
    state under the kinetic paper's convention (USA content, V = beta I, row-normalised positions)."""
    from scipy.special import iv

    _check_kinetic(beta=beta, n_max=n_max)
    n = np.arange(1, int(n_max) + 1)
    return n**2 * iv(n, beta)


def kinetic_weights(M: float = 8.0, n_max: int = 20) -> np.ndarray:
    """omega_{n,M} = exp(-pi^2 n^2 / (2 M^2)), n = 1..n_max (M: the bandwidth, not a cell count)."""
    _check_kinetic(M=M, n_max=n_max)
    n = np.arange(1, int(n_max) + 1)
    return np.exp(-np.pi**2 * n**2 / (2.0 * M**2))


def kinetic_psi(c, y):
    r"""psi_c(y) = sum_k c^{k+1} y^k / (k! (k+1)!) = sqrt(c / y) I_1(2 sqrt(c y)) (psi_c(0) = c)."""
    from scipy.special import ive

    c, y = np.broadcast_arrays(np.asarray(c, dtype=float), np.asarray(y, dtype=float))
    z = 2.0 * np.sqrt(c * y)
    safe = np.where(z > 0, z, 1.0)
    # sqrt(c/y) I_1(z) = 2 c I_1(z) / z, and I_1(z) = ive(1, z) e^z
    val = 2.0 * c * ive(1, safe) * np.exp(safe) / safe
    return np.where(z > 0, val, c)


def kinetic_green(s, t, a, lam: float):
    r"""g_a(t; s) = [lam e^{lam s} / (e^lam - 1)] psi_{a t}(Y_lam(s)),
    Y_lam(s) = log((e^lam - 1) / (e^{lam s} - 1)):

    the off-diagonal part (the identity, i.e. the recency delta at s = 1, is apart) of the last row
    of exp(t a C~) with C~ the continuum strictly causal, row-normalised ALiBi average
    (C~ f)(s) = int_0^s lam e^{lam s'} / (e^{lam s} - 1) f(s') ds', as a density over the source
    position s in (0, 1). lam -> 0 is the limit (prefactor 1, Y = -log s), through expm1."""
    _check_kinetic(lam=lam)
    s = np.asarray(s, dtype=float)
    require(np.all((s > 0) & (s <= 1)), "s must lie in (0, 1]")
    if lam > 0:
        pref = lam * np.exp(lam * s) / np.expm1(lam)
        y = np.log(np.expm1(lam) / np.expm1(lam * s))
    else:
        pref, y = np.ones_like(s), -np.log(s)
    return pref * kinetic_psi(np.asarray(a, dtype=float) * np.asarray(t, dtype=float), y)


def kinetic_profile(s, t, beta: float, lam: float = 1.0, M: float = 8.0, n_max: int = 20):
    r"""The kinetic paper's retrieval profile of the last token, S_t(s) = sum_{n=1}^{n_max}
    omega_{n,M} g_{a_n}(t; s) with a_n = n^2 I_n(beta) (:func:`kinetic_rates`, :func:`kinetic_weights`,
    :func:`kinetic_green`). ``s`` and ``t`` broadcast. Positions: s in (0, 1) is the source token's
    relative position; N discrete tokens j = 0..N-1 map to s = (j + 1/2)/N (cell centres) or
    j/(N - 1), which differ at O(1/N)."""
    a = kinetic_rates(beta, n_max)
    w = kinetic_weights(M, n_max)
    s, t = np.broadcast_arrays(np.asarray(s, dtype=float), np.asarray(t, dtype=float))
    return sum(w[i] * kinetic_green(s, t, a[i], lam) for i in range(a.shape[0]))


def kinetic_tcrit(beta: float, lam: float = 1.0, M: float = 8.0, n_max: int = 20) -> float:
    r"""t_crit = 2 (1 - e^{-lam}) sum_n omega_n a_n / sum_n omega_n a_n^2: the time at which the
    right-end slope dS_t/ds(1) changes sign from + to - (the END of the U-shaped, primacy +
    recency regime; primacy exists for every t > 0).

    Derivation: near s = 1, Y_lam(s) ~ P (1 - s) and the prefactor ~ P (1 - lam (1 - s)) with
    P = lam e^lam / (e^lam - 1); psi_c(y) = c + c^2 y / 2 + O(y^2), so
    dS_t/ds(1) = -P sum_n omega_n (P a_n^2 t^2 / 2 - lam a_n t), zero at the t above. lam = 0 gives
    t_crit = 0 (no recency rise without a decay)."""
    _check_kinetic(beta=beta, lam=lam, M=M, n_max=n_max)
    require(beta > 0, f"beta must be > 0 for t_crit (no growth at beta = 0), got {beta}")
    a = kinetic_rates(beta, n_max)
    w = kinetic_weights(M, n_max)
    return float(-2.0 * np.expm1(-lam) * np.sum(w * a) / np.sum(w * a**2))


def kinetic_propagator_profile(t: float, beta: float, lam: float, n_s: int, M: float = 8.0, n_max: int = 20, *,
                               strict: bool = True) -> np.ndarray:
    r"""The discrete counterpart of :func:`kinetic_profile` on S cell centres s_k = (k + 1/2)/S:
    S sum_n omega_n [exp(t a_n C~) - I]_{S-1, k}, with C~ the row-normalised (strict by default)
    causal ALiBi coupling of :func:`causal_coupling` (the kinetic paper's model). Converges to
    S_t(s_k) at O(1/S)."""
    from scipy.sparse.linalg import expm_multiply

    a = kinetic_rates(beta, n_max)
    w = kinetic_weights(M, n_max)
    ct = causal_coupling(n_s, lam, strict=strict, normalized=True).T
    last = np.zeros(n_s)
    last[-1] = 1.0
    prof = np.zeros(n_s)
    for an, wn in zip(a, w):
        if wn * an * t < 1e-300:
            continue
        row = expm_multiply((t * an) * ct, last)  # the last row of exp(t a_n C~)
        row[-1] -= 1.0
        prof += wn * row
    return n_s * prof


def right_slope_crossing(ts, slope_fn, *, xtol: float = 1e-10) -> float:
    """First t in ``ts`` bracket where ``slope_fn(t)`` changes sign from + to - (brentq inside the
    bracket); ``nan`` if it never does."""
    from scipy.optimize import brentq

    ts = np.asarray(ts, dtype=float)
    vals = np.array([slope_fn(t) for t in ts])
    for i in range(len(ts) - 1):
        if vals[i] > 0 and vals[i + 1] <= 0:
            return float(brentq(slope_fn, ts[i], ts[i + 1], xtol=xtol))
    return float("nan")


def kinetic_propagator_tcrit(beta: float, lam: float, n_s: int, M: float = 8.0, n_max: int = 20, *,
                             strict: bool = True) -> float:
    """t_crit of the discrete propagator at S rows: where the right-end slope of
    :func:`kinetic_propagator_profile`, the difference of its last two off-diagonal entries
    (k = S-2 and S-3, the last entry being the target itself), turns negative."""
    tc = kinetic_tcrit(beta, lam, M, n_max)

    def slope(t):
        p = kinetic_propagator_profile(t, beta, lam, n_s, M, n_max, strict=strict)
        return p[-2] - p[-3]

    return right_slope_crossing(np.linspace(0.05, 4.0, 40) * tc, slope)


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
