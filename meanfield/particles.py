r"""Particle dynamics: continuous depth through diffrax, discrete depth as layer maps.

Continuous time (``simulate``): the tokens solve

    dx_i/dt = P_{x_i} v_i(x),   v = Attention(x; aux, prompt)

with the geometry's projection P (identity in R^d). Time stepping is a diffrax solver chosen
by the caller: fixed step (``dt=...``; Euler, RK4, ...) or adaptive with a PID controller
(``dt=None``; Tsit5, Dopri5, Dopri8 with ``rtol``/``atol``). The solve is jitted once per
problem *shape*: new values of beta, Q/K/V, x0, ts, dt or tolerances do not retrace.
It is differentiable (reverse mode through diffrax's checkpointed adjoint) and vmappable
over initial conditions and parameters.

Discrete depth (``layers``): H applications of a layer map (PostLN, PreLN, PeriLN, NGPT)
x <- step(F, x, h), saved after every layer.
"""

from __future__ import annotations

import os

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._errors import (
    SolverError,
    check_param,
    data_fault,
    is_concrete,
    param_fault,
    require,
    traced_failure,
)
from ._types import Array, Float, PRNGKeyArray, Times, TokensLike
from .geometry import AbstractGeometry, AbstractLayerMap, PostLN, Sphere
from .kernel import Attention, Chunked, TokenAux
from .kernel.attention import PromptArg
from .kernel.tokens import split_prompt
from .solvers import RK4 as RK4
from .solvers import SOLVERS as SOLVERS
from .noise import Noise, check_solver, solve_sde
from .solvers import resolve_solver


SPHERE_TOL = 1e-2
"""A fixed-step solve on the sphere fails (``RESULTS.left_sphere``) when a saved token's norm differs
from 1 by more than this (1 %): a fixed-step method's norm drift is of the order of its error, so the
steps are too large for the dynamics (Euler with 32 steps over t = 2 at beta = 1 drifts by 7e-3, RK4
with 8 steps by far less; an adaptive solve is held to its rtol/atol instead)."""


class RESULTS(diffrax.RESULTS):
    """Result codes of [`simulate`][meanfield.simulate]: diffrax's, plus the failures of the input
    and of the fixed-step state."""

    invalid_parameter = (
        "a parameter of the attention (beta, Q, K, V, W, a mask or encoding parameter) or dt is "
        "NaN, infinite or out of range (a traced value, checked in the graph)"
    )
    invalid_tokens = (
        "x0 or prompt.p holds NaN or inf, or (Sphere) tokens off the unit sphere (a traced value, "
        "checked in the graph)"
    )
    invalid_times = "ts must be strictly increasing (a traced value, checked in the graph)"
    invalid_tolerance = (
        "rtol and atol must be finite and >= 0, not both 0 (a traced value, checked in the graph)"
    )
    unsupported_data = (
        "the backend cannot serve these token positions (Splash: distinct under a causal mask, "
        "consecutive integers under a Window; a traced value, checked in the graph); use "
        "backend=Chunked()"
    )
    left_sphere = (
        f"tokens left the unit sphere by more than SPHERE_TOL = {SPHERE_TOL:g}: the fixed step dt is too "
        "large for these dynamics; lower dt or use an adaptive solver (dt=None)"
    )


class Trajectory(eqx.Module):
    """A solved particle trajectory.

    Attributes:
        ts: save times (or depths h*k for discrete layers), shape (T,).
        xs: token clouds at those times, shape (T, N, d).
        result: result code ([`RESULTS`][meanfield.particles.RESULTS]: diffrax's codes, an invalid traced parameter,
            a fixed-step state off the sphere; ``.successful`` on success).
        stats: solver statistics (number of steps, accepted/rejected steps).
    """

    ts: Float[Array, "*batch time"]
    xs: Float[Array, "*batch time n d"]
    result: RESULTS | diffrax.RESULTS | None = None
    stats: dict = eqx.field(default_factory=dict)

    @property
    def final(self) -> Float[Array, "*batch n d"]:
        """The last saved state, shape (N, d)."""
        return self.xs[..., -1, :, :]


def velocity(
    attn: Attention,
    x: TokensLike,
    *,
    geometry: AbstractGeometry = Sphere(),
    aux: TokenAux | None = None,
    prompt: PromptArg = None,
) -> Float[Array, "n d"]:
    """The right-hand side P_x v(x) of the continuous dynamics, shape (N, d)."""
    x = jnp.asarray(x)
    return geometry.project(x, attn(x, aux, prompt))


