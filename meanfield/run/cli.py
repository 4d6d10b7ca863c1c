"""The meanfield command.

    meanfield list                                    presets with one-line descriptions
    meanfield show PRESET                             its config keys, types, defaults and valid ranges
    meanfield run PRESET [--set key=value|file.toml ...] [--out DIR] [--resume] [--force]
    meanfield sweep PRESET --grid key=v1,v2,... [--grid ...] [--set ...] [--out DIR] [--shard I/N|auto]
    meanfield merge OUT                               combine OUT/shards/* into OUT/result.nc
    meanfield plot DIR                                redraw the figures of a finished run
    meanfield figures [PRESET ...] [--docs DIR]       rerun presets at their defaults, copy the PNGs to docs/figures

Devices: --mesh auto|none|data|tokens|data,tokens|data=2,tokens=4 lays sweep points over the
mesh's data axis and each run's tokens over its tokens axis (meanfield.sharding; default auto).
Multi-host: --distributed (or the environment variable JAX_COORDINATOR_ADDRESS, with
JAX_NUM_PROCESSES and JAX_PROCESS_ID) calls jax.distributed.initialize() first; every process
runs the same command, process 0 writes the outputs.

Exit status: 0 success, 2 bad arguments/keys/values/paths, 3 refused (existing result, unfinished
run without --resume, mismatched checkpoint), 4 paused by --max-chunks (checkpoint written;
continue with --resume), 5 another run holds the output folder's lock, 6 solver failure (a
solve's state became non-finite or negative: the line names the time and the remedy; the last
checkpoint is kept), 130 interrupted (Ctrl-C; the last checkpoint is kept: continue with --resume). Runs use float64 (reference precision).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import xarray as xr

from .. import __version__
from .._errors import SolverError, last_traced_failure, quiet_traced_failures
from .config import ConfigError, apply_overrides, describe, override_keys
from .executor import Paused, RunError, execute
from .folders import Locked
from .signals import Interrupted, sigint_as_flag
from .signals import requested as interrupt_requested
from .presets import get_preset, load_presets, parse_grid
from .shards import SHARD_FILE, check_shard, parse_shard, shard_dir, shard_dirs
from .sweeps import merge


def _parser():
    ap = argparse.ArgumentParser(
        prog="meanfield", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--version", action="version", version=f"meanfield {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list presets")
    sh = sub.add_parser("show", help="config keys of a preset (with --set: the resolved config)")
    sh.add_argument("preset")
    sh.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE|FILE.toml",
        help="override a config key",
    )
    for name in ("run", "sweep"):
        p = sub.add_parser(name, help=f"{name} a preset")
        p.add_argument("preset")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE|FILE.toml",
            help="override a config key",
        )
        if name == "sweep":
            p.add_argument(
                "--grid", action="append", required=True, metavar="KEY=V1,V2,...", help="swept key"
            )
            p.add_argument(
                "--shard",
                default=None,
                metavar="I/N|auto",
                help="run part I of N of the grid into OUT/shards/I-of-N (auto: the SLURM array "
                "task's rank); combine the parts with meanfield merge OUT",
            )
        else:  # accepted only to answer it: sweeps are `meanfield sweep`
            p.add_argument("--grid", action="append", default=None, help=argparse.SUPPRESS)
        p.add_argument(
            "--out", default=None, help="output directory (default out/PRESET or out/PRESET-sweep)"
        )
        p.add_argument(
            "--resume", action="store_true", help="continue an interrupted run from its checkpoint"
        )
        p.add_argument(
            "--force",
            action="store_true",
            help="overwrite a finished result / discard a checkpoint",
        )
        p.add_argument(
            "--checkpoint-every", type=int, default=1, metavar="K", help="checkpoint every K chunks"
        )
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        p.add_argument(
            "--mesh",
            default="auto",
            metavar="SPEC",
            help="device mesh: auto, none, data, tokens, data,tokens or data=2,tokens=4 (default auto)",
        )
        p.add_argument(
            "--distributed",
            action="store_true",
            help="multi-host: call jax.distributed.initialize() first",
        )
        p.add_argument(
            "--max-chunks",
            type=int,
            default=None,
            metavar="K",
            help="stop after K chunks with a checkpoint (exit 4); continue with --resume",
        )
    mg = sub.add_parser(
        "merge", help="combine the shards OUT/shards/* of a sweep into OUT/result.nc"
    )
    mg.add_argument("out")
    pl = sub.add_parser("plot", help="redraw figures from DIR/result.nc")
    pl.add_argument("dir")
    fg = sub.add_parser(
        "figures",
        help="rerun presets at their defaults and copy their figures (README's docs/figures)",
    )
    fg.add_argument("presets", nargs="*", help="presets to rerun (default: all)")
    fg.add_argument(
        "--out", default="out/figures", help="run folders (one per preset; default out/figures)"
    )
    fg.add_argument(
        "--docs", default="docs/figures", help="where the PNGs are copied (default docs/figures)"
    )
    fg.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def _initialize_distributed():
    """jax.distributed.initialize() with JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
    JAX_PROCESS_ID where set, else from the cluster's own environment (SLURM, TPU pods, ...).
    On CPU hosts the collectives between processes go through gloo."""
    env = os.environ
    kw = {}
    if env.get("JAX_COORDINATOR_ADDRESS"):
        kw["coordinator_address"] = env["JAX_COORDINATOR_ADDRESS"]
    if env.get("JAX_NUM_PROCESSES"):
        kw["num_processes"] = int(env["JAX_NUM_PROCESSES"])
    if env.get("JAX_PROCESS_ID"):
        kw["process_id"] = int(env["JAX_PROCESS_ID"])
    if jax.config.jax_platforms in (None, "", "cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kw)


def _figures(args) -> int:
    """Rerun presets at their defaults (each into OUT/NAME, replacing an earlier run) and copy their
    PNGs into DOCS: the figures README shows, regenerated by one command."""
    presets = load_presets()
    names = args.presets or sorted(presets)
    unknown = sorted(set(names) - set(presets))
    if unknown:
        raise ConfigError(f"unknown presets {unknown}; see meanfield list")
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    for name in names:
        preset = presets[name]
        out = Path(args.out) / name
        t0 = time.perf_counter()
        execute(
            preset,
            preset.Config(),
            parse_grid(preset.Config(), None),
            out,
            force=True,
            progress=not args.no_progress,
        )
        for png in sorted(out.glob("*.png")):
            shutil.copyfile(png, docs / png.name)
            print(f"{name}: {docs / png.name} ({time.perf_counter() - t0:.0f} s)")
    return 0


def _recorded_overrides(out: Path, name: str) -> list[str]:
    """The --set overrides recorded in DIR/run.json by the run being resumed (none if absent)."""
    path = out / "run.json"
    try:
        if not path.exists():
            return []
    except OSError as err:  # e.g. a name over the file system's limit
        raise ConfigError(f"--out {out}: {err.strerror or err}") from None
    try:
        rec = json.loads(path.read_text())
    except ValueError:
        raise ConfigError(
            f"{path} is not valid JSON; pass the run's --set overrides again"
        ) from None
    if rec.get("preset") != name:
        raise ConfigError(f"{out} holds a run of {rec.get('preset')!r}, not {name!r}")
    return [str(s) for s in rec.get("set", [])]


def main(argv=None) -> int:
    try:
        # errors raised inside traced solves are reported below, in one line; Ctrl-C sets a flag that
        # runs check at safe points (meanfield.run.signals), for the whole command
        with quiet_traced_failures(), sigint_as_flag():
            code = _main(argv)
            if (
                interrupt_requested() and code == 0
            ):  # Ctrl-C after the last safe point: the work is done
                print(
                    "meanfield: interrupted at the end; the outputs are complete", file=sys.stderr
                )
                code = 130
        return code
    except BrokenPipeError:  # e.g. `meanfield list | head`: the reader left; not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Interrupted as err:  # Ctrl-C at a safe point of a run: what was kept is in the message
        print(f"meanfield: {err}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # before a run started (or outside the main thread)
        print(
            "meanfield: interrupted; a checkpoint written before, if any, is kept (continue with --resume)",
            file=sys.stderr,
        )
        return 130


def _main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "distributed", False) or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        _initialize_distributed()
    jax.config.update("jax_enable_x64", True)  # entry point: reference precision

    try:
        if args.cmd == "list":
            for name, preset in sorted(load_presets().items()):
                print(f"{name:<20} {preset.description}")
            return 0
        if args.cmd == "show":
            preset = get_preset(args.preset)
            cfg = apply_overrides(preset.Config(), args.set) if args.set else None
            print(f"{preset.name}: {preset.description}\n{describe(preset.Config, cfg)}")
            return 0
        if args.cmd == "figures":
            return _figures(args)
        if args.cmd == "merge":
            ds = merge(args.out)
            print(
                f"{ds.attrs['preset']}: merged {len(shard_dirs(args.out))} shard folder(s); dims {dict(ds.sizes)}"
            )
            print(f"wrote {Path(args.out) / 'result.nc'}")
            return 0
        if args.cmd == "plot":
            path = Path(args.dir) / "result.nc"
            if not path.exists():
                raise ConfigError(f"{path} not found")
            try:
                ds = xr.load_dataset(path)
            except Exception as err:  # truncated or not a netCDF file
                raise ConfigError(
                    f"{path} cannot be read ({type(err).__name__}: {err}); rerun the preset"
                ) from None
            if "preset" not in ds.attrs or "config" not in ds.attrs:
                raise ConfigError(
                    f"{path} was not written by meanfield run (no preset/config attributes)"
                )
            preset = get_preset(ds.attrs["preset"])
            try:
                figs = preset.plot(ds, args.dir)
            except OSError:
                raise
            except (
                Exception
            ) as err:  # missing variables, another preset's attrs, a hand-edited file
                raise ConfigError(
                    f"{path} is not a complete {preset.name} result ({type(err).__name__}: {err}); "
                    "rerun the preset"
                ) from None
            for fig in figs:
                print(f"wrote {fig}")
            return 0
        preset = get_preset(args.preset)
        if args.cmd == "run" and args.grid:
            grids = " ".join(f"--grid {g}" for g in args.grid)
            raise ConfigError(
                f"--grid is for sweeps: meanfield sweep {preset.name} {grids} (meanfield run takes --set)"
            )
        out = Path(args.out or f"out/{preset.name}{'-sweep' if args.cmd == 'sweep' else ''}")
        if (
            args.resume and not args.set and args.cmd == "run"
        ):  # the overrides of the run being resumed
            args.set = _recorded_overrides(out, preset.name)
        cfg = apply_overrides(preset.Config(), args.set)
        grid = parse_grid(cfg, args.grid if args.cmd == "sweep" else None)
        both = sorted(set(grid.keys) & override_keys(args.set))
        if both:
            raise ConfigError(f"{both} both set (--set) and swept (--grid); give each key one way")
        shard = None
        if getattr(args, "shard", None) is not None:
            shard = check_shard(parse_shard(args.shard), len(grid.points()))
            out = shard_dir(out, shard)
        t0 = time.perf_counter()
        ds = execute(
            preset,
            cfg,
            grid,
            out,
            shard=shard,
            resume=args.resume,
            force=args.force,
            checkpoint_every=args.checkpoint_every,
            progress=not args.no_progress,
            mesh=args.mesh,
            max_chunks=args.max_chunks,
            invocation={
                "set": list(args.set),
                "grid_specs": list(getattr(args, "grid", None) or []),
            },
        )
        print(f"{preset.name}: done in {time.perf_counter() - t0:.1f} s; dims {dict(ds.sizes)}")
        if jax.process_index() == 0:  # the writer (multi-host: the other processes write nothing)
            figs = sorted(str(p) for p in out.glob("*.png"))
            name = "result.nc" if shard is None else SHARD_FILE
            print(f"wrote {out / name}" + "".join(f"\nwrote {f}" for f in figs))
        return 0
    except ConfigError as err:
        print(f"meanfield: error: {err}", file=sys.stderr)
        return 2
    except RunError as err:
        print(f"meanfield: refused: {err}", file=sys.stderr)
        return 3
    except Paused as err:
        print(f"meanfield: {err}", file=sys.stderr)
        return 4
    except Locked as err:
        print(f"meanfield: busy: {err}", file=sys.stderr)
        return 5
    except SolverError as err:
        print(f"meanfield: solver failure: {err}", file=sys.stderr)
        return 6
    except (
        OSError
    ) as err:  # a full disk, a name over the file system's limit, a folder removed mid-run
        name = f" {err.filename}" if err.filename else ""
        print(
            f"meanfield: refused: cannot write{name}: {err.strerror or err}; a checkpoint written before, "
            "if any, is kept",
            file=sys.stderr,
        )
        return 3
    except (
        ValueError
    ) as err:  # the engine's own input checks (one line); MEANFIELD_DEBUG=1 re-raises
        if os.environ.get("MEANFIELD_DEBUG"):
            raise
        print(
            f"meanfield: error: {str(err).splitlines()[0] if str(err) else type(err).__name__}",
            file=sys.stderr,
        )
        return 2
    except (jax.errors.JaxRuntimeError, eqx.EquinoxRuntimeError):
        # a check that fired inside a traced solve: its one line was recorded by the callback
        last = last_traced_failure()
        if last is None or os.environ.get("MEANFIELD_DEBUG"):
            raise
        line, kind = last
        print(f"meanfield: {line}", file=sys.stderr)
        return 6 if kind is SolverError else 2


def entry() -> None:
    """The ``meanfield`` command (console script): [`main`][meanfield.run.cli.main], then exit with its
    status. A Ctrl-C after the command finished (while the interpreter shuts down) is ignored, so the
    status stays what the command decided."""
    code = main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)


if __name__ == "__main__":
    entry()
