"""The Triton IR of the fused kernel, lowered for CUDA on a machine without a GPU.

For each precision, builds ``Attention(..., backend=Fused(interpret=False))`` (causal ALiBi,
d = 64), lowers it with ``jax.jit(f).trace(x).lower(lowering_platforms=("cuda",))`` while
``pallas_call`` runs with ``debug=True`` (Pallas-Triton then prints the kernel's Triton module;
with no GPU it targets compute capability 9.0), writes the module to OUT/fused_<precision>.ttir
and prints what decides its speed on tensor cores:

* every ``tt.dot``: its operand element type and input precision (a float32 dot that says
  nothing is IEEE: FMA loops on the CUDA cores, not tensor cores);
* ``tt.load`` inside an ``scf.if`` nested in an ``scf.for`` (Triton does not software-pipeline
  loads under control flow in a loop);
* the exponentials called (``__nv_exp2f``/``math.exp2`` against the accurate ``__nv_expf``).

Run:  python benchmarks/fused_ir.py [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import re
from pathlib import Path

import jax
import jax.numpy as jnp

import meanfield as mf
from meanfield.kernel import Fused
from meanfield.kernel.backends import fused as fused_module


def lower_ttir(precision: str, n: int = 1024, d: int = 64) -> str:
    """The Triton module of the fused kernel for ``precision``, as Pallas prints it."""
    x = mf.sphere_uniform(jax.random.key(0), n, d).astype(jnp.float32)
    attn = mf.Attention(
        1.0, mask=mf.Causal() & mf.ALiBi(0.1), precision=precision, backend=Fused(interpret=False)
    )
    original = fused_module.pl.pallas_call
    fused_module.pl.pallas_call = functools.partial(original, debug=True)
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            jax.jit(lambda y: attn(y)).trace(x).lower(lowering_platforms=("cuda",))
    finally:
        fused_module.pl.pallas_call = original
    text = buf.getvalue()
    start = text.find("module")
    return text[start:] if start >= 0 else text


def analyse(ttir: str) -> dict:
    """Dots (operand type, input precision), loads under scf.if inside scf.for, exp calls."""
    dots = []
    for line in ttir.splitlines():
        if "tt.dot " not in line:
            continue
        operand = re.search(r":\s*tensor<[0-9x]+x(\w+)>", line)
        prec = re.search(r"inputPrecision\s*=\s*(\w+)", line)
        ty = operand.group(1) if operand else "?"
        dots.append((ty, prec.group(1) if prec else ("ieee" if ty == "f32" else "-")))
    # walk the region nesting: count tt.load whose enclosing regions include an scf.for and an scf.if
    stack, loads_in_if_in_for = [], 0
    for line in ttir.splitlines():
        opened = line.count("{") - line.count("}")
        kind = "for" if "scf.for" in line else "if" if "scf.if" in line else "other"
        if "tt.load" in line and "for" in stack and "if" in stack[stack.index("for") :]:
            loads_in_if_in_for += 1
        if opened > 0:
            stack.extend([kind] * opened)
        elif opened < 0:
            del stack[len(stack) + opened :]
    exps = sorted(
        set(re.findall(r'symbol = "(__nv_\w*exp\w*)"', ttir))
        | set(re.findall(r"\b(math\.exp2?)\b", ttir))
    )
    return {"dots": dots, "loads_under_if_in_loop": loads_in_if_in_for, "exp": exps}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="out/fused_ir")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for precision in fused_module.PRECISIONS:
        ttir = lower_ttir(precision)
        (out / f"fused_{precision}.ttir").write_text(ttir)
        a = analyse(ttir)
        ieee = sum(p == "ieee" for _, p in a["dots"])
        print(
            f"{precision:>8}: {len(a['dots'])} tt.dot {a['dots']}; IEEE dots: {ieee}; "
            f"tt.load under scf.if in the key loop: {a['loads_under_if_in_loop']}; exp: {a['exp']}"
        )
    print(f"Triton modules written to {out}/fused_<precision>.ttir")


if __name__ == "__main__":
    main()
