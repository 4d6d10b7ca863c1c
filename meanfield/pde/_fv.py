r"""The finite-volume base shared by the density solvers ([`meanfield.pde.CircleMeanField`][meanfield.pde.circle.CircleMeanField],
[`meanfield.pde.KineticMeanField`][meanfield.pde.kinetic.KineticMeanField]): the theta grid, the attention kernels on it, the periodic
MUSCL flux divergence, the time-step choice and the diffrax integration.

Periodic grid of M cells of width h = 2 pi / M along the last axis; rho holds cell averages and u
the velocity at the right face of each cell (face i + 1/2). The face flux is upwind with a
minmod-limited linear reconstruction, so the update -(F_{i+1/2} - F_{i-1/2}) / h is conservative
(total mass changes by round-off only) and, with an SSP stepper (Euler, Heun = SSPRK2) under
max|u| dt <= h/2, positivity preserving.

Time step (``dt=None``): the step adapts throughout the solve, from the current state. Before
every step

    dt = min(cfl h / max|u|,  accuracy / r),   r = max(r_lin, max_i |u_{i+1} - u_i| / h),

where r_lin = max_n |lambda_n| is the fastest linear rate about the uniform state, from the
kernels' Fourier coefficients (SA: lambda_n = -i n (g_n - u_0 K_n) / K_0; USA: lambda_n =
-i n g_n / 2 pi times the coupling's largest row sum; the advection by a uniform drift u_0 is
left to the CFL bound). The CFL bound keeps positivity; the rate bound keeps accuracy near the
uniform state, where max|u| -> 0 and the CFL step alone would become the whole save interval. SSP
Heun integrates e^{lambda t} with a relative error of about (lambda dt)^2 / 6 in the rate, so the
default ``accuracy`` = 0.05 targets ~4e-4 on the fastest linear mode (less on slower ones).

The rule is applied by a diffrax step-size controller (`CFLController`) at the end of every
step, on the new state, so the step follows the velocity as clusters form, whatever the save
times (steps are clipped to land on them). A step is redone with the new dt when its end state
is non-finite or negative, or when the step already breaks the positivity bound max|u| dt <= h/2
at its end (the velocity grew within the step); after ``MAX_REDO`` redos in a row it is kept and
the solve fails (below).

Failure: a state the solver cannot stand behind stops the solve (a diffrax event): non-finite
values, or a negative density beyond round-off, min rho < -NEG_TOL eps max rho, under every solver
(the SSP steppers, Euler and Heun, keep the density non-negative within the CFL bound; any other
solver's undershoot is a failure all the same). ``solve(throw=True)`` (default)
raises [`meanfield.SolverError`][meanfield.SolverError] naming the time reached and the remedy;
``throw=False`` returns the solution with a [`RESULTS`][meanfield.pde.RESULTS] code and NaN at the save times past
the failure (so a vmapped sweep is not killed by one bad point).
"""

from __future__ import annotations

import abc
import functools

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._errors import SolverError, check_param, data_fault, is_concrete, param_fault, require, traced_failure
from .._types import Array

CFL = 0.4
"""Default CFL number of the finite-volume solvers."""
ACCURACY = 0.05
"""Default accuracy: the step is at most ACCURACY / (the fastest linear rate)."""


def minmod(a, b):
    return jnp.where(a * b > 0, jnp.sign(a) * jnp.minimum(jnp.abs(a), jnp.abs(b)), 0.0)


def muscl_divergence(rho: Array, u: Array, h) -> Array:
    """-(F_{i+1/2} - F_{i-1/2}) / h along the last axis (periodic), upwind MUSCL-minmod fluxes."""
    right = jnp.roll(rho, -1, axis=-1)
    slope = minmod(rho - jnp.roll(rho, 1, axis=-1), right - rho)
    left_state = rho + 0.5 * slope  # at face i+1/2 from cell i
    right_state = right - 0.5 * jnp.roll(slope, -1, axis=-1)  # at face i+1/2 from cell i+1
    flux = jnp.where(u > 0, u * left_state, u * right_state)
    return -(flux - jnp.roll(flux, 1, axis=-1)) / h


