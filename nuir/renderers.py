"""Rendering coordinate networks to rasters of any size, tile by tile.

A *renderer* turns a window (row0, col0, h, w) of the output raster into a tile [C, h, w]:

- :class:`DenseRenderer` evaluates the network at every output pixel (the reference).
- :class:`GridRenderer` evaluates it once on regular grids of sample points -- a base grid over
  the whole image, finer grids over the blocks that need them -- and reconstructs every tile with
  ``nuir.interpolate``. The values are *prefiltered*: solved so that the mixture passes through
  the network's samples instead of blurring them. Far fewer network evaluations than a dense
  render at any scale above 1, and the cost of a tile is the interpolation's.
- :class:`PointRenderer` interpolates given points, sigma and values (e.g. a point set's own
  reconstruction).

Coordinates follow ``nuir.geometry``. :func:`render` assembles a whole raster; :func:`iter_tiles`
yields tiles for outputs that do not fit in memory.
"""

from __future__ import annotations

import math
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


def network_device_dtype(network: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of the network's first floating-point parameter or buffer."""
    for tensor in list(network.parameters()) + list(network.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def _check_iterations(iterations: object) -> int:
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be an int >= 0, got {iterations!r}")
    return iterations


def _lattice_image(
    values: torch.Tensor, mask: torch.Tensor, sigma: float, cutoff: float, normalised: bool
) -> torch.Tensor:
    """The mixture of Gaussians at the masked pixel centres of an (h, w) lattice, values [C, h, w],
    evaluated at every pixel centre: normalised (an interpolation) or a plain sum of Gaussians of
    unit mass per lattice cell."""
    channels, height, width = values.shape
    centres = pixel_centres((0, 0, height, width), dtype=values.dtype, device=values.device)
    flat = mask.flatten()
    image, weight = interpolate(
        centres[flat],
        values.reshape(channels, -1).T[flat],
        (height, width),
        sigma,
        cutoff=cutoff,
        return_weight=True,
    )
    return image if normalised else image * weight


def _prefilter(
    samples: torch.Tensor,
    mask: torch.Tensor,
    sigma: float,
    iterations: int,
    cutoff: float,
    normalised: bool,
) -> torch.Tensor:
    """Values at the masked lattice points [C, h, w] whose mixture passes through ``samples``
    there (Richardson iteration; unmasked entries are 0)."""
    iterations = _check_iterations(iterations)
    target = samples * mask
    values = target.clone()
    for _ in range(iterations):
        values += (target - _lattice_image(values, mask, sigma, cutoff, normalised)) * mask
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
        summed: render the plain sum of the Gaussians times ``values`` (scaled by ``area``, the
            output area each point stands for) instead of their normalised average: a layer that
            fades out where its points end, for adding to another.
    """

    def __init__(
        self,
        points: torch.Tensor,
        sigma: float | torch.Tensor,
        values: torch.Tensor,
        *,
        cutoff: float = 3.0,
        summed: bool = False,
        area: float = 1.0,
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
        self.summed = summed
        self.area = float(area)
        self.reach = self.cutoff * self.sigma  # [N, 2] support half-widths in pixels

    @torch.no_grad()
    def render_tile(self, window: Window) -> torch.Tensor:
        """The tile [C, h, w], from the points whose support reaches it."""
        row0, col0, height, width = window
        near = points_reaching(self.points, self.reach, window)
        offset = self.points.new_tensor([col0, row0])
        image, weight = interpolate(
            self.points[near] - offset,
            self.values[near],
            (height, width),
            self.sigma[near],
            cutoff=self.cutoff,
            return_weight=True,
        )
        return image * (weight * self.area) if self.summed else image


def _layer_on(values, mask, lattice, target_lattice, sigma, summed: bool) -> torch.Tensor:
    """A level of :class:`GridRenderer` (values [C, h, w] at the masked centres of ``lattice``)
    rendered at the pixel centres of a finer lattice: [C, h', w']."""
    flat = mask.flatten()
    centres = pixel_centres((0, 0, *lattice), dtype=values.dtype, device=values.device)
    cell = (target_lattice[1] / lattice[1], target_lattice[0] / lattice[0])
    layer = PointRenderer(
        rescale_points(centres[flat], lattice, target_lattice),
        values.new_tensor(cell).mul(sigma).expand(int(flat.sum()), 2),
        values.reshape(values.shape[0], -1).T[flat],
        summed=summed,
        area=cell[0] * cell[1],
    )
    return layer.render_tile((0, 0, *target_lattice))


class GridRenderer:
    """Evaluates the network on regular grids of sample points, then interpolates any tile.

    Level 0 is a grid of spacing ``spacing`` over the whole image; level l > 0 a grid of spacing
    ``spacing / 2**l`` over the blocks (``block`` x ``block`` pixels of the reference raster)
    whose entry in ``levels`` is at least l. Level 0 carries the network's samples, prefiltered
    so that its interpolation passes through them; every finer level carries what the coarser
    ones still miss at its samples (prefiltered the same way) as a sum of Gaussians that fades
    out where its blocks end, so the levels add up without seams.

    Args:
        network: coordinates [M, 2] in [-1, 1] -> values [M, C].
        reference_size: (H, W) of the raster the spacing and blocks are measured on (the
            training image).
        size: (H', W') of the output raster.
        levels: [ceil(H / block), ceil(W / block)] integer tensor, the finest level each block
            needs; None: the base grid only.
        block: block side in reference pixels.
        spacing: base grid spacing in reference pixels.
        sigma: Gaussian standard deviation in grid spacings (0.5: the prefilter converges).
        prefilter: Richardson iterations per level (0: the samples as they are).
        cutoff: Mahalanobis radius of each Gaussian.
        chunk_size: network evaluations per call.
    """

    def __init__(
        self,
        network: nn.Module,
        reference_size: tuple[int, int],
        size: tuple[int, int],
        *,
        levels: torch.Tensor | None = None,
        block: int = 8,
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
        blocks = (
            math.ceil(self.reference_size[0] / block),
            math.ceil(self.reference_size[1] / block),
        )
        if levels is None:
            levels = torch.zeros(blocks, dtype=torch.int64)
        if tuple(levels.shape) != blocks:
            raise ValueError(f"levels must have shape {list(blocks)}, got {list(levels.shape)}")
        self.layers: list[PointRenderer] = []
        self.evaluations = 0
        coarse: list[tuple[torch.Tensor, torch.Tensor, tuple[int, int]]] = []  # solved levels
        for level in range(int(levels.max()) + 1):
            step = spacing / 2**level
            lattice = (
                max(1, round(self.reference_size[0] / step)),
                max(1, round(self.reference_size[1] / step)),
            )
            centres = pixel_centres((0, 0, *lattice), dtype=dtype, device=device)  # [h*w, 2]
            on_reference = rescale_points(centres, lattice, self.reference_size)
            block_of = ((on_reference + 0.5).clamp_min(0) / block).long()  # block of its pixel
            block_of[:, 0].clamp_(max=blocks[1] - 1)
            block_of[:, 1].clamp_(max=blocks[0] - 1)
            mask = levels.to(device)[block_of[:, 1], block_of[:, 0]] >= level  # [h*w]
            values = evaluate_network(
                network, pixel_to_unit(centres[mask], lattice), chunk_size
            )  # [m, C]
            self.evaluations += int(mask.sum())
            samples = values.new_zeros(lattice[0] * lattice[1], values.shape[1])
            samples[mask] = values
            samples = samples.T.reshape(-1, *lattice)  # [C, h, w]
            for coarser, (layer_values, layer_mask, layer_lattice) in enumerate(coarse):
                samples -= _layer_on(
                    layer_values, layer_mask, layer_lattice, lattice, sigma, summed=coarser > 0
                )
            mask = mask.reshape(lattice)
            solved = _prefilter(samples, mask, sigma, prefilter, cutoff, normalised=level == 0)
            coarse.append((solved, mask, lattice))
            flat = mask.flatten()
            cell = (self.size[1] / lattice[1], self.size[0] / lattice[0])  # output px (x, y)
            self.layers.append(
                PointRenderer(
                    rescale_points(centres[flat], lattice, self.size),
                    torch.tensor(cell, device=device, dtype=dtype)
                    .mul(sigma)
                    .expand(int(flat.sum()), 2),
                    solved.reshape(solved.shape[0], -1).T[flat],
                    cutoff=cutoff,
                    summed=level > 0,
                    area=cell[0] * cell[1],
                )
            )

    @property
    def points(self) -> int:
        """Sample points over all levels."""
        return sum(layer.points.shape[0] for layer in self.layers)

    @torch.no_grad()
    def render_tile(self, window: Window) -> torch.Tensor:
        """The tile [C, h, w]: the base level plus every finer one."""
        tile = self.layers[0].render_tile(window)
        for layer in self.layers[1:]:
            tile += layer.render_tile(window)
        return tile


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
