r"""The TPU backend: the engine's attention field as "splash" attention, plain masked softmax
attention with the logsumexp residual on index masks (causal, local, full), run by the project's
TPU kernel (``backends._tpu_kernel``; jax's splash kernel is the reference it is benchmarked
against).

The field maps onto it through augmented coordinates. For head h with ALiBi slope lambda_h, set

    q'_i = [beta_h Q_h x_i, 1],      k'_j = [K_h x_j, log m_j],

and let the kernel add lambda_h (p_j - c_b) to each score, c_b the position at the middle of the
query block of row i: then q'_i . k'_j + lambda_h (p_j - c_b) = a_ij + lambda_h (p_i - c_b) for
every key at or before the query (p_j <= p_i), with a_ij = beta_h ⟨Q_h x_i, K_h x_j⟩ + log m_j -
lambda_h (p_i - p_j) the engine's score. The extra term is constant along a row, so the softmax
cancels it: SA with causal ALiBi and masses is one causal call, and the logsumexp is corrected by
lambda_h (p_i - c_b). K_h is folded into the queries (⟨Q_h x, K_h y⟩ = ⟨K_h^T Q_h x, y⟩) and V_h
applied to each row's weighted sum of raw tokens, so all heads share one key and value copy. The
rest follows (``backends._sorted``, shared with the cuDNN route):

* USA: v = out exp(lse), with lse the corrected logsumexp.
* Strict causal (a token does not see itself): one dummy key in front, value 0, log-mass
  -1e4; query i then sees the dummy and the keys before it, and the first row (only the dummy)
  gets a zero field with a finite lse (a true zero mass would give 0/0).
* Non-causal ALiBi (|p_i - p_j|): two calls, keys at or before the query (+lambda p_j) and keys
  after it (the sequence reversed, strict, with -p_j), merged by their logsumexps.
* ``PositionNormalized`` (USA): one more normaliser Z_i = sum_j m_j e^{b_ij}, O(N) for ALiBi
  by a cumulative logsumexp in position order.
* Causal and Window masks are index masks in splash: the tokens are sorted by position first
  (and the field unsorted after); causal needs distinct positions, a window consecutive integers.

The kernel (``backends._tpu_kernel``): the project's own Pallas TPU forward kernel, with O(N/b)
tile-range metadata in SMEM, the query-block axis parallel (two TensorCores share one head), ALiBi
added as lambda_h (p_j - c_b) with c_b the centre of the query block (the logsumexp then carries
the row constant lambda_h (p_i - c_b), of size lambda b_q / 2), and bf16 operands with float32
output and logsumexp.

Precision on a matrix unit whose inputs are bf16: with ``precision="highest"`` (default) queries
and keys enter as three-part bf16 splits laid side by side ([q1, q1, q2, q1, q2, q3] . [k1, k2,
k1, k3, k2, k1]: the six products above float32 rounding, in one), log m_j as a three-part split
against query coordinates 1, and P V as three bf16 products of hi/lo splits. Worst relative field
error against float64 over d = 16, 64, beta = 1, 4, SA/USA, masses, heads, windows, ALiBi up to
lambda N = 100 and PositionNormalized: 6.9e-6 (``benchmarks/highest_precision.py``); under USA
with ALiBi the bound holds while lambda b_q <= 256 (``benchmarks/splash_error.py``). ``"bf16"``:
one bf16 product for the content scores and for P V. ``"tf32"``: float32 operands as they are (on
a TPU, the MXU's float32 handling: whether that is one pass is a row of ``bench_tpu.py``).
Interpret mode on a CPU computes the bf16 products a TPU's matrix unit would.

Supported: Full, Causal (also strict), Window (with Causal or alone, without ALiBi unless causal),
ALiBi (scalar or per-head), their compositions, PositionNormalized of causal or full ones, SA
and USA, masses, heads. Everything else (RoPE, AdditivePE, CustomBias, ZBias, prompts, float64)
is refused with a pointer to ``Chunked()``. Derivatives (jvp, and vjp through it) are those of
the ``Chunked()`` path, which computes the same field.

On a machine without a TPU the kernel runs in Pallas interpret mode (``interpret=None``).
"""

