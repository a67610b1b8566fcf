"""Image files in and out: PNG / JPEG / TIFF / anything Pillow reads, 8- or 16-bit, grey, grey +
alpha, RGB or RGBA.

``read_image_array`` keeps the file's own pixel type (uint8 / uint16 / float32), so a large image
stays compact, and memory-maps an uncompressed TIFF or a ``.npy`` file instead of reading it;
``load_image`` gives float32 [C, H, W] in [0, 1]. TIFF goes through tifffile (any bit depth);
everything else through Pillow.
``write_image`` writes 8- or 16-bit PNG / TIFF atomically: a failed write leaves no partial file.
``skimage:NAME`` names a photo that scikit-image ships in its package, ``skimage-mosaic:SIDE`` a
SIDE x SIDE mosaic of them (no download).
"""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")  # what a folder scan picks up
_TIFF_SUFFIXES = (".tif", ".tiff")
SKIMAGE_PREFIX = "skimage:"
MOSAIC_PREFIX = "skimage-mosaic:"
# The colour photographs scikit-image ships, tiled by :func:`mosaic`.
MOSAIC_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "hubble_deep_field",
    "ihc",
    "motorcycle_left",
    "retina",
    "rocket",
)


def skimage_photo_path(name: str) -> Path:
    """The file of a photo shipped inside scikit-image, e.g. ``astronaut`` (512 x 512)."""
    import skimage

    data_dir = Path(skimage.__file__).resolve().parent / "data"
    matches = sorted(
        p
        for p in data_dir.glob(f"{name}.*")
        if p.stem == name and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not matches:
        shipped = sorted(p.stem for p in data_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        raise FileNotFoundError(
            f"{SKIMAGE_PREFIX}{name}: scikit-image ships no image named {name!r} in {data_dir}; "
            f"choose one of {', '.join(shipped)}"
        )
    return matches[0]


def mosaic(side: int, tile: int = 1024) -> np.ndarray:
    """A side x side RGB uint8 mosaic of scikit-image's colour photographs (no download): each
    photo centre-cropped to a square and resized (Lanczos) to tile x tile, the sequence repeated
    mirrored. A large real-photo target for benchmarks: ``skimage-mosaic:4096`` as a path."""
    if isinstance(side, bool) or not isinstance(side, int) or side < 2:
        raise ValueError(f"mosaic side must be an int >= 2, got {side!r}")
    tile = min(tile, side)
    out = np.zeros((side, side, 3), dtype=np.uint8)
    index = 0
    for row in range(0, side, tile):
        for column in range(0, side, tile):
            name = MOSAIC_PHOTOS[index % len(MOSAIC_PHOTOS)]
            with Image.open(skimage_photo_path(name)) as photo:
                photo = photo.convert("RGB")
                square = min(photo.size)
                left, top = (photo.width - square) // 2, (photo.height - square) // 2
                photo = photo.crop((left, top, left + square, top + square))
                photo = photo.resize((tile, tile), Image.Resampling.LANCZOS)
                pixels = np.asarray(photo)
            if (index // len(MOSAIC_PHOTOS)) % 2:
                pixels = pixels[:, ::-1]
            h, w = min(tile, side - row), min(tile, side - column)
            out[row : row + h, column : column + w] = pixels[:h, :w]
            index += 1
    return out


def resolve_image_path(path: str | os.PathLike) -> Path:
    """``"skimage:NAME"`` -> that photo's file; anything else -> that path."""
    text = str(path)
    if text.startswith(SKIMAGE_PREFIX):
        return skimage_photo_path(text[len(SKIMAGE_PREFIX) :])
    return Path(text).expanduser()


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


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"image file not found: {path}")
    if not path.is_file():
        raise ValueError(f"image path is not a file: {path}")
    if not os.access(path, os.R_OK):
        raise ValueError(f"image file is not readable (permission denied): {path}")


def _read_tiff(path: Path, mmap: bool) -> np.ndarray:
    import tifffile

    array = None
    if mmap:
        try:
            array = tifffile.memmap(path, mode="r")
        except ValueError:  # compressed or tiled: not mappable, read it whole
            array = None
    if array is None:
        array = tifffile.imread(path)
    if array.ndim == 3 and array.shape[0] in (1, 2, 3, 4) and array.shape[-1] > 4:
        array = np.moveaxis(array, 0, -1)  # planar [C, H, W] storage
    return array


def read_image_array(path: str | os.PathLike, *, mmap: bool = False) -> np.ndarray:
    """An image file's pixels [H, W, C] in the file's own type (bool, uint8, uint16 or float).

    C is 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA), as stored. With ``mmap``, an
    uncompressed TIFF or a ``.npy`` file is memory-mapped (read-only) instead of read.
    Pillow reads 16-bit colour PNGs with 8-bit precision only (a warning says so).

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the path is not a file, or the file is not a readable image.
    """
    if str(path).startswith(MOSAIC_PREFIX):
        side = str(path)[len(MOSAIC_PREFIX) :]
        if not side.isdigit():
            raise ValueError(f"{path}: expected {MOSAIC_PREFIX}SIDE, e.g. {MOSAIC_PREFIX}4096")
        return mosaic(int(side))
    path = resolve_image_path(path)
    _check_readable(path)
    suffix = path.suffix.lower()
    try:
        if suffix in _TIFF_SUFFIXES:
            array = _read_tiff(path, mmap)
        elif suffix == ".npy":
            array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
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
    while array.ndim > 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(
            f"{path}: expected a grey, grey+alpha, RGB or RGBA image, got pixel array of shape "
            f"{array.shape}"
        )
    if array.shape[0] < 2 or array.shape[1] < 2:
        raise ValueError(f"{path}: image is too small ({array.shape[0]}x{array.shape[1]})")
    if not (array.dtype == np.bool_ or np.issubdtype(array.dtype, np.number)):
        raise ValueError(f"{path}: unsupported pixel type {array.dtype}")
    return array


def to_unit_float(array: np.ndarray, path: str | os.PathLike = "image") -> torch.Tensor:
    """Pixels [h, w, C] of any type -> float32 tensor [C, h, w] in [0, 1], by the type's range."""
    pixels = _to_unit_float(np.asarray(array), Path(path))
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file into a float32 tensor [C, H, W] in [0, 1] (8-bit pixels / 255, 16-bit
    ones / 65535); errors as :func:`read_image_array`."""
    array = read_image_array(path)
    return to_unit_float(array, resolve_image_path(path))


def write_image(path: str | os.PathLike, tile_or_array) -> Path:
    """Write [H, W, C] uint8 / uint16 pixels (or a float tensor [C, H, W] in [0, 1], as 8-bit) to
    a PNG or TIFF, atomically: the file appears complete or not at all.

    16-bit colour needs a ``.tif`` / ``.tiff`` path (Pillow writes 16-bit grey PNGs only).
    """
    path = Path(path)
    array = tile_or_array
    if isinstance(array, torch.Tensor):
        array = to_integers(array, 8)
    if path.suffix.lower() not in (".png", ".tif", ".tiff"):
        raise ValueError(f"{path}: output must be a .png, .tif or .tiff file")
    if array.dtype == np.uint16 and array.shape[-1] != 1 and path.suffix.lower() == ".png":
        raise ValueError(f"{path}: 16-bit colour needs a .tif / .tiff output")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        if path.suffix.lower() in _TIFF_SUFFIXES:
            import tifffile

            tifffile.imwrite(partial, array if array.shape[-1] > 1 else array[..., 0])
        else:
            image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
            image.save(partial, format="PNG")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def to_integers(tile: torch.Tensor, bits: int) -> np.ndarray:
    """[C, h, w] float in [0, 1] -> [h, w, C] uint8 (bits 8) or uint16 (bits 16)."""
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits!r}")
    peak = (1 << bits) - 1
    scaled = (tile.detach().clamp(0, 1) * peak).round().permute(1, 2, 0).cpu().numpy()
    return scaled.astype(np.uint8 if bits == 8 else np.uint16)
