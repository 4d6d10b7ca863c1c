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

TINY = {
    "clustering": ["n=8", "t1=3", "n_save=7", "chunks=2"],
    "causal-clustering": ["n=8", "t1=3", "n_save=7", "chunks=2"],
    "phase-diagram": ["n=6", "betas=1,8", "n_seeds=2", "t1=2", "n_save=5", "chunks=2"],
    "layernorm": ["n=6", "d=4", "n_layers=6", "chunks=2"],
    "metastability": ["n=8", "t1=50", "n_save=9", "chunks=2"],
    "anti-collapse": ["n=8", "t1=5", "n_save=7", "chunks=2", "quadrature=40"],
    "pe-sweep": ["n=6", "alphas=0,0.5", "betas=1,2", "t1=2", "n_save=5", "chunks=2", "quadrature=30"],
    "prompt-sweep": ["n=6", "sizes=1,3", "weights=0.5,2", "t1=2", "n_save=5", "chunks=2"],
    "meanfield-circle": ["m=32", "betas=1,2", "t1=1", "n_save=5", "chunks=2"],
    "particles-vs-pde": ["ns=8,16", "n_seeds=2", "m=64", "t1=0.5"],
    "step0": ["n=8", "depth=2", "width=8", "heads=2", "n_inits=2"],
    "cesaro": ["depths=1,2,4", "ns=64,128", "n_conv=64,128,256"],
    "masks": ["n=12", "d=4", "depths=1,3", "window=3", "n_starts=2"],
    "recall-capacity": ["ds=4,8,16", "ls=2,4,8", "ns=32,64,128", "d0=8", "l0=4", "n0=64", "seeds=1",
                        "regimes=early-gd", "m_min=2", "m_max=16"],
    "rope-long-context": ["d=8", "bases=10,100", "lengths=4,64", "n_samples=2000", "tradeoff_bases=10,100",
                          "short=8", "long=64", "engine_d=8", "engine_heads=2", "engine_lengths=8,16",
                          "n_sequences=1", "twin_max_length=64"],
    "kinetic-tcrit": ["betas=1", "sizes=16,32", "pde_s=8", "pde_m=16", "pde_modes=4", "n_max=6", "n_particles=8",
                      "runs=8", "bins=4", "profile_beta=1", "n_times=6"],
    "prompt-parallel": ["ns=8,16", "t1=5", "n_save=4", "quadrature=32", "n_starts=2", "hops=0"],
    "aux-metastability": ["n=8", "betas=1,4", "alphas=0,0.4", "weights=0,1", "n_starts=4", "t1=50",
                          "search_starts=2", "search_hops=0"],
    "universality": ["n=8", "weights=1,4", "t1=20", "n_starts=2", "ns=8,16", "learned_ns=8", "fit_steps=3", "s2_side=3"],
    "sphere-meanfield": ["L=8", "betas=4", "efolds=1.5", "n_save=4", "ell_max=3", "ns=16,32", "n_seeds=2", "pvp_L=8",
                         "pvp_t1=0.5", "tail=1e-3"],
    "kinetic-causal": ["n_s=16", "m=16", "betas=1,2", "bins=8", "t_early=1", "n_early=6", "t1=1.5", "n_late=2", "chunks=2"],
}
GRID_PRESETS = {"pe-sweep", "prompt-sweep"}
DENSITY_PRESETS = {"meanfield-circle": {"rho", "mass"}, "particles-vs-pde": {"w1", "w1_mean"},
                   "kinetic-causal": {"f", "influence", "u_onset"},
                   "aux-metastability": {"pe_fraction_best", "prompt_distinct", "pe_plateau_decades"},
                   "universality": {"w1_quantile_prompts", "w1_floor", "inverse_s1_fraction", "inverse_s2_max_error", "w1_quantile_vs_n",
                                    "learned_w1", "learned_s2_mmd"},
                   "prompt-parallel": {"theta_star", "w1_to_pushforward", "dirac_distance_parallel", "dirac_distance_shared"},
                   "kinetic-tcrit": {"tcrit_closed", "tcrit_propagator", "tcrit_pde", "tcrit_particles", "profile_pde"},
                   "sphere-meanfield": {"rho", "resolved_until", "growth_rate", "growth_rate_theory", "mmd"},
                   "cesaro": {"profile_n64", "interior_rel_error", "dead_zone_depth_n128"},
                   "step0": {"influence", "influence_mean", "alpha_matched"},
                   "masks": {"influence", "first_token_mass", "mean_position_graph_theory"},
                   "recall-capacity": {"capacity_vs_d", "exponent_L", "capacity_vs_N", "theory_vs_L"},
                   "rope-long-context": {"locality", "consistency_flip", "tradeoff_flip", "engine_locality"}}
OBSERVABLES = {"energy", "diameter", "min_cosine", "mean_cosine", "n_clusters", "rank_collapse", "effective_rank"}


def test_every_preset_is_listed_and_tested(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert set(load_presets()) == set(TINY)
    for name in TINY:
        assert name in out


# the presets whose tiny run takes over ~20 s on 2 cores run in the full suite only (slow)
SLOW_TINY = {"kinetic-tcrit", "universality", "particles-vs-pde", "anti-collapse", "recall-capacity", "kinetic-causal",
             "aux-metastability", "rope-long-context", "meanfield-circle", "pe-sweep", "phase-diagram", "prompt-parallel", "step0",
             "sphere-meanfield"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_TINY else n for n in sorted(TINY)])