def _parallel_fault(geometry, prompt):
    """A parallel prompt lives on the tokens' geometry (e.g. on the sphere): checked like x0 (a
    concrete one raises now; a traced one gives a flag in the graph)."""
    _, parallel = split_prompt(prompt)
    if parallel is None:
        return jnp.zeros((), bool)
    return geometry.fault(parallel.p, "prompt.p")


def available_memory() -> int | None:
    """Bytes the default device can still use: the accelerator's limit, or the host's MemAvailable
    (Linux) / physical memory; None if unknown."""
    dev = jax.devices()[0]
    if dev.platform != "cpu":
        stats = dev.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def memory_estimate(
    attn: Attention,
    n: int,
    d: int,
    n_save: int,
    *,
    n_prompt: int = 0,
    itemsize: int = 8,
    stages: int = 7,
) -> dict:
    """Bytes a solve needs, roughly: the saved states (n_save N d), the solver's working states
    (``stages`` + 4 copies of N d: Tsit5 stages, the state, error estimate and dense output) and one
    attention evaluation ([`Attention.memory_bytes`][meanfield.kernel.attention.Attention.memory_bytes]). Reverse-mode gradients need more."""
    state = (int(n_save) + stages + 4) * n * d * itemsize
    field = attn.memory_bytes(n, n + n_prompt, d, itemsize)
    return {"state": state, "attention": field, "total": state + field}


def _check_memory(attn, x0, n_save, prompt, what):
    n, d = x0.shape
    shared, parallel = split_prompt(prompt)
    est = memory_estimate(
        attn,
        n,
        d,
        n_save,
        n_prompt=0 if shared is None else shared.size,
        itemsize=x0.dtype.itemsize,
    )
    avail = available_memory()
    if avail is not None and est["total"] > avail:
        gb = lambda b: f"{b / 2**30:.3g} GB"  # noqa: E731
        hint = (
            ""
            if isinstance(attn.backend, Chunked)
            else "; backend=meanfield.kernel.Chunked() bounds the attention part"
        )
        raise ValueError(
            f"{what} needs about {gb(est['total'])} (saved and working states {gb(est['state'])}, attention "
            f"{gb(est['attention'])}) but only {gb(avail)} is available: fewer tokens or save times{hint}"
        )


def _as_float(name, value, dtype):
    value = jnp.asarray(value, dtype=dtype)
    require(value.ndim == 0, f"{name} must be a scalar, got shape {value.shape}")
    return value


