r"""Noisy attention dynamics on the sphere $S^{d-1}$: the critical noise of the uniform state, the
tricritical $\beta_*^{(d)}$ of Mun & Rosenzweig (arXiv 2606.05140; the circle: 2604.16288) and the
zonal stationary states of the McKean--Vlasov equation.

The model (ours, with $Q = K = I$, $V = a I$, masses $1/N$): each token follows
$dx_i = P_{x_i} v_i\, dt + \sigma P_{x_i} \circ dW_i$, so the density solves

$$
\partial_t \rho + \operatorname{div}(\rho\, P_x \nabla \Phi[\rho]) = \frac{\sigma^2}{2} \Delta \rho,
\qquad \Phi[\rho](x) = \frac{a}{\beta} \int e^{\beta \langle x, y\rangle}\, d\rho(y) \ \text{(USA)},
$$

the Wasserstein gradient flow of $F[\rho] = \frac{\sigma^2}{2} \int \rho \log \rho - \frac{a}{2\beta}
\iint e^{\beta\langle x, y\rangle}\, d\rho\, d\rho$ (densities against the uniform probability
measure). Funk--Hecke on $S^{d-1}$ gives the eigenvalues of $e^{\beta \langle x, y\rangle}$ on the
degree-$\ell$ harmonics, $\lambda_\ell(\beta) = \Gamma(d/2) (2/\beta)^{d/2 - 1} I_{\ell + d/2 - 1}(\beta)$,
and a degree-$\ell$ perturbation of the uniform state grows at

$$
r_\ell(\beta) - \frac{\sigma^2}{2} \ell(\ell + d - 2), \qquad
r_\ell = \frac{a\, \ell(\ell + d - 2)\, \lambda_\ell(\beta)}{\beta} \ \text{(USA)}, \quad
r_\ell = \frac{a\, \ell(\ell + d - 2)\, \lambda_\ell(\beta)}{\beta\, \lambda_0(\beta)} \ \text{(SA)},
$$

(for $d = 2$, 3 these are `circle_growth_rate` and `sphere_growth_rate`). The paper's coupling is
$K = a / \sigma^2$: its linear threshold $K_{\sharp}^{(d)}(\beta) = \beta^{d/2} / (2^{d/2}\Gamma(d/2)
I_{d/2}(\beta))$ is $a / \sigma_c^2$ with our $\sigma_c$ at $a = 1$.
"""

from __future__ import annotations

import numpy as np

from .._errors import check_form, check_param, require


def funk_hecke(ell: int, beta: float, d: int) -> float:
    r"""$\lambda_\ell(\beta) = \Gamma(d/2) (2/\beta)^{d/2-1} I_{\ell + d/2 - 1}(\beta)$: the eigenvalue of the
    kernel $e^{\beta \langle x, y\rangle}$ on the degree-$\ell$ harmonics of $S^{d-1}$ (uniform
    probability measure); $\lambda_0 = \int e^{\beta \langle x, y\rangle} dy$."""
    from scipy.special import gammaln, ive

    nu = ell + d / 2 - 1
    return float(np.exp(gammaln(d / 2) + (d / 2 - 1) * np.log(2 / beta) + beta) * ive(nu, beta))


def noisy_growth_rate(
    ell: int, beta: float, sigma: float, d: int = 3, a: float = 1.0, form: str = "USA"
) -> float:
    r"""Growth rate of a degree-``ell`` perturbation of the uniform state with noise:
    $r_\ell(\beta) - (\sigma^2/2)\, \ell(\ell + d - 2)$ (module docstring)."""
    check_form(form)
    lam = funk_hecke(ell, beta, d)
    rate = a * ell * (ell + d - 2) * lam / beta
    if form == "SA":
        rate = rate / funk_hecke(0, beta, d)
    return float(rate - 0.5 * sigma**2 * ell * (ell + d - 2))


def critical_noise(beta: float, d: int = 3, a: float = 1.0, form: str = "USA") -> float:
    r"""The noise $\sigma_c$ at which the uniform state loses stability (its degree-1 mode first):
    $\sigma_c^2 = 2 r_1(\beta) / (d - 1)$, i.e.

    $$
    \sigma_c^2 = \frac{2 a\, \lambda_1(\beta)}{\beta} = \frac{a\, 2^{d/2}\, \Gamma(d/2)\, I_{d/2}(\beta)}{\beta^{d/2}}
    \ \text{(USA)}, \qquad \sigma_c^2 = \frac{2 a\, I_{d/2}(\beta)}{\beta\, I_{d/2-1}(\beta)} \ \text{(SA)},
    $$

    so the paper's linear threshold is $K_{\sharp} = a / \sigma_c^2$. Every degree $\ell \ge 2$ is more
    stable ($r_\ell / (\ell(\ell + d - 2))$ falls with $\ell$)."""
    check_form(form)
    check_param("beta", beta, lo=0, lo_open=True)
    require(int(d) >= 2, f"d must be >= 2, got {d}")
    return float(np.sqrt(2 * noisy_growth_rate(1, beta, 0.0, d, a, form) / (d - 1)))


