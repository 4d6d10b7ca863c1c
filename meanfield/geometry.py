r"""Where tokens live (geometry) and how a discrete layer moves them (layer maps).

Continuous time (depth as time) uses a [`AbstractGeometry`][meanfield.AbstractGeometry]: the velocity field v of the
kernel is projected on the tangent space,

    Sphere S^{d-1}:  dx_i/dt = P_{x_i} v_i,   P_x = I - x x^T   (preserves |x_i| = 1)
    Euclidean R^d:   dx_i/dt = v_i.

Discrete depth uses a [`AbstractLayerMap`][meanfield.AbstractLayerMap] with step h; n(y) = y / |y| is the
normalisation (a LayerNorm without centering or gain, i.e. an RMSNorm up to the factor sqrt(d)):

    PostLN:  x <- n(x + h F(x))                          (state on the sphere)
    PreLN:   x <- x + h F(n(x))                          (state in R^d, grows)
    PeriLN:  x <- x + h n(F(n(x)))                       (Kim et al. 2025; state in R^d)
    NGPT:    x <- n(x + h (n(F(x)) - x))                 (Loshchilov et al. 2024, alpha = h)
    Residual: x <- (1 - h) x + h F(x)                    (convex residual, the Cesàro model)

with F the attention field. Post-LN with small h is the Euler step of the sphere dynamics
followed by a retraction.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ._errors import data_fault
from ._types import Array, Float


def normalise(y, eps: float = 0.0):
    """Row-wise y / |y| (the retraction onto the unit sphere)."""
    return y / (jnp.linalg.norm(y, axis=-1, keepdims=True) + eps)


class AbstractGeometry(eqx.Module):
    """Tangent projection and retraction of a state manifold (abstract: subclasses are final)."""

    @abc.abstractmethod
    def project(
        self, x: Float[Array, "*batch d"], v: Float[Array, "*batch d"]
    ) -> Float[Array, "*batch d"]:
        """The tangent part of ``v`` at ``x``."""

    @abc.abstractmethod
    def retract(self, x: Float[Array, "*batch d"]) -> Float[Array, "*batch d"]:
        """The nearest point of the manifold."""

    @abc.abstractmethod
    def fault(self, x, name: str = "x0"):
        """Value check that ``x`` lies on the manifold: concrete values raise ``ValueError`` naming
        ``name`` at once; traced ones give a scalar flag computed in the graph (no host callback),
        which a solve turns into its result code."""

    def check(self, x, name: str = "x0"):
        """The eager form of [`fault`][meanfield.geometry.AbstractGeometry.fault]: raises on concrete
        bad values; returns ``x``."""
        self.fault(x, name)
        return x

    @abc.abstractmethod
    def tangent_basis(self, x) -> np.ndarray:
        """Orthonormal basis of the product of the tangent spaces at the points x (N, d), as the
        rows of a host array (dim, N d), block diagonal over the points."""


class Sphere(AbstractGeometry):
    """The unit sphere S^{d-1}: P_x v = v - ⟨x, v⟩ x, retraction x / |x|.

    ``tol`` is the tolerance of the on-sphere check of initial states; ``None`` picks 1e-6 in
    float64 and 1e-3 in float32/16: loose enough for states produced by an earlier solve
    (whose norm drifts by about the solver tolerance), tight enough to catch unnormalised input.
    """

    tol: float | None = None

    def project(
        self, x: Float[Array, "*batch d"], v: Float[Array, "*batch d"]
    ) -> Float[Array, "*batch d"]:
        return v - jnp.sum(x * v, axis=-1, keepdims=True) * x

    def retract(self, x: Float[Array, "*batch d"]) -> Float[Array, "*batch d"]:
        return normalise(x)

    def fault(self, x, name: str = "x0"):
        tol = (
            self.tol if self.tol is not None else (1e-6 if jnp.finfo(x.dtype).eps < 1e-10 else 1e-3)
        )
        bad = data_fault(~jnp.isfinite(x), f"{name}: tokens must be finite (found NaN or inf)")
        err = jnp.abs(jnp.linalg.norm(x, axis=-1) - 1.0)
        return bad | data_fault(
            ~(err <= tol),
            f"{name}: tokens must lie on the unit sphere for the Sphere geometry "
            f"(| |x_i| - 1 | <= {tol:g}); normalise them, e.g. x / |x|",
        )

    def tangent_basis(self, x) -> np.ndarray:
        """N (d - 1) rows: at each x_i, the last d - 1 columns of the QR factor of [x_i, I]."""
        x = np.asarray(x, dtype=np.float64)
        n, d = x.shape
        basis = np.zeros((n, d - 1, n, d))
        for i in range(n):
            q, _ = np.linalg.qr(np.column_stack([x[i], np.eye(d)]))
            basis[i, :, i, :] = q[:, 1:d].T
        return basis.reshape(n * (d - 1), n * d)


class Euclidean(AbstractGeometry):
    """R^d: no projection."""

    def project(
        self, x: Float[Array, "*batch d"], v: Float[Array, "*batch d"]
    ) -> Float[Array, "*batch d"]:
        return v

    def retract(self, x: Float[Array, "*batch d"]) -> Float[Array, "*batch d"]:
        return x

    def fault(self, x, name: str = "x0"):
        return data_fault(~jnp.isfinite(x), f"{name}: tokens must be finite")

    def tangent_basis(self, x) -> np.ndarray:
        """The identity of R^{N d}."""
        return np.eye(np.size(x))


class AbstractLayerMap(eqx.Module):
    """One discrete layer x -> x' built from the attention field F and a step h (abstract)."""

    geometry: eqx.AbstractClassVar[AbstractGeometry]
    """Where the state lives (used to validate the input)."""

    @abc.abstractmethod
    def step(self, field, x: Float[Array, "n d"], h) -> Float[Array, "n d"]:
        """The state after one layer."""


