"""One module per scientific claim, each registering presets for the ``meanfield`` command.

A preset is a config dataclass plus pure JAX ``init``/``advance`` pieces (see
``meanfield.runner.Preset``), a ``dataset`` builder and ``plot``.
"""

from . import clustering as clustering  # noqa: F401
from . import phase_diagram as phase_diagram  # noqa: F401
from . import layernorm as layernorm  # noqa: F401
from . import metastability as metastability  # noqa: F401
from . import anti_collapse as anti_collapse  # noqa: F401
from . import aux_sweeps as aux_sweeps  # noqa: F401
from . import meanfield_circle as meanfield_circle  # noqa: F401
