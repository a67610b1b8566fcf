"""Photographs for the quality benchmarks: a folder of image files, or scikit-image's photos.

Every image becomes a float32 RGB array [H, W, 3] in [0, 1] (read by ``nuir.image_files``):
grayscale is replicated to three channels, alpha is dropped, 16-bit images are scaled by 65535.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nuir.image_files import IMAGE_SUFFIXES, load_image, skimage_photo_path

# Real colour photographs shipped inside scikit-image (no download): the benchmark set.
DEFAULT_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "ihc")
# Other real photographs shipped with scikit-image, disjoint from the benchmark set: sigma sweeps
# run on these, so the benchmark photos are never used to pick a parameter.
TUNING_PHOTOS = (
    "camera",
    "moon",
    "coins",
    "grass",
    "gravel",
    "brick",
    "hubble_deep_field",
    "retina",
)
PHOTO_SETS = {"default": DEFAULT_PHOTOS, "tuning": TUNING_PHOTOS}

DEFAULT_CROP = 384  # divisible by every factor 2, 3, 4, 6, 8, 12, 16


@dataclass
class Photo:
    name: str
    pixels: np.ndarray  # [H, W, 3] float32 in [0, 1]


def read_image(path: str | Path) -> np.ndarray:
    """One image file as float32 RGB [H, W, 3] in [0, 1] (grey replicated, alpha dropped)."""
    pixels = load_image(path)  # [C, H, W]
    rgb = pixels[:3] if pixels.shape[0] >= 3 else pixels[:1].expand(3, -1, -1)
    return np.ascontiguousarray(rgb.permute(1, 2, 0).numpy())


def center_crop(pixels: np.ndarray, crop: int) -> np.ndarray:
    """The central min(crop, H) x min(crop, W) window of [H, W, C]; crop <= 0 keeps everything."""
    if crop <= 0:
        return pixels
    height, width = pixels.shape[:2]
    ch, cw = min(crop, height), min(crop, width)
    top, left = (height - ch) // 2, (width - cw) // 2
    return np.ascontiguousarray(pixels[top : top + ch, left : left + cw])


def image_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"images must be a folder of PNG/JPEG/TIFF files, got {str(folder)!r}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"images: no PNG/JPEG/TIFF files in {str(folder)!r}")
    return files


def load_images(
    folder: str | Path | None = None,
    photos: str | tuple[str, ...] | list[str] = "default",
    crop: int = DEFAULT_CROP,
    limit: int = 0,
) -> list[Photo]:
    """The images of a benchmark run.

    Args:
        folder: a folder of PNG/JPEG/TIFF files (sorted by name); None uses scikit-image photos.
        photos: without a folder: a set name from PHOTO_SETS, or scikit-image photo names (a
            list, or one string with commas).
        crop: centre crop to at most crop x crop pixels; 0 keeps the full images.
        limit: use only the first `limit` images (0: all).
    """
    if folder is not None:
        paths = image_files(folder)
    else:
        if isinstance(photos, str):
            names = [name.strip() for name in photos.split(",") if name.strip()]
            photos = PHOTO_SETS.get(photos, names)
        if not photos:
            raise ValueError(f"photos must name a set {tuple(PHOTO_SETS)} or scikit-image photos")
        try:
            paths = [skimage_photo_path(name) for name in photos]
        except FileNotFoundError as exc:
            raise ValueError(f"photos: {exc}") from None
    if limit > 0:
        paths = paths[:limit]
    return [Photo(path.stem, center_crop(read_image(path), crop)) for path in paths]


def add_photo_arguments(parser: argparse.ArgumentParser, photos_help: str) -> None:
    """--images, --photos, --crop and --limit: the arguments of :func:`load_images`."""
    parser.add_argument("--images", type=Path, default=None, help="folder of PNG/JPEG/TIFF files")
    parser.add_argument(
        "--photos",
        default="default",
        help=f"without --images: scikit-image photo set {tuple(PHOTO_SETS)} or comma-separated "
        f"names{photos_help}",
    )
    parser.add_argument(
        "--crop",
        type=int,
        default=DEFAULT_CROP,
        help=f"centre crop to at most CROP x CROP pixels (default {DEFAULT_CROP}); 0: full size",
    )
    parser.add_argument("--limit", type=int, default=0, help="use only the first LIMIT images")