def periodic_conv(kernel_hat: Array, rho: Array, h, m: int) -> Array:
    """h * sum_j k(face_i - centre_j) rho_j for every face, by FFT; ``kernel_hat`` = rfft of the
    kernel sampled at (j + 1/2) h (face i minus cell j)."""
    return h * jnp.fft.irfft(kernel_hat * jnp.fft.rfft(rho, axis=-1), n=m, axis=-1)


class AbstractDensitySolver(eqx.Module):
    """What `cfl_solve` and `CFLController` need of a density solver: ``rhs``, the
    grid spacing ``h`` of the CFL bound, the step rule (``_step_and_speed``), the fastest linear
    rate, and the failure tests of a state (``is_bad``, ``failure_code``). The finite-volume
    solvers on S^1 and the spectral solver on S^2 share this one integration layer."""

    @abc.abstractmethod
    def rhs(self, t, y, args=None) -> Array: ...

    @abc.abstractmethod
    def linear_rate_bound(self, dtype=float) -> Array: ...

    @abc.abstractmethod
    def _step_and_speed(self, y, cfl, accuracy, rate_bound=None): ...

    def is_bad(self, y, positive: bool):
        """A state the solver cannot stand behind (module docstring): non-finite, or negative
        beyond round-off when ``positive``."""
        return state_is_bad(y, positive)

    def failure_code(self, y):
        """The [`RESULTS`][meanfield.pde.RESULTS] code of a state for which `is_bad` fired."""
        return RESULTS.where(jnp.all(jnp.isfinite(y)), RESULTS.negative_density, RESULTS.nonfinite_density)

    def _integrate(self, y0, ts, shape, name, *, dt, cfl, accuracy, solver, max_steps, throw, adjoint=None):
        """Checked arguments, then `cfl_solve`; returns (ts, states at ts, result, stats)."""
        y0 = jnp.asarray(y0)
        require(y0.shape == shape, f"{name} must have shape {shape}, got {y0.shape}")
        require(jnp.issubdtype(y0.dtype, jnp.floating), f"{name} must be a floating-point array, got {y0.dtype}")
        ts = jnp.asarray(ts, y0.dtype)
        require(ts.ndim == 1 and ts.shape[0] >= 2, f"ts must be a 1-D array of >= 2 times, got shape {ts.shape}")
        # data checks: concrete values raise at once; traced ones fold into the result code (no host callback)
        fault = self.parameter_fault()
        fault = fault | data_fault(~jnp.all(jnp.isfinite(y0)) | ~jnp.all(y0 >= -self.initial_tolerance(y0)),
                                   f"{name} must be finite and non-negative")
        fault = fault | data_fault(~(jnp.sum(y0) > 0), f"{name} must have a positive mass (it is zero everywhere)")
        fault = fault | data_fault(~jnp.all(jnp.diff(ts) >= 0) | ~jnp.all(jnp.isfinite(ts)),
                                   "ts must be finite and non-decreasing")
        if dt is None:
            require(is_real_in(cfl, 0, 0.5), f"cfl must be in (0, 1/2], got {cfl}")
            require(is_real_in(accuracy, 0, 1), f"accuracy must be in (0, 1], got {accuracy}")
            step = (jnp.asarray(cfl, y0.dtype), jnp.asarray(accuracy, y0.dtype))
        else:
            check_param("dt", dt, lo=0, lo_open=True)
            step = jnp.asarray(dt, y0.dtype)
            fault = fault | param_fault(step, lo=0, lo_open=True)
        require(int(max_steps) >= 1, f"max_steps must be >= 1, got {max_steps}")
        solver = diffrax.Heun() if solver is None else solver
        require(isinstance(solver, diffrax.AbstractSolver), f"solver must be a diffrax solver, got {type(solver).__name__}")
        ys, result, t_end, stats = cfl_solve(self, y0, ts, step, dt is None, solver, int(max_steps), adjoint, fault)
        if throw:
            ys = raise_on_failure(type(self).__name__, ys, result, t_end, ts[-1])
        return ts, ys, result, stats

    def initial_tolerance(self, y0):
        """How far below zero an initial state may dip (0: none)."""
        return jnp.zeros((), y0.dtype)

    @abc.abstractmethod
    def parameter_fault(self) -> Array:
        """True (a scalar computed in the graph) when a parameter of the solver is NaN, infinite or out
        of range. Concrete parameters are refused by the constructor; traced ones (under a user's
        ``vmap``/``jit``) make the solve return ``RESULTS.invalid_parameter``."""


