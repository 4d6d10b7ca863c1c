"""jaxtyping aliases shared by all modules.

Public signatures carry jaxtyping shapes (``Float[Array, "n d"]``; ``*batch`` where stacks are
accepted). The library itself does not check them at run time (our own checks give one-line
errors that name the parameter); the test suite runs with jaxtyping's pytest hook
(``--jaxtyping-packages=meanfield,beartype.beartype(conf=beartype.BeartypeConf(is_pep484_tower=True))``:
an ``int`` is accepted where ``float`` is annotated, as PEP 484 says), which checks every annotated call.
Inputs are ``ArrayLike`` (NumPy arrays and Python scalars are accepted), outputs JAX ``Array``.
"""

from collections.abc import Sequence

from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, Real, Scalar, Shaped

Tokens = Float[Array, "n d"]
"""A token cloud: N tokens in d dimensions."""
TokensLike = Shaped[ArrayLike, "n d"]
"""An input token cloud (any array-like of shape (N, d); the dtype is checked by the function)."""
TokenTrajectory = Float[Array, "time n d"]
"""Saved states of a token cloud along time (depth)."""
Clouds = Shaped[ArrayLike, "*batch n d"]
"""One cloud (N, d) or any stack of clouds (..., N, d)."""
PerCloud = Float[Array, "*batch"]
"""One value per cloud of a stack."""
Times = Real[ArrayLike, " time"] | Sequence[float]
"""Save times (or depths): an array or a list of numbers."""
Positions = Real[Array, " n"]
"""Sequence positions of the tokens."""
Masses = Float[Array, " n"]
"""Token masses m_i (default 1/N)."""
HeadMatrices = Float[Array, "heads d d"]
"""One d x d matrix per head (Q, K, V or the output mixing W)."""
Bias = Float[Array, "heads nq nk"]
"""Log-weights b(z_i, z_j) added to the attention scores (-inf = masked)."""
Density = Float[Array, " m"]
"""Cell averages of a density on M periodic theta cells."""
KineticDensity = Float[Array, "s m"]
"""Cell averages f(z_k, theta_i): S rows (auxiliary values) of M theta cells."""

__all__ = [
    "Array",
    "ArrayLike",
    "Bias",
    "Bool",
    "Clouds",
    "Density",
    "Float",
    "HeadMatrices",
    "Int",
    "KineticDensity",
    "Masses",
    "PRNGKeyArray",
    "PerCloud",
    "Positions",
    "Real",
    "Scalar",
    "Shaped",
    "Times",
    "TokenTrajectory",
    "Tokens",
    "TokensLike",
]
