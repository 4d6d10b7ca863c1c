r"""Noise for the particle dynamics: idiosyncratic Brownian motion per token and common noise through
random linear maps, integrated in the Stratonovich sense with diffrax's SDE machinery.

With ``simulate(attn, x0, ts, noise=Noise(sigma, common=c), key=key)`` each token follows

$$
dx_i = P_{x_i} v_i(x)\, dt + \sigma\, P_{x_i} \circ dW_i + c \sum_{k=1}^{K} P_{x_i} B_k x_i \circ dW^k ,
$$

$W_i$ independent Brownian motions in $\mathbb{R}^d$ (one per token), $W^k$ scalar Brownian motions
shared by all tokens, $B_k$ fixed $d \times d$ matrices (general, not skew: the random linear layers of
Engel & Shalova, arXiv 2603.06187; entries i.i.d. $N(0, 1/d)$ drawn from the key unless given).
Stratonovich calculus keeps the exact solution on the sphere and makes the idiosyncratic generator
$(\sigma^2/2)\Delta_{S^{d-1}}$, so the density follows $\partial_t\rho + \operatorname{div}(\rho X[\rho])
= (\sigma^2/2)\Delta\rho$ (Mun & Rosenzweig 2606.05140's noisy transformer with coupling
$K = a/\sigma^2$). With ``rotation=True`` the $B_k$ are skew, $P_x B_k x = B_k x$, and the common noise
rotates all tokens together: $\langle x_i, x_j\rangle$ is unchanged (the control experiment).

Engel & Shalova's Random Quadratic Form (``model="rqf"``): $dX = -P_X \circ dQ_t\, X$ with
$Q_t = (B_t + B_t^\top)/2$, $B_t$ a $d \times d$ matrix of independent standard Brownian motions.
It is the common term above with the $K = d^2$ maps $(E_{ij} + E_{ji})/2$, one Brownian motion
$W^{ij}$ each, and amplitude ``common`` $= c$ (the sign is immaterial in law); with
``rotation=True`` the maps are $(E_{ij} - E_{ji})/2$. The tokens then synchronise up to sign at
the almost-sure rate $c^2$ for every $d$ (`meanfield.theory.rqf_synchronisation_rate`).

Staying on the sphere: a Stratonovich scheme's step leaves the sphere by $O(\Delta t^{3/2})$ (the
tangent increments add $|P_x \Delta W|^2$ to $|x|^2$ at second order); each step is followed by the
retraction $x \mapsto x/|x|$ (`Retracted`), a projection method whose correction is of the order of
the local error, so it keeps the scheme's weak order (measured in the tests: the law of Brownian
motion on $S^{d-1}$, $E\langle x_t, x_0\rangle = e^{-(d-1)\sigma^2 t/2}$) and holds $|x_i| = 1$ to
round-off. Saved states between steps are interpolants, retracted too.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx

from ._errors import check_param, require
from ._types import Array
from .solvers import DelegatingSolver

STRATONOVICH_ERK = (diffrax.Heun, diffrax.Midpoint, diffrax.Ralston)
"""Explicit Runge--Kutta solvers that converge to the Stratonovich solution of an SDE (diffrax's
documentation); with diffrax's ``AbstractStratonovichSolver`` subclasses (``EulerHeun``, ``SPaRK``,
``ReversibleHeun``, ...) they are the solvers ``simulate`` accepts with noise."""


class Noise(eqx.Module):
    """Noise of the particle dynamics (module docstring): idiosyncratic amplitude ``sigma``,
    common-noise amplitude ``common`` through ``n_common`` linear maps ``maps`` (K, d, d) (drawn
    from the key, entries N(0, 1/d), when None); ``rotation``: skew maps (rotations, the control
    that leaves every inner product unchanged).

    ``model`` names the common noise's convention: ``"layers"`` (the maps above, random linear
    layers) or ``"rqf"`` (Engel & Shalova's Random Quadratic Form, arXiv 2603.06187: the d^2 maps
    (E_ij + E_ji)/2, so the noise is P_x dQ_t x with Q_t a symmetric matrix Brownian motion;
    ``maps`` and ``n_common`` unused)."""

    sigma: float | Array = 0.0
    common: float | Array = 0.0
    n_common: int = eqx.field(default=1, static=True)
    maps: Array | None = None
    rotation: bool = eqx.field(default=False, static=True)
    model: str = eqx.field(default="layers", static=True)

    def __check_init__(self):
        check_param("sigma", self.sigma, lo=0)
        check_param("common", self.common, lo=0)
        require(int(self.n_common) >= 1, f"n_common must be >= 1, got {self.n_common}")
        require(
            self.model in ("layers", "rqf"),
            f"model must be 'layers' or 'rqf' (Engel & Shalova), got {self.model!r}",
        )
        require(
            self.model == "layers" or self.maps is None,
            "maps must be None with model='rqf' (its maps are fixed by the model)",
        )
        if self.maps is not None:
            require(
                jnp.ndim(self.maps) == 3 and self.maps.shape[1] == self.maps.shape[2],
                f"maps must have shape (K, d, d), got {jnp.shape(self.maps)}",
            )

    def linear_maps(self, key, d: int, dtype) -> Array:
        """The common-noise maps B_k, (K, d, d): ``maps``, or drawn from ``key``; skew under
        ``rotation``."""
        if self.model == "rqf":
            e = jnp.eye(d * d, dtype=dtype).reshape(d * d, d, d)
            sign = -1.0 if self.rotation else 1.0
            return (e + sign * jnp.swapaxes(e, 1, 2)) / 2
        if self.maps is not None:
            b = jnp.asarray(self.maps, dtype)
            require(b.shape[1] == d, f"maps have dimension {b.shape[1]}, the tokens d = {d}")
        else:
            b = jax.random.normal(key, (int(self.n_common), d, d), dtype) / jnp.sqrt(d)
        return (b - jnp.swapaxes(b, 1, 2)) / jnp.sqrt(2.0) if self.rotation else b

    def control_shape(self, n: int, d: int, dtype) -> dict:
        """The Brownian motion's structure: one d-vector per token and K shared scalars."""
        if self.model == "rqf":
            k = d * d
        else:
            k = self.n_common if self.maps is None else int(self.maps.shape[0])
        return {
            "tokens": jax.ShapeDtypeStruct((n, d), dtype),
            "common": jax.ShapeDtypeStruct((k,), dtype),
        }


