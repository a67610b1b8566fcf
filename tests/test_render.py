"""Rendering: the raster conventions (nuir.geometry), the renderers (nuir.renderers), the render
command (python -m models.render) and the render benchmark (python -m models.bench_render)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from _helpers import fit
from PIL import Image

import nuir
from models import bench_render
from models import render as render_cli
from models.checkpoint import load_system
from models.siren import Siren
from nuir.geometry import (
    pixel_centres,
    pixel_to_unit,
    rescale_points,
    tile_windows,
    unit_to_pixel,
)
from nuir.renderers import (
    DenseRenderer,
    GridRenderer,
    PointRenderer,
    render,
)


def test_pixel_unit_mapping_is_exact_at_edges_and_centres() -> None:
    size = (10, 20)  # H, W
    edges = torch.tensor([[-0.5, -0.5], [19.5, 9.5]])
    torch.testing.assert_close(pixel_to_unit(edges, size), torch.tensor([[-1.0, -1.0], [1, 1]]))
    centre = torch.tensor([[0.0, 0.0]])  # first pixel centre: -1 + (2 * 0 + 1) / W
    torch.testing.assert_close(pixel_to_unit(centre, size), torch.tensor([[-1 + 1 / 20, -0.9]]))
    points = torch.rand(50, 2) * 20 - 0.5
    torch.testing.assert_close(unit_to_pixel(pixel_to_unit(points, size), size), points)


def test_rescaling_follows_the_upsample_convention() -> None:
    points = torch.tensor([[0.0, 0.0], [3.0, 1.0], [-0.5, 7.5]])
    # k = 4: x -> (x + 0.5) * 4 - 0.5.
    expected = (points + 0.5) * 4 - 0.5
    torch.testing.assert_close(rescale_points(points, (8, 8), (32, 32)), expected)
    # The network sees the same coordinates before and after.
    torch.testing.assert_close(
        pixel_to_unit(rescale_points(points, (8, 8), (32, 32)), (32, 32)),
        pixel_to_unit(points, (8, 8)),
    )


def test_tiles_cover_the_raster_once() -> None:
    windows = tile_windows((10, 7), 4)
    covered = torch.zeros(10, 7, dtype=torch.int64)
    for row0, col0, h, w in windows:
        covered[row0 : row0 + h, col0 : col0 + w] += 1
    assert (covered == 1).all() and len(windows) == 3 * 2


def test_dense_render_is_the_network_at_pixel_centres_in_any_tiling() -> None:
    torch.manual_seed(0)
    network = Siren(out_features=3, hidden_features=16, hidden_layers=1)
    size = (13, 9)
    expected = network(pixel_to_unit(pixel_centres((0, 0, *size)), size)).T.reshape(3, *size)
    renderer = DenseRenderer(network, size, chunk_size=7)
    torch.testing.assert_close(render(renderer, size, tile_size=4), expected.detach())
    torch.testing.assert_close(render(renderer, size, tile_size=100), expected.detach())
    assert renderer.evaluations == 2 * 13 * 9


def test_point_render_is_tiling_independent_and_matches_upsample() -> None:
    torch.manual_seed(0)
    low = torch.rand(2, 6, 5)  # [C, h, w]
    size = (24, 20)  # 4x
    points = rescale_points(pixel_centres((0, 0, 6, 5)), (6, 5), size)  # [30, 2]
    values = low.flatten(1).T  # [30, 2], row-major like pixel_centres
    renderer = PointRenderer(points, 2.0, values)
    whole = render(renderer, size, tile_size=1000)
    torch.testing.assert_close(render(renderer, size, tile_size=7), whole, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(whole, nuir.upsample(low, 4, sigma=2.0), atol=1e-6, rtol=1e-5)


def test_point_renderer_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="points"):
        PointRenderer(torch.rand(5, 3), 1.0, torch.rand(5, 1))
    with pytest.raises(ValueError, match="sigma"):
        PointRenderer(torch.rand(5, 2), torch.ones(4), torch.rand(5, 1))
    with pytest.raises(ValueError, match="sigma"):
        PointRenderer(torch.rand(5, 2), -1.0, torch.rand(5, 1))
    with pytest.raises(ValueError, match="values"):
        PointRenderer(torch.rand(5, 2), 1.0, torch.rand(4, 1))
    with pytest.raises(ValueError, match="tile_size"):
        tile_windows((8, 8), 0)


def smooth_network() -> Siren:
    torch.manual_seed(0)
    return Siren(out_features=3, hidden_features=32, hidden_layers=1, first_omega=6.0)


def psnr_against(image: torch.Tensor, reference: torch.Tensor) -> float:
    return float(-10 * torch.log10((image - reference).square().mean() / reference.var()))


def test_grid_render_passes_through_the_network_at_its_samples() -> None:
    network = smooth_network()
    size = (24, 32)
    dense = render(DenseRenderer(network, size), size)
    renderer = GridRenderer(network, size, size, prefilter=40)
    assert renderer.evaluations == 24 * 32
    torch.testing.assert_close(render(renderer, size, tile_size=9), dense, atol=2e-4, rtol=0)
    plain = render(GridRenderer(network, size, size, prefilter=0), size)
    assert (plain - dense).abs().max() > 20 * (render(renderer, size) - dense).abs().max()


def test_finer_levels_improve_their_blocks_without_seams_elsewhere() -> None:
    network = smooth_network()
    reference_size, size = (32, 32), (128, 128)  # rendered at 4x
    dense = render(DenseRenderer(network, size), size)
    levels = torch.zeros(4, 4, dtype=torch.int64)
    levels[:, :2] = 1  # the left half of the image gets the finer grid
    base = GridRenderer(network, reference_size, size)
    refined = GridRenderer(network, reference_size, size, levels=levels)
    assert refined.evaluations == 32 * 32 + 64 * 32  # base everywhere, twice as fine on the left
    left, right = slice(0, 56), slice(72, 128)  # away from the boundary
    base_image, refined_image = render(base, size), render(refined, size, tile_size=50)
    gain = psnr_against(refined_image[..., left], dense[..., left]) - psnr_against(
        base_image[..., left], dense[..., left]
    )
    assert gain > 4.0  # dB, where the finer grid is
    torch.testing.assert_close(refined_image[..., right], base_image[..., right], atol=1e-3, rtol=0)
    # Across the boundary the refined render is never worse than the base one.
    seam = slice(56, 72)
    assert (refined_image[..., seam] - dense[..., seam]).abs().max() <= (
        base_image[..., seam] - dense[..., seam]
    ).abs().max() + 1e-3


def test_grid_renderer_checks_its_arguments() -> None:
    network = smooth_network()
    with pytest.raises(ValueError, match="levels"):
        GridRenderer(network, (16, 16), (32, 32), levels=torch.zeros(3, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="sigma"):
        GridRenderer(network, (16, 16), (32, 32), sigma=0.9)
    with pytest.raises(ValueError, match="spacing"):
        GridRenderer(network, (16, 16), (32, 32), spacing=0)
    with pytest.raises(ValueError, match="iterations"):
        GridRenderer(network, (16, 16), (32, 32), prefilter=-1)


# --- the render command on trained checkpoints ---------------------------------------------


def train(tmp: Path, *overrides: str) -> Path:
    """Train a tiny system for 6 steps with train.py's CLI; its last checkpoint."""
    options = ("--model.n_points", "150", "--trainer.logger", "false", *overrides)
    fit(tmp, *options, steps=6, size=24)
    return tmp / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def sparse_checkpoint(tmp_path_factory) -> Path:
    # 36 points (strata of 4 x 4 pixels) growing to 100: some split twice, down to 4 px^2.
    adapt = ("--model.n_points", "36", "--model.max_points", "100", "--model.adapt_interval", "2")
    return train(tmp_path_factory.mktemp("sparse"), *adapt, "--model.grow_fraction", "0.5")


