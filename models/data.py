"""The data side of training an implicit image: one target image, served every step.

``ImageDataModule`` reads the image (``nuir.image_files``: PNG / JPEG / TIFF / anything Pillow
reads, 8- or 16-bit, grey, grey+alpha, RGB or RGBA) when constructed, so a missing or unreadable
file stops the run before any training, with a message naming the path.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from nuir.image_files import load_image as _load_file
from nuir.image_files import resolve_image_path as _resolve_file

DEFAULT_IMAGE = Path(__file__).resolve().parent / "assets" / "astronaut_256.png"


def resolve_image_path(path: str | os.PathLike | None) -> Path:
    """The file behind ``path``: None -> the bundled photo; ``"skimage:NAME"`` -> a photo that
    scikit-image ships in its package (e.g. ``skimage:astronaut``, 512 x 512; no download);
    anything else -> that file."""
    if path is None or str(path) == "":
        return DEFAULT_IMAGE
    return _resolve_file(path)


def load_image(path: str | os.PathLike | None) -> torch.Tensor:
    """The image at ``path`` (None: the bundled photo) as float32 [C, H, W] in [0, 1]."""
    return _load_file(resolve_image_path(path))


class RepeatedImage(Dataset):
    """The same target image [C, H, W], ``length`` times: one epoch = ``length`` steps."""

    def __init__(self, image: torch.Tensor, length: int) -> None:
        self.image = image
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.image


class ImageDataModule(pl.LightningDataModule):
    """Serves one target image: the training loader yields it each step, validation once.

    Args:
        path: image file (PNG, JPEG, TIFF, ...; 8- or 16-bit; grey, RGB or RGBA), or
            ``skimage:NAME`` for a photo shipped inside scikit-image (``skimage:astronaut``,
            ``skimage:coffee``, ...). Default: the bundled 256 x 256 photo
            ``models/assets/astronaut_256.png``.
        resize: (H, W) to resize the image to (Lanczos), or None to keep its size.
        channels: keep the file's channels (None) or convert to 1 (grey) or 3 (RGB; alpha is
            dropped, grey is repeated).
        steps_per_epoch: training steps per epoch (validation, image logging and checkpoints
            happen once per epoch by default).
    """

    def __init__(
        self,
        path: str | None = None,
        resize: tuple[int, int] | None = None,
        channels: int | None = None,
        steps_per_epoch: int = 100,
    ) -> None:
        super().__init__()
        if not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be a positive int, got {steps_per_epoch!r}")
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be None, 1 or 3, got {channels!r}")
        self.path = resolve_image_path(path)
        image = load_image(self.path)  # [C, H, W]
        if resize is not None:
            image = _resize(image, resize)
        if channels is not None:
            image = _convert_channels(image, channels)
        self.image = image  # [C, H, W] float32 in [0, 1]
        self.steps_per_epoch = steps_per_epoch

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the target."""
        return int(self.image.shape[1]), int(self.image.shape[2])

    @property
    def num_channels(self) -> int:
        return int(self.image.shape[0])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(RepeatedImage(self.image, self.steps_per_epoch), batch_size=1)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(RepeatedImage(self.image, 1), batch_size=1)


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Lanczos resize of [C, H, W] in [0, 1] to size (H', W'), channel by channel in float."""
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(s, int) and s >= 2 for s in size)
    ):
        raise ValueError(f"resize must be a pair (H, W) of ints >= 2, got {size!r}")
    height, width = size
    channels = [
        np.asarray(Image.fromarray(plane.numpy()).resize((width, height), Image.Resampling.LANCZOS))
        for plane in image
    ]
    return torch.from_numpy(np.stack(channels)).clamp(0.0, 1.0)


def _convert_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """[C, H, W] -> [channels, H, W]: drop alpha, then grey <-> RGB (Rec. 601 luma)."""
    colour = image[:3] if image.shape[0] in (3, 4) else image[:1]
    if channels == colour.shape[0]:
        return colour.contiguous()
    if channels == 3:
        return colour.expand(3, -1, -1).contiguous()
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=image.dtype)
    return (colour * luma[:, None, None]).sum(0, keepdim=True)
