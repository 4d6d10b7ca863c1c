r"""The finite-volume base shared by the circle solvers ([`meanfield.pde.CircleMeanField`][meanfield.pde.CircleMeanField],
[`meanfield.pde.KineticMeanField`][meanfield.pde.KineticMeanField]): the theta grid, the attention kernels on it, the periodic
MUSCL flux divergence and the periodic convolution. Time stepping, failures and the solve are the
shared integration layer of [`meanfield.pde._integrate`][meanfield.pde._integrate].

Periodic grid of M cells of width h = 2 pi / M along the last axis; rho holds cell averages and u
the velocity at the right face of each cell (face i + 1/2). The face flux is upwind with a
minmod-limited linear reconstruction, so the update -(F_{i+1/2} - F_{i-1/2}) / h is conservative
(total mass changes by round-off only) and, with an SSP stepper (Euler, Heun = SSPRK2) under
max|u| dt <= h/2, positivity preserving.

"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._types import Array
from ..sharding import token_shards
from ._integrate import RESULTS, AbstractDensitySolver, state_is_bad


def minmod(a, b):
    return jnp.where(a * b > 0, jnp.sign(a) * jnp.minimum(jnp.abs(a), jnp.abs(b)), 0.0)


def muscl_divergence(rho: Array, u: Array, h) -> Array:
    """-(F_{i+1/2} - F_{i-1/2}) / h along the last axis (periodic), upwind MUSCL-minmod fluxes."""
    right = jnp.roll(rho, -1, axis=-1)
    slope = minmod(rho - jnp.roll(rho, 1, axis=-1), right - rho)
    left_state = rho + 0.5 * slope  # at face i+1/2 from cell i
    right_state = right - 0.5 * jnp.roll(slope, -1, axis=-1)  # at face i+1/2 from cell i+1
    flux = jnp.where(u > 0, u * left_state, u * right_state)
    return -(flux - jnp.roll(flux, 1, axis=-1)) / h


def periodic_conv(kernel_hat: Array, rho: Array, h, m: int) -> Array:
    """h * sum_j k(face_i - centre_j) rho_j for every face, by FFT; ``kernel_hat`` = rfft of the
    kernel sampled at (j + 1/2) h (face i minus cell j)."""
    return h * jnp.fft.irfft(kernel_hat * jnp.fft.rfft(rho, axis=-1), n=m, axis=-1)


class AbstractFiniteVolume(AbstractDensitySolver):
    """A density on M periodic theta cells moved by an attention velocity (see module docstring).

    Subclasses hold the fields ``m``, ``beta``, ``a``, ``b`` (V = a I + b J), ``form`` and implement
    `face_velocity` and `usa_gain` (the largest total key weight a row sees: 1 for one row); the
    right-hand side, the speed and rate, the failure test and the linear rate bound are final here."""

    advice = "lower cfl or dt, or use more cells"

    m: eqx.AbstractVar[int]
    beta: eqx.AbstractVar[Array]
    a: eqx.AbstractVar[Array]
    b: eqx.AbstractVar[Array]
    form: eqx.AbstractVar[str]

    @abc.abstractmethod
    def face_velocity(self, rho: Array) -> Array:
        """u at the faces (i + 1) h of every row, the shape of ``rho``."""

    @abc.abstractmethod
    def usa_gain(self) -> Array:
        """Largest total key weight a row sees (multiplies the USA linear rates); 1 for one row."""

    @property
    def h(self) -> float:
        return 2 * np.pi / self.m

    @property
    def theta(self) -> Array:
        """Cell centres (i + 1/2) h."""
        return (jnp.arange(self.m) + 0.5) * self.h

    def kernels(self, offsets: Array) -> tuple[Array, Array]:
        """K(p) = e^{beta cos p} and g(p) = K(p) (-a sin p + b cos p) at the angle offsets p."""
        beta, a, b = (v.astype(offsets.dtype) for v in (self.beta, self.a, self.b))
        k = jnp.exp(beta * jnp.cos(offsets))
        return k, k * (-a * jnp.sin(offsets) + b * jnp.cos(offsets))

    def kernel_hats(self, dtype) -> tuple[Array, Array]:
        """rfft of K and g at the face-minus-centre offsets (j + 1/2) h, as `periodic_conv` uses."""
        k, g = self.kernels((jnp.arange(self.m, dtype=dtype) + 0.5) * self.h)
        return jnp.fft.rfft(k), jnp.fft.rfft(g)

    def linear_rate_bound(self, dtype=float) -> Array:
        """r_lin = max_n |lambda_n|, the fastest linear rate about the uniform state (module docstring)."""
        k, g = self.kernels(jnp.arange(self.m, dtype=dtype) * self.h)
        kh, gh = self.h * jnp.fft.rfft(k), self.h * jnp.fft.rfft(g)
        n = jnp.arange(kh.shape[0], dtype=dtype)
        if self.form == "USA":
            rates = n * jnp.abs(gh) / (2 * np.pi) * self.usa_gain().astype(dtype)
        else:
            u0 = gh[0] / kh[0]
            rates = n * jnp.abs(gh - u0 * kh) / jnp.abs(kh[0])
        return jnp.max(rates)

    def rhs(self, t, rho, args=None) -> Array:
        """-(F_{i+1/2} - F_{i-1/2}) / h with upwind, minmod-limited MUSCL fluxes. Rows of a
        multi-row state (the kinetic solver's) stay on their devices under a ``"tokens"`` mesh."""
        if rho.ndim > 1 and token_shards() > 1 and rho.shape[0] % token_shards() == 0:
            rho = jax.lax.with_sharding_constraint(rho, jax.sharding.PartitionSpec("tokens"))
        return muscl_divergence(rho, self.face_velocity(rho), self.h)

    def max_speed(self, rho) -> Array:
        return jnp.max(jnp.abs(self.face_velocity(rho)))

    def speed_and_rate(self, rho):
        """(max |u|, max_i |u_{i+1} - u_i| / h) at the faces."""
        u = self.face_velocity(rho)
        return jnp.max(jnp.abs(u)), jnp.max(jnp.abs(u - jnp.roll(u, 1, axis=-1))) / self.h

    def is_bad(self, y):
        """Non-finite, or negative beyond round-off (`state_is_bad`)."""
        return state_is_bad(y)

    def failure_code(self, y):
        return RESULTS.where(
            jnp.all(jnp.isfinite(y)), RESULTS.negative_density, RESULTS.nonfinite_density
        )

    def initial_tolerance(self, y0):
        return jnp.zeros((), y0.dtype)


def sa_finish(num: Array, den: Array) -> Array:
    """The SA field N / D where D > 0, and 0 where a row sees no mass (D = 0: the strict causal first
    row, an all-zero row), with a gradient that stays finite there."""
    pos = den > 0
    return jnp.where(pos, num / jnp.where(pos, den, 1.0), 0.0)


def fourier_heat(y, h, sigma, m: int):
    r"""$e^{h (\sigma^2/2)\, \partial_\theta^2}$ of cell averages on the last axis (M cells of
    $[0, 2\pi)$): Fourier mode $k$ times $e^{-h \sigma^2 k^2/2}$, exact for cell averages (averaging
    commutes with the heat kernel's convolution)."""
    k = jnp.arange(m // 2 + 1, dtype=y.dtype)
    factor = jnp.exp(-h * 0.5 * sigma**2 * k**2).astype(y.dtype)
    return jnp.fft.irfft(jnp.fft.rfft(y, axis=-1) * factor, n=m, axis=-1).astype(y.dtype)