@pytest.fixture(scope="module")
def dense_checkpoint(tmp_path_factory) -> Path:
    return train(tmp_path_factory.mktemp("dense"), "--model.mode", "dense")


def test_render_command_adaptive_at_4x_reports_time_and_psnr(
    sparse_checkpoint, tmp_path, capsys
) -> None:
    out = tmp_path / "render.png"
    args = [str(sparse_checkpoint), "--scale", "4", "--tile", "40", "--out", str(out)]
    assert render_cli.main([*args, "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    match = re.search(
        r"adaptive render 96x96 \(4x the training size\): [\d.]+ s, (\d+) network", printed
    )
    # The base grid of 12 x 12 samples, plus 4 per training pixel of the refined blocks.
    assert match and 144 < int(match.group(1)) < 144 + 576
    assert re.search(r"PSNR adaptive vs dense: [\d.]+ dB", printed)
    with Image.open(out) as image:
        assert image.size == (96, 96) and image.mode == "RGB"


def test_adaptive_render_refines_where_training_split_points(sparse_checkpoint) -> None:
    system = load_system(sparse_checkpoint)
    levels = render_cli.detail_levels(system, block=8)
    assert levels.shape == (3, 3) and 0 < int(levels.sum()) < 9  # some blocks, not all
    areas = system.point_set.sides().prod(1)  # split strata have half the area or less
    assert float(areas.min()) <= 0.5 * float(system.point_set.initial_area) < float(areas.max())


def test_adaptive_render_at_4x_leaves_no_pixel_uncovered(sparse_checkpoint) -> None:
    system = load_system(sparse_checkpoint)
    size = (96, 96)
    renderer = render_cli.renderer_for(system, size)
    base = renderer.layers[0]  # the level every pixel's value comes from
    _, weight = nuir.interpolate(
        base.points, base.values, size, base.sigma, cutoff=base.cutoff, return_weight=True
    )
    assert float(weight.min()) > 0
    assert torch.isfinite(render(renderer, size)).all()


def test_points_render_at_1x_reproduces_the_training_reconstruction(sparse_checkpoint) -> None:
    system = load_system(sparse_checkpoint)
    renderer = render_cli.renderer_for(system, system.size, "points")
    torch.testing.assert_close(
        render(renderer, system.size, tile_size=10), system.reconstruct(), atol=1e-5, rtol=1e-4
    )


def test_render_command_dense_and_16_bit(dense_checkpoint, tmp_path, capsys) -> None:
    out = tmp_path / "dense.tif"
    args = [str(dense_checkpoint), "--method", "dense", "--size", "30", "50", "--bits", "16"]
    assert render_cli.main([*args, "--out", str(out), "--device", "cpu"]) == 0
    assert "dense render 30x50" in capsys.readouterr().out
    import tifffile

    array = tifffile.imread(out)
    assert array.shape == (30, 50, 3) and array.dtype.name == "uint16"


def test_render_benchmark_rows(dense_checkpoint, capsys) -> None:
    assert bench_render.main([str(dense_checkpoint), "--scales", "1", "2", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    rows = re.findall(
        r"\| (\d)x \| (\d+)x\d+ \| (\w+) \| [\d.]+ \| (\d+) \| [\d.]+ \| (\d+) \| "
        r"[\d.]+x \| ([\d.]+|inf) dB \|",
        printed,
    )
    assert [(scale, method) for scale, _, method, _, _, _ in rows] == [
        ("1", "adaptive"), ("1", "grid"), ("2", "adaptive"), ("2", "grid")
    ]  # fmt: skip
    for _, side, _, dense_evals, evals, psnr in rows:
        assert int(dense_evals) == int(side) ** 2 and int(evals) == 24 * 24  # no points: base only
        assert float(psnr) > 30


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x00\x01 random bytes, not a checkpoint", "not a checkpoint, or a truncated one"),
        (None, "not a checkpoint, or a truncated one"),  # a truncated download
    ],
)
def test_render_command_refuses_bad_files_in_one_line(
    sparse_checkpoint, tmp_path, capsys, content, message
) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(content if content is not None else sparse_checkpoint.read_bytes()[:3000])
    out = tmp_path / "never.png"
    assert render_cli.main([str(bad), "--scale", "2", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and str(bad) in error and message in error
    assert not out.exists()


def test_render_command_refuses_a_checkpoint_of_another_model(tmp_path, capsys) -> None:
    foreign = tmp_path / "resnet.ckpt"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}, "epoch": 3}, foreign)
    assert render_cli.main([str(foreign), "--out", str(tmp_path / "x.png")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "cannot load an nuir ImplicitImageSystem" in error
    assert not (tmp_path / "x.png").exists()
    assert render_cli.main([str(tmp_path / "none.ckpt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
