r"""A learned positional encoding whose limit is a chosen distribution (universality, Imaizumi,
Koyama, Isobe & Hayashi 2026).

Model. N tokens x_i on S^{d-1} carry an auxiliary variable s_i in [0, 1)^k (k = 1: the
normalised positions s_i = (i + 1/2) / N; k = 2: a grid of s). The positional encoding is a
*fixed-size* map of s, K Fourier frequencies with learned coefficients,

    u(s) = U phi(s),   phi(s) = (1, cos 2 pi ⟨f, s⟩, sin 2 pi ⟨f, s⟩)_{f in F_K},

F_K the integer frequencies with 0 < |f|_inf <= K up to sign (K of them for k = 1, (2K+1)^2/2
for k = 2), U of shape (d, 1 + 2 |F_K|): the number of parameters does not depend on N (a
per-token table would be inverse design again, [`meanfield.theory.inverse_prompt`][meanfield.theory.inverse_prompt]). The
dynamics are the engine's SA with Q = K = V = I and [`meanfield.AdditivePE`][meanfield.kernel.AdditivePE] (y = x + u,
values included):

    dx_i/dt = P_{x_i} sum_j m_j e^{beta ⟨y_i, y_j⟩} y_j / sum_j m_j e^{beta ⟨y_i, y_j⟩},  y = x + u(s).

Their limit is a map s -> x*(s) (the pushforward of the auxiliary distribution,
[`meanfield.theory.additive_pe_pushforward`][meanfield.theory.additive_pe_pushforward]); the fit chooses U so that this pushforward is
the target.

Losses ([`fit_additive_pe`][meanfield.studies.learned_pe.fit_additive_pe], optax Adam, the iterate of lowest loss kept):

* ``"simulate"``: the mean over ``n_starts`` random starts x0 of MMD_sigma(x(t1; U, x0), target)
  ([`meanfield.observables.mmd`][meanfield.observables.mmd]; on S^1 optionally the exact circle W1), differentiated through [`meanfield.simulate`][meanfield.simulate]
  (diffrax's checkpointed adjoint). It asks for the *attractor* the dynamics reach, for any target
  cloud (the target need not have N points).
* ``"residual"``: sum_i m_i |P_{x*_i} v_i(x*)|^2 at the target configuration x*_i paired with
  s_i (N points): it only asks x* to be *stationary*. It is cheap (no solve), but a stationary
  target may repel: [`meanfield.linear_stability`][meanfield.linear_stability] at x* tells (``FitResult.stability``).
  Minimised from a random U it can end at a stationary but unstable target (seen at N = 16, K = 4,
  the von Mises-mixture target of the universality preset, beta = 1: largest eigenvalue +0.76,
  while the paired start gives -0.78), which
  is why the preset fits with ``"simulate"``.

The start of the fit matters: ``init="paired"`` is the least-squares Fourier fit of
``init_scale`` x the paired target (a large offset u_i ~ c x*_i pins each token near its own
target point, since the weights e^{beta ⟨u_i, u_j⟩} then concentrate on nearby s), ``"random"`` a
Gaussian U; the ``universality`` preset reports both.
"""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import observables as obs
from .._errors import require
from ..kernel import AdditivePE, Attention, TokenAux
from ..particles import simulate, sphere_uniform, velocity
from ..stability import linear_stability


def frequencies(n_freq: int, k: int = 1) -> np.ndarray:
    """The integer frequencies F_K: 0 < |f|_inf <= K, one of each pair +-f, shape (|F_K|, k)."""
    require(int(n_freq) == n_freq and n_freq >= 1, f"n_freq must be an integer >= 1, got {n_freq}")
    require(k in (1, 2, 3), f"the auxiliary variable s must have 1 to 3 components, got {k}")
    out = [f for f in itertools.product(range(-n_freq, n_freq + 1), repeat=k) if f > (0,) * k]
    return np.asarray(out, dtype=float)


def fourier_features(s, n_freq: int) -> np.ndarray:
    """phi(s) = (1, cos 2 pi ⟨f, s⟩, sin 2 pi ⟨f, s⟩) for f in F_K: shape (N, 1 + 2 |F_K|).

    ``s``: shape (N,) or (N, k), values in [0, 1) (periodic)."""
    s = np.asarray(s, dtype=float)
    s2 = s[:, None] if s.ndim == 1 else s
    require(
        s2.ndim == 2 and s2.shape[0] >= 1 and np.all(np.isfinite(s2)),
        f"s must have shape (N,) or (N, k), finite, got {s.shape}",
    )
    phase = 2 * np.pi * s2 @ frequencies(n_freq, s2.shape[1]).T
    return np.concatenate([np.ones((s2.shape[0], 1)), np.cos(phase), np.sin(phase)], axis=1)


