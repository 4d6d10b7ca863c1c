"""Mean-field (density) solvers: the N -> infinity limit of the particle dynamics."""

from .circle import CircleMeanField as CircleMeanField
from .circle import DensitySolution as DensitySolution
from .kinetic import KineticMeanField as KineticMeanField
from .kinetic import KineticSolution as KineticSolution
from .kinetic import engine_face_velocity as engine_face_velocity
