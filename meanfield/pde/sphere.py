r"""Mean-field dynamics of self-attention on the sphere S^2: a pseudo-spectral solver.

Model (Q = K = I, V = a I). A density rho on S^2 with int rho dsigma = 1 (dsigma the surface
measure) moves tokens with the velocity

    G(x) = int e^{beta <x, y>} rho(y) dsigma(y),
    SA:  v = (a / beta) grad_S log G,        USA:  v = (a / beta) grad_S G,

since grad_x e^{beta <x, y>} = beta y e^{beta <x, y>} and P_x y is its tangential part: the SA
field P_x int y e^{beta<x,y>} rho / int e^{beta<x,y>} rho of the particle engine, and the USA field
without the normaliser. The density obeys d_t rho + div_S(rho v) = 0.

The kernel is zonal, so by Funk-Hecke it is diagonal in spherical harmonics:
int e^{beta <x, y>} Y_lm(y) dsigma(y) = 4 pi i_l(beta) Y_lm(x), i_l the modified spherical Bessel
function; G_lm = 4 pi i_l(beta) rho_lm. About the uniform state rho_0 = 1/(4 pi) a degree-l
perturbation grows at a l(l+1) i_l(beta) / (beta i_0(beta)) (SA) or a l(l+1) i_l(beta) / beta (USA)
(:func:`meanfield.theory.sphere_growth_rate`).

Scheme (pseudo-spectral Galerkin). With the potential phi = (a / beta) log G (SA) or
(a / beta) G (USA), v = grad phi and

    div(rho grad phi) = 1/2 [Lap(rho phi) - phi Lap rho + rho Lap phi],

which needs only scalar transforms (the Laplacian is diagonal: -l(l+1)). rho is band-limited at
L (its state: values on the McEwen-Wiaux sampling grid of band limit L); phi is computed on the
grid of band limit 2L and projected back to degrees < L; every product of two band-L fields has
degree < 2L and is therefore transformed exactly on the 2L grid (no aliasing), and the right-hand
side is projected to degrees < L. Its l = 0 coefficient (the mass change) is zero in the continuum
and set exactly to zero, so mass is conserved to round-off. Transforms: ``s2fft`` (JAX, jit and
grad; imported lazily, since it logs an x64 warning at import).

Why spectral: the growth rates are exact for every resolved degree (the discrete linear operator
about the uniform state is the continuum one for l < L), which finite volumes on a latitude-longitude
grid (tiny cells at the poles) or semi-Lagrangian interpolation would not give. Positivity is not
built in; it is checked instead: a band-limited density that clusters beyond its band limit shows
first as energy in its top degrees, then as Gibbs undershoots. A state whose spectral tail (degrees
>= 3L/4) holds more than ``tail`` of its energy sum_l C_l, or whose minimum is below
-NEG_TOL max, is reported as unresolved (a solver failure, as for the circle solvers: raised with
``throw=True``, a ``RESULTS.unresolved`` code with ``throw=False``), with the advice to raise L.

Time stepping: the shared integration layer of :mod:`meanfield.pde._fv` (``CFLController``: the
step re-picked before every step as min(cfl h / max|v|, accuracy / r), h = pi / L the resolution of
the band limit, r the fastest linear rate or max |Lap phi|), with Bogacki-Shampine 3(2) (``diffrax.Bosh3``) by
default: its stability region covers part of the imaginary axis, which the advection spectrum of
a spectral method touches and SSP Heun's does not, at three right-hand sides a step (FSAL).
"""

from __future__ import annotations

import functools

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._errors import require
from .._types import Array, PRNGKeyArray
from ._fv import ACCURACY, CFL, RESULTS, AbstractDensitySolver

NEG_TOL = 1e-6
"""A density below -NEG_TOL max(rho) is not resolved by its band limit."""
TAIL = 1e-8
"""Default threshold of the relative spectral tail energy (degrees >= 3L/4) of an unresolved state."""


@functools.cache
def _s2fft():
    import s2fft  # noqa: PLC0415 (heavy, and logs an x64 warning at import: loaded on first use)

    return s2fft


