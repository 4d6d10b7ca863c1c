"""Fixed per-token data that enters the attention but never moves.

Each moving token i carries an auxiliary variable: its sequence position ``pos_i`` (used by
causal, ALiBi/decay and window masks), an optional feature vector ``z_i`` (e.g. a positional
encoding), and a mass ``m_i`` (default 1/N). A [`Prompt`][meanfield.kernel.Prompt] adds P extra *fixed* tokens that
act as keys/values for every moving token and are never moved by the dynamics.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .._errors import check_param, is_concrete, require
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
        ```python
        aux = TokenAux.default(4)
        aux.pos
        Array([0., 1., 2., 3.], dtype=float32)
        ```
    """

    pos: Real[Array, "*batch n"]
    mass: Float[Array, "*batch n"]
    z: Shaped[Array, "*batch n dz"] | None = None

    @classmethod
    def default(cls, n: int, dtype=None, *, pos=None, mass=None, z=None) -> TokenAux:
        """Positions 0..N-1 and masses 1/N unless given."""
        pos = jnp.arange(n, dtype=dtype or jnp.float32) if pos is None else jnp.asarray(pos)
        mass = (
            jnp.full((n,), 1.0 / n, dtype=dtype or jnp.float32)
            if mass is None
            else jnp.asarray(mass)
        )
        return cls(pos=pos, mass=mass, z=None if z is None else jnp.asarray(z))

    def validate(self, n: int, name: str = "aux") -> None:
        """Shape check against the number of tokens N, and (concrete values) finite positions and
        finite non-negative masses (raises ValueError naming the field)."""
        check_param(f"{name}.pos", self.pos)
        check_param(f"{name}.mass", self.mass, lo=0)
        check_param(f"{name}.z", self.z)
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
        ```python
        p = Prompt(jnp.eye(3)[:1])      # one fixed token at e_1, seen by everyone
        ```
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
        check_param("prompt.x", self.x)
        check_param("prompt.mass", self.mass, lo=0)
        check_param("prompt.pos", self.pos)
        check_param("prompt.z", self.z)
        for field in ("mass", "pos"):
            val = getattr(self, field)
            require(
                val is None or val.shape == (p,),
                f"prompt.{field} must have shape ({p},), got {None if val is None else val.shape}",
            )

    @property
    def size(self) -> int:
        return self.x.shape[0]


class ParallelPrompt(eqx.Module):
    r"""One fixed prompt datum p_i per moving token: a key/value for its own token i ONLY (the
    "parallel" prompt insertion of Imaizumi, Koyama, Isobe & Hayashi 2026), never moving.

    Token i attends to the keys x_j (masses m_j, mask b_ij) and to its own p_i with key mass
    ``weight_i`` and no positional penalty: the own prompt carries its token's position and
    auxiliary variable (ALiBi distance 0, the same RoPE rotation, additive PE with its token's z),
    so it is visible under every mask (strict causal included), and it counts as a key wherever
    weights are normalised (the softmax denominator, [`PositionNormalized`][meanfield.kernel.PositionNormalized]).

    With Q = K = V = I and mask ``Full()``, the flows ascend

        E(x) = (1 / 2 beta) sum_ij m_i m_j e^{beta ⟨x_i, x_j⟩} + (1 / beta) sum_i m_i weight_i e^{beta ⟨x_i, p_i⟩}

    (grad_{x_i} E = m_i x the USA field; SA divides it by a positive Z_i), whose maximiser over the
    token distribution is a pushforward of the prompt distribution, not a Dirac mass
    ([`meanfield.theory.prompt_pushforward`][meanfield.theory.prompt_pushforward]). A symmetric mask adds its bias inside the first
    exponent; a causal mask breaks the gradient structure (no energy is known to increase then).
    Contrast: a shared [`Prompt`][meanfield.kernel.Prompt] adds a term convex in the token distribution, whose
    maximiser is a Dirac mass. Both may be passed together: ``prompt=(Prompt(y), ParallelPrompt(p))``.

    Attributes:
        p: the prompts, shape (N, d), one per moving token (on the same geometry as the tokens).
        weight: key mass of each own prompt, a scalar or shape (N,) (default 1; the tokens' own
            masses default to 1/N).
    """

    p: Float[Array, "*batch n d"]
    weight: Float[Array, "*batch n"]

    def __init__(self, p, weight=1.0):
        self.p = jnp.asarray(p)
        require(
            self.p.ndim == 2,
            f"prompt.p must have shape (N, d) (one prompt per token), got {self.p.shape}",
        )
        require(
            jnp.issubdtype(self.p.dtype, jnp.floating),
            f"prompt.p must be a floating-point array, got {self.p.dtype}",
        )
        w = jnp.asarray(weight, dtype=self.p.dtype)
        require(
            w.ndim == 0 or w.shape == (self.p.shape[0],),
            f"prompt weight must be a scalar or have shape ({self.p.shape[0]},), got {w.shape}",
        )
        self.weight = jnp.broadcast_to(w, (self.p.shape[0],))
        if is_concrete(self.p, self.weight):
            require(bool(np.all(np.isfinite(np.asarray(self.p)))), "prompt.p must be finite")
            wv = np.asarray(self.weight)
            require(
                bool(np.all(np.isfinite(wv)) and np.all(wv >= 0)),
                f"prompt weight must be finite and >= 0, got {weight}",
            )

    @property
    def size(self) -> int:
        return self.p.shape[0]


def split_prompt(prompt) -> tuple[Prompt | None, ParallelPrompt | None]:
    """(shared, parallel) from ``prompt=``: None, a [`Prompt`][meanfield.kernel.Prompt], a [`ParallelPrompt`][meanfield.kernel.ParallelPrompt], or a
    tuple holding at most one of each."""
    if prompt is None:
        return None, None
    items = tuple(prompt) if isinstance(prompt, (tuple, list)) else (prompt,)
    shared = [q for q in items if isinstance(q, Prompt)]
    parallel = [q for q in items if isinstance(q, ParallelPrompt)]
    require(
        len(shared) + len(parallel) == len(items) and len(shared) <= 1 and len(parallel) <= 1,
        "prompt must be a Prompt, a ParallelPrompt, or a tuple of at most one of each, got "
        f"{[type(q).__name__ for q in items]}",
    )
    return (shared[0] if shared else None), (parallel[0] if parallel else None)
