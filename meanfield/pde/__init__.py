"""Mean-field (density) solvers: the N -> infinity limit of the particle dynamics."""

from ._integrate import RESULTS as RESULTS
from ._integrate import DensitySolution as DensitySolution
from .._errors import SolverError as SolverError
from .circle import CircleMeanField as CircleMeanField
from .couplings import AbstractCoupling as AbstractCoupling
from .couplings import CausalCoupling as CausalCoupling
from .couplings import FullCoupling as FullCoupling
from .kinetic import KineticMeanField as KineticMeanField
from .couplings import MatrixCoupling as MatrixCoupling
from .kinetic import engine_face_velocity as engine_face_velocity
from .sphere import SphereMeanField as SphereMeanField

KineticSolution = DensitySolution  # the 0.2 names of the one solution type
SphereSolution = DensitySolution

__all__ = [
    "RESULTS",
    "SolverError",
    "CircleMeanField",
    "DensitySolution",
    "AbstractCoupling",
    "CausalCoupling",
    "FullCoupling",
    "KineticMeanField",
    "MatrixCoupling",
    "KineticSolution",
    "engine_face_velocity",
    "SphereMeanField",
    "SphereSolution",
]
