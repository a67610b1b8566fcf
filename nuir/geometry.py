"""Raster conventions shared by training and rendering: coordinates, tiles, culling.

- Points are (x, y) in pixel units of a raster of size (H, W): pixel (row r, column s) has its
  centre at (s, r), so the raster covers [-0.5, W - 0.5] x [-0.5, H - 0.5].
- Networks take coordinates in [-1, 1]^2: u = -1 + (2 x + 1) / W, v = -1 + (2 y + 1) / H. The
  raster's outer edges map to -1 and 1, so the same network renders the same picture at any size.
- Rescaling a raster by k maps a position x to (x + 0.5) k - 0.5 (as ``nuir.upsample`` does) and
  a length (sigma) to sigma k.
"""

from __future__ import annotations

import numbers

import torch

from nuir._validate import check_size

Window = tuple[int, int, int, int]  # (row0, col0, height, width) of a tile


def pixel_to_unit(points: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pixel positions [..., 2] (x, y) on an (H, W) raster -> network coordinates [..., 2]."""
    height, width = check_size(size)
    scale = points.new_tensor([2.0 / width, 2.0 / height])
    return (points + 0.5) * scale - 1.0


def unit_to_pixel(coords: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Network coordinates [..., 2] in [-1, 1] -> pixel positions [..., 2] (x, y) on (H, W)."""
    height, width = check_size(size)
    scale = coords.new_tensor([width / 2.0, height / 2.0])
    return (coords + 1.0) * scale - 0.5


def rescale_points(
    points: torch.Tensor, from_size: tuple[int, int], to_size: tuple[int, int]
) -> torch.Tensor:
    """Positions [..., 2] on a from_size raster -> the same places on a to_size raster."""
    return unit_to_pixel(pixel_to_unit(points, from_size), to_size)


def tile_windows(size: tuple[int, int], tile_size: int) -> list[Window]:
    """Row-major tiles (row0, col0, height, width) covering an (H, W) raster."""
    height, width = check_size(size)
    if isinstance(tile_size, bool) or not isinstance(tile_size, numbers.Integral) or tile_size < 1:
        raise ValueError(f"tile_size must be a positive int, got {tile_size!r}")
    return [
        (row0, col0, min(tile_size, height - row0), min(tile_size, width - col0))
        for row0 in range(0, height, tile_size)
        for col0 in range(0, width, tile_size)
    ]


def pixel_centres(window: Window, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """Centres of the pixels of a window, row-major: [h * w, 2] (x, y)."""
    row0, col0, height, width = window
    ys = torch.arange(row0, row0 + height, dtype=dtype, device=device)
    xs = torch.arange(col0, col0 + width, dtype=dtype, device=device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y], dim=-1).reshape(-1, 2)


def points_reaching(points: torch.Tensor, reach: torch.Tensor, window: Window) -> torch.Tensor:
    """Indices [n] of the points whose box ``position +- reach`` meets the window's pixels.

    Args:
        points: [N, 2] (x, y) positions.
        reach: [N] or [N, 2] half-widths (x, y) of each point's box, e.g. cutoff * sigma.
        window: (row0, col0, height, width).
    """
    row0, col0, height, width = window
    reach = reach[:, None].expand(-1, 2) if reach.dim() == 1 else reach  # [N, 2]
    x, y = points[:, 0], points[:, 1]
    near = (
        (x + reach[:, 0] >= col0)
        & (x - reach[:, 0] <= col0 + width - 1)
        & (y + reach[:, 1] >= row0)
        & (y - reach[:, 1] <= row0 + height - 1)
    )
    return near.nonzero().squeeze(1)
