"""Training through the real entry point: train.py's LightningCLI on a tiny image, on the CPU."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _helpers import ROOT, SIZE, fit, tiny_photo, train_entry
from PIL import Image

import nuir
from models.data import DEFAULT_IMAGE, ImageDataModule, load_image
from models.sampling import StratifiedPoints
from models.siren import Siren
from models.system import ImplicitImageSystem, Reconstruction
from nuir.geometry import pixel_to_unit
from nuir.samplers import uniform_grid


def test_point_positions_change_after_training_steps(tmp_path: Path) -> None:
    cli = fit(
        tmp_path,
        "--model.sampler.placement",
        "gradient",
        "--model.sampler.learn_sigma",
        "false",
        steps=2,
    )
    system = cli.model
    initial = ImplicitImageSystem(
        Siren(out_features=3),
        StratifiedPoints(n_points=200, placement="gradient", learn_sigma=False),
        reconstruction=Reconstruction(weight=1.0),
    )
    initial.initialise_from_target(cli.datamodule.image)
    moved = (system.points.detach() - initial.points.detach()).norm(dim=1)  # [N]
    assert system.global_step == 2
    assert (moved > 0).float().mean() > 0.9  # (almost) every point learned a new position
    assert moved.max() < 1.0  # two Adam steps of lr 0.01 move a point by ~0.03 px
    x, y = system.points[:, 0], system.points[:, 1]
    assert (x >= -0.5).all() and (x <= SIZE - 0.5).all()
    assert (y >= -0.5).all() and (y <= SIZE - 0.5).all()
    torch.testing.assert_close(system.sigma(), initial.sigma())  # not learned here


def test_position_gradient_flows_through_weights_and_network_values() -> None:
    torch.manual_seed(0)
    target = torch.rand(1, 12, 12, dtype=torch.float64)
    system = ImplicitImageSystem(
        Siren(out_features=1, hidden_features=16, hidden_layers=1),
        StratifiedPoints(n_points=30, placement="random"),
        objective="reconstruction",
    ).double()
    system.initialise_from_target(target)
    positions = system.point_set.positions  # the parameter [N, 2] (all 30 slots in use)
    prediction, _ = system.reconstruct_window()
    loss = torch.nn.functional.mse_loss(prediction, target)
    (grad,) = torch.autograd.grad(loss, positions)
    # Finite differences of the whole loss: point 3 moves, so both its Gaussian and the
    # network's value at it change.
    eps = 1e-6
    numeric = []
    for axis in range(2):
        with torch.no_grad():
            values = []
            for sign in (1, -1):
                positions[3, axis] += sign * eps
                values.append(
                    float(torch.nn.functional.mse_loss(system.reconstruct_window()[0], target))
                )
                positions[3, axis] -= sign * eps
        numeric.append((values[0] - values[1]) / (2 * eps))
    torch.testing.assert_close(
        grad[3], torch.tensor(numeric, dtype=torch.float64), rtol=1e-4, atol=1e-9
    )
    # The network path alone (Gaussian weights frozen) is a real part of it.
    frozen = positions.detach().clone()
    values = system.network(pixel_to_unit(positions, (12, 12)))  # [N, 1]
    network_path = nuir.interpolate(frozen, values, (12, 12), system.sigma())
    (grad_network,) = torch.autograd.grad(
        torch.nn.functional.mse_loss(network_path, target), positions
    )
    assert grad_network.abs().sum() > 0.01 * grad.abs().sum()
    assert not torch.allclose(grad_network, grad)


def event_tags(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (event_file,) = log_dir.glob("events.out.tfevents.*")
    accumulator = EventAccumulator(
        str(event_file), size_guidance={"images": 0, "scalars": 0, "histograms": 0}
    )
    accumulator.Reload()
    return accumulator


def test_event_file_holds_scalars_images_histogram_and_hparams(tmp_path: Path) -> None:
    fit(
        tmp_path, "--model.sampler.learn_sigma", "true", "--trainer.log_every_n_steps", "1", steps=4
    )
    log_dir = tmp_path / "run" / "logs" / "version_0"
    events = event_tags(log_dir)
    tags = events.Tags()
    for tag in (
        "train/loss",
        "train/psnr_samples",
        "train/psnr_reconstruction",
        "train/network_evaluations",
        "train/points",
        "val/psnr_network",
        "val/ssim_network",
        "val/psnr_reconstruction",
        "val/ssim_reconstruction",
        "val/points",
        "hp/psnr",
        "hp/ssim",
    ):
        assert tag in tags["scalars"], tag
    for tag in (
        "images/target",
        "images/network",
        "images/network_abs_error_x4",
        "images/reconstruction",
        "images/points",
    ):
        assert tag in tags["images"], tag
    assert "sigma" in tags["histograms"]
    assert "_hparams_/experiment" in events.PluginTagToContent("hparams")
    assert len(events.Scalars("train/loss")) == 4
    assert [event.step for event in events.Images("images/network")] == [2, 4]
    points_image = events.Images("images/points")[0]
    assert points_image.width == 16 * SIZE  # upscaled so the points are visible
    assert all(np.isfinite(event.value) for event in events.Scalars("val/ssim_network"))
    # The full config is saved beside the logs, overrides included.
    saved = yaml.safe_load((log_dir / "config.yaml").read_text())
    assert saved["model"]["sampler"]["init_args"]["n_points"] == 200
    assert saved["model"]["sampler"]["init_args"]["learn_sigma"] is True
    assert saved["model"]["network"]["class_path"] == "models.siren.Siren"


def final_state(cli) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in cli.model.state_dict().items()}


def test_resume_from_last_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    # Points split and pruned every 2 steps, so the resume (at step 3) crosses adaptations.
    common = (
        "--model.sampler.learn_sigma",
        "true",
        "--model.sampler.max_points",
        "260",
        "--model.sampler.adaptation.times",
        "3",
        "--model.sampler.adaptation.start",
        "0.3",
        "--model.sampler.adaptation.end",
        "0.9",
        "--model.crop_size",
        "20",
        "--data.steps_per_epoch",
        "3",
        "--trainer.logger",
        "false",
    )
    whole = fit(tmp_path, *common, run_dir="whole", steps=6)
    # The same run (same length, so the same cosine schedule), interrupted after 3 steps (the end
    # of its first epoch, where the checkpoint is written), then resumed.
    stop = '{"class_path": "_helpers.StopAfter", "init_args": {"step": 3}}'
    first = fit(tmp_path, *common, "--trainer.callbacks+", stop, run_dir="parts", steps=6)
    assert first.trainer.global_step == 3
    last = tmp_path / "parts" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 3
    resumed = fit(tmp_path, *common, "--ckpt_path", "last", run_dir="parts", steps=6)
    assert Path(resumed.trainer.ckpt_path) == last  # it did resume, from step 3
    assert resumed.trainer.global_step == 6
    expected, got = final_state(whole), final_state(resumed)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    assert int(got["network_evaluations"]) == int(expected["network_evaluations"])
    assert 200 < whole.model.point_set.count == resumed.model.point_set.count <= 260
    # The optimiser state (Adam moments of network, points and sigma) matches too.
    whole_ckpt = torch.load(tmp_path / "whole" / "checkpoints" / "last.ckpt", weights_only=True)
    parts_ckpt = torch.load(tmp_path / "parts" / "checkpoints" / "last.ckpt", weights_only=True)
    assert whole_ckpt["global_step"] == parts_ckpt["global_step"] == 6
    for a, b in zip(
        whole_ckpt["optimizer_states"][0]["state"].values(),
        parts_ckpt["optimizer_states"][0]["state"].values(),
    ):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(
            a["exp_avg_sq"], b["exp_avg_sq"]
        )


def test_adaptation_keeps_the_point_count_within_budget(tmp_path: Path) -> None:
    cli = fit(
        tmp_path,
        "--model.sampler.max_points",
        "240",
        "--model.sampler.adaptation.times",
        "8",
        "--model.sampler.adaptation.start",
        "0",
        "--model.sampler.adaptation.end",
        "1",
        "--model.sampler.adaptation.grow_fraction",
        "0.1",
        "--model.sampler.adaptation.prune_fraction",
        "0.05",
        "--trainer.log_every_n_steps",
        "1",
        steps=8,
    )
    counts = [
        event.value
        for event in event_tags(tmp_path / "run" / "logs" / "version_0").Scalars("train/points")
    ]
    assert counts[0] == 200  # logged before the first adaptation
    assert all(0 < count <= 240 for count in counts)
    assert counts[-1] == 240 and max(counts) == 240  # grew to the budget, then relocated
    points = cli.model.point_set
    assert points.count == 240 and float(points.sides().prod(1).sum()) == pytest.approx(SIZE**2)


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--model.sampler.max_points", "100", "max_points"),
        ("--model.sampler.adaptation.times", "-1", "adaptation.times"),
        ("--model.sampler.adaptation.end", "0.05", "adaptation.start and adaptation.end"),
    ],
)
def test_impossible_adaptation_schedule_fails_before_training(
    tmp_path: Path, option: str, value: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        fit(tmp_path, option, value)
    assert not (tmp_path / "run" / "logs").exists()


def test_runs_with_different_names_keep_separate_checkpoints(tmp_path: Path) -> None:
    image = tiny_photo(tmp_path / "photo.png")
    for name in ("first", "second"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train_entry().main(
                [
                    "fit",
                    "--config",
                    str(ROOT / "configs" / "debug.yaml"),
                    "--data.path",
                    str(image),
                    "--model.sampler.n_points",
                    "100",
                    "--trainer.max_steps",
                    "1",
                    "--trainer.enable_progress_bar",
                    "false",
                    "--trainer.logger.init_args.save_dir",
                    str(tmp_path / "runs"),
                    "--trainer.logger.init_args.name",
                    name,
                ]
            )
    for name in ("first", "second"):
        assert (tmp_path / "runs" / name / "checkpoints" / "last.ckpt").is_file()
        assert (tmp_path / "runs" / name / "version_0" / "config.yaml").is_file()


def test_implicit_objective_trains_a_network_that_is_the_image(tmp_path: Path) -> None:
    """The network at every pixel after 60 steps, same seed: the implicit objective
    (stratified samples supervise the network) against the reconstruction objective (the loss
    only on the raster interpolated from the network's values at the points)."""
    psnr = {}
    for objective in ("implicit", "reconstruction"):
        cli = fit(
            tmp_path,
            "--model.objective",
            objective,
            "--model.network.init_args.hidden_features",
            "64",
            "--trainer.logger",
            "false",
            run_dir=objective,
            steps=60,
        )
        psnr[objective] = cli.model.image_metrics(cli.model.target)["psnr_network"]
    # Measured (seed 0, deterministic): implicit 25.63 dB, reconstruction 20.74 dB.
    assert psnr["implicit"] > psnr["reconstruction"] + 3.0


@pytest.mark.parametrize("sampler", ["AllPixels", "UniformRandom"])
def test_dense_baselines_train(tmp_path: Path, sampler: str) -> None:
    options = ["--model.sampler", f"models.sampling.{sampler}"]
    if sampler == "UniformRandom":
        options += ["--model.sampler.count", "200"]
    cli = fit(
        tmp_path,
        *options,
        "--model.reconstruction.weight",
        "0",
        "--trainer.logger",
        "false",
        steps=3,
    )
    system = cli.model
    assert system.point_set is None
    per_step = SIZE * SIZE if sampler == "AllPixels" else 200
    assert int(system.network_evaluations) == 3 * per_step
    assert torch.isfinite(system.reconstruct()).all()


@pytest.mark.parametrize(
    "network",
    [
        ["models.fourier.FourierFeatureMLP", "--model.network.init_args.num_frequencies", "16"],
        ["models.hashgrid.HashGridMLP", "--model.network.init_args.log2_table_size", "10"],
    ],
)
def test_other_networks_train_sparsely(tmp_path: Path, network: list[str]) -> None:
    class_path, *init_args = network
    cli = fit(
        tmp_path,
        "--model.network",
        class_path,
        *init_args,
        "--model.network.init_args.hidden_features",
        "32",
        "--trainer.logger",
        "false",
        steps=3,
    )
    system = cli.model
    assert type(system.network).__name__ == class_path.rsplit(".", 1)[1]
    initial = uniform_grid((SIZE, SIZE), 200)
    assert (system.points.detach() - initial).abs().amax(1).gt(0).float().mean() > 0.9
    assert torch.isfinite(system.reconstruct()).all()


def test_missing_or_unreadable_image_fails_before_training(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.png"):
        fit(tmp_path, "--data.path", str(tmp_path / "missing.png"))
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="cannot read image file .*garbage.png"):
        fit(tmp_path, "--data.path", str(garbage))
    assert not (tmp_path / "run" / "logs").exists()  # nothing was trained or logged


def test_network_with_wrong_channel_count_is_refused(tmp_path: Path) -> None:
    grey = tmp_path / "grey.png"
    Image.fromarray((np.random.default_rng(0).random((SIZE, SIZE)) * 255).astype(np.uint8)).save(
        grey
    )
    with pytest.raises(ValueError, match="out_features"):
        fit(tmp_path, "--data.path", str(grey), "--trainer.logger", "false", steps=1)


# --- loading images -------------------------------------------------------------------------


def write_png16(path: Path, pixels: np.ndarray) -> Path:
    """A 16-bit RGB PNG written by hand (Pillow cannot write one)."""
    import struct
    import zlib

    height, width, _ = pixels.shape
    rows = b"".join(b"\x00" + pixels[r].astype(">u2").tobytes() for r in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return path


def test_load_image_formats_and_bit_depths(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    grey8 = (rng.random((6, 7)) * 255).astype(np.uint8)
    Image.fromarray(grey8).save(tmp_path / "grey8.png")
    torch.testing.assert_close(
        load_image(tmp_path / "grey8.png"), torch.from_numpy(grey8 / 255.0).float()[None]
    )

    grey16 = (rng.random((6, 7)) * 65535).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "grey16.png")
    torch.testing.assert_close(
        load_image(tmp_path / "grey16.png"), torch.from_numpy(grey16 / 65535.0).float()[None]
    )

    rgba = (rng.random((6, 7, 4)) * 255).astype(np.uint8)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert load_image(tmp_path / "rgba.png").shape == (4, 6, 7)

    import tifffile

    rgb16 = (rng.random((6, 7, 3)) * 65535).astype(np.uint16)
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb16)
    torch.testing.assert_close(
        load_image(tmp_path / "rgb16.tif"),
        torch.from_numpy(rgb16 / 65535.0).float().permute(2, 0, 1),
    )

    across, down = np.meshgrid(np.linspace(0, 1, 24), np.linspace(0, 1, 16))
    smooth = (np.stack([across, down, 1 - across], -1) * 255).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "photo.jpg", quality=95)
    jpeg = load_image(tmp_path / "photo.jpg")  # lossy: close, not equal
    assert jpeg.shape == (3, 16, 24)
    assert (jpeg - torch.from_numpy(smooth / 255.0).float().permute(2, 0, 1)).abs().mean() < 0.02

    with pytest.warns(UserWarning, match="8-bit precision"):
        assert load_image(write_png16(tmp_path / "rgb16.png", rgb16)).shape == (3, 6, 7)


