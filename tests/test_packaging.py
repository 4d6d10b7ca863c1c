"""Packaging: the explicit package list of pyproject.toml cannot miss a subpackage.

`[tool.setuptools] packages` is written by hand (the presets folder experiments/ is installed under
another name, meanfield_experiments, which `packages.find` cannot express). A subpackage left out of
it is silently absent from every wheel and sdist, and `import meanfield` fails outside an editable
install. .ci/run builds both distributions from the tracked files and installs the wheel into a fresh
environment (.ci/check_dist.py compares the wheel's file list with the source tree).
"""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_package_list_is_every_package_folder():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(config["packages"])
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "meanfield").rglob("__init__.py")
    }
    assert declared == on_disk | {"meanfield_experiments"}, (
        sorted(on_disk - declared),
        sorted(declared - on_disk),
    )
    assert config["package-dir"] == {"meanfield_experiments": "experiments"}
    assert (ROOT / "experiments" / "__init__.py").exists()