def tricritical_beta(d: int) -> float:
    r"""$\beta_*^{(d)}$, the unique root of $I_{d/2+1}(\beta) / I_{d/2}(\beta) = 1/d$ (Mun & Rosenzweig
    2026): USA's transition at $\sigma_c$ is continuous for $\beta \le \beta_*$ and discontinuous,
    with hysteresis, above. The ratio rises from 0 to 1 monotonically, so the root is bracketed in
    $(0, \infty)$ and found by Brent's method to round-off."""
    from scipy.optimize import brentq
    from scipy.special import ive

    require(int(d) >= 2, f"d must be >= 2, got {d}")
    d = int(d)
    return float(
        brentq(
            lambda b: ive(d / 2 + 1, b) / ive(d / 2, b) - 1 / d, 1e-6, 50.0, xtol=1e-14, rtol=1e-15
        )
    )


def _zonal_setup(beta, d, a, n):
    r"""Gauss--Jacobi nodes $t_i$ (weights $w_i$ summing to 1: the law of $\langle x, e\rangle$ under
    the uniform measure, density $\propto (1 - t^2)^{(d-3)/2}$) and the zonal kernel
    $\bar W_{ij} = (a/\beta) e^{\beta t_i t_j} J(\beta s_i s_j)$, $s = \sqrt{1 - t^2}$, $J(z)$ the mean of
    $e^{z\cos\phi}$ over $S^{d-2}$: $\Gamma((d-1)/2) (2/z)^{(d-3)/2} I_{(d-3)/2}(z)$."""
    from scipy.special import gammaln, ive, roots_jacobi

    alpha = (d - 3) / 2
    t, w = roots_jacobi(n, alpha, alpha)
    w = w / w.sum()
    s = np.sqrt(1 - t**2)
    z = beta * np.outer(s, s)
    nu = (d - 3) / 2
    zs = np.maximum(z, 1e-300)
    log_j = gammaln((d - 1) / 2) + nu * np.log(2 / zs) + zs + np.log(ive(nu, zs))
    log_j = np.where(z > 1e-12, log_j, 0.0)  # J(0) = 1
    wbar = (a / beta) * np.exp(beta * np.outer(t, t) + log_j)
    return t, w, wbar


def _potential(u, w, wbar, form, beta, a):
    r"""$\Phi_i$ at the zonal density $f = e^u$: $(a/\beta) G$ (USA) or $(a/\beta)\log G$ (SA), with
    $G_i = \sum_j w_j e^{\beta\langle x_i, y_j\rangle} f_j$, and $d\Phi/du$."""
    f = np.exp(u)
    g = wbar @ (w * f)  # (a / beta) G
    dg = wbar * (w * f)[None, :]
    if form == "USA":
        return g, dg
    return (a / beta) * np.log(g * beta / a), (a / beta) * dg / g[:, None]


def _zonal_solver(beta, d, a, form, nodes):
    """The discretised self-consistency equation of `stationary_states` (nodes, weights, Newton's
    method at fixed or arclength-constrained p = 2/sigma^2, the order parameter)."""
    t, w, wbar = _zonal_setup(beta, d, a, int(nodes))
    n = t.shape[0]

    def residual(u, p):
        phi, dphi = _potential(u, w, wbar, form, beta, a)
        e = p * phi
        q = w * np.exp(e - e.max())
        q = q / q.sum()
        logz = e.max() + np.log(np.sum(w * np.exp(e - e.max())))
        g = u - e + logz
        ju = np.eye(n) - p * (dphi - q[None, :] @ dphi)
        jp = -phi + q @ phi
        return g, ju, jp

    def newton(u, p, fix_p=True, tangent=None, anchor=None, ds=0.0):
        for _ in range(50):
            g, ju, jp = residual(u, p)
            if fix_p:
                step = np.linalg.solve(ju, -g)
                u = u + step
                dp = 0.0
            else:  # pseudo-arclength: (u, p) - anchor along the tangent equals ds
                ext = np.block([[ju, jp[:, None]], [tangent[None, :n], tangent[None, n:]]])
                arc = tangent @ (np.concatenate([u, [p]]) - anchor) - ds
                sol = np.linalg.solve(ext, -np.concatenate([g, [arc]]))
                u, dp = u + sol[:n], sol[n]
                p = p + dp
                step = sol[:n]
            if np.max(np.abs(step)) < 1e-12 and abs(dp) < 1e-12:
                return u, p, True
        return u, p, False

    def order(u):
        f = np.exp(u)
        f = f / np.sum(w * f)
        return float(abs(np.sum(w * f * t))), f

    def stable(f, sigma):
        if form != "USA":
            return None
        h = 0.5 * sigma**2 * np.diag(w / f) - np.outer(w, w) * wbar
        basis = np.linalg.svd(w[None, :])[2][1:]  # mass-preserving perturbations
        return bool(np.linalg.eigvalsh(basis @ h @ basis.T).min() > 0)

    return t, newton, order, stable


