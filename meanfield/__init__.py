"""meanfield: transformers as interacting particle systems, in JAX.

Tokens are particles; self-attention is a velocity field; depth is time. See README.md,
docs/architecture.md (the three tiers: engine, studies, run) and docs/concepts.md for the equations.

This package is the engine. ``meanfield.studies`` (seed studies over the engine) is loaded on
first access of ``mf.studies``; the ``meanfield`` command lives in ``meanfield.run``.
"""

import importlib as _importlib
import importlib.metadata as _metadata

from . import geometry as geometry
from . import influence as influence
from . import kernel as kernel
from . import observables as observables
from . import pde as pde
from . import sharding as sharding
from . import theory as theory
from ._errors import SolverError as SolverError
from .geometry import NGPT as NGPT
from .geometry import AbstractGeometry as AbstractGeometry
from .geometry import AbstractLayerMap as AbstractLayerMap
from .geometry import Euclidean as Euclidean
from .geometry import PeriLN as PeriLN
from .geometry import PostLN as PostLN
from .geometry import PreLN as PreLN
from .geometry import Residual as Residual
from .geometry import Sphere as Sphere
from .kernel import AbstractMask as AbstractMask
from .kernel import AbstractPE as AbstractPE
from .kernel import AdditivePE as AdditivePE
from .kernel import ALiBi as ALiBi
from .kernel import Attention as Attention
from .kernel import Causal as Causal
from .kernel import PositionNormalized as PositionNormalized
from .kernel import CustomBias as CustomBias
from .kernel import Full as Full
from .kernel import ParallelPrompt as ParallelPrompt
from .kernel import Prompt as Prompt
from .kernel import RoPE as RoPE
from .kernel import TokenAux as TokenAux
from .kernel import Window as Window
from .kernel import ZBias as ZBias
from .particles import RK4 as RK4
from .particles import SOLVERS as SOLVERS
from .particles import Trajectory as Trajectory
from .particles import layers as layers
from .stability import linear_stability as linear_stability
from .noise import Noise as Noise
from .particles import simulate as simulate
from .particles import sphere_uniform as sphere_uniform
from .particles import velocity as velocity

__all__ = [
    "geometry",
    "influence",
    "kernel",
    "observables",
    "pde",
    "sharding",
    "theory",
    "SolverError",
    "NGPT",
    "AbstractGeometry",
    "AbstractLayerMap",
    "Euclidean",
    "PeriLN",
    "PostLN",
    "PreLN",
    "Residual",
    "Sphere",
    "AbstractMask",
    "AbstractPE",
    "AdditivePE",
    "ALiBi",
    "Attention",
    "Causal",
    "PositionNormalized",
    "CustomBias",
    "Full",
    "ParallelPrompt",
    "Prompt",
    "RoPE",
    "TokenAux",
    "Window",
    "ZBias",
    "RK4",
    "SOLVERS",
    "Trajectory",
    "layers",
    "linear_stability",
    "Noise",
    "simulate",
    "sphere_uniform",
    "velocity",
]

try:
    __version__ = _metadata.version("meanfield")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

_LAZY = ("studies",)


def __getattr__(name):
    """PEP 562: ``mf.studies`` imports the studies tier on first access (the engine never does)."""
    if name in _LAZY:
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
