"""Sharded = unsharded on 8 emulated CPU devices (run by tests/test_sharding.py in a separate
process with XLA_FLAGS=--xla_force_host_platform_device_count=8)."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

import meanfield as mf
from meanfield import sharding
from meanfield.run import apply_overrides
from meanfield.pde import CausalCoupling, KineticMeanField
from meanfield.run import Paused, execute, get_preset, parse_grid

if jax.device_count() < 8:
    pytest.skip(
        "needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)",
        allow_module_level=True,
    )

F32 = jnp.float32


def _kernels(n, d):
    k = jax.random.split(jax.random.key(0), 3)
    q = (jnp.eye(d) + 0.3 * jax.random.normal(k[0], (3, d, d))).astype(F32)
    return {
        "full": mf.Attention(F32(2.0)),
        "causal": mf.Attention(F32(2.0), mask=mf.Causal()),
        "alibi": mf.Attention(F32(2.0), mask=mf.Causal() & mf.ALiBi(F32(0.2))),
        "multihead": mf.Attention(
            jnp.array([1.0, 2.0, 4.0], F32),
            Q=q,
            K=q[::-1],
            mask=mf.Causal() & mf.ALiBi(jnp.array([0.05, 0.1, 0.2], F32)),
        ),
        "chunked-causal": mf.Attention(
            F32(2.0), mask=mf.Causal(), backend=mf.kernel.Chunked(block=16)
        ),
        "window-rope-usa": mf.Attention(
            F32(1.0), form="USA", mask=mf.Causal() & mf.Window(9), pe=mf.RoPE(100.0)
        ),
        "paper-usa": mf.Attention(
            F32(2.0),
            V=2.0 * jnp.eye(d, dtype=F32),
            form="USA",  # the kinetic paper's rows
            mask=mf.PositionNormalized(mf.Causal(strict=True) & mf.ALiBi(F32(1.0 / n))),
        ),
    }


@pytest.mark.parametrize(
    "name,n",
    [
        ("full", 101),
        ("causal", 96),
        ("alibi", 101),
        ("multihead", 101),
        ("chunked-causal", 101),
        ("window-rope-usa", 96),
        ("paper-usa", 101),
    ],
)  # 101: padding tokens
def test_sharded_field_and_solve_equal_single_device_f32(name, n):
    d = 8
    attn = _kernels(n, d)[name]
    x = mf.sphere_uniform(jax.random.key(1), n, d, F32)
    prompt = mf.Prompt(mf.sphere_uniform(jax.random.key(2), 3, d, F32)) if name == "alibi" else None
    ts = jnp.linspace(0, 1, 3, dtype=F32)
    ref_v = attn(x, prompt=prompt)
    ref_x = mf.simulate(attn, x, ts, prompt=prompt, solver="rk4", dt=0.05).xs
    with jax.set_mesh(sharding.make_mesh("tokens")):
        assert sharding.token_shards() == 8
        v = jax.jit(lambda y: attn(y, prompt=prompt))(x)
        xs = mf.simulate(attn, x, ts, prompt=prompt, solver="rk4", dt=0.05).xs
    assert v.dtype == F32
    np.testing.assert_allclose(v, ref_v, rtol=0, atol=1e-6 * float(jnp.abs(ref_v).max()))
    np.testing.assert_allclose(xs, ref_x, rtol=0, atol=1e-6)


def test_ensemble_over_data_and_tokens_axes_equals_vmap():
    n, d = 64, 4
    x0 = mf.sphere_uniform(jax.random.key(3), n, d, F32)
    betas = jnp.array([0.5, 1.0, 2.0, 4.0], F32)
    ts = jnp.linspace(0, 2, 5, dtype=F32)
    run = lambda b: mf.simulate(mf.Attention(b, mask=mf.Causal()), x0, ts, solver="rk4", dt=0.05).xs  # noqa: E731
    ref = jax.vmap(run)(betas)
    mesh = sharding.make_mesh("data,tokens", batch=4)
    assert dict(mesh.shape) == {"data": 4, "tokens": 2}
    with jax.set_mesh(mesh):
        out = jax.jit(jax.vmap(run, spmd_axis_name="data"))(sharding.shard_leading(betas, mesh))
    assert out.sharding.spec[0] == "data"
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6)


def test_noisy_solve_on_the_token_and_data_axes_equals_single_device():
    """The noisy solve (idiosyncratic and common noise, 101 tokens: padded rows) on the tokens axis,
    and an ensemble of keys on data x tokens, equal the single-device result: the Brownian path
    depends on the key only, not on the placement."""
    n, d = 101, 4
    attn = mf.Attention(F32(2.0), mask=mf.Causal(), form="USA")
    x0 = mf.sphere_uniform(jax.random.key(6), n, d, F32)
    ts = jnp.linspace(0, 0.5, 3, dtype=F32)
    noise = mf.Noise(F32(0.4), common=F32(0.3), n_common=2)
    run = lambda k: mf.simulate(attn, x0, ts, noise=noise, key=k, dt=0.05).xs  # noqa: E731
    keys = jax.random.split(jax.random.key(7), 4)
    ref = jax.vmap(run)(keys)
    with jax.set_mesh(sharding.make_mesh("tokens")):
        one = jax.jit(run)(keys[0])
    np.testing.assert_allclose(one, ref[0], rtol=0, atol=1e-5)
    mesh = sharding.make_mesh("data,tokens", batch=4)
    with jax.set_mesh(mesh):
        out = jax.jit(jax.vmap(run, spmd_axis_name="data"))(sharding.shard_leading(keys, mesh))
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5)
    assert float(jnp.max(jnp.abs(ref[0] - ref[1]))) > 1e-2  # the keys give different paths


def test_mesh_specs_on_eight_devices():
    shape = lambda m: (m.shape["data"], m.shape["tokens"])  # noqa: E731
    assert shape(sharding.make_mesh("data")) == (8, 1)
    assert shape(sharding.make_mesh("tokens")) == (1, 8)
    assert shape(sharding.make_mesh("data=2,tokens=4")) == (2, 4)
    assert shape(sharding.make_mesh("auto", batch=16, n_tokens=64)) == (8, 1)  # sweeps: data
    assert shape(sharding.make_mesh("auto", batch=1, n_tokens=10**6)) == (
        1,
        8,
    )  # one big run: tokens
    assert shape(sharding.make_mesh("auto", batch=2, n_tokens=64)) == (
        2,
        1,
    )  # small runs: no token split
    assert shape(sharding.make_mesh("data,tokens", batch=6)) == (2, 4)
    with pytest.raises(ValueError, match="needs data x tokens = 16 devices"):
        sharding.make_mesh("data=4,tokens=4")


def test_parallel_prompt_sharded_equals_single_device():
    """One own prompt per token: the rows are padded to the axis (101 tokens on 8 devices) and each
    device uses its own rows' prompts."""
    n, d = 101, 4
    x = mf.sphere_uniform(jax.random.key(3), n, d, F32)
    p = mf.ParallelPrompt(
        mf.sphere_uniform(jax.random.key(4), n, d, F32), jnp.linspace(0.1, 1.0, n, dtype=F32)
    )
    shared = mf.Prompt(mf.sphere_uniform(jax.random.key(5), 3, d, F32))
    for attn in (
        mf.Attention(F32(2.0), mask=mf.Causal()),
        mf.Attention(F32(1.0), form="USA", backend=mf.kernel.Chunked(block=16)),
    ):
        ref = attn(x, prompt=(shared, p))
        with jax.set_mesh(sharding.make_mesh("tokens")):
            v = jax.jit(lambda y: attn(y, prompt=(shared, p)))(x)
        np.testing.assert_allclose(v, ref, rtol=0, atol=1e-6 * float(jnp.abs(ref).max()))


