"""The public photos of the training benchmark, fetched once into a cache folder.

    python -m models.photos fetch                      # from GitHub (needs the network)
    python -m models.photos fetch --source CLONE       # from a local clone of zwx-open/EVOS-INR
    python -m models.photos list

The photos are the test and training images that EVOS's repository holds (github
zwx-open/EVOS-INR at a fixed commit): 16 + 16 DIV2K crops of 512 x 512 (EVOS scores its table on
``div2k/test_data``) and the 24 Kodak images. They are fetched by this command only, never while
training or testing, into ``$NUIR_PHOTOS`` (default ``~/.cache/nuir/photos``); they are not part
of nuir (DIV2K is for academic research; Kodak ships without a licence file).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import urllib.request
from pathlib import Path

REPOSITORY = "zwx-open/EVOS-INR"
COMMIT = "326148416e1fb9c44da8a68ec512103205c3c87f"
SETS = {
    "div2k_test": [f"data/div2k/test_data/{i:02d}.png" for i in range(16)],
    "div2k_train": [f"data/div2k/train_data/{i:02d}.png" for i in range(16)],
    "kodak": [f"data/Kodak/{i:02d}.png" for i in range(1, 25)],
}


def cache_dir() -> Path:
    return Path(os.environ.get("NUIR_PHOTOS", Path.home() / ".cache" / "nuir" / "photos"))


def local_name(path: str) -> str:
    """data/div2k/test_data/03.png -> div2k_test_03.png"""
    for name, paths in SETS.items():
        if path in paths:
            return f"{name}_{Path(path).name}"
    raise ValueError(f"not a benchmark photo: {path}")


def photo_path(set_name: str, index: int) -> Path:
    """The cached file of photo ``index`` of a set (raises if it was not fetched)."""
    if set_name not in SETS:
        raise ValueError(f"photo set must be one of {tuple(SETS)}, got {set_name!r}")
    path = cache_dir() / local_name(SETS[set_name][index])
    if not path.is_file():
        raise FileNotFoundError(
            f"benchmark photo {path} not found: fetch the photos first "
            "(python -m models.photos fetch)"
        )
    return path


def fetch_one(path: str, source: Path | None) -> bytes:
    if source is None:
        url = f"https://raw.githubusercontent.com/{REPOSITORY}/{COMMIT}/{path}"
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.read()
    if (source / path).is_file():  # a work tree
        return (source / path).read_bytes()
    shown = subprocess.run(  # a bare clone or a git directory
        ["git", "--git-dir", str(source), "show", f"{COMMIT}:{path}"], capture_output=True
    )
    if shown.returncode != 0:
        raise FileNotFoundError(f"{path} at {COMMIT[:7]} not found in {source}")
    return shown.stdout


def fetch(source: Path | None, sets: list[str]) -> int:
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    fetched = 0
    for set_name in sets:
        for path in SETS[set_name]:
            target = folder / local_name(path)
            if target.is_file():
                continue
            data = fetch_one(path, source)
            partial = target.with_suffix(".part")
            partial.write_bytes(data)
            partial.replace(target)
            fetched += 1
    return fetched


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m models.photos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser("fetch", help="fetch the photos into the cache folder")
    get.add_argument(
        "--source",
        type=Path,
        default=None,
        help="a local clone (work tree or git directory) of the repository",
    )
    get.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    commands.add_parser("list", help="list the cached photos")
    args = parser.parse_args(argv)
    if args.command == "list":
        for path in sorted(cache_dir().glob("*.png")):
            print(path)
        return 0
    try:
        count = fetch(args.source, args.sets)
    except OSError as exc:
        from nuir._cli import input_error

        return input_error(exc)
    print(f"fetched {count} photos into {cache_dir()} ({REPOSITORY} at {COMMIT[:7]})")
    return 0


if __name__ == "__main__":
    from nuir._cli import run_command

    raise SystemExit(run_command(main))
