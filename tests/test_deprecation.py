"""Deprecation warnings point at the caller, through the wrappers around the library.

`meanfield._errors.deprecated` looks past the frames of meanfield, equinox, jaxtyping and beartype
(the test suite decorates meanfield with jaxtyping + beartype), so a warning lands on the user's
line, and the suite's guard (pyproject: ``error::DeprecationWarning:meanfield_experiments.*``, no
preset may use a deprecated API) sees the preset's module. The probe calls `deprecated` directly
(through a jaxtyping + beartype wrapper, as the hook wraps every library function), so the test
does not depend on which deprecated APIs exist.
"""

import types
import warnings

import pytest

from meanfield.run import apply_overrides, execute, parse_grid

PROBE = """
from beartype import beartype
from jaxtyping import jaxtyped

from meanfield._errors import deprecated
from meanfield_experiments.clustering import Clustering

old_api = jaxtyped(typechecker=beartype)(deprecated)  # a library function under the test hook


class Probe(Clustering):
    name = "deprecation-probe"

    def init(self, cfg, p):
        old_api("the probe API is deprecated; pass something else")
        return super().init(cfg, p)


def call_old_api():
    old_api("the probe API is deprecated; pass something else")
"""


def load_probe(module_name):
    module = types.ModuleType(module_name)
    exec(compile(PROBE, f"<{module_name}>", "exec"), module.__dict__)
    return module


def test_guard_fires_for_a_preset_using_a_deprecated_api(tmp_path):
    probe = load_probe("meanfield_experiments.deprecation_probe")
    preset = probe.Probe()
    cfg = apply_overrides(preset.Config(), ["n=8", "t1=3", "n_save=7", "chunks=2"])
    with pytest.raises(DeprecationWarning, match="probe API is deprecated"):
        execute(preset, cfg, parse_grid(cfg, None), tmp_path, progress=False)


def test_warning_points_at_the_users_module():
    probe = load_probe("user_script")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probe.call_old_api()
    [w] = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert w.filename == "<user_script>", w.filename