class PostLN(AbstractLayerMap):
    """x <- n(x + h F(x)) (Geshkovski et al.'s discrete model; state on the sphere)."""

    geometry: ClassVar[AbstractGeometry] = Sphere()

    def step(self, field, x: Float[Array, "n d"], h) -> Float[Array, "n d"]:
        return normalise(x + h * field(x))


class PreLN(AbstractLayerMap):
    """x <- x + h F(n(x)) (GPT-2 style residual stream; the state is not normalised)."""

    geometry: ClassVar[AbstractGeometry] = Euclidean()

    def step(self, field, x: Float[Array, "n d"], h) -> Float[Array, "n d"]:
        return x + h * field(normalise(x))


class PeriLN(AbstractLayerMap):
    """x <- x + h n(F(n(x))) (normalise both the sublayer input and output)."""

    geometry: ClassVar[AbstractGeometry] = Euclidean()

    def step(self, field, x: Float[Array, "n d"], h) -> Float[Array, "n d"]:
        return x + h * normalise(field(normalise(x)))


class NGPT(AbstractLayerMap):
    """x <- n(x + h (n(F(x)) - x)) (nGPT: hypersphere residual with eigen learning rate h)."""

    geometry: ClassVar[AbstractGeometry] = Sphere()

    def step(self, field, x: Float[Array, "n d"], h) -> Float[Array, "n d"]:
        return normalise(x + h * (normalise(field(x)) - x))


class Residual(AbstractLayerMap):
    """x <- (1 - h) x + h F(x): convex residual mixing with weight alpha = h, no normalisation
    (state in R^d). With uniform causal attention this is the Cesàro model of position bias:
    the layer is linear, x <- ((1 - alpha) I + alpha A) x."""

    geometry: ClassVar[AbstractGeometry] = Euclidean()

    def step(self, field, x: Float[Array, "n d"], h) -> Float[Array, "n d"]:
        return x + h * (field(x) - x)
