"""Run-tier reliability: bad input refused in one line before compute (API and CLI, with exit
codes), one writer per output folder, outputs that respect the umask, a quiet `list | head`."""

import os
import stat
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

import meanfield as mf
from meanfield.particles import _simulate
from meanfield.run.cli import main
from meanfield.run.folders import Locked, folder_lock

TINY = ["--set", "n=6", "--set", "t1=1", "--set", "n_save=3", "--set", "chunks=1", "--no-progress"]


def _x0():
    return mf.sphere_uniform(jax.random.key(0), 8, 3)


API_CASES = {
    "rtol < 0": (
        lambda: mf.simulate(mf.Attention(1.0), _x0(), [0.0, 1.0], rtol=-1.0),
        "rtol and atol must be finite and >= 0",
    ),
    "rtol = atol = 0": (
        lambda: mf.simulate(mf.Attention(1.0), _x0(), [0.0, 1.0], rtol=0.0, atol=0.0),
        "not both 0",
    ),
    "rtol NaN": (
        lambda: mf.simulate(mf.Attention(1.0), _x0(), [0.0, 1.0], rtol=float("nan")),
        "rtol and atol",
    ),
    "Q NaN": (lambda: mf.Attention(1.0, Q=jnp.full((3, 3), jnp.nan)), "Q must be finite"),
    "ALiBi NaN": (lambda: mf.ALiBi(float("nan")), "slope must be finite and >= 0"),
    "ALiBi < 0": (lambda: mf.ALiBi(-1.0), "slope must be finite and >= 0"),
    "beta inf": (lambda: mf.Attention(float("inf")), "beta must be finite"),
    "float16 x0": (
        lambda: mf.simulate(mf.Attention(1.0), _x0().astype(jnp.float16), [0.0, 1.0]),
        "float32 or float64",
    ),
    "RoPE with odd d": (
        lambda: mf.simulate(mf.Attention(1.0, pe=mf.RoPE()), _x0(), [0.0, 1.0]),
        "even token dimension",
    ),
    "NaN token": (
        lambda: mf.simulate(mf.Attention(1.0), _x0().at[0, 0].set(jnp.nan), [0.0, 1.0]),
        "must be finite",
    ),
}


@pytest.mark.parametrize("case", sorted(API_CASES))
def test_bad_api_input_is_one_line_before_compute(case, no_hook):
    fn, match = API_CASES[case]
    before = eqx.debug.get_num_traces(_simulate)
    with pytest.raises(ValueError, match=match) as info:
        fn()
    assert "\n" not in str(info.value)
    assert eqx.debug.get_num_traces(_simulate) == before  # refused before any solve was traced


