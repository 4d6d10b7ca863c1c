"""Dense RHS throughput of the engine vs NumPy and PyTorch eager, against a limit model of the
machine, plus the peak memory of one chunked evaluation at N = 100,000.

One right-hand side of the full SA sphere dynamics with Q = K = V = I, float32:

    S = beta X X^T;  A = softmax_rows(S);  v = A X;  dx/dt = v - <x, v> x

Each implementation runs K = 20 explicit Euler steps x <- x + dt * RHS(x), the way a solver
uses the RHS (the engine as one jitted loop, NumPy and PyTorch eager as Python loops). The
implementations and the two probes of the limit (a square GEMM, an in-cache exp loop) are timed
in 7 interleaved rounds (:func:`_timing.interleaved_times`), so that a drift of this shared
machine hits all of them alike; the time per step is the median over rounds divided by K. Pair
throughput = N^2 / time.

Limit model (measured in the same run): the RHS does two N x N x d GEMMs (4 N^2 d flops) and
N^2 exponentials, so no implementation beats

    t_limit = 4 N^2 d / R_gemm + N^2 / R_exp,

R_gemm the best square-GEMM rate of the machine (max of XLA and NumPy/BLAS at 2048^3, float32)
and R_exp the best exponential rate the engine's own stack reaches on an in-cache slab inside one
jit (:func:`_timing.exp_rate_in_cache`): the best of the start-of-run measurement and of the
probes interleaved with each size. "% of limit" = t_limit / t.

Two more columns separate the engine's own overhead from what the libraries allow:

* ``jax``: the same RHS as a researcher would write it in jax.numpy (one unblocked softmax,
  jitted, same Euler loop): eng/jax > 1 means the engine is faster than the script it replaces.
* ``GEMM@shape``: the flop rate XLA reaches on the engine's own products at their shapes (per
  row slab the scores (rows x d) @ (d x N), and the values with the row sum: one GEMM against
  N x (d + 1) for d <= 8, a GEMM against N x d and a GEMV otherwise;
  :func:`_timing.shape_gemm_probe`), and the engine as % of t_shape = (time of those products)
  + N^2 / R_exp. These products run below the square-GEMM rate, so t_limit is not reachable by
  any implementation built on them; "% of it" says how close the engine is to what they allow.
* ``R_gemm now`` and ``eng % of limit now``: the square-GEMM rate of the probes interleaved with
  this size alone, and the limit from those rounds' rates only (no best-of-run maximum). When the
  shared machine slows down during a run, R_gemm now falls below R_gemm and "% of limit" mixes a
  fast machine's limit with a slow machine's engine; this column compares like with like.

A last table runs multi-head SA (4 heads, d = 64, random per-head Q, K, V) against the same RHS
in jax.numpy and torch eager, in head-pairs per second.

The OpenBLAS tuning variables of this machine (OPENBLAS_CORETYPE, OPENBLAS_L2_SIZE) slow NumPy's
GEMM; the script re-executes itself once with them unset (for its own process only).
PyTorch comes from the optional extra: ``pip install -e ".[bench]"`` (never installed by CI;
on a CPU-only machine prefer a CPU wheel of torch).

Run:  python benchmarks/bench_kernel.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np
from _timing import (
    chunked_memory,
    exp_probe,
    exp_rate_in_cache,
    gemm_probe,
    interleaved_times,
    matmul_rates,
    shape_gemm_probe,
)


K_STEPS = 20
DT = 1e-3


def numpy_rhs(x, beta):
    s = beta * (x @ x.T)
    s -= s.max(axis=1, keepdims=True)
    np.exp(s, out=s)
    v = (s @ x) / s.sum(axis=1, keepdims=True)
    return v - np.sum(x * v, axis=1, keepdims=True) * x


def jax_rhs(jnp, x, beta):
    """The same right-hand side as a researcher would write it in jax.numpy (jitted by the caller)."""
    s = beta * (x @ x.T)
    a = jnp.exp(s - s.max(axis=1, keepdims=True))
    v = (a @ x) / a.sum(axis=1, keepdims=True)
    return v - jnp.sum(x * v, axis=1, keepdims=True) * x


def torch_rhs(torch, x, beta):
    s = beta * (x @ x.T)
    a = torch.softmax(s, dim=1)
    v = a @ x
    return v - (x * v).sum(dim=1, keepdim=True) * x


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="small sizes only (smoke run)")
    ap.add_argument("--memory-child", nargs=3, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    tuned = [k for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ]
    if tuned:  # this command only: re-execute without the OpenBLAS tuning variables
        env = {k: v for k, v in os.environ.items() if k not in tuned}
        os.execve(sys.executable, [sys.executable, __file__, *sys.argv[1:]], env)
    if args.memory_child:
        print(json.dumps(chunked_memory(*args.memory_child)))
        return

    import jax
    import jax.numpy as jnp

    import meanfield as mf
    from meanfield.kernel.backends.dense import default_row_block

    try:
        import torch

        torch.set_grad_enabled(False)
    except ImportError:
        torch = None

    beta = 1.0
    sizes = [256, 1024] if args.quick else [256, 1024, 4096]
    dims = [3, 64]
    np_rate, jx_rate = matmul_rates(1024 if args.quick else 2048)
    peak = max(np_rate, jx_rate)
    exp_rate, exp_rates = exp_rate_in_cache()
    print(
        f"# jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} cores; float32; "
        f"torch {torch.__version__ if torch else 'not installed'}"
    )
    print(
        f"# square GEMM rate: NumPy/BLAS {np_rate / 1e9:.1f} GFLOP/s, XLA {jx_rate / 1e9:.1f} GFLOP/s; "
        f"R_gemm = {peak / 1e9:.1f} GFLOP/s"
    )
    print(
        "# in-cache exp rate (XLA, one jit): "
        + ", ".join(f"{n}^2 {r / 1e9:.2f}" for n, r in exp_rates.items())
        + f" G/s; R_exp = {exp_rate / 1e9:.2f} G/s"
    )
    hdr = (
        f"{'N':>6} {'d':>4} | {'engine':>8} {'jax':>8} {'numpy':>8} {'torch':>8} {'limit':>8} Mpair/s | "
        f"{'eng/jax':>7} {'eng/np':>6} {'eng/th':>6} | {'% of limit: eng':>15} {'jax':>5} {'numpy':>6} {'torch':>6} "
        f"| {'GEMM@shape':>10} {'eng % of it':>11} | {'R_gemm now':>10} {'eng % of limit now':>18}"
    )
    print(hdr)
    print("-" * len(hdr))
    attn = mf.Attention(beta)
    rhs = jax.jit(lambda y: mf.velocity(attn, y))
    engine_loop = jax.jit(
        lambda y: jax.lax.fori_loop(0, K_STEPS, lambda i, z: z + DT * mf.velocity(attn, z), y)
    )

    jax_loop = jax.jit(
        lambda y: jax.lax.fori_loop(0, K_STEPS, lambda i, z: z + DT * jax_rhs(jnp, z, beta), y)
    )

    def numpy_loop(x):
        for _ in range(K_STEPS):
            x = x + DT * numpy_rhs(x, beta)
        return x

    def torch_loop(x):
        for _ in range(K_STEPS):
            x = x + DT * torch_rhs(torch, x, beta)
        return x

    gemm_np, gemm_xla, gemm_flops = gemm_probe(1024 if args.quick else 2048)
    exp_fn, exp_count = exp_probe()
    for d in dims:
        for n in sizes:
            x = np.asarray(mf.sphere_uniform(jax.random.key(n + d), n, d, jnp.float32))
            xj = jnp.asarray(x)
            np.testing.assert_allclose(
                np.asarray(rhs(xj)), numpy_rhs(x, beta), rtol=2e-3, atol=2e-4
            )
            np.testing.assert_allclose(
                np.asarray(jax_rhs(jnp, xj, beta)), numpy_rhs(x, beta), rtol=2e-3, atol=2e-4
            )
            shape_fn, shape_flops = shape_gemm_probe(
                n, d, default_row_block(1, n, 4), steps=K_STEPS
            )
            fns = {
                "engine": lambda: engine_loop(xj).block_until_ready(),
                "jax": lambda: jax_loop(xj).block_until_ready(),
                "numpy": lambda: numpy_loop(x),
                "gemm_np": gemm_np,
                "gemm_xla": gemm_xla,
                "exp": exp_fn,
                "gemm_shape": shape_fn,
            }
            if torch:
                xt = torch.from_numpy(x.copy())
                fns["torch"] = lambda: torch_loop(xt)
            t = interleaved_times(fns, rounds=7, min_time=0.3)
            t_eng, t_np, t_jax = t["engine"] / K_STEPS, t["numpy"] / K_STEPS, t["jax"] / K_STEPS
            t_th = t["torch"] / K_STEPS if torch else float("nan")
            r_gemm_now, r_exp_now = (
                gemm_flops / min(t["gemm_np"], t["gemm_xla"]),
                exp_count / t["exp"],
            )
            r_gemm, r_exp = max(peak, r_gemm_now), max(exp_rate, r_exp_now)
            pairs = n * n
            t_lim = 4 * pairs * d / r_gemm + pairs / r_exp
            t_now = 4 * pairs * d / r_gemm_now + pairs / r_exp_now  # the rates of these rounds only
            # the products as the library runs them at the engine's shapes (_timing.shape_gemm_probe)
            t_shape = t["gemm_shape"] / K_STEPS + pairs / r_exp
            r_shape = shape_flops / t["gemm_shape"]
            print(
                f"{n:>6} {d:>4} | {pairs / t_eng / 1e6:>8.1f} {pairs / t_jax / 1e6:>8.1f} {pairs / t_np / 1e6:>8.1f} "
                f"{pairs / t_th / 1e6:>8.1f} {pairs / t_lim / 1e6:>8.1f}         | {t_jax / t_eng:>7.2f} "
                f"{t_np / t_eng:>6.2f} {t_th / t_eng:>6.2f} | {100 * t_lim / t_eng:>14.1f}% {100 * t_lim / t_jax:>4.1f}% "
                f"{100 * t_lim / t_np:>5.1f}% {100 * t_lim / t_th:>5.1f}% | {r_shape / 1e9:>5.0f} GF/s "
                f"{100 * t_shape / t_eng:>10.1f}% | {r_gemm_now / 1e9:>5.0f} GF/s {100 * t_now / t_eng:>17.1f}%",
                flush=True,
            )

    multi_head(jax, jnp, mf, torch, [1024] if args.quick else [1024, 4096], peak, exp_rate)

    np_end, jx_end = matmul_rates(1024 if args.quick else 2048)
    exp_end, _ = exp_rate_in_cache()
    print(
        f"# measured again at the end (machine drift): R_gemm {max(np_end, jx_end) / 1e9:.1f} GFLOP/s, "
        f"R_exp {exp_end / 1e9:.2f} G/s"
    )

    n_mem = 20_000 if args.quick else 100_000
    child = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(n_mem), "16", "512"],
        capture_output=True,
        text=True,
        check=True,
    )
    mem = json.loads(child.stdout.strip().splitlines()[-1])
    print(
        f"\n# chunked causal SA, N = {mem['n']}, d = {mem['d']}, block = {mem['block']}, float32:"
    )
    print(
        f"#   peak RSS {mem['peak_rss_mib']:.0f} MiB (resident before the call, after import and compile: {mem['rss_before_mib']:.0f} MiB); "
        f"time per RHS {mem['time_per_rhs_s']:.2f} s (first call incl. compile {mem['first_call_s']:.2f} s)"
    )


def multi_head(jax, jnp, mf, torch, sizes, r_gemm, r_exp, heads=4, d=64, beta=1.0):
    """Multi-head SA with random per-head Q, K, V (W = I / heads): the engine against the same RHS
    written in jax.numpy (jitted) and in torch eager; Mpair/s counts head-pairs (heads N^2).
    The limit adds the projections (6 heads N d^2 flops) to 4 heads N^2 d / R_gemm + heads N^2 / R_exp."""
    keys = jax.random.split(jax.random.key(7), 3)
    Q, K, V = (jax.random.normal(k, (heads, d, d), jnp.float32) / d**0.5 for k in keys)
    attn = mf.Attention(beta, Q=Q, K=K, V=V)

    def jax_mh(z):
        q, k, v = (jnp.einsum("hde,ne->hnd", M, z) for M in (Q, K, V))
        s = beta * jnp.einsum("hid,hjd->hij", q, k)
        a = jnp.exp(s - s.max(-1, keepdims=True))
        out = jnp.einsum("hij,hjd->id", a / a.sum(-1, keepdims=True), v) / heads
        return out - jnp.sum(z * out, -1, keepdims=True) * z

    def torch_mh(z, Qt, Kt, Vt):
        q, k, v = (torch.einsum("hde,ne->hnd", M, z) for M in (Qt, Kt, Vt))
        a = torch.softmax(beta * q @ k.transpose(1, 2), dim=-1)
        out = torch.einsum("hij,hjd->id", a, v) / heads
        return out - (z * out).sum(dim=1, keepdim=True) * z

    eng = jax.jit(
        lambda y: jax.lax.fori_loop(0, K_STEPS, lambda i, z: z + DT * mf.velocity(attn, z), y)
    )
    scr = jax.jit(lambda y: jax.lax.fori_loop(0, K_STEPS, lambda i, z: z + DT * jax_mh(z), y))
    print(f"\n# multi-head SA: {heads} heads, d = {d}, random Q, K, V; Mpair/s of head-pairs")
    print(
        f"{'N':>6} | {'engine':>8} {'jax':>8} {'torch':>8} {'limit':>8} | {'eng/jax':>7} {'eng/th':>6} | {'eng % of limit':>14}"
    )
    for n in sizes:
        x = mf.sphere_uniform(jax.random.key(n), n, d, jnp.float32)
        np.testing.assert_allclose(
            np.asarray(mf.velocity(attn, x)), np.asarray(jax_mh(x)), rtol=2e-3, atol=2e-4
        )
        fns = {
            "engine": lambda: eng(x).block_until_ready(),
            "jax": lambda: scr(x).block_until_ready(),
        }
        if torch:
            xt, Qt, Kt, Vt = (torch.from_numpy(np.asarray(a).copy()) for a in (x, Q, K, V))

            def torch_loop():
                z = xt
                for _ in range(K_STEPS):
                    z = z + DT * torch_mh(z, Qt, Kt, Vt)
                return z

            fns["torch"] = torch_loop
        t = {k: v / K_STEPS for k, v in interleaved_times(fns, rounds=7, min_time=0.3).items()}
        t_th = t.get("torch", float("nan"))
        pairs = heads * n * n
        t_lim = (4 * pairs * d + 6 * heads * n * d * d) / r_gemm + pairs / r_exp
        print(
            f"{n:>6} | {pairs / t['engine'] / 1e6:>8.1f} {pairs / t['jax'] / 1e6:>8.1f} {pairs / t_th / 1e6:>8.1f} "
            f"{pairs / t_lim / 1e6:>8.1f} | {t['jax'] / t['engine']:>7.2f} {t_th / t['engine']:>6.2f} | "
            f"{100 * t_lim / t['engine']:>13.1f}%",
            flush=True,
        )


if __name__ == "__main__":
    main()
