"""Rendering helpers (nuir.render) and the render command (python -m models.render)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from _helpers import fit
from PIL import Image

import nuir
from models import render as render_cli
from models.siren import Siren
from nuir.render import (
    DenseRenderer,
    SparseRenderer,
    interpolating_values,
    pixel_centres,
    pixel_to_unit,
    render,
    rescale_points,
    tile_windows,
    unit_to_pixel,
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


def test_sparse_render_is_tiling_independent_and_matches_upsample() -> None:
    torch.manual_seed(0)
    low = torch.rand(2, 6, 5)  # [C, h, w]
    size = (24, 20)  # 4x
    points = rescale_points(pixel_centres((0, 0, 6, 5)), (6, 5), size)  # [30, 2]
    values = low.flatten(1).T  # [30, 2], row-major like pixel_centres
    network = Siren(out_features=2, hidden_features=8, hidden_layers=0)  # unused: values given
    renderer = SparseRenderer(network, points, 2.0, size, values=values)
    whole = render(renderer, size, tile_size=1000)
    torch.testing.assert_close(render(renderer, size, tile_size=7), whole, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(whole, nuir.upsample(low, 4, sigma=2.0), atol=1e-6, rtol=1e-5)
    assert renderer.evaluations == 0


def test_interpolating_values_pass_through_the_samples() -> None:
    torch.manual_seed(0)
    samples = torch.rand(2, 12, 10)  # [C, h, w]
    grid = pixel_centres((0, 0, 12, 10))  # [120, 2]

    def through(values: torch.Tensor) -> torch.Tensor:
        return nuir.interpolate(grid, values.reshape(2, -1).T, (12, 10), 0.5)

    plain_error = (through(samples) - samples).abs().max()
    fitted = interpolating_values(samples, 0.5, iterations=40)
    assert (through(fitted) - samples).abs().max() < 1e-4 < 0.1 < plain_error
    assert torch.equal(interpolating_values(samples, 0.5, iterations=0), samples)


def test_sparse_renderer_checks_its_arguments() -> None:
    network = Siren(out_features=1, hidden_features=8, hidden_layers=0)
    with pytest.raises(ValueError, match="points"):
        SparseRenderer(network, torch.rand(5, 3), 1.0, (8, 8))
    with pytest.raises(ValueError, match="sigma"):
        SparseRenderer(network, torch.rand(5, 2), torch.ones(4), (8, 8))
    with pytest.raises(ValueError, match="sigma"):
        SparseRenderer(network, torch.rand(5, 2), -1.0, (8, 8))
    with pytest.raises(ValueError, match="tile_size"):
        tile_windows((8, 8), 0)


# --- the render command on trained checkpoints ---------------------------------------------


def train(tmp: Path, mode: str) -> Path:
    """Train a tiny system for 3 steps with train.py's CLI; its last checkpoint."""
    overrides = ("--model.mode", mode, "--model.n_points", "150", "--trainer.logger", "false")
    fit(tmp, *overrides, steps=3, size=24)
    return tmp / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def sparse_checkpoint(tmp_path_factory) -> Path:
    return train(tmp_path_factory.mktemp("sparse"), "sparse")


@pytest.fixture(scope="module")
def dense_checkpoint(tmp_path_factory) -> Path:
    return train(tmp_path_factory.mktemp("dense"), "dense")


def test_render_command_sparse_at_4x_reports_time_and_psnr(
    sparse_checkpoint, tmp_path, capsys
) -> None:
    out = tmp_path / "render.png"
    assert (
        render_cli.main(
            [
                str(sparse_checkpoint),
                "--scale",
                "4",
                "--tile",
                "40",
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert re.search(
        r"sparse render 96x96 \(4x the training size\): [\d.]+ s, 150 network", printed
    )
    assert re.search(r"PSNR sparse vs dense: [\d.]+ dB", printed)
    with Image.open(out) as image:
        assert image.size == (96, 96) and image.mode == "RGB"


def test_sparse_render_at_1x_reproduces_the_training_reconstruction(sparse_checkpoint) -> None:
    system = render_cli.load_system(sparse_checkpoint)
    renderer = render_cli.sparse_renderer(system, system.size)
    torch.testing.assert_close(
        render(renderer, system.size, tile_size=10), system.reconstruct(), atol=1e-5, rtol=1e-4
    )


def test_render_command_dense_and_16_bit(dense_checkpoint, tmp_path, capsys) -> None:
    out = tmp_path / "dense.tif"
    assert (
        render_cli.main(
            [
                str(dense_checkpoint),
                "--mode",
                "dense",
                "--size",
                "30",
                "50",
                "--bits",
                "16",
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "dense render 30x50" in capsys.readouterr().out
    import tifffile

    array = tifffile.imread(out)
    assert array.shape == (30, 50, 3) and array.dtype.name == "uint16"


def test_render_benchmark_rows(dense_checkpoint, capsys) -> None:
    assert render_cli.main([str(dense_checkpoint), "--benchmark", "1", "2", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "| 1x | 24x24 | grid |" in printed and "| 2x | 48x48 | grid |" in printed
    # A dense checkpoint renders sparsely from a grid of one point per training pixel, plain and
    # prefiltered; the prefiltered grid reproduces the dense render more closely.
    rows = re.findall(
        r"\| 2x \| 48x48 \| (grid[^|]*)\| [\d.]+ \| 2304 \| [\d.]+ \| 576 \| "
        r"[\d.]+x \| ([\d.]+) dB \|",
        printed,
    )
    assert [label.strip() for label, _ in rows] == ["grid", "grid + prefilter 3"]
    assert float(rows[1][1]) > float(rows[0][1])


def test_render_command_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        render_cli.main([str(tmp_path / "none.ckpt")])
