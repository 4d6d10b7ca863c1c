"""Sharded sweeps: the partition, the SLURM rank, shards in separate processes merged into the
unsharded sweep's file bit for bit, resume after SIGKILL, the merge's refusals, and the recipes
(xargs, a SLURM array's environment, submitit, Ray) as docs/command.md gives them."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import xarray as xr

from meanfield.run import ConfigError, execute, get_preset, merge, parse_grid, run_shard
from meanfield.run import apply_overrides, sweep_points
from meanfield.run.cli import main
from meanfield.run.shards import parse_shard, shard_indices

GRID = ["beta=0.5,1,2,4", "seed=0,1,2", "t1=3,4"]  # 24 points; t1 is static: 2 groups
SETS = ["n=8", "n_save=7", "chunks=2"]


def _args(out, *extra, grid=GRID, sets=SETS):
    grid = sum((["--grid", g] for g in grid), [])
    sets = sum((["--set", s] for s in sets), [])
    return ["sweep", "clustering", *grid, *sets, "--no-progress", "--out", str(out), *extra]


def _cli(args, env=None):
    return subprocess.Popen(
        [sys.executable, "-m", "meanfield.run.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, **(env or {})),
    )


def test_partition_and_slurm_rank():
    """Contiguous, balanced parts that cover the grid once; I/N and SLURM array ranks; arrays that
    cannot be ranked are refused by name."""
    parts = [shard_indices(24, (i, 5)) for i in range(5)]
    assert [len(p) for p in parts] == [5, 5, 5, 5, 4]
    assert np.array_equal(np.concatenate(parts), np.arange(24))
    assert parse_shard("2/4") == (2, 4) and parse_shard((1, 3)) == (1, 3)
    env = {
        "SLURM_ARRAY_TASK_ID": "5",
        "SLURM_ARRAY_TASK_MIN": "1",
        "SLURM_ARRAY_TASK_MAX": "7",
        "SLURM_ARRAY_TASK_STEP": "2",
        "SLURM_ARRAY_TASK_COUNT": "4",
    }
    assert parse_shard("auto", env) == (2, 4)  # tasks 1, 3, 5, 7
    assert parse_shard(
        "auto",
        dict(
            env,
            SLURM_ARRAY_TASK_ID="2",
            SLURM_ARRAY_TASK_MIN="0",
            SLURM_ARRAY_TASK_MAX="3",
            SLURM_ARRAY_TASK_STEP="",
        ),
    ) == (2, 4)
    with pytest.raises(ConfigError, match="cannot rank task 5"):
        parse_shard("auto", dict(env, SLURM_ARRAY_TASK_COUNT="3"))  # e.g. --array=1,5,7
    with pytest.raises(ConfigError, match="not in a SLURM job array"):
        parse_shard("auto", {})
    with pytest.raises(ConfigError, match="--shard expects I/N"):
        parse_shard("1-of-3")
    preset = get_preset("clustering")
    cfg = apply_overrides(preset.Config(), SETS)
    assert len(sweep_points(preset, GRID, SETS)) == 24
    assert sweep_points("clustering", {"beta": [1, 2]})[1] == {"beta": 2.0}
    with pytest.raises(ConfigError, match="use at most 24 shards"):
        run_shard(preset, GRID, (0, 25), "unused", config=cfg)
    with pytest.raises(ConfigError, match="needs 0 <= I < N"):
        run_shard(preset, GRID, "3/3", "unused", config=cfg)
    with pytest.raises(ConfigError, match="sphere-meanfield runs one configuration per run"):
        execute(get_preset("sphere-meanfield"), None, parse_grid(None, None), "x", shard=(0, 1))


def _run(out, *extra, sets=SETS):
    """The sweep in this process (the command's main)."""
    assert main(_args(out, *extra, sets=sets)) == 0


@pytest.mark.slow
def test_shards_in_separate_processes_merge_to_the_unsharded_sweep(tmp_path):
    """24 points as 1 shard and as 3 shards in 3 processes (xargs -P 2, the docs' recipe, and one
    ranked from a SLURM array's environment by --shard auto), merged: the unsharded sweep's file,
    byte for byte; merging again gives it again. A shard killed by SIGKILL and resumed gives the
    same merged file. A missing shard is exit 2 with its points named and no result; a shard of
    another grid is refused."""
    six = [*SETS[:2], "chunks=6"]  # 6 chunks per group, a checkpoint after each: the kill lands
    cmd = " ".join(_args(tmp_path / "three", "--shard", "{}"))
    xargs = subprocess.Popen(
        f"printf '0/3\\n2/3\\n' | xargs -P 2 -I{{}} {sys.executable} -m meanfield.run.cli {cmd}",
        shell=True,
    )
    slurm = {
        "SLURM_ARRAY_TASK_ID": "11",
        "SLURM_ARRAY_TASK_MIN": "10",
        "SLURM_ARRAY_TASK_MAX": "12",
        "SLURM_ARRAY_TASK_COUNT": "3",
    }
    auto = _cli(_args(tmp_path / "three", "--shard", "auto"), env=slurm)  # shard 1/3
    killed = _cli(_args(tmp_path / "killed", "--shard", "1/3", "--checkpoint-every", "1", sets=six))
    ckpt = tmp_path / "killed" / "shards" / "1-of-3" / "checkpoint.npz"
    deadline = time.time() + 200
    while not ckpt.exists() and time.time() < deadline and killed.poll() is None:
        time.sleep(0.005)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert ckpt.exists() and not ckpt.with_name("shard.nc").exists(), "not interrupted mid-way"
    _run(tmp_path / "ref")
    _run(tmp_path / "one", "--shard", "0/1")
    for proc in (auto, xargs):
        assert proc.wait(timeout=300) == 0, proc.stderr.read().decode() if proc.stderr else ""
    assert sorted(p.name for p in (tmp_path / "three" / "shards").iterdir()) == [
        "0-of-3",
        "1-of-3",
        "2-of-3",
    ]
    reference = (tmp_path / "ref" / "result.nc").read_bytes()
    for name in ("one", "three"):
        assert main(["merge", str(tmp_path / name)]) == 0
        assert (tmp_path / name / "result.nc").read_bytes() == reference
    assert main(["merge", str(tmp_path / "three")]) == 0  # merging twice: the same file
    assert (tmp_path / "three" / "result.nc").read_bytes() == reference
    shard = xr.load_dataset(tmp_path / "three" / "shards" / "1-of-3" / "shard.nc")
    assert shard.attrs["shard"] == "1/3" and json.loads(shard.attrs["points"]) == list(range(8, 16))
    assert {"config", "grid", "meanfield_version", "seed", "preset"} <= set(shard.attrs)

    before = (tmp_path / "three" / "shards" / "1-of-3" / "shard.nc").stat().st_mtime_ns
    _run(tmp_path / "three", "--shard", "1/3", "--resume")  # a requeued finished task: left as is
    assert (tmp_path / "three" / "shards" / "1-of-3" / "shard.nc").stat().st_mtime_ns == before

    # the killed shard, resumed, with the two others: the unsharded file
    assert main(_args(tmp_path / "killed", "--shard", "1/3", sets=six)) == 3  # not without --resume
    _run(tmp_path / "killed", "--shard", "1/3", "--resume", sets=six)
    for i in (0, 2):
        _run(tmp_path / "killed", "--shard", f"{i}/3", sets=six)
    _run(tmp_path / "ref6", sets=six)
    assert main(["merge", str(tmp_path / "killed")]) == 0
    assert (tmp_path / "killed" / "result.nc").read_bytes() == (
        tmp_path / "ref6" / "result.nc"
    ).read_bytes()

    # refusals: a missing shard (exit 2, points named, no result) and a shard of another grid
    part = tmp_path / "part"
    (part / "shards").mkdir(parents=True)
    for i in (0, 2):
        src = tmp_path / "three" / "shards" / f"{i}-of-3"
        (part / "shards" / src.name).mkdir()
        (part / "shards" / src.name / "shard.nc").write_bytes((src / "shard.nc").read_bytes())
    with pytest.raises(
        ConfigError, match=r"8 of 24 point\(s\) missing: #8 \(beta=1.0, seed=1, t1=3.0\)"
    ):
        merge(part)
    assert main(["merge", str(part)]) == 2 and not (part / "result.nc").exists()
    other = tmp_path / "other"
    assert main(_args(other, "--shard", "1/3", grid=["beta=0.5,1,2,8", *GRID[1:]])) == 0
    (part / "shards" / "1-of-3").mkdir()
    (part / "shards" / "1-of-3" / "shard.nc").write_bytes(
        (other / "shards" / "1-of-3" / "shard.nc").read_bytes()
    )
    with pytest.raises(ConfigError, match="shards of different runs: 0/3 and 1/3 differ in grid"):
        merge(part)
    assert not (part / "result.nc").exists()


def _reference(tmp_path):
    """The unsharded sweep of the recipes' grid, in this process."""
    preset = get_preset("clustering")
    cfg = apply_overrides(preset.Config(), SETS)
    execute(
        preset,
        cfg,
        parse_grid(cfg, ["beta=0.5,1,2,4", "seed=0,1,2"]),
        tmp_path / "ref",
        progress=False,
    )
    return (tmp_path / "ref" / "result.nc").read_bytes()


def _job():
    """One shard per job, as docs/command.md writes it: a closure (pickled by value, since this test
    module cannot be imported by the job's process) that imports what it needs."""

    def shard(i, out, n=3):
        import jax

        from meanfield.run import run_shard

        jax.config.update("jax_enable_x64", True)  # as the meanfield command does
        grid = {"beta": [0.5, 1, 2, 4], "seed": [0, 1, 2]}
        config = ["n=8", "n_save=7", "chunks=2"]
        return dict(run_shard("clustering", grid, (i, n), out, config=config, resume=True).sizes)

    return shard


@pytest.mark.slow
def test_submitit_recipe_with_the_local_executor(tmp_path):
    """docs/command.md's submitit recipe, on submitit's local executor (processes on this
    machine; on a cluster the same code submits a SLURM array): merged = unsharded."""
    submitit = pytest.importorskip("submitit")
    reference = _reference(tmp_path)
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="local")
    executor.update_parameters(timeout_min=10)
    jobs = executor.map_array(_job(), range(3), [str(tmp_path / "sw")] * 3)
    assert [job.result()["point"] for job in jobs] == [4, 4, 4]
    merge(tmp_path / "sw")
    assert (tmp_path / "sw" / "result.nc").read_bytes() == reference


@pytest.mark.slow
def test_ray_recipe_on_one_node(tmp_path):
    """docs/command.md's Ray recipe with a single-node ray.init(num_cpus=2): one shard per task,
    merged = unsharded."""
    ray = pytest.importorskip("ray")
    reference = _reference(tmp_path)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(_job())
        sizes = ray.get([task.remote(i, str(tmp_path / "sw"), 2) for i in range(2)])
    finally:
        ray.shutdown()
    assert [s["point"] for s in sizes] == [6, 6]  # 2 shards: one round of workers on 2 CPUs
    merge(tmp_path / "sw")
    assert (tmp_path / "sw" / "result.nc").read_bytes() == reference