def _branch(t, p0, newton, order, max_order):
    """Pseudo-arclength continuation of the non-uniform branch from the bifurcation at
    p0 = 2 / sigma_c^2 along the degree-1 mode (``t``, the nodes), through folds, until R reaches
    max_order: rows (u, p)."""
    n = t.shape[0]
    tangent = np.concatenate([t / np.linalg.norm(t), [0.0]])
    point = np.concatenate([np.zeros(n), [p0]])
    ds = 0.02
    branch = [point.copy()]
    for _ in range(4000):
        guess = point + ds * tangent
        u, p, ok = newton(guess[:n], guess[n], fix_p=False, tangent=tangent, anchor=point, ds=ds)
        if not ok or not np.all(np.isfinite(u)):
            ds /= 2
            if ds < 1e-6:
                break
            continue
        new = np.concatenate([u, [p]])
        tangent, point = (new - point) / np.linalg.norm(new - point), new
        branch.append(point.copy())
        if order(u)[0] > max_order or p <= 0:
            break
        ds = min(ds * 1.3, 0.5)
    return np.array(branch)


def _check_state_args(beta, d, form):
    check_form(form)
    check_param("beta", beta, lo=0, lo_open=True)
    require(int(d) >= 2, f"d must be >= 2, got {d}")


def stationary_states(
    beta: float,
    sigma: float,
    d: int = 3,
    form: str = "USA",
    *,
    a: float = 1.0,
    nodes: int = 96,
    max_order: float = 0.97,
) -> list[dict]:
    r"""The zonal stationary states of the noisy mean-field dynamics (module docstring) at noise
    ``sigma``: the densities $\rho = e^{2\Phi[\rho]/\sigma^2} / Z$ with $\rho$ a function of
    $t = \langle x, e\rangle$, each with its order parameter $R = \lVert \int x\, d\rho \rVert$ and
    whether it is stable.

    Zero flux, $\rho \nabla\Phi - (\sigma^2/2)\nabla\rho = 0$, makes every such $\rho$ stationary, in
    both forms (SA: $\Phi = (a/\beta)\log G$, USA: $\Phi = (a/\beta) G$, $G = \int e^{\beta\langle x,
    y\rangle} d\rho(y)$). Method: $u = \log\rho$ on ``nodes`` Gauss--Jacobi nodes in $t$ (the law of
    $t$ is $\propto (1 - t^2)^{(d-3)/2}$; the other coordinates enter through the mean $J$ of
    $e^{z\cos\phi}$ over $S^{d-2}$), the equation $u - p\Phi[e^u] + \log \int e^{p\Phi} = 0$ in
    $p = 2/\sigma^2$, followed by pseudo-arclength continuation from the bifurcation at
    $\sigma_c$ (`critical_noise`) along the degree-1 mode, through folds, until $R$ reaches
    ``max_order``; the states at ``sigma`` are the branch's crossings of $p = 2/\sigma^2$,
    refined by Newton's method, plus the uniform state ($R = 0$).

    Stability (USA, the Wasserstein gradient flow of $F$): the Hessian of the discretised $F$ on
    zonal, mass-preserving perturbations, $(\sigma^2/2)\,\mathrm{diag}(w/f) - (w w^\top)\circ
    \bar W$, is positive definite (rotations, the neutral non-zonal modes, are not tested). For SA
    there is no free energy; ``stable`` is then None.

    Returns:
        a list of {"order": R, "stable": bool | None, "t": nodes, "density": rho(t)} sorted by R.
    """
    _check_state_args(beta, d, form)
    check_param("sigma", sigma, lo=0, lo_open=True)
    d = int(d)
    t, newton, order, stable = _zonal_solver(beta, d, a, form, nodes)
    n = t.shape[0]
    branch = _branch(t, 2 / critical_noise(beta, d, a, form) ** 2, newton, order, max_order)
    p_target = 2 / sigma**2
    states = [{"order": 0.0, "uniform": True, "u": np.zeros(n)}]
    for k in range(1, len(branch)):
        p1, p2 = branch[k - 1, n], branch[k, n]
        if (p1 - p_target) * (p2 - p_target) <= 0 and p1 != p2 and k > 1:
            theta = (p_target - p1) / (p2 - p1)
            u0 = branch[k - 1, :n] + theta * (branch[k, :n] - branch[k - 1, :n])
            u, _, ok = newton(u0, p_target)
            if ok and order(u)[0] > 1e-6:
                states.append({"order": order(u)[0], "uniform": False, "u": u})
    out = []
    for st in states:
        r, f = order(st["u"])
        r = 0.0 if st["uniform"] else r  # exactly: the uniform state's first moment vanishes
        if any(abs(r - o["order"]) < 1e-8 for o in out):
            continue
        out.append({"order": r, "stable": stable(f, sigma), "t": t, "density": f})
    return sorted(out, key=lambda s: s["order"])


