"""Rendering: the raster conventions (nuir.geometry), the renderers (nuir.renderers), the render
command (python -m models.render) and the render benchmark (python -m models.bench_render)."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _helpers import ROOT, fit
from PIL import Image

import nuir
from models import bench_render
from models import render as render_cli
from models.checkpoint import load_trained
from models.siren import Siren
from nuir.adaptive import AdaptiveRenderer
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


def test_grid_renderer_checks_its_arguments() -> None:
    network = smooth_network()
    with pytest.raises(ValueError, match="sigma"):
        GridRenderer(network, (16, 16), (32, 32), sigma=0.9)
    with pytest.raises(ValueError, match="spacing"):
        GridRenderer(network, (16, 16), (32, 32), spacing=0)
    with pytest.raises(ValueError, match="iterations"):
        GridRenderer(network, (16, 16), (32, 32), prefilter=-1)


# --- the adaptive renderer, on any network -------------------------------------------------


class Stripes(torch.nn.Module):
    """A plain network defined elsewhere: smooth on the left, fine stripes on the right."""

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        u, v = coords[:, 0], coords[:, 1]
        stripes = 0.5 + 0.4 * torch.sin(60 * u) * (u > 0.2)
        return torch.stack([0.5 + 0.3 * v, stripes, 0.5 + 0.2 * torch.cos(3 * u)], 1)


def test_adaptive_render_spends_evaluations_where_the_interpolant_is_wrong() -> None:
    network, size = Stripes(), (96, 96)
    dense = render(DenseRenderer(network, size), size)
    renderer = AdaptiveRenderer(network, size, tolerance=0.01)
    image = render(renderer, size)
    assert psnr_of(image, dense) > 40
    assert renderer.evaluations < 0.6 * 96 * 96
    # Probes found the stripes: refined blocks lie on the right, where x > 0.2 (column ~58).
    # A render that samples every pixel (a tiny tolerance) reproduces the network exactly.
    exact = AdaptiveRenderer(network, size, tolerance=1e-9)
    torch.testing.assert_close(render(exact, size), dense)
    assert exact.evaluations == 96 * 96


def test_adaptive_render_of_a_callable_in_tiles_matches_the_whole() -> None:
    def network(coords: torch.Tensor) -> torch.Tensor:  # not a module: any callable
        return torch.sin(9 * coords).sum(1, keepdim=True) * 0.25 + 0.5

    size = (150, 200)
    whole = render(AdaptiveRenderer(network, size, tolerance=0.005), size, tile_size=1000)
    tiled = render(AdaptiveRenderer(network, size, tolerance=0.005), size, tile_size=64)
    dense = render(DenseRenderer(network, size), size)
    assert whole.shape == (1, 150, 200)
    assert psnr_of(tiled, dense) > psnr_of(whole, dense) - 0.5  # margins keep tiles seamless
    # Twice the native size: a sampling raster of native x 2, then a Lanczos resize.
    upscaled = AdaptiveRenderer(network, (300, 400), native_size=(75, 100), tolerance=0.005)
    assert upscaled.raster == (150, 200)
    big = render(upscaled, (300, 400))
    assert psnr_of(big, render(DenseRenderer(network, (300, 400)), (300, 400))) > 40


@pytest.mark.parametrize(
    "network, kwargs, message",
    [
        (lambda c: c[:, :1].T, {}, r"returned \[1, "),
        (lambda c: c.sum(1), {}, "values \\[M, C\\]"),
        (lambda c: torch.full((c.shape[0], 3), float("nan")), {}, "NaN"),
        (Stripes(), {"tolerance": 0.0}, "tolerance must be > 0"),
        (Stripes(), {"tolerance": "a"}, "tolerance must be a number"),
        (Stripes(), {"size": (0, 10)}, "size"),
        ("not a network", {}, "network must be callable"),
    ],
)
def test_adaptive_renderer_refuses_bad_arguments(network, kwargs, message) -> None:
    size = kwargs.pop("size", (16, 16))
    with pytest.raises((ValueError, TypeError), match=message):
        renderer = AdaptiveRenderer(network, size, **kwargs)
        render(renderer, size)


def psnr_of(image: torch.Tensor, reference: torch.Tensor) -> float:
    mse = float((image.clamp(0, 1) - reference.clamp(0, 1)).double().square().mean())
    return math.inf if mse == 0 else -10 * math.log10(mse)


# --- the render command on trained checkpoints ---------------------------------------------


def train(tmp: Path, *overrides: str, steps: int = 6) -> Path:
    """Train a tiny system with train.py's CLI; its last checkpoint."""
    options = ("--model.sampler.n_points", "150", "--trainer.logger", "false", *overrides)
    fit(tmp, *options, steps=steps, size=24)
    return tmp / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def sparse_checkpoint(tmp_path_factory) -> Path:
    return train(tmp_path_factory.mktemp("sparse"), "--model.sampler.n_points", "36")


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory) -> Path:
    """A SIREN trained 150 steps on the 24 x 24 photo (about 27 dB): detail to render."""
    return train(
        tmp_path_factory.mktemp("trained"),
        "--model.network.init_args.hidden_features", "48",
        "--model.reconstruction.weight", "0",
        steps=150,
    )  # fmt: skip


