r"""Linear growth rates about the uniform state: Fourier modes on the circle S^1, spherical
harmonics on S^2 (with the kinetic paper's convention beside ours), and the mode propagator of a
causal coupling between positions."""

from __future__ import annotations

import numpy as np

from .._errors import check_form, require
from ._checks import _check_kinetic


def circle_growth_rate(n: int, beta: float, a: float = 1.0, form: str = "SA") -> float:
    r"""Growth rate of Fourier mode n of a small perturbation of the uniform density on S^1
    (mean-field SA/USA with Q = K = I, V = a I + b J; b only adds a drift, no growth).

    Derivation (see meanfield.pde.circle for the velocity $u = N/D$): with $\rho = \rho_0 + \varepsilon e^{i n \theta}$,
    $\rho_0 = 1/(2\pi)$, the kernels' Fourier coefficients are $K_n = 2\pi I_n(\beta)$ and
    $g_n = 2\pi (a (i n/\beta) I_n(\beta) + b I_n'(\beta))$; linearising $\partial_t \rho + \partial_\theta(\rho u) = 0$ gives
    $\lambda_n = -i n u_0 - i n \rho_0 (g_n / D_0 - N_0 K_n / D_0^2)$ whose real part is

    $$
    r_n = \frac{a\, n^2 I_n(\beta)}{\beta\, I_0(\beta)} \ \text{(SA)}, \qquad
    r_n = \frac{a\, n^2 I_n(\beta)}{\beta} \ \text{(USA)} .
    $$
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

    $$
    r_\ell = \frac{a\, \ell(\ell+1)\, i_\ell(\beta)}{\beta\, i_0(\beta)} \ \text{(SA)}, \qquad
    r_\ell = \frac{a\, \ell(\ell+1)\, i_\ell(\beta)}{\beta} \ \text{(USA)},
    $$

    the analogues of the circle's a n^2 I_n(beta) / (beta I_0(beta)). The kinetic paper's
    convention (USA, V = beta I) gives [`sphere_kinetic_rate`][meanfield.theory.sphere_kinetic_rate], l(l+1) i_l(beta).
    """
    from scipy.special import spherical_in

    rate = a * ell * (ell + 1) * spherical_in(int(ell), beta) / beta
    return float(rate / spherical_in(0, beta)) if form == "SA" else float(rate)


def sphere_kinetic_rate(ell: int, beta: float) -> float:
    r"""$a_\ell = \ell(\ell+1)\, i_\ell(\beta)$: [`sphere_growth_rate`][meanfield.theory.sphere_growth_rate] in the kinetic paper's
    convention (USA, $V = \beta I$)."""
    return sphere_growth_rate(ell, beta, a=beta, form="USA")


def causal_coupling(
    n_s: int,
    lam: float,
    self_weight: float = 0.5,
    *,
    strict: bool = False,
    normalized: bool = False,
) -> np.ndarray:
    r"""Dense (S, S) causal ALiBi coupling $c_{kj} = w e^{-\lambda (s_k - s_j)}$ ($j < k$), ``self_weight`` $\cdot\, w$
    ($j = k$; 0 when ``strict``), 0 ($j > k$), on the cell centres $s_k = (k + 1/2)/S$ with $w = 1/S$:
    the quadrature of $\int_0^s e^{-\lambda (s - s')} f(s')\, ds'$ that ``meanfield.pde.KineticMeanField``
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


def causal_mode_propagator(
    t: float,
    n: int,
    beta: float,
    lam: float,
    n_s: int,
    *,
    form: str = "SA",
    value: float = 1.0,
    normalized: bool | None = None,
    strict: bool = False,
    self_weight: float = 0.5,
) -> np.ndarray:
    r"""exp(t lambda_n C~): the linear evolution of the Fourier mode n of a small perturbation of
    the uniform state of the causal kinetic equation, f_n(t, .) = P f_n(0, .).

    Derivation: at f = 1/2pi the SA denominator is D_0(s) = I_0(beta) sum_j c(s, s_j) and the
    numerator is linear in the perturbation, so the circle computation of
    [`circle_growth_rate`][meanfield.theory.circle_growth_rate] goes through with the perturbation replaced by its causal average
    C~ f_n. Content and position normalisation are separate choices:

    * ``form`` (content): "SA" gives lambda_n = value n^2 I_n / (beta I_0) and always the
      row-normalised C~ = C / (row sums) (the softmax divides the positional weights too);
      "USA" gives lambda_n = value n^2 I_n / beta with C~ = C, or C / (row sums) when
      ``normalized`` (positional weights normalised per row, [`meanfield.PositionNormalized`][meanfield.kernel.PositionNormalized]).
    * ``value``: V = value I (the kinetic paper uses V = beta I, so its rate is n^2 I_n(beta)).
    * ``strict``: no self weight (a token does not see itself; the first row is frozen).

    The kinetic paper's model (Duerinckx, Geshkovski & Rossi 2026) is
    ``form="USA", value=beta, normalized=True, strict=True``.
    """
    from scipy.linalg import expm

    _check_kinetic(beta=beta, lam=lam)
    check_form(form)
    require(
        not (form == "SA" and normalized is False),
        "normalized=False is not available for SA (the softmax normalises the positions)",
    )
    norm = True if form == "SA" else bool(normalized)
    c = causal_coupling(n_s, lam, self_weight, strict=strict, normalized=norm)
    return expm(t * circle_growth_rate(n, beta, a=value, form=form) * c)
