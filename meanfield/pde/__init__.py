"""Mean-field (density) solvers: the N -> infinity limit of the particle dynamics."""

from ._fv import RESULTS as RESULTS
from .._errors import SolverError as SolverError
from .circle import CircleMeanField as CircleMeanField
from .circle import DensitySolution as DensitySolution
from .kinetic import AbstractCoupling as AbstractCoupling
from .kinetic import CausalCoupling as CausalCoupling
from .kinetic import FullCoupling as FullCoupling
from .kinetic import KineticMeanField as KineticMeanField
from .kinetic import MatrixCoupling as MatrixCoupling
from .kinetic import KineticSolution as KineticSolution
from .kinetic import engine_face_velocity as engine_face_velocity
from .sphere import SphereMeanField as SphereMeanField
from .sphere import SphereSolution as SphereSolution

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
