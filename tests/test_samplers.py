"""Point placement (nuir.samplers)."""

from __future__ import annotations

import math

import pytest
import torch

from nuir.samplers import (
    blue_noise,
    gradient_importance,
    gradient_magnitude,
    jittered_grid,
    local_spacing,
    sample_points,
    uniform_grid,
    uniform_random,
)


def inside(points: torch.Tensor, size: tuple[int, int]) -> bool:
    height, width = size
    x, y = points[:, 0], points[:, 1]
    return bool(((x >= -0.5) & (x <= width - 0.5) & (y >= -0.5) & (y <= height - 0.5)).all())


def test_grid_with_a_square_count_is_the_lattice_of_cell_centres() -> None:
    # 8 x 4 points on a 16 x 8 raster: cells of 2 x 2 pixels, centres at 0.5, 2.5, ...
    points = uniform_grid((8, 16), 32)
    assert points.shape == (32, 2)
    expected_x = torch.arange(8) * 2 + 0.5
    expected_y = torch.arange(4) * 2 + 0.5
    torch.testing.assert_close(points[:8, 0], expected_x.float())
    torch.testing.assert_close(points[::8, 1], expected_y.float())
    # Same placement as nuir.upsample's low-resolution pixel centres: x = (s + 0.5) * 2 - 0.5.


@pytest.mark.parametrize("n", [1, 7, 100, 1000])
def test_grid_has_exactly_n_distinct_points_inside(n: int) -> None:
    points = uniform_grid((30, 50), n)
    assert points.shape == (n, 2)
    assert inside(points, (30, 50))
    assert torch.unique(points, dim=0).shape[0] == n


def test_jittered_grid_stays_in_its_cells_and_is_reproducible() -> None:
    grid = uniform_grid((20, 20), 100)  # 10 x 10 cells of 2 pixels
    jittered = jittered_grid((20, 20), 100, generator=torch.Generator().manual_seed(1))
    again = jittered_grid((20, 20), 100, generator=torch.Generator().manual_seed(1))
    assert torch.equal(jittered, again)
    assert (jittered - grid).abs().max() <= 1.0 + 1e-6
    assert (jittered - grid).abs().max() > 0.5  # it does move the points
    assert inside(jittered, (20, 20))
    assert torch.equal(jittered_grid((20, 20), 100, jitter=0.0), grid)


def test_uniform_random_covers_the_raster() -> None:
    points = uniform_random((10, 40), 4000, generator=torch.Generator().manual_seed(0))
    assert inside(points, (10, 40))
    # Each quarter of the width holds about a quarter of the points.
    counts = torch.histc(points[:, 0], bins=4, min=-0.5, max=39.5)
    assert counts.min() > 850 and counts.max() < 1150


def test_gradient_importance_concentrates_on_edges() -> None:
    image = torch.zeros(3, 32, 32)
    image[:, :, 16:] = 1.0  # one vertical edge between columns 15 and 16
    magnitude = gradient_magnitude(image)
    assert magnitude[:, 15:17].min() > 0 and magnitude[:, :14].max() == 0
    points = gradient_importance(
        image, 2000, uniform_fraction=0.2, generator=torch.Generator().manual_seed(0)
    )
    near_edge = ((points[:, 0] > 14.5) & (points[:, 0] < 16.5)).float().mean()
    # 80% of the mass on the two edge columns, plus their share of the uniform 20%.
    assert 0.75 < near_edge < 0.9
    assert inside(points, (32, 32))


def test_gradient_importance_on_a_flat_image_is_uniform() -> None:
    points = gradient_importance(
        torch.ones(1, 16, 16), 3000, generator=torch.Generator().manual_seed(0)
    )
    counts = torch.histc(points[:, 1], bins=4, min=-0.5, max=15.5)
    assert counts.min() > 650


