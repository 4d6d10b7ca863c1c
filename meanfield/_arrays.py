"""Small array helpers shared by the kernel and the device layer."""

from __future__ import annotations

import jax.numpy as jnp


def pad_axis(a, size: int, axis: int, mode="edge"):
    """Pad ``axis`` of ``a`` at its end to ``size`` entries: ``mode="edge"`` repeats the last
    entry, any other value fills with that constant. ``size`` equal to the current length is a no-op."""
    extra = size - a.shape[axis]
    if extra == 0:
        return a
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, extra)
    if isinstance(mode, str) and mode == "edge":
        return jnp.pad(a, widths, mode="edge")
    return jnp.pad(a, widths, constant_values=mode)
