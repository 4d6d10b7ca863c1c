r"""The cuDNN route: ``precision="bf16"`` on a GPU through cuDNN's fused flash attention
(``jax.nn.dot_product_attention(implementation="cudnn")``), on augmented coordinates.

cuDNN computes plain masked softmax attention softmax(q k^T) v (causal, or a local window, by
index) on bf16 operands with float32 accumulation, and returns the logsumexp. The field maps onto
it as in [`Splash`][meanfield.kernel.backends.Splash]: tokens sorted by position, K_h folded into
the queries and V_h applied after, one key and value copy for all heads; for head h with ALiBi
slope lambda_h,

$$
q'_i = [\beta_h Q_h x_i,\ 1,\ \lambda_h,\ -\lambda_h p_i], \qquad
k'_j = [K_h x_j,\ \log m_j,\ p_j,\ 1], \qquad
q'_i \cdot k'_j = \beta_h \langle Q_h x_i, K_h x_j\rangle + \log m_j - \lambda_h (p_i - p_j) = a_{ij}
$$

for every key at or before the query. The last coordinate carries the row term -lambda_h p_i,
so the products are the scores themselves and the logsumexp carries no row constant: cuDNN
returns it in bf16 (relative rounding 2^-9), which costs |lse| 2^-9 where it is used, and |lse| is
now O(beta + |log sum_j m_j|), not lambda N / 2. log m_j, lambda_h, p_j and -lambda_h p_i enter
as three-part bf16 splits with every cross product (exact to float32 rounding); the content part
as one bf16 product. Head dimensions are padded to a multiple of 8 (cuDNN: at most 256, so
d <= 232).

* Causal, strict causal (a dummy key of value 0 in front), causal windows, a two-sided window
  without ALiBi, ALiBi (scalar or per-head), log-masses, SA and USA (USA multiplies by
  e^{lse}: its error is the bf16 logsumexp's, measured in docs/performance.md).
* Two-sided ALiBi: two calls (keys at or before, keys after), merged by their logsumexps.
* Refused with a one-line error naming ``Chunked()``: PositionNormalized, CustomBias, ZBias,
  positional encodings, prompts, float64, and every precision but ``"bf16"``.

``implementation="xla"`` runs the same mapping through XLA's reference attention (bf16 operands,
float32 softmax, a bf16 logsumexp), which is how the tests check it on a CPU; ``"cudnn"`` needs
an NVIDIA GPU (cuDNN 9). Derivatives are those of the ``Chunked()`` path.
"""

from __future__ import annotations

import functools

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
    with_reference_derivative,
)
from ._sorted import index_mask, log_normaliser, sorted_field, with_dummy
from .base import AbstractBackend, projection_bytes
from .chunked import reference_field

IMPLEMENTATIONS = ("cudnn", "xla")
MAX_HEAD_DIM = 256
"""cuDNN's largest head dimension."""
AUG = 15
"""Augmented coordinates: log m (3 parts), lambda x p (9 cross products), the row term (3)."""


class Cudnn(AbstractBackend):
    """``precision="bf16"`` through cuDNN's fused attention on augmented coordinates (causal,
    strict, window and ALiBi masks, masses, SA/USA, heads sharing one key copy): see
    [`meanfield.kernel.backends.cudnn`][meanfield.kernel.backends.cudnn].
    ``implementation``: ``"cudnn"`` (a GPU) or ``"xla"`` (any platform, the same numerics in XLA's
    reference attention)."""

    implementation: str = eqx.field(default="cudnn", static=True)

    def __check_init__(self):
        require(
            self.implementation in IMPLEMENTATIONS,
            f"Cudnn: implementation must be one of {IMPLEMENTATIONS}, got {self.implementation!r}",
        )

    def field(self, problem):
        """The per-head field through cuDNN's attention (module docstring); derivatives through
        the ``Chunked()`` path, which computes the same field."""
        _check(problem)
        return with_reference_derivative(
            problem, forward=functools.partial(_forward, self), reference=reference_field
        )

    def data_fault(self, problem):
        """Distinct positions under a causal mask, consecutive integers under a Window (the masks
        are index masks on position-sorted tokens)."""
        return sorted_position_fault(problem, _check(problem), "Cudnn")

    def memory_bytes(self, n, n_keys, d, heads, itemsize):
        return projection_bytes(n, n_keys, d, heads, itemsize)  # the tiles live on chip


def _check(p: Problem) -> Lowered:
    """Trace-time refusal of what the route does not cover, naming the fallback."""
    lowered = check_supported(p, "Cudnn")
    require(
        p.precision == "bf16",
        f"the Cudnn backend serves precision='bf16' only, got {p.precision!r}; use "
        "backend=Fused() or Chunked()",
    )
    require(
        not position_normalized(p.mask),
        "the Cudnn backend does not support PositionNormalized; use backend=Chunked()",
    )
    d = p.q.shape[-1]
    require(
        _round_up(d + AUG, 8) <= MAX_HEAD_DIM,
        f"the Cudnn backend needs d + {AUG} <= {MAX_HEAD_DIM} (cuDNN's head dimension), got "
        f"d = {d}; use backend=Chunked()",
    )
    if lowered.window != float("inf"):
        require(
            lowered.causal != 2,
            "the Cudnn backend does not combine a strict causal mask with a Window; use backend=Chunked()",
        )
        require(
            bool(lowered.causal) or lowered.slopes is None,
            "the Cudnn backend does not combine a two-sided Window with ALiBi; use backend=Chunked()",
        )
    return lowered


