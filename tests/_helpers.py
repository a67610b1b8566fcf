"""Helpers shared by the test modules: train.py's CLI on a tiny photo, and opcheck of both ops."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import torch
import yaml
from PIL import Image
from pytorch_lightning.callbacks import Callback

import nuir
from models.data import DEFAULT_IMAGE

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32


def train_entry():
    spec = importlib.util.spec_from_file_location("train_entry", ROOT / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_photo(path: Path, size: int = SIZE) -> Path:
    """A size x size crop of the bundled photo (the face: edges and flat parts)."""
    with Image.open(DEFAULT_IMAGE) as photo:
        photo.convert("RGB").crop((80, 40, 80 + 2 * size, 40 + 2 * size)).resize(
            (size, size), Image.Resampling.LANCZOS
        ).save(path)
    return path


class StopAfter(Callback):
    """Stops training after ``step`` steps, as an interruption would (the run keeps its length)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def fit(tmp: Path, *overrides: str, run_dir: str = "run", steps: int = 4, size: int = SIZE):
    """``python train.py fit --config configs/debug.yaml`` with logs and checkpoints in tmp."""
    image = tmp / "photo.png"
    if not image.exists():
        tiny_photo(image, size)
    local = tmp / f"{run_dir}.yaml"
    local.write_text(
        yaml.safe_dump(
            {
                "trainer": {
                    "logger": {
                        "class_path": "pytorch_lightning.loggers.TensorBoardLogger",
                        "init_args": {
                            "save_dir": str(tmp / run_dir),
                            "name": "logs",
                            "default_hp_metric": False,
                        },
                    },
                    "callbacks": [
                        {
                            "class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                            "init_args": {
                                "dirpath": str(tmp / run_dir / "checkpoints"),
                                "save_last": True,
                            },
                        }
                    ],
                }
            }
        )
    )
    args = [
        "fit",
        "--config",
        str(ROOT / "configs" / "debug.yaml"),
        "--config",
        str(local),
        "--data.path",
        str(image),
        "--data.steps_per_epoch",
        "2",
        "--model.sampler.n_points",
        "200",
        "--trainer.max_steps",
        str(steps),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.default_root_dir",  # where the config goes when the logger is off
        str(tmp / run_dir),
        *overrides,
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train_entry().main(args)


def opcheck_both_ops(args: list[torch.Tensor], weights: torch.Tensor, height: int, width: int):
    """torch.library.opcheck of gmm_forward and of gmm_backward (with and without a weight-map
    gradient) on inputs (points, values, cov3) and weights that require grad."""
    torch.library.opcheck(
        torch.ops.nuir.gmm_forward.default, (*args, weights, height, width, 3.0, 0.5)
    )
    image, weight = torch.ops.nuir.gmm_forward(*args, weights, height, width, 3.0, 0.5)
    for grad_weight in (torch.randn_like(weight), None):
        torch.library.opcheck(
            torch.ops.nuir.gmm_backward.default,
            (
                torch.randn_like(image),
                grad_weight,
                image.detach(),
                weight.detach(),
                *(t.detach() for t in args),
                weights.detach(),
                3.0,
            ),
        )


def gradcheck_interpolate(points, values, kwargs: dict, size, cutoff: float, device) -> bool:
    """torch.autograd.gradcheck of nuir.interpolate (image and weight map) with respect to the
    points, the values and every tensor of kwargs (sigma, cov, weights), in float64 on device."""
    if "weights" in kwargs:  # finite differences must not step a zero weight below zero
        kwargs = dict(kwargs, weights=kwargs["weights"] + 0.2)
    names = sorted(k for k, v in kwargs.items() if isinstance(v, torch.Tensor))

    def fn(p, v, *tensors):
        kw = dict(kwargs, **dict(zip(names, tensors)))
        return nuir.interpolate(p, v, size, cutoff=cutoff, return_weight=True, **kw)

    inputs = [points, values, *(kwargs[k] for k in names)]
    inputs = [t.to(device).clone().requires_grad_() for t in inputs]
    return torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


class RecordSteps(Callback):
    """Writes, per process, each step's training window and, at the end, the parameters to
    ``folder`` (rank<r>.jsonl and rank<r>.pt): what distributed tests compare across ranks."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_batch_end(self, trainer, system, *args) -> None:
        import json

        self.folder.mkdir(parents=True, exist_ok=True)
        record = {"step": trainer.global_step, "window": system.last_window}
        with open(self.folder / f"rank{trainer.global_rank}.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def on_train_end(self, trainer, system) -> None:
        import json

        state = {name: value.detach().cpu() for name, value in system.state_dict().items()}
        torch.save(state, self.folder / f"rank{trainer.global_rank}.pt")
        if trainer.global_rank == 0:
            metrics = system.image_metrics(system.target)
            (self.folder / "metrics.json").write_text(json.dumps(metrics))
