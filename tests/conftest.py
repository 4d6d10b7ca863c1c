"""Tests check closed forms in float64 (enabled here, never in the library) and the fast
path in float32 by passing float32 arrays explicitly."""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jaxtyping
import pytest

jax.config.update("jax_enable_x64", True)

from meanfield.kernel import Chunked, Dense, Fused, Splash  # noqa: E402 (after the x64 switch)

# The one backend list: every backend conformance test parametrizes over it (a new backend is one
# entry here). Small blocks, so that the 10-50-token clouds of the tests span several of them.
BACKENDS = {
    "dense": Dense(),
    "dense-rows": Dense(row_block=4),
    "chunked": Chunked(block=4),
    "chunked-batched": Chunked(block=4, query_batch=2),
    "fused": Fused(16, 16),
    "splash": Splash(128, 128),
}
EXACT = ("dense", "dense-rows", "chunked", "chunked-batched")
"""The XLA backends: every input (prompts, encodings, custom masks, float64), exact to round-off."""


def backend_params(names=None):
    """``pytest.param`` of each backend of ``names`` (default: all), with its name as the id."""
    return [pytest.param(BACKENDS[n], id=n) for n in (names or BACKENDS)]


# tests/sharded needs 8 (emulated) devices, which XLA only creates if asked before JAX starts:
# tests/test_sharding.py runs it in its own pytest process with
# XLA_FLAGS=--xla_force_host_platform_device_count=8 and MEANFIELD_SHARDED_TESTS=1.
collect_ignore = [] if os.environ.get("MEANFIELD_SHARDED_TESTS") == "1" else ["sharded"]


@pytest.fixture
def key():
    return jax.random.key(20261123)


@pytest.fixture(scope="session")
def site(tmp_path_factory):
    """The documentation site built once per test process: (folder, the finished mkdocs process)."""
    if shutil.which("mkdocs") is None and importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    env = dict(
        os.environ, NO_MKDOCS_2_WARNING="1"
    )  # mkdocs-material's banner about MkDocs 2, not a build warning
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    return out, run


@pytest.fixture
def no_hook():
    """For tests of the messages users get: the suite's jaxtyping hook would answer first."""
    disabled = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    yield
    jaxtyping.config.update("jaxtyping_disable", disabled)
