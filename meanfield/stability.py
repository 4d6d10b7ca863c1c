"""The linear stability of a token configuration under the particle flow."""

from __future__ import annotations

import jax
import numpy as np

from ._errors import require
from ._types import TokensLike
from .geometry import AbstractGeometry, Sphere
from .kernel import Attention, TokenAux
from .kernel.attention import PromptArg
from .particles import velocity


def linear_stability(
    attn: Attention,
    x: TokensLike,
    *,
    geometry: AbstractGeometry = Sphere(),
    aux: TokenAux | None = None,
    prompt: PromptArg = None,
) -> float:
    r"""Largest real part of the eigenvalues of the linearised flow at ``x`` (host float).

    With f(x) = P_x v(x) ([`velocity`][meanfield.velocity]) and B an orthonormal basis of the product of tangent
    spaces at x (``geometry.tangent_basis``: N (d - 1) vectors on the sphere, all of R^{N d} in
    Euclidean space), the
    linearisation is B Df(x) B^T (``jax.jacfwd``, dense: for N d up to a few thousand). At a
    stationary point (f(x) = 0) it is the flow's Jacobian on the manifold (on the sphere
    Df[t] = P_x Dv[t] - ⟨x, v⟩ t is tangent there): a negative value means x attracts every
    nearby start, a positive one that x is unstable. Away from a stationary point it is only the
    local growth rate of the tangent-projected Jacobian.

    Example:
        ```python
        x = jnp.array([[1.0, 0.0], [-1.0, 0.0]])                 # two antipodal tokens on S^1
        linear_stability(Attention(1.0, form="USA"), x)          # e^{-1} = 0.3679: they attract
        ```
    """
    x = jax.numpy.asarray(x)
    require(x.ndim == 2, f"x must have shape (N, d), got {x.shape}")
    n, d = x.shape
    jac = jax.jacfwd(
        lambda y: velocity(attn, y, geometry=geometry, aux=aux, prompt=prompt).ravel()
    )(x).reshape(n * d, n * d)
    jac = np.asarray(jac, dtype=np.float64)
    basis = geometry.tangent_basis(x)
    return float(np.linalg.eigvals(basis @ jac @ basis.T).real.max())
