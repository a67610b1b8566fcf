"""Loading a trained system from a checkpoint written by ``train.py``, with one-line errors."""

from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path

from models.system import ImplicitImageSystem

EXPECTED = "a .ckpt checkpoint written by train.py"


def load_system(checkpoint: str | os.PathLike, device: str = "cpu") -> ImplicitImageSystem:
    """The trained system in ``checkpoint``, on ``device``, in eval mode.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a checkpoint (random bytes, a truncated download), is a
            checkpoint of another model, or holds an untrained system; the message names the file.
    """
    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise ValueError(f"{path}: not a file (expected {EXPECTED})")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise ValueError(f"{path}: not a checkpoint, or a truncated one (expected {EXPECTED})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            system = ImplicitImageSystem.load_from_checkpoint(path, map_location=device)
    except Exception as exc:  # a foreign or damaged checkpoint fails in many ways
        raise ValueError(
            f"{path}: cannot load an nuir ImplicitImageSystem from it ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else 'no detail'}; expected {EXPECTED})"
        ) from exc
    if not bool(system.initialised):
        raise ValueError(f"{path}: the checkpoint holds an untrained system (no image size)")
    return system.eval()
