"""Rendering coordinate networks to rasters of any size, tile by tile.

A *renderer* turns a window (row0, col0, h, w) of the output raster into a tile [C, h, w]:

- :class:`DenseRenderer` evaluates the network at every output pixel (the reference).
- :class:`GridRenderer` evaluates it once on a regular grid of sample points and reconstructs
  every tile with ``nuir.interpolate``. The values are *prefiltered*: solved so that the mixture
  passes through the network's samples instead of blurring them.
- ``nuir.adaptive.AdaptiveRenderer`` samples the network where interpolation of coarser samples
  is wrong (the default of ``python -m models.render``).
- :class:`PointRenderer` interpolates given points, sigma and values (e.g. a point set's own
  reconstruction).

Coordinates follow ``nuir.geometry``. :func:`render` assembles a whole raster; :func:`iter_tiles`
yields tiles for outputs that do not fit in memory.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator

import torch
from torch import nn

from nuir._validate import check_size
from nuir.geometry import (
    Window,
    pixel_centres,
    pixel_to_unit,
    points_reaching,
    rescale_points,
    tile_windows,
)
from nuir.ops import interpolate


@torch.no_grad()
def evaluate_network(network: nn.Module, coords: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """network(coords) in chunks of chunk_size rows: coords [M, 2] -> values [M, C]."""
    if coords.shape[0] == 0:
        probe = network(coords.new_zeros(1, coords.shape[-1]))
        return probe.new_zeros(0, probe.shape[-1])
    return torch.cat([network(chunk) for chunk in coords.split(chunk_size)])


def network_device_dtype(network) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of the network's first floating-point parameter or buffer (CPU float32
    for a plain callable)."""
    if not isinstance(network, nn.Module):
        return torch.device("cpu"), torch.float32
    for tensor in list(network.parameters()) + list(network.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def _check_iterations(iterations: object) -> int:
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be an int >= 0, got {iterations!r}")
    return iterations


def _lattice_image(values: torch.Tensor, sigma: float, cutoff: float) -> torch.Tensor:
    """The normalised mixture of Gaussians at the pixel centres of an (h, w) lattice, values
    [C, h, w], evaluated at every pixel centre."""
    channels, height, width = values.shape
    centres = pixel_centres((0, 0, height, width), dtype=values.dtype, device=values.device)
    return interpolate(
        centres, values.reshape(channels, -1).T, (height, width), sigma, cutoff=cutoff
    )


def _prefilter(samples: torch.Tensor, sigma: float, iterations: int, cutoff: float) -> torch.Tensor:
    """Values on a lattice [C, h, w] whose mixture passes through ``samples`` (Richardson
    iteration)."""
    iterations = _check_iterations(iterations)
    values = samples.clone()
    for _ in range(iterations):
        values += samples - _lattice_image(values, sigma, cutoff)
    return values


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
        self.device, self.dtype = network_device_dtype(network)
        self.evaluations = 0

    @torch.no_grad()
    def render_tile(self, window: Window) -> torch.Tensor:
        """The tile [C, h, w]."""
        _, _, height, width = window
        centres = pixel_centres(window, dtype=self.dtype, device=self.device)  # [h*w, 2]
        values = evaluate_network(self.network, pixel_to_unit(centres, self.size), self.chunk_size)
        self.evaluations += centres.shape[0]
        return values.T.reshape(-1, height, width)


def _per_axis_sigma(sigma, count: int, device, dtype) -> torch.Tensor:
    """A float, [N] or [N, 2] sigma as [N, 2]."""
    if isinstance(sigma, torch.Tensor):
        if sigma.shape == (count,):
            sigma = sigma[:, None].expand(count, 2)
        if sigma.shape != (count, 2):
            raise ValueError(
                f"sigma must be a float, [N] or [N, 2] with N = {count}, got {list(sigma.shape)}"
            )
        return sigma.detach().to(device=device, dtype=dtype).contiguous()
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    return torch.full((count, 2), float(sigma), device=device, dtype=dtype)


class PointRenderer:
    """Interpolates any tile from N points with their sigma and values.

    Args:
        points: [N, 2] (x, y) positions on the output raster, in its pixel units.
        sigma: Gaussian standard deviation in output pixels: a float, [N] or [N, 2] (x, y).
        values: [N, C].
        cutoff: Mahalanobis radius of each Gaussian (as in ``nuir.interpolate``).
    """

    def __init__(
        self,
        points: torch.Tensor,
        sigma: float | torch.Tensor,
        values: torch.Tensor,
        *,
        cutoff: float = 3.0,
    ):
        if not isinstance(points, torch.Tensor) or points.dim() != 2 or points.shape[-1] != 2:
            raise ValueError(
                "points must be a tensor of shape [N, 2], got "
                + (str(list(points.shape)) if isinstance(points, torch.Tensor) else repr(points))
            )
        if not isinstance(values, torch.Tensor) or values.shape[:1] != points.shape[:1]:
            raise ValueError("values must be a tensor [N, C] with one row per point")
        self.points = points.detach()  # [N, 2]
        self.values = values.detach().to(self.points)  # [N, C]
        self.sigma = _per_axis_sigma(sigma, points.shape[0], points.device, points.dtype)
        self.cutoff = float(cutoff)
        self.reach = self.cutoff * self.sigma  # [N, 2] support half-widths in pixels

    @torch.no_grad()
    def render_tile(self, window: Window) -> torch.Tensor:
        """The tile [C, h, w], from the points whose support reaches it."""
        row0, col0, height, width = window
        near = points_reaching(self.points, self.reach, window)
        offset = self.points.new_tensor([col0, row0])
        return interpolate(
            self.points[near] - offset,
            self.values[near],
            (height, width),
            self.sigma[near],
            cutoff=self.cutoff,
        )


class GridRenderer:
    """Evaluates the network on a regular grid of sample points, then interpolates any tile.

    The grid has spacing ``spacing`` pixels of the reference raster; its values are prefiltered
    so that the mixture passes through the network's samples.

    Args:
        network: coordinates [M, 2] in [-1, 1] -> values [M, C].
        reference_size: (H, W) of the raster the spacing is measured on (the training image).
        size: (H', W') of the output raster.
        spacing: grid spacing in reference pixels.
        sigma: Gaussian standard deviation in grid spacings (0.5: the prefilter converges).
        prefilter: Richardson iterations (0: the samples as they are).
        cutoff: Mahalanobis radius of each Gaussian.
        chunk_size: network evaluations per call.
    """

    def __init__(
        self,
        network: nn.Module,
        reference_size: tuple[int, int],
        size: tuple[int, int],
        *,
        spacing: float = 1.0,
        sigma: float = 0.5,
        prefilter: int = 3,
        cutoff: float = 3.0,
        chunk_size: int = 65536,
    ):
        self.reference_size = check_size(reference_size)
        self.size = check_size(size)
        if not spacing > 0:
            raise ValueError(f"spacing must be > 0, got {spacing!r}")
        if not 0 < sigma <= 0.6:
            raise ValueError(f"sigma must be in (0, 0.6] grid spacings, got {sigma!r}")
        _check_iterations(prefilter)
        device, dtype = network_device_dtype(network)
        lattice = (
            max(1, round(self.reference_size[0] / spacing)),
            max(1, round(self.reference_size[1] / spacing)),
        )
        centres = pixel_centres((0, 0, *lattice), dtype=dtype, device=device)  # [h*w, 2]
        values = evaluate_network(network, pixel_to_unit(centres, lattice), chunk_size)  # [m, C]
        self.evaluations = centres.shape[0]
        samples = values.T.reshape(-1, *lattice)  # [C, h, w]
        solved = _prefilter(samples, sigma, prefilter, cutoff)
        cell = (self.size[1] / lattice[1], self.size[0] / lattice[0])  # output px (x, y)
        self.layer = PointRenderer(
            rescale_points(centres, lattice, self.size),
            torch.tensor(cell, device=device, dtype=dtype).mul(sigma).expand(centres.shape[0], 2),
            solved.reshape(solved.shape[0], -1).T,
            cutoff=cutoff,
        )

    @property
    def points(self) -> int:
        return self.layer.points.shape[0]

    @torch.no_grad()
    def render_tile(self, window: Window) -> torch.Tensor:
        """The tile [C, h, w]."""
        return self.layer.render_tile(window)


def iter_tiles(renderer, size: tuple[int, int], tile_size: int = 512) -> Iterator:
    """(window, tile [C, h, w]) for each tile of the (H, W) raster, row-major."""
    for window in tile_windows(size, tile_size):
        yield window, renderer.render_tile(window)


def render(renderer, size: tuple[int, int], tile_size: int = 512) -> torch.Tensor:
    """The whole raster [C, H, W] (use :func:`iter_tiles` when it does not fit in memory)."""
    height, width = check_size(size)
    image = None
    for (row0, col0, h, w), tile in iter_tiles(renderer, size, tile_size):
        if image is None:
            image = tile.new_empty(tile.shape[0], height, width)
        image[:, row0 : row0 + h, col0 : col0 + w] = tile
    return image
