"""Gaussian-mixture interpolation on regular lattices, as separable filters.

On a full regular lattice the normalised Gaussian mixture that passes through every sample (each
sample a Gaussian of standard deviation ``sigma`` lattice spacings, values solved so the mixture
interpolates) is a shift-invariant interpolator: its value half-way between samples is a fixed
filter of the samples, and the same holds for a sample missing from a quincunx lattice (every
other site of a square lattice). This module computes those filters once, by solving the mixture
on a long lattice, and applies them:

- :func:`upsample2x`: the lattice at twice the density, along both axes (the new sites from the
  half-way filter, the old ones unchanged);
- :func:`quincunx_fill_at`: the mixture of the quincunx's samples at sites it lacks.

Borders are handled by reflecting the samples. The result equals ``nuir.interpolate`` of the same
lattice (normalised, values solved) with a square cutoff; tests/test_lattice.py checks both.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

SIGMA = (
    0.75  # lattice spacings: wide enough to approach band-limited interpolation, stable to solve
)
CUTOFF = 4.0  # sigmas; beyond it a Gaussian is 3e-4 of its peak
TOLERANCE = 1e-5  # taps of smaller magnitude are dropped


def _gaussian(distance: np.ndarray, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * (distance / sigma) ** 2) * (np.abs(distance) <= CUTOFF * sigma)


@functools.lru_cache(maxsize=8)
def half_way_taps(sigma: float = SIGMA, half: int = 48) -> tuple[float, ...]:
    """Filter h with value(k + 1/2) = sum_j h[j] v[k + j - r + 1], j = 0..2r-1 (symmetric)."""
    sites = np.arange(-half, half + 1, dtype=np.float64)
    system = _gaussian(sites[:, None] - sites[None, :], sigma)  # [n, n]
    at = np.array([0.5])
    row = _gaussian(at[:, None] - sites[None, :], sigma)  # [1, n]
    # value(x) = row @ c / W(x), with system @ c = W(sites) * v: the weights on v.
    weight_sites = system.sum(1)
    weights = (row @ np.linalg.solve(system, np.diag(weight_sites)))[0] / row.sum()
    keep = np.nonzero(np.abs(weights) > TOLERANCE)[0]
    radius = int(max(abs(sites[keep[0]]), abs(sites[keep[-1]] - 1))) + 1
    taps = weights[half - radius + 1 : half + radius + 1]  # sites -r+1 .. r
    return tuple(float(t) for t in taps)


@functools.lru_cache(maxsize=8)
def quincunx_taps(sigma: float = SIGMA, half: int = 12) -> tuple[tuple[int, int, float], ...]:
    """(row offset, column offset, weight) of the quincunx's samples around a missing site."""
    ys, xs = np.mgrid[-half : half + 1, -half : half + 1]
    known = (ys % 2) == (xs % 2)  # the quincunx: sites whose offsets have the same parity
    site = np.stack([ys[known], xs[known]], 1).astype(np.float64)  # missing site at (1, 0)
    difference = site[:, None, :] - site[None, :, :]
    system = _gaussian(difference[..., 0], sigma) * _gaussian(difference[..., 1], sigma)
    offset = site - np.array([1.0, 0.0])
    row = _gaussian(offset[:, 0], sigma) * _gaussian(offset[:, 1], sigma)
    weights = np.linalg.solve(system, row)  # the mixture through the quincunx, at the site
    kept = [
        (int(dy), int(dx), float(w))
        for (dy, dx), w in zip(offset.astype(int), weights)
        if abs(w) > 10 * TOLERANCE and abs(dy) <= 4 and abs(dx) <= 4
    ]
    total = sum(w for *_, w in kept)  # normalised: a constant is filled in exactly
    return tuple((dy, dx, w / total) for dy, dx, w in kept)


def _upsample_last_axis(values: torch.Tensor, first_new: bool) -> torch.Tensor:
    """[..., n] -> [..., 2n]: samples at even positions (odd ones when ``first_new``), the
    half-way values between them at the others."""
    taps = half_way_taps()
    radius = len(taps) // 2
    shape = values.shape
    count = shape[-1]
    flat = values.reshape(-1, count)
    mode = "reflect" if count > radius else "replicate"
    padded = F.pad(flat[:, None], (radius, radius), mode=mode)[:, 0]  # [m, n + 2r]
    # between[k] is half-way between samples k - 1 and k (k = 0..n): a sum of shifted copies,
    # much faster on a CPU than a one-channel convolution.
    between = taps[-1] * padded[:, : count + 1]
    for j in range(1, len(taps)):
        between += taps[-1 - j] * padded[:, j : j + count + 1]
    between = between.reshape(*shape[:-1], count + 1)
    out = values.new_empty(*shape[:-1], 2 * count)
    if first_new:  # new, old, new, old, ...
        out[..., 0::2] = between[..., :-1]
        out[..., 1::2] = values
    else:  # old, new, old, new, ...
        out[..., 0::2] = values
        out[..., 1::2] = between[..., 1:]
    return out


def upsample2x(values: torch.Tensor, first_new: tuple[bool, bool] = (False, False)) -> torch.Tensor:
    """[C, h, w] lattice samples -> [C, 2h, 2w], the mixture at twice the density; the old
    samples sit at even rows / columns (odd ones where ``first_new`` says so for that axis)."""
    rows = _upsample_last_axis(values, first_new[1])
    columns = _upsample_last_axis(rows.transpose(-1, -2).contiguous(), first_new[0])
    return columns.transpose(-1, -2).contiguous()


def quincunx_fill_at(values: torch.Tensor, sites: torch.Tensor, width: int | None = None):
    """[C, h, w] samples (zero where unknown), sites missing from the quincunx as [n, 2] (row,
    col) or, with ``width``, as flat indices row * width + col -> the quincunx filter's weighted
    sum of the samples around each site: [C, n]."""
    taps = [(dy, dx, w) for dy, dx, w in quincunx_taps() if abs(w) > 1e-3]
    total = sum(w for *_, w in taps)
    radius = max(max(abs(dy), abs(dx)) for dy, dx, _ in taps)
    if width is None:
        rows, cols = sites[:, 0], sites[:, 1]
    else:
        rows, cols = sites // width, sites % width
    padded = F.pad(values, (radius, radius, radius, radius))
    stride = padded.shape[-1]
    flat = padded.reshape(values.shape[0], -1)
    base = (rows + radius) * stride + cols + radius
    out = values.new_zeros(values.shape[0], base.numel())
    for dy, dx, weight in taps:
        out += (weight / total) * flat.index_select(1, base + dy * stride + dx)
    return out