def test_local_spacing_on_a_grid_is_the_grid_step() -> None:
    points = uniform_grid((24, 24), 144)  # 12 x 12, step 2
    spacing = local_spacing(points, k=4).reshape(12, 12)
    # Interior points: 4 neighbours at distance 2. Border points reach diagonally, a bit further.
    torch.testing.assert_close(spacing[1:-1, 1:-1], torch.full((10, 10), 2.0))
    assert spacing.min() >= 2.0 and spacing.max() <= 2.0 * (4 + 2**0.5) / 4 + 1e-6
    assert local_spacing(points[:1]).isinf().all()


def test_sample_points_dispatches_and_checks() -> None:
    image = torch.rand(1, 12, 18)
    generator = torch.Generator().manual_seed(0)
    for placement in ("grid", "jittered", "random", "blue_noise", "gradient"):
        points = sample_points(placement, (12, 18), 50, image=image, generator=generator)
        assert points.shape == (50, 2) and inside(points, (12, 18))
    with pytest.raises(ValueError, match="placement must be one of"):
        sample_points("blue", (12, 18), 50)
    with pytest.raises(ValueError, match="needs the target image"):
        sample_points("gradient", (12, 18), 50)
    with pytest.raises(ValueError, match="spatial size"):
        sample_points("gradient", (12, 17), 50, image=image)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: uniform_grid((8, 8), 0), ValueError, "n must be >= 1"),
        (lambda: uniform_grid((8, 8), 2.5), TypeError, "n must be an int"),
        (lambda: uniform_grid((0, 8), 4), ValueError, "size"),
        (lambda: jittered_grid((8, 8), 4, jitter=2.0), ValueError, "jitter"),
        (lambda: gradient_importance(torch.rand(8, 8), 4), ValueError, "image"),
        (
            lambda: gradient_importance(torch.rand(1, 8, 8), 4, uniform_fraction=-0.1),
            ValueError,
            "uniform_fraction",
        ),
        (lambda: local_spacing(torch.rand(5, 3)), ValueError, "points"),
    ],
)
def test_bad_arguments_are_named(call, error, message: str) -> None:
    with pytest.raises(error, match=message):
        call()


def test_random_spacing_follows_point_density() -> None:
    # n uniform points on an area A: mean spacing ~ sqrt(A / n) up to a constant near 1.
    points = uniform_random((64, 64), 1024, generator=torch.Generator().manual_seed(0))
    spacing = float(local_spacing(points).mean())
    assert 0.6 * math.sqrt(64 * 64 / 1024) < spacing < 1.2 * math.sqrt(64 * 64 / 1024)


def test_blue_noise_keeps_points_apart_without_holes() -> None:
    size, n = (64, 96), 1536  # 4 pixels per point: grid spacing 2
    generator = torch.Generator().manual_seed(3)
    points = blue_noise(size, n, generator=generator)
    assert points.shape == (n, 2) and inside(points, size)
    again = blue_noise(size, n, generator=torch.Generator().manual_seed(3))
    assert torch.equal(points, again)

    def nearest(p: torch.Tensor) -> torch.Tensor:
        distance = torch.cdist(p.double(), p.double())
        return distance.fill_diagonal_(math.inf).amin(1)  # [N]

    spacing = 2.0
    blue, random = nearest(points), nearest(uniform_random(size, n, generator=generator))
    # Poisson-disk-like: no pair closer than about 0.6 of the spacing (uniform draws have
    # pairs almost on top of each other) and the nearest-neighbour distances are even.
    assert blue.min() > 0.6 * spacing and random.min() < 0.2 * spacing
    assert blue.std() / blue.mean() < 0.5 * (random.std() / random.mean())
    # No large holes: every pixel centre has a point within 1.5 spacings.
    centres = torch.stack(
        torch.meshgrid(torch.arange(96.0), torch.arange(64.0), indexing="xy"), -1
    ).reshape(-1, 2)
    assert torch.cdist(centres.double(), points.double()).amin(1).max() < 1.5 * spacing
