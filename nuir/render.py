"""Rendering coordinate networks to rasters, tile by tile, densely or sparsely.

Conventions (shared with training):

- Points are (x, y) in pixel units of a raster of size (H, W): pixel (row r, column s) has its
  centre at (s, r), so the raster covers [-0.5, W - 0.5] x [-0.5, H - 0.5].
- Networks take coordinates in [-1, 1]^2: u = -1 + (2 x + 1) / W, v = -1 + (2 y + 1) / H. The
  raster's outer edges map to -1 and 1, so the same network renders the same picture at any size.
- Rescaling a raster by k maps a position x to (x + 0.5) k - 0.5 (as ``nuir.upsample`` does) and
  a length (sigma) to sigma k.

A dense render evaluates the network at every output pixel. A sparse render evaluates it once at N
points and reconstructs each tile with ``nuir.interpolate`` from the points whose Gaussian support
reaches it. Both work tile by tile, so memory stays bounded by the tile, not the output.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator

import torch
from torch import nn

from nuir._validate import check_size
from nuir.ops import interpolate

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


@torch.no_grad()
def evaluate_network(network: nn.Module, coords: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """network(coords) in chunks of chunk_size rows: coords [M, 2] -> values [M, C]."""
    if coords.shape[0] == 0:
        probe = network(coords.new_zeros(1, coords.shape[-1]))
        return probe.new_zeros(0, probe.shape[-1])
    return torch.cat([network(chunk) for chunk in coords.split(chunk_size)])


def _network_device_dtype(network: nn.Module) -> tuple[torch.device, torch.dtype]:
    for tensor in list(network.parameters()) + list(network.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


@torch.no_grad()
def interpolating_values(
    samples: torch.Tensor, sigma: float, *, iterations: int = 8, cutoff: float = 3.0
) -> torch.Tensor:
    """Point values on a regular grid whose Gaussian interpolation passes through the samples.

    Plain interpolation from values = samples blurs: at a grid point the result is a weighted
    average with the neighbours. This solves G c = samples, where G is the interpolation from the
    pixel centres of an (h, w) grid evaluated at those same centres, by Richardson iteration
    ``c <- c + (samples - G c)``, which converges for sigma up to about 0.6 grid spacings
    (G's eigenvalues lie in (0, 1]). Each iteration is one ``nuir.interpolate`` at the grid's
    resolution, much cheaper than an interpolation at a higher output resolution.

    Args:
        samples: [C, h, w] values at the grid's pixel centres.
        sigma: Gaussian standard deviation in grid pixels.
        iterations: number of corrections (0 returns the samples).
    Returns:
        [C, h, w] values c.
    """
    if not isinstance(samples, torch.Tensor) or samples.dim() != 3:
        raise ValueError("samples must be a tensor of shape [C, h, w]")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be an int >= 0, got {iterations!r}")
    channels, height, width = samples.shape
    points = pixel_centres((0, 0, height, width), dtype=samples.dtype, device=samples.device)
    target = samples.reshape(channels, -1).T  # [h*w, C]
    values = target.clone()
    for _ in range(iterations):
        image = interpolate(points, values, (height, width), sigma, cutoff=cutoff)  # [C, h, w]
        values += target - image.reshape(channels, -1).T
    return values.T.reshape(channels, height, width)


class DenseRenderer:
    """Evaluates the network at every pixel of a tile.

    Args:
        network: coordinates [M, 2] in [-1, 1] -> values [M, C].
        size: (H, W) of the full output raster.
        chunk_size: network evaluations per call (bounds activation memory).
    """

    def __init__(self, network: nn.Module, size: tuple[int, int], *, chunk_size: int = 65536):
        self.network = network
        self.size = check_size(size)
        self.chunk_size = int(chunk_size)
        self.device, self.dtype = _network_device_dtype(network)
        self.evaluations = 0

    @torch.no_grad()
    def render_tile(self, window: Window) -> torch.Tensor:
        """The tile [C, h, w]."""
        _, _, height, width = window
        centres = pixel_centres(window, dtype=self.dtype, device=self.device)  # [h*w, 2]
        values = evaluate_network(self.network, pixel_to_unit(centres, self.size), self.chunk_size)
        self.evaluations += centres.shape[0]
        return values.T.reshape(-1, height, width)


class SparseRenderer:
    """Evaluates the network once at N points, then interpolates any tile from them.

    Args:
        network: coordinates [M, 2] in [-1, 1] -> values [M, C].
        points: [N, 2] (x, y) positions on the output raster, in its pixel units.
        sigma: Gaussian standard deviation in output pixels: a float, [N] per point or [N, 2]
            per point and axis (x, y).
        size: (H, W) of the output raster.
        cutoff: Mahalanobis radius of each Gaussian (as in ``nuir.interpolate``).
        values: [N, C] values at the points; default: the network evaluated there.
        chunk_size: network evaluations per call.
    """

    def __init__(
        self,
        network: nn.Module,
        points: torch.Tensor,
        sigma: float | torch.Tensor,
        size: tuple[int, int],
        *,
        cutoff: float = 3.0,
        values: torch.Tensor | None = None,
        chunk_size: int = 65536,
    ):
        if not isinstance(points, torch.Tensor) or points.dim() != 2 or points.shape[-1] != 2:
            raise ValueError(
                "points must be a tensor of shape [N, 2], got "
                + (str(list(points.shape)) if isinstance(points, torch.Tensor) else repr(points))
            )
        self.size = check_size(size)
        device, dtype = _network_device_dtype(network)
        self.points = points.detach().to(device=device, dtype=dtype)  # [N, 2]
        count = self.points.shape[0]
        if isinstance(sigma, torch.Tensor):
            if sigma.shape == (count,):
                sigma = sigma[:, None].expand(count, 2)
            if sigma.shape != (count, 2):
                raise ValueError(
                    f"sigma must be a float, [N] or [N, 2] with N = {count}, got "
                    f"{list(sigma.shape)}"
                )
            self.sigma = sigma.detach().to(device=device, dtype=dtype).contiguous()  # [N, 2]
        else:
            if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not sigma > 0:
                raise ValueError(f"sigma must be > 0, got {sigma!r}")
            self.sigma = torch.full((count, 2), float(sigma), device=device, dtype=dtype)
        self.cutoff = float(cutoff)
        if values is None:
            values = evaluate_network(network, pixel_to_unit(self.points, self.size), chunk_size)
            self.evaluations = count
        else:
            self.evaluations = 0
        self.values = values.detach().to(device=device, dtype=dtype)  # [N, C]
        self.reach = self.cutoff * self.sigma  # [N, 2], support half-widths (x, y) in pixels

    @torch.no_grad()
    def render_tile(self, window: Window) -> torch.Tensor:
        """The tile [C, h, w], from the points whose support overlaps it."""
        row0, col0, height, width = window
        x, y = self.points[:, 0], self.points[:, 1]
        reach_x, reach_y = self.reach[:, 0], self.reach[:, 1]
        near = (
            (x + reach_x >= col0)
            & (x - reach_x <= col0 + width - 1)
            & (y + reach_y >= row0)
            & (y - reach_y <= row0 + height - 1)
        )  # [N]
        offset = self.points.new_tensor([col0, row0])
        return interpolate(
            self.points[near] - offset,
            self.values[near],
            (height, width),
            self.sigma[near],
            cutoff=self.cutoff,
        )


def iter_tiles(
    renderer: DenseRenderer | SparseRenderer, size: tuple[int, int], tile_size: int = 512
) -> Iterator[tuple[Window, torch.Tensor]]:
    """(window, tile [C, h, w]) for each tile of the (H, W) raster, row-major."""
    for window in tile_windows(size, tile_size):
        yield window, renderer.render_tile(window)


def render(
    renderer: DenseRenderer | SparseRenderer, size: tuple[int, int], tile_size: int = 512
) -> torch.Tensor:
    """The whole raster [C, H, W] (use :func:`iter_tiles` when it does not fit in memory)."""
    height, width = check_size(size)
    image = None
    for (row0, col0, h, w), tile in iter_tiles(renderer, size, tile_size):
        if image is None:
            image = tile.new_empty(tile.shape[0], height, width)
        image[:, row0 : row0 + h, col0 : col0 + w] = tile
    return image
