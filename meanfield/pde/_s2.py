"""Spherical-harmonic machinery of the S^2 solver: s2fft transforms on the McEwen-Wiaux grid,
coefficient rebinning, the grid's points and exact quadrature, and point evaluation.

Every function takes the band limit as an argument; [`band_limit`][meanfield.pde._s2.band_limit]
is the one place that reads it off a grid field (shape (L, 2L - 1)).
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import require
from .._types import Array


def band_limit(rho, name: str = "rho") -> int:
    """The band limit L of a field on the MW grid, shape (L, 2L - 1) (a ValueError otherwise)."""
    shape = tuple(np.shape(rho))
    require(
        len(shape) == 2 and shape[0] >= 1 and shape[1] == 2 * shape[0] - 1,
        f"{name} must be a field on the MW grid of a band limit L, shape (L, 2L - 1), got {shape}",
    )
    return int(shape[0])


@functools.cache
def s2fft_module():
    # s2fft logs "JAX is not using 64-bit precision" when imported without x64. The solver states its
    # own float32 error instead (the class docstring: 1e-5 to 3.5e-4 of the density's maximum,
    # measured), so that line, unexplained, is kept out of the user's output.
    logger = logging.getLogger("s2fft")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import s2fft  # noqa: PLC0415 (heavy: loaded on first use)
    finally:
        logger.setLevel(level)
    import s2fft.precompute_transforms.construct  # noqa: PLC0415, F401 (a submodule s2fft does not import)
    import s2fft.precompute_transforms.spherical  # noqa: PLC0415, F401

    return s2fft


@functools.cache
def precomps(band: int, forward: bool):
    """s2fft's precomputed recursion tables for a band limit, computed once (concrete, even when first
    asked for inside a trace)."""
    with jax.ensure_compile_time_eval():
        return s2fft_module().generate_precomputes_jax(band, forward=forward)


def grid_points(band: int) -> Array:
    s = s2fft_module().sampling.s2_samples
    t = jnp.asarray(s.thetas(band, sampling="mw"))[:, None]
    p = jnp.asarray(s.phis_equiang(band, sampling="mw"))[None, :]
    return jnp.stack(
        jnp.broadcast_arrays(jnp.sin(t) * jnp.cos(p), jnp.sin(t) * jnp.sin(p), jnp.cos(t)), -1
    )


KERNEL_MAX_BAND = 256
"""Transforms of band limits up to this use s2fft's precomputed Wigner kernels (memory 8 (2B-1) B^2
bytes: 0.27 GB at B = 256; fast to compile and 3-6 times faster to run than the recursions); larger
ones use the on-the-fly recursions."""


@functools.cache
def sh_kernel(band: int, forward: bool, x64: bool):
    """s2fft's precomputed kernel of a band limit (built once; NumPy below 64, JAX above)."""
    construct = s2fft_module().precompute_transforms.construct
    with jax.ensure_compile_time_eval():
        if band <= 64:
            k = construct.spin_spherical_kernel(band, reality=True, forward=forward)
        else:
            k = construct.spin_spherical_kernel_jax(band, reality=True, forward=forward)
        return jnp.asarray(k, jnp.float64 if x64 else jnp.float32)


def sh_forward(f, band: int):
    """Spherical-harmonic coefficients (band, 2 band - 1) of a real field on the MW grid (s2fft)."""
    s2 = s2fft_module()
    if band <= KERNEL_MAX_BAND:
        kernel = sh_kernel(band, True, jax.config.jax_enable_x64)
        return s2.precompute_transforms.spherical.forward(
            f, band, kernel=kernel, reality=True, method="jax"
        )
    return s2.forward(f, band, method="jax", reality=True, precomps=precomps(band, True))


def sh_inverse(flm, band: int):
    """The real field on the MW grid of coefficients ``flm`` (band, 2 band - 1) (s2fft)."""
    s2 = s2fft_module()
    if band <= KERNEL_MAX_BAND:
        kernel = sh_kernel(band, False, jax.config.jax_enable_x64)
        out = s2.precompute_transforms.spherical.inverse(
            flm, band, kernel=kernel, reality=True, method="jax"
        )
    else:
        out = s2.inverse(flm, band, method="jax", reality=True, precomps=precomps(band, False))
    return jnp.real(out)


def rebin(flm, L: int, band: int):
    """Coefficients (L, 2L-1) as coefficients of another band limit: padded with zeros (band > L)
    or truncated (band < L)."""
    L, band = int(L), int(band)
    k = min(L, band)
    return (
        jnp.zeros((band, 2 * band - 1), flm.dtype)
        .at[:k, band - k : band + k - 1]
        .set(flm[:k, L - k : L + k - 1])
    )


@functools.cache
def quadrature_weights(band: int) -> Array:
    """Weights w (band, 2 band - 1) of the MW grid with sum_g w_g f_g = int f dsigma exactly for every
    f of degree < band: the gradient of the linear map f -> sqrt(4 pi) f_00 (computed once, concrete)."""
    with jax.ensure_compile_time_eval():

        def integral(f):
            return jnp.sqrt(4 * np.pi) * jnp.real(sh_forward(f, band)[0, band - 1])

        return jax.grad(integral)(jnp.zeros((band, 2 * band - 1)))


def zonal_sum(t, coeffs):
    """sum_l coeffs[l] P_l(t) (Legendre polynomials by their three-term recurrence), any shape of t."""

    def body(ell, carry):
        p_prev, p, acc = carry
        p_next = ((2 * ell + 1) * t * p - ell * p_prev) / (ell + 1)
        return p, p_next, acc + coeffs[ell + 1] * p_next

    start = (jnp.ones_like(t), t, coeffs[0] + coeffs[1] * t)
    return jax.lax.fori_loop(1, coeffs.shape[0] - 1, body, start)[2]


def evaluator(flm, L: int, block: int):
    """(values at points, the field on the 2L grid) for the band-limited field of coefficients ``flm``
    (L, 2L-1): the reproducing-kernel quadrature of [`evaluate`][meanfield.pde.sphere.evaluate], its
    weights computed once (for callers that evaluate many point sets, e.g. rejection sampling)."""
    grid2 = sh_inverse(rebin(flm, L, 2 * L), 2 * L)
    wf = (quadrature_weights(2 * L) * grid2).reshape(-1)
    pts = grid_points(2 * L).reshape(-1, 3).astype(wf.dtype)
    coeffs = (2 * jnp.arange(L, dtype=wf.dtype) + 1) / (4 * np.pi)

    def values(x):
        return jax.lax.map(
            lambda xi: zonal_sum(pts @ xi, coeffs) @ wf, jnp.asarray(x, wf.dtype), batch_size=block
        )

    return values, grid2
