"""The Lightning system: fit a coordinate network to one image, sparsely or densely.

Sparse mode (the point of nuir): the system owns N learnable point positions (and optionally a
learnable sigma per point). Each step evaluates the network at the points only, reconstructs the
raster (or a random crop) with ``nuir.interpolate``, and backpropagates the loss into the network
weights and the positions, through the Gaussian weights and through the network's values.

Dense modes (the baselines): ``"dense"`` evaluates the network at every pixel (of the crop);
``"dense_random"`` at a random batch of ``n_points`` pixels, the same count as the sparse mode.

Coordinates: points are (x, y) in pixel units (pixel (r, s) has its centre at (s, r)); the network
sees ``nuir.render.pixel_to_unit(points)`` in [-1, 1]^2. See ``nuir/render.py``.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import Timer
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

import nuir
from nuir.render import evaluate_network, pixel_centres, pixel_to_unit
from nuir.samplers import PLACEMENTS, local_spacing, sample_points

Mode = Literal["sparse", "dense", "dense_random"]
Placement = Literal["grid", "jittered", "random", "blue_noise", "gradient"]

_MIN_SIGMA = 0.3  # pixels: a narrower Gaussian can fall between pixel centres


class ImplicitImageSystem(pl.LightningModule):
    """Trains ``network`` (coordinates in [-1, 1]^2 -> C values) to represent one image.

    Args:
        network: the coordinate network, e.g. ``models.siren.Siren``.
        mode: ``"sparse"`` (network at N points + interpolation), ``"dense"`` (network at every
            pixel) or ``"dense_random"`` (network at N random pixels per step).
        n_points: N, the number of points (sparse) or of pixels per step (dense_random).
        placement: initial positions: ``"grid"``, ``"jittered"``, ``"random"``,
            ``"blue_noise"`` or ``"gradient"`` (importance sampling by the target's gradient
            magnitude).
        sigma: Gaussian standard deviation in pixels, the same for every point; default (None)
            per point, ``sigma_scale`` times the mean distance to its 4 nearest neighbours
            (half the spacing on a grid; wider where importance sampling left points sparse).
        sigma_scale: the factor of the default per-point sigma.
        learn_points: train the positions (else they stay where placed).
        learn_sigma: train one sigma per point (kept in [0.3 px, 4 x the largest initial one]).
        cutoff: Mahalanobis radius of each Gaussian (``nuir.interpolate``'s cutoff).
        loss: ``"mse"`` or ``"l1"``.
        lr_network, lr_points, lr_sigma: Adam learning rates of the three parameter groups.
        lr_schedule: ``"constant"`` or ``"cosine"``: decay to ``lr_final_fraction`` of each rate
            by the end of the run, which is the trainer's ``max_steps`` or its ``max_time``,
            whichever comes first (see :meth:`training_progress`).
        lr_final_fraction: final learning rate as a fraction of the initial one (cosine).
        crop_size: reconstruct a random crop_size x crop_size window per step instead of the
            whole image (for large images); None for the whole image.
        chunk_size: network evaluations per call when evaluating without gradients.
        seed: seeds the placement and the per-step randomness (crops, pixel batches); each step
            draws from ``seed`` and the step number, so a resumed run repeats the same draws.
    """

    def __init__(
        self,
        network: nn.Module,
        mode: Mode = "sparse",
        n_points: int = 16384,
        placement: Placement = "grid",
        sigma: float | None = None,
        sigma_scale: float = 0.5,
        learn_points: bool = True,
        learn_sigma: bool = True,
        cutoff: float = 3.0,
        loss: Literal["mse", "l1"] = "mse",
        lr_network: float = 1e-3,
        lr_points: float = 1e-2,
        lr_sigma: float = 1e-2,
        lr_schedule: Literal["constant", "cosine"] = "cosine",
        lr_final_fraction: float = 0.1,
        crop_size: int | None = None,
        chunk_size: int = 65536,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(network, nn.Module):
            raise TypeError(f"network must be a torch.nn.Module, got {type(network).__name__}")
        _check_choice("mode", mode, ("sparse", "dense", "dense_random"))
        _check_choice("placement", placement, PLACEMENTS)
        _check_choice("loss", loss, ("mse", "l1"))
        _check_choice("lr_schedule", lr_schedule, ("constant", "cosine"))
        if isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 1:
            raise ValueError(f"n_points must be a positive int, got {n_points!r}")
        if sigma is not None and not sigma > 0:
            raise ValueError(f"sigma must be > 0 or None, got {sigma!r}")
        if not sigma_scale > 0:
            raise ValueError(f"sigma_scale must be > 0, got {sigma_scale!r}")
        if not cutoff > 0:
            raise ValueError(f"cutoff must be > 0, got {cutoff!r}")
        for name, rate in (("lr_network", lr_network), ("lr_points", lr_points)):
            if not rate >= 0:
                raise ValueError(f"{name} must be >= 0, got {rate!r}")
        if not lr_sigma >= 0:
            raise ValueError(f"lr_sigma must be >= 0, got {lr_sigma!r}")
        if not 0 < lr_final_fraction <= 1:
            raise ValueError(f"lr_final_fraction must be in (0, 1], got {lr_final_fraction!r}")
        if crop_size is not None and (not isinstance(crop_size, int) or crop_size < 2):
            raise ValueError(f"crop_size must be an int >= 2 or None, got {crop_size!r}")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            self.save_hyperparameters()
        if isinstance(self.hparams.get("network"), nn.Module):
            # Built in Python rather than from a config: the weights live in the state dict.
            self.save_hyperparameters(ignore=["network"])

        self.network = network
        self.mode = mode
        self.n_points = n_points
        self.placement = placement
        self.sigma_init = sigma
        self.sigma_scale = float(sigma_scale)
        self.learn_points = learn_points
        self.learn_sigma = learn_sigma and mode == "sparse"
        self.cutoff = float(cutoff)
        self.loss_name = loss
        self.learning_rates = {"network": lr_network, "points": lr_points, "sigma": lr_sigma}
        self.lr_schedule = lr_schedule
        self.lr_final_fraction = float(lr_final_fraction)
        self.crop_size = crop_size
        self.chunk_size = chunk_size
        self.seed = int(seed)
        # Overrides of the schedule's length (see training_progress): a step count instead of
        # the trainer's max_steps, or a progress fraction set from outside (a benchmark with a
        # wall-clock budget sets its own clock's fraction before each step).
        self.schedule_steps: int | None = None
        self.external_progress: float | None = None

        # Filled by setup() from the data; the shapes are fixed here so a checkpoint loads into a
        # freshly constructed system.
        self.register_buffer("image_size", torch.zeros(2, dtype=torch.int64))  # (H, W)
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
        self.register_buffer("network_evaluations", torch.zeros((), dtype=torch.int64))
        if mode == "sparse":
            self.points = nn.Parameter(torch.zeros(n_points, 2), requires_grad=learn_points)
            log_sigma = torch.zeros(n_points)  # [N]
            if self.learn_sigma:
                self.log_sigma = nn.Parameter(log_sigma)
            else:
                self.register_buffer("log_sigma", log_sigma)
            self.register_buffer("log_sigma_max", torch.zeros(()))

    # --- set-up -------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        target = getattr(datamodule, "image", None)
        if not isinstance(target, torch.Tensor) or target.dim() != 3:
            raise ValueError(
                "ImplicitImageSystem needs a datamodule with an `image` tensor [C, H, W] "
                "(e.g. models.data.ImageDataModule)"
            )
        self.initialise_from_target(target)

    @torch.no_grad()
    def initialise_from_target(self, target: torch.Tensor) -> None:
        """Check the network against the target [C, H, W] and place the points (once)."""
        channels, height, width = target.shape
        out = self.network(torch.zeros(1, 2, device=self.device, dtype=self.coordinate_dtype))
        if out.dim() != 2 or out.shape[-1] != channels:
            raise ValueError(
                f"the network outputs {out.shape[-1]} channels per coordinate but the image has "
                f"{channels}; set the network's out_features to {channels} "
                "(e.g. --model.network.init_args.out_features " + str(channels) + ")"
            )
        if bool(self.initialised):
            if tuple(self.image_size.tolist()) != (height, width):
                raise ValueError(
                    f"this system was trained on a {tuple(self.image_size.tolist())} image, "
                    f"the data is {(height, width)}"
                )
            return
        self.image_size.copy_(torch.tensor([height, width]))
        if self.mode == "sparse":
            generator = torch.Generator().manual_seed(self.seed)
            points = sample_points(
                self.placement, (height, width), self.n_points, image=target, generator=generator
            )
            self.points.copy_(points)
            if self.sigma_init is not None:
                sigma = torch.full((self.n_points,), float(self.sigma_init))
            else:
                spacing = local_spacing(points)  # [N]
                fallback = math.sqrt(height * width / self.n_points)  # a single point
                spacing = torch.where(torch.isfinite(spacing), spacing, fallback)
                sigma = (self.sigma_scale * spacing).clamp_min(_MIN_SIGMA)
            self.log_sigma.copy_(sigma.log())
            self.log_sigma_max.fill_(math.log(4.0 * float(sigma.max())))
        self.initialised.fill_(True)

    def configure_optimizers(self):
        rates = self.learning_rates
        groups = [{"params": list(self.network.parameters()), "lr": rates["network"]}]
        if self.mode == "sparse" and self.learn_points:
            groups.append({"params": [self.points], "lr": rates["points"]})
        if self.learn_sigma:
            groups.append({"params": [self.log_sigma], "lr": rates["sigma"]})
        optimizer = torch.optim.Adam(groups)
        if self.lr_schedule != "cosine":
            return optimizer
        final = self.lr_final_fraction

        def factor(step: int) -> float:
            progress = self.training_progress(step)
            if progress is None:
                return 1.0  # no known length: constant
            return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def training_progress(self, step: int) -> float | None:
        """Fraction of the run done: the largest of step / max_steps (or / schedule_steps),
        elapsed / max_time when the trainer has a time limit, and ``external_progress`` when a
        caller sets it; None when none of them is known."""
        fractions = []
        if self.external_progress is not None:
            fractions.append(self.external_progress)
        horizon = self.schedule_steps or (self.trainer.max_steps if self._trainer else -1)
        if horizon and horizon > 0:
            fractions.append(step / horizon)
        if self._trainer is not None:
            for callback in self.trainer.callbacks:
                if isinstance(callback, Timer):
                    remaining = callback.time_remaining("train")
                    if remaining is not None:
                        elapsed = callback.time_elapsed("train")
                        fractions.append(elapsed / max(elapsed + remaining, 1e-9))
        return max(fractions) if fractions else None

    # --- the model ------------------------------------------------------------------------------

    @property
    def coordinate_dtype(self) -> torch.dtype:
        """The dtype the network computes in (of its first floating-point parameter)."""
        return next(
            (p.dtype for p in self.network.parameters() if p.is_floating_point()), torch.float32
        )

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the training image."""
        height, width = self.image_size.tolist()
        return int(height), int(width)

    def sigma(self) -> torch.Tensor:
        """Per-point sigma in pixels [N] (sparse mode)."""
        return self.log_sigma.exp()

    def reconstruct_window(
        self, window: tuple[int, int, int, int] | None = None
    ) -> tuple[torch.Tensor, int]:
        """Sparse reconstruction of a window (row0, col0, h, w) of the raster, differentiably.

        Only the points whose support (cutoff * sigma) reaches the window are evaluated.

        Returns:
            (image [C, h, w], number of network evaluations).
        """
        height, width = self.size
        row0, col0, h, w = window if window is not None else (0, 0, height, width)
        points = self.points  # [N, 2]
        sigma = self.sigma()  # [N]
        if (h, w) != (height, width):
            reach = self.cutoff * sigma.detach()
            x, y = points.detach()[:, 0], points.detach()[:, 1]
            near = (
                (x + reach >= col0)
                & (x - reach <= col0 + w - 1)
                & (y + reach >= row0)
                & (y - reach <= row0 + h - 1)
            )
            index = near.nonzero().squeeze(1)  # [n]
            points, sigma = points[index], sigma[index]
        values = self.network(pixel_to_unit(points, (height, width)))  # [n, C]
        offset = points.new_tensor([col0, row0])
        image = nuir.interpolate(points - offset, values, (h, w), sigma, cutoff=self.cutoff)
        return image, int(points.shape[0])

    def dense_window(self, window: tuple[int, int, int, int]) -> torch.Tensor:
        """The network at every pixel of a window, differentiably: [C, h, w]."""
        _, _, h, w = window
        centres = pixel_centres(window, device=self.device, dtype=self.coordinate_dtype)
        values = self.network(pixel_to_unit(centres, self.size))  # [h*w, C]
        return values.T.reshape(-1, h, w)

    @torch.no_grad()
    def reconstruct(self) -> torch.Tensor:
        """The model's image of the whole raster, without gradients: [C, H, W].

        Sparse mode: the network at the N points, interpolated. Dense modes: the network at every
        pixel.
        """
        if self.mode == "sparse":
            height, width = self.size
            values = evaluate_network(
                self.network, pixel_to_unit(self.points, self.size), self.chunk_size
            )
            return nuir.interpolate(
                self.points, values, (height, width), self.sigma(), cutoff=self.cutoff
            )
        return self.network_image()

    @torch.no_grad()
    def network_image(self) -> torch.Tensor:
        """The network evaluated at every pixel centre of the training raster: [C, H, W]."""
        height, width = self.size
        centres = pixel_centres(
            (0, 0, height, width), device=self.device, dtype=self.coordinate_dtype
        )  # [H*W, 2]
        values = evaluate_network(self.network, pixel_to_unit(centres, self.size), self.chunk_size)
        return values.T.reshape(-1, height, width)

    # --- training ---------------------------------------------------------------------------------

    def step_generator(self) -> torch.Generator:
        """A CPU generator seeded by (seed, global step): the same draws after a resume."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.global_step))

    def random_window(self, generator: torch.Generator) -> tuple[int, int, int, int]:
        height, width = self.size
        if self.crop_size is None:
            return (0, 0, height, width)
        h, w = min(self.crop_size, height), min(self.crop_size, width)
        row0 = int(torch.randint(0, height - h + 1, (1,), generator=generator))
        col0 = int(torch.randint(0, width - w + 1, (1,), generator=generator))
        return (row0, col0, h, w)

    def loss_fn(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.loss_name == "l1":
            return F.l1_loss(prediction, target)
        return F.mse_loss(prediction, target)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        target = batch[0]  # [C, H, W]
        generator = self.step_generator()
        if self.mode == "dense_random":
            height, width = self.size
            index = torch.randint(0, height * width, (self.n_points,), generator=generator)
            index = index.to(self.device)  # [n]
            centres = torch.stack([index % width, index // width], dim=-1)
            centres = centres.to(self.coordinate_dtype)  # [n, 2]
            prediction = self.network(pixel_to_unit(centres, self.size)).T  # [C, n]
            target = target.flatten(1)[:, index]  # [C, n]
            evaluations = self.n_points
        else:
            window = self.random_window(generator)
            row0, col0, h, w = window
            target = target[:, row0 : row0 + h, col0 : col0 + w]
            if self.mode == "sparse":
                prediction, evaluations = self.reconstruct_window(window)
            else:
                prediction, evaluations = self.dense_window(window), h * w
        loss = self.loss_fn(prediction, target)
        self.network_evaluations += evaluations
        psnr = peak_signal_noise_ratio(prediction.detach().clamp(0, 1), target, data_range=1.0)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/psnr", psnr, prog_bar=True)
        self.log("train/network_evaluations", self.network_evaluations.double())
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.mode != "sparse":
            return
        height, width = self.size
        with torch.no_grad():
            # Positions stay on the raster: [-0.5, W - 0.5] x [-0.5, H - 0.5].
            self.points[:, 0].clamp_(-0.5, width - 0.5)
            self.points[:, 1].clamp_(-0.5, height - 0.5)
            if self.learn_sigma:
                self.log_sigma.clamp_(math.log(_MIN_SIGMA), float(self.log_sigma_max))

    # --- validation and logging -------------------------------------------------------------

    def on_train_start(self) -> None:
        if isinstance(self.logger, TensorBoardLogger):
            # Registers the metrics shown in TensorBoard's HParams tab.
            self.logger.log_hyperparams(self.hparams, {"hp/psnr": 0.0, "hp/ssim": 0.0})

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        target = batch[0]  # [C, H, W]
        reconstruction = self.reconstruct()  # [C, H, W]
        shown = reconstruction.clamp(0, 1)
        psnr = peak_signal_noise_ratio(shown, target, data_range=1.0)
        ssim = structural_similarity_index_measure(shown[None], target[None], data_range=1.0)
        self.log("val/loss", self.loss_fn(reconstruction, target))
        self.log("val/psnr", psnr, prog_bar=True)
        self.log("val/ssim", ssim)
        self.log("hp/psnr", psnr)
        self.log("hp/ssim", ssim)
        if self.mode == "sparse":
            network = self.network_image().clamp(0, 1)
            self.log(
                "val/psnr_network_dense", peak_signal_noise_ratio(network, target, data_range=1.0)
            )
        if isinstance(self.logger, TensorBoardLogger) and not self.trainer.sanity_checking:
            self.log_images(target, shown)

    @torch.no_grad()
    def log_images(self, target: torch.Tensor, reconstruction: torch.Tensor) -> None:
        """Target, reconstruction, |error| x 4, the points over the target, sigma histogram."""
        writer = self.logger.experiment
        step = int(self.global_step)
        writer.add_image("images/target", as_rgb(target), step)
        writer.add_image("images/reconstruction", as_rgb(reconstruction), step)
        error = (reconstruction - target).abs().mean(0, keepdim=True)  # [1, H, W]
        writer.add_image("images/abs_error_x4", (4 * error).clamp(0, 1), step)
        if self.mode == "sparse":
            writer.add_image("images/points", draw_points(target, self.points), step)
            if self.learn_sigma:
                writer.add_histogram("sigma", self.sigma(), step)


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def as_rgb(image: torch.Tensor) -> torch.Tensor:
    """[C, H, W] with C in 1..4 -> [3, H, W] for display (alpha dropped, grey repeated)."""
    image = image.detach().float().cpu()
    colour = image[:3] if image.shape[0] >= 3 else image[:1]
    return colour.expand(3, -1, -1).clamp(0, 1)


@torch.no_grad()
def draw_points(image: torch.Tensor, points: torch.Tensor, min_side: int = 512) -> torch.Tensor:
    """The points as red dots over a dimmed, upscaled copy of the image.

    Args:
        image: [C, H, W] in [0, 1].
        points: [N, 2] (x, y) pixel positions on the image.
        min_side: upscale by an integer factor until the shorter side is at least this.
    Returns:
        [3, H * s, W * s] with s = ceil(min_side / min(H, W)).
    """
    height, width = image.shape[-2:]
    scale = max(1, math.ceil(min_side / min(height, width)))
    canvas = 0.5 * as_rgb(image)  # [3, H, W]
    canvas = canvas.repeat_interleave(scale, 1).repeat_interleave(scale, 2)  # [3, Hs, Ws]
    on_canvas = ((points.detach().float().cpu() + 0.5) * scale - 0.5).round().long()  # [N, 2]
    x = on_canvas[:, 0].clamp(0, width * scale - 1)
    y = on_canvas[:, 1].clamp(0, height * scale - 1)
    red = torch.tensor([1.0, 0.15, 0.15])
    canvas[:, y, x] = red[:, None]
    return canvas