from __future__ import annotations

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp

from ..._arrays import pad_axis
from ..._errors import require
from ..._types import Array
from ..masks import Lowered, position_normalized
from ..problem import Problem
from ._lowering import (
    check_supported,
    sorted_position_fault,
    split3_bf16,
    split_bf16,
    with_reference_derivative,
)
from ._sorted import index_mask, sorted_field, with_dummy
from ._tpu_kernel import flash_forward
from .base import AbstractBackend, projection_bytes
from .chunked import reference_field

LANES = 128


class Splash(AbstractBackend):
    """Splash attention on the project's TPU kernel through augmented coordinates (causal/strict/
    window/ALiBi masks, masses, SA/USA, PositionNormalized, heads sharing one key copy): see
    [`meanfield.kernel.backends.splash`][meanfield.kernel.backends.splash]. ``block_q``/``block_k``: query block and key tile (multiples of 128;
    sequences are padded to them; under USA with ALiBi, ``"highest"`` holds 1e-5 while
    lambda block_q <= 256); ``interpret``: Pallas interpret mode (``None``: on unless the
    default backend is a TPU)."""

    block_q: int = eqx.field(default=512, static=True)
    block_k: int = eqx.field(default=512, static=True)
    interpret: bool | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        for name in ("block_q", "block_k"):
            b = int(getattr(self, name))
            require(
                b >= 128 and b % 128 == 0,
                f"Splash: {name} must be a positive multiple of 128, got {b}",
            )

    def field(self, problem):
        """The per-head field through splash attention (module docstring); derivatives through the
        ``Chunked()`` path, which computes the same field."""
        _check(problem)
        return with_reference_derivative(
            problem, forward=functools.partial(_forward, self), reference=reference_field
        )

    def data_fault(self, problem):
        """Distinct positions under a causal mask, consecutive integers under a Window (the kernel
        masks by index after sorting by position)."""
        return sorted_position_fault(problem, _check(problem), "Splash")

    def memory_bytes(self, n, n_keys, d, heads, itemsize):
        """The projections, plus per directional call (two for two-sided ALiBi: the bound) the
        kernel's float32 outputs: the field padded to 128 lanes and the lane-wide logsumexp."""
        lanes = _round_up(d, LANES) + LANES
        return projection_bytes(n, n_keys, d, heads, itemsize) + 2 * 4 * heads * n * lanes


def _check(p: Problem) -> Lowered:
    """Trace-time refusal of what the splash mapping does not cover, naming the fallback."""
    lowered = check_supported(p, "Splash")
    if lowered.window != math.inf:
        require(
            lowered.causal != 2,
            "the Splash backend does not combine a strict causal mask with a Window; use backend=Chunked()",
        )
        require(
            bool(lowered.causal) or lowered.slopes is None,
            "the Splash backend does not combine a two-sided Window with ALiBi; use backend=Chunked()",
        )
        require(
            not position_normalized(p.mask),
            "the Splash backend does not combine PositionNormalized with a Window; use backend=Chunked()",
        )
    return lowered


