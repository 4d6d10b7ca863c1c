"""Input validation shared by all entry points.

Three tiers (see docs/concepts.md): shape problems raise ``ValueError`` at trace time
naming the argument; value checks that need data raise ``ValueError`` at once when the data
is concrete (eager call) and are flags computed in the graph when it is traced (inside a
user's ``jit``/``vmap``), which the solves turn into result codes; solver failures are result
codes. No check puts a host callback inside a jitted field or solve.
"""

from __future__ import annotations

import contextlib
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np


class SolverError(RuntimeError):
    """A solve that failed: its state left what the solver can stand behind (non-finite values, a
    negative density, an unresolved state). The message is one line: the time reached, the cause
    and the remedy. ``throw=False`` returns a result code instead. The command exits with status 6."""


def is_concrete(*arrays) -> bool:
    """True when no argument is a JAX tracer, so its values can be read in Python."""
    return not any(isinstance(a, jax.core.Tracer) for a in jax.tree_util.tree_leaves(arrays))


_TRACED = {"announce": True, "last": None}


def traced_failure(line: str, kind: type) -> None:
    """Record (and, unless `quiet_traced_failures` was called, print to stderr as
    ``meanfield: LINE``) the one-line cause of an error about to be raised inside a traced
    computation, whose own message is buried in the runtime's traceback."""
    _TRACED["last"] = (line, kind)
    if _TRACED["announce"]:
        print(f"meanfield: {line}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def quiet_traced_failures():
    """Within the block, `traced_failure` records without printing: entry points that report
    errors themselves (the ``meanfield`` command) read `last_traced_failure` instead. The
    previous setting comes back on exit."""
    before = _TRACED["announce"]
    _TRACED["announce"] = False
    try:
        yield
    finally:
        _TRACED["announce"] = before


def last_traced_failure() -> tuple[str, type] | None:
    """(line, ValueError or SolverError) of the last traced failure, or None."""
    return _TRACED["last"]


def require(condition: bool | np.bool_, message: str) -> None:
    """Shape/structure check evaluated at trace time."""
    if not condition:
        raise ValueError(message)


# frames a deprecation warning looks through to find the caller: the library itself, and the
# wrappers that equinox, jaxtyping and beartype put around its functions and methods
_WRAPPER_PACKAGES = ("meanfield", "equinox", "jaxtyping", "beartype")


def _is_wrapper_frame(frame) -> bool:
    name = frame.f_globals.get("__name__") or ""
    return name.split(".")[0] in _WRAPPER_PACKAGES or frame.f_code.co_filename.startswith(
        "<@beartype"
    )


def deprecated(message: str) -> None:
    """A ``DeprecationWarning`` attributed to the first caller outside meanfield and the wrappers
    around it (equinox, jaxtyping, beartype), so that Python's default filters show it to the
    user's own code and a warnings filter on the caller's module (the test suite's guard that no
    preset uses a deprecated API) sees that module."""
    level, frame = 2, sys._getframe(1)
    while frame is not None and _is_wrapper_frame(frame):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, DeprecationWarning, stacklevel=level)


def _bad_mask(v, lo, hi, lo_open, hi_open, nonzero, allow_neg_inf):
    """Elementwise: not finite (``allow_neg_inf``: -inf allowed), out of [lo, hi] (open ends as
    asked), or zero when ``nonzero``. Works on NumPy and JAX arrays alike."""
    xp = jnp if isinstance(v, jax.Array) else np
    bad = ~(xp.isfinite(v) | (allow_neg_inf & (v == -xp.inf)))  # NaN is never finite
    if lo is not None:
        bad = bad | ((v <= lo) if lo_open else (v < lo))
    if hi is not None:
        bad = bad | ((v >= hi) if hi_open else (v > hi))
    if nonzero:
        bad = bad | (v == 0)
    return bad


def _range_text(lo, hi, lo_open, hi_open, nonzero, allow_neg_inf) -> str:
    parts = ["finite" if not allow_neg_inf else "not NaN and not +inf"]
    if lo is not None and hi is not None:
        parts.append(f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}")
    elif lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    elif hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi:g}")
    if nonzero:
        parts.append("nonzero")
    return " and ".join(parts)


def check_param(
    name: str,
    value,
    *,
    lo=None,
    hi=None,
    lo_open=False,
    hi_open=False,
    nonzero=False,
    allow_neg_inf=False,
) -> None:
    """A numeric parameter checked at once when its value is concrete, whatever its type (Python or
    NumPy scalar, 0-d or n-d array, a concrete JAX array): a one-line ``ValueError`` naming it when
    any entry is NaN, infinite or out of range. A traced value is not checked here: solvers fold
    [`param_fault`][meanfield._errors.param_fault] into their result code instead (no host
    callback in the compiled graph)."""
    if value is None or not is_concrete(value):
        return
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a real number or array, got {type(value).__name__}"
        ) from None
    bad = _bad_mask(arr, lo, hi, lo_open, hi_open, nonzero, allow_neg_inf)
    if np.any(bad):
        shown = f"{arr.item():g}" if arr.size == 1 else f"an array with {np.sum(bad)} bad entries"
        raise ValueError(
            f"{name} must be {_range_text(lo, hi, lo_open, hi_open, nonzero, allow_neg_inf)}, got {shown}"
        )


def data_fault(bad, message: str):
    """``bad`` (a boolean array) as a scalar fault flag: a concrete True raises ``ValueError(message)``
    at once; a traced one stays in the graph (the solve then returns its ``invalid_parameter`` code).
    No host callback: the flag lowers for every platform."""
    if is_concrete(bad):
        if bool(np.any(np.asarray(bad))):
            raise ValueError(message)
        return jnp.zeros((), bool)
    return jnp.any(bad)


def param_fault(
    value, *, lo=None, hi=None, lo_open=False, hi_open=False, nonzero=False, allow_neg_inf=False
):
    """A scalar boolean computed in the graph: True when any entry of ``value`` breaks the range of
    [`check_param`][meanfield._errors.check_param] (for traced parameters, whose solve then returns a
    failure code)."""
    if value is None:
        return jnp.zeros((), bool)
    return jnp.any(_bad_mask(jnp.asarray(value), lo, hi, lo_open, hi_open, nonzero, allow_neg_inf))


FORMS = ("SA", "USA")
"""The attention forms: softmax (SA) and unnormalised (USA)."""


def check_form(form) -> None:
    """The one check of an attention ``form`` (kernel, density solvers, theory)."""
    require(form in FORMS, f"form must be one of {FORMS}, got {form!r}")