def simulate(
    attn: Attention,
    x0: TokensLike,
    ts: Times,
    *,
    geometry: AbstractGeometry = Sphere(),
    aux: TokenAux | None = None,
    prompt: PromptArg = None,
    solver="tsit5",
    dt=None,
    rtol=1e-6,
    atol=1e-9,
    max_steps: int = 100_000,
    throw: bool = True,
    adjoint: diffrax.AbstractAdjoint | None = None,
    noise: Noise | None = None,
    key=None,
) -> Trajectory:
    r"""Integrate dx/dt = P_x Attention(x) from ``ts[0]`` to ``ts[-1]``, saving at ``ts``.

    $$
    \frac{d x_i}{dt} = P_{x_i} v_i(x), \qquad P_x = I - x x^\top \ \text{(sphere)}, \quad P_x = I \ \text{(Euclidean)},
    $$

    with $v_i$ the field of ``attn`` ([`Attention`][meanfield.kernel.Attention]).

    Args:
        attn: the attention kernel (beta, Q, K, V, heads, mask, backend).
        x0: initial tokens, shape (N, d); on the unit sphere for ``Sphere()``.
        ts: increasing save times, shape (T,), T >= 2; integration runs from ts[0] to ts[-1].
        geometry: ``Sphere()`` (default) or ``Euclidean()``.
        aux: positions / features / masses of the tokens (default positions 0..N-1, mass 1/N).
        prompt: fixed tokens that never move: a [`Prompt`][meanfield.kernel.Prompt] (shared keys/values seen by
            every token), a [`ParallelPrompt`][meanfield.kernel.ParallelPrompt] (one own key/value per token), or a tuple of
            one of each.
        solver: a name in ``SOLVERS`` ("euler", "rk4", "tsit5", ...) or a diffrax solver.
        dt: fixed step size; ``None`` selects adaptive stepping with ``rtol``/``atol``
            (requires a solver with an error estimate, e.g. Tsit5/Dopri5/Dopri8). Saves off the
            fixed step grid are interpolated by the solver's dense output.
        max_steps: step budget (static; also bounds reverse-mode memory).
        throw: raise if the solve fails ([`SolverError`][meanfield.SolverError], from the result
            code on the host after the solve); otherwise inspect ``result``. The solve holds no
            host callback either way; under your own ``jit`` use ``throw=False`` (with
            ``throw=True`` one check runs after the solve), e.g. to lower for a TPU.
        adjoint: diffrax adjoint for gradients (default: recursive checkpointing).
        noise: a [`Noise`][meanfield.noise.Noise]: the Stratonovich SDE
            $dx_i = P_{x_i} v_i\,dt + \sigma P_{x_i} \circ dW_i + c \sum_k P_{x_i} B_k x_i \circ dW^k$
            ([`meanfield.noise`][meanfield.noise]); the solver then defaults to ``diffrax.Heun()``
            and must be a Stratonovich solver; fixed ``dt`` (exact Brownian increments) or
            ``dt=None`` (adaptive, on a virtual Brownian tree).
        key: the PRNG key of the noise (required with ``noise``): the same key gives the same path.

    Returns:
        [`Trajectory`][meanfield.Trajectory] with ``ts`` (T,) and ``xs`` (T, N, d).

    Example:
        ```python
        x0 = meanfield.sphere_uniform(jax.random.key(0), 32, 3)
        traj = meanfield.simulate(meanfield.Attention(beta=1.0), x0, jnp.linspace(0, 10, 11))
        meanfield.observables.diameter(traj.xs)   # (11,) diameter over time
        ```
    """
    require(
        isinstance(attn, Attention),
        f"attn must be a meanfield.Attention, got {type(attn).__name__}",
    )
    x0 = jnp.asarray(x0)
    require(
        x0.dtype in (jnp.float32, jnp.float64),
        f"x0 must be float32 or float64, got {x0.dtype} (half precision cannot hold the solver's tolerances)",
    )
    attn.validate(x0, aux, prompt, name="x0")
    ts = jnp.asarray(ts, dtype=x0.dtype)
    require(
        ts.ndim == 1 and ts.shape[0] >= 2,
        f"ts must be a 1-D array of at least 2 save times, got shape {ts.shape}",
    )
    if noise is not None:
        require(
            isinstance(noise, Noise), f"noise must be a meanfield.Noise, got {type(noise).__name__}"
        )
        require(key is not None, "key: a noisy solve needs a PRNG key (jax.random.key(seed))")
        solver = diffrax.Heun() if isinstance(solver, str) and solver == "tsit5" else solver
    solver = resolve_solver(solver)
    if noise is not None:
        check_solver(solver)
        require(
            dt is not None or isinstance(solver, diffrax.AbstractAdaptiveSolver),
            f"dt: adaptive noisy stepping needs a solver with an error estimate (Heun, SPaRK); "
            f"give a fixed step dt for {type(solver).__name__}",
        )
    if dt is None and noise is None:
        require(
            not isinstance(solver, (diffrax.Euler, RK4)),
            f"dt: adaptive stepping (dt=None) needs a solver with an error estimate; "
            f"give a fixed step dt for {type(solver).__name__}",
        )
    else:
        dt = _as_float("dt", dt, x0.dtype)
        check_param("dt", dt, lo=0, lo_open=True)
    _check_memory(attn, x0, ts.shape[0], prompt, "simulate")
    # data checks: concrete values raise ValueError now; traced ones (under a caller's jit or
    # vmap) are flags in the graph that become the result code: no host callback in the solve
    bad_tokens = geometry.fault(x0, "x0") | _parallel_fault(geometry, prompt)
    bad_times = data_fault(~jnp.all(jnp.diff(ts) > 0), "ts must be strictly increasing")
    rtol = _as_float("rtol", rtol, x0.dtype)
    atol = _as_float("atol", atol, x0.dtype)
    bad_tol = jnp.zeros((), bool)
    if dt is None:  # the tolerances drive the step: negative, NaN or both zero would mislead it
        got = (
            f" (got rtol = {float(rtol):g}, atol = {float(atol):g})"
            if is_concrete(rtol, atol)
            else ""
        )
        bad_tol = data_fault(
            ~(
                jnp.isfinite(rtol)
                & jnp.isfinite(atol)
                & (rtol >= 0)
                & (atol >= 0)
                & (rtol + atol > 0)
            ),
            "rtol and atol must be finite and >= 0, not both 0" + got,
        )
    attn.check_parameters()  # concrete values: refused now, before any solve
    bad_data = attn.data_fault(x0, aux, prompt)
    # traced parameters out of range: the point's result is RESULTS.invalid_parameter
    bad_param = attn.parameter_fault() | (
        jnp.zeros((), bool) if dt is None else param_fault(dt, lo=0, lo_open=True)
    )
    if noise is not None:  # a traced noise amplitude out of range: that point's invalid_parameter
        bad_param = bad_param | param_fault(noise.sigma, lo=0) | param_fault(noise.common, lo=0)
    fault = RESULTS.successful
    for flag, code in (
        (bad_data, RESULTS.unsupported_data),
        (bad_tol, RESULTS.invalid_tolerance),
        (bad_times, RESULTS.invalid_times),
        (bad_tokens, RESULTS.invalid_tokens),
        (bad_param, RESULTS.invalid_parameter),
    ):  # the first in the order of the eager checks wins
        fault = RESULTS.where(flag, code, fault)
    if noise is not None:
        sts, xs, res, stats = solve_sde(
            attn,
            x0,
            ts,
            geometry,
            aux,
            prompt,
            noise,
            key,
            solver,
            dt,
            rtol,
            atol,
            int(max_steps),
            fault != RESULTS.successful,
        )
        traj = _finish(sts, xs, RESULTS.promote(res), stats, fault)
        return _raise_on_failure(traj) if throw else traj
    traj = _simulate(
        attn,
        x0,
        ts,
        geometry,
        aux,
        prompt,
        solver,
        dt,
        rtol,
        atol,
        int(max_steps),
        adjoint,
        fault,
    )
    return _raise_on_failure(traj) if throw else traj


