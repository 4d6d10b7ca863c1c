r"""Closed forms of the kinetic lost-in-the-middle paper (Duerinckx, Geshkovski & Rossi 2026):
rates, weights, the Green function, the retrieval profile and t_crit, with the discrete
propagator beside them."""

from __future__ import annotations

import numpy as np

from .._errors import require
from ._checks import _check_kinetic
from .rates import causal_coupling


def kinetic_rates(beta: float, n_max: int = 20) -> np.ndarray:
    r"""$a_n = n^2 I_n(\beta)$, $n = 1, \dots, n_{\max}$: the growth rates of the Fourier modes about the uniform
    state under the kinetic paper's convention (USA content, V = beta I, row-normalised positions)."""
    from scipy.special import iv

    _check_kinetic(beta=beta, n_max=n_max)
    n = np.arange(1, int(n_max) + 1)
    return n**2 * iv(n, beta)


def kinetic_weights(M: float = 8.0, n_max: int = 20) -> np.ndarray:
    r"""$\omega_{n,M} = e^{-\pi^2 n^2 / (2 M^2)}$, $n = 1, \dots, n_{\max}$ ($M$: the bandwidth, not a cell count)."""
    _check_kinetic(M=M, n_max=n_max)
    n = np.arange(1, int(n_max) + 1)
    return np.exp(-(np.pi**2) * n**2 / (2.0 * M**2))


def kinetic_psi(c, y):
    r"""$\psi_c(y) = \sum_k \frac{c^{k+1} y^k}{k!\,(k+1)!} = \sqrt{c/y}\, I_1(2\sqrt{c y})$ ($\psi_c(0) = c$)."""
    from scipy.special import ive

    c, y = np.broadcast_arrays(np.asarray(c, dtype=float), np.asarray(y, dtype=float))
    z = 2.0 * np.sqrt(c * y)
    safe = np.where(z > 0, z, 1.0)
    # sqrt(c/y) I_1(z) = 2 c I_1(z) / z, and I_1(z) = ive(1, z) e^z
    val = 2.0 * c * ive(1, safe) * np.exp(safe) / safe
    return np.where(z > 0, val, c)


def kinetic_green(s, t, a, lam: float):
    r"""The Green function of the paper's model,

    $$
    g_a(t; s) = \frac{\lambda e^{\lambda s}}{e^\lambda - 1}\, \psi_{a t}\big(Y_\lambda(s)\big), \qquad
    Y_\lambda(s) = \log \frac{e^\lambda - 1}{e^{\lambda s} - 1} :
    $$

    the off-diagonal part (the identity, i.e. the recency delta at $s = 1$, is apart) of the last row
    of $\exp(t a \tilde C)$ with $\tilde C$ the continuum strictly causal, row-normalised ALiBi average
    $(\tilde C f)(s) = \int_0^s \frac{\lambda e^{\lambda s'}}{e^{\lambda s} - 1} f(s')\, ds'$, as a density over the source
    position $s \in (0, 1)$. $\lambda \to 0$ is the limit (prefactor 1, $Y = -\log s$), through expm1."""
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
    r"""The kinetic paper's retrieval profile of the last token,
    $S_t(s) = \sum_{n=1}^{n_{\max}} \omega_{n,M}\, g_{a_n}(t; s)$ with $a_n = n^2 I_n(\beta)$ ([`kinetic_rates`][meanfield.theory.kinetic_rates], [`kinetic_weights`][meanfield.theory.kinetic_weights],
    [`kinetic_green`][meanfield.theory.kinetic_green]). ``s`` and ``t`` broadcast. Positions: s in (0, 1) is the source token's
    relative position; N discrete tokens j = 0..N-1 map to s = (j + 1/2)/N (cell centres) or
    j/(N - 1), which differ at O(1/N)."""
    a = kinetic_rates(beta, n_max)
    w = kinetic_weights(M, n_max)
    s, t = np.broadcast_arrays(np.asarray(s, dtype=float), np.asarray(t, dtype=float))
    return sum(w[i] * kinetic_green(s, t, a[i], lam) for i in range(a.shape[0]))


def kinetic_tcrit(beta: float, lam: float = 1.0, M: float = 8.0, n_max: int = 20) -> float:
    r"""The end of the U-shaped regime,

    $$
    t_{\mathrm{crit}} = 2 (1 - e^{-\lambda}) \frac{\sum_n \omega_n a_n}{\sum_n \omega_n a_n^2} :
    $$

    the time at which the right-end slope $\partial_s S_t(1)$ changes sign from + to − (the END of the
    U-shaped, primacy + recency regime; primacy exists for every $t > 0$).

    Derivation: near s = 1, Y_lam(s) ~ P (1 - s) and the prefactor ~ P (1 - lam (1 - s)) with
    P = lam e^lam / (e^lam - 1); psi_c(y) = c + c^2 y / 2 + O(y^2), so
    dS_t/ds(1) = -P sum_n omega_n (P a_n^2 t^2 / 2 - lam a_n t), zero at the t above. lam = 0 gives
    t_crit = 0 (no recency rise without a decay)."""
    _check_kinetic(beta=beta, lam=lam, M=M, n_max=n_max)
    require(beta > 0, f"beta must be > 0 for t_crit (no growth at beta = 0), got {beta}")
    a = kinetic_rates(beta, n_max)
    w = kinetic_weights(M, n_max)
    return float(-2.0 * np.expm1(-lam) * np.sum(w * a) / np.sum(w * a**2))


def kinetic_propagator_profile(
    t: float,
    beta: float,
    lam: float,
    n_s: int,
    M: float = 8.0,
    n_max: int = 20,
    *,
    strict: bool = True,
) -> np.ndarray:
    r"""The discrete counterpart of [`kinetic_profile`][meanfield.theory.kinetic_profile] on $S$ cell centres $s_k = (k + 1/2)/S$:
    $S \sum_n \omega_n [\exp(t a_n \tilde C) - I]_{S-1, k}$, with $\tilde C$ the row-normalised (strict by default)
    causal ALiBi coupling of [`causal_coupling`][meanfield.theory.causal_coupling] (the kinetic paper's model). Converges to
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


def kinetic_propagator_tcrit(
    beta: float, lam: float, n_s: int, M: float = 8.0, n_max: int = 20, *, strict: bool = True
) -> float:
    """t_crit of the discrete propagator at S rows: where the right-end slope of
    [`kinetic_propagator_profile`][meanfield.theory.kinetic_propagator_profile], the difference of its last two off-diagonal entries
    (k = S-2 and S-3, the last entry being the target itself), turns negative."""
    tc = kinetic_tcrit(beta, lam, M, n_max)

    def slope(t):
        p = kinetic_propagator_profile(t, beta, lam, n_s, M, n_max, strict=strict)
        return p[-2] - p[-3]

    return right_slope_crossing(np.linspace(0.05, 4.0, 40) * tc, slope)
