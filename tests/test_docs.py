"""The documentation: every Python code block of README.md and docs/*.md runs, and the built site
(mkdocs-material + mkdocstrings, `mkdocs build --strict`) documents every public name, shows no
leftover Sphinx role and builds without a warning.

A page's blocks run in page order in one fresh interpreter (one namespace), the way a reader would
paste them, with the page's folder as working directory unchanged (outputs go to a temporary
folder). Markers, an HTML comment on the line before a block or anywhere on the page:

* ``<!-- docs-test: skip REASON -->`` before a block: not run (REASON is required);
* ``<!-- docs-test: devices=8 -->`` on a page: run with 8 emulated CPU devices.

Each page takes 7 to 40 s (a fresh interpreter, compiles), so the page tests are marked slow.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
MARK = re.compile(r"<!-- docs-test: (.*?) -->")
ROLE = re.compile(r":(class|func|meth|mod|attr|obj|exc|data):`")
PACKAGES = (
    "meanfield",
    "meanfield.kernel",
    "meanfield.pde",
    "meanfield.theory",
    "meanfield.studies",
    "meanfield.run",
)


def python_blocks(text: str) -> list[tuple[str, str | None]]:
    """(code, marker of the line before the fence or None) for every ```python block."""
    out = []
    for m in FENCE.finditer(text):
        if m.group(1) != "python":
            continue
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        mark = MARK.search(before)
        out.append((m.group(2), mark.group(1) if mark else None))
    return out


def page_marks(text: str) -> set[str]:
    return {m.strip() for m in MARK.findall(text) if not m.startswith("skip")}


@pytest.mark.slow
@pytest.mark.parametrize(
    "page",
    [pytest.param(p, id=str(p.relative_to(ROOT))) for p in PAGES if python_blocks(p.read_text())],
)
def test_code_blocks_run(page, tmp_path):
    text = page.read_text()
    code = []
    for i, (block, mark) in enumerate(python_blocks(text)):
        if mark and mark.startswith("skip"):  # its reason: test_every_skip_marker_has_a_reason
            continue
        code.append(f"# --- block {i}\n{block}")
    env = dict(os.environ)
    if "devices=8" in page_marks(text):
        env["XLA_FLAGS"] = (
            env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
        ).strip()
    env["MPLBACKEND"] = "Agg"
    run = subprocess.run(
        [sys.executable, "-c", "\n".join(code)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, f"{page.name}:\n{run.stderr[-4000:]}"


def test_every_skip_marker_has_a_reason():
    for page in PAGES:
        for i, (_, mark) in enumerate(python_blocks(page.read_text())):
            if mark and mark.startswith("skip"):
                assert mark[len("skip") :].strip(), f"{page.name} block {i}"


def test_no_sphinx_role_in_docstrings_or_pages():
    """The docstrings are Markdown for mkdocstrings: a Sphinx role would show as literal text."""
    files = [
        *ROOT.joinpath("meanfield").rglob("*.py"),
        *ROOT.joinpath("experiments").rglob("*.py"),
        *PAGES,
    ]
    bad = [
        f"{f.relative_to(ROOT)}:{n}"
        for f in files
        for n, line in enumerate(f.read_text().splitlines(), 1)
        if ROLE.search(line)
    ]
    assert not bad, bad


def test_every_package_declares_all():
    for name in PACKAGES:
        mod = importlib.import_module(name)
        assert hasattr(mod, "__all__"), name
        assert all(hasattr(mod, n) for n in mod.__all__), name


# ----------------------------------------------------------------------------- the built site
@pytest.mark.slow
def test_site_builds_strict_without_warnings(site):
    out, run = site
    assert run.returncode == 0, run.stderr[-4000:]
    warnings = [line for line in run.stderr.splitlines() if re.match(r"\s*WARNING\b", line)]
    assert not warnings, warnings


@pytest.mark.slow
def test_api_reference_covers_every_public_name(site):
    """Every name in the __all__ of meanfield and of its subpackages has an anchor in the API pages:
    at the path it is exported from, at its defining module's path, or (constants, and objects of
    private modules documented where they are exported) an anchor ending in ``.name``."""
    out, run = site
    assert run.returncode == 0, run.stderr[-4000:]
    html = "".join(p.read_text() for p in (out / "api").rglob("*.html"))
    ids = set(re.findall(r'id="([^"]+)"', html))
    missing = []
    for name in PACKAGES:
        mod = importlib.import_module(name)
        for n in mod.__all__:
            obj = getattr(mod, n)
            canonical = f"{getattr(obj, '__module__', name)}.{getattr(obj, '__qualname__', n)}"
            if not (
                {f"{name}.{n}", canonical, getattr(obj, "__name__", None)} & ids
                or any(i.endswith(f".{n}") and i.startswith("meanfield") for i in ids)
            ):
                missing.append(f"{name}.{n}")
    assert not missing, missing


@pytest.mark.slow
def test_built_html_has_no_sphinx_role(site):
    out, run = site
    assert run.returncode == 0, run.stderr[-4000:]
    bad = [str(p.relative_to(out)) for p in out.rglob("*.html") if ROLE.search(p.read_text())]
    assert not bad, bad


def test_api_index_lists_every_public_name():
    """The generated API index (docs/hooks/api_index.py, run by mkdocs) has a row for every name of
    every package's __all__ (and no stale row)."""
    spec = importlib.util.spec_from_file_location(
        "api_index", ROOT / "docs" / "hooks" / "api_index.py"
    )
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    assert hook.PACKAGES == PACKAGES
    text = hook.generate()
    sections = re.split(r"^## `([\w.]+)`$", text, flags=re.M)
    listed = {
        sections[i]: set(re.findall(r"^\| \[`(\w+)`\]", sections[i + 1], re.M))
        for i in range(1, len(sections), 2)
    }
    for name in PACKAGES:
        assert listed.get(name) == set(importlib.import_module(name).__all__), name
