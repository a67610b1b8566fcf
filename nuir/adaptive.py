"""Adaptive rendering: evaluate a coordinate network only where Gaussian-mixture interpolation of
coarser samples is wrong.

The network is sampled on nested lattices of a *sampling raster* (the output, or twice the
resolution the network's detail lives at when the output is larger): level 0 every 4th pixel,
level 1 every 2nd, level 2 every pixel. Each level is first predicted from the one above by
Gaussian-mixture interpolation (``nuir.lattice.upsample2x``). Then, block by block (a block is
``block`` x ``block`` cells of level 0):

1. *probes*: the network at the level's sites half-way between the coarser samples in both
   directions (a quarter of the level's sites), compared with the prediction: the block's error
   estimate (mean squared error summed over channels);
2. *refinement*: blocks whose estimate exceeds the tolerance get the network at all their sites
   of the level; the others keep the prediction, corrected at the sites missing from the
   quincunx (coarse samples and probes) by the mixture of the probes' residuals
   (``nuir.lattice.quincunx_fill_at``);
3. at the next level only blocks that were refined and whose residuals exceeded ``kappa`` times
   the tolerance are candidates (where the coarser level needed no refinement, the finer one
   needs none either: the residuals shrink level by level).

The finished sampling raster is resized to the output by a Lanczos filter (Pillow) when it is
smaller. Everything works window by window with a margin, so memory stays bounded by the window.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import nn

from nuir._validate import check_size
from nuir.geometry import Window, pixel_to_unit
from nuir.lattice import quincunx_fill_at, upsample2x
from nuir.renderers import network_device_dtype

LEVELS = 3  # lattice spacings 4, 2, 1 pixels of the sampling raster
COARSEST = 2 ** (LEVELS - 1)
# Sampling-raster pixels around a window: the reach of the half-way filter (12 sites) at levels
# 0 and 1 (48 + 24 pixels) and of the final Lanczos resize.
MARGIN = 80


@dataclass
class Statistics:
    """What a render did: network evaluations per level and blocks refined per level."""

    evaluations: list[int] = field(default_factory=lambda: [0] * LEVELS)
    probes: list[int] = field(default_factory=lambda: [0] * LEVELS)
    blocks: int = 0
    refined: list[int] = field(default_factory=lambda: [0] * LEVELS)

    @property
    def total(self) -> int:
        return sum(self.evaluations)


def check_network_output(values: torch.Tensor, count: int) -> torch.Tensor:
    if not isinstance(values, torch.Tensor) or values.dim() != 2 or values.shape[0] != count:
        shape = list(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise ValueError(
            f"network must map coordinates [M, 2] to values [M, C]; for M = {count} it returned "
            f"{shape}"
        )
    if not torch.isfinite(values.sum()):  # NaN and infinities reach the sum
        raise ValueError("network returned NaN or infinite values")
    return values


class AdaptiveRenderer:
    """Renders any coordinate network adaptively (see the module docstring).

    Args:
        network: an ``nn.Module`` or a callable mapping coordinates [M, 2] in [-1, 1] (x, y) to
            values [M, C].
        size: (H, W) of the output raster.
        native_size: (h, w) of the raster the network's detail lives at (e.g. its training
            image); the sampling raster is at most twice that. None: the output's size.
        tolerance: the RMS error per channel ([0, 1] units) a block may keep before it is
            refined; smaller is slower and closer to evaluating every pixel.
        block: block side in cells of the coarsest lattice.
        kappa: a refined block is a candidate at the next level when its residuals' mean square
            exceeds kappa x the tolerance's.
        chunk_size: network evaluations per call.
        device, dtype: of the coordinates (default: the network's first parameter's).
    """

    def __init__(
        self,
        network: nn.Module | Callable[[torch.Tensor], torch.Tensor],
        size: tuple[int, int],
        *,
        native_size: tuple[int, int] | None = None,
        tolerance: float = 0.02,
        block: int = 2,
        kappa: float = 10.0,
        chunk_size: int = 65536,
        device=None,
        dtype=None,
    ) -> None:
        if not callable(network):
            raise TypeError(f"network must be callable, got {type(network).__name__}")
        self.size = check_size(size)
        native = self.size if native_size is None else check_size(native_size)
        self.raster = (min(self.size[0], 2 * native[0]), min(self.size[1], 2 * native[1]))
        if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real):
            raise ValueError(f"tolerance must be a number > 0, got {tolerance!r}")
        if not (tolerance > 0 and math.isfinite(tolerance)):
            raise ValueError(f"tolerance must be > 0, got {tolerance!r}")
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise ValueError(f"block must be a positive int, got {block!r}")
        if not kappa >= 1:
            raise ValueError(f"kappa must be >= 1, got {kappa!r}")
        self.network = network
        self.tolerance = float(tolerance)
        self.block = block
        self.kappa = float(kappa)
        self.chunk_size = int(chunk_size)
        own_device, own_dtype = network_device_dtype(network)
        self.device = torch.device(device) if device is not None else own_device
        self.dtype = dtype or own_dtype
        self.stats = Statistics()

    @property
    def evaluations(self) -> int:
        return self.stats.total

    def preferred_tile(self) -> int:
        """An output tile side whose sampling window is large, so margins cost little."""
        factor = max(self.size[0] / self.raster[0], self.size[1] / self.raster[1])
        return max(256, int(2048 * factor))

    # --- the network ---------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """The network at sampling-raster pixels (rows [n], cols [n]): [C, n]."""
        positions = torch.stack([cols, rows], 1).to(self.device, self.dtype)
        coords = pixel_to_unit(positions, self.raster)
        if coords.shape[0] == 0:
            probe = check_network_output(self.network(coords.new_zeros(1, 2)), 1)
            return probe.new_zeros(probe.shape[1], 0)
        parts = [
            check_network_output(self.network(chunk), chunk.shape[0])
            for chunk in coords.split(self.chunk_size)
        ]
        values = parts[0] if len(parts) == 1 else torch.cat(parts)
        return values.T.float().cpu()

    # --- one window of the sampling raster ------------------------------------------------------

    def sample_region(self, region: Window) -> torch.Tensor:
        """The finished sampling raster over ``region`` (row0, col0, h, w), row0 and col0
        multiples of the block side: [C, h, w]."""
        row0, col0, height, width = region
        unit = COARSEST * self.block  # block side in sampling pixels
        blocks = (math.ceil(height / unit), math.ceil(width / unit))
        threshold = 3 * self.tolerance**2  # mean squared error summed over channels
        shape = (math.ceil(height / COARSEST), math.ceil(width / COARSEST))
        rows = row0 + COARSEST * torch.arange(shape[0])
        cols = col0 + COARSEST * torch.arange(shape[1])
        values = self.evaluate(rows.repeat_interleave(shape[1]), cols.repeat(shape[0]))
        values = values.reshape(-1, *shape)
        self.stats.evaluations[0] += shape[0] * shape[1]
        self.stats.blocks += blocks[0] * blocks[1]
        candidates = torch.arange(blocks[0] * blocks[1])  # flat ids of the candidate blocks
        for level in range(1, LEVELS):
            step = COARSEST >> level
            side = unit // step  # block side in sites of this level
            shape = (math.ceil(height / step), math.ceil(width / step))
            predicted = upsample2x(values)[:, : shape[0], : shape[1]].reshape(values.shape[0], -1)
            probes, probe_blocks = self.sites(candidates, blocks, side, shape, odd_odd=True)
            truth = self.evaluate_sites(probes, shape, row0, col0, step)
            residual = truth - predicted.index_select(1, probes)  # [C, n]
            estimate = self.per_block(residual, probe_blocks, blocks)
            refined = estimate[candidates] > threshold
            refine, keep = candidates[refined], candidates[~refined]
            rest, rest_blocks = self.sites(refine, blocks, side, shape, odd_odd=False)
            rest_truth = self.evaluate_sites(rest, shape, row0, col0, step)
            filled = predicted.clone()
            # Unrefined candidates: the prediction corrected at their remaining sites by the
            # mixture of the probes' residuals (the quincunx filter).
            field = torch.zeros_like(predicted).index_copy_(1, probes, residual)
            others, _ = self.sites(keep, blocks, side, shape, odd_odd=False)
            correction = quincunx_fill_at(field.reshape(-1, *shape), others, shape[1])
            filled.index_add_(1, others, correction)
            rest_residual = rest_truth - filled.index_select(1, rest)
            filled.index_copy_(1, probes, truth).index_copy_(1, rest, rest_truth)
            self.stats.probes[level] += probes.numel()
            self.stats.evaluations[level] += probes.numel() + rest.numel()
            self.stats.refined[level] += refine.numel()
            # Candidates at the next level: refined blocks whose new residuals stay large.
            surplus = self.per_block(
                torch.cat([residual, rest_residual], 1),
                torch.cat([probe_blocks, rest_blocks]),
                blocks,
            )
            candidates = refine[surplus[refine] > self.kappa * threshold]
            values = filled.reshape(-1, *shape)
        return values

    def evaluate_sites(self, flat: torch.Tensor, shape, row0: int, col0: int, step: int):
        """The network at level sites given by flat indices into ``shape``: [C, n]."""
        return self.evaluate(row0 + step * (flat // shape[1]), col0 + step * (flat % shape[1]))

    @staticmethod
    def sites(ids: torch.Tensor, blocks, side: int, shape, odd_odd: bool):
        """Level sites of the blocks ``ids`` as flat indices into ``shape``, with their blocks:
        those odd in both indices (the probes), or those odd in exactly one (the rest of the
        new sites)."""
        local = torch.arange(side)
        r, c = torch.meshgrid(local, local, indexing="ij")
        chosen = (r % 2 == 1) & (c % 2 == 1) if odd_odd else (r % 2) != (c % 2)
        r, c = r[chosen], c[chosen]  # [k]
        rows = (ids // blocks[1] * side)[:, None] + r[None]  # [m, k]
        cols = (ids % blocks[1] * side)[:, None] + c[None]
        inside = (rows < shape[0]) & (cols < shape[1])
        flat = (rows * shape[1] + cols)[inside]
        return flat, ids[:, None].expand_as(rows)[inside]

    @staticmethod
    def per_block(residual: torch.Tensor, ids: torch.Tensor, blocks) -> torch.Tensor:
        """Mean over each block's sites of the squared residual summed over channels: [blocks]."""
        squared = torch.zeros(blocks[0] * blocks[1], dtype=torch.float64)
        squared.index_add_(0, ids, residual.square().sum(0).double())
        counts = torch.zeros_like(squared).index_add_(0, ids, torch.ones_like(squared[ids]))
        return squared / counts.clamp_min(1)

    # --- output tiles -------------------------------------------------------------------------

    @torch.no_grad()
    def render_tile(self, window: Window) -> torch.Tensor:
        """The output tile [C, h, w]."""
        row0, col0, height, width = window
        fy, fx = self.size[0] / self.raster[0], self.size[1] / self.raster[1]
        # Sampling-raster pixels the window needs, with a margin, aligned to the lattices.
        low_y, high_y = self.needed(row0, height, fy, self.raster[0])
        low_x, high_x = self.needed(col0, width, fx, self.raster[1])
        region = (low_y, low_x, high_y - low_y, high_x - low_x)
        sampled = self.sample_region(region)  # [C, h', w']
        if (fy, fx) == (1.0, 1.0):
            return sampled[
                :, row0 - low_y : row0 - low_y + height, col0 - low_x : col0 - low_x + width
            ]
        box = (
            col0 / fx - low_x,
            row0 / fy - low_y,
            (col0 + width) / fx - low_x,
            (row0 + height) / fy - low_y,
        )
        planes = [
            np.asarray(
                Image.fromarray(plane.numpy()).resize(
                    (width, height), Image.Resampling.LANCZOS, box=box
                )
            )
            for plane in sampled
        ]
        return torch.from_numpy(np.stack(planes))

    def needed(self, start: int, length: int, factor: float, limit: int) -> tuple[int, int]:
        """[low, high) of sampling pixels behind output pixels [start, start + length)."""
        low = math.floor(start / factor) - MARGIN
        high = math.ceil((start + length) / factor) + MARGIN
        unit = COARSEST * self.block  # windows start on the block grid, so blocks agree
        low = max(0, low - low % unit)
        return low, min(limit, high)