_INPUT_CODES = (
    "invalid_parameter",
    "invalid_tokens",
    "invalid_times",
    "invalid_tolerance",
    "unsupported_data",
)


def _raise_on_failure(traj: Trajectory) -> Trajectory:
    """``throw=True``, after the solve: a concrete failed result raises
    [`SolverError`][meanfield.SolverError] on the host. Under a caller's ``jit``/``vmap`` (a traced
    result) one check runs after the solve: the line is printed (``meanfield: ...``) and
    ``eqx.branched_error_if`` stops the program with it; a traced parameter out of range stays its
    point's ``invalid_parameter`` code, so one bad point of a batch does not stop the others. The
    solve itself holds no host callback (``throw=False`` has none at all, so it lowers for every
    platform)."""
    if is_concrete(traj.result._value):
        if bool(traj.result != RESULTS.successful):
            raise SolverError(f"simulate failed: {RESULTS[traj.result]}")
        return traj
    failed = (traj.result != RESULTS.successful) & (traj.result != RESULTS.invalid_parameter)
    messages = [_failure_line(i) for i in range(len(RESULTS._index_to_message))]
    jax.debug.callback(_announce_failure, failed, traj.result._value)
    code = jnp.max(jnp.where(failed, traj.result._value, 0))
    xs = eqx.branched_error_if(traj.xs, jnp.any(failed), code, messages)
    return eqx.tree_at(lambda t: t.xs, traj, xs)


def _failure_line(index: int) -> str:
    message = RESULTS._index_to_message[index]
    if any(message == RESULTS._index_to_message[getattr(RESULTS, c)._value] for c in _INPUT_CODES):
        return "error: " + message.replace(" (a traced value, checked in the graph)", "")
    return "simulate failed: " + message


def _announce_failure(failed, code) -> None:
    failed, code = np.asarray(failed), np.asarray(code)
    for i in zip(*np.nonzero(failed)) if failed.ndim else ([()] if failed else []):
        line = _failure_line(int(code[i]))
        traced_failure(line, ValueError if line.startswith("error: ") else SolverError)


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)  # counts traces: eqx.debug.get_num_traces(_simulate)
def _simulate(
    attn, x0, ts, geometry, aux, prompt, solver, dt, rtol, atol, max_steps, adjoint, fault
):

    bad = fault != RESULTS.successful

    def rhs(t, y, args):  # a faulty point is not integrated (its result says why)
        v = velocity(attn, y, geometry=geometry, aux=aux, prompt=prompt)
        return jnp.where(bad, jnp.zeros_like(v), v)

    if dt is None:
        controller = diffrax.PIDController(rtol=rtol, atol=atol)
    else:
        controller = diffrax.ConstantStepSize()
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(rhs),
        solver,
        t0=ts[0],
        t1=ts[-1],
        dt0=dt,
        y0=x0,
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=controller,
        max_steps=max_steps,
        throw=False,  # the result code, raised on the host after the solve (no callback inside)
        adjoint=diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint,
    )
    result = RESULTS.promote(sol.result)
    xs = sol.ys
    if dt is not None and isinstance(geometry, Sphere):  # fixed steps: hold the state to the sphere
        off = ~(
            jnp.max(jnp.abs(jnp.linalg.norm(xs, axis=-1) - 1.0), axis=-1) <= SPHERE_TOL
        )  # per save (NaN: off)
        result = RESULTS.where(
            (result == RESULTS.successful) & jnp.any(off), RESULTS.left_sphere, result
        )
        gone = jnp.cumsum(off) > 0  # NaN from the first save off the sphere on
        xs = jnp.where(gone[:, None, None], jnp.nan, xs)
    return _finish(sol.ts, xs, result, sol.stats, fault)


