"""The command's progress bar reaches 100 % and ends its line, on a single run, a sweep, a resumed
run and a preset of host steps. The bar is read from the captured stderr, with the display delay
set to 0 so that even a tiny run draws it."""

import re

import pytest

from meanfield.run import executor
from meanfield.run.cli import main

TINY = ["--set", "n=8", "--set", "t1=3", "--set", "n_save=7", "--set", "chunks=3"]


@pytest.fixture(autouse=True)
def _no_delay(monkeypatch):
    monkeypatch.setattr(executor, "PROGRESS_DELAY", 0.0)


def bar_lines(err: str, desc: str) -> list[str]:
    """The final state of each bar line of ``desc`` (the text after its last carriage return)."""
    return [
        line.rsplit("\r", 1)[-1]
        for line in err.split("\n")
        if re.search(rf"{re.escape(desc)}:\s+\d+%\|", line)
    ]


def check_finished(err: str, desc: str, total: int) -> None:
    lines = bar_lines(err, desc)
    assert lines, err
    last = lines[-1]
    assert re.search(rf"100%.*\b{total}/{total}\b", last), repr(last)
    # the bar's line is ended: the post-processing note starts a line of its own
    assert re.search(r"\n[^\r\n]*post-processing", err), repr(err[-600:])


def test_single_run_bar_reaches_100(tmp_path, capsys):
    assert main(["run", "clustering", "--out", str(tmp_path / "a"), *TINY]) == 0
    check_finished(capsys.readouterr().err, "clustering", 3)


def test_sweep_bar_reaches_100(tmp_path, capsys):
    # beta is batched (one group); t1 is static (two groups): 2 groups x 3 chunks
    sets = ["--set", "n=8", "--set", "n_save=7", "--set", "chunks=3"]
    assert (
        main(
            [
                "sweep",
                "clustering",
                "--grid",
                "beta=1,2",
                "--grid",
                "t1=2,3",
                "--out",
                str(tmp_path / "s"),
                *sets,
            ]
        )
        == 0
    )
    check_finished(capsys.readouterr().err, "clustering", 6)


def test_resumed_run_bar_reaches_100(tmp_path, capsys):
    out = str(tmp_path / "r")
    assert main(["run", "clustering", "--out", out, "--max-chunks", "1", *TINY]) == 4
    capsys.readouterr()
    assert main(["run", "clustering", "--out", out, "--resume", *TINY]) == 0
    err = capsys.readouterr().err
    check_finished(err, "clustering", 3)
    assert re.search(r"\| 1/3 ", err)  # it resumed after the first chunk


def test_host_step_bar_reaches_100(tmp_path, capsys):
    sets = ["depths=1,2,4", "ns=64,128", "n_conv=64,128,256"]
    assert (
        main(
            ["run", "cesaro", "--out", str(tmp_path / "c"), *sum((["--set", s] for s in sets), [])]
        )
        == 0
    )
    err = capsys.readouterr().err
    lines = bar_lines(err, "cesaro (host steps)")
    assert lines and re.search(r"100%", lines[-1]), repr(err[-800:])
