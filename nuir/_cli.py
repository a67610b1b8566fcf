"""How nuir's commands end on a mistake in their input: one line on stderr, exit status 2.

A command's input is its arguments and the files they name. A mistake there (a path that does
not exist, a file that is not an image, an option out of range, a photo cache never fetched)
ends the command with ``error: <message>``, one line naming the option or the file, and exit
status 2. Anything else (a bug) keeps its traceback. ``--debug`` anywhere on the command line,
or ``NUIR_DEBUG=1`` in the environment, shows the full traceback of every error instead (and
argparse's usage message for a bad argument).

What counts as the input's mistake:

- argparse's errors: a command's parsers report them through this module in one line;
- :class:`InputError`, raised where the code knows the input is at fault;
- an error of a type in :data:`INPUT_ERRORS` raised inside :func:`reading_input` before the
  command calls :func:`input_accepted` (``train.py``: parsing, building the model and the data,
  and their set-up inside Lightning's ``fit``, up to the start of training);
- an error a command's ``main`` hands to :func:`input_error` itself.

Every command ends with ``raise SystemExit(run_command(main))``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

DEBUG_FLAG = "--debug"
DEBUG_VARIABLE = "NUIR_DEBUG"
#: The types of error that reading a command's input raises for a mistake in it.
INPUT_ERRORS = (OSError, ValueError, TypeError, argparse.ArgumentError)
_MARK = "_nuir_input_error"
_acceptances = 0  # how many times a command declared its input read (input_accepted)


class InputError(Exception):
    """An error in the user's input, wherever it is raised."""


def debugging() -> bool:
    """Whether errors show their traceback (``NUIR_DEBUG`` set to anything but 0)."""
    return os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


@contextmanager
def reading_input() -> Iterator[None]:
    """Errors of the :data:`INPUT_ERRORS` types raised inside, until :func:`input_accepted`, are
    the input's: they propagate unchanged, and :func:`run_command` reports them in one line."""
    entered = _acceptances
    try:
        yield
    except INPUT_ERRORS as exc:
        if _acceptances == entered:
            setattr(exc, _MARK, True)
        raise


def input_accepted() -> None:
    """The command has read its input and starts its work: errors from here on are not the
    input's (they keep their traceback)."""
    global _acceptances
    _acceptances += 1


def is_input_error(exc: BaseException) -> bool:
    return isinstance(exc, InputError) or getattr(exc, _MARK, False)


def one_line(exc: BaseException) -> str:
    """The error's message on one line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines) or type(exc).__name__


def input_error(exc: BaseException) -> int:
    """Report an error in the input: ``error: <message>`` on stderr, one line, and return the
    exit status 2; when debugging, raise it again instead (its traceback)."""
    if debugging():
        raise exc
    # The other processes of one launch on a machine (local rank > 0) read the same input:
    # the first process's line says it.
    if os.environ.get("LOCAL_RANK", "0") == "0":
        print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
    return 2


def _parser_error(parser: argparse.ArgumentParser, message: str):
    raise InputError(message)


def run_command(main: Callable[[], object]) -> int:
    """Run a command's ``main()`` (which reads ``sys.argv``) and return its exit status: errors
    in the input are reported in one line with status 2 (module docstring).

    ``--debug`` is taken off ``sys.argv`` and sets ``NUIR_DEBUG=1``, which the processes the
    command starts (Lightning's DDP launcher re-runs the command) inherit."""
    if DEBUG_FLAG in sys.argv[1:]:
        sys.argv[1:] = [arg for arg in sys.argv[1:] if arg != DEBUG_FLAG]
        os.environ[DEBUG_VARIABLE] = "1"
    if debugging():
        status = main()
        return status if isinstance(status, int) else 0
    error = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = _parser_error  # one line instead of usage + message
    try:
        status = main()
    except Exception as exc:
        if is_input_error(exc):
            return input_error(exc)
        raise
    finally:
        argparse.ArgumentParser.error = error
    return status if isinstance(status, int) else 0
