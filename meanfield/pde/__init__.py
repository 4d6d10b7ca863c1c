"""Mean-field (density) solvers: the N -> infinity limit of the particle dynamics."""

from .circle import CircleMeanField as CircleMeanField
from .circle import DensitySolution as DensitySolution