class AbstractFiniteVolume(AbstractDensitySolver):
    """A density on M periodic theta cells moved by an attention velocity (see module docstring).

    Subclasses hold the fields ``m``, ``beta``, ``a``, ``b`` (V = a I + b J), ``form`` and implement
    `face_velocity` (and `usa_gain` when their USA field mixes several rows)."""

    m: eqx.AbstractVar[int]
    beta: eqx.AbstractVar[Array]
    a: eqx.AbstractVar[Array]
    b: eqx.AbstractVar[Array]
    form: eqx.AbstractVar[str]

    @abc.abstractmethod
    def face_velocity(self, rho: Array) -> Array:
        """u at the faces (i + 1) h of every row, the shape of ``rho``."""

    def usa_gain(self) -> Array:
        """Largest total key weight a row sees (multiplies the USA linear rates); 1 for one row."""
        return jnp.asarray(1.0)

    @property
    def h(self) -> float:
        return 2 * np.pi / self.m

    @property
    def theta(self) -> Array:
        """Cell centres (i + 1/2) h."""
        return (jnp.arange(self.m) + 0.5) * self.h

    def kernels(self, offsets: Array) -> tuple[Array, Array]:
        """K(p) = e^{beta cos p} and g(p) = K(p) (-a sin p + b cos p) at the angle offsets p."""
        beta, a, b = (v.astype(offsets.dtype) for v in (self.beta, self.a, self.b))
        k = jnp.exp(beta * jnp.cos(offsets))
        return k, k * (-a * jnp.sin(offsets) + b * jnp.cos(offsets))

    def kernel_hats(self, dtype) -> tuple[Array, Array]:
        """rfft of K and g at the face-minus-centre offsets (j + 1/2) h, as `periodic_conv` uses."""
        k, g = self.kernels((jnp.arange(self.m, dtype=dtype) + 0.5) * self.h)
        return jnp.fft.rfft(k), jnp.fft.rfft(g)

    def linear_rate_bound(self, dtype=float) -> Array:
        """r_lin = max_n |lambda_n|, the fastest linear rate about the uniform state (module docstring)."""
        k, g = self.kernels(jnp.arange(self.m, dtype=dtype) * self.h)
        kh, gh = self.h * jnp.fft.rfft(k), self.h * jnp.fft.rfft(g)
        n = jnp.arange(kh.shape[0], dtype=dtype)
        if self.form == "USA":
            rates = n * jnp.abs(gh) / (2 * np.pi) * self.usa_gain().astype(dtype)
        else:
            u0 = gh[0] / kh[0]
            rates = n * jnp.abs(gh - u0 * kh) / jnp.abs(kh[0])
        return jnp.max(rates)

    def rhs(self, t, rho, args=None) -> Array:
        """-(F_{i+1/2} - F_{i-1/2}) / h with upwind, minmod-limited MUSCL fluxes."""
        return muscl_divergence(rho, self.face_velocity(rho), self.h)

    def max_speed(self, rho) -> Array:
        return jnp.max(jnp.abs(self.face_velocity(rho)))

    def default_step(self, rho, cfl, accuracy, rate_bound=None) -> Array:
        """min(cfl h / max|u|, accuracy / r) at the state ``rho`` (module docstring);
        ``rate_bound``: r_lin if already computed."""
        return self._step_and_speed(rho, cfl, accuracy, rate_bound)[0]

    def _step_and_speed(self, rho, cfl, accuracy, rate_bound=None):
        u = self.face_velocity(rho)
        speed = jnp.max(jnp.abs(u))
        grad = jnp.max(jnp.abs(u - jnp.roll(u, 1, axis=-1))) / self.h
        r_lin = self.linear_rate_bound(rho.dtype) if rate_bound is None else rate_bound
        rate = jnp.maximum(r_lin, grad)
        dt = jnp.minimum(cfl * self.h / jnp.maximum(speed, 1e-30), accuracy / jnp.maximum(rate, 1e-30))
        return dt, speed