def test_bad_cli_input_exit_codes(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    (tmp_path / "bad.toml").write_text("n = [\n")
    cases = [
        (
            ["run", "clustering", "--out", str(tmp_path / "file"), *TINY],
            2,
            "cannot create the output folder",
        ),
        (
            ["run", "clustering", "--out", str(tmp_path / "file" / "sub"), *TINY],
            2,
            "cannot create the output folder",
        ),
        (
            [
                "run",
                "clustering",
                "--set",
                str(tmp_path / "bad.toml"),
                "--out",
                str(tmp_path / "t"),
                *TINY,
            ],
            2,
            "invalid TOML",
        ),
        (
            ["run", "clustering", "--set", "beta=-1", "--out", str(tmp_path / "b"), *TINY],
            2,
            "beta = -1.0 is out of range: must be in [0, 1000]",
        ),
        (["plot", str(tmp_path / "missing")], 2, "not found"),
    ]
    trunc = tmp_path / "trunc"
    trunc.mkdir()
    (trunc / "result.nc").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    cases.append((["plot", str(trunc)], 2, "cannot be read"))
    plain = tmp_path / "plain"
    plain.mkdir()
    xr.Dataset({"a": ("x", np.ones(2))}).to_netcdf(plain / "result.nc", engine="h5netcdf")
    cases.append((["plot", str(plain)], 2, "not written by meanfield run"))
    for argv, code, msg in cases:
        assert main(argv) == code, argv
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, (argv, err)
    assert not (tmp_path / "t").exists() and not (tmp_path / "b").exists()  # nothing left behind


def test_one_writer_per_output_folder(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    with folder_lock(out):
        with pytest.raises(Locked, match=f"pid {os.getpid()}"):
            with folder_lock(out):
                pass
        assert main(["run", "clustering", "--out", str(out), *TINY]) == 5
        assert "being written by another meanfield run" in capsys.readouterr().err
    assert main(["run", "clustering", "--out", str(out), *TINY]) == 0  # released


def test_outputs_respect_the_umask(tmp_path):
    out = tmp_path / "o"
    assert main(["run", "clustering", "--out", str(out), *TINY]) == 0
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((out / "result.nc").stat().st_mode) == 0o666 & ~mask


def test_list_into_a_closed_pipe_and_version():
    proc = subprocess.run(
        f"{sys.executable} -m meanfield list | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr and proc.stdout.count("\n") == 1
    ver = subprocess.run(
        [sys.executable, "-m", "meanfield", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ver.stdout.strip() == f"meanfield {mf.__version__}"


@pytest.mark.slow
def test_grid_and_set_conflicts_and_resume_without_retyping(tmp_path, capsys):
    out = tmp_path / "o"
    sets = [
        "--set",
        "n=6",
        "--set",
        "t1=1",
        "--set",
        "n_save=5",
        "--set",
        "chunks=4",
        "--no-progress",
    ]
    assert main(["sweep", "clustering", "--grid", "seed=0,0", "--out", str(out)]) == 2
    assert "repeated values [0]" in capsys.readouterr().err
    assert (
        main(["sweep", "clustering", "--grid", "beta=1,2", "--set", "beta=7", "--out", str(out)])
        == 2
    )
    assert "both set (--set) and swept (--grid)" in capsys.readouterr().err
    (tmp_path / "s.toml").write_text("seed = true\n")
    assert main(["run", "clustering", "--set", str(tmp_path / "s.toml"), "--out", str(out)]) == 2
    assert "bad value True for 'seed': expected int" in capsys.readouterr().err
    assert not out.exists()
    assert main(["run", "clustering", "--out", str(out), *sets, "--max-chunks", "1"]) == 4
    assert (
        main(["run", "clustering", "--out", str(out), "--resume", "--set", "n=7", "--no-progress"])
        == 3
    )
    assert "n = 6 then, 7 now" in capsys.readouterr().err  # the mismatch names the key
    assert (
        main(["run", "clustering", "--out", str(out), "--resume", "--no-progress"]) == 0
    )  # overrides from run.json
    ref = tmp_path / "ref"
    assert main(["run", "clustering", "--out", str(ref), *sets]) == 0
    a, b = xr.load_dataset(out / "result.nc"), xr.load_dataset(ref / "result.nc")
    np.testing.assert_array_equal(a.x.values, b.x.values)


def test_show_prints_the_resolved_config_with_element_types(capsys):
    assert main(["show", "phase-diagram", "--set", "betas=1,2"]) == 0
    out = capsys.readouterr().out
    assert "betas: tuple[float, ...] = (1.0, 2.0)" in out


def test_a_run_that_cannot_fit_is_refused_before_the_solve(monkeypatch, no_hook):
    import meanfield.particles as particles

    x0 = _x0()
    est = particles.memory_estimate(mf.Attention(1.0), 8, 3, 2)
    assert est["total"] == est["state"] + est["attention"] > 0
    monkeypatch.setattr(particles, "available_memory", lambda: est["total"] // 2)
    before = eqx.debug.get_num_traces(_simulate)
    with pytest.raises(
        ValueError, match=r"simulate needs about .* GB .* only .* available.*Chunked"
    ):
        mf.simulate(mf.Attention(1.0), x0, [0.0, 1.0])
    assert eqx.debug.get_num_traces(_simulate) == before
    monkeypatch.setattr(particles, "available_memory", lambda: None)  # unknown: no refusal
    assert mf.simulate(mf.Attention(1.0), x0, [0.0, 1.0]).xs.shape == (2, 8, 3)


def test_full_disk_while_drawing_keeps_the_result_and_leaves_no_stale_checkpoint(
    tmp_path, monkeypatch, capsys
):
    """Injected ENOSPC in the figure step: result.nc is complete, no checkpoint is left to block
    anything, the refusal is one line, and `meanfield plot` redraws the figures afterwards."""
    import errno

    from meanfield.run import get_preset

    out = tmp_path / "o"
    preset = type(get_preset("clustering"))

    def full_disk(self, ds, outdir):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(preset, "plot", full_disk)
        assert (
            main(
                [
                    "run",
                    "clustering",
                    "--out",
                    str(out),
                    *TINY,
                    "--set",
                    "chunks=2",
                    "--checkpoint-every",
                    "1",
                ]
            )
            == 3
        )
    err = capsys.readouterr().err.strip()
    assert (
        "No space left on device" in err and "meanfield plot" in err and len(err.splitlines()) == 1
    )
    assert (out / "result.nc").exists() and not (out / "checkpoint.npz").exists()
    assert xr.load_dataset(out / "result.nc").attrs["preset"] == "clustering"
    assert main(["plot", str(out)]) == 0 and list(out.glob("*.png"))


@pytest.mark.slow
def test_host_steps_checkpoint_and_resume_to_the_same_result(tmp_path, capsys):
    """A host-side preset (prompt-parallel: the theory, then one step per N) paused after its first
    step resumes at the next one and ends with the uninterrupted result."""
    sets = [
        "--set",
        "ns=8,16",
        "--set",
        "t1=5",
        "--set",
        "n_save=4",
        "--set",
        "quadrature=32",
        "--set",
        "n_starts=2",
        "--set",
        "hops=0",
        "--no-progress",
    ]
    out, ref = tmp_path / "o", tmp_path / "ref"
    assert main(["run", "prompt-parallel", "--out", str(out), *sets, "--max-chunks", "1"]) == 4
    assert "paused after 1 host step" in capsys.readouterr().err
    with np.load(out / "checkpoint.npz") as ck:
        assert any(k.startswith("host::theory::") for k in ck) and not any(
            k.startswith("host::n=") for k in ck
        )
    assert main(["run", "prompt-parallel", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert main(["run", "prompt-parallel", "--out", str(ref), *sets]) == 0
    a, b = xr.load_dataset(out / "result.nc"), xr.load_dataset(ref / "result.nc")
    for v in b.data_vars:
        np.testing.assert_array_equal(a[v].values, b[v].values)
    assert not (out / "checkpoint.npz").exists()


def test_figures_command_regenerates_a_presets_png(tmp_path):
    docs = tmp_path / "docs"
    assert (
        main(
            [
                "figures",
                "cesaro",
                "--out",
                str(tmp_path / "runs"),
                "--docs",
                str(docs),
                "--no-progress",
            ]
        )
        == 0
    )
    assert (docs / "cesaro.png").stat().st_size > 10_000
    assert main(["figures", "nope", "--docs", str(docs)]) == 2


def test_under_a_users_jit_the_real_message_comes_first(capfd):
    """Inside jax.jit the values are tracers, so the check runs at run time; its one line is
    printed before JAX's long callback traceback (best effort), and the error still stops the run."""
    x0 = _x0()
    f = jax.jit(lambda r: mf.simulate(mf.Attention(1.0), x0, jnp.array([0.0, 1.0]), rtol=r).final)
    with pytest.raises(Exception, match="rtol and atol must be finite"):
        f(-1.0)
    err = capfd.readouterr().err
    assert err.startswith("meanfield: error: rtol and atol must be finite and >= 0, not both 0")
    assert (
        f(1e-6).shape == (8, 3) and "meanfield: error" not in capfd.readouterr().err
    )  # good values: silent


@pytest.mark.slow
def test_interrupt_mid_write_leaves_no_partial_result_and_resumes(tmp_path, monkeypatch, capsys):
    """Fault injection: Ctrl-C while result.nc is being written (half a file on disk). Afterwards
    there is no result.nc and no temporary file, the last checkpoint is intact (exit 130 with the
    --resume hint), and --resume finishes with the uninterrupted result."""
    out, ref = tmp_path / "o", tmp_path / "ref"
    sets = [*TINY, "--set", "chunks=2"]
    real = xr.Dataset.to_netcdf

    def interrupted(self, path, *a, **k):
        with open(path, "wb") as fh:
            fh.write(
                b"\x89HDF\r\n\x1a\n" + b"\0" * 64
            )  # the first bytes of a file, then the interrupt
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(xr.Dataset, "to_netcdf", interrupted)
        assert main(["run", "clustering", "--out", str(out), *sets]) == 130
    assert "--resume" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir() if p.name != ".meanfield.lock") == [
        "checkpoint.npz",
        "run.json",
    ]
    assert xr.Dataset.to_netcdf is real
    assert main(["run", "clustering", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert main(["run", "clustering", "--out", str(ref), *sets]) == 0
    np.testing.assert_array_equal(
        xr.load_dataset(out / "result.nc").x.values, xr.load_dataset(ref / "result.nc").x.values
    )
