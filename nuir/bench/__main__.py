"""``python -m nuir.bench <name> [options]``: runs the benchmark module ``nuir.bench.<name>``.

A mistake in the input ends in one line and exit status 2 (``nuir._cli``; ``--debug`` or
``NUIR_DEBUG=1``: the traceback)."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import nuir.bench
from nuir._cli import input_error, run_command


def available() -> list[str]:
    return sorted(
        m.name for m in pkgutil.iter_modules(nuir.bench.__path__) if not m.name.startswith("_")
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = available()
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m nuir.bench {" + ",".join(names) + "} [options]")
        print("       python -m nuir.bench <name> --help")
        return 0
    if argv[0] not in names:
        return input_error(
            ValueError(f"no benchmark {argv[0]!r}: choose one of {', '.join(names)}")
        )
    module = importlib.import_module(f"nuir.bench.{argv[0]}")
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(run_command(main))