def is_real_in(value, lo, hi) -> bool:
    """``lo < value <= hi`` for a concrete real number (NaN and inf are out)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return False
    return bool(np.isfinite(v)) and lo < v <= hi


class RESULTS(diffrax.RESULTS):
    """Result codes of the finite-volume solvers: diffrax's, plus the two failures of the state."""

    nonfinite_density = ("the density became non-finite: lower cfl or dt (or keep the default adaptive step, "
                         "dt=None), or use more cells")
    negative_density = ("the density became negative beyond round-off (a step broke the positivity bound "
                        "max|u| dt <= h/2, or a solver other than Euler/Heun undershot): lower cfl or dt, keep the "
                        "default adaptive step (dt=None), or use the default solver (SSP Heun)")
    invalid_parameter = ("a parameter (beta, a, b, lam, prompt angles or weights, dt, the initial density or the "
                         "save times) is NaN, infinite or out of range: fix the input (a traced value, checked in "
                         "the graph)")
    unresolved = ("the density is no longer resolved by the band limit (spectral tail energy or a negative "
                  "density beyond round-off): use a larger band limit L (measured at beta >= 4: L = 16 resolves "
                  "about 2 e-foldings of the fastest linear rate r, and each doubling of L about one more: "
                  "L ~ 16 * 2^(r t - 2); docs: PDE solvers, resolution rule), or stop earlier")


NEG_TOL = 100
"""A negative cell average below -NEG_TOL eps max(rho) (eps of the dtype) is a failure."""
MAX_REDO = 8
"""Redos of one step (each with the step re-picked from the rejected state, or halved) before the
step is kept and the failure checks decide."""


def cell_count(name: str, value, least: int = 8) -> int:
    """A number of cells: an integer (an int, a NumPy integer or an integral float) of at least ``least``."""
    try:
        ok = float(value) == int(value)
    except (TypeError, ValueError, OverflowError):
        ok = False
    require(ok and int(value) >= least, f"{name} must be an integer number of cells >= {least}, got {value!r}")
    return int(value)


def sa_finish(num: Array, den: Array) -> Array:
    """The SA field N / D where D > 0, and 0 where a row sees no mass (D = 0: the strict causal first
    row, an all-zero row), with a gradient that stays finite there."""
    pos = den > 0
    return jnp.where(pos, num / jnp.where(pos, den, 1.0), 0.0)


def state_is_bad(y, positive: bool):
    """Non-finite anywhere, or (``positive``) a cell below -NEG_TOL eps max|y|."""
    bad = ~jnp.all(jnp.isfinite(y))
    if positive:
        tol = NEG_TOL * jnp.finfo(y.dtype).eps
        bad = bad | (jnp.min(y) < -tol * jnp.max(jnp.abs(y)))
    return bad


class CFLController(diffrax.AbstractStepSizeController):
    """The finite-volume step rule as a diffrax step-size controller (module docstring).

    ``adaptive``: dt = min(cfl h / max|u|, accuracy / r) re-picked on the state at the end of every
    step, a step redone when its end state is bad or breaks max|u| dt <= h/2; otherwise the fixed
    ``dt`` (a bad state then fails at once). Either way every step is clipped so that the solve
    lands exactly on each save time ``ts``."""

    pde: AbstractDensitySolver
    ts: Array
    step: Array | tuple[Array, Array]
    rate_bound: Array
    adaptive: bool = eqx.field(static=True)
    positive: bool = eqx.field(static=True)

    def wrap(self, direction):
        return self

    def _clip(self, t0, t1):
        """t1, or the first save time after t0 if that comes sooner."""
        i = jnp.minimum(jnp.searchsorted(self.ts, t0, side="right"), self.ts.shape[0] - 1)
        return jnp.minimum(t1, jnp.where(self.ts[i] > t0, self.ts[i], t1))

    def _dt(self, y):
        if not self.adaptive:
            return self.step, jnp.zeros((), y.dtype)
        return self.pde._step_and_speed(y, *self.step, self.rate_bound)

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        dt, _ = self._dt(y0)
        return self._clip(t0, t0 + dt), jnp.zeros((), jnp.int32)

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state):
        taken = t1 - t0
        dt, speed = self._dt(y1_candidate)
        if self.adaptive:
            bad = self.pde.is_bad(y1_candidate, self.positive) | ~jnp.isfinite(dt)
            redo = (bad | (speed * taken > 0.5 * self.pde.h)) & (controller_state < MAX_REDO)
            dt = jnp.where(bad, 0.5 * taken, jnp.minimum(dt, jnp.where(redo, 0.5 * taken, jnp.inf)))
        else:
            redo = jnp.zeros((), bool)
        keep = ~redo
        next_t0 = jnp.where(keep, t1, t0)
        next_t1 = self._clip(next_t0, next_t0 + jnp.maximum(dt, 1e-30))
        count = jnp.where(keep, 0, controller_state + 1)
        return keep, next_t0, next_t1, False, count, diffrax.RESULTS.successful