def test_preset_runs_tiny(name, tmp_path):
    preset = get_preset(name)
    cfg = apply_overrides(preset.Config(), TINY[name])
    ds = execute(preset, cfg, parse_grid(cfg, None), tmp_path, progress=False)
    back = xr.load_dataset(tmp_path / "result.nc")
    if name in DENSITY_PRESETS:
        assert DENSITY_PRESETS[name] <= set(back.data_vars) and ("time" in back.dims or name in ("cesaro", "step0", "masks", "rope-long-context", "recall-capacity", "kinetic-tcrit", "universality", "aux-metastability",
                                                                          "prompt-parallel", "sphere-meanfield"))
    else:
        expected = {"dirac_distance", "n_clusters"} if name in GRID_PRESETS else OBSERVABLES
        assert expected <= set(back.data_vars) and "x" in back
        assert {"time", "token", "dim"} <= set(back.x.dims)
    assert back.attrs["preset"] == name and "meanfield_version" in back.attrs and "seed" in back.attrs
    # self-describing: long_name, units and description on every variable and coordinate, in the file
    assert not missing_attrs(back), missing_attrs(back)
    assert json.loads(back.attrs["config"]) == json.loads(ds.attrs["config"])
    assert all(np.all(np.isfinite(back[v].values)) for v in back.data_vars if back[v].dtype.kind == "f"
               and not v.startswith(("pushforward", "closed_form", "error_rate", "tcrit_particles")))
    pngs = list(tmp_path.glob("*.png"))
    assert pngs and all(p.stat().st_size > 10_000 for p in pngs)
    assert not (tmp_path / "checkpoint.npz").exists()


@pytest.mark.slow
def test_sweep_is_the_cross_product(tmp_path):
    preset = get_preset("clustering")
    cfg = apply_overrides(preset.Config(), TINY["clustering"])
    grid = parse_grid(cfg, ["beta=0.5,2,4", "t1=2,3"])  # one batched (vmap) key, one static key
    ds = execute(preset, cfg, grid, tmp_path, progress=False)
    assert ds.x.dims[:2] == ("beta", "t1") and ds.x.shape[:2] == (3, 2)
    np.testing.assert_array_equal(ds.beta.values, [0.5, 2, 4])
    np.testing.assert_array_equal(ds.t.values[0, 1, -1], 3.0)  # true save times kept per point
    # each point equals the same config run alone
    single = execute(preset, apply_overrides(cfg, ["beta=2", "t1=3"]), parse_grid(cfg, None), tmp_path / "one", progress=False)
    np.testing.assert_allclose(ds.x.values[1, 1], single.x.values, rtol=0, atol=1e-10)


def test_toml_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('beta = 3.5\nmask = "causal"\nn = 10\n')
    cfg = apply_overrides(get_preset("clustering").Config(), [str(path), "n=12"])
    assert (cfg.beta, cfg.mask, cfg.n) == (3.5, "causal", 12)


def _files(d):
    """Every output of a run folder (the lock file records the last holder, not an output)."""
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in d.iterdir() if p.name != ".meanfield.lock"}


def test_bad_input_exit_codes_touch_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "clustering", "--out", str(out), "--no-progress", *sum((["--set", s] for s in TINY["clustering"]), [])]) == 0
    before = _files(out)
    assert main(["run", "clustering", "--set", "nope=1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'nope'" in err and "beta: float" in err  # lists the valid keys
    assert main(["run", "clustering", "--set", "n=abc", "--out", str(out)]) == 2
    assert "bad value 'abc' for 'n': expected int" in capsys.readouterr().err
    assert main(["run", "clustering", "--set", "mask=diagonal", "--out", str(out)]) == 2
    assert main(["run", "nope-preset"]) == 2
    assert main(["sweep", "clustering", "--grid", "beta", "--out", str(out)]) == 2
    assert main(["run", "clustering", "--out", str(out), *sum((["--set", s] for s in TINY["clustering"]), [])]) == 3
    assert "already exists; pass --force" in capsys.readouterr().err
    assert _files(out) == before


def _cli(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "meanfield.run.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


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
    with pytest.raises(ConfigError, match=r"chunks = 0 is out of range: must be in \[1, n_save - 1\], n_save = 61"):
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
    cfg = apply_overrides(preset.Config(), [*TINY["clustering"], f"mask={mask}", "alibi=0.5", "window=3"])
    ds = execute(preset, cfg, parse_grid(cfg, None), tmp_path, progress=False)
    moved = float(np.abs(ds.x.values[-1, 0] - ds.x.values[0, 0]).max())
    assert (moved < 1e-12) == mask.startswith("causal"), moved


def test_results_describe_their_parameters(tmp_path):
    """A sweep's file names the values behind each variable (cluster_tol for n_clusters) and
    describes its swept coordinates as well as its variables."""
    preset = get_preset("clustering")
    cfg = apply_overrides(preset.Config(), [*TINY["clustering"], "cluster_tol=0.05"])
    execute(preset, cfg, parse_grid(cfg, ["beta=1,2", "t1=2,3"]), tmp_path, progress=False)
    back = xr.load_dataset(tmp_path / "result.nc")
    assert not missing_attrs(back), missing_attrs(back)
    assert "cluster_tol = 0.05" in back.n_clusters.attrs["description"]
    assert back.beta.attrs["long_name"] == "inverse temperature beta" and back.t1.attrs["units"] == "1"
    assert back.energy.attrs["long_name"] == "interaction energy E_beta"
