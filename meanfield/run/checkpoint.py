"""DIR/checkpoint.npz: the one place that knows its keys.

A checkpoint holds the run's description (``meta``: preset, config, grid, version; a resume with
other settings is refused) and where the run stands:

* traced presets: ``pos`` = (group, chunk) of the next chunk call, the finished groups' records
  (``done{g}_{name}``) and, inside a group, its state leaves (``state_{i}``) and the records so far
  (``cur_{name}``);
* step presets: every finished step's arrays (``host::{step}::{name}``).

Writes are atomic ([`save_npz_atomic`][meanfield.run.io.save_npz_atomic]) and by the writing process only.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..sharding import is_writer
from .io import save_npz_atomic

NAME = "checkpoint.npz"
STEP_SEP = "::"


class CheckpointError(RuntimeError):
    """An unreadable checkpoint, or one written by another run (the executor's RunError)."""


@dataclasses.dataclass
class Saved:
    """What a checkpoint holds, read back: the next (group, chunk), the finished groups' records,
    the state leaves and records of the group in progress, the finished steps' arrays."""

    group: int = 0
    chunk: int = 0
    done: list[dict] = dataclasses.field(default_factory=list)
    state: list[np.ndarray] = dataclasses.field(default_factory=list)
    current: dict = dataclasses.field(default_factory=dict)
    steps: dict = dataclasses.field(default_factory=dict)


class Checkpoint:
    """The checkpoint of the run described by ``meta`` in the folder ``outdir``."""

    def __init__(self, outdir: Path, meta: str):
        self.path = Path(outdir) / NAME
        self.meta = meta

    def exists(self) -> bool:
        return self.path.exists()

    def remove(self) -> None:
        if self.path.exists():
            self.path.unlink()

    # ------------------------------------------------------------------ reading
    def load(self, n_groups: int, describe_difference) -> Saved:
        """The saved position and arrays; a one-line CheckpointError naming the file as corrupt
        (truncated, not an npz, keys missing, a position out of range, a non-finite state) or as
        written by a different run (``describe_difference(old_meta, new_meta)`` says how)."""
        try:
            with np.load(self.path, allow_pickle=False) as npz:
                raw = {k: npz[k] for k in npz.files}
        except (
            Exception
        ) as err:  # BadZipFile, EOFError, ValueError, OSError: whatever a damaged file raises
            raise CheckpointError(
                f"{self.path} is corrupt ({type(err).__name__}: {err}); "
                "delete it or pass --force to start over"
            ) from None
        problem = None
        if "meta" not in raw or "pos" not in raw:
            problem = "no meta/pos record"
        elif (
            raw["pos"].shape != (2,)
            or not 0 <= int(raw["pos"][0]) <= n_groups
            or int(raw["pos"][1]) < 0
        ):
            problem = f"position {raw['pos'].tolist()} out of range"
        else:
            bad = [
                k
                for k, v in raw.items()
                if k.startswith("state_") and v.dtype.kind in "fc" and not np.all(np.isfinite(v))
            ]
            problem = f"non-finite values in {bad[0]}" if bad else None
        if problem:
            raise CheckpointError(
                f"{self.path} is corrupt ({problem}); delete it or pass --force to start over"
            )
        if str(raw["meta"]) != self.meta:
            raise CheckpointError(
                f"{self.path} was written by a different run ({describe_difference(str(raw['meta']), self.meta)}); "
                "refusing to resume (rerun with the same settings, or --force to start over)"
            )
        saved = Saved(group=int(raw["pos"][0]), chunk=int(raw["pos"][1]))
        for g in range(saved.group):
            prefix = f"done{g}_"
            saved.done.append({k[len(prefix) :]: v for k, v in raw.items() if k.startswith(prefix)})
        n_state = sum(k.startswith("state_") for k in raw)
        saved.state = [raw[f"state_{i}"] for i in range(n_state)]
        saved.current = {k[4:]: v for k, v in raw.items() if k.startswith("cur_")}
        for key, value in raw.items():
            if key.startswith("host" + STEP_SEP):
                _, step, var = key.split(STEP_SEP, 2)
                saved.steps.setdefault(step, {})[var] = value
        return saved

    # ------------------------------------------------------------------ writing
    def save_traced(
        self,
        group: int,
        chunk: int,
        done: list[dict],
        state: list | None = None,
        current: dict | None = None,
    ) -> None:
        """The position (``group``, ``chunk``) of the next chunk call, the finished groups' records
        and, inside a group, its state leaves and records so far."""
        arrays = {"meta": np.asarray(self.meta), "pos": np.asarray([group, chunk])}
        for g, records in enumerate(done):
            arrays.update({f"done{g}_{n}": a for n, a in records.items()})
        arrays.update({f"state_{i}": a for i, a in enumerate(state or [])})
        arrays.update({f"cur_{n}": a for n, a in (current or {}).items()})
        self._write(arrays)

    def save_steps(self, steps: dict) -> None:
        """Every finished step's arrays, ``steps[name][var]``."""
        arrays = {"meta": np.asarray(self.meta), "pos": np.asarray([0, 0])}
        for step, values in steps.items():
            arrays.update({f"host{STEP_SEP}{step}{STEP_SEP}{k}": v for k, v in values.items()})
        self._write(arrays)

    def _write(self, arrays: dict) -> None:
        if is_writer():
            save_npz_atomic(self.path, arrays)
