"""Scale: sharded scaling over emulated devices, large-N memory, ensemble throughput.

Three tables, each measured in this run (causal SA on the sphere, Q = K = V = I, float32):

1. Strong and weak scaling of one RHS over 1, 2, 4, 8 devices of a ("data", "tokens") mesh
   (``meanfield.sharding``; a child process with 8 emulated CPU devices,
   XLA_FLAGS=--xla_force_host_platform_device_count=8). Strong: fixed N; weak: N per device
   fixed, so the pair count grows like devices^2 and the ideal time grows like devices
   (reported: efficiency = ideal / measured). Emulated devices share this machine's cores, so
   the best possible speed-up is the core count: these numbers test that the sharded path adds
   little overhead, not the speed of a real pod.
2. Large N with the chunked kernel (O(N * block) memory): N = 100,000 and 1,000,000, d = 16,
   each in a fresh process: peak RSS and time per RHS.
3. Ensemble throughput: B independent small runs (N_small tokens each), batched by a plain
   ``jax.vmap`` and by the engine's ``sharding.ensemble_vmap`` (the runner's batch map: chunks
   of k runs with k N_small^2 <= 2^20), against one run of N_big tokens with the same number of
   pairs (B N_small^2 = N_big^2), full SA, dense kernel; pair interactions per second and ratios.

Run:  python benchmarks/bench_scale.py [--quick] [--skip-million] [--only ensemble]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from _timing import chunked_memory, median_time


def scaling_child(n_strong, n_weak, d, block):
    import jax
    import jax.numpy as jnp

    import meanfield as mf
    from meanfield import sharding

    devs = jax.devices()
    assert len(devs) >= 8, "the scaling child needs 8 emulated devices"
    attn = mf.Attention(1.0, mask=mf.Causal(), backend=mf.kernel.Chunked(block))
    rows = []
    for kind, sizes in (
        ("strong", {k: n_strong for k in (1, 2, 4, 8)}),
        ("weak", {k: n_weak * k for k in (1, 2, 4, 8)}),
    ):
        for k, n in sizes.items():
            x = mf.sphere_uniform(jax.random.key(0), n, d, jnp.float32)
            mesh = sharding.make_mesh("tokens", devices=devs[:k])
            with jax.set_mesh(mesh):
                f = jax.jit(lambda y: mf.velocity(attn, y))
                t = median_time(lambda: f(x).block_until_ready(), repeats=3, min_time=0)
            rows.append({"kind": kind, "devices": k, "n": n, "time_s": t, "pairs": n * (n + 1) / 2})
    print(json.dumps(rows))


def ensemble(b, n_small, d, repeats=5):
    import jax
    import jax.numpy as jnp

    import meanfield as mf
    from meanfield.sharding import ensemble_vmap

    n_big = int(round(n_small * b**0.5))
    attn = mf.Attention(1.0)
    rhs = lambda y: mf.velocity(attn, y)  # noqa: E731
    xs = mf.sphere_uniform(jax.random.key(0), b * n_small, d, jnp.float32).reshape(b, n_small, d)
    xb = mf.sphere_uniform(jax.random.key(1), n_big, d, jnp.float32)
    fv = jax.jit(jax.vmap(rhs))
    fe = jax.jit(ensemble_vmap(rhs, n_small))
    fb = jax.jit(rhs)
    tv = te = tb = float("inf")
    for _ in range(
        3
    ):  # interleaved rounds, best median of each: XLA:CPU timings drift by 2x between calls
        tv = min(tv, median_time(lambda: fv(xs).block_until_ready(), repeats=repeats))
        te = min(te, median_time(lambda: fe(xs).block_until_ready(), repeats=repeats))
        tb = min(tb, median_time(lambda: fb(xb).block_until_ready(), repeats=repeats))
    return {
        "b": b,
        "n_small": n_small,
        "n_big": n_big,
        "d": d,
        "t_vmap": tv,
        "t_ens": te,
        "t_big": tb,
        "pairs_ens": b * n_small**2,
        "pairs_big": n_big**2,
    }


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    ap.add_argument(
        "--skip-million",
        action="store_true",
        help="skip N = 1,000,000 (about 7 minutes on 2 cores)",
    )
    ap.add_argument("--only", choices=["scaling", "memory", "ensemble"], help="run one table")
    ap.add_argument("--scaling-child", nargs=4, type=int, help=argparse.SUPPRESS)
    ap.add_argument("--memory-child", nargs=3, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.scaling_child:
        scaling_child(*args.scaling_child)
        return
    if args.memory_child:
        print(json.dumps(chunked_memory(*args.memory_child)))
        return

    import jax

    print(
        f"# jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} cores; float32"
    )

    want = lambda table: args.only in (None, table)  # noqa: E731

    if want("scaling"):
        # 1. scaling over emulated devices
        n_strong, n_weak, d, block = (
            (4096, 1024, 16, 512) if args.quick else (16384, 4096, 16, 1024)
        )
        env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--scaling-child",
                str(n_strong),
                str(n_weak),
                str(d),
                str(block),
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        rows = json.loads(child.stdout.strip().splitlines()[-1])
        print(
            f"\n## 1. causal SA RHS, chunked kernel (block {block}), d = {d}, tokens split over a mesh of emulated CPU devices"
        )
        print(
            f"{'scaling':>8} {'devices':>7} {'N':>7} | {'time/RHS ms':>11} {'Mpair/s':>8} | {'speed-up':>8} {'efficiency':>10}"
        )
        for kind in ("strong", "weak"):
            sub = [r for r in rows if r["kind"] == kind]
            t1 = sub[0]["time_s"]
            for r in sub:
                k = r["devices"]
                speed = (
                    t1 / r["time_s"]
                    if kind == "strong"
                    else (r["pairs"] / r["time_s"]) / (sub[0]["pairs"] / t1)
                )
                ideal = t1 / k if kind == "strong" else t1 * r["pairs"] / sub[0]["pairs"] / k
                print(
                    f"{kind:>8} {k:>7} {r['n']:>7} | {1e3 * r['time_s']:>11.1f} {r['pairs'] / r['time_s'] / 1e6:>8.0f} | "
                    f"{speed:>8.2f} {ideal / r['time_s']:>10.2f}"
                )
        print(
            f"# speed-up: pair throughput relative to 1 device; efficiency = ideal time / measured; "
            f"at most {os.cpu_count()} cores do the work of the 8 emulated devices"
        )

    if want("memory"):
        # 2. large N
        print("\n## 2. chunked causal SA, one RHS in a fresh process, d = 16, block 1024")
        print(
            f"{'N':>9} | {'peak RSS MiB':>12} {'RSS before MiB':>14} | {'time/RHS s':>10} {'Mpair/s':>8}"
        )
        sizes = (
            [20_000] if args.quick else ([100_000] if args.skip_million else [100_000, 1_000_000])
        )
        for n in sizes:
            child = subprocess.run(
                [sys.executable, __file__, "--memory-child", str(n), "16", "1024"],
                capture_output=True,
                text=True,
                check=True,
            )
            mem = json.loads(child.stdout.strip().splitlines()[-1])
            pairs = n * (n + 1) / 2
            print(
                f"{n:>9} | {mem['peak_rss_mib']:>12.0f} {mem['rss_before_mib']:>14.0f} | {mem['time_per_rhs_s']:>10.2f} "
                f"{pairs / mem['time_per_rhs_s'] / 1e6:>8.0f}"
            )

    if want("ensemble"):
        # 3. ensemble throughput
        print(
            "\n## 3. ensemble: B runs of N_small tokens vs one run of N_big (same pairs), full SA, dense"
        )
        print(
            "# vmap: jax.vmap of the RHS; engine: sharding.ensemble_vmap (the runner's batch map: chunks of k runs)"
        )
        print(
            f"{'B':>5} {'N_small':>7} {'N_big':>6} {'d':>3} {'k':>4} | {'vmap Mpair/s':>12} {'engine Mpair/s':>14} "
            f"{'big Mpair/s':>11} | {'big/vmap':>8} {'big/engine':>10}"
        )
        from meanfield.sharding import ensemble_chunk

        cases = (
            [(64, 128, 16)]
            if args.quick
            else [
                (256, 256, 3),
                (256, 256, 16),
                (256, 256, 64),
                (64, 512, 16),
                (256, 64, 16),
                (16, 1024, 16),
            ]
        )
        for b, ns, dd in cases:
            r = ensemble(b, ns, dd)
            pv, pe, pb = (
                r["pairs_ens"] / r["t_vmap"],
                r["pairs_ens"] / r["t_ens"],
                r["pairs_big"] / r["t_big"],
            )
            print(
                f"{b:>5} {ns:>7} {r['n_big']:>6} {dd:>3} {ensemble_chunk(ns):>4} | {pv / 1e6:>12.0f} {pe / 1e6:>14.0f} "
                f"{pb / 1e6:>11.0f} | {pb / pv:>8.2f} {pb / pe:>10.2f}"
            )
        print(
            "# big/x per pair > 1: the ensemble is slower per pair interaction than one big run (target: <= 1.3)"
        )


if __name__ == "__main__":
    main()
