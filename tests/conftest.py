"""Tests check closed forms in float64 (enabled here, never in the library) and the fast
path in float32 by passing float32 arrays explicitly."""

import jax
import pytest

jax.config.update("jax_enable_x64", True)


@pytest.fixture
def key():
    return jax.random.key(20261123)
