"""The backend contract: how the kernel evaluates the field of a [`Problem`][meanfield.kernel.Problem].

A backend is a strategy module passed as ``Attention(backend=...)`` (like a diffrax solver). It
implements two methods and reads nothing but its own settings and the problem:

* ``field(problem)``: the per-head field of the problem's query rows, shape (h, rows, dv), h = 1
  or ``problem.heads`` (the attention mixes the heads);
* ``memory_bytes(n, n_keys, d, heads, itemsize)``: the peak bytes of one evaluation for n query
  rows over n_keys keys (what [`simulate`][meanfield.simulate] checks before it starts;
  no problem needed);
* ``data_fault(problem)``: the data-dependent conditions the backend needs of the problem's
  values (Splash: distinct positions under a causal mask). Concrete values that break them raise
  ``ValueError`` at once; traced ones give a scalar flag computed in the graph, which
  [`simulate`][meanfield.simulate] turns into its result code. ``field`` checks nothing on data:
  no host callback runs inside a jitted field, so it lowers for every platform.

Adding a backend is one module of this package and its export.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax.numpy as jnp

from ..._types import Array
from ..problem import Problem


class AbstractBackend(eqx.Module):
    """How the kernel evaluates the field of its query rows (a strategy, like a diffrax solver)."""

    @abc.abstractmethod
    def field(self, problem: Problem) -> Array:
        """Per-head field of the problem's query rows, shape (h, rows, dv)."""

    @abc.abstractmethod
    def memory_bytes(self, n: int, n_keys: int, d: int, heads: int, itemsize: int) -> int:
        """Peak bytes of one field evaluation for n query rows over n_keys keys (an estimate)."""

    @abc.abstractmethod
    def data_fault(self, problem: Problem) -> Array:
        """A scalar flag: True when the problem's values break a condition of this backend
        (concrete values raise ``ValueError`` naming it instead)."""


def no_fault() -> Array:
    """The flag of a backend that needs nothing of the data."""
    return jnp.zeros((), bool)


def projection_bytes(n: int, n_keys: int, d: int, heads: int, itemsize: int) -> int:
    """The projected Q/K/V copies every backend keeps alive: 3 heads max(n, n_keys) d entries."""
    return 3 * heads * max(n, n_keys) * d * itemsize
