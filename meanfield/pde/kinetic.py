r"""Kinetic mean-field dynamics over (auxiliary variable, state): f(t, z, theta) on Z x S^1.

Every token carries a fixed auxiliary variable z (its sequence position s in [0, 1], an encoding)
with marginal weights w(z), and a state theta on the circle. ``f(t, z_k, .)`` is the conditional
density of the state of the tokens with auxiliary value z_k (each row integrates to 1; the token
measure is sum_k w_k f(z_k, theta) dtheta). With score a = beta cos(theta - theta') + b(z, z')
(Q = K = I, V = a I + b J as in [`meanfield.pde.circle`][meanfield.pde.circle]) the token at (z, theta) moves with

    u(z, theta) = N / D (SA)   or   N (USA),
    N(z, .) = sum_{z'} c(z, z') (g * f(z', .)) + sum_p pi_p(z) g(. - theta_p),
    D(z, .) = sum_{z'} c(z, z') (K * f(z', .)) + sum_p pi_p(z) K(. - theta_p),
    c(z, z') = w(z') e^{b(z, z')},   pi_p(z) = m_p e^{b(z, z_p)}   (fixed prompt tokens),

with $K(p) = e^{\beta\cos p}$, $g(p) = K(p)(-a\sin p + b\cos p)$ as on the circle, and each row obeys
the continuity equation $\partial_t f + \partial_\theta(f u) = 0$ ($z$ never moves, so every row keeps its mass).

The z-coupling and the theta-convolutions act on different axes and commute: F = C f (S x M) is
formed first, then one FFT convolution per row, O(S M log M) per evaluation plus the cost of C f.

Couplings
---------
* ``causal`` (z = s, cell centres s_k = (k + 1/2)/S, token density uniform in s): keys only from
  s' <= s with ALiBi decay of slope lam (b = -lam (s - s')):

  $F(s) = \int_0^s e^{-\lambda (s - s')} f(s')\, ds'$, discretised as $F_k = A_k + \sigma w_k f_k$ with
  $A_k = e^{-\lambda (s_k - s_{k-1})} (A_{k-1} + w_{k-1} f_{k-1})$, $A_0 = 0$:

  a linear recurrence evaluated by ``jax.lax.associative_scan`` (O(S M) work, O(log S) depth; no
  S x S matrix). ``sigma`` = 1/2 by default: half of a token's own cell lies before it, which
  makes the quadrature second order in s; sigma = 1 is the convention of N discrete tokens with
  one token per cell (token i sees itself with full weight).
* ``matrix``: an explicit S x S coupling c (any b(z, z'): concatenated encodings ⟨A z, z'⟩,
  windows, custom masks), O(S^2 M).

[`engine_face_velocity`][meanfield.pde.engine_face_velocity] computes the same u through the particle engine's own
[`meanfield.Attention`][meanfield.kernel.Attention] (grid cells become weighted key tokens, faces become massless
query tokens): O((S M)^2) but valid for any Q, K, V, heads, masks and encodings on S^1. It is the
direct-quadrature path for general attention and the independent check of the fast path.

Linear theory and the influence of positions ([`meanfield.theory.causal_mode_propagator`][meanfield.theory.causal_mode_propagator]): around
the uniform state f = 1/2pi, the Fourier mode n of a perturbation evolves by
d_t f_n(s) = lambda_n (C~ f_n)(s) with lambda_n the circle rate and C~ the row-normalised
coupling (SA; USA uses C unnormalised), so f_n(t) = exp(t lambda_n C~) f_n(0).
[`KineticMeanField.influence`][meanfield.pde.kinetic.KineticMeanField.influence] differentiates the nonlinear solver instead: the response of
the mean angle of the last position to rotating the initial state at position s.
"""

from __future__ import annotations


import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._errors import check_form, check_param, is_concrete, param_fault, require
from .._types import Array, ArrayLike, Float, KineticDensity, Real, Times
from ..kernel.tokens import Prompt, TokenAux
from ..theory import kinetic_weights
from ._fv import AbstractFiniteVolume, fourier_heat, periodic_conv, sa_finish
from .couplings import AbstractCoupling, CausalCoupling, _coupling
from .couplings import FullCoupling as FullCoupling
from .couplings import MatrixCoupling as MatrixCoupling
from ._integrate import ACCURACY, CFL, DensitySolution, cell_count


