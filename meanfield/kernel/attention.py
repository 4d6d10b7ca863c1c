r"""The attention kernel: one ``eqx.Module`` for every self-attention velocity field.

For moving tokens x_1..x_N (rows of ``x``), keys/values x_1..x_N plus optional fixed prompt
tokens y_1..y_P, masses m_j and a position coupling b_h(z_i, z_j) (the mask), head h computes

    a^h_ij = beta_h ⟨Q_h x_i, K_h x_j⟩ + b_h(z_i, z_j) + log m_j

    SA  (softmax):       v^h_i = sum_j e^{a^h_ij} V_h x_j / sum_j e^{a^h_ij}
    USA (unnormalised):  v^h_i = sum_j e^{a^h_ij} V_h x_j

and the heads are mixed, v_i = sum_h W_h v^h_i (default W_h = I / heads, so that identical
heads reproduce the single-head field). Q, K, V, W default to the identity (stored as
``None``, which also skips the projection). The field is the *unprojected* velocity; the
geometry (e.g. the sphere's tangent projection) is applied by the integrator.

Backends (strategy modules, passed as ``Attention(backend=...)``) evaluate the same formula:

* [`Dense`][meanfield.kernel.attention.Dense] ``(row_block=None)``: exact row softmax over all keys, evaluated ``row_block``
  query rows at a time (a (heads, row_block, N+P) slab; by default about 2^21 scores per slab
  and at most 16 MiB, which keeps it in cache: [`default_row_block`][meanfield.kernel.attention.default_row_block]). Fastest for N up to
  ~10^4.
* [`Chunked`][meanfield.kernel.attention.Chunked] ``(block=512, query_batch=1)``: online softmax over key blocks
  (flash-attention style), O(N * block) memory; blocks the mask forbids entirely (upper triangle
  of a causal mask, far blocks of a window) are skipped with ``lax.cond``. N = 100,000 tokens in
  d = 16 fit in a few hundred MB.

A new backend (e.g. a fused accelerator kernel) subclasses [`AbstractBackend`][meanfield.kernel.attention.AbstractBackend] and
implements ``field(attn, p)``. The strings ``"dense"`` / ``"chunked"`` with the loose keywords
``row_block``, ``block``, ``query_batch`` are still accepted for one release (0.2) with a
``DeprecationWarning``.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp

from .._arrays import pad_axis as _pad_to
from .._errors import check_param, deprecated, is_concrete, param_fault, require
from ..sharding import token_shards
from .._types import Array, Float, TokensLike
from .encodings import AbstractPE, RoPE
from . import fused as _fused
from ._reference import with_reference_derivative
from . import splash as _splash
from .masks import AbstractMask, Full, Slots, position_normalized
from .sharded import sharded_field
from .tokens import ParallelPrompt, Prompt, TokenAux, split_prompt

PromptArg = Prompt | ParallelPrompt | tuple | None

_FORMS = ("SA", "USA")
_BACKENDS = ("dense", "chunked")
_PRECISIONS = ("highest", "tf32", "bf16")


class AbstractBackend(eqx.Module):
    """How the kernel evaluates the field of its query rows (a strategy, like a diffrax solver)."""

    @abc.abstractmethod
    def field(self, attn: Attention, p: _Prepared) -> Array:
        """Per-head field of the prepared query rows, shape (h, rows, d)."""


class Dense(AbstractBackend):
    """Exact row softmax over all keys, ``row_block`` query rows per slab (memory heads x
    row_block x (N + P)); ``None`` picks [`default_row_block`][meanfield.kernel.attention.default_row_block]: 2^21 / (N + P) rows clipped
    to [128, 1024], then fewer rows if the (heads x rows x keys) slab would pass 16 MiB."""

    row_block: int | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        require(self.row_block is None or int(self.row_block) > 0,
                f"row_block must be a positive integer or None, got {self.row_block}")

    def field(self, attn, p):
        return _dense(attn, p, self.row_block)


class Chunked(AbstractBackend):
    """Online softmax over (query block, key block) tiles of size ``block``, O(N * block) memory;
    tiles the mask forbids are skipped. ``query_batch``: query blocks evaluated at once
    (``jax.lax.map``'s ``batch_size``). 1: one after the other, a ``lax.cond`` per tile skips every
    forbidden tile. Larger values expose more parallelism to a GPU: each query block then loops
    over its own key-tile range [lo, hi) (the first and last tile the mask allows, from the tiles'
    position ranges), with query blocks i and nq - 1 - i paired in one loop, so that under a
    causal mask every batched loop runs nq + 1 tiles and the forbidden upper half is not computed
    (under batching a cond would become a select and compute every tile). Derivatives of that
    path (jvp, and vjp through it) are those of the ``query_batch=1`` path."""

    block: int = eqx.field(default=512, static=True)
    query_batch: int = eqx.field(default=1, static=True)

    def __check_init__(self):
        require(int(self.block) > 0, f"block must be a positive integer, got {self.block}")
        require(int(self.query_batch) > 0, f"query_batch must be a positive integer, got {self.query_batch}")

    def field(self, attn, p):
        if int(self.query_batch) == 1:
            return _chunked(attn, p, int(self.block), 1)
        # its loops have data-dependent lengths, which reverse mode cannot differentiate
        forward = functools.partial(_chunked, block=int(self.block), query_batch=int(self.query_batch))
        return with_reference_derivative(attn, p, forward=forward, reference=_chunked_reference)


class Fused(AbstractBackend):
    """A fused Pallas kernel (flash-style key tiles with the online normaliser, masks, masses,
    USA and ALiBi slopes in-kernel, forbidden tiles skipped): see [`meanfield.kernel.fused`][meanfield.kernel.fused]
    for what it supports. ``block_q``/``block_k``: tile sizes (powers of two); ``interpret``:
    Pallas interpret mode (``None``: on unless the default backend is a GPU); ``num_warps``,
    ``num_stages``: Triton launch settings on a GPU (``None``: Pallas' defaults)."""

    block_q: int = eqx.field(default=64, static=True)
    block_k: int = eqx.field(default=64, static=True)
    interpret: bool | None = eqx.field(default=None, static=True)
    num_warps: int | None = eqx.field(default=None, static=True)
    num_stages: int | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        for name in ("block_q", "block_k"):
            b = int(getattr(self, name))
            require(b >= 16 and b & (b - 1) == 0, f"{name} must be a power of two >= 16, got {b}")

    def field(self, attn, p):
        return _fused.field(self, attn, p, _chunked_reference)


class Splash(AbstractBackend):
    """jax's TPU splash attention kernel through augmented coordinates (causal/strict/window/ALiBi
    masks, masses, SA/USA, PositionNormalized, heads sharing one key copy): see
    [`meanfield.kernel.splash`][meanfield.kernel.splash]. ``block_q``/``block_k``: splash block sizes (multiples of 128;
    sequences are padded to them); ``interpret``: Pallas interpret mode (``None``: on unless the
    default backend is a TPU)."""

    block_q: int = eqx.field(default=512, static=True)
    block_k: int = eqx.field(default=512, static=True)
    interpret: bool | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        for name in ("block_q", "block_k"):
            b = int(getattr(self, name))
            require(b >= 128 and b % 128 == 0, f"Splash: {name} must be a positive multiple of 128, got {b}")

    def field(self, attn, p):
        return _splash.field(self, attn, p, _chunked_reference)


DEFAULT_BACKENDS = {
    "gpu": ((16384, lambda: Chunked(block=2048, query_batch=8)),),
}
"""Per platform, (smallest N, backend) thresholds measured on a device, largest matching N wins;
``Dense()`` wherever no device run showed another backend faster (the CPU, TPUs, small N). GPU:
``benchmarks/results_h200_backends.txt`` (H200, causal SA, d = 64): Chunked(2048, 8) ran
61.8 against Dense's 32.5 Gpair/s at N = 16384, 76 against 64 at 65536, 78 against 70 at 262144
(tf32), Dense ahead at 4096. The Fused rewrite and Splash have no device run yet, so neither is a
default."""


def default_backend(n: int, platform: str | None = None) -> AbstractBackend:
    """The backend ``Attention(backend=None)`` uses for N tokens on ``platform`` (default: JAX's
    default backend): see `DEFAULT_BACKENDS`."""
    platform = jax.default_backend() if platform is None else platform
    chosen = Dense()
    for threshold, make in DEFAULT_BACKENDS.get(platform, ()):
        if int(n) >= threshold:
            chosen = make()
    return chosen


class Auto(AbstractBackend):
    """The default backend: [`default_backend`][meanfield.kernel.attention.default_backend] for the number of query tokens and the
    platform, resolved when the field is traced."""

    def resolve(self, n: int) -> AbstractBackend:
        return default_backend(n)

    def field(self, attn, p):
        return self.resolve(p.q.shape[1]).field(attn, p)


def _backend(backend, block, query_batch, row_block) -> AbstractBackend:
    """The backend strategy from the new (a module) or the deprecated (a string plus loose
    keywords) form."""
    loose = {k: v for k, v in dict(block=block, query_batch=query_batch, row_block=row_block).items() if v is not None}
    if backend is None and not loose:
        return Auto()
    if isinstance(backend, AbstractBackend):
        require(not loose, f"{sorted(loose)} belong to the backend: pass e.g. backend=Chunked(block=..., query_batch=...) "
                           "or Dense(row_block=...) instead")
        return backend
    backend = "dense" if backend is None else backend
    require(isinstance(backend, str) and backend in _BACKENDS,
            f"backend must be one of Dense(...), Chunked(...) or (deprecated) {_BACKENDS}, got {backend!r}")
    deprecated(f"Attention(backend={backend!r}, block=, query_batch=, row_block=) is deprecated; pass "
               "backend=meanfield.kernel.Dense(row_block) or Chunked(block, query_batch)")
    if backend == "dense":
        return Dense(row_block=row_block)
    return Chunked(block=512 if block is None else int(block), query_batch=1 if query_batch is None else int(query_batch))


def _as_heads(name: str, m, heads: int | None):
    """Validate a projection matrix: (d, d) or (heads, d, d), square."""
    if m is None:
        return None
    m = jnp.asarray(m)
    require(m.ndim in (2, 3), f"{name} must have shape (d, d) or (heads, d, d), got {m.shape}")
    require(m.shape[-1] == m.shape[-2], f"{name} must be square (d x d) per head, got shape {m.shape}")
    return m if m.ndim == 3 else m[None]


class Attention(eqx.Module):
    r"""Self-attention velocity field (see module docstring for the formula).

    For head $h$, with $b_h$ the mask's log-weights and $m_j$ the key masses,

    $$
    a^h_{ij} = \beta_h \langle Q_h x_i, K_h x_j\rangle + b_h(z_i, z_j), \qquad
    v_i = \sum_h W_h \frac{\sum_j m_j e^{a^h_{ij}} V_h x_j}{\sum_j m_j e^{a^h_{ij}}} \ \text{(SA)},
    $$

    and under USA the denominator is dropped. The velocity of token $i$ is $P_{x_i} v_i$ on the sphere.

    Args:
        beta: inverse temperature, any finite real (beta < 0 makes the scores repulsive); a scalar or
            one value per head.
        Q: query matrix, (d, d) or (heads, d, d); ``None`` = identity.
        K: key matrix, likewise.
        V: value matrix, likewise.
        W: output mixing per head, (heads, d, d); ``None`` = I / heads.
        heads: number of heads (inferred from 3-D matrices or a per-head beta if omitted).
        form: ``"SA"`` (softmax) or ``"USA"`` (unnormalised).
        mask: a position coupling from [`meanfield.kernel.masks`][meanfield.kernel.masks] (default [`Full`][meanfield.kernel.masks.Full]);
            compose with ``&``, e.g. ``Causal() & ALiBi(0.5)``; ``ZBias(A)`` couples the
            auxiliary variables z (concatenated positional-encoding channel).
        pe: ``AdditivePE(scale, U)`` (y = x + scale U z) or ``RoPE(base, scale)``, or None.
        backend: a strategy module, [`Dense`][meanfield.kernel.attention.Dense] ``(row_block=None)`` (default),
            [`Chunked`][meanfield.kernel.attention.Chunked] ``(block=512, query_batch=1)`` or [`Fused`][meanfield.kernel.attention.Fused] ``(block_q=64,
            block_k=64)`` (a Pallas kernel; see [`meanfield.kernel.fused`][meanfield.kernel.fused]). Deprecated: the strings
            ``"dense"``/``"chunked"`` with the keywords ``block``, ``query_batch``, ``row_block``.
        precision: matmul precision of the scores ⟨Q x_i, K x_j⟩: ``"highest"`` (default: full
            precision of the input dtype), ``"tf32"`` (the backend's fast default: TF32 tensor
            cores for float32 on recent NVIDIA GPUs, exact float32 on CPU), ``"bf16"`` (queries
            and keys rounded to bfloat16, products accumulated in the input dtype). Values,
            normalisers and the softmax stay in the input dtype. ``benchmarks/bench_precision.py``
            reports the field error of each against float64.
        shard_tokens: under a mesh context with a ``"tokens"`` axis (``jax.set_mesh``, see
            [`meanfield.sharding`][meanfield.sharding]) evaluate the field with the tokens split over that axis
            (``jax.shard_map``: keys/values all-gathered, each device its own query rows;
            identical to the single-device field up to round-off). ``False`` never shards.

    Example:
        ```python
        attn = Attention(beta=1.0, mask=Causal())
        v = attn(x)                         # x: (N, d) tokens -> (N, d) field
        v = attn(x, aux=TokenAux.default(N, pos=positions), prompt=Prompt(y))
        ```
    """

    beta: Array
    Q: Array | None
    K: Array | None
    V: Array | None
    W: Array | None
    mask: AbstractMask
    pe: AbstractPE | None
    backend: AbstractBackend
    heads: int = eqx.field(static=True)
    form: str = eqx.field(static=True)
    precision: str = eqx.field(static=True)
    shard_tokens: bool = eqx.field(static=True)

    def __init__(
        self,
        beta=1.0,
        Q=None,
        K=None,
        V=None,
        W=None,
        *,
        heads: int | None = None,
        form: str = "SA",
        mask: AbstractMask | None = None,
        pe: AbstractPE | None = None,
        backend: AbstractBackend | str | None = None,
        block: int | None = None,
        query_batch: int | None = None,
        row_block: int | None = None,
        precision: str = "highest",
        shard_tokens: bool = True,
    ):
        require(form in _FORMS, f"form must be one of {_FORMS}, got {form!r}")
        require(precision in _PRECISIONS, f"precision must be one of {_PRECISIONS}, got {precision!r}")
        backend = _backend(backend, block, query_batch, row_block)
        mats = {n: _as_heads(n, m, heads) for n, m in dict(Q=Q, K=K, V=V, W=W).items()}
        beta = jnp.asarray(beta)
        if not jnp.issubdtype(beta.dtype, jnp.floating):
            beta = beta.astype(jnp.result_type(float))
        require(beta.ndim <= 1, f"beta must be a scalar or have shape (heads,), got {beta.shape}")
        counts = {m.shape[0] for m in mats.values() if m is not None and m.shape[0] > 1}
        if beta.ndim == 1 and beta.shape[0] > 1:
            counts.add(beta.shape[0])
        if heads is not None:
            counts.add(int(heads))
        require(len(counts) <= 1, f"inconsistent number of heads across Q, K, V, W, beta, heads: {sorted(counts)}")
        self.heads = counts.pop() if counts else 1
        require(self.heads >= 1, f"heads must be >= 1, got {self.heads}")
        dims = {n: m.shape[-1] for n, m in mats.items() if m is not None}
        require(len(set(dims.values())) <= 1, f"Q, K, V, W must share the token dimension d, got {dims}")
        for n, m in mats.items():
            if m is not None:
                require(m.shape[0] in (1, self.heads), f"{n} has {m.shape[0]} heads, expected 1 or {self.heads}")
        check_param("beta", beta)  # any sign: beta < 0 (repulsive scores) is a valid model
        for n, m in mats.items():
            check_param(n, m)
        self.beta = beta
        self.Q, self.K, self.V, self.W = mats["Q"], mats["K"], mats["V"], mats["W"]
        self.mask = Full() if mask is None else mask
        self.pe = pe
        self.form = form
        self.backend = backend
        self.precision = precision
        self.shard_tokens = bool(shard_tokens)

    # ------------------------------------------------------------------ checks
    @property
    def dim(self) -> int | None:
        """The token dimension d fixed by the matrices (None if all are identity)."""
        for m in (self.Q, self.K, self.V, self.W):
            if m is not None:
                return m.shape[-1]
        return None

    def validate(self, x: TokensLike, aux: TokenAux | None = None, prompt: PromptArg = None, name: str = "x") -> None:
        """Trace-time shape checks for an input cloud ``x`` of shape (N, d)."""
        require(jnp.ndim(x) == 2, f"{name} must have shape (N, d) (tokens x dimension), got {jnp.shape(x)}")
        n, d = x.shape
        require(n >= 1, f"{name} must contain at least one token")
        for nm in ("Q", "K", "V", "W"):
            m = getattr(self, nm)
            if m is not None:
                require(m.shape[-1] == d, f"{nm} has shape {m.shape} but the tokens have dimension d = {d}")
        require(
            self.beta.ndim == 0 or self.beta.shape[0] in (1, self.heads),
            f"beta has shape {self.beta.shape}, expected () or ({self.heads},)",
        )
        if aux is not None:
            aux.validate(n)
        n_keys = n
        prompt, parallel = split_prompt(prompt)
        if parallel is not None:
            require(parallel.p.shape == (n, d),
                    f"prompt.p (parallel prompt) must have shape ({n}, {d}), one per token, got {parallel.p.shape}")
        if prompt is not None:
            require(
                prompt.x.shape[1] == d,
                f"prompt.x has dimension {prompt.x.shape[1]} but the tokens have d = {d}",
            )
            n_keys += prompt.size
        self.mask.validate(n, n_keys, self.heads)
        if isinstance(self.pe, RoPE):
            require(d % 2 == 0, f"RoPE rotates pairs of coordinates: it needs an even token dimension d, got d = {d}")

    def memory_bytes(self, n: int, n_keys: int, d: int, itemsize: int) -> int:
        """Peak bytes of one field evaluation for n query rows over n_keys keys (an estimate: the
        projected Q/K/V copies plus the score slabs the backend keeps alive: three per slab)."""
        h = self.heads
        proj = 3 * h * max(n, n_keys) * d * itemsize
        backend = self.backend.resolve(n) if isinstance(self.backend, Auto) else self.backend
        if isinstance(backend, Chunked):
            slab = h * min(backend.block, n) * min(backend.block, n_keys) * backend.query_batch
        elif isinstance(backend, Dense):
            rb = backend.row_block or default_row_block(h, n_keys, itemsize)
            slab = h * min(rb, n) * n_keys
        else:  # fused: tiles live on chip
            slab = 0
        return int(proj + 3 * slab * itemsize)

    def check_parameters(self) -> None:
        """The eager checks (finite values, whatever their type) on beta, Q, K, V and W
        (for an Attention whose fields were replaced after construction, e.g. by ``eqx.tree_at``)."""
        check_param("beta", self.beta)
        for n, m in (("Q", self.Q), ("K", self.K), ("V", self.V), ("W", self.W)):
            check_param(n, m)

    def parameter_fault(self):
        """True (a scalar computed in the graph) when beta, Q, K, V or W holds NaN or inf, or a mask or
        encoding parameter is out of range: the fault a traced parameter makes a solve report."""
        fault = param_fault(self.beta)
        for m in (self.Q, self.K, self.V, self.W):
            fault = fault | param_fault(m)
        for part in (self.mask, self.pe):
            hook = getattr(part, "parameter_fault", None)
            if hook is not None:
                fault = fault | hook()
        return fault

    # ------------------------------------------------------------- evaluation
    def __call__(self, x: TokensLike, aux: TokenAux | None = None, prompt: PromptArg = None) -> Float[Array, "n d"]:
        """The velocity field v(x), shape (N, d) (not yet projected on any tangent space)."""
        self.validate(x, aux, prompt)
        if self.shard_tokens:
            if token_shards() > 1:
                return sharded_field(self, x, aux, prompt)
        return self.rows(x, 0, x.shape[0], aux, prompt)

    def rows(self, x: TokensLike, start, size: int, aux: TokenAux | None = None,
             prompt: PromptArg = None) -> Float[Array, "size d"]:
        """The field of the query rows ``start .. start + size - 1`` only, shape (size, d): every
        token of ``x`` (and the prompt) is a key, only those rows are queries. ``start`` may be
        traced (the sharded path passes its device's offset); ``size`` is static."""
        p = self._prepare(x, aux, prompt, (start, int(size)))
        out = self.backend.field(self, p)
        return self._mix(out, x.dtype)

    def weights(self, x: TokensLike, aux: TokenAux | None = None, prompt: PromptArg = None) -> Float[Array, "h n nk"]:
        """Dense attention matrix, shape (h, N, N + P) with h = 1 or heads.

        SA: row-stochastic weights e^{a_ij} / sum_j e^{a_ij}; USA: e^{a_ij} (masses included).
        The field of head h is ``weights[h] @ (V_h keys)``. Key axis: the N tokens, then the P
        shared prompt tokens, then (with a [`ParallelPrompt`][meanfield.kernel.tokens.ParallelPrompt]) one column holding each row's
        weight on its own prompt p_i (shape (h, N, N + P + 1)).
        """
        self.validate(x, aux, prompt)
        p = self._prepare(x, aux, prompt)
        w, norm = _dense_weights(self, p, p.q, p.qs)
        return _divide(w, norm)

    @property
    def _proj_precision(self):
        """Q, K, V projections and the output mixing: full precision under ``"highest"`` (on a GPU
        XLA's float32 default is TF32), the backend's default otherwise."""
        return jax.lax.Precision.HIGHEST if self.precision == "highest" else jax.lax.Precision.DEFAULT

    def _mix(self, out, dtype):
        if self.W is None:
            return jnp.mean(out, axis=0)
        out = jnp.broadcast_to(out, (self.heads,) + out.shape[1:])
        return jnp.einsum("hed,hnd->ne", self.W.astype(dtype), out, precision=self._proj_precision)

    def _prepare(self, x, aux, prompt, rows=None) -> _Prepared:
        x = jnp.asarray(x)
        prompt, parallel = split_prompt(prompt)
        n, d = x.shape
        dt = x.dtype
        aux = TokenAux.default(n, dt) if aux is None else aux
        zq = None if aux.z is None else aux.z.astype(dt)
        # positions relative to the smallest token position, subtracted in their own dtype before the
        # cast to the tokens' dtype: masks and encodings use only differences, and integer positions
        # beyond 2^24 (which float32 cannot tell apart) stay exact over a span up to 2^24
        ref = jnp.min(aux.pos)
        pos = (aux.pos - ref).astype(dt)
        keys, kpos, kmass, free, zk = x, pos, aux.mass.astype(dt), jnp.zeros((n,), bool), zq
        if prompt is not None:
            psz = prompt.size
            pmass = jnp.full((psz,), 1.0 / n, dt) if prompt.mass is None else prompt.mass.astype(dt)
            ppos = jnp.zeros((psz,), dt) if prompt.pos is None else (prompt.pos - ref).astype(dt)
            pfree = jnp.full((psz,), prompt.pos is None)
            keys = jnp.concatenate([x, prompt.x.astype(dt)], axis=0)
            kpos = jnp.concatenate([kpos, ppos])
            kmass = jnp.concatenate([kmass, pmass])
            free = jnp.concatenate([free, pfree])
            if zq is not None:
                pz = jnp.zeros((psz, zq.shape[1]), dt) if prompt.z is None else prompt.z.astype(dt)
                zk = jnp.concatenate([zq, pz], axis=0)
        qs = Slots(jnp.arange(n), pos, zq)
        xq = x
        own_p = None if parallel is None else parallel.p.astype(dt)
        own_w = None if parallel is None else parallel.weight.astype(dt)
        start, size = (0, n) if rows is None else rows
        if not (isinstance(start, int) and start == 0 and size == n):
            cut = lambda a: jax.lax.dynamic_slice_in_dim(a, start, size)  # noqa: E731
            qs = Slots(start + jnp.arange(size), cut(qs.pos), None if zq is None else cut(zq))
            xq = cut(x)
            if parallel is not None:
                own_p, own_w = cut(own_p), cut(own_w)
        ks = Slots(jnp.arange(keys.shape[0]), kpos, zk)

        def proj(m, y):
            return y[None] if m is None else jnp.einsum("hed,nd->hne", m.astype(dt), y, precision=self._proj_precision)

        xk, xv = keys, keys
        xq_raw = xq
        if self.pe is not None:
            xq, xk, xv = self.pe.inputs(xq, keys, qs, ks)
        q, k = proj(self.Q, xq), proj(self.K, xk)
        if self.pe is not None:
            q, k = self.pe.rotate(q, k, qs, ks)
        own = None
        if parallel is not None:  # each row's own prompt, with the row's own position and z
            ok_in, ov_in = own_p, own_p
            if self.pe is not None:
                _, ok_in, ov_in = self.pe.inputs(xq_raw, own_p, qs, qs)
            ok = proj(self.K, ok_in)
            if self.pe is not None:
                ok = self.pe.rotate(ok, ok, qs, qs)[1]
            own = _Own(k=ok, v=proj(self.V, ov_in), logm=jnp.log(own_w))
        return _Prepared(
            q=q,
            k=k,
            v=proj(self.V, xv),
            qs=qs,
            ks=ks,
            mass=kmass,
            free=free,
            beta=jnp.reshape(self.beta.astype(dt), (-1, 1, 1)),
            n_prompt=0 if prompt is None else int(prompt.size),
            own=own,
            raw=xv if self.pe is None else None,
        )


class _Own(eqx.Module):
    """Each query row's own (parallel) prompt key: k (hk, rows, d), v (hv, rows, dv), log mass (rows,)."""

    k: Array
    v: Array
    logm: Array


def _own_scores(p, q, own):
    """beta ⟨q_i, k_own_i⟩ + log w_i, shape (h, rows)."""
    return jnp.sum((p.beta * q) * own.k, axis=-1) + own.logm


class _Prepared(eqx.Module):
    q: Array  # (hq, N, d)
    k: Array  # (hk, M, d)
    v: Array  # (hv, M, d)
    qs: Slots
    ks: Slots
    mass: Array  # (M,) key masses
    free: Array  # (M,) bool: prompt keys that bypass the mask
    beta: Array  # (hb, 1, 1)
    n_prompt: int = eqx.field(static=True)  # prompt keys (the last n_prompt keys)
    own: _Own | None = None  # parallel prompts of the query rows
    raw: Array | None = None  # (M, d) the keys before the K and V projections (no positional encoding)


def _scores(attn: Attention, q, k, qs, ks, free, beta, logm=None):
    """a_ij = ⟨beta q_i, k_j⟩ + b(z_i, z_j) [+ log m_j], shape (h, nq, nk)."""
    bias = attn.mask.bias(qs, ks, attn.heads)
    bias = jnp.where(free[None, None, :], 0.0, bias)
    # contracting the last axes directly (no transposed copy of the keys: one XLA:CPU kernel fewer,
    # +5-20 % at N = 256 measured); "..." broadcasts one shared head against h
    if attn.precision == "bf16":
        s = jnp.einsum("...id,...jd->...ij", (beta * q).astype(jnp.bfloat16), k.astype(jnp.bfloat16),
                       preferred_element_type=q.dtype)
    else:
        prec = jax.lax.Precision.HIGHEST if attn.precision == "highest" else jax.lax.Precision.DEFAULT
        s = jnp.einsum("...id,...jd->...ij", beta * q, k, precision=prec)
    if not isinstance(attn.mask, Full):
        s = s + bias
    return s if logm is None else s + logm


def _position_logw(attn: Attention, qs, p: _Prepared, ks=None, free=None, logm=None):
    """log(m_j e^{b_ij}): the positional log-weights that [`PositionNormalized`][meanfield.kernel.masks.PositionNormalized] normalises
    per row (prompt keys that bypass the mask count with b = 0), shape (h, nq, nk)."""
    ks = p.ks if ks is None else ks
    free = p.free if free is None else free
    logm = jnp.log(p.mass) if logm is None else logm
    bias = attn.mask.bias(qs, ks, attn.heads)
    return jnp.where(free[None, None, :], 0.0, bias) + logm


def _dense_weights(attn: Attention, p: _Prepared, q, qs):
    """Weights m_j e^{a_ij} (shifted by the row max for SA) and the row normaliser (None for USA;
    the positional normaliser for USA under [`PositionNormalized`][meanfield.kernel.masks.PositionNormalized])."""
    s = _scores(attn, q, p.k, qs, p.ks, p.free, p.beta, jnp.log(p.mass))
    if p.own is not None:  # one more key column: each row's own prompt
        so = jnp.broadcast_to(_own_scores(p, q, p.own), s.shape[:-1])
        s = jnp.concatenate([s, so[..., None]], axis=-1)
    if attn.form == "USA":
        if position_normalized(attn.mask):
            b = _position_logw(attn, qs, p)
            if p.own is not None:
                b = jnp.concatenate([b, jnp.broadcast_to(p.own.logm[None, :, None], b.shape[:-1] + (1,))], axis=-1)
            bmax = _finite(jnp.max(b, axis=-1, keepdims=True))
            return jnp.exp(s - bmax), jnp.sum(jnp.exp(b - bmax), axis=-1, keepdims=True)
        return jnp.exp(s), None
    smax = jnp.max(s, axis=-1, keepdims=True)
    smax = jnp.where(jnp.isfinite(smax), smax, 0.0)
    w = jnp.exp(s - smax)
    return w, jnp.sum(w, axis=-1, keepdims=True)


SLAB_BYTES = 2**24  # the dense backend's default cap on one (heads x rows x keys) score slab


def default_row_block(heads: int, n_keys: int, itemsize: int = 4) -> int:
    """Query rows per slab of the dense backend: 2^21 / n_keys clipped to [128, 1024], then
    reduced (down to 8) so that the heads x rows x n_keys slab stays within ``SLAB_BYTES``
    (16 MiB, half the L3 of the 2-core CPU it was measured on). Interleaved measurements
    (``benchmarks/bench_kernel.py`` machine, float32): with one head, 2^21 / N is within noise of
    the best block for N = 1k..32k; with 4-8 heads a slab above the L3 (e.g. 4 x 512 x 4096)
    runs 2.1-3x slower than one within it (4 heads, N = 4096, d = 64: 476 vs 1045 Mpair/s).

    Example:
        ```python
        default_row_block(1, 4096)      # 512 rows: 2^21 / 4096
        default_row_block(4, 4096)      # 256 rows: 4 x 256 x 4096 float32 scores = 16 MiB
        ```
    """
    keys = max(int(n_keys), 1)
    b = min(1024, max(128, 2**21 // keys))
    cap = SLAB_BYTES // (max(int(heads), 1) * keys * int(itemsize))
    return int(max(8, min(b, cap)))


_MASS_COLUMN_MAX_D = 8  # up to this value dimension the row sum rides in the value GEMM (see _dense)


def _dense(attn: Attention, p: _Prepared, row_block: int | None) -> Array:
    """Exact row softmax, ``row_block`` query rows at a time (lax.map over row slabs).

    The masses enter the value products instead of the exponent: with e_ij = e^{a_ij - max_j a_ij}
    (a without log m), the SA field is (e @ m V x) / (e @ m): one exp pass over the
    (rows x keys) slab, then for d <= 8 one GEMM against [m V x, m] (numerator and row sum
    together) and otherwise a GEMM and a GEMV (the d + 1 output columns of the joint GEMM cost
    10-16 % at d = 64, the GEMV 10 % at d = 3; measured interleaved on a 2-core CPU). XLA:CPU
    (jax >= 0.10, YNN fusions) runs the score GEMM, the row max and the exp as one fused kernel
    as long as nothing else sits between them, so the guard against fully forbidden rows
    (`_finite`) is applied only for masks that may forbid pairs (without a forbidding
    mask it cost 1.4-1.9x at d = 3).
    """
    n, d_out = p.q.shape[1], p.v.shape[-1]
    mv = p.mass[:, None] * p.v  # the masses enter the value GEMM and the row-sum GEMV
    mv1 = None
    if d_out <= _MASS_COLUMN_MAX_D:  # [m_j v_j, m_j]: one GEMM gives the numerator and the row sum
        mv1 = jnp.concatenate([mv, jnp.broadcast_to(p.mass[:, None], mv.shape[:-1] + (1,))], axis=-1)

    def rows(q, qs, own):
        s = _scores(attn, q, p.k, qs, p.ks, p.free, p.beta)
        so = None if own is None else _own_scores(p, q, own)[..., None]  # (h, rows, 1), log w_i included
        if attn.form == "USA" and position_normalized(attn.mask):
            # sum_j m_j e^{s_ij} v_j / sum_j m_j e^{b_ij}, both shifted by max_j (b_ij + log m_j)
            b = _position_logw(attn, qs, p)
            bmax = jnp.max(b, axis=-1, keepdims=True)
            if own is not None:
                bmax = jnp.maximum(bmax, own.logm[None, :, None])
            bmax = _finite(bmax)
            num = jnp.exp(s - bmax) @ mv
            den = jnp.sum(jnp.exp(b - bmax), axis=-1, keepdims=True)
            if own is not None:
                num = num + jnp.exp(so - bmax) * own.v
                den = den + jnp.exp(own.logm[None, :, None] - bmax)
            return num / (den + jnp.finfo(s.dtype).tiny)
        if attn.form == "USA":
            num = jnp.exp(s) @ mv
            return num if own is None else num + jnp.exp(so) * own.v
        smax = jnp.max(s, axis=-1, keepdims=True)
        if own is not None:
            smax = jnp.maximum(smax, so)
        if attn.mask.may_forbid:  # a row may see no key (max = -inf); without it XLA:CPU keeps one fused kernel
            smax = _finite(smax)
        e = jnp.exp(s - smax)
        if mv1 is not None:  # small d: numerator and row sum from one GEMM
            out = e @ mv1
            num, den = out[..., :d_out], out[..., d_out:]
        else:
            num, den = e @ mv, e @ p.mass[:, None]
        if own is not None:
            w_own = jnp.exp(so - smax)
            num, den = num + w_own * own.v, den + w_own
        # + tiny: a fully masked row gives 0 / tiny = 0; any other row has sum >= max_j m_j
        return num / (den + jnp.finfo(num.dtype).tiny)

    b = row_block
    if b is None:
        b = default_row_block(attn.heads, p.k.shape[1], jnp.dtype(p.q.dtype).itemsize)
    if n <= b:
        return rows(p.q, p.qs, p.own)
    nb = math.ceil(n / b)
    q = _blocks(_pad_to(p.q, nb * b, 1, 0.0), nb, 1)
    own = None if p.own is None else _block_own(p.own, nb, b)
    out = jax.lax.map(lambda a: rows(*a), (q, _block_rows(p.qs, nb, b), own))  # (nb, h, b, d)
    out = jnp.moveaxis(out, 0, 1)
    return out.reshape(out.shape[0], nb * b, d_out)[:, :n]


def _block_own(own, nb, b):
    """The own-prompt arrays split into row blocks like the queries (padding rows get mass 0)."""
    return _Own(k=_blocks(_pad_to(own.k, nb * b, 1, 0.0), nb, 1), v=_blocks(_pad_to(own.v, nb * b, 1, 0.0), nb, 1),
                logm=_blocks(_pad_to(own.logm, nb * b, 0, -jnp.inf), nb, 0))


def _block_rows(tree, nb, b, fill="edge"):
    """Pad every array of ``tree`` along its first axis to nb * b and split it into blocks."""
    return jax.tree.map(lambda a: _blocks(_pad_to(a, nb * b, 0, fill), nb, 0), tree)


def _finite(m):
    """Row maxima with -inf (fully masked so far) replaced by the most negative finite number, so
    e^{s - m} = 0 there. A ``jnp.maximum``, not a ``where``: XLA:CPU keeps the GEMM, exp and
    row sums in one fused kernel around it (a select splits the fusion; 4-9x slower measured
    under vmap, jax 0.10)."""
    return jnp.maximum(m, jnp.finfo(m.dtype).min)


def _divide(num, norm):
    if norm is None:
        return num
    return num / jnp.where(norm > 0, norm, 1.0)


def _blocks(a, nb, axis):
    """Split ``axis`` into (nb, block) and move the block index to the front."""
    shape = a.shape[:axis] + (nb, a.shape[axis] // nb) + a.shape[axis + 1 :]
    return jnp.moveaxis(a.reshape(shape), axis, 0)


def _chunked(attn: Attention, p: _Prepared, block: int, query_batch: int) -> Array:
    """Online-softmax evaluation over (query block, key block) tiles; O(N * block) memory."""
    n, m = p.q.shape[1], p.k.shape[1]
    bq, bk = min(block, n), min(block, m)
    nq, nk = math.ceil(n / bq), math.ceil(m / bk)
    h = attn.heads
    d_out = p.v.shape[-1]
    dt = p.q.dtype

    q = _blocks(_pad_to(p.q, nq * bq, 1, 0.0), nq, 1)  # (nq, hq, bq, d)
    qslots = _block_rows(p.qs, nq, bq)
    k = _blocks(_pad_to(p.k, nk * bk, 1, 0.0), nk, 1)
    v = _blocks(_pad_to(p.v, nk * bk, 1, 0.0), nk, 1)
    kslots = _block_rows(p.ks, nk, bk)
    logm = _blocks(_pad_to(jnp.log(p.mass), nk * bk, 0, -jnp.inf), nk, 0)
    free = _blocks(_pad_to(p.free, nk * bk, 0, False), nk, 0)
    k_lo, k_hi = kslots.pos.min(axis=1), kslots.pos.max(axis=1)
    k_live = jnp.any(jnp.isfinite(logm), axis=1)
    k_free = jnp.any(free, axis=1)
    pn = attn.form == "USA" and position_normalized(attn.mask)

    def raw_update(carry, kb, qi, qs):
        mx, l, acc, pmx, pl = carry
        kj, vj, ks, lm, fr = kb
        s = _scores(attn, qi, kj, qs, ks, fr, p.beta, lm)
        s = jnp.broadcast_to(s, (h, bq, bk))
        m_new = jnp.maximum(mx, s.max(axis=-1))
        m_safe = _finite(m_new)
        w = jnp.exp(s - m_safe[..., None])
        scale = jnp.exp(mx - m_safe)
        l = l * scale + w.sum(axis=-1)
        acc = acc * scale[..., None] + w @ vj
        if pn:  # online positional normaliser sum_j m_j e^{b_ij}, scaled by its running max
            b = jnp.broadcast_to(_position_logw(attn, qs, p, ks, fr, lm), (h, bq, bk))
            pm_new = jnp.maximum(pmx, b.max(axis=-1))
            pm_safe = _finite(pm_new)
            pl = pl * jnp.exp(pmx - pm_safe) + jnp.exp(b - pm_safe[..., None]).sum(axis=-1)
            pmx = pm_new
        return m_new, l, acc, pmx, pl

    update = jax.checkpoint(raw_update)

    def init_state(qi, own):
        if own is not None:  # the row's own prompt starts the online normalisers
            so = jnp.broadcast_to(_own_scores(p, qi, own), (h, bq))
            w0 = jnp.exp(so - _finite(so))
            pl0 = jnp.broadcast_to(jnp.exp(own.logm - _finite(own.logm)), (h, bq))
            return (so, w0, w0[..., None] * jnp.broadcast_to(own.v, (h, bq, d_out)),
                    jnp.broadcast_to(own.logm, (h, bq)), pl0)
        return (jnp.full((h, bq), -jnp.inf, dt), jnp.zeros((h, bq), dt), jnp.zeros((h, bq, d_out), dt),
                jnp.full((h, bq), -jnp.inf, dt), jnp.zeros((h, bq), dt))

    def finish(carry):
        mx, l, acc, pmx, pl = carry
        if pn:  # acc e^{mx} / (pl e^{pmx}); zero where the row sees no key
            shift = jnp.where(jnp.isfinite(mx) & jnp.isfinite(pmx), mx - pmx, 0.0)
            return acc * (jnp.exp(shift) / jnp.where(pl > 0, pl, 1.0))[..., None]
        if attn.form == "USA":
            m_safe = jnp.where(jnp.isfinite(mx), mx, 0.0)
            return acc * jnp.exp(m_safe)[..., None]
        return _divide(acc, l[..., None])

    def one_query_block(qb):
        qi, qs, own = qb
        q_lo, q_hi = qs.pos.min(), qs.pos.max()

        def body(carry, kb):
            tile, (live, has_free, lo, hi) = kb
            active = (attn.mask.block_active(q_lo, q_hi, lo, hi) | has_free) & live
            return jax.lax.cond(active, lambda c, t: update(c, t, qi, qs), lambda c, _: c, carry, tile), None

        tiles = ((k, v, kslots, logm, free), (k_live, k_free, k_lo, k_hi))
        carry, _ = jax.lax.scan(body, init_state(qi, own), tiles)
        return finish(carry)

    def every_tile(qb):  # no tile can be skipped: a plain scan (under batching a cond is a select)
        qi, qs, own = qb
        tiles = (k, v, kslots, logm, free)
        carry, _ = jax.lax.scan(lambda c, t: (raw_update(c, t, qi, qs), None), init_state(qi, own), tiles)
        return finish(carry)

    own = None if p.own is None else _block_own(p.own, nq, bq)
    if query_batch == 1:
        out = jax.lax.map(one_query_block, (q, qslots, own))  # (nq, h, bq, d)
    else:
        mask_active = attn.mask.block_active(qslots.pos.min(axis=1)[:, None], qslots.pos.max(axis=1)[:, None],
                                             k_lo[None, :], k_hi[None, :])
        if is_concrete(mask_active) and bool(jnp.all(mask_active)):  # e.g. Full, ALiBi: known at trace time
            out = jax.lax.map(every_tile, (q, qslots, own), batch_size=min(query_batch, nq))
        else:
            active = jnp.broadcast_to((mask_active | k_free[None, :]) & k_live[None, :], (nq, k_lo.shape[0]))
            out = _paired_blocks(q, qslots, own, (k, v, kslots, logm, free), active, init_state, update, finish,
                                 min(query_batch, -(-nq // 2)))
    out = jnp.moveaxis(out, 0, 1).reshape(h, nq * bq, d_out)
    return out[:, :n]


def _chunked_reference(attn, p):
    """The field through ``Chunked()`` (one query block at a time): the derivative of the paths that
    have none of their own (``Fused``, ``Chunked(query_batch > 1)``)."""
    return _chunked(attn, p, 512, 1)


def _paired_blocks(q, qslots, own, tiles, active, init_state, update, finish, batch):
    """The query blocks i and nq - 1 - i in one loop over t < n_i + n_{nq-1-i}, where n_i = hi_i - lo_i
    counts the key tiles from the first to the last one ``active`` (nq x nk) allows for block i (a
    superset: the forbidden tiles inside it are computed with their scores masked). Pairs are
    mapped with ``batch_size=batch``; under a causal mask in index order every pair runs nq + 1 tiles."""
    nq = q.shape[0]
    lo, hi = _fused.active_tile_range(active)
    pairs = -(-nq // 2)
    a_idx = jnp.arange(pairs)
    b_idx = nq - 1 - a_idx
    pick = lambda tree, i: jax.tree.map(lambda x: x[i], tree)  # noqa: E731

    def one_pair(ab):
        a, b = ab
        qa, qb = q[a], q[b]
        sa, sb = pick(qslots, a), pick(qslots, b)
        oa, ob = (None, None) if own is None else (pick(own, a), pick(own, b))
        na = hi[a] - lo[a]
        nb = jnp.where(b != a, hi[b] - lo[b], 0)

        def body(t, carry):
            ca, cb = carry
            first = t < na
            j = jnp.where(first, lo[a] + t, lo[b] + t - na)
            sel = lambda x, y: jax.tree.map(lambda u, w: jnp.where(first, u, w), x, y)  # noqa: E731
            new = update(sel(ca, cb), pick(tiles, j), sel(qa, qb), sel(sa, sb))
            return sel(new, ca), sel(cb, new)

        ca, cb = jax.lax.fori_loop(0, na + nb, body, (init_state(qa, oa), init_state(qb, ob)))
        return finish(ca), finish(cb)

    out_a, out_b = jax.lax.map(one_pair, (a_idx, b_idx), batch_size=batch)
    out = jnp.zeros((nq,) + out_a.shape[1:], out_a.dtype)
    return out.at[b_idx].set(out_b).at[a_idx].set(out_a)


def precision_report(attn: Attention, x: TokensLike, aux: TokenAux | None = None, prompt: PromptArg = None) -> dict:
    """Accuracy of the score-precision options on one cloud: for every option of
    ``Attention.precision`` the field in float32 against a float64 reference,
    {option: {"max_rel": max_i |v_i - v_i^64| / max_i |v_i^64|, "rms_rel": rms / rms}}.

    Needs float64 (``jax.config.update("jax_enable_x64", True)`` in the calling script; the
    library never sets it)."""
    require(jax.config.jax_enable_x64, "precision_report needs float64: call jax.config.update('jax_enable_x64', True) first")
    cast = lambda tree, dt: jax.tree.map(  # noqa: E731
        lambda a: a.astype(dt) if eqx.is_array(a) and jnp.issubdtype(a.dtype, jnp.floating) else a, tree)
    ref = cast(attn, jnp.float64)(jnp.asarray(x, jnp.float64), cast(aux, jnp.float64), cast(prompt, jnp.float64))
    out = {}
    for option in _PRECISIONS:
        a32 = cast(dataclasses.replace(attn, precision=option), jnp.float32)
        v = a32(jnp.asarray(x, jnp.float32), cast(aux, jnp.float32), cast(prompt, jnp.float32)).astype(jnp.float64)
        err = jnp.linalg.norm(v - ref, axis=-1)
        norm = jnp.linalg.norm(ref, axis=-1)
        out[option] = {"max_rel": float(err.max() / norm.max()), "rms_rel": float(jnp.sqrt(jnp.mean(err**2) / jnp.mean(norm**2)))}
    return out