def sph_in(lmax: int, beta) -> Array:
    """Modified spherical Bessel functions i_l(beta), l = 0..lmax, in JAX (beta may be traced):
    i_0 = sinh(beta)/beta and the ratios r_l = i_l / i_{l-1} = 1 / ((2l+1)/beta + r_{l+1}) by
    backward recurrence from r = 0 at l = lmax + 40 (stable; no overflow)."""
    beta = jnp.asarray(beta, dtype=float)
    safe = jnp.maximum(beta, 1e-30)
    top = int(lmax) + 40

    def body(k, carry):
        r, out = carry
        ell = top - k
        r = 1.0 / ((2 * ell + 1) / safe + r)
        return r, jnp.where(ell <= lmax, out.at[jnp.clip(ell, 0, lmax)].set(r), out)

    _, r = jax.lax.fori_loop(0, top, body, (jnp.zeros((), safe.dtype), jnp.ones((int(lmax) + 1,), safe.dtype)))
    log_i0 = jnp.where(beta > 1e-4, beta + jnp.log1p(-jnp.exp(-2 * safe)) - jnp.log(2 * safe), beta**2 / 6)
    log_i = log_i0 + jnp.concatenate([jnp.zeros((1,), r.dtype), jnp.cumsum(jnp.log(r[1:]))])
    return jnp.exp(log_i)


class SphereSolution(eqx.Module):
    """Saved densities: ``ts`` (T,), ``rho`` (T, L, 2L-1) on the MW grid, ``theta`` (L,) colatitudes,
    ``phi`` (2L-1,) longitudes; ``result``, ``stats`` as in :class:`meanfield.pde.DensitySolution`."""

    ts: Array
    rho: Array
    theta: Array
    phi: Array
    result: RESULTS | None = None
    stats: dict = eqx.field(default_factory=dict)


