"""The data side of training an implicit image: one target image, served every step.

``load_image`` reads PNG / JPEG / TIFF / anything Pillow reads, 8- or 16-bit, grey, grey+alpha,
RGB or RGBA, into a float tensor [C, H, W] in [0, 1]. TIFF goes through tifffile (any bit depth);
everything else through Pillow. ``ImageDataModule`` loads it when constructed, so a missing or
unreadable file stops the run before any training, with a message naming the path.
"""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

DEFAULT_IMAGE = Path(__file__).resolve().parent / "assets" / "astronaut_256.png"

_TIFF_SUFFIXES = (".tif", ".tiff")
_SKIMAGE_PREFIX = "skimage:"


def resolve_image_path(path: str | os.PathLike | None) -> Path:
    """The file behind ``path``: None -> the bundled photo; ``"skimage:NAME"`` -> a photo that
    scikit-image ships in its package (e.g. ``skimage:astronaut``, 512 x 512; no download);
    anything else -> that file."""
    if path is None or str(path) == "":
        return DEFAULT_IMAGE
    text = str(path)
    if not text.startswith(_SKIMAGE_PREFIX):
        return Path(text).expanduser()
    import skimage

    name = text[len(_SKIMAGE_PREFIX) :]
    data_dir = Path(skimage.__file__).resolve().parent / "data"
    matches = sorted(
        p
        for p in data_dir.glob(f"{name}*")
        if p.stem == name and p.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff")
    )
    if not matches:
        shipped = sorted(
            p.stem for p in data_dir.iterdir() if p.suffix.lower() in (".png", ".jpg", ".tif")
        )
        raise FileNotFoundError(
            f"{text}: scikit-image ships no image named {name!r} in {data_dir}; "
            f"choose one of {', '.join(shipped)}"
        )
    return matches[0]


def _png_bit_depth(path: Path) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG header, or None when the file is not a PNG."""
    with open(path, "rb") as handle:
        head = handle.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return head[24], head[25]


def _to_unit_float(array: np.ndarray, path: Path) -> np.ndarray:
    """Integer or float pixels -> float32 in [0, 1], by the dtype's range."""
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        if info.min < 0:
            raise ValueError(f"{path}: signed integer pixels ({array.dtype}) are not supported")
        return array.astype(np.float32) / float(info.max)
    if np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
        if not np.isfinite(array).all():
            raise ValueError(f"{path}: the image contains NaN or infinite pixels")
        return np.clip(array, 0.0, 1.0)
    raise ValueError(f"{path}: unsupported pixel type {array.dtype}")


def _read_with_pillow(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        image.load()
        mode = image.mode
        if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
            return np.asarray(image).astype(np.uint16)
        if mode == "I":  # 32-bit container, used by Pillow for 16-bit greyscale PNGs
            array = np.asarray(image)
            if array.min() < 0 or array.max() > 65535:
                raise ValueError(f"{path}: 32-bit integer pixels outside [0, 65535]")
            return array.astype(np.uint16)
        if mode == "F":
            return np.asarray(image).astype(np.float32)
        if mode in ("1", "L", "LA", "RGB", "RGBA"):
            return np.asarray(image)
        if mode == "P":
            has_alpha = "transparency" in image.info
            return np.asarray(image.convert("RGBA" if has_alpha else "RGB"))
        if mode == "PA":
            return np.asarray(image.convert("RGBA"))
        return np.asarray(image.convert("RGB"))  # CMYK, YCbCr, LAB, HSV: to RGB


def load_image(path: str | os.PathLike | None) -> torch.Tensor:
    """Read an image file into a float32 tensor [C, H, W] in [0, 1].

    ``path`` is resolved by :func:`resolve_image_path` (None: the bundled photo).
    C is 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA), as stored. 8-bit pixels are divided by
    255, 16-bit ones by 65535. TIFFs are read with tifffile; other formats with Pillow, which
    reads 16-bit colour PNGs with 8-bit precision only (a warning says so).

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the path is not a file, or the file is not a readable image.
    """
    path = resolve_image_path(path)
    if not path.exists():
        raise FileNotFoundError(f"image file not found: {path}")
    if not path.is_file():
        raise ValueError(f"image path is not a file: {path}")
    if not os.access(path, os.R_OK):
        raise ValueError(f"image file is not readable (permission denied): {path}")
    try:
        if path.suffix.lower() in _TIFF_SUFFIXES:
            import tifffile

            array = tifffile.imread(path)
            if array.ndim == 3 and array.shape[0] in (1, 2, 3, 4) and array.shape[-1] > 4:
                array = np.moveaxis(array, 0, -1)  # planar [C, H, W] storage
        else:
            png = _png_bit_depth(path)
            if png is not None and png[0] == 16 and png[1] in (2, 4, 6):
                warnings.warn(
                    f"{path}: 16-bit colour PNG read with 8-bit precision (a Pillow limitation); "
                    "save it as a 16-bit TIFF to keep every bit",
                    stacklevel=2,
                )
            array = _read_with_pillow(path)
    except (UnidentifiedImageError, OSError, ValueError, struct.error, SyntaxError) as exc:
        if isinstance(exc, ValueError) and str(exc).startswith(str(path)):
            raise
        raise ValueError(f"cannot read image file {path}: {exc}") from exc
    array = np.squeeze(array) if array.ndim > 3 else array
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(
            f"{path}: expected a grey, grey+alpha, RGB or RGBA image, got pixel array of shape "
            f"{array.shape}"
        )
    if array.shape[0] < 2 or array.shape[1] < 2:
        raise ValueError(f"{path}: image is too small ({array.shape[0]}x{array.shape[1]})")
    pixels = _to_unit_float(array, path)  # [H, W, C]
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


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
