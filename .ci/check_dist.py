"""Check the built distributions against the source tree (run by .ci/run after `python -m build`).

The wheel must hold exactly the package files of the checkout: every file under meanfield/ and every
module of experiments/ (installed as meanfield_experiments/), no more and no less, plus its
.dist-info. The sdist must hold every one of them too. Prints the comparison; exits 1 on a difference.

    python .ci/check_dist.py DIST_DIR
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def source_files() -> set[str]:
    """The package files of the checkout as the wheel names them (tracked files only)."""
    tracked = subprocess.run(
        ["git", "ls-files", "meanfield", "experiments"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    out = set()
    for f in tracked:
        if f.startswith("experiments/"):
            if not f.endswith(".py"):
                continue
            f = "meanfield_experiments/" + f[len("experiments/") :]
        out.add(f)
    return out


def main(dist: str) -> int:
    dist_dir = Path(dist)
    wheels, sdists = sorted(dist_dir.glob("*.whl")), sorted(dist_dir.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        print(f"expected one wheel and one sdist in {dist_dir}, found {wheels + sdists}")
        return 1
    src = source_files()
    with zipfile.ZipFile(wheels[0]) as zf:
        in_wheel = {n for n in zf.namelist() if ".dist-info/" not in n}
    missing, extra = sorted(src - in_wheel), sorted(in_wheel - src)
    print(
        f"{wheels[0].name}: {len(in_wheel)} package files; source tree: {len(src)}; "
        f"missing from the wheel: {missing or 'none'}; not in the source tree: {extra or 'none'}"
    )
    with tarfile.open(sdists[0]) as tf:
        top = tf.getnames()[0].split("/")[0]
        in_sdist = {n[len(top) + 1 :] for n in tf.getnames()}
    src_tree = {
        ("experiments/" + f[len("meanfield_experiments/") :])
        if f.startswith("meanfield_experiments/")
        else f
        for f in src
    }
    sdist_missing = sorted(src_tree - in_sdist)
    print(f"{sdists[0].name}: missing from the sdist: {sdist_missing or 'none'}")
    return 1 if (missing or extra or sdist_missing) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