@dataclasses.dataclass(frozen=True)
class LearnedPE:
    """u(s) = U phi(s) with K = ``n_freq`` Fourier frequencies (see module docstring).

    Attributes:
        U: coefficients, shape (d, 1 + 2 |F_K|).
        n_freq: K.
        beta: the inverse temperature it was fitted at.
    """

    U: np.ndarray
    n_freq: int
    beta: float

    def attention(self, dtype=jnp.float64) -> Attention:
        """SA, Q = K = V = I, with ``AdditivePE(1, U)`` (the features are the tokens' z)."""
        return _attention(self.beta, jnp.asarray(self.U, dtype))

    def aux(self, s, dtype=jnp.float64) -> TokenAux:
        """Tokens' auxiliary variables at s: z = phi(s), masses 1/N."""
        z = jnp.asarray(fourier_features(s, self.n_freq), dtype)
        return TokenAux.default(z.shape[0], dtype, z=z)

    def offsets(self, s) -> np.ndarray:
        """u(s) = U phi(s), shape (N, d)."""
        return fourier_features(s, self.n_freq) @ np.asarray(self.U).T

    def limit(self, s, x0, t1: float = 30.0, *, rtol: float = 1e-7, atol: float = 1e-9):
        """End state x(t1) of the dynamics from x0 (N, d) or a stack (B, N, d)."""
        x0 = jnp.asarray(x0)
        require(
            x0.shape[-1] == np.shape(self.U)[0],
            f"x0 must have dimension d = {np.shape(self.U)[0]}, got {x0.shape}",
        )
        attn, aux = self.attention(x0.dtype), self.aux(s, x0.dtype)
        run = lambda x: (
            simulate(attn, x, jnp.array([0.0, t1], x0.dtype), aux=aux, rtol=rtol, atol=atol).final
        )  # noqa: E731
        return run(x0) if x0.ndim == 2 else jax.vmap(run)(x0)


@dataclasses.dataclass(frozen=True)
class FitResult:
    """Result of [`fit_additive_pe`][meanfield.studies.learned_pe.fit_additive_pe].

    Attributes:
        pe: the fitted [`LearnedPE`][meanfield.studies.learned_pe.LearnedPE].
        losses: the loss at the parameters before each optimiser step; ``pe`` holds the
            parameters of the lowest one.
        init: the initial U.
        stability: for ``"residual"`` (or a paired target), [`meanfield.linear_stability`][meanfield.linear_stability] at the
            paired target under the fitted PE (< 0: the target attracts); NaN otherwise.
    """

    pe: LearnedPE
    losses: np.ndarray
    init: np.ndarray
    stability: float


def _attention(beta, U) -> Attention:
    """The model's attention: SA, Q = K = V = I, additive PE u = U z."""
    return Attention(beta, pe=AdditivePE(1.0, U))


def _stationarity(U, x, aux, beta):
    v = velocity(_attention(beta, U), x, aux=aux)
    return jnp.sum(aux.mass * jnp.sum(v * v, axis=-1))


