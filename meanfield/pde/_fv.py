r"""The finite-volume base shared by the density solvers (:class:`meanfield.pde.CircleMeanField`,
:class:`meanfield.pde.KineticMeanField`): the theta grid, the attention kernels on it, the periodic
MUSCL flux divergence, the time-step choice and the diffrax integration.

Periodic grid of M cells of width h = 2 pi / M along the last axis; rho holds cell averages and u
the velocity at the right face of each cell (face i + 1/2). The face flux is upwind with a
minmod-limited linear reconstruction, so the update -(F_{i+1/2} - F_{i-1/2}) / h is conservative
(total mass changes by round-off only) and, with an SSP stepper (Euler, Heun = SSPRK2) under
max|u| dt <= h/2, positivity preserving.

Time step (``dt=None``): at the start of every save interval

    dt = min(cfl h / max|u|,  accuracy / r),   r = max(r_lin, max_i |u_{i+1} - u_i| / h),

where r_lin = max_n |lambda_n| is the fastest linear rate about the uniform state, from the
kernels' Fourier coefficients (SA: lambda_n = -i n (g_n - u_0 K_n) / K_0; USA: lambda_n =
-i n g_n / 2 pi times the coupling's largest row sum; the advection by a uniform drift u_0 is
left to the CFL bound). The CFL bound keeps positivity; the rate bound keeps accuracy near the
uniform state, where max|u| -> 0 and the CFL step alone would become the whole save interval. SSP
Heun integrates e^{lambda t} with a relative error of about (lambda dt)^2 / 6 in the rate, so the
default ``accuracy`` = 0.05 targets ~4e-4 on the fastest linear mode (less on slower ones).
"""

from __future__ import annotations

import abc

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._errors import check_value, require
from .._types import Array

CFL = 0.4
"""Default CFL number of the finite-volume solvers."""
ACCURACY = 0.05
"""Default accuracy: the step is at most ACCURACY / (the fastest linear rate)."""


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


class AbstractFiniteVolume(eqx.Module):
    """A density on M periodic theta cells moved by an attention velocity (see module docstring).

    Subclasses hold the fields ``m``, ``beta``, ``a``, ``b`` (V = a I + b J), ``form`` and implement
    :meth:`face_velocity` (and :meth:`usa_gain` when their USA field mixes several rows)."""

    m: eqx.AbstractVar[int]
    beta: eqx.AbstractVar[Array]
    a: eqx.AbstractVar[Array]
    b: eqx.AbstractVar[Array]
    form: eqx.AbstractVar[str]

    @abc.abstractmethod
    def face_velocity(self, rho: Array) -> Array:
        """u at the faces (i + 1) h of every row, the shape of ``rho``."""

    def usa_gain(self) -> Array:
        """Largest total key weight a row sees (multiplies the USA linear rates); 1 for one row."""
        return jnp.asarray(1.0)

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
        """rfft of K and g at the face-minus-centre offsets (j + 1/2) h, as :func:`periodic_conv` uses."""
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
        """-(F_{i+1/2} - F_{i-1/2}) / h with upwind, minmod-limited MUSCL fluxes."""
        return muscl_divergence(rho, self.face_velocity(rho), self.h)

    def max_speed(self, rho) -> Array:
        return jnp.max(jnp.abs(self.face_velocity(rho)))

    def default_step(self, rho, cfl, accuracy) -> Array:
        """min(cfl h / max|u|, accuracy / r) (module docstring)."""
        u = self.face_velocity(rho)
        grad = jnp.max(jnp.abs(u - jnp.roll(u, 1, axis=-1))) / self.h
        rate = jnp.maximum(self.linear_rate_bound(rho.dtype), grad)
        return jnp.minimum(cfl * self.h / jnp.maximum(jnp.max(jnp.abs(u)), 1e-30), accuracy / jnp.maximum(rate, 1e-30))

    def _integrate(self, y0, ts, shape, name, *, dt, cfl, accuracy, solver, max_steps, adjoint=None):
        """Checked arguments, then :func:`cfl_solve`; returns (ts, states at ts)."""
        y0 = jnp.asarray(y0)
        require(y0.shape == shape, f"{name} must have shape {shape}, got {y0.shape}")
        require(jnp.issubdtype(y0.dtype, jnp.floating), f"{name} must be a floating-point array, got {y0.dtype}")
        ts = jnp.asarray(ts, y0.dtype)
        require(ts.ndim == 1 and ts.shape[0] >= 2, f"ts must be a 1-D array of >= 2 times, got shape {ts.shape}")
        y0 = check_value(y0, ~jnp.all(y0 >= 0), f"{name} must be non-negative (and finite)")
        ts = check_value(ts, ~jnp.all(jnp.diff(ts) >= 0) | ~jnp.all(jnp.isfinite(ts)), "ts must be finite and non-decreasing")
        if dt is None:
            require(0 < float(cfl) <= 0.5, f"cfl must be in (0, 1/2], got {cfl}")
            require(0 < float(accuracy) <= 1, f"accuracy must be in (0, 1], got {accuracy}")
            step = (jnp.asarray(cfl, y0.dtype), jnp.asarray(accuracy, y0.dtype))
        else:
            require(float(dt) > 0, f"dt must be > 0, got {dt}")
            step = jnp.asarray(dt, y0.dtype)
        solver = diffrax.Heun() if solver is None else solver
        return ts, cfl_solve(self, y0, ts, step, dt is None, solver, int(max_steps), adjoint)


@eqx.filter_jit
def cfl_solve(pde, y0, ts, step, adaptive: bool, solver, max_steps: int, adjoint=None):
    """Integrate ``pde.rhs`` from ts[0] to ts[-1], returning the states at every ts (stacked).

    ``adaptive``: ``step`` = (cfl, accuracy) and dt = ``pde.default_step`` at the start of every
    save interval (fixed steps inside it); otherwise ``step`` is dt itself. ``adjoint``: a diffrax
    adjoint (``diffrax.ForwardMode()`` for forward-mode derivatives; default reverse-mode
    checkpointing)."""
    adjoint = diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint

    def interval(y, t01):
        t0, t1 = t01
        dt = pde.default_step(y, *step) if adaptive else step
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(pde.rhs), solver, t0=t0, t1=t1, dt0=jnp.maximum(jnp.minimum(dt, t1 - t0), 1e-30), y0=y,
            stepsize_controller=diffrax.ConstantStepSize(), max_steps=max_steps, adjoint=adjoint,
        )
        return sol.ys[-1], sol.ys[-1]

    _, ys = jax.lax.scan(interval, y0, (ts[:-1], ts[1:]))
    return jnp.concatenate([y0[None], ys])
