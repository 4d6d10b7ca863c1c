"""The worst ``precision="highest"`` field error of ``Fused`` and ``Splash`` against float64, over
the cases users run (Pallas interpret mode on the CPU: the products are the bf16 products a device's
matrix unit computes, with float32 accumulation).

Grid: d = 16 and 64; beta = 1 and 4; SA and USA; masses uniform on [0.5, 1.5] / N; one head, and
four heads with per-head ALiBi slopes; masks: causal, strict causal, causal + ALiBi, causal window
+ ALiBi, two-sided ALiBi, a two-sided window, PositionNormalized (causal + ALiBi, two-sided); ALiBi
slopes with lambda N = 10 and 100 (the USA row constant lambda p_i grows with lambda N). A case a
backend refuses is skipped. The error is max_i |v_i - v_i^64| / max_i |v_i^64|.

Run:  python benchmarks/highest_precision.py [--n 512] [--precision highest]
"""

from __future__ import annotations

import argparse
import itertools

import jax

jax.config.update("jax_enable_x64", True)  # entry point: the float64 reference

import jax.numpy as jnp  # noqa: E402

import meanfield as mf  # noqa: E402
from _timing import field_error  # noqa: E402
from meanfield.kernel import Dense, Fused, Splash  # noqa: E402


def masks(n: int, heads: int):
    out = {}
    for ln in (10.0, 100.0):
        lam = ln / n if heads == 1 else jnp.linspace(0.25, 1.0, heads) * ln / n
        tag = f"lN={ln:g}"
        out |= {
            f"causal-alibi {tag}": mf.Causal() & mf.ALiBi(lam),
            f"window-alibi {tag}": mf.Causal() & mf.Window(n / 4) & mf.ALiBi(lam),
            f"two-sided-alibi {tag}": mf.ALiBi(lam),
            f"pn-causal {tag}": mf.PositionNormalized(mf.Causal() & mf.ALiBi(lam)),
            f"pn-two-sided {tag}": mf.PositionNormalized(mf.ALiBi(lam)),
            f"strict-alibi {tag}": mf.Causal(strict=True) & mf.ALiBi(lam),
        }
    return out | {"causal": mf.Causal(), "window": mf.Window(n / 4)}


def cases(n: int):
    for d, beta, form, heads in itertools.product((16, 64), (1.0, 4.0), ("SA", "USA"), (1, 4)):
        for name, mask in masks(n, heads).items():
            yield dict(d=d, beta=beta, form=form, heads=heads, mask=name), mask


def run(n: int, precision: str, backends=None, d_list=None, verbose=True):
    """{backend: (worst error, its case, number of cases)} over the grid."""
    backends = backends or {"Fused": Fused(64, 64), "Splash": Splash(128, 128)}
    worst = {b: (0.0, None, 0) for b in backends}
    for case, mask in cases(n):
        if d_list and case["d"] not in d_list:
            continue
        key = jax.random.key(case["d"] + case["heads"])
        kx, km, kq = jax.random.split(key, 3)
        x = mf.sphere_uniform(kx, n, case["d"], jnp.float64)
        aux = mf.TokenAux.default(
            n, jnp.float64, mass=jax.random.uniform(km, (n,), minval=0.5, maxval=1.5) / n
        )
        kw = dict(beta=case["beta"], mask=mask, form=case["form"])
        if case["heads"] > 1:
            q = jax.random.normal(kq, (case["heads"], case["d"], case["d"])) / case["d"] ** 0.5
            kw |= dict(heads=case["heads"], Q=q + jnp.eye(case["d"]))
        ref = mf.Attention(**kw, backend=Dense())(x, aux)
        f32 = lambda t: jax.tree.map(  # noqa: E731
            lambda a: a.astype(jnp.float32) if eqx_float(a) else a, t
        )
        for name, backend in backends.items():
            attn = f32(mf.Attention(**kw, precision=precision, backend=backend))
            try:
                out = attn(x.astype(jnp.float32), f32(aux))
            except ValueError:
                continue  # a case this backend refuses
            err = field_error(out, ref)
            w, c, k = worst[name]
            worst[name] = (err, case, k + 1) if err > w else (w, c, k + 1)
            if verbose:
                print(f"{name:>6} {case} {err:.2e}", flush=True)
    return worst


def eqx_float(a) -> bool:
    return isinstance(a, jax.Array) and jnp.issubdtype(a.dtype, jnp.floating)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--precision", default="highest")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    worst = run(args.n, args.precision, verbose=not args.quiet)
    print(f"N = {args.n}, precision = {args.precision}: worst relative field error against float64")
    for name, (err, case, k) in worst.items():
        print(f"{name:>6}: {err:.2e} over {k} cases (worst: {case})")


if __name__ == "__main__":
    main()
