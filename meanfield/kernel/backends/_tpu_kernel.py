r"""The project's TPU flash-attention forward kernel (Pallas/Mosaic), which the
[`Splash`][meanfield.kernel.backends.Splash] backend calls on its augmented coordinates.

Written for the project (not a copy of jax's splash kernel) because the splash mapping needs three
things jax's kernel does not give:

* **ALiBi in the kernel, centred per query block.** The bias lambda_h (p_j - c_b), with c_b the
  position at the middle of query block b, is added to the scores on the vector unit; the
  logsumexp then carries the row constant lambda_h (p_i - c_b), of size lambda_h times half the
  block's position span, not lambda N / 2 as with positions in the augmented keys (whose float32
  rounding, 2^-24 lambda N / 2, reached 2e-4 of the USA field at lambda N = 10^4).
* **O(N/b) mask metadata.** Every mask the mapping uses is an index mask (causal, local window,
  full, with padding keys past ``n_keys``), so the key tiles a query block needs are one
  contiguous range: the first tile ``lo[i]`` and the count ``cnt[i]``, computed in vectorised
  NumPy from the static sizes (`index_tile_bounds`). With the block centres they are the kernel's
  scalar-prefetch (SMEM) data, with the per-head slopes: 12 bytes per query block, 24 KiB at N = 2^20 with 512-row blocks, where splash's
  block mask (three int8/int16 arrays of (N/b)^2 entries) holds megabytes and is built by a
  quadratic Python loop. The grid is (heads, query blocks, max cnt): a query block that needs
  fewer tiles repeats its last one (the same block index, so no new copy) and skips the compute.
* **The query-block axis parallel** (``dimension_semantics = ("parallel", "parallel",
  "arbitrary")``): with one head, the query blocks split over the two TensorCores of a chip
  (v4, v5p, v7x); jax's kernel marks only the head axis parallel.
* **bf16 operands with float32 results.** The queries and keys enter in the dtype given
  (``bfloat16`` for ``precision="bf16"`` and the hi/lo splits of ``"highest"``, so the matrix unit
  sees bf16 x bf16 with float32 accumulation), while the output and the logsumexp stay float32;
  jax's kernel returns the queries' dtype. The values enter as ``n_v`` bf16 parts (1: bf16, 2:
  the hi/lo split) or as float32 (``n_v = 0``); with two parts the probabilities are split too and
  P V is the three bf16 products p_hi v_hi + p_hi v_lo + p_lo v_hi, float32-accurate.

Per query block i and key tile j it keeps the running row maximum m, sum l and output o (the
online softmax), and at the last tile writes out = o / l and lse = m + log l:

$$
s_{ij} = q_i \cdot k_j \ \ (\text{masked: } -0.7\,\mathrm{f32}_{\max}), \qquad
m' = \max(m, \max_j s_{ij}), \quad l' = e^{m - m'} l + \sum_j e^{s_{ij} - m'}, \quad
o' = e^{m - m'} o + \sum_j e^{s_{ij} - m'} v_j .
$$

A row whose first tiles are all masked accumulates garbage with m at the mask value, which the
first visible key wipes (its factor e^{m - m'} underflows to 0); every real row sees at least one
key (itself, or the dummy key of a strict causal mask).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
LANES = 128
NT = (((1,), (1,)), ((), ()))  # q . k^T
NN = (((1,), (0,)), ((), ()))  # p . v


def index_tile_bounds(n: int, m: int, bq: int, bk: int, kind: str, window=None):
    """First key tile and tile count per query block, int32 (nq,) each, for the index mask
    ``kind``: "causal" (key j <= query i), "local" (i - left <= j <= i + right, ``window`` =
    (left, right)) or "full"; keys at or past ``m`` are padding. Vectorised: O(N / bq)."""
    nq, nk = -(-n // bq), -(-m // bk)
    first = np.arange(nq, dtype=np.int64) * bq
    last = np.minimum(first + bq - 1, n - 1)
    if kind == "causal":
        k0, k1 = np.zeros_like(first), last
    elif kind == "local":
        left, right = window
        k0, k1 = np.maximum(first - left, 0), last + right
    else:
        k0, k1 = np.zeros_like(first), np.full_like(first, m - 1)
    k1 = np.minimum(k1, m - 1)
    lo = np.minimum(k0 // bk, nk - 1)
    cnt = np.maximum(k1 // bk - lo + 1, 1)
    return lo.astype(np.int32), cnt.astype(np.int32)


def smem_bytes(n: int, m: int, bq: int, bk: int, kind: str, window=None, heads: int = 1) -> int:
    """The kernel's scalar-prefetch (SMEM) bytes: the two int32 arrays of `index_tile_bounds`, the
    float32 block centres and the float32 per-head slopes."""
    lo, cnt = index_tile_bounds(n, m, bq, bk, kind, window)
    return int(lo.nbytes + cnt.nbytes + 4 * lo.shape[0] + 4 * heads)


def _kernel(
    lo_ref,
    cnt_ref,
    centre_ref,
    slope_ref,
    q_ref,
    k_ref,
    kpos_ref,
    *refs,
    n_v,
    bq,
    bk,
    m_keys,
    kind,
    window,
    width,
    alibi,
):
    v_refs, (o_ref, lse_ref, m_sc, l_sc, o_sc) = refs[: max(n_v, 1)], refs[max(n_v, 1) :]
    hh, i, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    f32 = jnp.float32

    @pl.when(j == 0)
    def _init():
        m_sc[...] = jnp.full_like(m_sc, MASK_VALUE)
        l_sc[...] = jnp.zeros_like(l_sc)
        o_sc[...] = jnp.zeros_like(o_sc)

    @pl.when(j < cnt_ref[i])
    def _tile():
        tile = lo_ref[i] + j
        s = jax.lax.dot_general(q_ref[...], k_ref[...], NT, preferred_element_type=f32)
        qi = i * bq + jax.lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
        kj = tile * bk + jax.lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
        keep = kj < m_keys
        if kind == "causal":
            keep = keep & (kj <= qi)
        elif kind == "local":
            keep = keep & (kj >= qi - window[0]) & (kj <= qi + window[1])
        if alibi:  # lambda_h (p_j - c_i): the row constant -lambda_h (p_i - c_i) stays O(block)
            s = s + slope_ref[hh] * (kpos_ref[...] - centre_ref[i])
        s = jnp.where(keep, s, MASK_VALUE)
        m_prev = m_sc[...]
        m_next = jnp.maximum(m_prev, jnp.max(s, axis=-1, keepdims=True))
        p = jnp.exp(s - m_next[:, :1])
        alpha = jnp.exp(m_prev - m_next)
        l_sc[...] = alpha * l_sc[...] + jnp.sum(p, axis=-1, keepdims=True)
        m_sc[...] = m_next
        if n_v == 0:
            pv = jax.lax.dot_general(p, v_refs[0][...], NN, preferred_element_type=f32)
        else:
            p_hi = p.astype(jnp.bfloat16)
            pv = jax.lax.dot_general(p_hi, v_refs[0][...], NN, preferred_element_type=f32)
            if n_v == 2:
                p_lo = (p - p_hi.astype(f32)).astype(jnp.bfloat16)
                pv = pv + jax.lax.dot_general(p_hi, v_refs[1][...], NN, preferred_element_type=f32)
                pv = pv + jax.lax.dot_general(p_lo, v_refs[0][...], NN, preferred_element_type=f32)
        o_sc[...] = alpha[:, :1] * o_sc[...] + pv

    @pl.when(j == width - 1)
    def _finish():
        l = l_sc[...]
        o_ref[...] = o_sc[...] / l[:, :1]
        lse_ref[...] = m_sc[...] + jnp.log(l)


def flash_forward(
    q,
    k,
    vs,
    *,
    n_keys: int,
    kind: str,
    window=None,
    bq: int,
    bk: int,
    interpret: bool,
    kpos=None,
    centre=None,
    slopes=None,
):
    """Masked softmax attention with the logsumexp residual, heads sharing one key copy; with
    ``slopes``, ALiBi scores s_ij = q_i . k_j + lambda_h (p_j - c_b), c_b the centre of the query
    block (the caller subtracts the row constant lambda_h (p_i - c_b) from the logsumexp).

    Args:
        q: (H, Np, D) queries (bf16 or float32), Np a multiple of ``bq``, D of 128.
        k: (Mp, D) keys in q's dtype, Mp a multiple of ``bk``.
        vs: a tuple of values (Mp, Dv): one float32 array, or one or two bf16 parts (hi, lo).
        n_keys: the real keys (the rest is padding, never seen).
        kind, window: the index mask (`index_tile_bounds`).
        bq, bk: query block and key tile (multiples of 128).
        kpos: (Mp,) float32 key positions; centre: (Np / bq,) float32 per query block;
        slopes: (H,) float32 (all three or none).

    Returns:
        (out (H, Np, Dv) float32, lse (H, Np) float32).
    """
    h, n_pad, dim = q.shape
    m_pad, dv = k.shape[0], vs[0].shape[1]
    lo, cnt = index_tile_bounds(n_pad, n_keys, bq, bk, kind, window)
    width = int(cnt.max())
    n_v = 0 if vs[0].dtype == jnp.float32 else len(vs)
    alibi = slopes is not None
    if not alibi:
        kpos = jnp.zeros((m_pad,), jnp.float32)
        centre, slopes = jnp.zeros((n_pad // bq,), jnp.float32), jnp.zeros((h,), jnp.float32)
    assert m_pad % bk == 0 and n_pad % bq == 0 and dim % LANES == 0 and dv % LANES == 0

    def kv_map(hh, i, j, lo_ref, cnt_ref, *_):
        return lo_ref[i] + jnp.minimum(j, cnt_ref[i] - 1), 0

    def kpos_map(hh, i, j, lo_ref, cnt_ref, *_):
        return 0, lo_ref[i] + jnp.minimum(j, cnt_ref[i] - 1)

    in_specs = [
        pl.BlockSpec((None, bq, dim), lambda hh, i, j, *_: (hh, i, 0)),
        pl.BlockSpec((bk, dim), kv_map),
        pl.BlockSpec((1, bk), kpos_map),
    ] + [pl.BlockSpec((bk, dv), kv_map) for _ in vs]
    out_specs = [
        pl.BlockSpec((None, bq, dv), lambda hh, i, j, *_: (hh, i, 0)),
        pl.BlockSpec((None, bq, LANES), lambda hh, i, j, *_: (hh, i, 0)),
    ]
    kernel = functools.partial(
        _kernel,
        n_v=n_v,
        bq=bq,
        bk=bk,
        m_keys=int(n_keys),
        kind=kind,
        window=window,
        width=width,
        alibi=alibi,
    )
    out, lse = pl.pallas_call(
        kernel,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=4,
            grid=(h, n_pad // bq, width),
            in_specs=in_specs,
            out_specs=out_specs,
            scratch_shapes=[
                pltpu.VMEM((bq, LANES), jnp.float32),
                pltpu.VMEM((bq, LANES), jnp.float32),
                pltpu.VMEM((bq, dv), jnp.float32),
            ],
        ),
        out_shape=[
            jax.ShapeDtypeStruct((h, n_pad, dv), jnp.float32),
            jax.ShapeDtypeStruct((h, n_pad, LANES), jnp.float32),
        ],
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")
        ),
        interpret=interpret,
        name="meanfield_splash_fwd",
    )(
        jnp.asarray(lo),
        jnp.asarray(cnt),
        centre.astype(jnp.float32),
        slopes.astype(jnp.float32),
        q,
        k,
        kpos.astype(jnp.float32)[None, :],
        *vs,
    )
    return out, lse[..., 0]


def mosaic_modules(stablehlo_text: str) -> list[str]:
    """The Mosaic TPU modules inside a lowered program, as MLIR text, one per ``tpu_custom_call``:
    what a TPU would compile (``jax.jit(f).trace(...).lower(lowering_platforms=("tpu",))`` on any
    host, then ``.as_text()``). Reads jax 0.10's serialised kernel body through its private
    ``jax._src`` helpers: a development tool for tests and benchmarks, not an API."""
    import base64  # noqa: PLC0415
    import json  # noqa: PLC0415
    import re  # noqa: PLC0415

    from jax._src.interpreters import mlir  # noqa: PLC0415
    from jax._src.lib import tpu  # noqa: PLC0415
    from jaxlib.mlir import ir  # noqa: PLC0415
    from jaxlib.mlir.passmanager import PassManager  # noqa: PLC0415

    out = []
    for line in stablehlo_text.splitlines():
        if "@tpu_custom_call" not in line:
            continue
        config = re.search(r'backend_config = "(.*?)"[,}]', line).group(1)
        config = re.sub(r"\\([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), config)
        body = base64.b64decode(json.loads(config)["custom_call_config"]["body"])
        ctx = mlir.make_ir_context()
        tpu.register_dialect(ctx)
        with ctx, ir.Location.unknown():
            ctx.allow_unregistered_dialects = True
            module = ir.Module.parse(body)
            PassManager.parse("builtin.module(mosaic-serde{serialize=false})").run(module.operation)
            out.append(str(module))
    return out