def _finish(ts, xs, result, stats, fault) -> Trajectory:
    """The trajectory of a solve (ODE or SDE): a point with an input ``fault`` keeps that code
    and NaN states; the others keep the solve's ``result``."""
    bad = fault != RESULTS.successful
    result = RESULTS.where(bad, fault, result)
    return Trajectory(ts=ts, xs=jnp.where(bad, jnp.nan, xs), result=result, stats=dict(stats))


def layers(
    attn: Attention,
    x0: TokensLike,
    n_layers: int,
    *,
    h=1.0,
    norm: AbstractLayerMap = PostLN(),
    aux: TokenAux | None = None,
    prompt: PromptArg = None,
) -> Trajectory:
    """Run ``n_layers`` discrete layers x <- norm.step(Attention, x, h); saves every layer.

    Args:
        attn: the attention kernel.
        x0: input tokens (N, d); on the sphere for PostLN/NGPT.
        n_layers: depth H (static).
        h: step size (the residual weight); traced, so changing it does not retrace.
        norm: ``PostLN()``, ``PreLN()``, ``PeriLN()`` or ``NGPT()``.

    Returns:
        [`Trajectory`][meanfield.Trajectory] with ``ts = h * [0, 1, ..., H]`` and ``xs`` of shape (H+1, N, d).

    Example:
        ```python
        out = meanfield.layers(meanfield.Attention(beta=4.0), x0, 12, h=0.5)
        ```
    """
    require(
        isinstance(attn, Attention),
        f"attn must be a meanfield.Attention, got {type(attn).__name__}",
    )
    require(
        isinstance(norm, AbstractLayerMap),
        f"norm must be a layer map (PostLN, PreLN, ...), got {norm!r}",
    )
    require(int(n_layers) >= 1, f"n_layers must be >= 1, got {n_layers}")
    x0 = jnp.asarray(x0)
    attn.validate(x0, aux, prompt, name="x0")
    h = _as_float("h", h, x0.dtype)
    check_param("h", h, lo=0, lo_open=True)
    attn.check_parameters()
    _check_memory(attn, x0, int(n_layers) + 1, prompt, "layers")
    fault = (
        norm.geometry.fault(x0, "x0")
        | _parallel_fault(norm.geometry, prompt)
        | data_fault(~(h > 0), "h must be > 0")
        | attn.data_fault(x0, aux, prompt)
        | attn.parameter_fault()
    )  # traced: the result code (RESULTS.invalid_parameter) and NaN layers, no host callback
    return _layers(attn, x0, int(n_layers), h, norm, aux, prompt, fault)


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)  # counts traces: eqx.debug.get_num_traces(_layers)
def _layers(attn, x0, n_layers, h, norm, aux, prompt, fault):

    def field(y):
        return attn(y, aux, prompt)

    def body(x, _):
        x = norm.step(field, x, h)
        return x, x

    _, xs = jax.lax.scan(body, x0, None, length=n_layers)
    xs = jnp.concatenate([x0[None], xs], axis=0)
    ts = h * jnp.arange(n_layers + 1, dtype=x0.dtype)
    result = RESULTS.where(fault, RESULTS.invalid_parameter, RESULTS.successful)
    return Trajectory(ts=ts, xs=jnp.where(fault, jnp.nan, xs), result=result, stats={})


def sphere_uniform(key: PRNGKeyArray, n: int, d: int, dtype=None) -> Float[Array, "n d"]:
    """N i.i.d. uniform points on S^{d-1} (normalised Gaussians), shape (N, d).

    ``dtype`` defaults to JAX's default float (float64 when x64 is enabled).
    """
    x = jax.random.normal(key, (n, d), dtype=dtype or float)
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)
