"""The Lightning system: fit a coordinate network to one image, choosing each step which pixels it
sees.

The network (coordinates in [-1, 1]^2 -> C values) *is* the implicit image: what training leaves
behind, queried anywhere and rendered at any size. Which pixels it is trained on each step, and
with what weight, is the sampler's decision (``models.sampling``): every pixel, uniformly random
pixels, nuir's stratified adaptive points, or the published methods EVOS, INT and Soft Mining.
Two objectives:

- ``"implicit"`` (default): the network is evaluated at the sampler's pixels and compared with
  them (weighted mean squared error). With a point set (``StratifiedPoints``) and
  ``reconstruction.weight > 0``, the same values, placed at the samples and interpolated by the
  points' Gaussians through ``nuir.interpolate``, also reconstruct the raster (or the crop), and
  that loss trains the points' positions and sigmas (and, scaled by
  ``reconstruction.value_gradient``, the network).
- ``"reconstruction"``: the loss is on the reconstruction from the network's values at the N
  learnable points only (the point set is the model: the best 1x reconstruction from N values,
  but the network is free between the points and is *not* the image there).

Coordinates: points are (x, y) in pixel units (pixel (r, s) has its centre at (s, r)); the network
sees ``nuir.geometry.pixel_to_unit(points)`` in [-1, 1]^2.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

import nuir
from models.point_set import PointSet
from models.sampling import PixelBatch, PixelSampler, StepContext, StratifiedPoints
from nuir.geometry import pixel_centres, pixel_to_unit, tile_windows
from nuir.renderers import evaluate_network

Objective = Literal["implicit", "reconstruction"]
Window = tuple[int, int, int, int]  # (row0, col0, height, width)


@dataclass(frozen=True)
class Reconstruction:
    """The point set's reconstruction of the image through ``nuir.interpolate`` during training.

    weight: its loss weight (0: computed and logged at validation only, the points' positions and
        sigma are not trained). every: take it every this many steps. value_gradient: scale of its
        gradient into the network (0: the network learns from its samples only). cutoff: the
        Gaussians' Mahalanobis radius.
    """

    weight: float = 0.0
    every: int = 1
    value_gradient: float = 0.0
    cutoff: float = 3.0


@dataclass(frozen=True)
class Optimisation:
    """Adam's learning rates for the network, the points' positions and their sigma; the schedule
    (``cosine``: decay to ``final_fraction`` of each rate over the run, or ``constant``); the loss
    (``mse`` or ``l1``)."""

    lr_network: float = 1e-3
    lr_points: float = 1e-3
    lr_sigma: float = 1e-2
    schedule: Literal["constant", "cosine"] = "cosine"
    final_fraction: float = 0.1
    loss: Literal["mse", "l1"] = "mse"


class ImplicitImageSystem(pl.LightningModule):
    """Trains ``network`` (coordinates in [-1, 1]^2 -> C values) to be one image.

    Args:
        network: the coordinate network, e.g. ``models.siren.Siren``.
        sampler: which pixels each step sees (``models.sampling``); default: nuir's
            ``StratifiedPoints`` with 16384 points.
        objective: ``"implicit"`` or ``"reconstruction"`` (module docstring).
        reconstruction: the reconstruction through the operator (:class:`Reconstruction`).
        optimisation: learning rates, schedule and loss (:class:`Optimisation`).
        crop_size: train on a random crop_size x crop_size window per step instead of the whole
            image (for large images); None for the whole image.
        chunk_size: network evaluations per call when evaluating without gradients.
        seed: seeds the placement and the per-step randomness (samples, crops, pixel draws);
            each step draws from ``seed``, the step and the process rank, so a resumed run
            repeats them.
    """

    def __init__(
        self,
        network: nn.Module,
        sampler: PixelSampler | None = None,
        objective: Objective = "implicit",
        reconstruction: Reconstruction = Reconstruction(),
        optimisation: Optimisation = Optimisation(),
        crop_size: int | None = None,
        chunk_size: int = 65536,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(network, nn.Module):
            raise TypeError(f"network must be a torch.nn.Module, got {type(network).__name__}")
        sampler = StratifiedPoints() if sampler is None else sampler
        if not isinstance(sampler, PixelSampler):
            raise TypeError(
                f"sampler must be a models.sampling.PixelSampler, got {type(sampler).__name__}"
            )
        _check_options(objective, reconstruction, optimisation, crop_size, chunk_size, sampler)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            self.save_hyperparameters()
        built_here = [
            n for n in ("network", "sampler") if isinstance(self.hparams.get(n), nn.Module)
        ]
        if built_here:  # built in Python rather than from a config: the state dict holds them
            self.save_hyperparameters(ignore=built_here)

        self.network = network
        self.sampler = sampler
        self.objective = objective
        self.reconstruction = reconstruction
        self.optimisation = optimisation
        self.crop_size = crop_size
        self.chunk_size = chunk_size
        self.seed = int(seed)
        if isinstance(sampler, StratifiedPoints):
            sampler.cutoff = reconstruction.cutoff
            sampler.seed = self.seed
            if objective == "implicit" and reconstruction.weight == 0:
                sampler.freeze()  # nothing trains the Gaussians
        # A caller with its own clock (a benchmark with a wall-time budget) sets the fraction of
        # the run done here before each step; the schedules then follow it.
        self.external_progress: float | None = None

        # Shapes fixed here so a checkpoint loads into a freshly constructed system.
        self.register_buffer("image_size", torch.zeros(2, dtype=torch.int64))  # (H, W)
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
        self.register_buffer("network_evaluations", torch.zeros((), dtype=torch.int64))
        self.last_validation: dict[str, torch.Tensor] = {}  # images for the logging callback
        self.show_summary = True  # print the final figures and next commands when fit ends
        self.last_window: Window | None = None  # the window the last training step used
        self._image: torch.Tensor | None = None  # the whole target in float, without crops
        self._step_batch: tuple[PixelBatch, torch.Tensor] | None = None

    @property
    def _ddp_params_and_buffers_to_ignore(self) -> list[str]:
        """Every buffer, which DDP then leaves alone (it would copy process 0's into the others
        at each step): each buffer is either the same on every process by construction (set-up
        from the seed, adaptations decided from tallies summed over the processes) or the
        process's own (its error tallies, a sampler's own draws)."""
        return [name for name, _ in self.named_buffers()]

    # --- set-up -------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        data = self.datamodule
        self.initialise(data.size, data.num_channels, None if self.crop_size else data.image)
        world = self.trainer.world_size
        if world > 1 and self.crop_size is None:
            rank_zero_warn(
                f"{world} processes train without --model.crop_size: each of them trains on the "
                "whole image (only their samples differ). Set --model.crop_size so each process "
                "trains on its own crop.",
                category=UserWarning,
            )

    @property
    def datamodule(self):
        """The trainer's data module, which reads windows of the target image."""
        data = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if data is None or not hasattr(data, "window"):
            raise ValueError(
                "ImplicitImageSystem needs a datamodule that reads windows of its image "
                "(models.data.ImageDataModule)"
            )
        return data

    def target(self, window: Window) -> torch.Tensor:
        """The target image's pixels in a window, on this system's device: [C, h, w]."""
        if self._image is not None:
            row0, col0, h, w = window
            return self._image[:, row0 : row0 + h, col0 : col0 + w]
        return self.datamodule.window(window).to(self.device)

    def configure_callbacks(self) -> list[Callback]:
        from models.callbacks import FitSummary, ImageLogger

        return [ImageLogger(), FitSummary()] if self.show_summary else [ImageLogger()]

    def initialise_from_target(self, target: torch.Tensor) -> None:
        """:meth:`initialise` from a target image [C, H, W] held in memory."""
        self.initialise(tuple(target.shape[1:]), target.shape[0], target)

    @torch.no_grad()
    def initialise(
        self, size: tuple[int, int], channels: int, image: torch.Tensor | None = None
    ) -> None:
        """Check the network against the image's channels, remember the size and set up the
        sampler. ``image`` [C, H, W] is the whole target (None when it is read by crops)."""
        height, width = size
        out = self.network(torch.zeros(1, 2, device=self.device, dtype=self.coordinate_dtype))
        if out.dim() != 2 or out.shape[-1] != channels:
            raise ValueError(
                f"the network outputs {out.shape[-1]} channels per coordinate but the image has "
                f"{channels}; set the network's out_features to {channels} "
                "(e.g. --model.network.init_args.out_features " + str(channels) + ")"
            )
        if bool(self.initialised) and tuple(self.image_size.tolist()) != (height, width):
            raise ValueError(
                f"this system was trained on a {tuple(self.image_size.tolist())} image, "
                f"the data is {(height, width)}"
            )
        if self.sampler.whole_image and image is None:
            raise ValueError(
                f"the {type(self.sampler).__name__} sampler needs the whole image each step: "
                "unset --model.crop_size"
            )
        self.image_size.copy_(torch.tensor([height, width]))
        self._image = None if image is None else image.to(self.device, torch.float32)
        generator = torch.Generator().manual_seed(self.seed)
        self.sampler.setup(self._image, (height, width), generator)
        self.initialised.fill_(True)

    def configure_optimizers(self):
        rates = self.learning_rates
        groups = [{"params": list(self.network.parameters()), "lr": rates["network"]}]
        groups += self.sampler.parameter_groups(rates)
        optimizer = torch.optim.Adam(groups)
        if self.optimisation.schedule != "cosine":
            return optimizer
        final = self.optimisation.final_fraction

        def factor(step: int) -> float:
            progress = self.training_progress(step)
            return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    @property
    def learning_rates(self) -> dict[str, float]:
        o = self.optimisation
        return {"network": o.lr_network, "points": o.lr_points, "sigma": o.lr_sigma}

    def training_progress(self, step: int) -> float:
        """Fraction of the run done after ``step`` steps: ``external_progress`` when a caller
        sets it, else step / the trainer's estimated number of steps (0 when unbounded)."""
        if self.external_progress is not None:
            return self.external_progress
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else None
        if total is None or not math.isfinite(total) or total <= 0:
            return 0.0
        return step / total

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

    @property
    def point_set(self) -> PointSet | None:
        """The sampler's points (``StratifiedPoints``), None for other samplers."""
        return getattr(self.sampler, "point_set", None)

    @property
    def cutoff(self) -> float:
        return self.reconstruction.cutoff

    @property
    def points(self) -> torch.Tensor:
        """Positions of the points in use [n, 2] (with a point set)."""
        return self.point_set.xy()

    def sigma(self) -> torch.Tensor:
        """Sigma in pixels of the points in use [n] (with a point set)."""
        return self.point_set.sigma()

    def points_reaching(self, window: Window) -> torch.Tensor | None:
        """Indices [n] of the points whose Gaussian reaches the window (None: the whole image)."""
        return self.sampler.reaching(window, self.size)

    def coordinates(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Network coordinates [n, 2] of the centres of pixels (rows [n], cols [n])."""
        centres = torch.stack([cols, rows], dim=-1).to(self.device, self.coordinate_dtype)
        return pixel_to_unit(centres, self.size)

    @torch.no_grad()
    def predict_pixels(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """The network at pixel centres without gradients (counted as evaluations): [n, C]."""
        self.network_evaluations += rows.numel()
        return evaluate_network(self.network, self.coordinates(rows, cols), self.chunk_size)

    def reconstruct_window(self, window: Window | None = None) -> tuple[torch.Tensor, int]:
        """Sparse reconstruction of a window (row0, col0, h, w), differentiably, from the network
        at the points themselves (the reconstruction objective's model).

        Returns:
            (image [C, h, w], number of network evaluations).
        """
        height, width = self.size
        window = window or (0, 0, height, width)
        row0, col0, h, w = window
        index = self.points_reaching(window)
        points = self.points if index is None else self.point_set.positions[index]  # [n, 2]
        sigma = self.sigma() if index is None else self.point_set.log_sigma[index].exp()
        values = self.network(pixel_to_unit(points, (height, width)))  # [n, C]
        offset = points.new_tensor([col0, row0])
        image = nuir.interpolate(points - offset, values, (h, w), sigma, cutoff=self.cutoff)
        return image, int(points.shape[0])

    def reconstruct(self) -> torch.Tensor:
        """The point set's image of the whole raster, without gradients: [C, H, W] (the network
        at every pixel without a point set)."""
        if self.point_set is None:
            return self.network_image()
        return self.reconstruct_tile((0, 0, *self.size))

    def network_image(self) -> torch.Tensor:
        """The network evaluated at every pixel centre of the training raster: [C, H, W]."""
        return self.network_tile((0, 0, *self.size))

    # --- training ---------------------------------------------------------------------------------

    def step_generator(self) -> torch.Generator:
        """A CPU generator seeded by (seed, global step, process rank): the same draws after a
        resume, different ones on each process of a distributed run."""
        seed = self.seed * 1_000_003 + int(self.global_step) + 7_919_000_003 * self.global_rank
        return torch.Generator().manual_seed(seed)

    def random_window(self, generator: torch.Generator) -> Window:
        height, width = self.size
        if self.crop_size is None:
            return (0, 0, height, width)
        h, w = min(self.crop_size, height), min(self.crop_size, width)
        row0 = int(torch.randint(0, height - h + 1, (1,), generator=generator))
        col0 = int(torch.randint(0, width - w + 1, (1,), generator=generator))
        return (row0, col0, h, w)

    def loss_fn(
        self, prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean squared (or absolute) error; ``weight`` [n] weighs the rows of [n, C] inputs."""
        difference = prediction - target
        error = difference.abs() if self.optimisation.loss == "l1" else difference.square()
        if weight is None:
            return error.mean()
        return (error * weight[:, None]).mean()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        generator = self.step_generator()  # the batch is only the step number: draws are ours
        window = self.random_window(generator)
        self.last_window = window
        if self.objective == "reconstruction":
            crop = self.target(window)
            prediction, evaluations = self.reconstruct_window(window)
            loss = self.loss_fn(prediction, crop)
            self.network_evaluations += evaluations
            self.log("train/psnr_reconstruction", _psnr(prediction, crop))
        else:
            context = StepContext(
                step=int(self.global_step),
                progress=self.training_progress(int(self.global_step)),
                window=window,
                generator=generator,
                predict=self.predict_pixels,
            )
            loss = self.implicit_step(context)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/network_evaluations", self.network_evaluations.double())
        if self.point_set is not None:
            self.log("train/points", float(self.point_set.count))
        return loss

    def implicit_step(self, context: StepContext) -> torch.Tensor:
        """The implicit objective on the sampler's pixels (see the module docstring)."""
        batch = self.sampler.draw(context)
        row0, col0, _, _ = context.window
        coordinates = self.coordinates(batch.rows, batch.cols)
        if self.sampler.wants_coordinate_grad:
            coordinates.requires_grad_(True)
        prediction = self.network(coordinates)  # [n, C]
        crop = self.target(context.window)
        pixels = crop[:, batch.rows.to(crop.device) - row0, batch.cols.to(crop.device) - col0].T
        extra = self.sampler.observe(batch, prediction, pixels, context)  # may set the weights
        loss = self.loss_fn(prediction, pixels, batch.weights)
        if extra is not None:
            loss = loss + extra
        self.network_evaluations += len(batch)
        self._step_batch = (batch, coordinates) if self.sampler.wants_coordinate_grad else None
        self.log("train/psnr_samples", _psnr(prediction, pixels), prog_bar=True)
        return loss + self.reconstruction_loss(batch, prediction, context, crop)

    def reconstruction_loss(
        self,
        batch: PixelBatch,
        prediction: torch.Tensor,
        context: StepContext,
        crop: torch.Tensor,
    ) -> torch.Tensor | float:
        """The samples' values interpolated by their points' Gaussians, against the crop: the
        loss that trains the positions and sigma (0 when off or not due this step)."""
        settings = self.reconstruction
        if self.point_set is None or settings.weight == 0:
            return 0.0
        positions, log_sigma = self.point_set.positions, self.point_set.log_sigma
        if context.step % settings.every != 0:
            # Every parameter takes part in every step (distributed training requires it).
            return 0.0 * (positions.sum() + log_sigma.sum())
        row0, col0, h, w = context.window
        centres = torch.stack([batch.cols, batch.rows], dim=-1).to(positions)  # [n, 2]
        # Straight through: the Gaussians sit on the sampled pixel centres, and their position
        # gradient moves the points (which the reconstruction of the whole image uses).
        anchors = positions[batch.ids]
        samples = anchors + (centres - anchors).detach()
        carried = prediction.detach()
        if settings.value_gradient != 0:
            carried = carried + settings.value_gradient * (prediction - prediction.detach())
        offset = samples.new_tensor([col0, row0])
        reconstruction = nuir.interpolate(
            samples - offset, carried, (h, w), log_sigma[batch.ids].exp(), cutoff=self.cutoff
        )
        self.log("train/psnr_reconstruction", _psnr(reconstruction, crop))
        return settings.weight * self.loss_fn(reconstruction, crop)

    def on_after_backward(self) -> None:
        if self._step_batch is not None:
            batch, coordinates = self._step_batch
            if coordinates.grad is not None:
                self.sampler.after_backward(batch, coordinates.grad)
            self._step_batch = None

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        reduce = None
        if self._trainer is not None and self.trainer.world_size > 1:
            strategy = self.trainer.strategy
            reduce = lambda t: strategy.reduce(t, reduce_op="sum")  # noqa: E731
        optimizer = self.optimizers().optimizer if self._trainer is not None else None
        step = int(self.global_step)
        logs = self.sampler.after_step(step, self.training_progress(step), optimizer, reduce)
        for name, value in logs.items():
            self.log(f"train/{name}", value)

    # --- validation -------------------------------------------------------------------------

    @torch.no_grad()
    def network_tile(self, window: Window) -> torch.Tensor:
        """The network at every pixel of a window, without gradients, in chunks: [C, h, w]."""
        _, _, h, w = window
        centres = pixel_centres(window, device=self.device, dtype=self.coordinate_dtype)
        values = evaluate_network(self.network, pixel_to_unit(centres, self.size), self.chunk_size)
        return values.T.reshape(-1, h, w)

    @torch.no_grad()
    def reconstruct_tile(self, window: Window) -> torch.Tensor:
        """The point set's image of a window, without gradients, from the network at the points
        reaching it (in chunks): [C, h, w]."""
        row0, col0, h, w = window
        index = self.points_reaching(window)
        points = self.points if index is None else self.point_set.positions[index]  # [n, 2]
        sigma = self.sigma() if index is None else self.point_set.log_sigma[index].exp()
        values = evaluate_network(self.network, pixel_to_unit(points, self.size), self.chunk_size)
        offset = points.new_tensor([col0, row0])
        return nuir.interpolate(points - offset, values, (h, w), sigma, cutoff=self.cutoff)

    @torch.no_grad()
    def image_metrics(
        self,
        read_target,
        *,
        rank: int = 0,
        world_size: int = 1,
        reduce=None,
        tile_size: int = 1024,
    ) -> dict[str, float]:
        """PSNR (and SSIM) of the network's dense image, and of the point set's reconstruction,
        against the target, tile by tile: nothing image-sized is held in float.

        Args:
            read_target: window (row0, col0, h, w) -> target pixels [C, h, w].
            rank, world_size, reduce: process ``rank`` of ``world_size`` scores every
                ``world_size``-th tile; ``reduce`` sums a tensor over the processes.
        SSIM is the pixel-weighted mean over tiles of at least 64 x 64 (exact for an image of
        one tile).
        """
        sums = torch.zeros(6, dtype=torch.float64)  # squared errors, SSIM x pixels, pixels
        for window in tile_windows(self.size, tile_size)[rank::world_size]:
            target = read_target(window).to(self.device)
            pixels = window[2] * window[3]
            weigh = min(window[2:]) >= 64 or window[2:] == self.size
            network = self.network_tile(window).clamp(0, 1)
            sums[0] += float((network - target).double().square().sum())
            if weigh:
                sums[2] += float(_ssim(network, target)) * pixels
                sums[5] += pixels
            if self.point_set is not None:
                reconstruction = self.reconstruct_tile(window).clamp(0, 1)
                sums[1] += float((reconstruction - target).double().square().sum())
                if weigh:
                    sums[3] += float(_ssim(reconstruction, target)) * pixels
            sums[4] += target.numel()
        if reduce is not None:
            sums = reduce(sums.to(self.device)).cpu()
        metrics = {
            "psnr_network": _psnr_of(sums[0], sums[4]),
            "ssim_network": float(sums[2] / sums[5]) if sums[5] > 0 else math.nan,
        }
        if self.point_set is not None:
            metrics["psnr_reconstruction"] = _psnr_of(sums[1], sums[4])
            metrics["ssim_reconstruction"] = float(sums[3] / sums[5]) if sums[5] > 0 else math.nan
        return metrics

    @torch.no_grad()
    def preview(self, read_target, side: int = 1024) -> dict[str, torch.Tensor]:
        """Target, network and reconstruction of the central side x side window (the whole
        image when it is smaller), for display: [C, h, w] each."""
        height, width = self.size
        h, w = min(side, height), min(side, width)
        window = ((height - h) // 2, (width - w) // 2, h, w)
        target = read_target(window).to(self.device)
        images = {"target": target, "network": self.network_tile(window)}
        if self.point_set is not None:
            images["reconstruction"] = self.reconstruct_tile(window)
            offset = torch.tensor([window[1], window[0]], device=self.device)
            images["points"] = self.points.detach() - offset  # positions on the preview
        return {k: v.clamp(0, 1) if k != "points" else v for k, v in images.items()}

    def validation_step(self, batch, batch_idx: int) -> None:
        trainer = self.trainer
        reduce = None
        if trainer.world_size > 1:
            reduce = lambda t: trainer.strategy.reduce(t, reduce_op="sum")  # noqa: E731
        metrics = self.image_metrics(
            self.target, rank=self.global_rank, world_size=trainer.world_size, reduce=reduce
        )
        # The same values on every process (summed above), so syncing them changes nothing.
        for name, value in metrics.items():
            self.log(f"val/{name}", value, prog_bar=name.startswith("psnr"), sync_dist=True)
        self.log("hp/psnr", metrics["psnr_network"], sync_dist=True)
        self.log("hp/ssim", metrics["ssim_network"], sync_dist=True)
        if self.point_set is not None:
            self.log("val/points", float(self.point_set.count), sync_dist=True)
        if self.global_rank == 0 and not trainer.sanity_checking:
            self.last_validation = self.preview(self.target)


def _psnr_of(squared_error: torch.Tensor, count: torch.Tensor) -> float:
    mse = float(squared_error) / max(float(count), 1.0)
    return math.inf if mse == 0 else -10.0 * math.log10(mse)


def _psnr(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return peak_signal_noise_ratio(prediction.detach().clamp(0, 1), target, data_range=1.0)


def _ssim(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM of two [C, H, W] images."""
    return structural_similarity_index_measure(prediction[None], target[None], data_range=1.0)


def _check_options(objective, reconstruction, optimisation, crop_size, chunk_size, sampler) -> None:
    """Raise a ValueError naming the first option that is out of range."""
    if objective not in ("implicit", "reconstruction"):
        raise ValueError(f"objective must be 'implicit' or 'reconstruction', got {objective!r}")
    if objective == "reconstruction" and not isinstance(sampler, StratifiedPoints):
        raise ValueError(
            "objective 'reconstruction' needs the StratifiedPoints sampler (a point set)"
        )
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    every = reconstruction.every
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"reconstruction.every must be a positive int, got {every!r}")
    for name in ("weight", "value_gradient"):
        if not getattr(reconstruction, name) >= 0:
            raise ValueError(
                f"reconstruction.{name} must be >= 0, got {getattr(reconstruction, name)!r}"
            )
    if not reconstruction.cutoff > 0:
        raise ValueError(f"reconstruction.cutoff must be > 0, got {reconstruction.cutoff!r}")
    for name in ("lr_network", "lr_points", "lr_sigma"):
        if not getattr(optimisation, name) >= 0:
            raise ValueError(
                f"optimisation.{name} must be >= 0, got {getattr(optimisation, name)!r}"
            )
    if optimisation.schedule not in ("constant", "cosine"):
        raise ValueError(
            f"optimisation.schedule must be 'constant' or 'cosine', got {optimisation.schedule!r}"
        )
    if optimisation.loss not in ("mse", "l1"):
        raise ValueError(f"optimisation.loss must be 'mse' or 'l1', got {optimisation.loss!r}")
    if not 0 < optimisation.final_fraction <= 1:
        raise ValueError(
            f"optimisation.final_fraction must be in (0, 1], got {optimisation.final_fraction!r}"
        )
    if crop_size is not None and (not isinstance(crop_size, int) or crop_size < 2):
        raise ValueError(f"crop_size must be an int >= 2 or None, got {crop_size!r}")
    if reconstruction.weight > 0 and not isinstance(sampler, StratifiedPoints):
        raise ValueError(
            "reconstruction.weight > 0 needs the StratifiedPoints sampler (a point set); "
            f"got {type(sampler).__name__}"
        )