@pytest.fixture(scope="module")
def dense_checkpoint(tmp_path_factory) -> Path:
    return train(tmp_path_factory.mktemp("dense"), "--model.sampler", "models.sampling.AllPixels",
                 "--model.reconstruction.weight", "0")  # fmt: skip


def test_render_command_adaptive_at_4x_reports_what_it_chose(
    trained_checkpoint, tmp_path, capsys
) -> None:
    out = tmp_path / "render.png"
    args = [str(trained_checkpoint), "--scale", "4", "--out", str(out), "--device", "cpu"]
    assert render_cli.main(args) == 0
    printed = capsys.readouterr().out
    match = re.search(
        r"adaptive render 96x96 \(4x the training size\): [\d.]+ s, (\d+) network", printed
    )
    assert match and 12 * 12 <= int(match.group(1)) <= 48 * 48  # between level 0 and every site
    assert "tolerance 0.02 (RMS per channel); sampling raster 48x48" in printed
    assert re.search(r"blocks refined at levels 1 / 2: \d+ % / \d+ %", printed)
    psnr = float(re.search(r"PSNR adaptive vs dense: ([\d.]+) dB", printed).group(1))
    with Image.open(out) as image:
        assert image.size == (96, 96) and image.mode == "RGB"
    assert psnr > 35.0  # measured 37.35 dB at 4x on this 150-step network
    # The tolerance trades time for fidelity: tighter means more evaluations, closer to dense.
    trained = load_trained(trained_checkpoint)
    dense = render(DenseRenderer(trained.network, (96, 96)), (96, 96))
    results = []
    for tolerance in (0.04, 0.02, 0.01):
        renderer = render_cli.renderer_for(trained, (96, 96), tolerance=tolerance)
        results.append(
            (renderer_evaluations(renderer, (96, 96)), psnr_of(render(renderer, (96, 96)), dense))
        )
    assert results == sorted(results) and results[-1][1] > results[0][1] + 10


def renderer_evaluations(renderer, size) -> int:
    render(renderer, size)
    return renderer.evaluations


def test_render_command_does_not_import_lightning(trained_checkpoint, tmp_path) -> None:
    code = (
        "import sys, runpy; sys.argv = ['render', sys.argv[1], '--no-compare'];"
        "import models.render as r; r.main(sys.argv[1:]);"
        "print('LIGHTNING' if any('lightning' in m for m in sys.modules) else 'CLEAN')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(trained_checkpoint)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("CLEAN")


def test_points_render_at_1x_is_the_point_sets_reconstruction(sparse_checkpoint) -> None:
    trained = load_trained(sparse_checkpoint)
    assert trained.points is not None and trained.points.shape == (36, 2)
    image = render(render_cli.renderer_for(trained, trained.size, "points"), trained.size, 10)
    values = trained.network(pixel_to_unit(trained.points, trained.size))
    expected = nuir.interpolate(trained.points, values, trained.size, trained.sigma)
    torch.testing.assert_close(image, expected.detach(), atol=1e-5, rtol=1e-4)


def test_render_command_dense_and_16_bit(dense_checkpoint, tmp_path, capsys) -> None:
    out = tmp_path / "dense.tif"
    args = [str(dense_checkpoint), "--method", "dense", "--size", "30", "50", "--bits", "16"]
    assert render_cli.main([*args, "--out", str(out), "--device", "cpu"]) == 0
    assert "dense render 30x50" in capsys.readouterr().out
    import tifffile

    array = tifffile.imread(out)
    assert array.shape == (30, 50, 3) and array.dtype.name == "uint16"


def test_render_benchmark_table_and_comparison(trained_checkpoint, capsys) -> None:
    args = [str(trained_checkpoint), "--scales", "2", "--repeats", "1", "--tolerances", "0.04",
            "0.01", "--device", "cpu"]  # fmt: skip
    assert bench_render.main(args) == 0
    printed = capsys.readouterr().out
    rows = re.findall(
        r"^\| ([^|]+) \| ([\d,]+) \| [\d.]+ \| [\d.]+ \| ([\d.]+|inf) dB \|", printed, re.M
    )
    methods = [name.strip() for name, _, _ in rows]
    assert methods == [
        "dense", "adaptive (tolerance 0.02, the default)", *bench_render.BASELINES,
        "adaptive (tolerance 0.04)", "adaptive (tolerance 0.01)",
    ]  # fmt: skip
    evaluations = {name.strip(): int(count.replace(",", "")) for name, count, _ in rows}
    assert evaluations["dense"] == 48 * 48 and evaluations["1x+lanczos"] == 24 * 24
    assert evaluations["0.5x+lanczos"] == 12 * 12
    assert "- vs 1x+lanczos: at its time adaptive gains" in printed


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
    assert len(error.splitlines()) == 1 and "no network class in the checkpoint" in error
    assert not (tmp_path / "x.png").exists()
    assert render_cli.main([str(tmp_path / "none.ckpt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