def fit_additive_pe(
    target,
    s,
    beta: float,
    *,
    n_freq: int = 6,
    loss: str = "simulate",
    n_starts: int = 4,
    t1: float = 30.0,
    steps: int = 200,
    learning_rate: float = 0.05,
    init="paired",
    init_scale: float = 2.0,
    sigma: float = 0.3,
    distance: str = "mmd",
    seed: int = 0,
    rtol: float = 1e-6,
    atol: float = 1e-8,
) -> FitResult:
    r"""Fit u(s) = U phi(s) so that the limit of the additive-PE dynamics is ``target``.

    Args:
        target: points on the unit sphere, shape (M, d). ``"residual"`` and ``init="paired"``
            need M = N, target[i] paired with s[i].
        s: the tokens' auxiliary variables, shape (N,) or (N, k) in [0, 1).
        beta: inverse temperature.
        n_freq: K, the number of Fourier frequencies per axis (fixed, independent of N).
        loss: ``"simulate"`` (MMD of the end states from ``n_starts`` random starts, gradient
            through [`meanfield.simulate`][meanfield.simulate] over [0, ``t1``]) or ``"residual"`` (stationarity
            of the paired target).
        steps: optax Adam steps; the result is the iterate of lowest loss (the loss of a fit
            through simulate is not smooth: an end state can jump to another basin).
        learning_rate: Adam's learning rate.
        init: ``"paired"``, ``"random"`` (see module docstring) or an array U0 (d, 1 + 2 |F_K|).
        sigma: MMD kernel width.
        distance: the ``"simulate"`` loss's distance of an end state to the target: ``"mmd"``
            (any d) or ``"circle_w1"`` (d = 2: the exact circle W1,
            [`meanfield.observables.circle_w1`][meanfield.observables.circle_w1], sharper than the MMD at scales below sigma).
        seed: random starts and random init.

    Returns:
        [`FitResult`][meanfield.studies.learned_pe.FitResult]. Runs in float64 if x64 is enabled, else float32.

    Example:
        ```python
        s = (np.arange(12) + 0.5) / 12
        th = 2 * np.pi * s + 0.6 * np.sin(4 * np.pi * s)           # a two-bump target on S^1
        fit = fit_additive_pe(np.stack([np.cos(th), np.sin(th)], -1), s, 1.0, n_freq=3, steps=40)
        fit.losses[0], fit.losses.min()                              # the MMD falls
        fit.pe.limit(s, mf.sphere_uniform(jax.random.key(0), 12, 2))  # the limit from a new start
        ```
    """
    target = np.asarray(target, dtype=float)
    require(
        target.ndim == 2 and target.shape[1] >= 2,
        f"target must have shape (M, d), d >= 2, got {target.shape}",
    )
    require(
        np.all(np.isfinite(target)) and np.allclose(np.linalg.norm(target, axis=1), 1.0, atol=1e-6),
        "target must lie on the unit sphere (finite, |x| = 1)",
    )
    phi = fourier_features(s, n_freq)
    n, d = phi.shape[0], target.shape[1]
    require(np.isfinite(beta) and beta > 0, f"beta must be finite and > 0, got {beta}")
    require(
        loss in ("simulate", "residual"), f"loss must be 'simulate' or 'residual', got {loss!r}"
    )
    paired = target.shape[0] == n
    require(
        loss != "residual" or paired,
        f"loss='residual' needs one target point per token: target has {target.shape[0]}, s has {n}",
    )
    require(
        int(steps) == steps and steps >= 1 and learning_rate > 0,
        "need steps >= 1 and learning_rate > 0",
    )
    require(int(n_starts) == n_starts and n_starts >= 1 and t1 > 0, "need n_starts >= 1 and t1 > 0")
    require(sigma > 0, f"sigma must be > 0, got {sigma}")
    require(
        distance in ("mmd", "circle_w1"), f"distance must be 'mmd' or 'circle_w1', got {distance!r}"
    )
    require(
        distance != "circle_w1" or d == 2,
        f"distance='circle_w1' needs tokens on S^1 (d = 2), got d = {d}",
    )
    key = jax.random.key(seed)
    if isinstance(init, str):
        require(
            init in ("paired", "random"),
            f"init must be 'paired', 'random' or an array, got {init!r}",
        )
        if init == "paired":
            require(
                paired,
                f"init='paired' needs one target point per token: target has {target.shape[0]}, s has {n}",
            )
            u0 = np.linalg.lstsq(phi, init_scale * target, rcond=None)[0].T
        else:
            u0 = (
                init_scale
                / np.sqrt(phi.shape[1])
                * np.asarray(jax.random.normal(jax.random.fold_in(key, 1), (d, phi.shape[1])))
            )
    else:
        u0 = np.asarray(init, dtype=float)
        require(
            u0.shape == (d, phi.shape[1]),
            f"init must have shape {(d, phi.shape[1])}, got {u0.shape}",
        )
    dtype = jnp.result_type(float)
    aux = TokenAux.default(n, dtype, z=jnp.asarray(phi, dtype))
    tgt = jnp.asarray(target, dtype)
    if loss == "simulate":
        x0s = jnp.stack(
            [
                sphere_uniform(jax.random.fold_in(key, 100 + i), n, d).astype(dtype)
                for i in range(n_starts)
            ]
        )
        ts = jnp.array([0.0, t1], dtype)

        def objective(U):
            attn = _attention(beta, U)
            ends = jax.vmap(lambda x0: simulate(attn, x0, ts, aux=aux, rtol=rtol, atol=atol).final)(
                x0s
            )
            if distance == "circle_w1":
                ang = jnp.arctan2(tgt[:, 1], tgt[:, 0])
                dist = lambda x: obs.circle_w1(jnp.arctan2(x[:, 1], x[:, 0]), ang)  # noqa: E731
            else:
                dist = lambda x: obs.mmd(x, tgt, sigma=sigma)  # noqa: E731
            return jnp.mean(jax.vmap(dist)(ends))
    else:

        def objective(U):
            return _stationarity(U, tgt, aux, beta)

    opt = optax.adam(learning_rate)
    step_fn = jax.jit(lambda U, st: _adam_step(objective, opt, U, st))
    U = jnp.asarray(u0, dtype)
    state = opt.init(U)
    losses, best = [], (np.inf, U)
    for _ in range(int(steps)):
        value, U_next, state = step_fn(U, state)  # value: the loss at U, before the step
        losses.append(float(value))
        if losses[-1] < best[0]:
            best = (losses[-1], U)
        U = U_next
    U = np.asarray(best[1], dtype=float)
    pe = LearnedPE(U=U, n_freq=int(n_freq), beta=float(beta))
    stab = linear_stability(pe.attention(dtype), tgt, aux=aux) if paired else float("nan")
    return FitResult(pe=pe, losses=np.asarray(losses), init=u0, stability=stab)


def _adam_step(objective, opt, U, state):
    value, grad = jax.value_and_grad(objective)(U)
    updates, state = opt.update(grad, state)
    return value, optax.apply_updates(U, updates), state
