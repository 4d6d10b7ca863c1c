"""The meanfield command: presets, sweeps, outputs, checkpoints and refusals."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import xarray as xr

from meanfield.run.cli import main
from meanfield.run import ConfigError, apply_overrides
from meanfield.run import execute, get_preset, load_presets, parse_grid
from meanfield.run.variables import missing_attrs

OBSERVABLES = {
    "energy",
    "diameter",
    "min_cosine",
    "mean_cosine",
    "n_clusters",
    "rank_collapse",
    "effective_rank",
}
PRESETS = load_presets()  # every preset declares its tiny run (tiny, slow, outputs): no table here


def test_every_preset_is_listed_and_tested(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name, preset in PRESETS.items():
        assert name in out
        assert preset.tiny and preset.outputs, f"{name} declares no tiny run (tiny, outputs)"


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if PRESETS[n].slow else n for n in sorted(PRESETS)],
)
def test_preset_runs_tiny(name, tmp_path):
    preset = get_preset(name)
    cfg = apply_overrides(preset.Config(), list(preset.tiny))
    ds = execute(preset, cfg, parse_grid(cfg, None), tmp_path, progress=False)
    back = xr.load_dataset(tmp_path / "result.nc")
    # what the preset says its result holds ("time": a dimension), and the particle presets' trajectory
    assert preset.outputs <= set(back.data_vars) | set(back.dims), (
        preset.outputs - set(back.data_vars) - set(back.dims)
    )
    if "x" in preset.outputs:
        assert {"time", "token", "dim"} <= set(back.x.dims)
    assert (
        back.attrs["preset"] == name and "meanfield_version" in back.attrs and "seed" in back.attrs
    )
    # self-describing: long_name, units and description on every variable and coordinate, in the file
    assert not missing_attrs(back), missing_attrs(back)
    assert json.loads(back.attrs["config"]) == json.loads(ds.attrs["config"])
    assert preset.Config.from_attrs(back) == cfg  # the typed config, read back
    assert all(
        np.all(np.isfinite(back[v].values))
        for v in back.data_vars
        if back[v].dtype.kind == "f"
        and not v.startswith(
            # NaN by design: absent states, unresolved densities, padding of a shorter branch
            ("pushforward", "closed_form", "error_rate", "tcrit_particles", "order_theory")
        )
        and v not in ("order_pde", "branch_sigma", "branch_order", "branch_stable")
    )
    pngs = list(tmp_path.glob("*.png"))
    assert pngs and all(p.stat().st_size > 10_000 for p in pngs)
    assert not (tmp_path / "checkpoint.npz").exists()


@pytest.mark.slow
def test_sweep_is_the_cross_product(tmp_path):
    preset = get_preset("clustering")
    cfg = apply_overrides(preset.Config(), list(PRESETS["clustering"].tiny))
    grid = parse_grid(cfg, ["beta=0.5,2,4", "t1=2,3"])  # one batched (vmap) key, one static key
    ds = execute(preset, cfg, grid, tmp_path, progress=False)
    assert ds.x.dims[:2] == ("beta", "t1") and ds.x.shape[:2] == (3, 2)
    np.testing.assert_array_equal(ds.beta.values, [0.5, 2, 4])
    np.testing.assert_array_equal(ds.t.values[0, 1, -1], 3.0)  # true save times kept per point
    # each point equals the same config run alone
    single = execute(
        preset,
        apply_overrides(cfg, ["beta=2", "t1=3"]),
        parse_grid(cfg, None),
        tmp_path / "one",
        progress=False,
    )
    np.testing.assert_allclose(ds.x.values[1, 1], single.x.values, rtol=0, atol=1e-10)


def test_toml_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('beta = 3.5\nmask = "causal"\nn = 10\n')
    cfg = apply_overrides(get_preset("clustering").Config(), [str(path), "n=12"])
    assert (cfg.beta, cfg.mask, cfg.n) == (3.5, "causal", 12)


def _files(d):
    """Every output of a run folder (the lock file records the last holder, not an output)."""
    return {
        p.name: (p.stat().st_mtime_ns, p.read_bytes())
        for p in d.iterdir()
        if p.name != ".meanfield.lock"
    }


def test_bad_input_exit_codes_touch_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "run",
                "clustering",
                "--out",
                str(out),
                "--no-progress",
                *sum((["--set", s] for s in list(PRESETS["clustering"].tiny)), []),
            ]
        )
        == 0
    )
    before = _files(out)
    assert main(["run", "clustering", "--set", "nope=1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'nope'" in err and "beta: float" in err  # lists the valid keys
    assert main(["run", "clustering", "--set", "n=abc", "--out", str(out)]) == 2
    assert "bad value 'abc' for 'n': expected int" in capsys.readouterr().err
    assert main(["run", "clustering", "--set", "mask=diagonal", "--out", str(out)]) == 2
    assert main(["run", "nope-preset"]) == 2
    assert main(["sweep", "clustering", "--grid", "beta", "--out", str(out)]) == 2
    assert (
        main(
            [
                "run",
                "clustering",
                "--out",
                str(out),
                *sum((["--set", s] for s in list(PRESETS["clustering"].tiny)), []),
            ]
        )
        == 3
    )
    assert "already exists; pass --force" in capsys.readouterr().err
    assert _files(out) == before


def _cli(args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "meanfield.run.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kw,
    )


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(tmp_path):
    sets = ["n=24", "t1=1e4", "n_save=121", "chunks=60"]
    args = ["run", "metastability", "--no-progress", *sum((["--set", s] for s in sets), [])]
    ref = _cli([*args, "--out", str(tmp_path / "ref")])
    assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()

    killed = tmp_path / "killed"
    proc = _cli([*args, "--out", str(killed), "--checkpoint-every", "1"])
    ckpt = killed / "checkpoint.npz"
    deadline = time.time() + 240
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists() and not (killed / "result.nc").exists(), "run was not interrupted mid-way"
    pos = np.load(ckpt)["pos"]
    assert 0 < pos[1] < 60

    # without --resume the unfinished run is refused; with it, it finishes identically
    again = _cli([*args, "--out", str(killed)])
    assert again.wait(timeout=120) == 3
    resumed = _cli([*args, "--out", str(killed), "--resume"])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    a, b = xr.load_dataset(tmp_path / "ref" / "result.nc"), xr.load_dataset(killed / "result.nc")
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values)
    assert not ckpt.exists()


def test_config_validation_messages():
    with pytest.raises(
        ConfigError, match=r"chunks = 0 is out of range: must be in \[1, n_save - 1\], n_save = 61"
    ):
        apply_overrides(get_preset("clustering").Config(), ["chunks=0"])
    with pytest.raises(ConfigError, match="--grid key 'beta' given twice"):
        parse_grid(get_preset("clustering").Config(), ["beta=1", "beta=2"])


def test_save_figure_is_atomic(tmp_path):
    """A figure write that fails half-way leaves the previous figure byte-identical and no
    temporary file; a good write replaces it (experiments._common.save_figure, used by every
    preset's plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from experiments._common import save_figure

    path = tmp_path / "fig.png"
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    assert save_figure(fig, path) == path
    before = path.read_bytes()
    assert before[:8] == b"\x89PNG\r\n\x1a\n"

    class Boom(RuntimeError):
        pass

    fig2, ax2 = plt.subplots()
    ax2.plot([0, 1], [1, 0])

    def fail(*args, **kwargs):
        raise Boom("disk full")

    fig2.savefig = fail
    with pytest.raises(Boom):
        save_figure(fig2, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png"]
    fig3, ax3 = plt.subplots()
    ax3.plot([0, 1], [0.5, 0.5])
    save_figure(fig3, path, dpi=50)
    assert path.read_bytes() != before


def test_friction_hints(tmp_path, capsys):
    """Near-miss names get a suggestion; --grid on run points to sweep; the help has no RST markup."""
    assert main(["run", "clustering", "--set", "bta=2", "--out", str(tmp_path)]) == 2
    assert "did you mean 'beta'?" in capsys.readouterr().err
    assert main(["run", "clustring", "--out", str(tmp_path)]) == 2
    assert "did you mean 'clustering'?" in capsys.readouterr().err
    assert main(["run", "clustering", "--grid", "beta=1,2", "--out", str(tmp_path)]) == 2
    assert "meanfield sweep clustering --grid beta=1,2" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "``" not in capsys.readouterr().out


@pytest.mark.parametrize("mask", ["alibi", "causal-window"])
def test_particle_presets_take_the_library_masks(mask, tmp_path):
    """The mask key builds the library's masks: a causal mask keeps token 0 fixed; a two-sided
    ALiBi mask does not."""
    preset = get_preset("clustering")
    cfg = apply_overrides(
        preset.Config(),
        [*list(PRESETS["clustering"].tiny), f"mask={mask}", "alibi=0.5", "window=3"],
    )
    ds = execute(preset, cfg, parse_grid(cfg, None), tmp_path, progress=False)
    moved = float(np.abs(ds.x.values[-1, 0] - ds.x.values[0, 0]).max())
    assert (moved < 1e-12) == mask.startswith("causal"), moved


def test_results_describe_their_parameters(tmp_path):
    """A sweep's file names the values behind each variable (cluster_tol for n_clusters) and
    describes its swept coordinates as well as its variables."""
    preset = get_preset("clustering")
    cfg = apply_overrides(preset.Config(), [*list(PRESETS["clustering"].tiny), "cluster_tol=0.05"])
    execute(preset, cfg, parse_grid(cfg, ["beta=1,2", "t1=2,3"]), tmp_path, progress=False)
    back = xr.load_dataset(tmp_path / "result.nc")
    assert not missing_attrs(back), missing_attrs(back)
    assert "cluster_tol = 0.05" in back.n_clusters.attrs["description"]
    assert (
        back.beta.attrs["long_name"] == "inverse temperature beta" and back.t1.attrs["units"] == "1"
    )
    assert back.energy.attrs["long_name"] == "interaction energy E_beta"
