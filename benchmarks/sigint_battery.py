"""Reliability battery (not a timing): Ctrl-C at random points of a real run.

Runs ``meanfield run metastability`` (30 chunks) once uninterrupted (the reference), then N times with a SIGINT at a
uniformly random time between the end of the command's start-up (import) and the reference run's
end. Each interrupted run must exit 130; then ``--resume`` must give a result bit-identical to the
reference, or say plainly that there is nothing to resume (or that the result is complete). A signal
that arrives after the command has finished (while the interpreter exits) changes nothing: exit 0,
and the result must equal the reference.

    python benchmarks/sigint_battery.py [N] [--seed S]
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr

# the metastability preset at a long horizon: 30 chunks of similar cost after the compiling first one
PRESET = "metastability"
SETS = [
    "--set",
    "n=24",
    "--set",
    "t1=1e4",
    "--set",
    "n_save=61",
    "--set",
    "chunks=30",
    "--no-progress",
]


def cli(args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "meanfield.run.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int, nargs="?", default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import meanfield.run.cli"], check=True)
    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = cli(["run", PRESET, "--out", str(work / "ref"), *SETS])
    ref.communicate()
    t_run = time.perf_counter() - t0
    assert ref.returncode == 0
    reference = xr.load_dataset(work / "ref" / "result.nc")
    print(
        f"import {t_import:.1f} s, uninterrupted run {t_run:.1f} s; SIGINT uniform in [{t_import:.1f}, {t_run:.1f}] s"
    )
    bad = 0
    for i in range(args.n):
        out = work / f"run{i}"
        when = rng.uniform(t_import, t_run)
        proc = cli(["run", PRESET, "--out", str(out), *SETS])
        time.sleep(when)
        proc.send_signal(2)
        stdout, err = proc.communicate()
        line = err.strip().splitlines()[-1] if err.strip() else ""
        finished = (
            proc.returncode == 0 and "done in" in stdout
        )  # the signal came after the command ended
        resume = subprocess.run(
            [
                sys.executable,
                "-m",
                "meanfield.run.cli",
                "run",
                PRESET,
                "--out",
                str(out),
                "--resume",
                "--no-progress",
            ],
            capture_output=True,
            text=True,
        )
        if resume.returncode == 0:
            got = xr.load_dataset(out / "result.nc")
            same = all(
                np.array_equal(got[v].values, reference[v].values) for v in reference.data_vars
            )
            verdict = "resumed, bit-identical" if same else "resumed, DIFFERENT"
        else:
            same = "nothing to resume" in resume.stderr
            verdict = f"exit {resume.returncode}: {resume.stderr.strip().splitlines()[-1]}"
        if finished:  # nothing was interrupted: the result must be the reference's
            got = xr.load_dataset(out / "result.nc")
            same = all(
                np.array_equal(got[v].values, reference[v].values) for v in reference.data_vars
            )
            verdict = (
                "the command had finished (exit 0); result bit-identical"
                if same
                else "finished, DIFFERENT"
            )
        ok = (proc.returncode == 130 or finished) and same
        bad += not ok
        print(
            f"{i:2d}  SIGINT at {when:5.2f} s  exit {proc.returncode}  [{line[:90]}]  --resume: {verdict}"
        )
    shutil.rmtree(work)
    print(
        f"{args.n - bad} of {args.n} runs: exit 130 and a bit-identical resume or an honest 'nothing to resume' "
        "(or the command had already finished, with the reference result)"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