def test_kinetic_solver_sharded_over_rows_equals_single_device():
    for n_s in (64, 60):  # 60: padded rows
        for pde in (
            KineticMeanField(n_s, 32, beta=2.0, coupling=CausalCoupling(1.5)),
            KineticMeanField.paper_model(n_s, 32, beta=2.0, lam=1.5),
        ):  # normalised strict rows
            f0 = pde.von_mises(1.0, 3.0 * pde.s)
            ts = jnp.linspace(0, 1, 5)
            ref = pde.solve(f0, ts).f
            with jax.set_mesh(sharding.make_mesh("tokens")):
                out = pde.solve(f0, ts).f
            np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)


SWEEP = ["n=8", "t1=2", "n_save=5", "chunks=4"]


@pytest.mark.parametrize("betas", ["0.5,1,2,4", "0.5,1,3"])  # 8 and 6 points (6: padded to 8)
def test_sweep_over_the_data_axis_gives_the_same_dataset(tmp_path, betas):
    preset = get_preset("clustering")
    cfg = apply_overrides(preset.Config(), SWEEP)
    grid = parse_grid(cfg, [f"beta={betas}", "seed=0,1"])
    ref = execute(preset, cfg, grid, tmp_path / "one", progress=False, mesh="none")
    out = execute(preset, cfg, grid, tmp_path / "eight", progress=False, mesh="data")
    back = xr.load_dataset(tmp_path / "eight" / "result.nc")
    assert set(ref.data_vars) == set(back.data_vars)
    for name in ref.data_vars:
        np.testing.assert_allclose(
            back[name].values, ref[name].values, rtol=0, atol=1e-12, err_msg=name
        )
    assert out.sizes == ref.sizes


def test_checkpoint_saved_on_eight_devices_resumes_on_one(tmp_path):
    preset = get_preset("clustering")
    cfg = apply_overrides(preset.Config(), SWEEP)
    grid = parse_grid(cfg, ["beta=0.5,1,2,4", "seed=0,1"])
    ref = execute(preset, cfg, grid, tmp_path / "ref", progress=False, mesh="none")
    out = tmp_path / "split"
    with pytest.raises(Paused):
        execute(preset, cfg, grid, out, progress=False, mesh="data", max_chunks=2)
    assert (out / "checkpoint.npz").exists() and not (out / "result.nc").exists()
    # a fresh process with one device (no XLA flag) finishes it through the command line
    args = [
        "sweep",
        "clustering",
        "--out",
        str(out),
        "--resume",
        "--no-progress",
        "--mesh",
        "none",
        "--grid",
        "beta=0.5,1,2,4",
        "--grid",
        "seed=0,1",
        *sum((["--set", s] for s in SWEEP), []),
    ]
    env = {
        k: v
        for k, v in __import__("os").environ.items()
        if k not in ("XLA_FLAGS", "MEANFIELD_SHARDED_TESTS")
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import jax, sys; from meanfield.run.cli import main; "
            "assert jax.device_count() == 1; sys.exit(main(sys.argv[1:]))",
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    back = xr.load_dataset(out / "result.nc")
    for name in ref.data_vars:
        np.testing.assert_allclose(
            back[name].values, ref[name].values, rtol=0, atol=1e-12, err_msg=name
        )
    assert not (out / "checkpoint.npz").exists()