@eqx.filter_jit
def cfl_solve(pde, y0, ts, step, adaptive: bool, solver, max_steps: int, adjoint=None, fault=None):
    """Integrate ``pde.rhs`` from ts[0] to ts[-1] under `CFLController`.

    Returns (states at every ts stacked, a [`RESULTS`][meanfield.pde.RESULTS] code, the time reached, stats);
    past a failure the states are NaN. ``adaptive``: ``step`` = (cfl, accuracy); otherwise
    ``step`` is dt itself. ``adjoint``: a diffrax adjoint (``diffrax.ForwardMode()`` for
    forward-mode derivatives; default reverse-mode checkpointing)."""
    adjoint = diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint
    # a negative density is a failure under every solver: the scheme keeps it non-negative only under
    # the SSP steppers within the CFL bound, and any other solver's undershoot is caught here too
    positive = True
    rate = pde.linear_rate_bound(y0.dtype) if adaptive else jnp.zeros((), y0.dtype)
    controller = CFLController(pde, ts, step, rate, adaptive, positive)
    event = diffrax.Event(lambda t, y, args, **kw: pde.is_bad(y, positive))
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(pde.rhs), solver, t0=ts[0], t1=ts[-1], dt0=None, y0=y0,
        saveat=diffrax.SaveAt(subs=[diffrax.SubSaveAt(ts=ts), diffrax.SubSaveAt(t1=True)]), stepsize_controller=controller, max_steps=max_steps,
        adjoint=adjoint, event=event, throw=False,
    )
    ys, y_end, t_end = sol.ys[0], sol.ys[1][-1], sol.ts[1][-1]
    fired = sol.result == diffrax.RESULTS.event_occurred
    result = RESULTS.where(fired, pde.failure_code(y_end), RESULTS.promote(sol.result))
    if fault is not None:  # a traced parameter or input out of range: the point fails as a whole
        result = RESULTS.where(fault, RESULTS.invalid_parameter, result)
        t_end = jnp.where(fault, ts[0], t_end)
    ok = result == RESULTS.successful
    # saves at or after a failure hold nothing the solver stands behind
    after = (ts >= t_end) & ~ok
    ys = jnp.where(after.reshape((-1,) + (1,) * y0.ndim), jnp.nan, ys)
    stats = {"num_steps": sol.stats["num_steps"], "num_accepted_steps": sol.stats["num_accepted_steps"],
             "num_rejected_steps": sol.stats["num_rejected_steps"]}
    return ys, result, t_end, stats


def raise_on_failure(name: str, ys, result, t_end, t_final):
    """``throw=True``: a [`meanfield.SolverError`][meanfield.SolverError] (one line: the time reached, the cause and
    its remedy) when ``result`` is a failure; eager calls raise at once, traced ones through
    ``eqx.error_if`` (with the line printed first by a callback)."""
    failed = result != RESULTS.successful
    if is_concrete(result._value, t_end):
        if bool(failed):
            raise SolverError(f"{name}.solve failed at t = {float(t_end):.6g} (of {float(t_final):.6g}): "
                              f"{RESULTS[result]}")
        return ys
    jax.debug.callback(functools.partial(_announce_failure, name), failed, t_end, t_final, result._value)
    return eqx.error_if(ys, failed, f"{name}.solve failed (SolverError): see the line printed above; "
                        "lower cfl or dt, or use more cells")


def _announce_failure(name, failed, t_end, t_final, code):
    failed = np.asarray(failed)
    for i in zip(*np.nonzero(failed)) if failed.ndim else ([()] if failed else []):
        message = RESULTS._index_to_message[int(np.asarray(code)[i])]
        final = float(np.asarray(t_final)[i] if np.ndim(t_final) else t_final)
        traced_failure(f"solver failure: {name}.solve failed at t = {float(np.asarray(t_end)[i]):.6g} "
                       f"(of {final:.6g}): {message}", SolverError)
