"""The default backend: the measured best backend for the platform and the number of tokens."""

from __future__ import annotations

import jax

from .base import AbstractBackend
from .chunked import Chunked
from .dense import Dense

DEFAULT_BACKENDS = {
    "gpu": ((16384, lambda: Chunked(block=2048, query_batch=8)),),
}
"""Per platform, (smallest N, backend) thresholds measured on a device, largest matching N wins;
``Dense()`` wherever no device run showed another backend faster (the CPU, TPUs, small N). GPU:
``benchmarks/results_h200_backends.txt`` (H200, causal SA, d = 64): Chunked(2048, 8) ran
61.8 against Dense's 32.5 Gpair/s at N = 16384, 76 against 64 at 65536, 78 against 70 at 262144
(tf32), Dense ahead at 4096. The Fused rewrite and Splash have no device run yet, so neither is a
default."""


def default_backend(n: int, platform: str | None = None) -> AbstractBackend:
    """The backend ``Attention(backend=None)`` uses for N tokens on ``platform`` (default: JAX's
    default backend): see `DEFAULT_BACKENDS`."""
    platform = jax.default_backend() if platform is None else platform
    chosen = Dense()
    for threshold, make in DEFAULT_BACKENDS.get(platform, ()):
        if int(n) >= threshold:
            chosen = make()
    return chosen


class Auto(AbstractBackend):
    """The default backend: [`default_backend`][meanfield.kernel.backends.default_backend] for the number of query tokens and the
    platform, resolved when the field is traced."""

    def resolve(self, n: int) -> AbstractBackend:
        return default_backend(n)

    def field(self, problem):
        return self.resolve(problem.rows).field(problem)

    def data_fault(self, problem):
        return self.resolve(problem.rows).data_fault(problem)

    def memory_bytes(self, n, n_keys, d, heads, itemsize):
        return self.resolve(n).memory_bytes(n, n_keys, d, heads, itemsize)
