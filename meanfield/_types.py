"""jaxtyping aliases shared by all modules (shapes are documentation; checks live in the code)."""

from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, Scalar

Tokens = Float[Array, "n d"]
"""A token cloud: N tokens in d dimensions."""
TokenTrajectory = Float[Array, "time n d"]
"""Saved states of a token cloud along time (depth)."""
Positions = Float[Array, " n"]
"""Sequence positions of the tokens (integers stored as floats)."""
Masses = Float[Array, " n"]
"""Token masses m_i (default 1/N)."""
HeadMatrices = Float[Array, "heads d d"]
"""One d x d matrix per head (Q, K, V or the output mixing W)."""
Bias = Float[Array, "heads nq nk"]
"""Log-weights b(z_i, z_j) added to the attention scores (-inf = masked)."""

__all__ = [
    "Array",
    "Bias",
    "Bool",
    "Float",
    "HeadMatrices",
    "Int",
    "Masses",
    "PRNGKeyArray",
    "Positions",
    "Scalar",
    "TokenTrajectory",
    "Tokens",
]