class KineticMeanField(AbstractFiniteVolume):
    r"""Mean-field SA/USA dynamics of f(t, z, theta) (see module docstring).

    Row $k$ (auxiliary value $z_k$, weight $w_k$) sees the coupled density $F_k = \sum_j c_{kj} f_j$ with
    $c_{kj} = w_j e^{b(z_k, z_j)}$, and moves by the circle solver's field computed from $F_k$:

    $$
    \partial_t f_k + \partial_\theta\big(f_k\, u[F_k]\big) = 0, \qquad
    u[F] = \frac{g * F}{k * F} \ \text{(SA)}, \quad u[F] = g * F \ \text{(USA)} .
    $$

    Args:
        s: auxiliary values (positions) of the S rows, shape (S,); for a causal coupling
            increasing in [0, 1]. Default: the S = ``n_s`` cell centres (k + 1/2)/S.
        m: cells in theta.
        beta: inverse temperature, as in [`meanfield.pde.CircleMeanField`][meanfield.pde.CircleMeanField].
        a: value scale (V = a I + b J), as there.
        b: value rotation, as there.
        form: "SA" or "USA", as there.
        coupling: a strategy module: [`CausalCoupling`][meanfield.pde.CausalCoupling] ``(lam, self_weight=0.5)``
            (default, lam = 0: Volterra in s with ALiBi slope lam in units of s),
            [`FullCoupling`][meanfield.pde.FullCoupling] ``(lam)`` (every row sees every row, b = -lam |s - s'|),
            [`MatrixCoupling`][meanfield.pde.MatrixCoupling] ``(c)`` or an explicit (S, S) array of weights c(z_k, z_j)
            (the z-marginal weights already included).
        w: z-marginal weights (S,), default 1/S each; normalised to sum 1.
        prompt_theta: fixed prompt tokens at angles, shape (P,).
        prompt_weight: their weights pi_p(z_k), shape (S, P) or (P,) (the same for every row).

    Example:
        ```python
        pde = KineticMeanField(n_s=64, m=128, beta=2.0, coupling=CausalCoupling(lam=1.0))
        sol = pde.solve(pde.von_mises(kappa=1.0), jnp.linspace(0, 5, 11))
        ```
    """

    s: Array
    w: Array
    m: int = eqx.field(static=True)
    beta: Array
    a: Array
    b: Array
    form: str = eqx.field(static=True)
    coupling: AbstractCoupling
    prompt_theta: Array | None
    prompt_weight: Array | None
    sigma: Array

    def __init__(
        self,
        n_s: int | None = None,
        m: int = 128,
        beta=1.0,
        a=1.0,
        b=0.0,
        form: str = "SA",
        *,
        s=None,
        coupling=None,
        w=None,
        prompt_theta=None,
        prompt_weight=None,
        sigma=0.0,
    ):
        m = cell_count("m", m)
        check_param("sigma", sigma, lo=0)
        self.sigma = jnp.asarray(sigma, dtype=float)
        check_form(form)
        for name, value in (
            ("beta", beta),
            ("a", a),
            ("b", b),
            ("s", s),
            ("w", w),
            ("prompt_theta", prompt_theta),
        ):
            check_param(name, value)
        check_param("prompt_weight", prompt_weight, lo=0)
        if s is None:
            require(
                n_s is not None and int(n_s) >= 1,
                f"n_s must be a positive number of rows, got {n_s}",
            )
            s = (np.arange(int(n_s)) + 0.5) / int(n_s)
        s = np.asarray(s, dtype=float) if is_concrete(s) else s
        require(
            s.ndim == 1 and s.shape[0] >= 1,
            f"s must be a 1-D array of auxiliary values, got shape {s.shape}",
        )
        n_rows = s.shape[0]
        self.coupling = CausalCoupling() if coupling is None else _coupling(coupling)
        self.coupling.check(s)
        w = np.full((n_rows,), 1.0 / n_rows) if w is None else w
        require(jnp.shape(w) == (n_rows,), f"w must have shape ({n_rows},), got {jnp.shape(w)}")
        if is_concrete(w):
            require(bool(np.all(np.asarray(w) > 0)), "w (z-marginal weights) must be positive")
        self.s, self.w = (
            jnp.asarray(s, dtype=float),
            jnp.asarray(w, dtype=float) / jnp.sum(jnp.asarray(w, dtype=float)),
        )
        self.m = int(m)
        self.beta, self.a, self.b = (jnp.asarray(v, dtype=float) for v in (beta, a, b))
        self.form = form
        if prompt_theta is None:
            require(prompt_weight is None, "prompt_weight given without prompt_theta")
            self.prompt_theta = self.prompt_weight = None
        else:
            pt = jnp.atleast_1d(jnp.asarray(prompt_theta, dtype=float))
            pw = (
                jnp.ones(pt.shape) / n_rows
                if prompt_weight is None
                else jnp.asarray(prompt_weight, dtype=float)
            )
            pw = jnp.broadcast_to(pw, (n_rows, pt.shape[0])) if pw.ndim == 1 else pw
            require(
                pw.shape == (n_rows, pt.shape[0]),
                f"prompt_weight must have shape ({pt.shape[0]},) or ({n_rows}, {pt.shape[0]}), got {pw.shape}",
            )
            self.prompt_theta, self.prompt_weight = pt, pw

    @classmethod
    def paper_model(
        cls, n_s: int, m: int = 128, beta=1.0, lam=1.0, *, strict: bool = True
    ) -> KineticMeanField:
        r"""The kinetic lost-in-the-middle model as Duerinckx, Geshkovski & Rossi (2026) state it:

            d_t f + d_theta(f u) = 0,   u(s, theta) = int pi(s, s') (g * f(s', .))(theta) ds',
            g(p) = -beta sin(p) e^{beta cos p},   pi(s, s') = e^{-lam (s - s')} / int_0^s e^{-lam (s - s'')} ds''

        (s' < s: strictly causal ALiBi, positional weights normalised per row, content factor
        not normalised = USA with V = beta I). Its N-token version is

        $$
        \frac{d\theta_j}{dt} = \sum_{k<j} w_{jk} \big(-\beta \sin(\theta_j - \theta_k)\, e^{\beta\cos(\theta_j - \theta_k)}\big),
        \qquad w_{jk} \propto e^{-(\lambda/N)(j - k)} :
        $$

        the particle engine's
        ``Attention(beta, V=beta I, form="USA", mask=PositionNormalized(Causal(strict=True) & ALiBi(lam / N)))``
        with positions 0..N-1. Rows sit at the cell centres s_k = (k + 1/2)/S (token j <-> s = (j + 1/2)/N).
        Linear rates about the uniform state: a_n = n^2 I_n(beta). ``strict=False`` uses the
        self weight 1/2 instead (O(1/S) different, first row not frozen)."""
        coupling = (
            CausalCoupling(lam, strict=True, normalized=True)
            if strict
            else CausalCoupling(lam, normalized=True)
        )
        return cls(n_s, m, beta=beta, a=beta, form="USA", coupling=coupling)

    # ----------------------------------------------------------------------------------------
    @property
    def n_s(self) -> int:
        return self.s.shape[0]

    def uniform(self) -> Array:
        return jnp.full((self.n_s, self.m), 1.0 / (2 * np.pi))

    def von_mises(self, kappa=1.0, mean=0.0) -> Array:
        """Rows exp(kappa cos(theta - mean_k)) / (2 pi I_0(kappa)) at the cell centres, each
        renormalised to unit mass on the grid; ``mean`` scalar or (S,)."""
        mean = jnp.broadcast_to(jnp.asarray(mean, dtype=float), (self.n_s,))
        logf = kappa * (jnp.cos(self.theta[None, :] - mean[:, None]) - 1.0)
        f = jnp.exp(logf)
        return f / (self.h * jnp.sum(f, axis=1, keepdims=True))

    def coupling_matrix(self) -> Array:
        """The (S, S) weights c_kj (dense; the causal solver itself never forms it)."""
        return self.coupling.matrix(self.s, self.w)

    def mix(self, f: Array) -> Array:
        """F = C f over the rows (the z-coupling), shape (S, M)."""
        return self.coupling.mix(self.s, self.w, f)

    def face_velocity(self, f: Array) -> Array:
        """u at the theta faces (i + 1) h of every row, shape (S, M)."""
        dt = f.dtype
        k_hat, g_hat = self.kernel_hats(dt)
        F = self.mix(f)
        num = periodic_conv(g_hat, F, self.h, self.m)
        den = periodic_conv(k_hat, F, self.h, self.m)
        if self.prompt_theta is not None:
            faces = (jnp.arange(self.m, dtype=dt) + 1.0) * self.h
            kp, gp = self.kernels(faces[:, None] - self.prompt_theta.astype(dt)[None, :])  # (M, P)
            pw = self.prompt_weight.astype(dt)
            num = num + pw @ gp.T
            den = den + pw @ kp.T
        return num if self.form == "USA" else sa_finish(num, den)

    def heat(self, y, h) -> Array:
        """Diffusion in theta only (each row s its own heat flow)."""
        return fourier_heat(y, h, self.sigma, self.m)

    def parameter_fault(self) -> Array:
        fault = (
            param_fault(self.sigma, lo=0)
            | param_fault(self.beta)
            | param_fault(self.a)
            | param_fault(self.b)
            | param_fault(self.w, lo=0)
        )
        fault = fault | param_fault(self.prompt_theta) | param_fault(self.prompt_weight, lo=0)
        return fault | self.coupling.parameter_fault()

    def usa_gain(self) -> Array:
        """Largest row sum of the coupling (prompt weights included): the USA rate multiplier."""
        rows = self.mix(jnp.ones((self.n_s, 1)))[:, 0]
        if self.prompt_weight is not None:
            rows = rows + jnp.sum(self.prompt_weight, axis=1)
        return jnp.max(rows)

    def solve(
        self,
        f0: Real[ArrayLike, "s m"],
        ts: Times,
        *,
        dt=None,
        cfl: float = CFL,
        accuracy: float = ACCURACY,
        solver=None,
        max_steps: int = 1_000_000,
        adjoint=None,
        throw: bool = True,
    ) -> DensitySolution:
        """Integrate from ts[0] to ts[-1], saving at ``ts`` (as [`CircleMeanField.solve`][meanfield.pde.circle.CircleMeanField.solve]:
        ``dt=None`` re-picks dt = min(cfl h / max|u|, accuracy / r) before every step from the
        current state, SSP Heun; a fixed ``dt`` makes the solve smooth in its inputs, which
        [`influence`][meanfield.influence] needs; ``adjoint`` as in diffrax, ``diffrax.ForwardMode()`` for
        jvp/jacfwd; ``throw`` as there: a failed solve raises [`meanfield.SolverError`][meanfield.SolverError], or
        with ``throw=False`` returns its ``result`` code)."""
        ts, f, result, stats = self._integrate(
            f0,
            ts,
            (self.n_s, self.m),
            "f0",
            dt=dt,
            cfl=cfl,
            accuracy=accuracy,
            solver=solver,
            max_steps=max_steps,
            adjoint=adjoint,
            throw=throw,
        )
        return DensitySolution(
            ts=ts,
            rho=f,
            grid={"s": self.s, "w": self.w, "theta": self.theta},
            result=result,
            stats=stats,
        )

    def mode_response(
        self, ts: Times, n: int, *, target: int = -1, dt=None
    ) -> Float[Array, "time s"]:
        r"""Linear response of Fourier mode ``n`` about the uniform state, as a density over s:

            R_n(t, s_k) = (1 / w_k) d c_n(t, target) / d c_n(0, k),   c_n(t, k) = int f(t, s_k, theta) cos(n theta) dtheta,

        the row ``target`` of the solver's own linearised propagator (for the continuum model,
        exp(t a_n C~)); ``ts`` are times after the perturbation, set at t = 0 (ts >= 0, non-decreasing). The initial state is f = 1/2pi + c_k cos(n theta) / pi; one reverse-mode
        VJP per save time through the finite-volume solver at c = 0 (about the uniform state the
        velocity vanishes, so the limiter and the upwind switch are inactive at first order).
        ``dt``: fixed step, default accuracy 0.05 / the fastest linear rate (as the default step)."""
        require(
            int(n) >= 1 and 2 * int(n) < self.m, f"n must be in [1, M/2), got {n} (M = {self.m})"
        )
        ts = jnp.asarray(ts, dtype=float)
        require(
            ts.ndim == 1 and ts.shape[0] >= 1,
            f"ts must be a 1-D array of times, got shape {ts.shape}",
        )
        if dt is None:
            dt = ACCURACY / self.linear_rate_bound()
        cos = jnp.cos(int(n) * self.theta)
        save = jnp.concatenate([jnp.zeros((1,), ts.dtype), ts])  # the perturbation is set at t = 0

        def coefficient(c):
            f0 = 1.0 / (2 * np.pi) + c[:, None] * cos[None, :] / np.pi
            sol = self.solve(f0, save, dt=dt)
            return self.h * sol.f[1:, target, :] @ cos

        jac = jax.jacrev(coefficient)(jnp.zeros((self.n_s,)))  # (T, S)
        return jac / self.w[None, :]

    def retrieval_profile(
        self,
        ts: Times,
        M: float = 8.0,
        n_max: int = 20,
        *,
        target: int = -1,
        diagonal: bool = False,
        dt=None,
    ) -> Float[Array, "time s"]:
        r"""The multi-mode retrieval profile of row ``target`` about the uniform state,
        $\sum_{n=1}^{n_{\max}} \omega_{n,M} R_n(t, s)$ ([`mode_response`][meanfield.pde.kinetic.KineticMeanField.mode_response],
        $\omega_{n,M} = e^{-\pi^2 n^2 / (2 M^2)}$, $M$ the bandwidth): the solver's counterpart of
        [`meanfield.theory.kinetic_profile`][meanfield.theory.kinetic_profile]. ``diagonal=False`` removes the identity term
        (the recency delta at the target itself, omega_n / w_target per mode), as the paper's
        S_t does."""
        w = kinetic_weights(M, n_max)
        prof = sum(
            float(w[i]) * self.mode_response(ts, i + 1, target=target, dt=dt)
            for i in range(int(n_max))
        )
        if not diagonal:
            prof = prof.at[:, target].add(-float(np.sum(w)) / self.w[target])
        return prof

    def influence(
        self, ts: Times, *, kappa=1.0, target: int = -1, dt=None
    ) -> Float[Array, "time s"]:
        r"""Linearised correlation profile c(t, s) of the row ``target`` (default: the last
        position) with every initial position, shape (T, S):

            c(t, s_k) = (1 / w_k) d phi_target(t) / d delta_k,

        $\phi = \arg \int e^{i\theta} f\, d\theta$, the mean angle of the target row, $\delta_k$ a rotation of
        the initial row k, around the base state f_0 = von Mises(kappa) in every row. Forward-mode
        derivatives through the solver (fixed step ``dt``, default 0.4 h / max speed bound).
        Rotating every row rotates every output, so sum_k w_k c(t, s_k) = 1 exactly.
        """
        ts = jnp.asarray(ts, dtype=float)
        if dt is None:
            bound = jnp.abs(self.a) + jnp.abs(self.b)
            if self.form == "USA":
                bound = (
                    bound
                    * jnp.exp(self.beta)
                    * (
                        1.0 + jnp.sum(jnp.abs(self.prompt_weight))
                        if self.prompt_weight is not None
                        else 1.0
                    )
                )
            dt = 0.4 * self.h / bound

        def phi(delta):
            sol = self.solve(self.von_mises(kappa, delta), ts, dt=dt, adjoint=diffrax.ForwardMode())
            mom = sol.moment(1)[:, target]
            return jnp.angle(mom)

        jac = jax.jacfwd(phi)(jnp.zeros((self.n_s,)))  # (T, S)
        return jac / self.w[None, :]


