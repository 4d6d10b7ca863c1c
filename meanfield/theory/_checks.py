"""Argument checks shared by the theory modules."""

from __future__ import annotations

import numpy as np

from .._errors import require


def _check_kinetic(beta=None, lam=None, M=None, n_max=None):
    if beta is not None:
        require(
            np.all(np.isfinite(beta)) and np.all(np.asarray(beta) >= 0),
            f"beta must be finite and >= 0, got {beta}",
        )
    if lam is not None:
        require(
            np.all(np.isfinite(lam)) and np.all(np.asarray(lam) >= 0),
            f"lam must be finite and >= 0, got {lam}",
        )
    if M is not None:
        require(np.isfinite(M) and M > 0, f"M (the omega bandwidth) must be > 0, got {M}")
    if n_max is not None:
        require(int(n_max) == n_max and n_max >= 1, f"n_max must be an integer >= 1, got {n_max}")
