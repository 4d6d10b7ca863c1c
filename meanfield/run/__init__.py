"""The run tier: the ``meanfield`` command, presets, the executor, checkpoints and outputs.

The only code that knows presets exist. It imports the engine (``meanfield``) and is never
imported by it; presets live in the ``experiments/`` folder (installed as
``meanfield_experiments``) or any package that declares modules in the ``meanfield.presets``
entry-point group.
"""

from .checkpoint import Checkpoint as Checkpoint
from .config import ConfigError as ConfigError
from .config import apply_overrides as apply_overrides
from .config import describe as describe
from .executor import Paused as Paused
from .executor import RunError as RunError
from .executor import check_run as check_run
from .executor import execute as execute
from .presets import ENTRY_POINTS as ENTRY_POINTS
from .presets import PRESETS as PRESETS
from .presets import Grid as Grid
from .presets import Preset as Preset
from .presets import RunConfig as RunConfig
from .presets import Step as Step
from .presets import StepPreset as StepPreset
from .presets import TracedPreset as TracedPreset
from .presets import get_preset as get_preset
from .presets import grid_param as grid_param
from .presets import load_presets as load_presets
from .presets import parse_grid as parse_grid
from .presets import register as register
from .sweeps import merge as merge
from .sweeps import run_shard as run_shard
from .sweeps import sweep_points as sweep_points
from .variables import COMMON as COMMON
from .variables import Var as Var

__all__ = [
    "Checkpoint",
    "ConfigError",
    "COMMON",
    "Var",
    "apply_overrides",
    "describe",
    "Paused",
    "RunError",
    "check_run",
    "execute",
    "ENTRY_POINTS",
    "PRESETS",
    "Grid",
    "Preset",
    "RunConfig",
    "Step",
    "StepPreset",
    "TracedPreset",
    "get_preset",
    "grid_param",
    "load_presets",
    "parse_grid",
    "register",
    "merge",
    "run_shard",
    "sweep_points",
]
