r"""Influence profiles over input positions and their shape observables.

A profile p_j (j = 0..n-1, positions in [0, 1] in order) says how much the output at one position
(typically the last) depends on the input at position j, as a mass per position (so profiles of
different resolutions are compared after :func:`bin_profile`). Lost-in-the-middle profiles are
U-shaped: large at the start (primacy), large at the end (recency), smaller in between.

Why bin: in the continuum limit of causal attention the influence of the first positions has an
integrable (logarithmic) singularity at s = 0 (the Cesàro primacy tail), so point values near
s = 0 depend on the grid while the mass of a bin of fixed width converges.
"""

from __future__ import annotations

import numpy as np


def bin_profile(profile, n_bins: int) -> np.ndarray:
    """Sum the masses of a (..., n) profile over ``n_bins`` equal contiguous bins (n must be a
    multiple of n_bins)."""
    p = np.asarray(profile)
    n = p.shape[-1]
    if n_bins < 1 or n % n_bins:
        raise ValueError(f"n_bins must divide the profile length {n}, got {n_bins}")
    return p.reshape(p.shape[:-1] + (n_bins, n // n_bins)).sum(-1)


def u_shape_gap(profile) -> np.ndarray:
    """p_0 - min_{0 < j < n-1} p_j: > 0 iff the profile first decreases from its start."""
    p = np.asarray(profile)
    return p[..., 0] - p[..., 1:-1].min(axis=-1)


def is_u_shaped(profile) -> np.ndarray:
    """True where the (..., n) profile decreases then increases: its minimum is strictly inside
    and strictly below both ends."""
    p = np.asarray(profile)
    k = np.argmin(p, axis=-1)
    pmin = p.min(axis=-1)
    return (k > 0) & (k < p.shape[-1] - 1) & (p[..., 0] > pmin) & (p[..., -1] > pmin)


def u_shape_onset(ts, profiles) -> float:
    """First time the profiles (T, n) are U-shaped, linearly interpolated on ``u_shape_gap``
    between the saved time before and the first U-shaped one; ``nan`` if never."""
    ts = np.asarray(ts)
    u = is_u_shaped(profiles)
    if not u.any():
        return float("nan")
    i = int(np.argmax(u))
    if i == 0:
        return float(ts[0])
    gap = u_shape_gap(profiles)
    g0, g1 = gap[i - 1], gap[i]
    if g0 > 0 or g1 <= g0:
        return float(ts[i])
    return float(ts[i - 1] + (ts[i] - ts[i - 1]) * (-g0) / (g1 - g0))
