"""Finite-volume pieces shared by the density solvers: the periodic MUSCL flux divergence in
theta and the CFL-stepped time integration through diffrax.

Periodic grid of M cells of width h along the last axis; rho holds cell averages and u the
velocity at the right face of each cell (face i + 1/2). The face flux is upwind with a
minmod-limited linear reconstruction, so the update -(F_{i+1/2} - F_{i-1/2}) / h is conservative
(total mass changes by round-off only) and, with an SSP stepper (Euler, Heun = SSPRK2) under
max|u| dt <= h/2, positivity preserving.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from .._types import Array


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


@eqx.filter_jit
def cfl_solve(pde, y0, ts, cfl_or_dt, adaptive_cfl: bool, solver, max_steps: int, adjoint=None):
    """Integrate ``pde.rhs`` from ts[0] to ts[-1], returning the states at every ts (stacked).

    ``adaptive_cfl``: dt = cfl * h / max|u| chosen at the start of every save interval (fixed
    steps inside it); otherwise ``cfl_or_dt`` is the step itself. ``adjoint``: a diffrax adjoint
    (``diffrax.ForwardMode()`` for forward-mode derivatives; default reverse-mode checkpointing)."""
    adjoint = diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint

    def interval(y, t01):
        t0, t1 = t01
        if adaptive_cfl:
            dt = cfl_or_dt * pde.h / jnp.maximum(pde.max_speed(y), 1e-12)
        else:
            dt = cfl_or_dt
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(pde.rhs), solver, t0=t0, t1=t1, dt0=jnp.minimum(dt, t1 - t0), y0=y,
            stepsize_controller=diffrax.ConstantStepSize(), max_steps=max_steps, adjoint=adjoint,
        )
        return sol.ys[-1], sol.ys[-1]

    _, ys = jax.lax.scan(interval, y0, (ts[:-1], ts[1:]))
    return jnp.concatenate([y0[None], ys])
