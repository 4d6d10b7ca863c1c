r"""Random-initialisation decoder-only transformers (no weight downloads), for position bias at
step 0 (Chowdhury 2026).

Two block styles, standard init scales (weights N(0, 0.02^2), biases 0, GPT-2's residual output
projections scaled by 1/sqrt(2 depth)):

* ``"gpt2"``: learned absolute position embeddings (N(0, 0.01^2)), pre-LayerNorm, multi-head
  causal attention, GELU MLP (4x), final LayerNorm;
* ``"qwen2"``: RMSNorm, rotary embeddings on q and k (base 10^6, or off with ``rope=False``),
  grouped-query attention (``kv_heads`` key/value heads shared by ``heads // kv_heads`` query
  heads, q/k/v biases as in Qwen2), SwiGLU MLP, final RMSNorm.

``Decoder(key, cfg)(emb)`` maps input embeddings (n, width) to final hidden states (n, width).
The influence of input position j on the last position is ||d h_last / d emb_j||_F
(``meanfield.influence.jacobian_profile``); [`step0_influence`][meanfield.studies.step0_influence] averages it over random
inits and inputs with ``jax.vmap``.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp

from .._errors import require
from ..influence import jacobian_profile
from ..kernel.encodings import rope_rotate


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    style: str = "gpt2"
    depth: int = 4
    width: int = 64
    heads: int = 4
    kv_heads: int | None = None
    """Qwen2 grouped-query attention: key/value heads (default heads // 2, at least 1)"""
    rope: bool | None = None
    """rotary embeddings (default: on for qwen2, off for gpt2)"""
    rope_base: float = 1e6
    max_len: int = 1024
    init_std: float = 0.02

    def validate(self):
        require(
            self.style in ("gpt2", "qwen2"), f"style must be 'gpt2' or 'qwen2', got {self.style!r}"
        )
        require(
            self.depth >= 1 and self.width >= 2 and self.heads >= 1,
            "depth, width, heads must be positive",
        )
        require(
            self.width % self.heads == 0,
            f"width {self.width} must be divisible by heads {self.heads}",
        )
        require(
            (self.width // self.heads) % 2 == 0 or not self.use_rope,
            "the head dimension must be even for RoPE",
        )
        require(
            self.heads % self.n_kv == 0,
            f"heads {self.heads} must be a multiple of kv_heads {self.n_kv}",
        )

    @property
    def use_rope(self) -> bool:
        return (self.style == "qwen2") if self.rope is None else bool(self.rope)

    @property
    def n_kv(self) -> int:
        if self.style == "gpt2":
            return self.heads
        return max(1, self.heads // 2) if self.kv_heads is None else self.kv_heads


def _normal(key, shape, std):
    return std * jax.random.normal(key, shape)


class _Attention(eqx.Module):
    wq: jax.Array
    wk: jax.Array
    wv: jax.Array
    wo: jax.Array
    bq: jax.Array
    bk: jax.Array
    bv: jax.Array
    heads: int = eqx.field(static=True)
    kv_heads: int = eqx.field(static=True)
    rope: bool = eqx.field(static=True)
    rope_base: float = eqx.field(static=True)

    def __init__(self, key, cfg: DecoderConfig, out_std):
        d, hd = cfg.width, cfg.width // cfg.heads
        k = jax.random.split(key, 4)
        self.wq = _normal(k[0], (d, cfg.heads * hd), cfg.init_std)
        self.wk = _normal(k[1], (d, cfg.n_kv * hd), cfg.init_std)
        self.wv = _normal(k[2], (d, cfg.n_kv * hd), cfg.init_std)
        self.wo = _normal(k[3], (cfg.heads * hd, d), out_std)
        self.bq, self.bk, self.bv = (
            jnp.zeros(cfg.heads * hd),
            jnp.zeros(cfg.n_kv * hd),
            jnp.zeros(cfg.n_kv * hd),
        )
        self.heads, self.kv_heads, self.rope, self.rope_base = (
            cfg.heads,
            cfg.n_kv,
            cfg.use_rope,
            cfg.rope_base,
        )

    def __call__(self, x):
        n, d = x.shape
        hd = d // self.heads
        q = (x @ self.wq + self.bq).reshape(n, self.heads, hd)
        k = (x @ self.wk + self.bk).reshape(n, self.kv_heads, hd)
        v = (x @ self.wv + self.bv).reshape(n, self.kv_heads, hd)
        if self.rope:
            pos = jnp.arange(n, dtype=x.dtype)
            q = jax.vmap(lambda a: rope_rotate(a, pos, self.rope_base), in_axes=1, out_axes=1)(q)
            k = jax.vmap(lambda a: rope_rotate(a, pos, self.rope_base), in_axes=1, out_axes=1)(k)
        rep = self.heads // self.kv_heads
        k, v = jnp.repeat(k, rep, axis=1), jnp.repeat(v, rep, axis=1)
        s = jnp.einsum("qhe,khe->hqk", q, k) / jnp.sqrt(hd)
        s = jnp.where(jnp.tril(jnp.ones((n, n), bool))[None], s, -jnp.inf)
        a = jax.nn.softmax(s, axis=-1)
        return jnp.einsum("hqk,khe->qhe", a, v).reshape(n, self.heads * hd) @ self.wo


class _Block(eqx.Module):
    norm1: eqx.Module
    norm2: eqx.Module
    attn: _Attention
    w_in: jax.Array
    w_gate: jax.Array | None
    w_out: jax.Array
    style: str = eqx.field(static=True)

    def __init__(self, key, cfg: DecoderConfig):
        k = jax.random.split(key, 4)
        d = cfg.width
        gpt2 = cfg.style == "gpt2"
        out_std = cfg.init_std / (2 * cfg.depth) ** 0.5 if gpt2 else cfg.init_std
        norm = (lambda: eqx.nn.LayerNorm(d)) if gpt2 else (lambda: eqx.nn.RMSNorm(d, eps=1e-6))
        self.norm1, self.norm2 = norm(), norm()
        self.attn = _Attention(k[0], cfg, out_std)
        hidden = 4 * d if gpt2 else (8 * d) // 3
        self.w_in = _normal(k[1], (d, hidden), cfg.init_std)
        self.w_gate = None if gpt2 else _normal(k[2], (d, hidden), cfg.init_std)
        self.w_out = _normal(k[3], (hidden, d), out_std)
        self.style = cfg.style

    def __call__(self, x):
        x = x + self.attn(jax.vmap(self.norm1)(x))
        y = jax.vmap(self.norm2)(x)
        if self.style == "gpt2":
            hdn = jax.nn.gelu(y @ self.w_in, approximate=True)
        else:
            hdn = jax.nn.silu(y @ self.w_gate) * (y @ self.w_in)
        return x + hdn @ self.w_out


class Decoder(eqx.Module):
    """A randomly initialised GPT-2- or Qwen2-style decoder (see module docstring)."""

    pos_emb: jax.Array | None
    blocks: tuple
    final_norm: eqx.Module

    def __init__(self, key, cfg: DecoderConfig):
        cfg.validate()
        k = jax.random.split(key, cfg.depth + 1)
        self.pos_emb = (
            _normal(k[0], (cfg.max_len, cfg.width), 0.01) if cfg.style == "gpt2" else None
        )
        self.blocks = tuple(_Block(k[i + 1], cfg) for i in range(cfg.depth))
        self.final_norm = (
            eqx.nn.LayerNorm(cfg.width)
            if cfg.style == "gpt2"
            else eqx.nn.RMSNorm(cfg.width, eps=1e-6)
        )

    def __call__(self, emb):
        n = emb.shape[0]
        x = emb if self.pos_emb is None else emb + self.pos_emb[:n]
        for blk in self.blocks:
            x = blk(x)
        return jax.vmap(self.final_norm)(x)


def step0_influence(cfg: DecoderConfig, n: int, key, n_inits: int = 8, emb_std: float = 0.02):
    """Influence of every input position on the last position's output, ||d h_n / d emb_j||_F,
    for ``n_inits`` random (model, input embedding) pairs (vmapped), shape (n_inits, n), each row
    normalised to unit sum."""
    require(1 <= n <= cfg.max_len, f"n must be in [1, max_len = {cfg.max_len}], got {n}")

    def one(k):
        km, ke = jax.random.split(k)
        model = Decoder(km, cfg)
        emb = emb_std * jax.random.normal(ke, (n, cfg.width))
        p = jacobian_profile(model, emb)
        return p / jnp.sum(p)

    return jax.vmap(one)(jax.random.split(key, n_inits))
