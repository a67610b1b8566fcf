"""Gaussian-mixture interpolation on regular lattices (nuir.lattice) against direct solves."""

from __future__ import annotations

import numpy as np
import torch

import nuir
from nuir.lattice import CUTOFF, SIGMA, quincunx_fill_at, quincunx_taps, upsample2x


def gaussian(distance: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * (distance / SIGMA) ** 2) * (np.abs(distance) <= CUTOFF * SIGMA)


def test_half_way_values_are_the_mixture_through_the_samples() -> None:
    rng = np.random.default_rng(0)
    samples = rng.random(48)
    sites = np.arange(48.0)
    system = gaussian(sites[:, None] - sites[None, :])
    coefficients = np.linalg.solve(system, system.sum(1) * samples)  # normalised mixture
    at = np.arange(47) + 0.5
    row = gaussian(at[:, None] - sites[None, :])
    expected = row @ coefficients / row.sum(1)
    out = upsample2x(torch.from_numpy(samples)[None, None].expand(1, 2, 48).contiguous())
    got = out[0, 0, 1::2][:-1].numpy()
    interior = slice(12, -12)  # away from the ends, where the solve sees no reflection
    # Taps below 1e-5 are dropped: their sum bounds the difference.
    np.testing.assert_allclose(got[interior], expected[interior], atol=3e-5)
    np.testing.assert_array_equal(out[0, 0, 0::2].numpy(), samples)  # the samples are kept
    shifted = upsample2x(torch.from_numpy(samples)[None, None], first_new=(False, True))
    np.testing.assert_array_equal(shifted[0, 0, 1::2].numpy(), samples)


def test_upsampling_agrees_with_the_operator_on_a_full_lattice() -> None:
    torch.manual_seed(0)
    samples = torch.rand(3, 24, 24, dtype=torch.float64)
    lattice = (
        torch.stack(torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="xy"), -1)
        .reshape(-1, 2)
        .double()
    )  # (x, y) of the sites, row-major
    values = samples.reshape(3, -1).T.clone()
    for _ in range(300):  # Richardson: the mixture through the samples at the sites
        image = nuir.interpolate(lattice, values, (24, 24), SIGMA, cutoff=CUTOFF)
        values += (samples - image).reshape(3, -1).T
    fine = nuir.interpolate(2 * lattice, values, (48, 48), 2 * SIGMA, cutoff=CUTOFF)
    ours = upsample2x(samples)
    interior = (slice(None), slice(12, -12), slice(12, -12))
    # The operator's cutoff is a circle, the lattice filters' a square: the 8 neighbours at
    # (1, 3) and (3, 1) weigh exp(-8.9) = 1.4e-4 of the peak in one and 0 in the other, and the
    # solve amplifies such a difference up to ~30x at the lattice's Nyquist frequency (measured:
    # 2.5e-3 at most, 2e-4 on average).
    difference = (ours[interior] - fine[interior]).abs()
    assert float(difference.max()) < 5e-3 and float(difference.mean()) < 5e-4


def test_quincunx_fill_is_the_mixture_through_the_quincunx() -> None:
    rng = np.random.default_rng(1)
    half = 10
    ys, xs = np.mgrid[-half : half + 1, -half : half + 1]
    known = (ys % 2) == (xs % 2)  # (0, 0) is known, (1, 0) is missing
    samples = rng.random(ys.shape) * known
    site = np.stack([ys[known], xs[known]], 1).astype(float)
    difference = site[:, None, :] - site[None, :, :]
    system = gaussian(difference[..., 0]) * gaussian(difference[..., 1])
    offset = site - np.array([1.0, 0.0])
    row = gaussian(offset[:, 0]) * gaussian(offset[:, 1])
    weights = np.linalg.solve(system, row)  # the mixture through the quincunx, at (1, 0)
    expected = float(weights @ samples[known] / weights.sum())
    values = torch.from_numpy(samples)[None]
    got = float(quincunx_fill_at(values, torch.tensor([[half + 1, half]]))[0, 0])
    # Taps below 1e-3 are dropped (the kept ones renormalised): a few 1e-3 of difference.
    assert abs(got - expected) < 5e-3
    # Exact on constants; the four neighbours weigh most.
    ones = torch.ones(1, 21, 21, dtype=torch.float64)
    assert abs(float(quincunx_fill_at(ones, torch.tensor([[10, 9]]))[0, 0]) - 1.0) < 1e-12
    strongest = sorted(quincunx_taps(), key=lambda t: -abs(t[2]))[:4]
    assert {(dy, dx) for dy, dx, _ in strongest} == {(0, 1), (0, -1), (1, 0), (-1, 0)}
