r"""Mean-field dynamics of self-attention on the sphere S^2: a pseudo-spectral solver.

Model (Q = K = I, V = a I). A density rho on S^2 with int rho dsigma = 1 (dsigma the surface
measure) moves tokens with the velocity

    G(x) = int e^{beta ⟨x, y⟩} rho(y) dsigma(y),
    SA:  v = (a / beta) grad_S log G,        USA:  v = (a / beta) grad_S G,

since $\nabla_x e^{\beta\langle x, y\rangle} = \beta y\, e^{\beta\langle x, y\rangle}$ and $P_x y$ is its tangential
part: the SA field $P_x \int y\, e^{\beta\langle x, y\rangle} \rho \,/\, \int e^{\beta\langle x, y\rangle} \rho$ of the particle
engine, and the USA field without the normaliser. The density obeys d_t rho + div_S(rho v) = 0.

The kernel is zonal, so by Funk-Hecke it is diagonal in spherical harmonics:
$\int e^{\beta\langle x, y\rangle} Y_{\ell m}(y)\, d\sigma(y) = 4\pi\, i_\ell(\beta)\, Y_{\ell m}(x)$, $i_\ell$ the modified spherical Bessel
function; G_lm = 4 pi i_l(beta) rho_lm. About the uniform state rho_0 = 1/(4 pi) a degree-l
perturbation grows at a l(l+1) i_l(beta) / (beta i_0(beta)) (SA) or a l(l+1) i_l(beta) / beta (USA)
([`meanfield.theory.sphere_growth_rate`][meanfield.theory.sphere_growth_rate]).

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
-UNDERSHOOT max (``UNDERSHOOT`` = 1e-6), is reported as unresolved (a solver failure, as for the circle solvers: raised with
``throw=True``, a ``RESULTS.unresolved`` code with ``throw=False``), with the advice to raise L.

Time stepping: the shared integration layer of `meanfield.pde._integrate` (``CFLController``: the
step re-picked before every step as min(cfl h / max|v|, accuracy / r), h = pi / L the resolution of
the band limit, r the fastest linear rate or max |Lap phi|), with Bogacki-Shampine 3(2) (``diffrax.Bosh3``) by
default: its stability region covers part of the imaginary axis, which the advection spectrum of
a spectral method touches and SSP Heun's does not, at three right-hand sides a step (FSAL).
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._errors import check_form, check_param, param_fault, require
from .._types import Array, PRNGKeyArray
from ._integrate import (
    ACCURACY,
    CFL,
    RESULTS,
    AbstractDensitySolver,
    DensitySolution,
    cell_count,
    is_real_in,
)
from ._s2 import band_limit, evaluator, grid_points, rebin, s2fft_module, sh_forward, sh_inverse
from ._s2 import quadrature_weights as quadrature_weights

UNDERSHOOT = 1e-6
"""The undershoot tolerance: a band-limited density below -UNDERSHOOT max(rho) is not resolved by its
band limit (a failure while solving), and an initial density below it is refused. A resolved
band-limited density (a smooth density projected to degrees < L) dips below zero by far less
(the projections of the tests' von Mises-Fisher starts: < 1e-9 of the maximum); a Gibbs undershoot
of clusters beyond the band limit crosses it."""
TAIL = 1e-8
"""Default threshold of the relative spectral tail energy (degrees >= 3L/4) of an unresolved state."""


def sph_in(lmax: int, beta) -> Array:
    r"""Modified spherical Bessel functions $i_\ell(\beta)$, $\ell = 0, \dots, \ell_{\max}$, in JAX (beta may be
    traced): $i_0 = \sinh(\beta)/\beta$ and the ratios $r_\ell = i_\ell / i_{\ell-1} = 1 / ((2\ell+1)/\beta + r_{\ell+1})$ by
    backward recurrence from $r = 0$ at $\ell = \ell_{\max} + 40$ (stable; no overflow). Negative $\beta$:
    $i_\ell(-\beta) = (-1)^\ell i_\ell(\beta)$."""
    beta = jnp.asarray(beta, dtype=float)
    sign = jnp.where(beta < 0, -1.0, 1.0)
    beta = jnp.abs(beta)
    safe = jnp.maximum(beta, 1e-30)
    top = int(lmax) + 40

    def body(k, carry):
        r, out = carry
        ell = top - k
        r = 1.0 / ((2 * ell + 1) / safe + r)
        return r, jnp.where(ell <= lmax, out.at[jnp.clip(ell, 0, lmax)].set(r), out)

    _, r = jax.lax.fori_loop(
        0, top, body, (jnp.zeros((), safe.dtype), jnp.ones((int(lmax) + 1,), safe.dtype))
    )
    log_i0 = jnp.where(
        beta > 1e-4, beta + jnp.log1p(-jnp.exp(-2 * safe)) - jnp.log(2 * safe), beta**2 / 6
    )
    log_i = log_i0 + jnp.concatenate([jnp.zeros((1,), r.dtype), jnp.cumsum(jnp.log(r[1:]))])
    return jnp.exp(log_i) * sign ** jnp.arange(int(lmax) + 1)


class SphereMeanField(AbstractDensitySolver):
    r"""Mean-field SA/USA dynamics on S^2 (module docstring).

    $$
    G(x) = \int_{S^2} e^{\beta\langle x, y\rangle} \rho(y)\, d\sigma(y), \qquad
    v = \tfrac{a}{\beta} \nabla \log G \ \text{(SA)}, \quad v = \tfrac{a}{\beta} \nabla G \ \text{(USA)}, \qquad
    \partial_t \rho + \operatorname{div}(\rho v) = 0,
    $$

    with $G_{\ell m} = 4\pi\, i_\ell(\beta)\, \rho_{\ell m}$ (Funk–Hecke). About the uniform state degree $\ell$ grows at
    $a\,\ell(\ell+1)\, i_\ell(\beta)/(\beta\, i_0(\beta))$ (SA) or $a\,\ell(\ell+1)\, i_\ell(\beta)/\beta$ (USA).

    Precision: without x64 the solve runs in float32, which differs from float64 by $10^{-5}$ to
    $3.5\times10^{-4}$ of the density's maximum ($L = 16$ to 32, $\beta \le 9$, measured) and can trip the
    resolution test by round-off at $L \ge 32$; reference runs enable x64. A resolved solve's accuracy is set
    by the step rule (`accuracy`), not by $L$; how large $L$ must be for a given $\beta$ and $t$ is measured in
    the docs (PDE solvers, resolution rule).

    Args:
        L: band limit (degrees 0..L-1); the state is the density on the McEwen-Wiaux grid of L
            colatitudes x (2L - 1) longitudes.
        beta: inverse temperature.
        a: value scale, V = a I (the kinetic paper's convention is USA with a = beta).
        form: "SA" or "USA".
        tail: relative spectral tail energy beyond which a state counts as unresolved.

    Example:
        ```python
        pde = SphereMeanField(16, beta=4.0)
        sol = pde.solve(pde.perturbed(3, 0, 0.05), jnp.linspace(0, 5, 11))
        ```
    """

    advice = "lower cfl or dt, or use a larger band limit L"

    L: int = eqx.field(static=True)
    beta: Array
    a: Array
    form: str = eqx.field(static=True)
    tail: float = eqx.field(static=True)
    sigma: Array

    def __init__(self, L: int, beta=1.0, a=1.0, form: str = "SA", *, tail: float = TAIL, sigma=0.0):
        self.L = cell_count("L", L, 4)
        check_form(form)
        require(is_real_in(tail, 0, 1) and float(tail) < 1, f"tail must be in (0, 1), got {tail}")
        # any sign (beta < 0: i_l(-b) = (-1)^l i_l(b)); not 0: the potential is (a / beta) log G or (a / beta) G
        check_param("beta", beta, nonzero=True)
        check_param("a", a)
        self.beta, self.a = jnp.asarray(beta, dtype=float), jnp.asarray(a, dtype=float)
        self.form = form
        self.tail = float(tail)
        check_param("sigma", sigma, lo=0)
        self.sigma = jnp.asarray(sigma, dtype=float)

    # ------------------------------------------------------------------ grid and transforms
    @property
    def h(self) -> float:
        """The resolution of the band limit, pi / L (the CFL length)."""
        return float(np.pi / self.L)

    @property
    def theta(self) -> Array:
        return jnp.asarray(s2fft_module().sampling.s2_samples.thetas(self.L, sampling="mw"))

    @property
    def phi(self) -> Array:
        return jnp.asarray(s2fft_module().sampling.s2_samples.phis_equiang(self.L, sampling="mw"))

    def points(self) -> Array:
        """Unit vectors of the grid, shape (L, 2L-1, 3)."""
        return grid_points(self.L)

    def forward(self, f, band=None):
        """Spherical-harmonic coefficients (band, 2 band - 1) of the real grid field ``f``."""
        return sh_forward(f, self.L if band is None else band)

    def inverse(self, flm, band=None):
        """The real grid field of the coefficients ``flm`` (band, 2 band - 1)."""
        return sh_inverse(flm, self.L if band is None else band)

    def _lift(self, flm):
        """Coefficients of band L padded to band 2L."""
        return rebin(flm, self.L, 2 * self.L)

    def _cut(self, flm2):
        """Coefficients of band 2L truncated to band L."""
        return rebin(flm2, 2 * self.L, self.L)

    def _lap(self, band):
        ell = jnp.arange(band, dtype=float)[:, None]
        return -ell * (ell + 1)

    # ------------------------------------------------------------------ the field
    def kernel_coefficients(self, dtype=float) -> Array:
        """4 pi i_l(beta), l < L (Funk-Hecke)."""
        return 4 * np.pi * sph_in(self.L - 1, self.beta).astype(dtype)

    def _up(self, *flms):
        """Band-L coefficient arrays -> their fields on the 2L grid (one batched transform)."""
        out = jax.vmap(lambda f: self.inverse(self._lift(f), 2 * self.L))(jnp.stack(flms))
        return tuple(out)

    def _down(self, *fields):
        """Fields on the 2L grid -> their band-L coefficients (one batched transform)."""
        out = jax.vmap(lambda f: self._cut(self.forward(f, 2 * self.L)))(jnp.stack(fields))
        return tuple(out)

    def _potential(self, G2):
        """(phi, Lap phi) on the 2L grid from G on the 2L grid, phi projected to band L."""
        if self.form == "SA":
            pot = self.a * jnp.log(jnp.maximum(G2, 1e-300)) / self.beta
        else:
            pot = self.a * G2 / self.beta
        (phi_lm,) = self._down(pot)
        return self._up(phi_lm, self._lap(self.L) * phi_lm)

    def rhs(self, t, rho, args=None) -> Array:
        """-div(rho grad phi) = -1/2 [Lap(rho phi) - phi Lap rho + rho Lap phi], dealiased on the 2L grid."""
        L = self.L
        rho_lm = self.forward(rho)
        g = self.kernel_coefficients(rho_lm.real.dtype)[:, None]
        lap = self._lap(L)
        G2, rho2, lrho2 = self._up(g * rho_lm, rho_lm, lap * rho_lm)
        phi2, lphi2 = self._potential(G2)
        a_lm, b_lm = self._down(rho2 * phi2, rho2 * lphi2 - phi2 * lrho2)
        div = 0.5 * (lap * a_lm + b_lm)
        div = div.at[0, L - 1].set(0.0)  # the mass change: zero in the continuum, exactly zero here
        return -self.inverse(div)

    def speed_and_rate(self, rho):
        """(max |v|, max |Lap phi|) on the 2L grid: |grad phi|^2 = 1/2 Lap(phi^2) - phi Lap phi."""
        L = self.L
        rho_lm = self.forward(rho)
        (G2,) = self._up(self.kernel_coefficients(rho_lm.real.dtype)[:, None] * rho_lm)
        phi2, lphi2 = self._potential(G2)
        sq_lm = self.forward(phi2**2, 2 * L)
        grad2 = 0.5 * self.inverse(self._lap(2 * L) * sq_lm, 2 * L) - phi2 * lphi2
        return jnp.sqrt(jnp.maximum(jnp.max(grad2), 0.0)), jnp.max(jnp.abs(lphi2))

    def linear_rate_bound(self, dtype=float) -> Array:
        """max_l of the linear rate about the uniform state (module docstring), l < L."""
        ell = jnp.arange(self.L, dtype=dtype)
        i = sph_in(self.L - 1, self.beta).astype(dtype)
        rates = self.a * ell * (ell + 1) * i / self.beta
        if self.form == "SA":
            rates = rates / i[0]
        return jnp.max(jnp.abs(rates))

    # ------------------------------------------------------------------ failures
    def tail_fraction(self, rho) -> Array:
        """Energy of the degrees >= 3L/4 over the whole energy sum_l C_l (the mean included, so a
        nearly uniform state has a negligible tail)."""
        spec = self.degree_spectrum(rho)
        top = int(np.ceil(3 * self.L / 4))
        return jnp.sum(spec[top:]) / jnp.maximum(jnp.sum(spec), 1e-300)

    def is_bad(self, y):
        """Non-finite, an undershoot below -UNDERSHOOT max, or a spectral tail above ``tail``."""
        finite = jnp.all(jnp.isfinite(y))
        neg = jnp.min(y) < -UNDERSHOOT * jnp.max(y)
        return ~finite | neg | (self.tail_fraction(jnp.where(finite, y, 0.0)) > self.tail)

    def failure_code(self, y):
        return RESULTS.where(
            jnp.all(jnp.isfinite(y)), RESULTS.unresolved, RESULTS.nonfinite_density
        )

    def initial_tolerance(self, y0):
        return UNDERSHOOT * jnp.max(y0)

    def parameter_fault(self) -> Array:
        return (
            param_fault(self.beta, nonzero=True)
            | param_fault(self.a)
            | param_fault(self.sigma, lo=0)
        )

    def heat(self, y, h) -> Array:
        r"""Degree $\ell$ times $e^{-h \sigma^2 \ell(\ell + 1)/2}$ (exact for the band-limited state)."""
        ell = jnp.arange(self.L, dtype=y.dtype)[:, None]
        factor = jnp.exp(-h * 0.5 * self.sigma**2 * ell * (ell + 1)).astype(y.dtype)
        return sh_inverse(sh_forward(y, self.L) * factor, self.L).astype(y.dtype)

    # ------------------------------------------------------------------ solve
    def solve(
        self,
        rho0,
        ts,
        *,
        dt=None,
        cfl: float = CFL,
        accuracy: float = ACCURACY,
        solver=None,
        max_steps: int = 100_000,
        throw: bool = True,
        adjoint=None,
    ) -> DensitySolution:
        """Integrate from ts[0] to ts[-1], saving at ``ts`` (rho0: (L, 2L-1) on the MW grid,
        band-limited: project with [`project`][meanfield.pde.sphere.SphereMeanField.project]). The step adapts as the solution evolves, by
        the rule of the circle solver (module docstring); Bosh3 by default. ``throw=True``: an
        unresolved or non-finite state raises [`meanfield.SolverError`][meanfield.SolverError] naming the time and
        suggesting a larger L; ``throw=False`` returns the ``result`` code."""
        solver = diffrax.Bosh3() if solver is None else solver
        ts, rho, result, stats = self._integrate(
            rho0,
            ts,
            (self.L, 2 * self.L - 1),
            "rho0",
            dt=dt,
            cfl=cfl,
            accuracy=accuracy,
            solver=solver,
            max_steps=max_steps,
            throw=throw,
            adjoint=adjoint,
        )
        return DensitySolution(
            ts=ts, rho=rho, grid={"theta": self.theta, "phi": self.phi}, result=result, stats=stats
        )

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
        require(
            0 <= int(ell) < L and abs(int(m)) <= int(ell),
            f"need 0 <= ell < L = {L} and |m| <= ell, got ({ell}, {m})",
        )
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
        """rho = (1 + eps Y) / (4 pi), Y the real harmonic of [`harmonic`][meanfield.pde.sphere.SphereMeanField.harmonic] (max |Y| = 1)."""
        return (1.0 + eps * self.harmonic(ell, m)) / (4 * np.pi)

    def von_mises_fisher(self, kappa, mu=(0.0, 0.0, 1.0)) -> Array:
        r"""$\kappa e^{\kappa\langle \mu, x\rangle} / (4\pi \sinh\kappa)$, projected to band L."""
        mu = jnp.asarray(mu, dtype=float)
        mu = mu / jnp.linalg.norm(mu)
        kappa = jnp.asarray(kappa, dtype=float)
        dens = (
            kappa
            / (2 * np.pi * (-jnp.expm1(-2 * kappa)))
            * jnp.exp(kappa * (self.points() @ mu - 1.0))
        )
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
        pts = grid_points(2 * L)
        return jnp.stack(
            [
                jnp.sqrt(4 * np.pi)
                * jnp.real(self.forward(rho2 * pts[..., k], 2 * L)[0, 2 * L - 1])
                for k in range(3)
            ]
        )

    def dirac_distance(self, rho) -> Array:
        r"""W2 distance to the nearest Dirac mass: $\min_\mu (\int |x - \mu|^2 \rho)^{1/2} = (2 - 2 |m_1|)^{1/2}$."""
        return jnp.sqrt(jnp.maximum(2.0 - 2.0 * jnp.linalg.norm(self.first_moment(rho)), 0.0))

    def energy(self, rho) -> Array:
        r"""$\frac{1}{2\beta} \iint e^{\beta\langle x, y\rangle} \rho(x) \rho(y) = \frac{1}{2\beta} \sum_{\ell m} 4\pi\, i_\ell(\beta)\, |\rho_{\ell m}|^2$."""
        return jnp.sum(self.kernel_coefficients() * self.degree_spectrum(rho)) / (2 * self.beta)


def resample(rho, band: int) -> Array:
    """The band-limited field ``rho`` (L, 2L-1) on the MW grid of another band limit: its
    coefficients padded with zeros (band > L: exact interpolation) or truncated (band < L)."""
    L = band_limit(rho)
    return sh_inverse(rebin(sh_forward(rho, L), L, band), band)


def evaluate(rho, x, *, block: int = 1024) -> Array:
    r"""The band-limited density ``rho`` (L, 2L-1) at arbitrary unit vectors ``x`` (N, 3):
    $\rho(x) = \int K_L(\langle x, y\rangle) \rho(y)\, d\sigma(y)$ with the reproducing kernel of degrees $< L$,
    $K_L(t) = \sum_{\ell < L} \frac{2\ell + 1}{4\pi} P_\ell(t)$, integrated exactly on the $2L$ grid (the product has
    degree $< 2L - 1$). Cost $O(N L^3)$; rows of x in blocks of ``block``."""
    L = band_limit(rho)
    return evaluator(sh_forward(rho, L), L, block)[0](x)


def density_mmd(x, rho, *, kappa: float = 1.0, block: int = 1024) -> Array:
    r"""Maximum mean discrepancy between N particles ``x`` (N, 3) (weights 1/N) and the band-limited
    density ``rho`` (L, 2L-1), with the kernel $k(x, y) = e^{\kappa\langle x, y\rangle}$ (characteristic on $S^2$:
    every Funk–Hecke coefficient $4\pi\, i_\ell(\kappa)$ is positive):

        MMD^2 = 1/N^2 sum_ij k(x_i, x_j) - 2/N sum_i G(x_i) + sum_l 4 pi i_l(kappa) C_l(rho),

    $G = k * \rho$ (coefficients $4\pi\, i_\ell(\kappa)\, \rho_{\ell m}$, evaluated exactly by
    [`evaluate`][meanfield.pde.sphere.evaluate]). Every term is computed times $e^{-\kappa}$ (no overflow). For $N$
    i.i.d. samples of $\rho$, $\mathbb{E}\,\mathrm{MMD}^2 = (e^\kappa - \sum_\ell 4\pi\, i_\ell(\kappa)\, C_\ell)/N$ exactly."""
    x = jnp.asarray(x)
    L = band_limit(rho)
    g = 4 * np.pi * sph_in(L - 1, kappa).astype(rho.dtype) * jnp.exp(-kappa)  # e^{-kappa} 4 pi i_l
    rho_lm = sh_forward(rho, L)
    dd = jnp.sum(g * jnp.sum(jnp.abs(rho_lm) ** 2, axis=1))
    pd = jnp.mean(evaluator(g[:, None] * rho_lm, L, block)[0](x))
    pp = jnp.mean(
        jax.lax.map(lambda xi: jnp.mean(jnp.exp(kappa * (x @ xi - 1.0))), x, batch_size=block)
    )
    return jnp.sqrt(jnp.maximum(pp - 2 * pd + dd, 0.0) * jnp.exp(kappa))


def density_mmd_between(rho_a, rho_b, *, kappa: float = 1.0) -> Array:
    r"""MMD (kernel $e^{\kappa\langle x, y\rangle}$) between two band-limited densities, of possibly different band
    limits: $\big(\sum_\ell 4\pi\, i_\ell(\kappa)\, C_\ell(\rho_a - \rho_b)\big)^{1/2}$, both on the finer grid."""
    la, lb = band_limit(rho_a, "rho_a"), band_limit(rho_b, "rho_b")
    band = max(la, lb)
    diff = rebin(sh_forward(rho_a, la), la, band) - rebin(sh_forward(rho_b, lb), lb, band)
    spec = jnp.sum(jnp.abs(diff) ** 2, axis=1)
    return jnp.sqrt(jnp.sum(4 * np.pi * sph_in(band - 1, kappa).astype(spec.dtype) * spec))


def particles_to_density(x, L: int, bandwidth=0.1, weights=None) -> Array:
    r"""A von Mises–Fisher kernel density estimate of unit vectors ``x`` (N, 3) on the MW grid of band
    L, projected to band L:
    $\rho(y) = \sum_i w_i\, \kappa e^{\kappa(\langle x_i, y\rangle - 1)} / (2\pi (1 - e^{-2\kappa}))$,
    $\kappa = 1/\text{bandwidth}^2$."""
    x = jnp.asarray(x)
    w = (
        jnp.full((x.shape[0],), 1.0 / x.shape[0])
        if weights is None
        else jnp.asarray(weights) / jnp.sum(weights)
    )
    kappa = 1.0 / bandwidth**2
    pts = grid_points(L)
    k = kappa / (2 * np.pi * (-np.expm1(-2 * kappa))) * jnp.exp(kappa * (pts @ x.T - 1.0))
    dens = k @ w
    return SphereMeanField(L).project(dens)


def density_to_particles(key: PRNGKeyArray, rho, n: int, *, block: int = 1024) -> Array:
    """N unit vectors sampled exactly from the band-limited density ``rho`` (L, 2L-1) (its negative
    part, round-off of a resolved state, counted as zero): rejection from the uniform law, accepting
    x with probability rho(x) / M ([`evaluate`][meanfield.pde.sphere.evaluate]), M = 1.25 x the maximum of rho on the 2L grid;
    a proposal with rho(x) > M is an error (the bound would be wrong), not a biased sample."""
    n = int(n)
    L = band_limit(rho)
    values, grid2 = evaluator(sh_forward(rho, L), L, block)
    bound = 1.25 * jnp.max(grid2)
    batch = max(n, 256)

    def body(carry):
        out, count, over, key = carry
        key, k1, k2 = jax.random.split(key, 3)
        prop = jax.random.normal(k1, (batch, 3), rho.dtype)
        prop = prop / jnp.linalg.norm(prop, axis=1, keepdims=True)
        val = values(prop)
        acc = jax.random.uniform(k2, (batch,), rho.dtype) * bound < val
        idx = jnp.where(acc, count + jnp.cumsum(acc, dtype=jnp.int32) - 1, n)
        return (
            out.at[idx].set(prop, mode="drop"),
            count + jnp.sum(acc, dtype=jnp.int32),
            over | jnp.any(val > bound),
            key,
        )

    init = (jnp.zeros((n, 3), rho.dtype), jnp.zeros((), jnp.int32), jnp.zeros((), bool), key)
    out, _, over, _ = jax.lax.while_loop(lambda c: c[1] < n, body, init)
    return eqx.error_if(
        out,
        over,
        "density_to_particles: the density exceeds 1.25 x its grid maximum "
        "between grid points (not band-limited?); sample a smoother density",
    )