class SphereMeanField(AbstractDensitySolver):
    """Mean-field SA/USA dynamics on S^2 (module docstring).

    Args:
        L: band limit (degrees 0..L-1); the state is the density on the McEwen-Wiaux grid of L
            colatitudes x (2L - 1) longitudes.
        beta: inverse temperature.
        a: value scale, V = a I (the kinetic paper's convention is USA with a = beta).
        form: "SA" or "USA".
        tail: relative spectral tail energy beyond which a state counts as unresolved.

    Example:
        pde = SphereMeanField(16, beta=4.0)
        sol = pde.solve(pde.perturbed(3, 0, 0.05), jnp.linspace(0, 5, 11))
    """

    L: int = eqx.field(static=True)
    beta: Array
    a: Array
    form: str = eqx.field(static=True)
    tail: float = eqx.field(static=True)

    def __init__(self, L: int, beta=1.0, a=1.0, form: str = "SA", *, tail: float = TAIL):
        require(int(L) >= 4, f"L must be >= 4, got {L}")
        require(form in ("SA", "USA"), f"form must be 'SA' or 'USA', got {form!r}")
        require(0 < float(tail) < 1, f"tail must be in (0, 1), got {tail}")
        self.L = int(L)
        self.beta, self.a = jnp.asarray(beta, dtype=float), jnp.asarray(a, dtype=float)
        self.form = form
        self.tail = float(tail)
        if isinstance(beta, (int, float)):
            require(np.isfinite(beta) and beta > 0, f"beta must be finite and > 0, got {beta}")

    # ------------------------------------------------------------------ grid and transforms
    @property
    def h(self) -> float:
        """The resolution of the band limit, pi / L (the CFL length)."""
        return float(np.pi / self.L)

    @property
    def theta(self) -> Array:
        return jnp.asarray(_s2fft().sampling.s2_samples.thetas(self.L, sampling="mw"))

    @property
    def phi(self) -> Array:
        return jnp.asarray(_s2fft().sampling.s2_samples.phis_equiang(self.L, sampling="mw"))

    def points(self) -> Array:
        """Unit vectors of the grid, shape (L, 2L-1, 3)."""
        return _grid_points(self.L)

    def forward(self, f, band=None):
        """Spherical-harmonic coefficients (band, 2 band - 1) of the real grid field ``f``."""
        band = self.L if band is None else band
        return _s2fft().forward(f, band, method="jax", reality=True, precomps=_precomps(band, True))

    def inverse(self, flm, band=None):
        band = self.L if band is None else band
        return jnp.real(_s2fft().inverse(flm, band, method="jax", reality=True, precomps=_precomps(band, False)))

    def _lift(self, flm):
        """Coefficients of band L padded to band 2L."""
        L = self.L
        return jnp.zeros((2 * L, 4 * L - 1), flm.dtype).at[:L, L : 3 * L - 1].set(flm)

    def _cut(self, flm2):
        """Coefficients of band 2L truncated to band L."""
        L = self.L
        return flm2[:L, L : 3 * L - 1]

    def _lap(self, band):
        ell = jnp.arange(band, dtype=float)[:, None]
        return -ell * (ell + 1)

    # ------------------------------------------------------------------ the field
    def kernel_coefficients(self, dtype=float) -> Array:
        """4 pi i_l(beta), l < L (Funk-Hecke)."""
        return 4 * np.pi * sph_in(self.L - 1, self.beta).astype(dtype)

    def _potential(self, rho_lm):
        """(phi, Lap phi) on the 2L grid, phi projected to band L."""
        g = self.kernel_coefficients(rho_lm.real.dtype)
        G2 = self.inverse(self._lift(g[:, None] * rho_lm), 2 * self.L)
        if self.form == "SA":
            pot = self.a * jnp.log(jnp.maximum(G2, 1e-300)) / self.beta
        else:
            pot = self.a * G2 / self.beta
        phi_lm = self._cut(self.forward(pot, 2 * self.L))
        lap = self._lap(self.L)
        return self.inverse(self._lift(phi_lm), 2 * self.L), self.inverse(self._lift(lap * phi_lm), 2 * self.L)

    def rhs(self, t, rho, args=None) -> Array:
        """-div(rho grad phi) = -1/2 [Lap(rho phi) - phi Lap rho + rho Lap phi], dealiased on the 2L grid."""
        L = self.L
        rho_lm = self.forward(rho)
        phi2, lphi2 = self._potential(rho_lm)
        lap = self._lap(L)
        rho2 = self.inverse(self._lift(rho_lm), 2 * L)
        lrho2 = self.inverse(self._lift(lap * rho_lm), 2 * L)
        a_lm = self._cut(self.forward(rho2 * phi2, 2 * L))
        b_lm = self._cut(self.forward(rho2 * lphi2 - phi2 * lrho2, 2 * L))
        div = 0.5 * (lap * a_lm + b_lm)
        div = div.at[0, L - 1].set(0.0)  # the mass change: zero in the continuum, exactly zero here
        return -self.inverse(div)

    def speed_and_rate(self, rho):
        """(max |v|, max |Lap phi|) on the 2L grid: |grad phi|^2 = 1/2 Lap(phi^2) - phi Lap phi."""
        L = self.L
        phi2, lphi2 = self._potential(self.forward(rho))
        sq_lm = self.forward(phi2**2, 2 * L)
        lap2 = self._lap(2 * L)
        grad2 = 0.5 * self.inverse(lap2 * sq_lm, 2 * L) - phi2 * lphi2
        return jnp.sqrt(jnp.maximum(jnp.max(grad2), 0.0)), jnp.max(jnp.abs(lphi2))

    def linear_rate_bound(self, dtype=float) -> Array:
        """max_l of the linear rate about the uniform state (module docstring), l < L."""
        ell = jnp.arange(self.L, dtype=dtype)
        i = sph_in(self.L - 1, self.beta).astype(dtype)
        rates = self.a * ell * (ell + 1) * i / self.beta
        if self.form == "SA":
            rates = rates / i[0]
        return jnp.max(jnp.abs(rates))

    def _step_and_speed(self, rho, cfl, accuracy, rate_bound=None):
        speed, div = self.speed_and_rate(rho)
        r_lin = self.linear_rate_bound(rho.dtype) if rate_bound is None else rate_bound
        rate = jnp.maximum(r_lin, div)
        dt = jnp.minimum(cfl * self.h / jnp.maximum(speed, 1e-30), accuracy / jnp.maximum(rate, 1e-30))
        return dt, speed

    # ------------------------------------------------------------------ failures
    def tail_fraction(self, rho) -> Array:
        """Energy of the degrees >= 3L/4 over the whole energy sum_l C_l (the mean included, so a
        nearly uniform state has a negligible tail)."""
        spec = self.degree_spectrum(rho)
        top = int(np.ceil(3 * self.L / 4))
        return jnp.sum(spec[top:]) / jnp.maximum(jnp.sum(spec), 1e-300)

    def is_bad(self, y, positive: bool):
        finite = jnp.all(jnp.isfinite(y))
        neg = jnp.min(y) < -NEG_TOL * jnp.max(jnp.abs(y))
        return ~finite | neg | (self.tail_fraction(jnp.where(finite, y, 0.0)) > self.tail)

    def failure_code(self, y):
        return RESULTS.where(jnp.all(jnp.isfinite(y)), RESULTS.unresolved, RESULTS.nonfinite_density)

    def initial_tolerance(self, y0):
        return NEG_TOL * jnp.max(jnp.abs(y0))

    # ------------------------------------------------------------------ solve
    def solve(self, rho0, ts, *, dt=None, cfl: float = CFL, accuracy: float = ACCURACY, solver=None,
              max_steps: int = 100_000, throw: bool = True, adjoint=None) -> SphereSolution:
        """Integrate from ts[0] to ts[-1], saving at ``ts`` (rho0: (L, 2L-1) on the MW grid,
        band-limited: project with :meth:`project`). The step adapts as the solution evolves, by
        the rule of the circle solver (module docstring); Bosh3 by default. ``throw=True``: an
        unresolved or non-finite state raises :class:`meanfield.SolverError` naming the time and
        suggesting a larger L; ``throw=False`` returns the ``result`` code."""
        solver = diffrax.Bosh3() if solver is None else solver
        ts, rho, result, stats = self._integrate(rho0, ts, (self.L, 2 * self.L - 1), "rho0", dt=dt, cfl=cfl,
                                                 accuracy=accuracy, solver=solver, max_steps=max_steps, throw=throw,
                                                 adjoint=adjoint)
        return SphereSolution(ts=ts, rho=rho, theta=self.theta, phi=self.phi, result=result, stats=stats)

    # ------------------------------------------------------------------ states
    def project(self, rho) -> Array:
        """The band-L part of a grid field (forward then inverse transform)."""
        return self.inverse(self.forward(rho))

    def uniform(self) -> Array:
        return jnp.full((self.L, 2 * self.L - 1), 1.0 / (4 * np.pi))

    def harmonic(self, ell: int, m: int) -> Array:
        """A real spherical harmonic of degree ``ell`` and order |m| on the grid: Y_l0 for m = 0,
        Re-type for m > 0, Im-type for m < 0, scaled to max |Y| = 1."""
        L = self.L
        require(0 <= int(ell) < L and abs(int(m)) <= int(ell), f"need 0 <= ell < L = {L} and |m| <= ell, got ({ell}, {m})")
        ell, m = int(ell), int(m)
        flm = np.zeros((L, 2 * L - 1), complex)
        if m == 0:
            flm[ell, L - 1] = 1.0
        else:
            c = 1.0 if m > 0 else -1j
            flm[ell, L - 1 + abs(m)] = c
            flm[ell, L - 1 - abs(m)] = (-1) ** abs(m) * np.conj(c)
        y = self.inverse(jnp.asarray(flm))
        return y / jnp.max(jnp.abs(y))

    def perturbed(self, ell: int, m: int, eps) -> Array:
        """rho = (1 + eps Y) / (4 pi), Y the real harmonic of :meth:`harmonic` (max |Y| = 1)."""
        return (1.0 + eps * self.harmonic(ell, m)) / (4 * np.pi)

    def von_mises_fisher(self, kappa, mu=(0.0, 0.0, 1.0)) -> Array:
        """kappa e^{kappa <mu, x>} / (4 pi sinh kappa), projected to band L."""
        mu = jnp.asarray(mu, dtype=float)
        mu = mu / jnp.linalg.norm(mu)
        kappa = jnp.asarray(kappa, dtype=float)
        dens = kappa / (2 * np.pi * (-jnp.expm1(-2 * kappa))) * jnp.exp(kappa * (self.points() @ mu - 1.0))
        return self.project(dens)

    # ------------------------------------------------------------------ observables
    def mass(self, rho) -> Array:
        return jnp.sqrt(4 * np.pi) * jnp.real(self.forward(rho)[0, self.L - 1])

    def degree_spectrum(self, rho) -> Array:
        """C_l = sum_m |rho_lm|^2, l < L."""
        return jnp.sum(jnp.abs(self.forward(rho)) ** 2, axis=1)

    def first_moment(self, rho) -> Array:
        """int x rho(x) dsigma, shape (3,) (exact: degree-1 products on the 2L grid)."""
        L = self.L
        rho2 = self.inverse(self._lift(self.forward(rho)), 2 * L)
        pts = _grid_points(2 * L)
        return jnp.stack([jnp.sqrt(4 * np.pi) * jnp.real(self.forward(rho2 * pts[..., k], 2 * L)[0, 2 * L - 1])
                          for k in range(3)])

    def dirac_distance(self, rho) -> Array:
        """W2 distance to the nearest Dirac mass: min_mu (int |x - mu|^2 rho)^{1/2} = (2 - 2 |m1|)^{1/2}."""
        return jnp.sqrt(jnp.maximum(2.0 - 2.0 * jnp.linalg.norm(self.first_moment(rho)), 0.0))

    def energy(self, rho) -> Array:
        """(1/2 beta) int int e^{beta <x, y>} rho(x) rho(y) = (1/2 beta) sum_lm 4 pi i_l(beta) |rho_lm|^2."""
        return jnp.sum(self.kernel_coefficients() * self.degree_spectrum(rho)) / (2 * self.beta)


