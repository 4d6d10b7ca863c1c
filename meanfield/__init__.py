"""meanfield: transformers as interacting particle systems, in JAX.

Tokens are particles; self-attention is a velocity field; depth is time. See README.md and
shared/DESIGN.md for the equations and conventions.
"""

from . import geometry as geometry
from . import kernel as kernel
from . import observables as observables
from .geometry import NGPT as NGPT
from .geometry import Residual as Residual
from .geometry import Euclidean as Euclidean
from .geometry import PeriLN as PeriLN
from .geometry import PostLN as PostLN
from .geometry import PreLN as PreLN
from .geometry import Sphere as Sphere
from .kernel import AdditivePE as AdditivePE
from .kernel import ALiBi as ALiBi
from .kernel import Attention as Attention
from .kernel import Causal as Causal
from .kernel import CustomBias as CustomBias
from .kernel import Full as Full
from .kernel import Prompt as Prompt
from .kernel import RoPE as RoPE
from .kernel import TokenAux as TokenAux
from .kernel import Window as Window
from .kernel import ZBias as ZBias
from .particles import RK4 as RK4
from .particles import SOLVERS as SOLVERS
from .particles import Trajectory as Trajectory
from .particles import layers as layers
from .particles import simulate as simulate
from .particles import sphere_uniform as sphere_uniform
from .particles import velocity as velocity

__version__ = "0.1.0"