def test_images_shipped_by_scikit_image_load_by_name() -> None:
    assert load_image("skimage:astronaut").shape == (3, 512, 512)
    assert load_image("skimage:camera").shape[0] == 1
    with pytest.raises(FileNotFoundError, match="choose one of .*astronaut"):
        load_image("skimage:no_such_photo")


def test_data_module_default_photo_resize_and_channels() -> None:
    data = ImageDataModule()
    assert data.size == (256, 256) and data.num_channels == 3
    assert DEFAULT_IMAGE.stat().st_size < 200_000
    small = ImageDataModule(resize=(64, 48), channels=1)
    assert small.image.shape == (1, 64, 48)
    assert 0.0 <= float(small.image.min()) and float(small.image.max()) <= 1.0
    steps = [int(batch) for batch in small.train_dataloader()]  # the loader yields step numbers
    assert steps == list(range(100))
    assert data.pixels.dtype == np.uint8  # kept in the file's type; windows converted on demand
    window = data.window((10, 20, 5, 7))
    assert window.dtype == torch.float32 and window.shape == (3, 5, 7)
    torch.testing.assert_close(window, data.image[:, 10:15, 20:27])
    rows, columns = torch.tensor([3, 200]), torch.tensor([5, 100])
    torch.testing.assert_close(data.pixels_at(rows, columns), data.image[:, rows, columns].T)
    torch.testing.assert_close(
        small.pixels_at(rows % 64, columns % 48)[:, 0], small.image[0, rows % 64, columns % 48]
    )
    with pytest.raises(ValueError, match="steps_per_epoch"):
        ImageDataModule(steps_per_epoch=0)
    with pytest.raises(ValueError, match="channels"):
        ImageDataModule(channels=2)
