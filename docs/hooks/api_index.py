"""mkdocs hook: docs/api/index.md is generated at build time from each package's ``__all__`` and the
first line of each object's docstring (the file in the repository is a stub; one source of truth).

``python docs/hooks/api_index.py`` prints the generated page.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys

PACKAGES = (
    "meanfield",
    "meanfield.kernel",
    "meanfield.pde",
    "meanfield.theory",
    "meanfield.studies",
    "meanfield.run",
)
PAGE = "api/index.md"
WIDTH = 110

HEADER = """# API reference

Every public name, by the package that exports it; each links to its documentation, generated
from the docstrings. The pages document each module where its objects are defined:
[particles and geometry](particles.md), [kernel](kernel.md), [PDE solvers](pde.md), [theory](theory.md),
[observables](observables.md), [influence](influence.md), [sharding](sharding.md), [studies](studies.md)
and [the run tier](run.md). This page is generated from each package's `__all__` and the first
line of each docstring when the site is built.
"""


def first_line(obj) -> str:
    """The first sentence of the object's own docstring, on one line, cut to ``WIDTH`` characters."""
    if not (inspect.ismodule(obj) or inspect.isclass(obj) or inspect.isroutine(obj)):
        return ""
    doc = inspect.getdoc(obj) or ""
    text = " ".join(doc.strip().split("\n\n")[0].split())
    text = re.split(r"(?<=[^.\s])\.(?:\s|$)", text, maxsplit=1)[0].rstrip(".:")
    if len(text) > WIDTH:
        text = text[:WIDTH].rsplit(" ", 1)[0] + " …"
    return text.replace("|", "\\|")


def anchor(package: str, name: str, obj) -> str:
    """The identifier to link: a module's own path, a class's or function's public path (the
    package that exports it), a constant's defining module."""
    if inspect.ismodule(obj):
        return obj.__name__
    if inspect.isclass(obj) or inspect.isroutine(obj):
        return f"{package}.{obj.__name__}"  # an alias links to the object it names
    # a constant: the module below the package that binds the name to this very object
    owners = [
        m
        for m_name, m in sorted(sys.modules.items())
        if m_name.startswith(package + ".") and m is not None and getattr(m, name, None) is obj
    ]
    owners = [m for m in owners if not hasattr(m, "__path__")] or owners
    return f"{owners[0].__name__}.{name}" if owners else f"{package}.{name}"


def generate() -> str:
    parts = [HEADER]
    for package in PACKAGES:
        mod = importlib.import_module(package)
        parts.append(f"\n## `{package}`\n\n| name | what it is |\n| --- | --- |")
        for name in mod.__all__:
            obj = getattr(mod, name)
            parts.append(f"| [`{name}`][{anchor(package, name, obj)}] | {first_line(obj)} |")
    return "\n".join(parts) + "\n"


def on_page_markdown(markdown, page, **kwargs):
    """Replace the stub of docs/api/index.md by the generated page."""
    if page.file.src_uri == PAGE:
        return generate()
    return markdown


if __name__ == "__main__":
    print(generate(), end="")
