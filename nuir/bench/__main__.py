"""``python -m nuir.bench <name> [options]``: runs the benchmark module ``nuir.bench.<name>``."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import nuir.bench


def available() -> list[str]:
    return sorted(
        m.name for m in pkgutil.iter_modules(nuir.bench.__path__) if not m.name.startswith("_")
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = available()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in names:
        print("usage: python -m nuir.bench {" + ",".join(names) + "} [options]")
        print("       python -m nuir.bench <name> --help")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(f"nuir.bench.{argv[0]}")
    try:
        return module.main(argv[1:]) or 0
    except (FileNotFoundError, ValueError) as exc:  # a missing or unreadable input file
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