def diffusion_term(noise: Noise, maps: Array, project, brownian) -> diffrax.ControlTerm:
    """The control term sigma P_x dW_i + c sum_k P_x B_k x dW^k as a linear operator on dW."""

    def vf(t, x, args):
        def apply(dw):
            common = jnp.einsum("k,kde,ne->nd", dw["common"], maps, x)
            return project(x, noise.sigma * dw["tokens"] + noise.common * common)

        return lx.FunctionLinearOperator(apply, brownian.shape)

    return diffrax.ControlTerm(vf, brownian)


def check_solver(solver) -> None:
    """A solver for the noisy dynamics must converge to the Stratonovich solution."""
    require(
        isinstance(solver, (diffrax.AbstractStratonovichSolver, *STRATONOVICH_ERK)),
        f"solver {type(solver).__name__} is not a Stratonovich solver; with noise use diffrax.Heun(), "
        "EulerHeun(), Midpoint(), SPaRK() or another AbstractStratonovichSolver",
    )


class Retracted(DelegatingSolver):
    """``solver``'s step followed by the retraction onto the sphere (module docstring); every other
    property is the wrapped solver's."""

    retract: object = eqx.field(static=True)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        y1, err, dense, state, result = self.solver.step(
            terms,
            t0,
            t1,
            y0,
            args,
            solver_state,
            True,  # no stage reused across the retraction
        )
        return self.retract(y1), err, dense, state, result


def brownian_motion(noise: Noise, key, ts, n: int, d: int, dtype, dt):
    """The driving Brownian motion: a ``VirtualBrownianTree`` over [ts[0], ts[-1]] resolved to
    dt / 16 (fixed steps) or span * 2^-14 (adaptive): consistent under step rejection and
    reverse-mode recomputation (diffrax's ``UnsafeBrownianPath`` is neither). The same key gives
    the same path."""
    shape = noise.control_shape(n, d, dtype)
    tol = (ts[-1] - ts[0]) * 2.0**-14 if dt is None else dt / 16
    return diffrax.VirtualBrownianTree(ts[0], ts[-1], tol=tol, shape=shape, key=key)


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)  # counts traces: eqx.debug.get_num_traces(solve_sde)
def solve_sde(
    attn, x0, ts, geometry, aux, prompt, noise, key, solver, dt, rtol, atol, max_steps, bad
):
    """The noisy particle solve (module docstring) of ``simulate(..., noise=...)``: (ts, xs (T, N, d),
    diffrax result, stats). ``bad``: a faulty point is not integrated."""
    n, d = x0.shape
    k_path, k_maps = jax.random.split(key)
    maps = noise.linear_maps(k_maps, d, x0.dtype)
    brownian = brownian_motion(noise, k_path, ts, n, d, x0.dtype, dt)
    live = jnp.where(bad, 0.0, 1.0).astype(x0.dtype)

    def drift(t, y, args):
        return live * geometry.project(y, attn(y, aux, prompt))

    scaled = eqx.tree_at(
        lambda nz: (nz.sigma, nz.common), noise, (live * noise.sigma, live * noise.common)
    )
    terms = diffrax.MultiTerm(
        diffrax.ODETerm(drift), diffusion_term(scaled, maps, geometry.project, brownian)
    )
    controller = (
        diffrax.ConstantStepSize()
        if dt is not None
        else diffrax.PIDController(rtol=rtol, atol=atol)
    )
    sol = diffrax.diffeqsolve(
        terms,
        Retracted(solver, geometry.retract),
        t0=ts[0],
        t1=ts[-1],
        dt0=dt,
        y0=x0,
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=controller,
        max_steps=max_steps,
        throw=False,
    )
    return sol.ts, geometry.retract(sol.ys), sol.result, sol.stats
