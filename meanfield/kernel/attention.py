r"""The attention kernel: one ``eqx.Module`` for every self-attention velocity field.

For moving tokens $x_1, \dots, x_N$ (rows of ``x``), keys/values $x_1, \dots, x_N$ plus optional
fixed prompt tokens $y_1, \dots, y_P$, masses $m_j$ and a position coupling $b_h(z_i, z_j)$ (the
mask), head $h$ computes

$$
a^h_{ij} = \beta_h \langle Q_h x_i, K_h x_j\rangle + b_h(z_i, z_j) + \log m_j, \qquad
v^h_i = \frac{\sum_j e^{a^h_{ij}} V_h x_j}{\sum_j e^{a^h_{ij}}}\ \text{(SA)}, \qquad
v^h_i = \sum_j e^{a^h_{ij}} V_h x_j\ \text{(USA)},
$$

and the heads are mixed, $v_i = \sum_h W_h v^h_i$ (default $W_h = I / \text{heads}$, so that
identical heads reproduce the single-head field). Q, K, V, W default to the identity (stored as
``None``, which also skips the projection). The field is the *unprojected* velocity; the
geometry (e.g. the sphere's tangent projection) is applied by the integrator.

A call builds one [`Problem`][meanfield.kernel.Problem] (the projected rows and keys, the
mask, the [`Normaliser`][meanfield.kernel.Normaliser], heads and precisions) and hands it
to the backend, a strategy module from [`meanfield.kernel.backends`][meanfield.kernel.backends]
(``Attention(backend=Dense())``, ``Chunked(...)``, ``Fused(...)``, ``Splash(...)``; default
[`Auto`][meanfield.kernel.backends.Auto]). This module names no backend.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp

from .._errors import check_param, param_fault, require
from .._types import Array, Float, TokensLike
from ..sharding import token_shards
from .backends import AbstractBackend, default_strategy
from .encodings import AbstractPE, RoPE
from .masks import AbstractMask, Full, Slots
from .problem import Normaliser, Own, Problem, proj_precision
from .sharded import sharded_field
from .tokens import ParallelPrompt, Prompt, TokenAux, split_prompt

PromptArg = Prompt | ParallelPrompt | tuple | None

PRECISIONS = ("highest", "tf32", "bf16")


def _as_heads(name: str, m, heads: int | None):
    """Validate a projection matrix: (d, d) or (heads, d, d), square."""
    if m is None:
        return None
    m = jnp.asarray(m)
    require(m.ndim in (2, 3), f"{name} must have shape (d, d) or (heads, d, d), got {m.shape}")
    require(
        m.shape[-1] == m.shape[-2], f"{name} must be square (d x d) per head, got shape {m.shape}"
    )
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
        mask: a position coupling from [`meanfield.kernel.masks`][meanfield.kernel.masks] (default [`Full`][meanfield.kernel.Full]);
            compose with ``&``, e.g. ``Causal() & ALiBi(0.5)``; ``ZBias(A)`` couples the
            auxiliary variables z (concatenated positional-encoding channel).
        pe: ``AdditivePE(scale, U)`` (y = x + scale U z) or ``RoPE(base, scale)``, or None.
        backend: a strategy module from [`meanfield.kernel.backends`][meanfield.kernel.backends]:
            [`Dense`][meanfield.kernel.backends.Dense] ``(row_block=None)``,
            [`Chunked`][meanfield.kernel.backends.Chunked] ``(block=512, query_batch=1)``,
            [`Fused`][meanfield.kernel.backends.Fused] ``(block_q=64, block_k=64)`` (a Pallas
            kernel) or [`Splash`][meanfield.kernel.backends.Splash]; ``None``:
            [`Auto`][meanfield.kernel.backends.Auto] (``Dense()`` except where a device run
            measured another backend faster).
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
        backend: AbstractBackend | str | None = None,  # a string (0.2) is refused with a message
        precision: str = "highest",
        shard_tokens: bool = True,
    ):
        mask = Full() if mask is None else mask
        Normaliser.of(form, mask)  # checks form
        require(
            precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {precision!r}"
        )
        backend = default_strategy() if backend is None else backend
        require(
            isinstance(backend, AbstractBackend),
            f"backend must be a backend module such as Dense(), Chunked(block=...), Fused() or Splash(), got {backend!r} "
            "(the 0.2 strings 'dense'/'chunked' were removed in 0.3)",
        )
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
        require(
            len(counts) <= 1,
            f"inconsistent number of heads across Q, K, V, W, beta, heads: {sorted(counts)}",
        )
        self.heads = counts.pop() if counts else 1
        require(self.heads >= 1, f"heads must be >= 1, got {self.heads}")
        dims = {n: m.shape[-1] for n, m in mats.items() if m is not None}
        require(
            len(set(dims.values())) <= 1, f"Q, K, V, W must share the token dimension d, got {dims}"
        )
        for n, m in mats.items():
            if m is not None:
                require(
                    m.shape[0] in (1, self.heads),
                    f"{n} has {m.shape[0]} heads, expected 1 or {self.heads}",
                )
        check_param("beta", beta)  # any sign: beta < 0 (repulsive scores) is a valid model
        for n, m in mats.items():
            check_param(n, m)
        self.beta = beta
        self.Q, self.K, self.V, self.W = mats["Q"], mats["K"], mats["V"], mats["W"]
        self.mask = mask
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

    def validate(
        self, x: TokensLike, aux: TokenAux | None = None, prompt: PromptArg = None, name: str = "x"
    ) -> None:
        """Trace-time shape checks for an input cloud ``x`` of shape (N, d)."""
        self._validate(x, aux, *split_prompt(prompt), name)

    def _validate(self, x, aux, prompt, parallel, name="x") -> None:
        require(
            jnp.ndim(x) == 2,
            f"{name} must have shape (N, d) (tokens x dimension), got {jnp.shape(x)}",
        )
        n, d = x.shape
        require(n >= 1, f"{name} must contain at least one token")
        for nm in ("Q", "K", "V", "W"):
            m = getattr(self, nm)
            if m is not None:
                require(
                    m.shape[-1] == d,
                    f"{nm} has shape {m.shape} but the tokens have dimension d = {d}",
                )
        require(
            self.beta.ndim == 0 or self.beta.shape[0] in (1, self.heads),
            f"beta has shape {self.beta.shape}, expected () or ({self.heads},)",
        )
        if aux is not None:
            aux.validate(n)
        n_keys = n
        if parallel is not None:
            require(
                parallel.p.shape == (n, d),
                f"prompt.p (parallel prompt) must have shape ({n}, {d}), one per token, got {parallel.p.shape}",
            )
        if prompt is not None:
            require(
                prompt.x.shape[1] == d,
                f"prompt.x has dimension {prompt.x.shape[1]} but the tokens have d = {d}",
            )
            n_keys += prompt.size
        self.mask.validate(n, n_keys, self.heads)
        if isinstance(self.pe, RoPE):
            require(
                d % 2 == 0,
                f"RoPE rotates pairs of coordinates: it needs an even token dimension d, got d = {d}",
            )

    def memory_bytes(self, n: int, n_keys: int, d: int, itemsize: int) -> int:
        """Peak bytes of one field evaluation for n query rows over n_keys keys (the backend's own
        estimate: the projected Q/K/V copies plus what it keeps alive)."""
        return int(self.backend.memory_bytes(n, n_keys, d, self.heads, itemsize))

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

    def data_fault(self, x: TokensLike, aux: TokenAux | None = None, prompt: PromptArg = None):
        """True (a scalar computed in the graph) when the tokens' data break a condition of the
        backend (Splash: distinct positions under a causal mask); concrete data raise
        ``ValueError`` naming it instead. No host callback: [`simulate`][meanfield.simulate] calls
        it before the solve and turns a traced fault into its result code. A bare field call
        checks concrete data the same way; under your own ``jax.jit`` call this first, eagerly."""
        return self.backend.data_fault(self.problem(x, aux, prompt))

    # ------------------------------------------------------------- evaluation
    def __call__(
        self, x: TokensLike, aux: TokenAux | None = None, prompt: PromptArg = None
    ) -> Float[Array, "n d"]:
        """The velocity field v(x), shape (N, d) (not yet projected on any tangent space)."""
        shared, parallel = split_prompt(prompt)
        self._validate(x, aux, shared, parallel)
        p = self._problem(x, aux, shared, parallel)
        self.backend.data_fault(p)  # concrete data the backend cannot serve: ValueError now
        if self.shard_tokens and token_shards() > 1:
            return self._mix(sharded_field(self.backend, p), p.q.dtype)
        return self._mix(self.backend.field(p), p.q.dtype)

    def rows(
        self, x: TokensLike, start, size: int, aux: TokenAux | None = None, prompt: PromptArg = None
    ) -> Float[Array, "size d"]:
        """The field of the query rows ``start .. start + size - 1`` only, shape (size, d): every
        token of ``x`` (and the prompt) is a key, only those rows are queries. ``start`` may be
        traced; ``size`` is static."""
        p = self._problem(x, aux, *split_prompt(prompt), (start, int(size)))
        return self._mix(self.backend.field(p), p.q.dtype)

    def weights(
        self, x: TokensLike, aux: TokenAux | None = None, prompt: PromptArg = None
    ) -> Float[Array, "h n nk"]:
        """Dense attention matrix, shape (h, N, N + P) with h = 1 or heads.

        SA: row-stochastic weights e^{a_ij} / sum_j e^{a_ij}; USA: e^{a_ij} (masses included).
        The field of head h is ``weights[h] @ (V_h keys)``. Key axis: the N tokens, then the P
        shared prompt tokens, then (with a [`ParallelPrompt`][meanfield.kernel.ParallelPrompt]) one column holding each row's
        weight on its own prompt p_i (shape (h, N, N + P + 1)).
        """
        shared, parallel = split_prompt(prompt)
        self._validate(x, aux, shared, parallel)
        return self._problem(x, aux, shared, parallel).weights()

    def problem(
        self, x: TokensLike, aux: TokenAux | None = None, prompt: PromptArg = None
    ) -> Problem:
        """The [`Problem`][meanfield.kernel.Problem] the backend evaluates for ``x`` (every
        token a query row), after the shape checks."""
        shared, parallel = split_prompt(prompt)
        self._validate(x, aux, shared, parallel)
        return self._problem(x, aux, shared, parallel)

    def _mix(self, out, dtype):
        if self.W is None:
            return jnp.mean(out, axis=0)
        out = jnp.broadcast_to(out, (self.heads,) + out.shape[1:])
        return jnp.einsum(
            "hed,hnd->ne", self.W.astype(dtype), out, precision=proj_precision(self.precision)
        )

    def _problem(self, x, aux, prompt, parallel, rows=None) -> Problem:
        x = jnp.asarray(x)
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
        prec = proj_precision(self.precision)

        def proj(m, y):
            return (
                y[None] if m is None else jnp.einsum("hed,nd->hne", m.astype(dt), y, precision=prec)
            )

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
            own = Own(k=ok, v=proj(self.V, ov_in), logm=jnp.log(own_w))
        return Problem(
            q=q,
            k=k,
            v=proj(self.V, xv),
            qs=qs,
            ks=ks,
            mass=kmass,
            free=free,
            beta=jnp.reshape(self.beta.astype(dt), (-1, 1, 1)),
            mask=self.mask,
            normaliser=Normaliser.of(self.form, self.mask),
            K=self.K,
            V=self.V,
            heads=self.heads,
            precision=self.precision,
            n_prompt=0 if prompt is None else int(prompt.size),
            own=own,
            raw=xv if self.pe is None else None,
        )


def precision_report(
    attn: Attention, x: TokensLike, aux: TokenAux | None = None, prompt: PromptArg = None
) -> dict:
    """Accuracy of the score-precision options on one cloud: for every option of
    ``Attention.precision`` the field in float32 against a float64 reference,
    {option: {"max_rel": max_i |v_i - v_i^64| / max_i |v_i^64|, "rms_rel": rms / rms}}.

    Needs float64 (``jax.config.update("jax_enable_x64", True)`` in the calling script; the
    library never sets it)."""
    require(
        jax.config.jax_enable_x64,
        "precision_report needs float64: call jax.config.update('jax_enable_x64', True) first",
    )
    cast = lambda tree, dt: jax.tree.map(  # noqa: E731
        lambda a: a.astype(dt) if eqx.is_array(a) and jnp.issubdtype(a.dtype, jnp.floating) else a,
        tree,
    )
    ref = cast(attn, jnp.float64)(
        jnp.asarray(x, jnp.float64), cast(aux, jnp.float64), cast(prompt, jnp.float64)
    )
    out = {}
    for option in PRECISIONS:
        a32 = cast(dataclasses.replace(attn, precision=option), jnp.float32)
        v = a32(
            jnp.asarray(x, jnp.float32), cast(aux, jnp.float32), cast(prompt, jnp.float32)
        ).astype(jnp.float64)
        err = jnp.linalg.norm(v - ref, axis=-1)
        norm = jnp.linalg.norm(ref, axis=-1)
        out[option] = {
            "max_rel": float(err.max() / norm.max()),
            "rms_rel": float(jnp.sqrt(jnp.mean(err**2) / jnp.mean(norm**2))),
        }
    return out
