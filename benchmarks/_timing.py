"""Timing, memory and error helpers shared by the benchmark scripts (run them as
``python benchmarks/NAME.py``; this folder is then on sys.path)."""

from __future__ import annotations

import os
import resource
import time

import numpy as np


def median_time(fn, repeats=7, min_time=0.2):
    """Median wall time of ``fn()`` after one warm-up call (compilation)."""
    fn()
    times = []
    t_start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - t_start < min_time and len(times) < 200):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def interleaved_times(fns, rounds=7, min_time=0.05, pause=0.2):
    """Median time per call of each ``fns[name]()``, measured in ``rounds`` interleaved rounds
    (every function once per round, after one warm-up call each): on a shared machine whose speed
    drifts, the ratios between functions then compare like with like. Within a round a function
    is called until ``min_time`` has passed and its mean time per call is that round's sample;
    ``pause`` seconds separate two functions (idle OpenMP/OpenBLAS threads of the previous one
    spin for a while after its last call and would share the cores)."""
    for fn in fns.values():
        fn()
    samples = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            time.sleep(pause)
            calls, t0 = 0, time.perf_counter()
            while True:
                fn()
                calls += 1
                elapsed = time.perf_counter() - t0
                if elapsed >= min_time:
                    break
            samples[name].append(elapsed / calls)
    return {name: float(np.median(v)) for name, v in samples.items()}


def exp_probe(n=1024, repeats_in_jit=16):
    """A function doing repeats_in_jit * n^2 exponentials on an in-cache slab in one jit (see
    :func:`exp_rate_in_cache`), and that count."""
    import jax
    import jax.numpy as jnp

    y0 = jnp.asarray(np.random.default_rng(1).random((n, n), dtype=np.float32))
    loop = jax.jit(lambda y: jax.lax.fori_loop(0, repeats_in_jit, lambda i, z: jnp.exp(-z), y))
    return (lambda: loop(y0).block_until_ready()), repeats_in_jit * n * n


def gemm_probe(n=1024, dtype=np.float32):
    """NumPy/BLAS and XLA square-GEMM functions at n^3, and their flop count."""
    import jax
    import jax.numpy as jnp

    a = np.random.default_rng(0).standard_normal((n, n)).astype(dtype)
    aj = jnp.asarray(a)
    mm = jax.jit(lambda u: u @ u)
    return (lambda: a @ a), (lambda: mm(aj).block_until_ready()), 2 * n**3


def shape_gemm_probe(n, d, rows, steps=20):
    """The value and score products of one dense SA right-hand side at the engine's own shapes, in
    XLA: per ``rows``-row slab the scores (rows x d) @ (d x n) and the value product the dense
    backend does at this d: (rows x n) @ (n x (d + 1)) (values plus the row-sum column) for
    d <= 8, else (rows x n) @ (n x d) and the row-sum GEMV (rows x n) @ (n,); ``steps`` dependent
    iterations inside one jit, every slab of the n rows. Returns (fn, flop count per call): what
    the GEMM library reaches at these shapes, as opposed to the square-GEMM peak of
    :func:`gemm_probe`."""
    import jax
    import jax.numpy as jnp

    from meanfield.kernel.backends.dense import MASS_COLUMN_MAX_D as _MASS_COLUMN_MAX_D

    rows = min(rows, n)
    x = jnp.asarray(np.random.default_rng(2).standard_normal((n, d), dtype=np.float32) / np.sqrt(d))
    ones = jnp.ones((n, 1), x.dtype)
    column = d <= _MASS_COLUMN_MAX_D
    v1 = jnp.concatenate([x, ones], axis=-1)
    nb = n // rows

    def products(qb):
        s = qb @ x.T
        if column:
            return s @ v1
        return jnp.concatenate([s @ x, s @ ones], axis=-1)

    def step(i, q):
        out = jax.lax.map(products, q.reshape(nb, rows, d)).reshape(nb * rows, d + 1)
        return q + 1e-3 * out[:, :d] * out[:, d:]

    loop = jax.jit(lambda q: jax.lax.fori_loop(0, steps, step, q))
    q0 = x[: nb * rows]
    return (lambda: loop(q0).block_until_ready()), steps * nb * rows * (2 * n * d + 2 * n * (d + 1))


def matmul_rates(n=2048, dtype=np.float32):
    """(NumPy/BLAS, XLA) square-GEMM flop rates of this machine at n^3 (the functions of
    :func:`gemm_probe`, median of 5 calls each)."""
    gemm_np, gemm_xla, flops = gemm_probe(n, dtype)
    return flops / median_time(gemm_np, repeats=5), flops / median_time(gemm_xla, repeats=5)


def exp_rate_in_cache(sizes=(256, 512, 1024), repeats_in_jit=64):
    """Best exponential rate (exp/s) of XLA on an in-cache float32 slab inside one jit: a
    ``fori_loop`` of y <- exp(-y) over a slab of n x n (n in ``sizes``, 256 KiB to 4 MiB, around
    the L2 size), each iteration dependent on the last so none is skipped. Returns (best rate,
    {n: rate})."""
    rates = {}
    for n in sizes:
        fn, count = exp_probe(n, repeats_in_jit)
        rates[n] = count / median_time(fn, repeats=7)
    return max(rates.values()), rates


def current_rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib():
    """Peak resident memory of this process image (VmHWM). Not ``ru_maxrss``: Linux keeps that
    across fork + exec, so a child started by a large parent would report the parent's RSS."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def chunked_memory(n, d, block, repeats=1):
    """Peak RSS and time of one causal chunked SA evaluation (run it in a fresh process)."""
    import jax
    import jax.numpy as jnp

    import meanfield as mf

    x = mf.sphere_uniform(jax.random.key(0), n, d, jnp.float32)
    attn = mf.Attention(1.0, mask=mf.Causal(), backend=mf.kernel.Chunked(block))
    f = jax.jit(lambda y: mf.velocity(attn, y))
    f(x[:1024]).block_until_ready()
    base = current_rss_mib()
    t0 = time.perf_counter()
    out = f(x).block_until_ready()
    t1 = time.perf_counter()
    t_next = min(_timed(lambda: f(x).block_until_ready()) for _ in range(repeats))
    assert bool(jnp.all(jnp.isfinite(out)))
    return {
        "n": n,
        "d": d,
        "block": block,
        "rss_before_mib": base,
        "peak_rss_mib": peak_rss_mib(),
        "first_call_s": t1 - t0,
        "time_per_rhs_s": t_next,
    }


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def field_error(out, ref) -> float:
    """Relative max error of a field against its reference: max |out - ref| / max |ref|."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(out - ref)) / np.max(np.abs(ref)))
