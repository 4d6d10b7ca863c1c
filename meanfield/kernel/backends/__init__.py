"""Attention backends: one module per strategy behind [`AbstractBackend`][meanfield.kernel.backends.AbstractBackend].

[`Dense`][meanfield.kernel.backends.Dense] (exact row softmax, row slabs),
[`Chunked`][meanfield.kernel.backends.Chunked] (online softmax over tiles),
[`Auto`][meanfield.kernel.backends.Auto] (the measured default per platform),
[`Fused`][meanfield.kernel.backends.Fused] (a Pallas kernel, GPU first) and
[`Splash`][meanfield.kernel.backends.Splash] (the splash mapping on the project's TPU
kernel) and [`Cudnn`][meanfield.kernel.backends.Cudnn] (``precision="bf16"`` through cuDNN's
fused attention). Each reads a
[`Problem`][meanfield.kernel.Problem] and nothing else; adding a backend is one module here
and its export.
"""

from .auto import Auto as Auto
from .auto import DEFAULT_BACKENDS as DEFAULT_BACKENDS
from .auto import default_backend as default_backend
from .base import AbstractBackend as AbstractBackend
from .chunked import Chunked as Chunked
from .cudnn import Cudnn as Cudnn
from .dense import Dense as Dense
from .dense import default_row_block as default_row_block
from .fused import Fused as Fused
from .splash import Splash as Splash

default_strategy = Auto
"""The backend class ``Attention(backend=None)`` instantiates (the attention names no backend)."""

__all__ = [
    "AbstractBackend",
    "Auto",
    "Chunked",
    "Cudnn",
    "DEFAULT_BACKENDS",
    "Dense",
    "Fused",
    "Splash",
    "default_backend",
    "default_row_block",
]
