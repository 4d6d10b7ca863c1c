"""The presets of the ``meanfield`` command: one module per scientific claim.

Installed as ``meanfield_experiments`` (this folder is mapped to that name by pyproject.toml, so
no generic ``experiments`` package enters the user's environment). Each module registers its
presets with [`meanfield.run.register`][meanfield.run.register] when imported; the command imports the modules
listed in the ``meanfield.presets`` entry-point group. A preset is a config dataclass (deriving
from [`meanfield.run.RunConfig`][meanfield.run.RunConfig]) plus pure JAX ``init``/``advance`` pieces (see
[`meanfield.run.Preset`][meanfield.run.Preset]), a ``dataset`` builder and ``plot``.
"""
