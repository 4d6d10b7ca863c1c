"""The import graph of the package, read from the source (no import executed).

Three tiers, imports only downward (docs/architecture.md):

    engine  meanfield, meanfield.<anything but studies/run>
    studies meanfield.studies.*        may import the engine
    run     meanfield.run.*, meanfield.__main__   may import the engine (and studies)
    presets meanfield_experiments.* (the experiments/ folder)   may import everything

Checked: no upward import, no import cycle between modules, no import of a sibling module inside a
function (lazy imports are for optional heavy third-party dependencies only), and the one lazy
door upward, ``meanfield.__getattr__("studies")`` (PEP 562), goes through importlib.
"""

from __future__ import annotations

import ast

import jax.numpy as jnp
import pytest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"meanfield": ROOT / "meanfield", "meanfield_experiments": ROOT / "experiments"}
TIERS = {"engine": 0, "studies": 1, "run": 2, "presets": 3}


def modules() -> dict[str, Path]:
    out = {}
    for pkg, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([pkg, *parts])] = path
    return out


def tier(mod: str) -> str:
    if mod.startswith("meanfield_experiments"):
        return "presets"
    if mod.startswith("meanfield.studies"):
        return "studies"
    if mod.startswith("meanfield.run") or mod == "meanfield.__main__":
        return "run"
    return "engine"


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom | ast.Import, known: dict) -> list[str]:
    """The project modules an import statement names (``from a import b`` names a.b if b is a module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] in PACKAGES]
    base = node.module or ""
    if node.level:
        parts = mod.split(".")
        if not is_pkg:
            parts = parts[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([base] if base else []))
    if base.split(".")[0] not in PACKAGES:
        return []
    out = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        out.append(sub if sub in known else base)
    return out


def graph():
    """{module: [(imported module, line, inside a function?)]} over the project's modules."""
    known = modules()
    edges = {}
    for mod, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        found = []

        def visit(node, in_func):
            for child in ast.iter_child_nodes(node):
                inner = in_func or isinstance(
                    child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
                )
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    for target in _resolve(mod, path.name == "__init__.py", child, known):
                        found.append((target, child.lineno, in_func))
                visit(child, inner)

        visit(tree, False)
        edges[mod] = found
    return edges


