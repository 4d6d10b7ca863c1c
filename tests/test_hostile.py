"""A hostile user: every value type, traced parameters, solvers that promise no positivity, signals
mid-run, damaged files, full disks. Each case ends in a one-line refusal, a failure code, or the
right answer, never a silent wrong one.

Signals are timed by the executor's pause hook (meanfield.run.signals: ``MEANFIELD_PAUSE_AT``), not
by sleeping: the run stops at a known chunk, the test sends the signal, the run goes on from there.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

import meanfield as mf
from meanfield.pde import (
    RESULTS,
    CausalCoupling,
    CircleMeanField,
    KineticMeanField,
    SphereMeanField,
)
from meanfield.pde.sphere import UNDERSHOOT
from meanfield.particles import RESULTS as PRESULTS
from meanfield.run import checkpoint
from meanfield.run.cli import main

SETS = ["--set", "n=8", "--set", "t1=3", "--set", "n_save=7", "--set", "chunks=3", "--no-progress"]
TYPES = {
    "python": lambda v: v,
    "numpy32": np.float32,
    "numpy64": np.float64,
    "0-d": jnp.asarray,
    "1-d": lambda v: np.array([v]),
}


# ----------------------------------------------------------------------------- values, any type
@pytest.mark.parametrize("kind", sorted(TYPES))
def test_bad_numbers_are_refused_whatever_their_type(kind):
    t = TYPES[kind]
    scalar = kind != "1-d"
    cases = [
        (lambda: CircleMeanField(64, beta=t(float("nan"))), "beta must be finite"),
        (lambda: CircleMeanField(64, a=t(float("inf"))), "a must be finite"),
        (lambda: KineticMeanField(8, 16, beta=t(float("nan"))), "beta must be finite"),
        (
            lambda: KineticMeanField(8, 16, prompt_theta=t(float("nan"))),
            "prompt_theta must be finite",
        ),
        (
            lambda: KineticMeanField(8, 16, prompt_theta=[0.0], prompt_weight=t(-1.0)),
            "prompt_weight must be finite and >= 0",
        ),
        (lambda: SphereMeanField(8, beta=t(float("nan"))), "beta must be finite and nonzero"),
        (lambda: SphereMeanField(8, beta=t(0.0)), "beta must be finite and nonzero"),
        (lambda: mf.Attention(t(float("nan"))), "beta must be finite"),
        (lambda: mf.ALiBi(t(-1.0)), "slope must be finite and >= 0"),
        (
            lambda: mf.Prompt(np.ones((1, 3)), mass=t(-1.0) if not scalar else np.array([-1.0])),
            "prompt.mass",
        ),
    ]
    if scalar:
        cases += [
            (lambda: CausalCoupling(t(float("nan"))), "lam must be finite and >= 0"),
            (lambda: mf.Window(t(float("inf"))), "width must be finite and > 0"),
            (lambda: mf.RoPE(base=float(t(0.0))), "base must be finite and > 0"),
        ]
    for fn, match in cases:
        with pytest.raises(ValueError, match=match) as info:
            fn()
        assert "\n" not in str(info.value)


def test_shapes_and_counts_that_are_not_what_they_say(no_hook):
    with pytest.raises(ValueError, match="m must be an integer number of cells >= 8, got 8.7"):
        CircleMeanField(8.7)
    with pytest.raises(ValueError, match="not NaN and not"):
        mf.CustomBias(jnp.array([[0.0, jnp.nan], [0.0, 0.0]]))
    assert mf.CustomBias.from_bool(jnp.eye(3, dtype=bool)).matrix.shape == (
        1,
        3,
        3,
    )  # -inf stays allowed
    with pytest.raises(ValueError, match="positive mass"):
        CircleMeanField(64).solve(jnp.zeros(64), jnp.linspace(0, 1, 3))
    with pytest.raises(ValueError, match="positive mass"):
        KineticMeanField(8, 16).solve(jnp.zeros((8, 16)), jnp.linspace(0, 1, 3))


def test_negative_beta_is_one_model_everywhere():
    """beta < 0 is accepted by the kernel, the particles and all three density solvers."""
    x0 = mf.sphere_uniform(jax.random.key(0), 16, 3)
    assert (
        mf.simulate(mf.Attention(np.float32(-1.5)), x0, jnp.linspace(0, 2, 3)).result
        == PRESULTS.successful
    )
    circle = CircleMeanField(64, beta=-1.5)
    assert (
        circle.solve(
            circle.uniform() * (1 + 0.1 * jnp.cos(circle.theta)), jnp.linspace(0, 1, 3)
        ).result
        == RESULTS.successful
    )
    kin = KineticMeanField(8, 32, beta=jnp.asarray(-1.5))
    assert kin.solve(kin.von_mises(1.0), jnp.linspace(0, 1, 3)).result == RESULTS.successful
    sphere = SphereMeanField(8, beta=-1.5)
    assert (
        sphere.solve(sphere.perturbed(2, 0, 0.05), jnp.linspace(0, 1, 3)).result
        == RESULTS.successful
    )


# ----------------------------------------------------------------------------- traced values
def test_traced_bad_parameters_fail_their_own_point_only():
    """Under vmap a NaN beta makes its point return RESULTS.invalid_parameter (NaN saves); the other
    points equal their unbatched solves. No host callback: the check is computed in the graph."""
    betas = jnp.array([1.0, jnp.nan, -2.0])
    ts = jnp.linspace(0, 1, 3)
    rho0 = CircleMeanField(64).uniform() * (1 + 0.1 * jnp.cos(CircleMeanField(64).theta))
    sols = jax.vmap(lambda b: CircleMeanField(64, beta=b).solve(rho0, ts, throw=False))(betas)
    assert sols.result._value.tolist() == [0, RESULTS.invalid_parameter._value, 0]
    assert bool(jnp.all(jnp.isnan(sols.rho[1]))) and bool(
        jnp.all(jnp.isfinite(sols.rho[jnp.array([0, 2])]))
    )
    np.testing.assert_allclose(
        sols.rho[2], CircleMeanField(64, beta=-2.0).solve(rho0, ts).rho, rtol=1e-12
    )

    sph = jax.vmap(
        lambda b: SphereMeanField(8, beta=b).solve(
            SphereMeanField(8).perturbed(1, 0, 0.05), ts, throw=False
        )
    )(jnp.array([2.0, 0.0, jnp.inf]))
    assert sph.result._value.tolist() == [
        0,
        RESULTS.invalid_parameter._value,
        RESULTS.invalid_parameter._value,
    ]

    kin = jax.vmap(
        lambda lam: KineticMeanField(8, 16, coupling=CausalCoupling(lam)).solve(
            KineticMeanField(8, 16).von_mises(1.0), ts, throw=False
        )
    )(jnp.array([1.0, -1.0]))
    assert kin.result._value.tolist() == [0, RESULTS.invalid_parameter._value]

    x0 = mf.sphere_uniform(jax.random.key(1), 8, 3)
    traj = jax.vmap(lambda b: mf.simulate(mf.Attention(b), x0, ts, throw=False))(betas)
    assert traj.result._value.tolist() == [0, PRESULTS.invalid_parameter._value, 0]
    assert bool(jnp.all(jnp.isnan(traj.xs[1])))


# ----------------------------------------------------------------------------- solvers
def test_positivity_holds_under_every_solver():
    """SA, beta = 8, M = 256, dt = 0.1 to T = 20: Midpoint and Tsit5 (neither SSP) undershoot; that
    is a failure now, not a returned density."""
    pde = CircleMeanField(256, beta=8.0)
    rho0 = (1 + 0.05 * jnp.cos(3 * pde.theta)) / (2 * jnp.pi)
    for solver in (diffrax.Midpoint(), diffrax.Tsit5()):
        sol = pde.solve(rho0, jnp.linspace(0, 20, 5), dt=0.1, solver=solver, throw=False)
        assert sol.result in (RESULTS.negative_density, RESULTS.nonfinite_density), type(
            solver
        ).__name__
        good = sol.rho[jnp.all(jnp.isfinite(sol.rho), axis=1)]
        assert float(jnp.min(good)) >= -100 * jnp.finfo(good.dtype).eps * float(jnp.max(good))
        with pytest.raises(mf.SolverError, match="negative|non-finite"):
            pde.solve(rho0, jnp.linspace(0, 20, 5), dt=0.1, solver=solver)


def test_strict_causal_sa_runs_with_a_still_first_row():
    """Strict causal SA: the first row sees no key, so its field is zero (not 0/0)."""
    pde = KineticMeanField(16, 32, beta=2.0, coupling=CausalCoupling(1.0, strict=True))
    f0 = pde.von_mises(1.0, 3.0 * pde.s)
    sol = pde.solve(f0, jnp.linspace(0, 2, 3))
    assert sol.result == RESULTS.successful
    np.testing.assert_allclose(sol.f[-1, 0], f0[0], atol=1e-14)  # the first row does not move
    assert float(jnp.max(jnp.abs(sol.f[-1, 1:] - f0[1:]))) > 1e-3  # the others do


def test_sphere_undershoot_tolerance():
    """A band-limited state dipping below -UNDERSHOOT max is refused as a start and is unresolved
    as a state; one within it is accepted."""
    pde = SphereMeanField(8, beta=2.0)
    y1 = pde.harmonic(1, 0) / jnp.max(jnp.abs(pde.harmonic(1, 0)))
    for depth, ok in ((0.5 * UNDERSHOOT, True), (5 * UNDERSHOOT, False)):
        rho = (1 + (1 + depth) * y1) / (4 * np.pi)  # min = -depth / (4 pi), max ~ 2 / (4 pi)
        assert bool(pde.is_bad(rho)) != ok
        if not ok:
            with pytest.raises(ValueError, match="rho0 must be finite and non-negative"):
                pde.solve(rho, jnp.linspace(0, 1, 3))


def test_fixed_steps_off_the_sphere_fail():
    x0 = mf.sphere_uniform(jax.random.key(0), 16, 3)
    with pytest.raises(mf.SolverError, match="left the unit sphere"):
        mf.simulate(mf.Attention(1.0), x0, jnp.linspace(0, 100, 3), solver="euler", dt=50.0)
    traj = mf.simulate(
        mf.Attention(1.0), x0, jnp.linspace(0, 100, 3), solver="euler", dt=50.0, throw=False
    )
    assert traj.result == PRESULTS.left_sphere and bool(jnp.all(jnp.isnan(traj.xs[-1])))
    assert (
        mf.simulate(mf.Attention(1.0), x0, jnp.linspace(0, 5, 3), solver="rk4", dt=0.05).result
        == PRESULTS.successful
    )


# ----------------------------------------------------------------------------- files and exit codes
def test_files_that_are_not_what_they_seem(tmp_path, capsys):
    out = tmp_path / "o"
    (tmp_path / "d.toml").mkdir()
    assert (
        main(["run", "clustering", "--set", str(tmp_path / "d.toml"), "--out", str(out), *SETS])
        == 2
    )
    assert "d.toml: cannot read the TOML file" in capsys.readouterr().err
    (tmp_path / "b.toml").write_bytes(b"beta = 2\n\xff\xfe\n")
    assert (
        main(["run", "clustering", "--set", str(tmp_path / "b.toml"), "--out", str(out), *SETS])
        == 2
    )
    assert "b.toml: not a UTF-8 text file" in capsys.readouterr().err
    (tmp_path / "g.toml").write_text("beta = 2\n")
    assert (
        main(
            [
                "sweep",
                "clustering",
                "--set",
                str(tmp_path / "g.toml"),
                "--grid",
                "beta=1,2",
                "--out",
                str(out),
                *SETS,
            ]
        )
        == 2
    )
    assert "both set (--set) and swept (--grid)" in capsys.readouterr().err
    assert main(["run", "clustering", "--out", str(tmp_path / ("x" * 300)), *SETS]) == 2
    assert "File name too long" in capsys.readouterr().err
    assert main(["run", "clustering", "--out", str(out), "--resume", *SETS]) == 3
    assert "nothing to resume" in capsys.readouterr().err and not out.exists()


def test_plot_of_an_incomplete_or_foreign_result(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["run", "clustering", "--out", str(out), *SETS]) == 0
    ds = xr.load_dataset(out / "result.nc")
    ds.drop_vars("diameter").to_netcdf(out / "result.nc", engine="h5netcdf")
    capsys.readouterr()
    assert main(["plot", str(out)]) == 2
    assert "is not a complete clustering result" in capsys.readouterr().err
    ds.attrs["preset"] = "cesaro"
    ds.to_netcdf(out / "result.nc", engine="h5netcdf")
    assert main(["plot", str(out)]) == 2
    assert "is not a complete cesaro result" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["truncated", "garbage", "nan"])
def test_corrupt_checkpoint_is_named(damage, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["run", "clustering", "--out", str(out), "--max-chunks", "1", *SETS]) == 4
    ckpt = out / "checkpoint.npz"
    if damage == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    elif damage == "garbage":
        ckpt.write_bytes(b"\0garbage" * 50)
    else:
        arrays = dict(np.load(ckpt))
        np.savez(
            ckpt,
            **{k: np.full_like(v, np.nan) if v.dtype.kind == "f" else v for k, v in arrays.items()},
        )
    capsys.readouterr()
    assert main(["run", "clustering", "--out", str(out), "--resume", *SETS]) == 3
    err = capsys.readouterr().err
    assert f"{ckpt} is corrupt" in err and err.count("\n") == 1


def test_full_disk_at_the_first_checkpoint(tmp_path, monkeypatch, capsys):
    def full(path, arrays):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(checkpoint, "save_npz_atomic", full)  # the checkpoint module writes it
    assert main(["run", "clustering", "--out", str(tmp_path / "o"), *SETS]) == 3
    err = capsys.readouterr().err
    assert (
        "cannot write" in err
        and "checkpoint.npz: No space left on device" in err
        and err.count("\n") == 1
    )


def test_force_over_another_presets_run_leaves_no_stale_figure(tmp_path):
    out = tmp_path / "o"
    assert main(["run", "causal-clustering", "--out", str(out), *SETS]) == 0
    assert (out / "causal-clustering.png").exists()
    assert main(["run", "clustering", "--out", str(out), "--force", *SETS]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["clustering.png"]


# ----------------------------------------------------------------------------- signals
def _cli(args, pause=None, hold=False, tmp=None):
    env = dict(os.environ)
    if pause:
        env.update(MEANFIELD_PAUSE_AT=pause, MEANFIELD_PAUSE_FILE=str(tmp / "paused"))
        if hold:
            env["MEANFIELD_PAUSE_HOLD"] = "1"
    return subprocess.Popen(
        [sys.executable, "-m", "meanfield.run.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_paused(proc, tmp):
    deadline = time.time() + 120
    while not (tmp / "paused").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.01)


@pytest.mark.slow
def test_sigint_stops_at_a_safe_point_and_resumes_bit_identically(tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "o"
    assert main(["run", "clustering", "--out", str(ref), *SETS]) == 0
    proc = _cli(["run", "clustering", "--out", str(out), *SETS], pause="chunk=2", tmp=tmp_path)
    _wait_paused(proc, tmp_path)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted after 2 chunk(s)" in err and "continue with --resume" in err
    assert (out / "checkpoint.npz").exists() and (out / "run.json").exists()
    assert (
        main(["run", "clustering", "--out", str(out), "--resume", "--no-progress"]) == 0
    )  # overrides from run.json
    np.testing.assert_array_equal(
        xr.load_dataset(out / "result.nc").x.values, xr.load_dataset(ref / "result.nc").x.values
    )


@pytest.mark.slow
def test_second_sigint_exits_at_once(tmp_path):
    proc = _cli(
        ["run", "clustering", "--out", str(tmp_path / "o"), *SETS],
        pause="chunk=1",
        hold=True,
        tmp=tmp_path,
    )
    _wait_paused(proc, tmp_path)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)  # the hold keeps the run at the pause point; the first signal only set the flag
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted again" in err


@pytest.mark.slow
def test_killed_before_its_first_checkpoint_resumes_the_recorded_run(tmp_path):
    """SIGKILL while the first chunk's checkpoint is not yet written: run.json stays, and --resume
    runs the recorded configuration from the start (not the defaults)."""
    ref, out = tmp_path / "ref", tmp_path / "o"
    proc = _cli(["run", "clustering", "--out", str(out), *SETS], pause="chunk=1", tmp=tmp_path)
    _wait_paused(proc, tmp_path)
    proc.kill()
    proc.communicate()
    assert (out / "run.json").exists() and not (out / "checkpoint.npz").exists()
    assert main(["run", "clustering", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert main(["run", "clustering", "--out", str(ref), *SETS]) == 0
    np.testing.assert_array_equal(
        xr.load_dataset(out / "result.nc").x.values, xr.load_dataset(ref / "result.nc").x.values
    )


@pytest.mark.slow
def test_sigint_between_host_steps(tmp_path):
    sets = [
        "--set",
        "depths=1,2,4",
        "--set",
        "ns=64,128",
        "--set",
        "n_conv=64,128,256",
        "--no-progress",
    ]
    ref, out = tmp_path / "ref", tmp_path / "o"
    proc = _cli(["run", "cesaro", "--out", str(out), *sets], pause="step=1", tmp=tmp_path)
    _wait_paused(proc, tmp_path)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted after 1 host step(s)" in err, err
    assert main(["run", "cesaro", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert main(["run", "cesaro", "--out", str(ref), *sets]) == 0
    a, b = xr.load_dataset(out / "result.nc"), xr.load_dataset(ref / "result.nc")
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values)