def _round_up(n: int, k: int) -> int:
    return -(-int(n) // k) * k


def _coordinates(q, k, logm, mode):
    """Augmented queries (H, N, D) and keys (M, D) whose products are the content scores plus
    log m_j (module docstring), split as ``mode`` needs."""
    h, n, _ = q.shape
    if mode == "tf32":
        qa = jnp.concatenate([q, jnp.ones((h, n, 1), jnp.float32)], -1)
        return qa, jnp.concatenate([k, logm[:, None]], -1)
    if mode == "highest":  # three-part splits, the six products above float32 rounding
        q1, q2, q3 = split3_bf16(q)
        k1, k2, k3 = split3_bf16(k)
        qc = jnp.concatenate([q1, q1, q2, q1, q2, q3], -1)
        kc = jnp.concatenate([k1, k2, k1, k3, k2, k1], -1)
    else:
        qc, kc = q.astype(jnp.bfloat16), k.astype(jnp.bfloat16)
    # log m_j: three parts against query coordinates 1, exact to float32 rounding
    lm3 = jnp.stack(split3_bf16(logm), -1)  # (M, 3)
    qa = jnp.concatenate([qc, jnp.ones((h, n, 3), jnp.bfloat16)], -1)
    ka = jnp.concatenate([kc, lm3], -1)
    return qa.astype(jnp.bfloat16), ka.astype(jnp.bfloat16)  # bf16 x bf16 on the matrix unit


def _values(v, mode):
    """The values as the kernel takes them: float32 (``"tf32"``), one bf16 part (``"bf16"``) or
    the hi/lo bf16 split (``"highest"``, P V then float32-accurate)."""
    if mode == "tf32":
        return (v,)
    if mode == "bf16":
        return (v.astype(jnp.bfloat16),)
    return split_bf16(v)


def _directional(
    q, xk, lam, logm, pos, *, causal, strict, window, reverse, blocks, interpret, mode, has_alibi
):
    """Field sums over the keys at or before each query (``reverse=False``), or after it
    (``reverse=True``: the sequence reversed, strict, with -p_j), in sorted order:
    (out (H, N, d), true logsumexp of the scores (H, N))."""
    h, n, d = q.shape
    sign = -1.0 if reverse else 1.0
    if reverse:
        q, xk, logm, pos = q[:, ::-1], xk[::-1], logm[::-1], pos[::-1]
    qpos = pos
    if strict:
        xk, logm, pos = with_dummy(xk, logm, pos, sign)
    m = xk.shape[0]
    qa, ka = _coordinates(q, xk, logm, mode)
    bq = min(blocks[0], _round_up(n, LANES))
    bk = min(blocks[1], _round_up(m, LANES))
    npad, mpad = _round_up(n, bq), _round_up(m, bk)
    dpad, dvpad = _round_up(qa.shape[-1], LANES), _round_up(d, LANES)
    qa = pad_axis(pad_axis(qa, dpad, 2, 0.0), npad, 1, 0.0)
    ka = pad_axis(pad_axis(ka, dpad, 1, 0.0), mpad, 0, 0.0)
    vp = pad_axis(pad_axis(xk.astype(jnp.float32), dvpad, 1, 0.0), mpad, 0, 0.0)
    big_p = sign * pos  # ascending: the directional positions
    row_p = sign * qpos
    centre = row_p[jnp.minimum(jnp.arange(npad // bq) * bq + bq // 2, n - 1)]
    kind, win = index_mask(causal, window)
    out, lse = flash_forward(
        qa,
        ka,
        _values(vp, mode),
        n_keys=m,  # the padding keys past m are never seen
        kind=kind,
        window=win,
        bq=bq,
        bk=bk,
        interpret=interpret,
        kpos=pad_axis(big_p, mpad, 0),
        centre=centre,
        slopes=lam if has_alibi else None,
    )
    out, lse = out[:, :n, :d], lse[:, :n]
    if has_alibi:  # the row constant lambda_h (P_i - c_b), c_b the centre of i's query block
        lse = lse - lam[:, None] * (row_p - jnp.repeat(centre, bq)[:n])[None, :]
    if reverse:
        out, lse = out[:, ::-1], lse[:, ::-1]
    return out, lse


def default_interpret() -> bool:
    """Interpret mode unless the default JAX backend is a TPU."""
    return jax.default_backend() != "tpu"


def _forward(spec: Splash, p: Problem) -> Array:
    lowered = _check(p)
    interpret = default_interpret() if spec.interpret is None else spec.interpret
    directional = functools.partial(
        _directional,
        window=lowered.window,
        blocks=(int(spec.block_q), int(spec.block_k)),
        interpret=interpret,
        mode=p.precision,
        has_alibi=lowered.slopes is not None,
    )
    return sorted_field(p, lowered, "Splash", directional)
