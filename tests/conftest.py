"""Tests check closed forms in float64 (enabled here, never in the library) and the fast
path in float32 by passing float32 arrays explicitly."""

import os

import jax
import pytest

jax.config.update("jax_enable_x64", True)

# tests/sharded needs 8 (emulated) devices, which XLA only creates if asked before JAX starts:
# tests/test_sharding.py runs it in its own pytest process with
# XLA_FLAGS=--xla_force_host_platform_device_count=8 and MEANFIELD_SHARDED_TESTS=1.
collect_ignore = [] if os.environ.get("MEANFIELD_SHARDED_TESTS") == "1" else ["sharded"]


@pytest.fixture
def key():
    return jax.random.key(20261123)
