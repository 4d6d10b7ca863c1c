r"""Influence profiles over input positions: Jacobian, attention rollout, shape observables.

A profile p_j (j = 0..n-1, positions in [0, 1] in order) says how much the output at one position
(typically the last) depends on the input at position j, as a mass per position (so profiles of
different resolutions are compared after [`bin_profile`][meanfield.influence.bin_profile]). Lost-in-the-middle profiles are
U-shaped: large at the start (primacy), large at the end (recency), smaller in between.

Why bin: in the continuum limit of causal attention the influence of the first positions has an
integrable (logarithmic) singularity at s = 0 (the Cesàro primacy tail), so point values near
s = 0 depend on the grid while the mass of a bin of fixed width converges.

Three ways to get a profile (all for the output token ``target``, default the last):

* [`jacobian_profile`][meanfield.influence.jacobian_profile] / [`layers_influence`][meanfield.influence.layers_influence] / [`flow_influence`][meanfield.influence.flow_influence]:
  p_j = ||d x_target(T) / d x_j(0)||_F through any map, H discrete layers or the continuous
  dynamics, by reverse-mode autodiff: one VJP per output component (d of them, vmapped), so the
  (N d) x (N d) Jacobian is never formed;
* [`rollout`][meanfield.influence.rollout]: the last row of prod_l ((1 - alpha) I + alpha A_l) with A_l the engine's own
  attention matrices along a layer trajectory (heads averaged);
* theory: ``meanfield.theory.cesaro_rollout`` (discrete, n tokens) and ``cesaro_density`` (the
  continuum closed form).

[`profile_stats`][meanfield.influence.profile_stats] turns any of them into comparable numbers (primacy and recency mass,
dead-zone depth and location) after normalising to unit mass on positions s_j = (j + 1)/n.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ._types import Array, ArrayLike, Bool, Float, PRNGKeyArray, Real, TokensLike
from ._errors import require
from .geometry import PostLN
from .particles import layers, simulate
from .theory import kinetic_weights


def bin_profile(
    profile: Real[ArrayLike, "*batch n"], n_bins: int
) -> Real[np.ndarray, "*batch bins"]:
    """Sum the masses of a (..., n) profile over ``n_bins`` equal contiguous bins (n must be a
    multiple of n_bins)."""
    p = np.asarray(profile)
    n = p.shape[-1]
    if n_bins < 1 or n % n_bins:
        raise ValueError(f"n_bins must divide the profile length {n}, got {n_bins}")
    return p.reshape(p.shape[:-1] + (n_bins, n // n_bins)).sum(-1)


def u_shape_gap(profile: Real[ArrayLike, "*batch n"]) -> Real[np.ndarray | np.generic, "*batch"]:
    """p_0 - min_{0 < j < n-1} p_j: > 0 iff the profile first decreases from its start."""
    p = np.asarray(profile)
    return p[..., 0] - p[..., 1:-1].min(axis=-1)


def is_u_shaped(profile: Real[ArrayLike, "*batch n"]) -> Bool[np.ndarray | np.generic, "*batch"]:
    """True where the (..., n) profile decreases then increases: its minimum is strictly inside
    and strictly below both ends."""
    p = np.asarray(profile)
    k = np.argmin(p, axis=-1)
    pmin = p.min(axis=-1)
    return (k > 0) & (k < p.shape[-1] - 1) & (p[..., 0] > pmin) & (p[..., -1] > pmin)


def u_shape_onset(ts: Real[ArrayLike, " time"], profiles: Real[ArrayLike, "time n"]) -> float:
    """First time the profiles (T, n) are U-shaped (the START of the U), linearly interpolated on
    ``u_shape_gap`` between the saved time before and the first U-shaped one; ``nan`` if never.
    See [`u_shape_end`][meanfield.influence.u_shape_end] for the other event and how both scale."""
    ts = np.asarray(ts)
    u = is_u_shaped(profiles)
    if not u.any():
        return float("nan")
    i = int(np.argmax(u))
    if i == 0:
        return float(ts[0])
    gap = u_shape_gap(profiles)
    g0, g1 = gap[i - 1], gap[i]
    if g0 > 0 or g1 <= g0:
        return float(ts[i])
    return float(ts[i - 1] + (ts[i] - ts[i - 1]) * (-g0) / (g1 - g0))


def right_end_slope(
    profile: Real[ArrayLike, "*batch n"], k: int = 1
) -> Real[np.ndarray | np.generic, "*batch"]:
    """p_{n-1} - p_{n-1-k}: the slope sign at the right end of a profile (pass the off-diagonal
    profile, i.e. without the target's own entry, when the target is the last position)."""
    p = np.asarray(profile)
    require(1 <= k < p.shape[-1], f"k must be in [1, {p.shape[-1] - 1}], got {k}")
    return p[..., -1] - p[..., -1 - k]


def u_shape_end(
    ts: Real[ArrayLike, " time"], profiles: Real[ArrayLike, "time n"], k: int = 1
) -> float:
    r"""First time the right-end slope of the profiles (T, n) ([`right_end_slope`][meanfield.influence.right_end_slope]) turns from
    positive to non-positive, linearly interpolated between the two saved times; ``nan`` if it
    never does. This is the END of the U-shaped regime: the kinetic paper's t_crit
    ([`meanfield.theory.kinetic_tcrit`][meanfield.theory.kinetic_tcrit]).

    Two events, two scalings. The START of the U ([`u_shape_onset`][meanfield.influence.u_shape_onset]) is when the interior
    first dips below both ends; the END is when the recency rise at the right end flattens
    (primacy, the left end, persists for every t > 0). About the uniform state the profile is
    sum_n omega_n [exp(t lambda_n C~) - I], so with one dominant mode both events sit at fixed
    values of lambda t: each time scales as 1 / lambda_n. In this project's SA convention
    (V = I) lambda_n = n^2 I_n(beta) / (beta I_0(beta)), which falls like n^2 / beta at large beta,
    so both times rise with beta; in the paper's convention (USA content, V = beta I, normalised
    positions) lambda_n = a_n = n^2 I_n(beta), which grows like e^beta, so t_crit falls with beta
    (about 200x from beta = 0.25 to 4 at lam = 1, M = 8)."""
    ts = np.asarray(ts, dtype=float)
    slope = right_end_slope(profiles, k)
    for i in range(len(ts) - 1):
        if slope[i] > 0 and slope[i + 1] <= 0:
            return float(ts[i] + (ts[i + 1] - ts[i]) * slope[i] / (slope[i] - slope[i + 1]))
    return float("nan")


def circle_retrieval_profile(
    attn,
    key: PRNGKeyArray,
    ts: Real[ArrayLike, " time"],
    n_tokens: int,
    *,
    n_runs: int = 256,
    M: float = 8.0,
    n_max: int = 20,
    target: int = -1,
    aux=None,
    batch: int = 64,
    diagonal: bool = False,
    **simulate_kwargs,
) -> Float[Array, "time n"]:
    r"""Retrieval profile of the token ``target`` on the circle S^1 (d = 2) from particle runs with
    i.i.d. uniform initial angles, as a density over source positions (comparable to
    [`meanfield.theory.kinetic_profile`][meanfield.theory.kinetic_profile] with s_k = (k + 1/2)/N):

        S^N_t(s_k) = N sum_{n=1}^{n_max} omega_{n,M} Re E[e^{i n theta_T(t)} e^{-i n theta_k(0)}],

    the omega-weighted mode correlations of the target's state at time t with token k's initial
    angle (O(1/N) each; about the uniform state they are the entries of exp(t lambda_n C~)).
    Estimated without the ~10^5 runs a direct average needs: integrating by parts over the uniform
    theta_k(0), E[F e^{-i n theta_k(0)}] = E[dF/dtheta_k(0) e^{-i n theta_k(0)}] / (i n) with
    F = e^{i n theta_T(t)}, so

        E[e^{i n theta_T(t)} e^{-i n theta_k(0)}] = E[e^{i n (theta_T(t) - theta_k(0))} d theta_T(t) / d theta_k(0)],

    and d theta_T(t) / d theta_k(0) for every k is one reverse-mode pass per run and save time.
    ``diagonal=False`` removes the identity term of the target itself (N sum_n omega_n), as the
    paper's S_t does. Returns (T, N), the mean over ``n_runs`` runs (``batch`` at a time);
    ``simulate_kwargs`` go to [`meanfield.simulate`][meanfield.simulate] (``rtol``, ``atol``, ``solver``...)."""
    require(int(n_tokens) >= 2, f"n_tokens must be >= 2, got {n_tokens}")
    require(int(n_runs) >= 1, f"n_runs must be >= 1, got {n_runs}")
    require(
        attn.dim in (None, 2),
        f"the circle retrieval profile needs d = 2 tokens, the attention has d = {attn.dim}",
    )
    weights = kinetic_weights(M, n_max)  # checks M > 0 and n_max >= 1
    n = int(n_tokens)
    ts = jnp.asarray(ts, dtype=float)
    require(
        ts.ndim == 1 and ts.shape[0] >= 1,
        f"ts must be a 1-D array of save times, got shape {ts.shape}",
    )
    save = jnp.concatenate([jnp.zeros((1,), ts.dtype), ts])
    modes = jnp.arange(1, int(n_max) + 1, dtype=ts.dtype)

    def target_angles(theta0):
        x0 = jnp.stack([jnp.cos(theta0), jnp.sin(theta0)], -1)
        xs = simulate(attn, x0, save, aux=aux, **simulate_kwargs).xs[1:]
        return jnp.arctan2(xs[:, target, 1], xs[:, target, 0])  # (T,)

    def one_run(k):
        theta0 = jax.random.uniform(k, (n,), ts.dtype, 0.0, 2 * np.pi)
        out, jac = target_angles(theta0), jax.jacrev(target_angles)(theta0)  # (T,), (T, N)
        phase = out[:, None, None] - theta0[None, None, :]  # (T, 1, N)
        corr = (
            jnp.cos(modes[None, :, None] * phase) * jac[:, None, :]
        )  # Re e^{i n (.)} d theta_T/d theta_k
        return jnp.einsum("m,tmk->tk", jnp.asarray(weights, ts.dtype), corr)

    keys = jax.random.split(key, int(n_runs))
    prof = jax.lax.map(jax.jit(one_run), keys, batch_size=min(int(batch), int(n_runs)))
    prof = n * jnp.mean(prof, axis=0)
    if not diagonal:
        prof = prof.at[:, target].add(-n * float(np.sum(weights)))
    return prof


# ----------------------------------------------------------------------------- profiles
def jacobian_profile(fn, x0: TokensLike, target: int = -1) -> Float[Array, "*lead n"]:
    """p_j = ||d fn(x0)[..., target, :] / d x0[j]||_F for a map fn: (N, d) -> (..., N, d'),
    shape (..., N): one profile per leading index of the output (e.g. one per saved depth).

    One VJP per output component of the target token and leading index (vmapped), so the
    (N d) x (N d) Jacobian is never formed."""
    x0 = jnp.asarray(x0)
    out, vjp = jax.vjp(fn, x0)
    lead, dout = out.shape[:-2], out.shape[-1]
    n_cot = int(np.prod(lead, dtype=int)) * dout
    flat = jnp.zeros((n_cot,) + (int(np.prod(lead, dtype=int)),) + out.shape[-2:], out.dtype)
    rows_i = jnp.arange(n_cot)
    flat = flat.at[rows_i, rows_i // dout, target, rows_i % dout].set(1.0)
    (rows,) = jax.vmap(vjp)(flat.reshape((n_cot,) + out.shape))  # rows[c, j] = d out_c / d x0[j]
    sq = jnp.sum(rows.reshape((-1, dout) + x0.shape) ** 2, axis=(1, 3))  # (prod(lead), N)
    return jnp.sqrt(sq).reshape(lead + x0.shape[:1])


def layers_influence(
    attn,
    x0: TokensLike,
    n_layers: int | None = None,
    *,
    h=1.0,
    norm=None,
    aux=None,
    prompt=None,
    target: int = -1,
    depths=None,
) -> Float[Array, "*depth n"]:
    """Jacobian profile of the output of ``meanfield.layers`` (H = ``n_layers`` discrete layers),
    shape (N,); with ``depths`` = (H_1, H_2, ...) instead, the profiles after each of those depths
    from one forward pass and one batch of VJPs, shape (len(depths), N)."""
    norm = PostLN() if norm is None else norm
    if depths is None:
        return jacobian_profile(
            lambda x: layers(attn, x, n_layers, h=h, norm=norm, aux=aux, prompt=prompt).xs[-1],
            x0,
            target,
        )
    idx = np.asarray(depths, dtype=int)
    if idx.ndim != 1 or idx.size == 0 or idx.min() < 1:
        raise ValueError(f"depths must be a non-empty list of depths >= 1, got {depths}")
    return jacobian_profile(
        lambda x: layers(attn, x, int(idx.max()), h=h, norm=norm, aux=aux, prompt=prompt).xs[idx],
        x0,
        target,
    )


def flow_influence(
    attn, x0: TokensLike, t1, *, target: int = -1, **simulate_kwargs
) -> Float[Array, " n"]:
    """Jacobian profile of the continuous dynamics x(t1) (``meanfield.simulate``, its keyword
    arguments passed through: geometry, aux, prompt, solver, dt, rtol, atol)."""
    ts = jnp.asarray([0.0, t1], dtype=jnp.asarray(x0).dtype)
    return jacobian_profile(lambda x: simulate(attn, x, ts, **simulate_kwargs).xs[-1], x0, target)


def rollout(
    attn, xs: Float[ArrayLike, "depth n d"], alpha, *, aux=None, target: int = -1, depths=None
) -> Float[Array, "*k n"]:
    """Attention rollout: row ``target`` of prod_l ((1 - alpha) I + alpha A_l), A_l = the
    engine's attention matrix at layer input xs[l] (l = 0..H-1, heads averaged), applied from
    the last layer down: r <- (1 - alpha) r + alpha r A_l. ``xs``: (H, N, d) layer inputs, e.g.
    ``layers(...).xs[:-1]``. Returns (N,); with ``depths`` = (H_1, ...), the rollouts of the
    first H_k layers for every k in one sweep, shape (len(depths), N)."""
    xs = jnp.asarray(xs)
    n_layers, n = xs.shape[0], xs.shape[1]
    hs = np.asarray([n_layers] if depths is None else depths, dtype=int)
    if hs.ndim != 1 or hs.size == 0 or hs.min() < 1 or hs.max() > n_layers:
        raise ValueError(f"depths must lie in [1, {n_layers}] (the layers in xs), got {depths}")
    r0 = jnp.zeros((hs.shape[0], n), xs.dtype).at[:, target].set(1.0)

    def body(r, lx):
        layer, x = lx
        a = jnp.mean(attn.weights(x, aux), axis=0)[:, :n]
        new = (1 - alpha) * r + alpha * r @ a
        return jnp.where((layer < hs)[:, None], new, r), None

    r, _ = jax.lax.scan(body, r0, (jnp.arange(n_layers)[::-1], xs[::-1]))
    return r[0] if depths is None else r


def profile_stats(profile: Real[ArrayLike, " n"], *, edge: float = 0.1) -> dict:
    """Shape numbers of a (n,) influence profile on the last token, normalised to unit mass on
    positions s_j = (j + 1)/n (density n q_j comparable to the continuum rho(s)):

    primacy_mass: mass on s <= edge; recency_mass: mass of the last token itself;
    dead_zone_depth: min of the density over the interior (positions 2..n-1, i.e. excluding the
    first and the last token), dead_zone_location: its s; u_ratio: dead-zone depth / density at
    the first token (small = deep U)."""
    p = np.asarray(profile, dtype=float)
    n = p.shape[-1]
    q = p / p.sum()
    s = np.arange(1, n + 1) / n
    dens = n * q
    k = 1 + int(np.argmin(dens[1:-1]))
    return {
        "primacy_mass": float(q[s <= edge].sum()),
        "recency_mass": float(q[-1]),
        "dead_zone_depth": float(dens[k]),
        "dead_zone_location": float(s[k]),
        "u_ratio": float(dens[k] / dens[0]),
    }
