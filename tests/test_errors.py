"""A mistake in a command's input ends in one line naming the option or the file, exit status 2;
``--debug`` / ``NUIR_DEBUG=1`` show the traceback; a bug keeps it (``nuir._cli``).

The commands run as users run them, in subprocesses, all at once (each imports torch, train.py
Lightning too); ``nuir._cli``'s rules are also checked in this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from _helpers import ROOT, tiny_photo
from PIL import Image
from pytorch_lightning.callbacks import Callback

from nuir import _cli

TRAIN = [
    sys.executable,
    str(ROOT / "train.py"),
    "fit",
    "--config",
    str(ROOT / "configs/debug.yaml"),
]


def module(name: str) -> list[str]:
    return [sys.executable, "-m", name]


class FailInTraining(Callback):
    """A bug in the middle of training."""

    def on_train_batch_start(self, *args) -> None:
        raise ValueError("a bug in training")


def commands(folder: Path) -> dict[str, tuple[list[str], dict, list[str]]]:
    """name -> (command, extra environment, what its one line must name)."""
    photo = tiny_photo(folder / "photo.png", 16)
    text = folder / "notes.png"
    text.write_text("not an image\n")
    grey = folder / "grey.png"
    Image.new("L", (16, 16), 128).save(grey)
    missing = str(folder / "missing.png")
    fail = '{"class_path": "test_errors.FailInTraining"}'
    quiet = [
        "--model.sampler.n_points=64",
        "--trainer.logger=false",
        f"--trainer.default_root_dir={folder / 'runs'}",
    ]
    debug = {"NUIR_DEBUG": "1"}
    return {
        # train.py
        "missing image": ([*TRAIN, "--data.path", missing], {}, [missing]),
        "text as image": ([*TRAIN, "--data.path", str(text)], {}, [str(text)]),
        "n_points -5": (
            [*TRAIN, "--model.sampler.n_points", "-5"],
            {},
            ["--model.sampler", "n_points", "-5"],
        ),
        "unknown sampler option": (
            [*TRAIN, "--model.sampler.bogus", "3"],
            {},
            ["--model.sampler", "bogus"],
        ),
        "channels at set-up": (
            [*TRAIN, "--data.path", str(grey), *quiet],
            {},
            ["out_features"],
        ),
        "--debug": ([*TRAIN, "--data.path", missing, "--debug"], {}, [missing]),
        "bug in training": (
            [*TRAIN, "--data.path", str(photo), *quiet, f"--trainer.callbacks+={fail}"],
            {},
            ["a bug in training"],
        ),
        # the benchmarks and the other commands
        "render: missing checkpoint": (
            [*module("models.render"), str(folder / "none.ckpt")],
            {},
            ["none.ckpt"],
        ),
        "bench_render: bad argument": (
            [*module("models.bench_render"), "--scales", "x"],
            {},
            ["--scales"],
        ),
        "bench_train: no photo cache": (
            [*module("models.bench_train"), "--out", str(folder / "out")],
            {"NUIR_PHOTOS": str(folder / "cache")},
            [str(folder / "cache"), "python -m models.photos fetch"],
        ),
        "bench_objectives: missing image": (
            [
                *module("models.bench_objectives"),
                "--steps",
                "1",
                "--variants",
                "reconstruction objective",
                f"--override=--data.path={missing}",
            ],
            {},
            [missing],
        ),
        "photos: missing source": (
            [*module("models.photos"), "fetch", "--source", str(folder / "no-clone")],
            {"NUIR_PHOTOS": str(folder / "cache")},
            ["no-clone"],
        ),
        "NUIR_DEBUG": (
            [*module("models.photos"), "fetch", "--source", str(folder / "no-clone")],
            {"NUIR_PHOTOS": str(folder / "cache"), **debug},
            ["no-clone"],
        ),
        "nuir.bench: unknown benchmark": ([*module("nuir.bench"), "fastest"], {}, ["'fastest'"]),
        "nuir.bench: missing images": (
            [*module("nuir.bench"), "quality", "--images", str(folder / "no-folder")],
            {},
            ["no-folder"],
        ),
    }


DEBUGGING = {"--debug", "NUIR_DEBUG"}
BUGS = {"bug in training"}
ONE_LINE = [
    "missing image", "text as image", "n_points -5", "unknown sampler option",
    "channels at set-up", "render: missing checkpoint", "bench_render: bad argument",
    "bench_train: no photo cache", "bench_objectives: missing image", "photos: missing source",
    "nuir.bench: unknown benchmark", "nuir.bench: missing images",
]  # fmt: skip


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("errors")
    cases = commands(folder)
    environment = {k: v for k, v in os.environ.items() if k not in ("NUIR_DEBUG", "LOCAL_RANK")}
    paths = [str(ROOT / "tests"), environment.get("PYTHONPATH", "")]
    environment |= {"PYTHONPATH": os.pathsep.join(p for p in paths if p), "OMP_NUM_THREADS": "1"}

    def outcome(case):
        command, extra, names = case
        done = subprocess.run(
            command,
            env=environment | extra,
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=600,
        )
        return done, names

    assert set(cases) == set(ONE_LINE) | DEBUGGING | BUGS
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(cases, pool.map(outcome, cases.values())))


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error" in line.lower()]


@pytest.mark.parametrize("case", ONE_LINE)
def test_a_mistake_in_the_input_ends_in_one_line_and_status_2(outcomes, case) -> None:
    done, names = outcomes[case]
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    # The line is the last one and the only error; lines before it are Lightning's log of the
    # run's start (a successful run prints them too).
    assert error_lines(done.stderr) == lines[-1:], done.stderr[-3000:]
    assert lines[-1].startswith("error: ") and all(name in lines[-1] for name in names), lines
    assert not any(line.startswith(("Traceback", "usage:", "  File ")) for line in lines)


@pytest.mark.parametrize("case", sorted(DEBUGGING | BUGS))
def test_debugging_and_bugs_show_the_traceback(outcomes, case) -> None:
    done, names = outcomes[case]
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback (most recent call last)" in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(("FileNotFoundError", "ValueError")) and all(n in last for n in names)
    assert not any(line.startswith("error: ") for line in done.stderr.splitlines())


# --- nuir._cli's rules, in this process --------------------------------------------------------


def raising(error: BaseException, *, accepted_first: bool = False):
    """A command's main that raises ``error`` while reading its input (after declaring it read
    when ``accepted_first``)."""

    def main() -> int:
        with _cli.reading_input():
            if accepted_first:
                _cli.input_accepted()
            raise error

    return main


@pytest.fixture
def command_line(monkeypatch):
    monkeypatch.setenv("NUIR_DEBUG", "0")  # restored afterwards, though run_command sets it
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(sys, "argv", ["command"])
    return monkeypatch


def test_errors_while_reading_the_input_are_one_line(command_line, capsys) -> None:
    error = FileNotFoundError("image file not found: x.png\n(more)")
    assert _cli.run_command(raising(error)) == 2
    assert capsys.readouterr().err == "error: image file not found: x.png (more)\n"
    assert _cli.run_command(raising(_cli.InputError("--steps must be > 0"))) == 2
    assert capsys.readouterr().err == "error: --steps must be > 0\n"


def test_errors_after_the_input_is_read_or_of_other_types_propagate(command_line) -> None:
    with pytest.raises(ValueError, match="bug"):
        _cli.run_command(raising(ValueError("bug"), accepted_first=True))
    with pytest.raises(KeyError):
        _cli.run_command(raising(KeyError("bug")))
    with pytest.raises(ValueError, match="bug"):  # outside reading_input
        _cli.run_command(lambda: int("bug"))


def test_debug_flag_and_variable(command_line, capsys) -> None:
    command_line.setattr(sys, "argv", ["command", "--debug", "--steps", "3"])
    with pytest.raises(FileNotFoundError):
        _cli.run_command(raising(FileNotFoundError("x.png")))
    assert sys.argv == ["command", "--steps", "3"]
    assert os.environ["NUIR_DEBUG"] == "1"  # what the processes the command starts inherit
    command_line.setenv("NUIR_DEBUG", "0")
    assert _cli.run_command(raising(FileNotFoundError("x.png"))) == 2


def test_parser_errors_in_one_line_only_inside_a_command(command_line, capsys) -> None:
    import argparse

    def main() -> int:
        parser = argparse.ArgumentParser(prog="command")
        parser.add_argument("--steps", type=int)
        parser.parse_args(["--steps", "x"])
        return 0

    assert _cli.run_command(main) == 2
    assert capsys.readouterr().err == "error: argument --steps: invalid int value: 'x'\n"
    with pytest.raises(SystemExit):  # argparse's own behaviour outside run_command
        main()
    assert capsys.readouterr().err.startswith("usage: command")


def test_other_processes_of_a_launch_stay_silent(command_line, capsys) -> None:
    command_line.setenv("LOCAL_RANK", "1")
    assert _cli.run_command(raising(ValueError("bad"))) == 2
    assert capsys.readouterr().err == ""
