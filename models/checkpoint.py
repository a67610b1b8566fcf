"""Loading what rendering needs from a checkpoint written by ``train.py``: the network (its class
and weights) and the training image's size, without PyTorch Lightning, with one-line errors.

A checkpoint is a zip written by ``torch.save`` holding the state dict (``network.*``, the
``image_size`` buffer, the sampler's points) and the hyper-parameters, where the network is the
``class_path`` / ``init_args`` of its config. Loading it imports the network's module only.
"""

from __future__ import annotations

import importlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

EXPECTED = "a .ckpt checkpoint written by train.py"


@dataclass
class Trained:
    """A trained implicit image: the network (eval mode), the training image's (H, W), and the
    point set's positions [n, 2] and sigma [n] when the sampler had one."""

    network: nn.Module
    size: tuple[int, int]
    points: torch.Tensor | None = None
    sigma: torch.Tensor | None = None
    cutoff: float = 3.0

    @property
    def device(self) -> torch.device:
        parameter = next(iter(self.network.parameters()), None)
        return parameter.device if parameter is not None else torch.device("cpu")


def _network_from(config: object, path: Path) -> nn.Module:
    if not isinstance(config, dict) or "class_path" not in config:
        raise ValueError(f"{path}: no network class in the checkpoint (expected {EXPECTED})")
    module_name, _, class_name = str(config["class_path"]).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(
            f"{path}: its network class {config['class_path']} is not importable"
        ) from exc
    return cls(**dict(config.get("init_args") or {}))


def load_trained(checkpoint: str | os.PathLike, device: str = "cpu") -> Trained:
    """The trained network in ``checkpoint``, on ``device``, in eval mode.

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
        content = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # a damaged or foreign archive fails in many ways
        raise ValueError(f"{path}: cannot read it as a checkpoint ({type(exc).__name__})") from exc
    if not isinstance(content, dict) or "state_dict" not in content:
        raise ValueError(f"{path}: no state dict in it (expected {EXPECTED})")
    state = content["state_dict"]
    hparams = content.get("hyper_parameters") or {}
    network = _network_from(hparams.get("network"), path)
    weights = {k[len("network.") :]: v for k, v in state.items() if k.startswith("network.")}
    try:
        network.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0][:200]
        raise ValueError(f"{path}: its weights do not fit its network ({first})") from exc
    size = state.get("image_size")
    if size is None or int(size.prod()) == 0:
        raise ValueError(f"{path}: the checkpoint holds an untrained system (no image size)")
    trained = Trained(network.to(device).eval(), (int(size[0]), int(size[1])))
    prefix = next((p for p in ("sampler.point_set.", "point_set.") if p + "active" in state), None)
    if prefix is not None:
        count = int(state[prefix + "active"])
        trained.points = state[prefix + "positions"][:count].float()
        trained.sigma = state[prefix + "log_sigma"][:count].exp().float()
        reconstruction = hparams.get("reconstruction")
        if isinstance(reconstruction, dict):
            trained.cutoff = float(reconstruction.get("cutoff", 3.0))
    return trained
