"""The particle solvers by name: diffrax's explicit and implicit Runge--Kutta methods and the
classical RK4 (for fixed, layer-like steps)."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import diffrax
import numpy as np
from diffrax import AbstractERK, ButcherTableau, ThirdOrderHermitePolynomialInterpolation

from ._errors import require

_rk4_tableau = ButcherTableau(
    a_lower=(np.array([0.5]), np.array([0.0, 0.5]), np.array([0.0, 0.0, 1.0])),
    b_sol=np.array([1 / 6, 1 / 3, 1 / 3, 1 / 6]),
    # Embedded Euler estimate (RK4 minus Euler); only used if RK4 is run adaptively.
    b_error=np.array([1 / 6 - 1.0, 1 / 3, 1 / 3, 1 / 6]),
    c=np.array([0.5, 0.5, 1.0]),
)


class RK4(AbstractERK):
    """The classical 4th-order Runge--Kutta method, as a diffrax explicit RK tableau.

    Intended for fixed steps (layer-like depth); its embedded error estimate is the crude
    RK4 - Euler difference.
    """

    tableau: ClassVar[ButcherTableau] = _rk4_tableau
    interpolation_cls: ClassVar[Callable[..., ThirdOrderHermitePolynomialInterpolation]] = (
        ThirdOrderHermitePolynomialInterpolation.from_k
    )

    def order(self, terms):
        del terms
        return 4


SOLVERS: dict[str, Callable[[], diffrax.AbstractSolver]] = {
    "euler": diffrax.Euler,
    "heun": diffrax.Heun,
    "midpoint": diffrax.Midpoint,
    "rk4": RK4,
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
    "dopri8": diffrax.Dopri8,
    "kvaerno5": diffrax.Kvaerno5,
}
"""Solvers by name; any diffrax ODE solver instance is accepted as well. ``kvaerno5`` is
implicit (ESDIRK, adaptive only), for stiff problems. (On the USA additive-PE run of the tests it
takes 3.8k steps to Tsit5's 6.4k, each costlier: there the fast rates are real motion, not just
stiffness, and SA with the same fixed points is the cheaper route.)"""


def resolve_solver(solver) -> diffrax.AbstractSolver:
    """A solver instance from a name of `SOLVERS` or a diffrax solver instance."""
    if isinstance(solver, str):
        require(
            solver in SOLVERS,
            f"solver must be one of {sorted(SOLVERS)} or a diffrax solver, got {solver!r}",
        )
        return SOLVERS[solver]()
    require(
        isinstance(solver, diffrax.AbstractSolver),
        f"solver must be a name in {sorted(SOLVERS)} or a diffrax solver instance, got {solver!r}",
    )
    return solver


class DelegatingSolver(diffrax.AbstractWrappedSolver):
    """A diffrax solver that is ``solver`` in every property (term structure, orders, state,
    interpolation, ``scan_kind``) except the step a subclass overrides: the base of the wrappers
    that add an exact operation around each step (the noise's retraction onto the sphere, the
    density solvers' heat flow)."""

    solver: diffrax.AbstractSolver

    @property
    def term_structure(self):
        return self.solver.term_structure

    @property
    def interpolation_cls(self):  # pyright: ignore
        return self.solver.interpolation_cls

    @property
    def term_compatible_contr_kwargs(self):
        return self.solver.term_compatible_contr_kwargs

    def order(self, terms):
        return self.solver.order(terms)

    def strong_order(self, terms):
        return self.solver.strong_order(terms)

    def error_order(self, terms):
        return self.solver.error_order(terms)

    def init(self, terms, t0, t1, y0, args):
        return self.solver.init(terms, t0, t1, y0, args)

    @property
    def scan_kind(self):
        return self.solver.scan_kind

    def func(self, terms, t0, y0, args):
        return self.solver.func(terms, t0, y0, args)
