"""One module per scientific claim, each registering presets for the ``meanfield`` command.

A preset is a config dataclass plus pure JAX ``init``/``advance`` pieces (see
``meanfield.runner.Preset``), a ``dataset`` builder and ``plot``.
"""

from . import anti_collapse as anti_collapse
from . import aux_sweeps as aux_sweeps
from . import clustering as clustering
from . import kinetic_causal as kinetic_causal
from . import layernorm as layernorm
from . import meanfield_circle as meanfield_circle
from . import metastability as metastability
from . import phase_diagram as phase_diagram
from . import cesaro as cesaro  # noqa: F401
from . import masks as masks  # noqa: F401
from . import recall_capacity as recall_capacity  # noqa: F401
from . import rope_long_context as rope_long_context  # noqa: F401
from . import step0 as step0  # noqa: F401