def cycles(edges) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), module-level imports only."""
    adj = {
        m: sorted({t for t, _, f in e if not f and t in edges and t != m}) for m, e in edges.items()
    }
    index, low, stack, on, out = {}, {}, [], set(), []

    def strong(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in adj[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in adj:
        if v not in index:
            strong(v)
    return out


def test_no_upward_import():
    bad = [
        f"{m} ({tier(m)}) imports {t} ({tier(t)}) at line {line}"
        for m, e in graph().items()
        for t, line, _ in e
        if TIERS[tier(t)] > TIERS[tier(m)]
    ]
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_no_function_local_import_of_a_project_module():
    bad = [
        f"{m} imports {t} inside a function at line {line}"
        for m, e in graph().items()
        for t, line, f in e
        if f
    ]
    assert not bad, "\n".join(bad)


def test_the_engine_reaches_studies_only_lazily():
    """``mf.studies`` is an attribute through the package's ``__getattr__`` (importlib), so the
    engine never imports the studies tier when it is imported."""
    import subprocess
    import sys

    code = "import sys, meanfield as mf; assert not any(m.startswith('meanfield.studies') or m.startswith('meanfield.run') for m in sys.modules), sorted(sys.modules); mf.studies.recall; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_the_analyser_sees_what_it_checks():
    """Guard against an analyser that finds nothing: the engine package imports its kernel, the
    presets import the run tier, and a synthetic cycle is found."""
    edges = graph()
    assert any(t == "meanfield.kernel" for t, _, _ in edges["meanfield"])
    assert any(tier(t) == "run" for m, e in edges.items() if tier(m) == "presets" for t, _, _ in e)
    assert cycles({"a": [("b", 1, False)], "b": [("a", 1, False)], "c": []}) == [["a", "b"]]


def test_package_attributes_version_and_plain_examples():
    """Subpackages are attributes of ``meanfield``; the Abstract* bases are exported; the version
    comes from the installed metadata; docstring examples are plain code blocks (no untested
    ``>>>`` doctests)."""
    import importlib.metadata

    import meanfield as mf

    for name in ("pde", "sharding", "theory", "influence", "kernel", "geometry", "observables"):
        assert getattr(mf, name).__name__ == f"meanfield.{name}"
    for name in ("AbstractMask", "AbstractPE", "AbstractGeometry", "AbstractLayerMap"):
        assert getattr(mf, name).__name__ == name
    assert mf.__version__ == importlib.metadata.version("meanfield")
    doctests = [
        str(p)
        for folder in PACKAGES.values()
        for p in folder.rglob("*.py")
        if ">>> " in p.read_text()
    ]
    assert doctests == []


def test_jaxtyping_hook_checks_public_signatures():
    """The suite runs under jaxtyping's import hook (pyproject addopts), so annotated shapes are
    enforced: a 1-D array where tokens (N, d) are annotated is a TypeCheckError here (a user
    without the hook gets our own ValueError)."""
    import jaxtyping

    import meanfield as mf

    with pytest.raises(jaxtyping.TypeCheckError):
        mf.simulate(mf.Attention(1.0), jnp.ones(3), [0.0, 1.0])
    with pytest.raises(jaxtyping.TypeCheckError):  # dims bind across arguments: na differs
        mf.observables.wasserstein_1d(jnp.ones(3), jnp.ones(2), jnp.ones(4))


MAX_LINES = 550


def test_no_file_passes_the_line_cap():
    """No Python file of the project passes 550 lines: one that would is split along its subjects."""
    files = [
        p
        for p in ROOT.rglob("*.py")
        if not any(
            part.startswith(".") or part in ("build", "site") for part in p.relative_to(ROOT).parts
        )
    ]
    long = {
        str(p.relative_to(ROOT)): n
        for p in files
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert len(files) > 50 and not long, long


def _concrete_overrides(base, classes):
    """(class, method) pairs where a class below ``base`` redefines a concrete (non-abstract) method
    or property that a class between ``base`` and it already defines."""
    bad = []
    for cls in classes:
        mro = cls.__mro__
        for i, owner in enumerate(mro[1 : mro.index(base) + 1], start=1):
            for name, attr in vars(owner).items():
                if name.startswith("__") or getattr(attr, "__isabstractmethod__", False):
                    continue
                if not (callable(attr) or isinstance(attr, property)):
                    continue
                if any(name in vars(below) for below in mro[:i]):
                    bad.append(f"{cls.__name__}.{name} overrides {owner.__name__}.{name}")
    return bad


def test_strategy_hooks_are_abstract_or_final():
    """A density solver or an attention backend implements its base's abstract hooks and redefines
    none of its concrete methods (the step rule, the solve, the finite-volume right-hand side)."""
    from meanfield.kernel import backends
    from meanfield.pde import CircleMeanField, KineticMeanField, SphereMeanField
    from meanfield.pde._integrate import AbstractDensitySolver

    solvers = _concrete_overrides(
        AbstractDensitySolver, [CircleMeanField, KineticMeanField, SphereMeanField]
    )
    kernels = _concrete_overrides(
        backends.AbstractBackend,
        [
            backends.Dense,
            backends.Chunked,
            backends.Auto,
            backends.Fused,
            backends.Splash,
            backends.Cudnn,
        ],
    )
    assert solvers == [] and kernels == [], solvers + kernels
    base = type("Base", (), {"step": lambda self: 1})
    assert _concrete_overrides(base, [type("Solver", (base,), {"step": lambda self: 2})]) == [
        "Solver.step overrides Base.step"
    ]


def test_attention_names_no_backend():
    """``attention.py`` imports the backend contract and the default strategy, no backend module."""
    text = (ROOT / "meanfield" / "kernel" / "attention.py").read_text()
    imports = [line for line in text.splitlines() if line.startswith(("from ", "import "))]
    names = (
        "Dense",
        "Chunked",
        "Fused",
        "Splash",
        "Auto",
        "backends.dense",
        "backends.chunked",
        "backends.fused",
        "backends.splash",
        "backends.auto",
    )
    assert not [line for line in imports if any(n in line for n in names)], imports
