"""The data side of training an implicit image: one target image, read by windows.

``ImageDataModule`` reads the image (``nuir.image_files``: PNG / JPEG / TIFF / ``.npy`` /
anything Pillow reads, 8- or 16-bit, grey, grey+alpha, RGB or RGBA) when constructed, so a
missing or unreadable file stops the run before any training, with a message naming the path.
It keeps the pixels in the file's own type (a 4096 x 4096 RGB photo stays 50 MB of uint8, not
200 MB of float32), memory-maps a large uncompressed TIFF or ``.npy`` with ``mmap: true``, and
converts only the windows the system asks for (:meth:`ImageDataModule.window`).

The loaders yield only step numbers: what a step trains on (a crop, a batch of pixels) is drawn
by the system from its seed, the step and the process rank, so draws repeat after a resume and
differ between the processes of a distributed run.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

from nuir.image_files import read_image_array, to_unit_float
from nuir.image_files import resolve_image_path as _resolve_file

DEFAULT_IMAGE = Path(__file__).resolve().parent / "assets" / "astronaut_256.png"

# Steps has a length on purpose (epochs of steps_per_epoch steps); it is read in the main process.
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")


def resolve_image_path(path: str | os.PathLike | None) -> Path:
    """The file behind ``path``: None -> the bundled photo; ``"skimage:NAME"`` -> a photo that
    scikit-image ships in its package (e.g. ``skimage:astronaut``, 512 x 512; no download);
    anything else -> that file."""
    if path is None or str(path) == "":
        return DEFAULT_IMAGE
    return _resolve_file(path)


def load_image(path: str | os.PathLike | None) -> torch.Tensor:
    """The image at ``path`` (None: the bundled photo) as float32 [C, H, W] in [0, 1]."""
    path = resolve_image_path(path)
    return to_unit_float(read_image_array(path), path)


class Steps(IterableDataset):
    """``length`` step numbers per epoch, on every process (an iterable dataset: no distributed
    sampler splits it)."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __iter__(self):
        return iter(range(self.length))

    def __len__(self) -> int:
        return self.length


class ImageDataModule(pl.LightningDataModule):
    """Serves one target image by windows; the loaders yield step numbers.

    Args:
        path: image file (PNG, JPEG, TIFF, .npy, ...; 8- or 16-bit; grey, RGB or RGBA), or
            ``skimage:NAME`` for a photo shipped inside scikit-image (``skimage:astronaut``,
            ``skimage:coffee``, ...). Default: the bundled 256 x 256 photo
            ``models/assets/astronaut_256.png``.
        resize: (H, W) to resize the image to (Lanczos, read whole), or None to keep its size.
        channels: keep the file's channels (None) or convert to 1 (grey) or 3 (RGB; alpha is
            dropped, grey is repeated).
        steps_per_epoch: training steps per epoch (validation, image logging and checkpoints
            happen once per epoch by default).
        mmap: memory-map the file instead of reading it (uncompressed TIFF or .npy; others are
            read whole).
    """

    def __init__(
        self,
        path: str | None = None,
        resize: tuple[int, int] | None = None,
        channels: int | None = None,
        steps_per_epoch: int = 100,
        mmap: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be a positive int, got {steps_per_epoch!r}")
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be None, 1 or 3, got {channels!r}")
        self.path = resolve_image_path(path)
        pixels = read_image_array(self.path, mmap=mmap)  # [H, W, C], the file's type
        if resize is not None:
            pixels = _resize(to_unit_float(pixels, self.path), resize).numpy().transpose(1, 2, 0)
        self.pixels = pixels
        self.channels = channels
        self.steps_per_epoch = steps_per_epoch

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the target."""
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])

    @property
    def num_channels(self) -> int:
        return self.channels or (1 if self.pixels.shape[2] == 1 else self.pixels.shape[2])

    def window(self, window: tuple[int, int, int, int]) -> torch.Tensor:
        """Pixels of a window (row0, col0, h, w) as float32 [C, h, w] in [0, 1]."""
        row0, col0, height, width = window
        crop = to_unit_float(self.pixels[row0 : row0 + height, col0 : col0 + width], self.path)
        return _convert_channels(crop, self.channels) if self.channels else crop

    def pixels_at(self, rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """Pixels at integer (row, column) positions [n] as float32 [n, C] in [0, 1]."""
        picked = self.pixels[rows.numpy(), columns.numpy()]  # [n, C]
        values = to_unit_float(picked[None], self.path)  # [C, 1, n]
        values = _convert_channels(values, self.channels) if self.channels else values
        return values[:, 0].T

    @property
    def image(self) -> torch.Tensor:
        """The whole image as float32 [C, H, W] (converts everything: for small images)."""
        return self.window((0, 0, *self.size))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(Steps(self.steps_per_epoch), batch_size=1)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(Steps(1), batch_size=1)


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