def engine_face_velocity(
    attn, f: KineticDensity, s: Float[Array, " s"], w: Float[Array, " s"], *, z=None
) -> KineticDensity:
    r"""u(z_k, face_i) of the kinetic field computed by the particle engine's kernel.

    The M S grid cells become key tokens x = (cos theta_j, sin theta_j) with masses
    w_k f_kj h and positions s_k (features z_k); the faces become query tokens of mass 0 with the
    same positions and features; u = ⟨e_face, v⟩ with e = (-sin, cos), the tangential component of
    ``attn``'s velocity. Any d = 2 attention (Q, K, V, heads, masks on ``pos = s``, encodings)
    works; cost O((S M)^2).
    """
    n_s, m = f.shape
    h = 2 * np.pi / m
    dt = f.dtype
    centres = (jnp.arange(m, dtype=dt) + 0.5) * h
    faces = centres + 0.5 * h
    circ = lambda t: jnp.stack([jnp.cos(t), jnp.sin(t)], -1)

    pos = jnp.repeat(jnp.asarray(s, dt), m)
    zz = None if z is None else jnp.repeat(jnp.asarray(z, dt), m, axis=0)
    keys = Prompt(
        x=jnp.tile(circ(centres), (n_s, 1)),
        mass=(jnp.asarray(w, dt)[:, None] * f * h).reshape(-1),
        pos=pos,
        z=zz,
    )
    xq = jnp.tile(circ(faces), (n_s, 1))
    aux = TokenAux(pos=pos, mass=jnp.zeros((n_s * m,), dt), z=zz)
    v = attn(xq, aux=aux, prompt=keys)
    e = jnp.stack([-jnp.sin(faces), jnp.cos(faces)], -1)
    return jnp.einsum("kmd,md->km", v.reshape(n_s, m, 2), e)
