"""Fixed per-token data that enters the attention but never moves.

Each moving token i carries an auxiliary variable: its sequence position ``pos_i`` (used by
causal, ALiBi/decay and window masks), an optional feature vector ``z_i`` (e.g. a positional
encoding), and a mass ``m_i`` (default 1/N). A :class:`Prompt` adds P extra *fixed* tokens that
act as keys/values for every moving token and are never moved by the dynamics.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp

from .._errors import require
from .._types import Array, Float, Real, Shaped


class TokenAux(eqx.Module):
    """Auxiliary variables of the N moving tokens.

    Attributes:
        pos: sequence positions, shape (N,). Masks use them: causal lets i attend to j iff
            ``pos_j <= pos_i``; ALiBi uses ``|pos_i - pos_j|``. Default ``0, 1, ..., N-1``.
            The normalised position of the kinetic picture is ``s_i = pos_i / (N - 1)``.
        z: optional feature vectors, shape (N, dz) (a positional encoding, ...).
        mass: token masses m_i, shape (N,), default 1/N. They weight the tokens as keys:
            SA field v_i = sum_j m_j e^{a_ij} V x_j / sum_j m_j e^{a_ij}.

    Example:
        aux = TokenAux.default(4)
        aux.pos
        Array([0., 1., 2., 3.], dtype=float32)
    """

    pos: Real[Array, "*batch n"]
    mass: Float[Array, "*batch n"]
    z: Shaped[Array, "*batch n dz"] | None = None

    @classmethod
    def default(cls, n: int, dtype=None, *, pos=None, mass=None, z=None) -> TokenAux:
        """Positions 0..N-1 and masses 1/N unless given."""
        pos = jnp.arange(n, dtype=dtype or jnp.float32) if pos is None else jnp.asarray(pos)
        mass = jnp.full((n,), 1.0 / n, dtype=dtype or jnp.float32) if mass is None else jnp.asarray(mass)
        return cls(pos=pos, mass=mass, z=None if z is None else jnp.asarray(z))

    def validate(self, n: int, name: str = "aux") -> None:
        """Shape check against the number of tokens N (raises ValueError naming the field)."""
        require(
            self.pos.ndim == 1 and self.pos.shape[0] == n,
            f"{name}.pos must have shape ({n},) (one position per token), got {self.pos.shape}",
        )
        require(
            self.mass.ndim == 1 and self.mass.shape[0] == n,
            f"{name}.mass must have shape ({n},) (one mass per token), got {self.mass.shape}",
        )
        if self.z is not None:
            require(
                self.z.ndim == 2 and self.z.shape[0] == n,
                f"{name}.z must have shape ({n}, dz), got {self.z.shape}",
            )


class Prompt(eqx.Module):
    """P fixed tokens that every moving token attends to; they never move.

    Attributes:
        x: prompt token states, shape (P, d), used as keys and values.
        mass: their masses, shape (P,); default 1/N_moving each (set at call time), i.e. a
            prompt token weighs as much as a moving token.
        pos: optional positions, shape (P,). If ``None`` the prompt is *free*: masks (causal,
            ALiBi, window, custom) do not apply to it and every token sees it. If given, the
            prompt is placed in the sequence and masks apply as for any key.
        z: optional feature vectors, shape (P, dz).

    Example:
        p = Prompt(jnp.eye(3)[:1])      # one fixed token at e_1, seen by everyone
    """

    x: Shaped[Array, "*batch p d"]
    mass: Float[Array, "*batch p"] | None = None
    pos: Real[Array, "*batch p"] | None = None
    z: Shaped[Array, "*batch p dz"] | None = None

    def __init__(self, x, mass=None, pos=None, z=None):
        self.x = jnp.asarray(x)
        require(self.x.ndim == 2, f"prompt.x must have shape (P, d), got {self.x.shape}")
        p = self.x.shape[0]
        self.mass = None if mass is None else jnp.asarray(mass)
        self.pos = None if pos is None else jnp.asarray(pos)
        self.z = None if z is None else jnp.asarray(z)
        for field in ("mass", "pos"):
            val = getattr(self, field)
            require(
                val is None or val.shape == (p,),
                f"prompt.{field} must have shape ({p},), got {None if val is None else val.shape}",
            )

    @property
    def size(self) -> int:
        return self.x.shape[0]
