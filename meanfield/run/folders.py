"""Output folders: one writer per folder (an exclusive lock the kernel releases on any death of the
process), created and removed by the run that made them."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
from pathlib import Path

from ..sharding import is_writer
from .config import ConfigError


class Locked(RuntimeError):
    """Another run holds the output folder's lock: exit status 5."""


LOCK_NAME = ".meanfield.lock"
RUN_RECORD = "run.json"  # the resolved config and the overrides that made it


@contextlib.contextmanager
def folder_lock(outdir: Path):
    """An exclusive ``fcntl.flock`` on DIR/.meanfield.lock for the whole run (the kernel releases it
    on any death of the process, SIGKILL included). The file records the holder's host and pid for
    the message a second writer gets ([`Locked`][meanfield.run.folders.Locked]). Only the writing process locks."""
    if not is_writer():
        yield
        return
    fh = open(outdir / LOCK_NAME, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        who = fh.read().strip() or "unknown process"
        fh.close()
        raise Locked(
            f"{outdir} is being written by another meanfield run ({who}); wait for it or pass another --out"
        ) from None
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"host {socket.gethostname()} pid {os.getpid()}\n")
        fh.flush()
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def _make_outdir(outdir: Path) -> bool:
    """Create the output folder (one-line ConfigError if impossible); True if it was created here."""
    try:
        existed = outdir.is_dir()
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"--out {outdir}: cannot create the output folder ({err.strerror or err})"
        ) from None
    if not os.access(outdir, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {outdir}: the output folder is not writable")
    return not existed


def _remove_if_empty(outdir: Path, keep_record: bool = False) -> None:
    """Remove a folder this run created when nothing but its lock file and run record is in it
    (``keep_record``: when nothing but its lock file is, so an interrupted run's record stays for
    ``--resume``)."""
    try:
        if {p.name for p in outdir.iterdir()} <= (
            {LOCK_NAME} if keep_record else {LOCK_NAME, RUN_RECORD}
        ):
            shutil.rmtree(outdir)
    except OSError:
        pass