def _round_up(n: int, k: int) -> int:
    return -(-int(n) // k) * k


def _row_shift(lam, logm, pos, kind, window, strict):
    """r_i (H, N): the log of row i's positional normaliser sum_j m_j e^{-lambda_h (p_i - p_j)} over
    its visible keys (directional order, ``pos`` ascending), which the row term subtracts so that
    the bf16 logsumexp cuDNN returns is lse - r_i = log sum_j w_ij e^{content_ij} with positional
    weights w summing to 1: |lse - r_i| <= |beta|, whatever N, the masses or lambda. Windows
    without ALiBi: windowed mass sums; a causal window with ALiBi: the unwindowed normaliser (an
    upper bound). Rows with no visible key (the first strict row) get 0."""
    h, n = lam.shape[0], logm.shape[0]
    if kind == "causal" or (kind == "local" and window[1] == 0):
        r = log_normaliser(lam, logm, pos, True, strict)
    else:  # a two-sided window or full attention, without ALiBi: plain mass sums
        c = jnp.concatenate([jnp.zeros((1,), logm.dtype), jnp.cumsum(jnp.exp(logm))])
        left, right = (n, n) if window is None else window
        i = jnp.arange(n)
        tot = c[jnp.minimum(i + right + 1, n)] - c[jnp.maximum(i - left, 0)]
        r = jnp.broadcast_to(jnp.log(tot), (h, n))
    return jnp.where(jnp.isfinite(r), r, 0.0)


def _coordinates(q, k, lam, logm, kpos, qpos, shift):
    """Augmented bf16 queries (H, N, D) and keys (M, D), D a multiple of 8 (module docstring)."""
    h, n, _ = q.shape
    three = lambda x: jnp.stack(split3_bf16(x), -1)  # noqa: E731
    lm3, l3, p3 = three(logm), three(lam), three(kpos)  # (M, 3), (H, 3), (M, 3)
    row3 = three(-lam[:, None] * qpos[None, :] - shift)  # (H, N, 3): the row term
    q_aug = jnp.concatenate(
        [
            jnp.ones((h, n, 3), jnp.bfloat16),
            jnp.broadcast_to(jnp.repeat(l3, 3, axis=1)[:, None, :], (h, n, 9)),
            row3,
        ],
        -1,
    )
    k_aug = jnp.concatenate(
        [lm3, jnp.tile(p3, (1, 3)), jnp.ones((k.shape[0], 3), jnp.bfloat16)], -1
    )
    qa = jnp.concatenate([q.astype(jnp.bfloat16), q_aug], -1)
    ka = jnp.concatenate([k.astype(jnp.bfloat16), k_aug], -1)
    dim = _round_up(qa.shape[-1], 8)
    return pad_axis(qa, dim, 2, 0.0), pad_axis(ka, dim, 1, 0.0)


def _directional(q, xk, lam, logm, pos, *, causal, strict, reverse, window, implementation):
    """The sorted-order directional call (``backends._sorted``): (out (H, N, d), lse (H, N))."""
    h, n, d = q.shape
    sign = -1.0 if reverse else 1.0
    if reverse:
        q, xk, logm, pos = q[:, ::-1], xk[::-1], logm[::-1], pos[::-1]
    qpos = pos
    kind, win = index_mask(causal, window)
    shift = _row_shift(lam, logm, sign * pos, kind, win, strict)
    if strict:
        xk, logm, pos = with_dummy(xk, logm, pos, sign)
    qa, ka = _coordinates(q, xk, lam, logm, sign * pos, sign * qpos, shift)
    dim = qa.shape[-1]
    v = pad_axis(xk, dim, 1, 0.0).astype(jnp.bfloat16)
    if (
        strict
    ):  # one padding query at the end: N + 1 queries over N + 1 keys (no alignment question)
        qa = pad_axis(qa, n + 1, 1, 0.0)
    out, lse = jax.nn.dot_product_attention(
        jnp.swapaxes(qa, 0, 1)[None],  # (1, N, H, D)
        ka[None, :, None, :],  # (1, M, 1, D): one key copy for every head
        v[None, :, None, :],
        scale=1.0,
        is_causal=kind == "causal",
        local_window_size=win if kind == "local" else None,
        implementation=implementation,
        return_residual=True,
    )
    out = jnp.swapaxes(out[0], 0, 1)[:, :n, :d].astype(jnp.float32)  # (H, N, d)
    lse = jnp.swapaxes(lse[0], 0, 1)[:, :n].astype(jnp.float32) + shift  # bf16-rounded + r_i
    if reverse:
        out, lse = out[:, ::-1], lse[:, ::-1]
    return out, lse


def _forward(spec: Cudnn, p: Problem) -> Array:
    lowered = _check(p)
    directional = functools.partial(
        _directional, window=lowered.window, implementation=spec.implementation
    )
    return sorted_field(p, lowered, "Cudnn", directional)
