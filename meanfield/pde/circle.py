r"""Mean-field dynamics of self-attention on the circle S^1, by FFT and finite volumes.

Tokens x = (cos t, sin t) with Q = K = I and V = a I + b J (J the rotation by pi/2, the general
2x2 matrix commuting with rotations). A token at angle t moves with the tangential velocity

    u(t) = N(t) / D(t)  (SA)      or      u(t) = N(t)  (USA),
    N = g * rho,  g(p) = e^{beta cos p} (-a sin p + b cos p),     D = K * rho,  K(p) = e^{beta cos p},

((f * rho)(t) = int f(t - t') rho(t') dt'), since ⟨e_t, V x(t')⟩ = a sin(t' - t) + b cos(t' - t).
The density of unit mass obeys the continuity equation d_t rho + d_t(rho u) = 0.

Discretisation: M equal cells; rho is stored as cell averages; u is evaluated at the cell faces
by circular convolutions (FFT, O(M log M)); the face flux is upwind with a minmod-limited
MUSCL reconstruction (second order in smooth monotone regions), so the scheme is conservative
(the update is a difference of fluxes: total mass is constant to round-off) and, with an SSP
time stepper (Heun = SSPRK2, Euler) under the CFL condition max|u| dt <= h/2, positivity
preserving. Time stepping through diffrax.

Linear theory (``meanfield.theory.circle_growth_rate``): the Fourier mode n of a small
perturbation of the uniform density grows at Re lambda_n = a n^2 I_n(beta) / (beta I_0(beta))
(SA) or a n^2 I_n(beta) / beta (USA).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._errors import check_form, check_param, param_fault
from .._types import Array, ArrayLike, Density, Float, PRNGKeyArray, Real, Times
from ._fv import AbstractFiniteVolume, fourier_heat, periodic_conv, sa_finish
from ._integrate import ACCURACY, CFL, DensitySolution, cell_count


class CircleMeanField(AbstractFiniteVolume):
    r"""Mean-field SA/USA dynamics on S^1 (see module docstring).

    With $k(p) = e^{\beta\cos p}$, $g(p) = k(p)(-a\sin p + b\cos p)$ and $*$ the convolution on the circle,

    $$
    \partial_t \rho + \partial_\theta(\rho u) = 0, \qquad
    u = \frac{g * \rho}{k * \rho} \ \text{(SA)}, \qquad u = g * \rho \ \text{(USA)},
    $$

    and about the uniform state mode $n$ grows at $a n^2 I_n(\beta)/(\beta I_0(\beta))$ (SA) or
    $a n^2 I_n(\beta)/\beta$ (USA).

    Args:
        m: number of cells M.
        beta: inverse temperature.
        a: value scale in V = a I + b J (a = 1, b = 0 is V = I).
        b: value rotation in V = a I + b J (J the rotation by pi/2).
        form: "SA" or "USA".

    Example:
        ```python
        pde = CircleMeanField(256, beta=2.0)
        rho0 = pde.uniform() * (1 + 0.01 * jnp.cos(pde.theta))
        sol = pde.solve(rho0, jnp.linspace(0, 5, 6))
        ```
    """

    m: int = eqx.field(static=True)
    beta: Array
    a: Array
    b: Array
    form: str = eqx.field(static=True)
    sigma: Array

    def __init__(self, m: int, beta=1.0, a=1.0, b=0.0, form: str = "SA", *, sigma=0.0):
        self.m = cell_count("m", m)
        check_form(form)
        for name, value in (
            ("beta", beta),
            ("a", a),
            ("b", b),
        ):  # any sign: beta < 0 is a valid model
            check_param(name, value)
        self.beta, self.a, self.b = (jnp.asarray(v, dtype=float) for v in (beta, a, b))
        self.form = form
        check_param("sigma", sigma, lo=0)
        self.sigma = jnp.asarray(sigma, dtype=float)

    def parameter_fault(self) -> Array:
        return (
            param_fault(self.beta)
            | param_fault(self.a)
            | param_fault(self.b)
            | param_fault(self.sigma, lo=0)
        )

    def heat(self, y, h) -> Array:
        return fourier_heat(y, h, self.sigma, self.m)

    def uniform(self, dtype=float) -> Array:
        return jnp.full((self.m,), 1.0 / (2 * np.pi), dtype)

    def usa_gain(self) -> Array:
        """One row: the USA linear rates are not multiplied."""
        return jnp.asarray(1.0)

    def face_velocity(self, rho) -> Array:
        """u at the faces (i + 1) h, i = 0..M-1, by FFT convolution with the cell averages."""
        k_hat, g_hat = self.kernel_hats(rho.dtype)
        num = periodic_conv(g_hat, rho, self.h, self.m)
        if self.form == "USA":
            return num
        return sa_finish(num, periodic_conv(k_hat, rho, self.h, self.m))

    def solve(
        self,
        rho0: Real[ArrayLike, " m"],
        ts: Times,
        *,
        dt=None,
        cfl: float = CFL,
        accuracy: float = ACCURACY,
        solver=None,
        max_steps: int = 1_000_000,
        throw: bool = True,
    ) -> DensitySolution:
        """Integrate from ts[0] to ts[-1], saving at ``ts``.

        ``dt=None`` (default): the step adapts throughout the solve, re-picked before every step
        from the current state as dt = min(cfl h / max|u|, accuracy / r) (r the fastest linear
        rate or the largest velocity gradient; SSP Heun by default; see `meanfield.pde._integrate`),
        and clipped to land on every save time, so the answer does not depend on the save grid.
        The CFL number must be <= 1/2 for positivity; ``accuracy`` = 0.05 keeps the relative
        error of linear growth rates near 4e-4. A fixed ``dt`` steps uniformly (and makes the
        solve smooth in its inputs). Pass ``solver=diffrax.Tsit5()`` to use another diffrax
        solver (the scheme then does not guarantee positivity; a negative state still fails).

        ``throw=True``: a failed solve (non-finite density; a negative one beyond round-off under
        any solver) raises [`meanfield.SolverError`][meanfield.SolverError] naming the time reached and the
        remedy; ``throw=False`` returns it as ``result`` (saves from the failure on are NaN).
        """
        ts, rho, result, stats = self._integrate(
            rho0,
            ts,
            (self.m,),
            "rho0",
            dt=dt,
            cfl=cfl,
            accuracy=accuracy,
            solver=solver,
            max_steps=max_steps,
            throw=throw,
        )
        return DensitySolution(
            ts=ts, rho=rho, grid={"theta": self.theta}, result=result, stats=stats
        )


def particles_to_density(
    theta: Real[ArrayLike, " n"],
    m: int,
    bandwidth=0.1,
    weights: Real[ArrayLike, " n"] | None = None,
) -> Density:
    """Cell averages on M cells of a von Mises kernel density estimate of angles ``theta``:
    rho(t) = sum_i w_i exp(kappa cos(t - theta_i)) / (2 pi I_0(kappa)), kappa = 1 / bandwidth^2."""
    theta = jnp.asarray(theta)
    w = (
        jnp.full(theta.shape, 1.0 / theta.shape[0])
        if weights is None
        else jnp.asarray(weights) / jnp.sum(weights)
    )
    kappa = 1.0 / bandwidth**2
    centres = (jnp.arange(m) + 0.5) * 2 * np.pi / m
    # exp(kappa (cos - 1)) / (2 pi I0e(kappa)) avoids overflow for large kappa
    k = jnp.exp(kappa * (jnp.cos(centres[:, None] - theta[None, :]) - 1.0)) / (
        2 * np.pi * jax.scipy.special.i0e(kappa)
    )
    return k @ w


def density_to_particles(
    key: PRNGKeyArray, rho: Real[ArrayLike, " m"], n: int
) -> Float[Array, " {n}"]:
    """N angles sampled from the piecewise-constant density ``rho`` (cell averages on M cells)."""
    m = rho.shape[0]
    h = 2 * np.pi / m
    cells = jax.random.choice(key, m, (n,), p=rho / jnp.sum(rho))
    return (cells + jax.random.uniform(jax.random.fold_in(key, 1), (n,))) * h


def density_w1(
    theta_particles: Real[ArrayLike, " n"], rho: Real[ArrayLike, " m"]
) -> Float[Array, ""]:
    """Exact circle W1 between the empirical measure of the angles and the piecewise-constant
    density (CDFs on the merged breakpoints; the density's CDF is linear inside each cell)."""
    m = rho.shape[0]
    h = 2 * np.pi / m
    t = jnp.sort(jnp.mod(jnp.asarray(theta_particles), 2 * np.pi))
    n = t.shape[0]
    mass = rho * h / jnp.sum(rho * h)
    edges = jnp.arange(m + 1) * h
    grid = jnp.sort(jnp.concatenate([edges, t]))
    # F (empirical) is piecewise constant, G (density) piecewise linear on this grid
    fa = jnp.searchsorted(t, grid[:-1], side="right") / n
    cum = jnp.concatenate([jnp.zeros(1), jnp.cumsum(mass)])

    def G(x):
        i = jnp.clip(jnp.floor(x / h).astype(int), 0, m - 1)
        return cum[i] + mass[i] * (x - i * h) / h

    g0, g1 = G(grid[:-1]), G(grid[1:])
    dx = jnp.diff(grid)
    # W1 = min_c int |F - G - c|: the minimiser balances the length where F - G > c against the
    # length where F - G < c; F - G is linear on each piece, so that length is exact and monotone
    # in c, and bisection finds c to machine precision.
    d0, d1 = fa - g0, fa - g1

    def below(c):
        lo, hi = jnp.minimum(d0, d1), jnp.maximum(d0, d1)
        frac = jnp.where(
            hi > lo,
            jnp.clip((c - lo) / jnp.where(hi > lo, hi - lo, 1.0), 0.0, 1.0),
            (c >= lo) * 1.0,
        )
        return jnp.sum(frac * dx)

    def bisect(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        go_up = below(mid) < 0.5 * jnp.sum(dx)
        return jnp.where(go_up, mid, lo), jnp.where(go_up, hi, mid)

    lo, hi = jax.lax.fori_loop(
        0, 100, bisect, (jnp.minimum(d0.min(), d1.min()), jnp.maximum(d0.max(), d1.max()))
    )
    c = 0.5 * (lo + hi)

    def piece(lo, hi, length):  # exact int_0^length |linear from lo to hi| dx
        same = lo * hi >= 0
        both = 0.5 * length * jnp.abs(lo + hi)
        tot = jnp.where(
            jnp.abs(hi - lo) > 0,
            0.5 * length * (lo**2 + hi**2) / jnp.maximum(jnp.abs(hi - lo), 1e-300),
            0.0,
        )
        return jnp.where(same, both, tot)

    return jnp.sum(piece(d0 - c, d1 - c, dx))
