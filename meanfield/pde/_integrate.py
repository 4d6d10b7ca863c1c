r"""The integration layer every density solver shares (the circle and kinetic finite volumes of
`meanfield.pde._fv`, the spectral sphere solver): the step rule, the diffrax
step-size controller, the solve, the result codes and the failure reporting.

A solver subclasses [`AbstractDensitySolver`][meanfield.pde._integrate.AbstractDensitySolver] and
implements its public abstract hooks (the right-hand side, the CFL length ``h``, the state's
speed and rate, the linear rate bound, the failure test and its code, the initial tolerance, the
parameter fault); the step rule, the argument checks and the solve are final.

Time step (``dt=None``): the step adapts throughout the solve, from the current state. Before
every step

$$
\Delta t = \min\Big(\frac{\mathrm{cfl}\, h}{\max|u|},\ \frac{\mathrm{accuracy}}{r}\Big), \qquad
r = \max\Big(r_{\mathrm{lin}},\ \max_i \frac{|u_{i+1} - u_i|}{h}\Big),
$$

where $r_{\mathrm{lin}} = \max_n |\lambda_n|$ is the fastest linear rate about the uniform state, from
the kernels' Fourier coefficients (SA: $\lambda_n = -i n (g_n - u_0 K_n) / K_0$; USA:
$\lambda_n = -i n g_n / 2\pi$ times the coupling's largest row sum; the advection by a uniform drift
$u_0$ is left to the CFL bound). The CFL bound keeps positivity; the rate bound keeps accuracy near
the uniform state, where $\max|u| \to 0$ and the CFL step alone would become the whole save
interval. SSP Heun integrates $e^{\lambda t}$ with a relative error of about $(\lambda \Delta t)^2 / 6$
in the rate, so the default ``accuracy`` = 0.05 targets ~4e-4 on the fastest linear mode (less on
slower ones).

The rule is applied by a diffrax step-size controller (`CFLController`) at the end of every
step, on the new state, so the step follows the velocity as clusters form, whatever the save
times (steps are clipped to land on them). A step is redone with the new dt when its end state
is non-finite or negative, or when the step already breaks the positivity bound
$\max|u|\, \Delta t \le h/2$ at its end (the velocity grew within the step); after ``MAX_REDO`` redos in a row it is kept and
the solve fails (below).

Failure: a state the solver cannot stand behind stops the solve (a diffrax event): non-finite
values, or a negative density beyond round-off, $\min \rho < -\mathrm{NEG\_TOL}\, \varepsilon \max \rho$, under every solver
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

from .._errors import (
    SolverError,
    check_param,
    data_fault,
    is_concrete,
    param_fault,
    require,
    traced_failure,
)
from .._types import Array
from ..solvers import DelegatingSolver
from ._s2 import grid_points, quadrature_weights

CFL = 0.4
"""Default CFL number of the finite-volume solvers."""
ACCURACY = 0.05
"""Default accuracy: the step is at most ACCURACY / (the fastest linear rate)."""


class AbstractDensitySolver(eqx.Module):
    """What the integration layer needs of a density solver: public abstract hooks, and a final step
    rule, argument checks and solve built on them. The finite-volume solvers on S^1 and the
    spectral solver on S^2 share this one layer."""

    advice: eqx.AbstractClassVar[str]
    """What to change when a solve fails (the geometry's own remedy, in the failure message)."""

    # ------------------------------------------------------------------ hooks
    @abc.abstractmethod
    def rhs(self, t, y, args=None) -> Array:
        """The time derivative of the state ``y``."""

    @property
    @abc.abstractmethod
    def h(self) -> float:
        """The CFL length: a step moves mass by at most ``cfl h`` (a cell width, or pi / L)."""

    @abc.abstractmethod
    def speed_and_rate(self, y) -> tuple[Array, Array]:
        """(max speed, local rate) of the state: the largest velocity, and the largest rate at which
        the velocity varies (a velocity gradient or divergence), which bounds the accurate step."""

    @abc.abstractmethod
    def linear_rate_bound(self, dtype=float) -> Array:
        """r_lin: the fastest linear rate about the uniform state."""

    @abc.abstractmethod
    def is_bad(self, y) -> Array:
        """Whether the state ``y`` is one the solver cannot stand behind (a scalar bool)."""

    @abc.abstractmethod
    def failure_code(self, y):
        """The [`RESULTS`][meanfield.pde.RESULTS] code (with the geometry's own advice) of a state
        for which `is_bad` fired."""

    @abc.abstractmethod
    def initial_tolerance(self, y0) -> Array:
        """How far below zero an initial state may dip (0: none)."""

    @abc.abstractmethod
    def heat(self, y, h) -> Array:
        r"""The exact heat flow $e^{h (\sigma^2/2) \Delta}$ of the state, diagonal in the solver's
        Fourier or spherical-harmonic basis (the identity when $\sigma = 0$)."""

    @abc.abstractmethod
    def parameter_fault(self) -> Array:
        """True (a scalar computed in the graph) when a parameter of the solver is NaN, infinite or out
        of range. Concrete parameters are refused by the constructor; traced ones (under a user's
        ``vmap``/``jit``) make the solve return ``RESULTS.invalid_parameter``."""

    # ------------------------------------------------------------------ final
    def step_and_speed(self, y, cfl, accuracy, rate_bound=None):
        """(dt, max speed) with dt = min(cfl h / max speed, accuracy / r), r = max(r_lin, the local
        rate) at the state ``y`` (module docstring); ``rate_bound``: r_lin if already computed."""
        speed, local = self.speed_and_rate(y)
        r_lin = self.linear_rate_bound(y.dtype) if rate_bound is None else rate_bound
        rate = jnp.maximum(r_lin, local)
        dt = jnp.minimum(
            cfl * self.h / jnp.maximum(speed, 1e-30), accuracy / jnp.maximum(rate, 1e-30)
        )
        return dt, speed

    def default_step(self, y, cfl, accuracy, rate_bound=None) -> Array:
        """The step the rule picks at the state ``y`` (see `step_and_speed`)."""
        return self.step_and_speed(y, cfl, accuracy, rate_bound)[0]

    def _integrate(
        self, y0, ts, shape, name, *, dt, cfl, accuracy, solver, max_steps, throw, adjoint=None
    ):
        """Checked arguments, then `cfl_solve`; returns (ts, states at ts, result, stats)."""
        y0 = jnp.asarray(y0)
        require(y0.shape == shape, f"{name} must have shape {shape}, got {y0.shape}")
        require(
            jnp.issubdtype(y0.dtype, jnp.floating),
            f"{name} must be a floating-point array, got {y0.dtype}",
        )
        ts = jnp.asarray(ts, y0.dtype)
        require(
            ts.ndim == 1 and ts.shape[0] >= 2,
            f"ts must be a 1-D array of >= 2 times, got shape {ts.shape}",
        )
        # data checks: concrete values raise at once; traced ones fold into the result code (no host callback)
        fault = self.parameter_fault()
        fault = fault | data_fault(
            ~jnp.all(jnp.isfinite(y0)) | ~jnp.all(y0 >= -self.initial_tolerance(y0)),
            f"{name} must be finite and non-negative",
        )
        fault = fault | data_fault(
            ~(jnp.sum(y0) > 0), f"{name} must have a positive mass (it is zero everywhere)"
        )
        fault = fault | data_fault(
            ~jnp.all(jnp.diff(ts) >= 0) | ~jnp.all(jnp.isfinite(ts)),
            "ts must be finite and non-decreasing",
        )
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
        require(
            isinstance(solver, diffrax.AbstractSolver),
            f"solver must be a diffrax solver, got {type(solver).__name__}",
        )
        if not (is_concrete(self.sigma) and float(self.sigma) == 0.0):
            solver = Diffused(solver, self)
        ys, result, t_end, stats = cfl_solve(
            self, y0, ts, step, dt is None, solver, int(max_steps), adjoint, fault
        )
        if throw:
            ys = raise_on_failure(type(self).__name__, ys, result, t_end, ts[-1], self.advice)
        return ts, ys, result, stats


class Diffused(DelegatingSolver):
    r"""Strang splitting of the diffusion $(\sigma^2/2)\Delta\rho$ around ``solver``'s transport
    step: half a step of the exact heat flow (`AbstractDensitySolver.heat`, diagonal in the
    Fourier or spherical-harmonic basis), the transport step, half a step of heat. The heat flow
    is exact, so diffusion never limits the step (the CFL and accuracy rules see the transport
    only); it keeps positivity (a positive kernel) and the mass (the mean mode is untouched); the
    splitting is second order, and exact for the linear response about the uniform state (both
    parts are diagonal there). The wrapped step starts afresh each time (``made_jump``): a
    first-same-as-last solver does not reuse a stage of the state before the heat."""

    pde: AbstractDensitySolver

    # linear between the step's own ends: every step ends on a save time (`CFLController`), so
    # the saves are the split states themselves, not the transport's interpolant
    interpolation_cls = diffrax.LocalLinearInterpolation

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        half = 0.5 * (t1 - t0)
        y1, err, _, state, result = self.solver.step(
            terms, t0, t1, self.pde.heat(y0, half), args, solver_state, True
        )
        y1 = self.pde.heat(y1, half)
        return y1, err, dict(y0=y0, y1=y1), state, result


class DensitySolution(eqx.Module):
    """Saved densities of any density solver: ``ts`` (T,), ``rho`` (T, *grid) the saved states (the
    circle's (T, M) cell averages, the kinetic (T, S, M) rows, the sphere's (T, L, 2L-1) grid
    values), ``grid`` the coordinates of the grid axes by name (``theta``; ``s`` and ``w`` for
    the kinetic rows; ``theta`` and ``phi`` on the sphere); ``result`` a
    [`meanfield.pde.RESULTS`][meanfield.pde.RESULTS] code (``RESULTS.successful``, or the failure of a
    ``throw=False`` solve, whose saves from the failure on are NaN); ``stats`` the step counts.
    The grid coordinates are also attributes (``sol.theta``), and ``sol.f`` is ``sol.rho``."""

    ts: Array
    rho: Array
    grid: dict = eqx.field(default_factory=dict)
    result: RESULTS | None = None
    stats: dict = eqx.field(default_factory=dict)

    def __getattr__(self, name):
        grid = self.__dict__.get("grid", {})
        if name in grid:
            return grid[name]
        if name == "f":
            return self.rho
        raise AttributeError(
            f"{type(self).__name__} has no attribute {name!r} (grid: {sorted(grid)})"
        )

    def order_parameter(self) -> Array:
        r"""$R = \lVert \int x\, d\rho \rVert$, the density analogue of
        [`order_parameter`][meanfield.observables.order_parameter]: $|\int e^{i\theta}\rho\, d\theta|$
        on the circle (per row s for the kinetic solver, shape (T,) or (T, S)), and on $S^2$ the
        norm of the first moment by the grid's exact quadrature, shape (T,)."""
        if "phi" not in self.grid:
            return jnp.abs(self.moment(1))
        band = self.rho.shape[-2]
        w = quadrature_weights(band).astype(self.rho.dtype)
        xg = grid_points(band).astype(self.rho.dtype)
        return jnp.linalg.norm(jnp.einsum("...ab,ab,abk->...k", self.rho, w, xg), axis=-1)

    def moment(self, n: int = 1) -> Array:
        r"""Circular moment $\int e^{i n \theta} \rho\, d\theta$ over the last (theta) axis of a
        circle or kinetic solution, shape (T,) or (T, S) complex."""
        theta = self.grid["theta"]
        h = 2 * np.pi / theta.shape[0]
        return h * jnp.einsum("...m,m->...", self.rho.astype(complex), jnp.exp(1j * n * theta))


def is_real_in(value, lo, hi) -> bool:
    """``lo < value <= hi`` for a concrete real number (NaN and inf are out)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return False
    return bool(np.isfinite(v)) and lo < v <= hi


class RESULTS(diffrax.RESULTS):
    """Result codes of the finite-volume solvers: diffrax's, plus the two failures of the state."""

    nonfinite_density = (
        "the density became non-finite: lower cfl or dt (or keep the default adaptive step, "
        "dt=None), or use more cells"
    )
    negative_density = (
        "the density became negative beyond round-off (a step broke the positivity bound "
        "max|u| dt <= h/2, or a solver other than Euler/Heun undershot): lower cfl or dt, keep the "
        "default adaptive step (dt=None), or use the default solver (SSP Heun)"
    )
    invalid_parameter = (
        "a parameter (beta, a, b, lam, prompt angles or weights, dt, the initial density or the "
        "save times) is NaN, infinite or out of range: fix the input (a traced value, checked in "
        "the graph)"
    )
    unresolved = (
        "the density is no longer resolved by the band limit (spectral tail energy or a negative "
        "density beyond round-off): use a larger band limit L (measured at beta >= 4: L = 16 resolves "
        "about 2 e-foldings of the fastest linear rate r, and each doubling of L about one more: "
        "L ~ 16 * 2^(r t - 2); docs: PDE solvers, resolution rule), or stop earlier"
    )


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
    require(
        ok and int(value) >= least,
        f"{name} must be an integer number of cells >= {least}, got {value!r}",
    )
    return int(value)


def state_is_bad(y):
    """Non-finite anywhere, or a cell below -NEG_TOL eps max|y| (a negative density beyond round-off,
    a failure under every solver: the scheme keeps it non-negative only under the SSP steppers
    within the CFL bound, and any other solver's undershoot is caught too)."""
    tol = NEG_TOL * jnp.finfo(y.dtype).eps
    return ~jnp.all(jnp.isfinite(y)) | (jnp.min(y) < -tol * jnp.max(jnp.abs(y)))


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

    def wrap(self, direction):
        return self

    def _clip(self, t0, t1):
        """t1, or the first save time after t0 if that comes sooner."""
        i = jnp.minimum(jnp.searchsorted(self.ts, t0, side="right"), self.ts.shape[0] - 1)
        return jnp.minimum(t1, jnp.where(self.ts[i] > t0, self.ts[i], t1))

    def _dt(self, y):
        if not self.adaptive:
            return self.step, jnp.zeros((), y.dtype)
        return self.pde.step_and_speed(y, *self.step, self.rate_bound)

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        dt, _ = self._dt(y0)
        return self._clip(t0, t0 + dt), jnp.zeros((), jnp.int32)

    def adapt_step_size(
        self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state
    ):
        taken = t1 - t0
        dt, speed = self._dt(y1_candidate)
        if self.adaptive:
            bad = self.pde.is_bad(y1_candidate) | ~jnp.isfinite(dt)
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
    rate = pde.linear_rate_bound(y0.dtype) if adaptive else jnp.zeros((), y0.dtype)
    controller = CFLController(pde, ts, step, rate, adaptive)
    event = diffrax.Event(lambda t, y, args, **kw: pde.is_bad(y))
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(pde.rhs),
        solver,
        t0=ts[0],
        t1=ts[-1],
        dt0=None,
        y0=y0,
        saveat=diffrax.SaveAt(subs=[diffrax.SubSaveAt(ts=ts), diffrax.SubSaveAt(t1=True)]),
        stepsize_controller=controller,
        max_steps=max_steps,
        adjoint=adjoint,
        event=event,
        throw=False,
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
    stats = {
        "num_steps": sol.stats["num_steps"],
        "num_accepted_steps": sol.stats["num_accepted_steps"],
        "num_rejected_steps": sol.stats["num_rejected_steps"],
    }
    return ys, result, t_end, stats


def raise_on_failure(name: str, ys, result, t_end, t_final, advice: str = "lower cfl or dt"):
    """``throw=True``: a [`meanfield.SolverError`][meanfield.SolverError] (one line: the time reached, the cause and
    its remedy) when ``result`` is a failure; eager calls raise at once, traced ones through
    ``eqx.error_if`` (with the line printed first by a callback)."""
    failed = result != RESULTS.successful
    if is_concrete(result._value, t_end):
        if bool(failed):
            raise SolverError(
                f"{name}.solve failed at t = {float(t_end):.6g} (of {float(t_final):.6g}): "
                f"{RESULTS[result]}"
            )
        return ys
    jax.debug.callback(
        functools.partial(_announce_failure, name), failed, t_end, t_final, result._value
    )
    return eqx.error_if(
        ys, failed, f"{name}.solve failed (SolverError): see the line printed above; {advice}"
    )


def _announce_failure(name, failed, t_end, t_final, code):
    failed = np.asarray(failed)
    for i in zip(*np.nonzero(failed)) if failed.ndim else ([()] if failed else []):
        message = RESULTS._index_to_message[int(np.asarray(code)[i])]
        final = float(np.asarray(t_final)[i] if np.ndim(t_final) else t_final)
        traced_failure(
            f"solver failure: {name}.solve failed at t = {float(np.asarray(t_end)[i]):.6g} "
            f"(of {final:.6g}): {message}",
            SolverError,
        )
