"""Ctrl-C that always stops a run, at a point where the run can be resumed.

While a run executes, SIGINT does not raise where it lands (inside JAX's own callbacks a
``KeyboardInterrupt`` can be swallowed: "Exception ignored in ..."). The first SIGINT sets a flag;
the executor checks it after every chunk call (the first includes compilation) and every host step,
writes the checkpoint of the work done so far and raises [`Interrupted`][meanfield.run.signals.Interrupted]
(the command exits 130). A second SIGINT exits 130 at once, keeping the last checkpoint written.

For tests, the environment variable ``MEANFIELD_PAUSE_AT`` (``chunk=K`` or ``step=K``: after the
K-th chunk call or host step of this process, counted from 1) with ``MEANFIELD_PAUSE_FILE`` makes
the executor create that file at that point and wait there (up to 120 s) until a SIGINT arrives, so
a test can interrupt a run at a known point without sleeping (``MEANFIELD_PAUSE_HOLD=1``: it stays
there after the first SIGINT too, so a second one can be sent).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

_STATE = {"flag": False, "hits": 0}


class Interrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C at a safe point; the message says what was kept (exit status 130)."""


def requested() -> bool:
    """True once a SIGINT arrived during the current run."""
    return _STATE["flag"]


def _handler(signum, frame):
    _STATE["hits"] += 1
    _STATE["flag"] = True
    if _STATE["hits"] >= 2:
        os.write(
            2,
            b"\nmeanfield: interrupted again; stopping at once (the last checkpoint written is kept)\n",
        )
        os._exit(130)


@contextlib.contextmanager
def sigint_as_flag():
    """Within the block, SIGINT sets the flag (twice: exit 130 at once). Outside the main thread,
    where handlers cannot be installed, SIGINT keeps Python's behaviour."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is _handler
    ):
        yield  # not installable here, or installed already by an enclosing block (the command)
        return
    _STATE.update(flag=False, hits=0)
    previous = signal.signal(signal.SIGINT, _handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _STATE.update(flag=False, hits=0)


_COUNTS = {"chunk": 0, "step": 0}


def safe_point(kind: str) -> None:
    """Called by the executor after each chunk call (``kind="chunk"``) or host step (``"step"``):
    the test pause hook (module docstring)."""
    _COUNTS[kind] += 1
    spec, path = os.environ.get("MEANFIELD_PAUSE_AT", ""), os.environ.get("MEANFIELD_PAUSE_FILE")
    if not path or spec != f"{kind}={_COUNTS[kind]}":
        return
    Path(path).write_text(f"{kind} {_COUNTS[kind]} pid {os.getpid()}\n")
    hold = (
        os.environ.get("MEANFIELD_PAUSE_HOLD") == "1"
    )  # stay after the first SIGINT (to test a second)
    deadline = time.monotonic() + 120
    while (hold or not _STATE["flag"]) and time.monotonic() < deadline:
        time.sleep(0.01)
