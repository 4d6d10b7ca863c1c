"""Device meshes: spec parsing and errors on one device, and the 8-device suite (tests/sharded)
in its own pytest process with 8 emulated CPU devices."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

import meanfield as mf
from meanfield import sharding
from meanfield.cli import main


def test_single_device_mesh_and_no_context():
    mesh = sharding.make_mesh("auto", batch=4, n_tokens=10**6)
    assert mesh.size == jax.device_count() == 1
    assert sharding.token_shards() == 1 and sharding.data_shards() == 1
    with pytest.raises(ValueError, match="mesh: unknown spec 'tokns'"):
        sharding.make_mesh("tokns")
    with pytest.raises(ValueError, match="needs data x tokens = 2 devices but 1 are present"):
        sharding.make_mesh("data=2")
    with pytest.raises(ValueError, match="precision must be one of"):
        mf.Attention(1.0, precision="fp8")


def test_cli_rejects_a_bad_mesh(tmp_path, capsys):
    assert main(["run", "clustering", "--mesh", "data=4", "--out", str(tmp_path), "--set", "n=8"]) == 2
    assert "mesh:" in capsys.readouterr().err
    assert not (tmp_path / "result.nc").exists()


@pytest.mark.slow
def test_eight_device_suite():
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", MEANFIELD_SHARDED_TESTS="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/sharded"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=900)
    print(proc.stdout[-3000:])
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1]