def stationary_branch(
    beta: float,
    d: int = 3,
    form: str = "USA",
    *,
    a: float = 1.0,
    nodes: int = 96,
    max_order: float = 0.99,
) -> dict:
    r"""The whole non-uniform branch of zonal stationary states (`stationary_states`) as a curve,
    for plotting $R$ against $\sigma$: the continuation from the bifurcation at $\sigma_c$ through
    its folds until $R$ reaches ``max_order``. Below $\beta_*$ the branch leaves $\sigma_c$ towards
    smaller $\sigma$ (a continuous transition); above, towards larger $\sigma$, turning back at a
    fold $\sigma_{\mathrm{fold}} > \sigma_c$: between the two, a concentrated state and the uniform
    state are both stable (hysteresis).

    Returns:
        {"sigma": (M,), "order": (M,), "stable": (M,) bool (USA; None for SA), "sigma_c": float,
        "sigma_fold": the largest sigma on the branch}.
    """
    _check_state_args(beta, d, form)
    t, newton, order, stable = _zonal_solver(beta, int(d), a, form, nodes)
    n = t.shape[0]
    p0 = 2 / critical_noise(beta, int(d), a, form) ** 2
    branch = _branch(t, p0, newton, order, max_order)[1:]  # without the bifurcation point
    sigma = np.sqrt(2 / branch[:, n])
    rows = [order(u) for u in branch[:, :n]]
    flags = [stable(f, s) for (_, f), s in zip(rows, sigma)]
    return {
        "sigma": sigma,
        "order": np.array([r for r, _ in rows]),
        "stable": None if form != "USA" else np.array(flags, bool),
        "sigma_c": critical_noise(beta, int(d), a, form),
        "sigma_fold": float(sigma.max()),
    }


def rqf_synchronisation_rate(common: float = 1.0, d: int = 3) -> float:
    r"""The rate at which common noise alone synchronises tokens up to sign, in Engel & Shalova's
    Random Quadratic Form (arXiv 2603.06187; ``Noise(common=c, model="rqf")``):
    $dX = c\, P_X \circ dQ_t\, X$, $Q_t = (B_t + B_t^\top)/2$. Returns $c^2$, for every $d \ge 2$.

    Derivation: the flow is the projection $X_t = Z_t X_0 / |Z_t X_0|$ of the linear flow
    $dZ = c \circ dQ_t\, Z$ on $\mathbb{R}^d$. In Itô form $dZ = c\, dQ\, Z + \frac{c^2}{2}
    E[dQ^2] Z$, with $E[dQ^2] = \frac{d+1}{2} I\, dt$ (variances 1 on the diagonal of $Q$, 1/2 off
    it). For a $k$-frame with Gram matrix $V = Z^\top Z$, Itô's formula and the isotropy of $Q$
    ($S = U^\top dQ\, U$ has the same law for every orthonormal $U$, with $E\,\mathrm{tr}\,S^2 =
    k(k+1)/2\, dt$) give $d \log\det V = 2c\,\mathrm{tr}\, S + c^2 k(d - k)\, dt$, so the sum of the
    top $k$ Lyapunov exponents is $c^2 k (d - k)/2$ and $\lambda_k = c^2 (d + 1 - 2k)/2$. Two tokens
    $x, y$ have $s_t = \sqrt{1 - \langle x_t, y_t\rangle^2} = \lvert Z x \wedge Z y\rvert /
    (\lvert Z x\rvert \lvert Z y\rvert)$. The drifts above do not depend on the frame (isotropy),
    so $d \log s_t = -c^2\, dt + dM_t$ with $M$ a martingale, at every angle: $E[\log s_t - \log
    s_0] = -c^2 t$ exactly, and $\frac{1}{t} \log s_t \to \lambda_2 - \lambda_1 = -c^2$ almost surely
    (measured in the tests and the ``noise-transition`` preset). The limit points are $\pm v_t$, so
    the tokens cluster in two antipodal groups, and the order parameter $R$ tends to the difference
    of their fractions, not to 1."""
    check_param("common", common, lo=0)
    require(int(d) >= 2, f"d must be >= 2, got {d}")
    return float(common) ** 2