@functools.cache
def _precomps(band: int, forward: bool):
    """s2fft's precomputed recursion tables for a band limit, computed once (concrete, even when first
    asked for inside a trace)."""
    with jax.ensure_compile_time_eval():
        return _s2fft().generate_precomputes_jax(band, forward=forward)


def _grid_points(band: int) -> Array:
    s = _s2fft().sampling.s2_samples
    t = jnp.asarray(s.thetas(band, sampling="mw"))[:, None]
    p = jnp.asarray(s.phis_equiang(band, sampling="mw"))[None, :]
    return jnp.stack(jnp.broadcast_arrays(jnp.sin(t) * jnp.cos(p), jnp.sin(t) * jnp.sin(p), jnp.cos(t)), -1)


def particles_to_density(x, L: int, bandwidth=0.1, weights=None) -> Array:
    """A von Mises-Fisher kernel density estimate of unit vectors ``x`` (N, 3) on the MW grid of band
    L, projected to band L: rho(y) = sum_i w_i kappa e^{kappa(<x_i, y> - 1)} / (2 pi (1 - e^{-2 kappa})),
    kappa = 1 / bandwidth^2."""
    x = jnp.asarray(x)
    w = jnp.full((x.shape[0],), 1.0 / x.shape[0]) if weights is None else jnp.asarray(weights) / jnp.sum(weights)
    kappa = 1.0 / bandwidth**2
    pts = _grid_points(L)
    k = kappa / (2 * np.pi * (-np.expm1(-2 * kappa))) * jnp.exp(kappa * (pts @ x.T - 1.0))
    dens = k @ w
    return SphereMeanField(L).project(dens)


