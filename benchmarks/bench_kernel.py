"""Dense RHS throughput of the engine vs NumPy (and PyTorch eager if installed), against the
machine's own matmul rate, plus the peak memory of one chunked evaluation at N = 100,000.

One right-hand side of the full SA sphere dynamics with Q = K = V = I, float32:

    S = beta X X^T;  A = softmax_rows(S);  v = A X;  dx/dt = v - <x, v> x

Each implementation runs K = 20 explicit Euler steps x <- x + dt * RHS(x), the way a solver
uses the RHS (the engine as one jitted loop, NumPy and PyTorch eager as Python loops); the
time per step is the median over repeats divided by K. Pair throughput = N^2 / time. The RHS
does two N x N x d matmuls, 4 N^2 d flops; the "% of GEMM" column divides that flop rate by
the best square-GEMM rate of the machine measured in the same run (max of XLA and
NumPy/BLAS at 2048^3, float32).

Run:  python benchmarks/bench_kernel.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np
from _timing import chunked_memory, matmul_rates, median_time


K_STEPS = 20
DT = 1e-3


def numpy_rhs(x, beta):
    s = beta * (x @ x.T)
    s -= s.max(axis=1, keepdims=True)
    np.exp(s, out=s)
    v = (s @ x) / s.sum(axis=1, keepdims=True)
    return v - np.sum(x * v, axis=1, keepdims=True) * x


def torch_rhs(torch, x, beta):
    s = beta * (x @ x.T)
    a = torch.softmax(s, dim=1)
    v = a @ x
    return v - (x * v).sum(dim=1, keepdim=True) * x


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes only (smoke run)")
    ap.add_argument("--memory-child", nargs=3, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        print(json.dumps(chunked_memory(*args.memory_child)))
        return

    import jax
    import jax.numpy as jnp

    import meanfield as mf

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
    print(f"# jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} cores; float32")
    print(f"# square GEMM rate: NumPy/BLAS {np_rate / 1e9:.1f} GFLOP/s, XLA {jx_rate / 1e9:.1f} GFLOP/s; "
          f"reference = {peak / 1e9:.1f} GFLOP/s")
    hdr = f"{'N':>6} {'d':>4} | {'engine Mpair/s':>14} {'numpy Mpair/s':>14} {'torch Mpair/s':>14} | " \
          f"{'eng/numpy':>9} {'eng/torch':>9} | {'eng % of GEMM':>13}"
    print(hdr)
    print("-" * len(hdr))
    attn = mf.Attention(beta)
    rhs = jax.jit(lambda y: mf.velocity(attn, y))
    engine_loop = jax.jit(
        lambda y: jax.lax.fori_loop(0, K_STEPS, lambda i, z: z + DT * mf.velocity(attn, z), y)
    )

    def numpy_loop(x):
        for _ in range(K_STEPS):
            x = x + DT * numpy_rhs(x, beta)
        return x

    def torch_loop(x):
        for _ in range(K_STEPS):
            x = x + DT * torch_rhs(torch, x, beta)
        return x

    rows = []
    for d in dims:
        for n in sizes:
            x = np.asarray(mf.sphere_uniform(jax.random.key(n + d), n, d, jnp.float32))
            xj = jnp.asarray(x)
            np.testing.assert_allclose(np.asarray(rhs(xj)), numpy_rhs(x, beta), rtol=2e-3, atol=2e-4)
            t_eng = median_time(lambda: engine_loop(xj).block_until_ready()) / K_STEPS
            t_np = median_time(lambda: numpy_loop(x)) / K_STEPS
            t_th = float("nan")
            if torch:
                xt = torch.from_numpy(x.copy())
                t_th = median_time(lambda: torch_loop(xt)) / K_STEPS
            pairs = n * n
            frac = 4 * pairs * d / t_eng / peak
            rows.append(dict(n=n, d=d, engine=pairs / t_eng, numpy=pairs / t_np, torch=pairs / t_th, frac=frac))
            print(f"{n:>6} {d:>4} | {pairs / t_eng / 1e6:>14.1f} {pairs / t_np / 1e6:>14.1f} "
                  f"{pairs / t_th / 1e6:>14.1f} | {t_np / t_eng:>9.2f} {t_th / t_eng:>9.2f} | {100 * frac:>12.1f}%")

    n_mem = 20_000 if args.quick else 100_000
    child = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(n_mem), "16", "512"],
        capture_output=True, text=True, check=True,
    )
    mem = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"\n# chunked causal SA, N = {mem['n']}, d = {mem['d']}, block = {mem['block']}, float32:")
    print(f"#   peak RSS {mem['peak_rss_mib']:.0f} MiB (resident before the call, after import and compile: {mem['rss_before_mib']:.0f} MiB); "
          f"time per RHS {mem['time_per_rhs_s']:.2f} s (first call incl. compile {mem['first_call_s']:.2f} s)")


if __name__ == "__main__":
    main()
