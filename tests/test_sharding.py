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
from meanfield.run.cli import main


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


def test_ensemble_vmap_is_the_vmap_in_chunks():
    """Chunked ensemble map (lax.map over chunks of k runs) = plain vmap, with a remainder chunk
    (B = 11 runs, k = 4) and an unmapped argument; k follows k N^2 <= scores."""
    import jax.numpy as jnp

    attn = mf.Attention(2.0, mask=mf.Causal())
    xs = mf.sphere_uniform(jax.random.key(0), 11 * 16, 3).reshape(11, 16, 3)
    scale = jnp.asarray(0.5)
    fn = lambda x, c: c * mf.velocity(attn, x)  # noqa: E731
    assert (
        sharding.ensemble_chunk(16, scores=4 * 16**2) == 4 and sharding.ensemble_chunk(10**4) == 1
    )
    chunked = sharding.ensemble_vmap(fn, 16, in_axes=(0, None), scores=4 * 16**2)
    ref = jax.vmap(fn, in_axes=(0, None))(xs, scale)
    assert jnp.max(jnp.abs(jax.jit(chunked)(xs, scale) - ref)) <= 1e-13
    with pytest.raises(ValueError, match="different leading sizes"):
        sharding.ensemble_vmap(lambda a, b: a + b, 16, scores=16**2)(xs, xs[:5])


def test_cli_rejects_a_bad_mesh(tmp_path, capsys):
    assert (
        main(["run", "clustering", "--mesh", "data=4", "--out", str(tmp_path), "--set", "n=8"]) == 2
    )
    assert "mesh:" in capsys.readouterr().err
    assert not (tmp_path / "result.nc").exists()


@pytest.mark.slow
def test_eight_device_suite():
    root = Path(__file__).resolve().parents[1]
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        MEANFIELD_SHARDED_TESTS="1",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/sharded"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(proc.stdout[-3000:])
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1]


def _two_processes(args, tmp_path, port):
    """Run the command in 2 processes x 2 emulated CPU devices joined by jax.distributed."""
    procs = []
    for rank in (0, 1):
        env = dict(
            os.environ,
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(rank),
            XLA_FLAGS="--xla_force_host_platform_device_count=2",
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "meanfield.run.cli", *args],
                env=env,
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outs = [p.communicate(timeout=300) for p in procs]
    return [p.returncode for p in procs], outs


@pytest.mark.slow
def test_multihost_sweep_and_checkpoint_resume_on_one_process(tmp_path):
    """Two processes (4 devices in all, mesh over data): the sweep equals the single-process
    one; process 0 alone writes; a run paused there (--max-chunks) resumes in one process."""
    import socket

    import numpy as np
    import xarray as xr

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sets = sum((["--set", v] for v in ["n=8", "t1=2", "n_save=5", "chunks=4"]), [])
    grid = ["--grid", "beta=0.5,1,2,4"]
    assert (
        main(
            [
                "sweep",
                "clustering",
                *grid,
                *sets,
                "--out",
                str(tmp_path / "ref"),
                "--no-progress",
                "--mesh",
                "none",
            ]
        )
        == 0
    )
    ref = xr.load_dataset(tmp_path / "ref" / "result.nc")

    codes, outs = _two_processes(
        ["sweep", "clustering", *grid, *sets, "--out", "mh", "--no-progress", "--mesh", "data"],
        tmp_path,
        port,
    )
    assert codes == [0, 0], outs
    assert "wrote" in outs[0][0] and "wrote" not in outs[1][0]
    got = xr.load_dataset(tmp_path / "mh" / "result.nc")
    for name in ref.data_vars:
        np.testing.assert_allclose(
            got[name].values, ref[name].values, rtol=0, atol=1e-12, err_msg=name
        )

    codes, outs = _two_processes(
        [
            "sweep",
            "clustering",
            *grid,
            *sets,
            "--out",
            "paused",
            "--no-progress",
            "--mesh",
            "data",
            "--max-chunks",
            "2",
        ],
        tmp_path,
        port + 1 if port < 65535 else port - 1,
    )
    assert codes == [4, 4], outs
    assert (tmp_path / "paused" / "checkpoint.npz").exists()
    assert (
        main(
            [
                "sweep",
                "clustering",
                *grid,
                *sets,
                "--out",
                str(tmp_path / "paused"),
                "--no-progress",
                "--resume",
                "--mesh",
                "none",
            ]
        )
        == 0
    )
    got = xr.load_dataset(tmp_path / "paused" / "result.nc")
    for name in ref.data_vars:
        np.testing.assert_allclose(
            got[name].values, ref[name].values, rtol=0, atol=1e-12, err_msg=name
        )
