"""The quality benchmarks (python -m nuir.bench quality / scattered / optimize) on tiny inputs."""

import csv

import numpy as np
import pytest
import torch
from PIL import Image

import nuir
from nuir.bench import _images, optimize, quality, scattered
from nuir.bench._common import image_metrics, pil_resize, to_tensor
from nuir.samplers import local_spacing
from nuir.upsample import resample


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Three small real photo crops written as RGB PNG, 16-bit grayscale PNG and RGBA TIFF."""
    folder = tmp_path_factory.mktemp("images")
    astronaut = _images.read_image(_images.skimage_photo_path("astronaut"))
    coffee = _images.read_image(_images.skimage_photo_path("coffee"))
    rgb = (astronaut[100:148, 200:248] * 255).round().astype(np.uint8)  # [48, 48, 3]
    Image.fromarray(rgb).save(folder / "a_rgb.png")
    gray16 = (coffee[150:190, 250:302].mean(axis=2) * 65535).round().astype(np.uint16)
    Image.fromarray(gray16).save(folder / "b_gray16.png")
    rgba = np.concatenate([rgb, np.full((48, 48, 1), 200, np.uint8)], axis=2)
    Image.fromarray(rgba, mode="RGBA").save(folder / "c_rgba.tif")
    (folder / "notes.txt").write_text("not an image")
    return folder


def read_rows(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


def assert_sane_metrics(rows):
    for row in rows:
        assert 0 <= float(row["l1"]) < 128, row
        assert 8 < float(row["psnr"]) < 100, row
        assert 0 < float(row["ssim"]) <= 1, row


# --- images ------------------------------------------------------------------------------------


def test_load_images_reads_every_format_as_rgb_float(image_folder):
    photos = _images.load_images(image_folder, crop=0)
    assert [p.name for p in photos] == ["a_rgb", "b_gray16", "c_rgba"]
    assert photos[0].pixels.shape == (48, 48, 3)
    assert photos[1].pixels.shape == (40, 52, 3)
    for photo in photos:
        assert photo.pixels.dtype == np.float32
        assert 0 <= photo.pixels.min() and photo.pixels.max() <= 1
    gray = photos[1].pixels
    np.testing.assert_array_equal(gray[:, :, 0], gray[:, :, 2])  # grayscale replicated
    np.testing.assert_array_equal(photos[2].pixels, photos[0].pixels)  # alpha dropped
    cropped = _images.load_images(image_folder, crop=32, limit=2)
    assert [p.pixels.shape for p in cropped] == [(32, 32, 3), (32, 32, 3)]


def test_default_photos_are_real_colour_photographs():
    photos = _images.load_images(photos=["chelsea", "coffee"], crop=64)
    assert [p.pixels.shape for p in photos] == [(64, 64, 3), (64, 64, 3)]
    assert all(np.std(p.pixels) > 0.05 for p in photos)
    assert not set(_images.DEFAULT_PHOTOS) & set(_images.TUNING_PHOTOS)


def test_load_images_rejects_bad_sources(tmp_path):
    with pytest.raises(ValueError, match="images"):
        _images.load_images(tmp_path / "missing")
    with pytest.raises(ValueError, match="images"):
        _images.load_images(tmp_path)  # empty folder
    with pytest.raises(ValueError, match="photos"):
        _images.load_images(photos="no_such_photo")


# --- quality -----------------------------------------------------------------------------------


def test_benchmark_downsampling_is_the_consistent_modes_operator():
    pixels = _images.load_images(photos=["astronaut"], crop=48)[0].pixels
    for filter in quality.DOWNSAMPLING:
        low = pil_resize(pixels, (12, 12), filter)
        ours = resample(to_tensor(pixels), (12, 12), filter)
        np.testing.assert_allclose(to_tensor(low), ours, atol=1e-5)


def test_quality_main_writes_results_table_and_plot(image_folder, tmp_path, capsys):
    out = tmp_path / "quality"
    argv = ["--images", str(image_folder), "--factors", "2", "4", "--crop", "0"]
    assert quality.main([*argv, "--out", str(out), "--iterations", "4"]) == 0
    rows = read_rows(out / "results.csv")
    methods = {*quality.PIL_METHODS, *quality.NUIR_METHODS}
    assert len(rows) == 3 * 2 * len(methods)
    assert {r["method"] for r in rows} == methods
    assert set(rows[0]) >= {"image", "method", "factor", "downsample", "l1", "psnr", "ssim"}
    assert {r["downsample"] for r in rows} == {"box"}
    assert_sane_metrics(rows)
    mean_l1 = {
        m: np.mean([float(r["l1"]) for r in rows if r["method"] == m and r["factor"] == "4"])
        for m in methods
    }
    # Upsampling by 4 from real photo crops: the box filter (pixel replication) is the worst PIL
    # filter and the consistent nuir solution is better than nuir-plain.
    assert mean_l1["box"] > mean_l1["lanczos"]
    assert mean_l1["nuir-consistent"] < mean_l1["nuir-plain"]
    printed = capsys.readouterr().out
    assert "mean L1" in printed and "nuir-consistent" in printed
    assert (out / "summary.md").read_text().startswith("quality: 3 images")
    assert (out / "quality.png").stat().st_size > 10_000


def test_quality_sweep_writes_a_table(image_folder, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["--images", str(image_folder), "--factors", "2", "--downsample", "nearest"]
    assert quality.main([*argv, "--out", str(out), "--sweep", "0.3", "0.5", "--limit", "1"]) == 0
    rows = read_rows(out / "sweep.csv")
    assert {(r["method"], r["sigma_scale"]) for r in rows} == {
        (m, a) for m in quality.NUIR_METHODS for a in ("0.3", "0.5")
    }
    assert "best a over all factors" in capsys.readouterr().out
    assert (out / "sweep.png").is_file()


def test_quality_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        quality.main(["--factors", "0"])
    assert "--factors" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        quality.main(["--downsample", "gaussian"])
    assert "--downsample" in capsys.readouterr().err
    with pytest.raises(ValueError, match="factor"):
        quality.crop_to_multiple(np.zeros((3, 3, 3)), 4)


# --- scattered ---------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", scattered.PATTERNS)
def test_patterns_pick_the_right_share_of_pixels(pattern):
    rng = np.random.default_rng(0)
    indices = scattered.known_pixels(pattern, 64, 80, rng)
    assert np.all(np.diff(indices) > 0) and indices[0] >= 0 and indices[-1] < 64 * 80
    expected = {"random-4": 1 / 4, "random-16": 1 / 16, "random-64": 1 / 64}
    if pattern in expected:
        assert len(indices) == round(64 * 80 * expected[pattern])
    elif pattern == "blue-noise-16":
        assert 0.8 / 16 < len(indices) / (64 * 80) <= 1 / 16
        points = torch.from_numpy(scattered.pixel_points(indices, 80))
        spacing = local_spacing(points, 1)
        assert spacing.min() >= 1.0  # no two samples in one pixel
    else:
        assert 0.7 < len(indices) / (64 * 80) < 1


def test_covering_sigma_leaves_no_pixel_unreached():
    height, width = 96, 80  # blocks of 5 x 5 pixels
    indices = scattered.known_pixels("blocks", height, width, np.random.default_rng(1))
    points = scattered.pixel_points(indices, width)
    points_t = torch.from_numpy(points).float()

    def weight_map(sigma):
        sigma_t = sigma if isinstance(sigma, float) else torch.from_numpy(sigma).float()
        ones = torch.ones(len(points), 1)
        return nuir.interpolate(points_t, ones, (height, width), sigma_t, return_weight=True)[1]

    for method in ("nuir-global", "nuir-knn"):
        sigma = scattered.nuir_sigma(method, points, height, width, 0.5, 4)
        unreached = torch.nonzero(weight_map(sigma) <= 0).flip(1).double().numpy()
        assert len(unreached) > 0  # the blocks are wider than 3 sigmas
        covering = scattered.covering_sigma(sigma, points, unreached, 3.0)
        assert np.all(covering >= sigma) and np.any(covering > sigma)
        assert float(weight_map(covering).min()) > 0


def test_reconstructions_are_exact_at_known_pixels_and_finite():
    pixels = _images.load_images(photos=["coffee"], crop=40)[0].pixels
    height, width, _ = pixels.shape
    indices = scattered.known_pixels("random-16", height, width, np.random.default_rng(2))
    values = pixels.reshape(-1, 3)[indices].astype(np.float64)
    args = scattered.parse_args(["--iterations", "30"])
    for method in (*scattered.GRIDDATA_METHODS, "nuir-knn-consistent"):
        image = scattered.reconstruct(method, indices, values, height, width, args)
        assert image.shape == (height, width, 3) and np.isfinite(image).all()
        known = image.reshape(-1, 3)[indices]
        np.testing.assert_allclose(known, values, atol=0.02 if method.startswith("nuir") else 1e-9)
    plain = scattered.reconstruct("nuir-knn", indices, values, height, width, args)
    plain_error = np.abs(plain.reshape(-1, 3)[indices] - values).mean()
    assert plain_error > 0.01  # plain Gaussian averaging does not interpolate


def test_scattered_main_writes_results_and_plots(image_folder, tmp_path, capsys):
    out = tmp_path / "scattered"
    argv = ["--images", str(image_folder), "--limit", "2", "--crop", "40", "--repeats", "1"]
    argv += ["--out", str(out)]
    assert scattered.main([*argv, "--patterns", "random-16", "blocks"]) == 0
    rows = read_rows(out / "results.csv")
    methods = {*scattered.GRIDDATA_METHODS, *scattered.NUIR_METHODS}
    assert len(rows) == 2 * 2 * len(methods)
    assert {r["method"] for r in rows} == methods
    assert all(float(r["seconds"]) > 0 for r in rows)
    assert_sane_metrics(rows)
    assert "against griddata-linear" in capsys.readouterr().out
    assert (out / "scattered.png").stat().st_size > 10_000
    assert (out / "scattered_example.png").is_file()


# --- optimize ----------------------------------------------------------------------------------


def test_optimize_lowers_the_loss_and_writes_plots(image_folder, tmp_path, capsys):
    out = tmp_path / "optimize"
    argv = ["--image", str(image_folder / "a_rgb.png"), "--crop", "32", "--steps", "12"]
    runs = ["--runs", "random: all", "grid: fixed"]
    assert optimize.main([*argv, *runs, "--out", str(out)]) == 0
    rows = {r["run"]: r for r in read_rows(out / "results.csv")}
    assert set(rows) == {"random: all", "grid: fixed"}
    learned = rows["random: all"]
    assert int(learned["points"]) == 32 * 32 // 16
    assert float(learned["l1_after"]) < 0.95 * float(learned["l1_before"])
    assert float(rows["grid: fixed"]["l1_after"]) == float(rows["grid: fixed"]["l1_before"])
    curve = [float(r["l1"]) for r in read_rows(out / "curves.csv") if r["run"] == "random: all"]
    assert len(curve) == 13 and curve[-1] < curve[0]
    assert "random: all" in capsys.readouterr().out
    for name in ("optimize_curves.png", "optimize_points.png"):
        assert (out / name).stat().st_size > 10_000


def test_optimize_initial_layouts():
    grid = optimize.initial_points("grid", 64, 32, 32, 0)
    assert grid.shape == (64, 2)
    torch.testing.assert_close(grid[:2], torch.tensor([[1.5, 1.5], [5.5, 1.5]]))
    random = optimize.initial_points("random", 50, 20, 30, 0)
    assert random.shape == (50, 2)
    assert float(random[:, 0].min()) >= -0.5 and float(random[:, 0].max()) <= 29.5
    image = torch.arange(12.0).reshape(1, 3, 4)
    sampled = optimize.sample_bilinear(image, torch.tensor([[1.0, 2.0], [0.5, 0.0]]))
    torch.testing.assert_close(sampled, torch.tensor([[9.0], [0.5]]))


def test_optimize_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        optimize.main(["--steps", "0"])
    assert "--steps" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        optimize.main(["--runs", "everything"])
    assert "--runs" in capsys.readouterr().err


def test_image_metrics_of_a_perfect_and_a_shifted_image():
    pixels = _images.load_images(photos=["astronaut"], crop=32)[0].pixels
    perfect = image_metrics(pixels, pixels)
    assert perfect["l1"] == 0 and perfect["ssim"] == pytest.approx(1.0)
    worse = image_metrics(np.clip(pixels + 0.1, 0, 1), pixels)
    assert 0 < worse["l1"] <= 25.5 + 1e-4 and worse["psnr"] < 25