def density_to_particles(key: PRNGKeyArray, rho, n: int) -> Array:
    """N unit vectors sampled from a grid density ``rho`` (L, 2L-1): a grid cell with probability
    rho times its area (sin theta dtheta dphi), then uniformly within the cell (in cos theta and phi)."""
    L = rho.shape[0]
    s = _s2fft().sampling.s2_samples
    theta = jnp.asarray(s.thetas(L, sampling="mw"))
    nphi = 2 * L - 1
    dphi = 2 * np.pi / nphi
    # cell edges in theta: midpoints between samples, clipped to [0, pi]
    edges = jnp.concatenate([jnp.zeros(1), 0.5 * (theta[1:] + theta[:-1]), jnp.full((1,), np.pi)])
    area = (jnp.cos(edges[:-1]) - jnp.cos(edges[1:]))[:, None] * dphi  # (L, 1)
    p = jnp.maximum(rho, 0.0) * area
    k1, k2, k3 = jax.random.split(key, 3)
    cells = jax.random.choice(k1, rho.size, (n,), p=(p / jnp.sum(p)).reshape(-1))
    i, j = cells // nphi, cells % nphi
    u = jax.random.uniform(k2, (n,))
    cos_t = jnp.cos(edges[i]) + u * (jnp.cos(edges[i + 1]) - jnp.cos(edges[i]))
    phi = (j + jax.random.uniform(k3, (n,)) - 0.5) * dphi
    sin_t = jnp.sqrt(jnp.maximum(1.0 - cos_t**2, 0.0))
    return jnp.stack([sin_t * jnp.cos(phi), sin_t * jnp.sin(phi), cos_t], -1)
