"""The TPU path lowers from this CPU host (``lowering_platforms=("tpu",)``): the Splash field and a
whole ``simulate`` hold the expected Mosaic kernels and no host callback, with bf16 operands on the
matrix unit where the precision asks for them and the query blocks parallel."""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

import meanfield as mf
from meanfield.kernel import Splash
from meanfield.kernel.backends._tpu_kernel import index_tile_bounds, mosaic_modules, smem_bytes

F32 = jnp.float32
LAM = 0.05
MASKS = {  # mask, splash calls per field evaluation
    "causal-alibi": (mf.Causal() & mf.ALiBi(LAM), 1),
    "window": (mf.Causal() & mf.Window(256.0), 1),
    "two-sided-alibi": (mf.ALiBi(LAM), 2),
}
CALLBACK = re.compile(r"callback|host_compute|SendToHost|RecvFromHost", re.I)


def _lowered(fn, *specs) -> str:
    return jax.jit(fn).trace(*specs).lower(lowering_platforms=("tpu",)).as_text()


def _field_text(n, heads, precision, mask, form):
    kw = dict(heads=heads, beta=jnp.full((heads,), 1.0, F32)) if heads > 1 else dict(beta=F32(1.0))
    attn = mf.Attention(
        **kw, mask=mask, form=form, precision=precision, backend=Splash(interpret=False)
    )
    return _lowered(lambda x: attn(x), jax.ShapeDtypeStruct((n, 16), F32))


@pytest.mark.parametrize("heads", [1, 4])
@pytest.mark.parametrize("precision", ["highest", "bf16", "tf32"])
def test_splash_field_lowers_for_tpu(heads, precision):
    """N = 4096, every mask kind, SA and USA: one Mosaic call per splash call (two for two-sided
    ALiBi), no host callback, the query-block axis parallel, bf16 x bf16 products (float32
    accumulation) unless the precision is tf32."""
    for mask, calls in MASKS.values():
        for form in ("SA", "USA"):
            text = _field_text(4096, heads, precision, mask, form)
            assert text.count("@tpu_custom_call") == calls and not CALLBACK.search(text)
            for module in mosaic_modules(text):
                assert re.search(
                    r"dimension_semantics = \[#tpu.dimension_semantics<parallel>, "
                    r"#tpu.dimension_semantics<parallel>, "
                    r"#tpu.dimension_semantics<arbitrary>\]",
                    module,
                )
                operands = re.findall(
                    r"tpu.matmul [^:]*: vector<\w+x(\w+)>, vector<\w+x(\w+)>, vector<\w+x(\w+)>",
                    module,
                )
                want = "f32" if precision == "tf32" else "bf16"
                assert operands and all(o[:2] == (want, want) and o[2] == "f32" for o in operands)
                # scores (one product) and P V: one product, or three under the split
                assert len(operands) == (4 if precision == "highest" else 2)


@pytest.mark.parametrize("kind", list(MASKS))
def test_splash_lowers_at_65536_tokens(kind):
    """N = 2^16, once per mask kind: the lowering takes well under a minute (the metadata is O(N/b))
    and the scalar-prefetch operands are 1-D arrays of N / b_q entries."""
    mask, calls = MASKS[kind]
    text = _field_text(65536, 1, "bf16", mask, "USA")
    assert text.count("@tpu_custom_call") == calls and not CALLBACK.search(text)
    module = mosaic_modules(text)[0]
    smem = re.findall(r"memref<(\d+)x\w+, #tpu.memory_space<smem>>", module)
    assert smem and all(int(s) <= 65536 // 512 for s in smem), smem


SOLVE = """
import re, jax, jax.numpy as jnp, meanfield as mf
from meanfield.kernel import Splash
F32 = jnp.float32
attn = mf.Attention(F32(1.0), mask=mf.Causal() & mf.ALiBi(0.05), backend=Splash(interpret=False))
ts = jnp.linspace(0.0, 1.0, 3, dtype=F32)
f = lambda x0: mf.simulate(attn, x0, ts, throw=False).xs
x0 = jax.ShapeDtypeStruct((1024, 8), F32)
text = jax.jit(f).trace(x0).lower(lowering_platforms=("tpu",)).as_text()
print(text.count("@tpu_custom_call"), len(re.findall(r"callback|host_compute", text, re.I)))
"""


def test_simulate_lowers_for_tpu():
    """A whole adaptive solve with the Splash backend (throw=False) lowers for a TPU: the Mosaic
    kernel inside diffrax's loop and no host callback. The library's own checks are result codes;
    diffrax's two checks of the save times are ``eqx.error_if`` guards (a host callback inside a
    ``cond``, run only when the times are bad), which equinox's documented ``EQX_ON_ERROR=nan``
    turns into NaN outputs for this lowering."""
    env = dict(os.environ, EQX_ON_ERROR="nan", JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", SOLVE], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1", "0"]


def test_the_solve_has_no_unconditional_callback():
    """Without that switch the solve's program holds no unconditional host callback: the only
    callbacks are diffrax's save-time guards, inside a ``cond`` whose branch runs only when the
    save times are bad (never, after simulate's own check)."""
    attn = mf.Attention(F32(1.0), mask=mf.Causal() & mf.ALiBi(LAM), backend=Splash(interpret=False))
    ts = jnp.linspace(0.0, 1.0, 3, dtype=F32)
    jaxpr = jax.make_jaxpr(lambda x0: mf.simulate(attn, x0, ts, throw=False).xs)(
        jax.ShapeDtypeStruct((256, 8), F32)
    )

    def callbacks(jp, in_cond=False):
        found = []
        for eqn in jp.eqns:
            if "callback" in eqn.primitive.name:
                found.append((eqn.primitive.name, in_cond))
            for param in eqn.params.values():
                for sub in param if isinstance(param, (list, tuple)) else [param]:
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        found += callbacks(inner, in_cond or eqn.primitive.name == "cond")
        return found

    found = callbacks(jaxpr.jaxpr)
    assert found and all(name == "pure_callback" and in_cond for name, in_cond in found), found


def test_throw_raises_on_the_host_after_the_solve():
    """throw=True: a failed solve raises SolverError from the result code (the solve itself holds no
    callback); throw=False returns the code."""
    x0 = mf.sphere_uniform(jax.random.key(0), 16, 3)
    ts = jnp.linspace(0.0, 5.0, 3)
    with pytest.raises(mf.SolverError, match="maximum number of solver steps"):
        mf.simulate(mf.Attention(4.0), x0, ts, max_steps=2)
    out = mf.simulate(mf.Attention(4.0), x0, ts, max_steps=2, throw=False)
    assert out.result != mf.particles.RESULTS.successful


def test_tile_metadata_is_linear_in_n():
    """The kernel's metadata: 12 bytes per query block plus the slopes (24 KiB at N = 2^20), and
    the tile ranges cover exactly the keys each block's rows may see."""
    assert smem_bytes(2**20, 2**20, 512, 512, "causal") == 12 * 2048 + 4
    lo, cnt = index_tile_bounds(1000, 1001, 128, 128, "causal")
    assert lo.tolist() == [0] * 8 and cnt.tolist() == list(range(1, 9))
    lo, cnt = index_tile_bounds(1024, 1024, 128, 128, "local", (200, 0))
    assert lo.tolist() == [0, 0, 0, 1, 2, 3, 4, 5] and cnt.tolist() == [1, 2, 3, 3, 3, 3, 3, 3]
