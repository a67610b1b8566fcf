"""The Lightning system: fit a coordinate network to one image, sparsely or densely.

The network (coordinates in [-1, 1]^2 -> C values) *is* the implicit image: what training leaves
behind, queried anywhere and rendered at any size. Sparse training evaluates it only at N
adaptively placed points per step and reconstructs the raster (or a crop) from those N values
with ``nuir.interpolate``. Two objectives:

- ``"implicit"`` (default): every step each point draws a fresh sample position in its cell
  (``models.point_set``), snapped to the nearest pixel centre. The network's values there are
  compared with those pixels (the network learns the image everywhere, one stratified sample per
  cell per step); the same values, interpolated by the points' Gaussians, reconstruct the raster,
  and that loss trains the positions and sigma (and, scaled by ``value_gradient``, the network).
  The points adapt: they split where the network's error is high and are pruned where it is low,
  within the budget ``max_points``.
- ``"reconstruction"``: the loss is on the reconstruction from the network's values at N fixed
  learnable points only. Its model is the point set: the best 1x reconstruction from N values,
  but the network is free between the points and is *not* the image there. Kept for comparison
  and for uses that only need the 1x reconstruction.

Dense baselines: ``mode="dense"`` evaluates the network at every pixel (of the crop) each step,
``"dense_random"`` at ``n_points`` random pixels.

Coordinates: points are (x, y) in pixel units (pixel (r, s) has its centre at (s, r)); the network
sees ``nuir.geometry.pixel_to_unit(points)`` in [-1, 1]^2.
"""

from __future__ import annotations

import math
import warnings
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
from models.point_set import AdaptSchedule, PointSet
from nuir._validate import mean_spacing
from nuir.geometry import pixel_centres, pixel_to_unit, points_reaching, tile_windows
from nuir.renderers import evaluate_network
from nuir.samplers import PLACEMENTS, grid_strata, local_spacing, sample_points

Mode = Literal["sparse", "dense", "dense_random"]
Objective = Literal["implicit", "reconstruction"]
Placement = Literal["grid", "jittered", "random", "blue_noise", "gradient"]
Window = tuple[int, int, int, int]  # (row0, col0, height, width)


class ImplicitImageSystem(pl.LightningModule):
    """Trains ``network`` (coordinates in [-1, 1]^2 -> C values) to be one image.

    Args:
        network: the coordinate network, e.g. ``models.siren.Siren``.
        mode: ``"sparse"`` (network at N points + interpolation), ``"dense"`` (network at every
            pixel) or ``"dense_random"`` (network at N random pixels per step).
        objective: sparse mode: ``"implicit"`` or ``"reconstruction"`` (module docstring).
        n_points: N, the initial number of points (sparse) or pixels per step (dense_random).
        max_points: the budget the point set may grow to (default: n_points, no growth).
        placement: initial positions: ``"grid"``, ``"jittered"``, ``"random"``,
            ``"blue_noise"`` or ``"gradient"`` (importance sampling by the target's gradient).
        initial_sigma: Gaussian standard deviation in pixels at the start, the same for every
            point; default (None): half of each point's distance to its 4 nearest neighbours.
        learn_points: train the positions (else they stay where placed or adapted).
        learn_sigma: train one sigma per point (kept in [0.3 px, 4 x the largest initial one]).
        jitter: implicit objective: the fraction of its stratum (its cell of the grid, or a
            square as wide as its neighbour spacing) in which each point draws its sample every
            step; 0 samples at the strata's centres.
        reconstruction_weight: implicit objective: weight of the reconstruction loss, which
            trains the positions and sigma (0: no reconstruction during training).
        reconstruction_every: implicit objective: take the reconstruction loss every this many
            steps only (it costs about a third of a step; the network does not learn from it).
        value_gradient: implicit objective: scale of the reconstruction loss's gradient into the
            network (0: the network learns from its samples only; see the README).
        adapt_interval, adapt_start, adapt_end: densify / prune every ``adapt_interval`` steps
            from step ``adapt_start`` to ``adapt_end`` (None: to the end); 0 turns it off.
        grow_fraction, prune_fraction: at most this fraction of the set split / pruned per
            adaptation.
        cutoff: Mahalanobis radius of each Gaussian (``nuir.interpolate``'s cutoff).
        loss: ``"mse"`` or ``"l1"``.
        lr_network, lr_points, lr_sigma: Adam learning rates of the three parameter groups. The
            positions' rate is low on purpose: Adam moves a point by about the rate per step,
            and points that drift far from their cells leave parts of the image unsampled.
        lr_schedule: ``"constant"`` or ``"cosine"`` (decay to ``lr_final_fraction`` of each rate
            over the trainer's ``max_steps``).
        lr_final_fraction: final learning rate as a fraction of the initial one (cosine).
        crop_size: train on a random crop_size x crop_size window per step instead of the whole
            image (for large images); None for the whole image.
        chunk_size: network evaluations per call when evaluating without gradients.
        seed: seeds the placement and the per-step randomness (samples, crops, pixel batches);
            each step draws from ``seed`` and the step number, so a resumed run repeats them.
    """

    def __init__(
        self,
        network: nn.Module,
        mode: Mode = "sparse",
        objective: Objective = "implicit",
        n_points: int = 16384,
        max_points: int | None = None,
        placement: Placement = "grid",
        initial_sigma: float | None = None,
        learn_points: bool = True,
        learn_sigma: bool = True,
        jitter: float = 1.0,
        reconstruction_weight: float = 1.0,
        reconstruction_every: int = 1,
        value_gradient: float = 0.0,
        adapt_interval: int = 0,
        adapt_start: int = 0,
        adapt_end: int | None = None,
        grow_fraction: float = 0.1,
        prune_fraction: float = 0.02,
        cutoff: float = 3.0,
        loss: Literal["mse", "l1"] = "mse",
        lr_network: float = 1e-3,
        lr_points: float = 1e-3,
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
        self.adapt_schedule = AdaptSchedule(
            adapt_interval, adapt_start, adapt_end, grow_fraction, prune_fraction
        )
        _check_options(
            mode=mode,
            objective=objective,
            placement=placement,
            loss=loss,
            lr_schedule=lr_schedule,
            n_points=n_points,
            max_points=max_points,
            initial_sigma=initial_sigma,
            jitter=jitter,
            reconstruction_weight=reconstruction_weight,
            reconstruction_every=reconstruction_every,
            value_gradient=value_gradient,
            cutoff=cutoff,
            lr_network=lr_network,
            lr_points=lr_points,
            lr_sigma=lr_sigma,
            lr_final_fraction=lr_final_fraction,
            crop_size=crop_size,
            chunk_size=chunk_size,
        )
        if mode == "sparse":
            self.adapt_schedule.check(n_points, max_points or n_points)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            self.save_hyperparameters()
        if isinstance(self.hparams.get("network"), nn.Module):
            # Built in Python rather than from a config: the weights live in the state dict.
            self.save_hyperparameters(ignore=["network"])

        self.network = network
        self.mode = mode
        self.objective = objective
        self.n_points = n_points
        self.placement = placement
        self.initial_sigma = initial_sigma
        self.jitter = float(jitter)
        self.reconstruction_weight = float(reconstruction_weight)
        self.reconstruction_every = reconstruction_every
        self.value_gradient = float(value_gradient)
        self.cutoff = float(cutoff)
        self.loss_name = loss
        self.learning_rates = {"network": lr_network, "points": lr_points, "sigma": lr_sigma}
        self.lr_schedule = lr_schedule
        self.lr_final_fraction = float(lr_final_fraction)
        self.crop_size = crop_size
        self.chunk_size = chunk_size
        self.seed = int(seed)
        # A caller with its own clock (a benchmark with a wall-time budget) sets the fraction of
        # the run done here before each step; the cosine schedule then follows it.
        self.external_progress: float | None = None

        # Shapes fixed here so a checkpoint loads into a freshly constructed system.
        self.register_buffer("image_size", torch.zeros(2, dtype=torch.int64))  # (H, W)
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
        self.register_buffer("network_evaluations", torch.zeros((), dtype=torch.int64))
        self.point_set: PointSet | None = None
        if mode == "sparse":
            self.point_set = PointSet(
                max_points or n_points,
                learn_positions=learn_points,
                learn_sigma=learn_sigma,
            )
        self.last_validation: dict[str, torch.Tensor] = {}  # images for the logging callback
        self.show_summary = True  # print the final figures and next commands when fit ends
        self.last_window: Window | None = None  # the window the last training step used

    # --- set-up -------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        data = self.datamodule
        image = data.image if self.placement == "gradient" and not bool(self.initialised) else None
        self.initialise(data.size, data.num_channels, image)
        world = self.trainer.world_size
        if world > 1 and self.crop_size is None and self.mode != "dense_random":
            rank_zero_warn(
                f"{world} processes train without --model.crop_size: every one of them "
                + (
                    "reconstructs the whole image each step (only the points' samples differ)"
                    if self.mode == "sparse"
                    else "evaluates the network at every pixel each step: the same work"
                )
                + f", so they cost {world} times one and supervise little more. Set "
                "--model.crop_size so each process trains on its own crop.",
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
        """Check the network against the image's channels and place the points (once).

        ``image`` [C, H, W] is needed only by the ``"gradient"`` placement."""
        height, width = size
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
        if self.point_set is not None:
            generator = torch.Generator().manual_seed(self.seed)
            points = sample_points(
                self.placement, (height, width), self.n_points, image=image, generator=generator
            )
            if self.initial_sigma is not None:
                sigma = torch.full((self.n_points,), float(self.initial_sigma))
            else:
                spacing = mean_spacing((height, width), self.n_points)
                sigma = 0.5 * local_spacing(points, fallback=spacing)  # [N]
            strata = None  # squares around the points, as wide as their spacing
            if self.placement in ("grid", "jittered"):  # the grid's cells, tiling the image
                strata = grid_strata((height, width), self.n_points)
            device = self.device
            self.point_set.place(points.to(device), sigma.to(device), strata)
        self.initialised.fill_(True)

    def configure_optimizers(self):
        rates = self.learning_rates
        groups = [{"params": list(self.network.parameters()), "lr": rates["network"]}]
        if self.point_set is not None:
            for name, parameter in (
                ("points", self.point_set.positions),
                ("sigma", self.point_set.log_sigma),
            ):
                if parameter.requires_grad:
                    groups.append({"params": [parameter], "lr": rates[name]})
        optimizer = torch.optim.Adam(groups)
        if self.lr_schedule != "cosine":
            return optimizer
        final = self.lr_final_fraction

        def factor(step: int) -> float:
            progress = self.training_progress(step)
            return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

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
    def points(self) -> torch.Tensor:
        """Positions of the points in use [n, 2] (sparse mode)."""
        return self.point_set.xy()

    def sigma(self) -> torch.Tensor:
        """Sigma in pixels of the points in use [n] (sparse mode)."""
        return self.point_set.sigma()

    def points_reaching(self, window: Window) -> torch.Tensor | None:
        """Indices [n] of the points whose Gaussian, wherever it sits in their stratum, reaches
        the window (None: the window is the whole image)."""
        if window[2:] == self.size:
            return None
        count = self.point_set.count
        strata = self.point_set.strata[:count]
        reach = self.cutoff * self.sigma().detach()[:, None] + strata[:, 2:] / 2  # [n, 2]
        return points_reaching(strata[:, :2], reach, window)

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

    def dense_window(self, window: Window) -> torch.Tensor:
        """The network at every pixel of a window, differentiably: [C, h, w]."""
        _, _, h, w = window
        centres = pixel_centres(window, device=self.device, dtype=self.coordinate_dtype)
        values = self.network(pixel_to_unit(centres, self.size))  # [h*w, C]
        return values.T.reshape(-1, h, w)

    def reconstruct(self) -> torch.Tensor:
        """The point set's image of the whole raster, without gradients: [C, H, W]: the network
        at the points, interpolated (sparse mode); the network at every pixel otherwise."""
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
        error = difference.abs() if self.loss_name == "l1" else difference.square()
        if weight is None:
            return error.mean()
        return (error * weight[:, None]).mean()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        generator = self.step_generator()  # the batch is only the step number: draws are ours
        if self.mode == "dense_random":
            loss, evaluations = self.dense_random_step(generator)
        else:
            window = self.random_window(generator)
            self.last_window = window
            crop = self.target(window)  # [C, h, w]
            if self.mode == "dense":
                loss, evaluations = self.loss_fn(self.dense_window(window), crop), crop[0].numel()
            elif self.objective == "reconstruction":
                prediction, evaluations = self.reconstruct_window(window)
                loss = self.loss_fn(prediction, crop)
                self.log("train/psnr_reconstruction", _psnr(prediction, crop))
            else:
                loss, evaluations = self.implicit_step(window, crop, generator)
        self.network_evaluations += evaluations
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/network_evaluations", self.network_evaluations.double())
        if self.point_set is not None:
            self.log("train/points", float(self.point_set.count))
        return loss

    def dense_random_step(self, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        height, width = self.size
        index = torch.randint(0, height * width, (self.n_points,), generator=generator)  # [n]
        rows, columns = index // width, index % width
        samples = self.datamodule.pixels_at(rows, columns).to(self.device)  # [n, C]
        centres = torch.stack([columns, rows], dim=-1).to(self.device, self.coordinate_dtype)
        prediction = self.network(pixel_to_unit(centres, self.size))
        self.log("train/psnr_samples", _psnr(prediction, samples))
        return self.loss_fn(prediction, samples), self.n_points

    def implicit_step(
        self, window: Window, crop: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, int]:
        """The implicit objective on one window (see the module docstring)."""
        height, width = self.size
        row0, col0, h, w = window
        index = self.points_reaching(window)
        if index is None:
            index = torch.arange(self.point_set.count, device=self.device)
        samples = self.point_set.samples(index, generator, self.jitter)  # [n, 2]
        limit = samples.new_tensor([width - 1, height - 1])
        centres = torch.minimum(samples.round().clamp_min(0), limit)  # [n, 2] pixel centres
        # Straight through: the Gaussians sit on the sampled pixel centres, and their position
        # gradient moves the points (which the reconstruction of the whole image uses).
        anchors = self.point_set.positions[index]  # [n, 2]
        samples = anchors + (centres - anchors).detach()
        values = self.network(pixel_to_unit(centres.to(self.coordinate_dtype), self.size))

        local = centres.long() - torch.tensor([col0, row0], device=centres.device)  # [n, 2]
        inside = ((local >= 0) & (local < torch.tensor([w, h], device=local.device))).all(1)
        pixels = crop[:, local[inside, 1], local[inside, 0]].T  # [m, C]
        # Each sample stands for its cell: weighted by the cell's area, the loss estimates the
        # image's error however unevenly adaptation has spread the points.
        area = self.point_set.strata[index[inside], 2:].prod(1)  # [m]
        loss = self.loss_fn(values[inside], pixels, weight=area / area.mean())
        squared_error = (values[inside] - pixels).detach().square().sum(1)  # [m]
        self.point_set.record_error(index[inside], squared_error)
        self.log("train/psnr_samples", _psnr(values[inside], pixels), prog_bar=True)

        if self.reconstruction_weight > 0 and self.global_step % self.reconstruction_every == 0:
            scale = self.value_gradient  # of the gradient into the network through the values
            carried = values.detach()
            if scale != 0:
                carried = carried + scale * (values - values.detach())
            offset = samples.new_tensor([col0, row0])
            sigma = self.point_set.log_sigma[index].exp()
            reconstruction = nuir.interpolate(
                samples - offset, carried, (h, w), sigma, cutoff=self.cutoff
            )
            loss = loss + self.reconstruction_weight * self.loss_fn(reconstruction, crop)
            self.log("train/psnr_reconstruction", _psnr(reconstruction, crop))
        return loss, int(index.numel())

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.point_set is None:
            return
        self.point_set.clamp_()
        step = int(self.global_step)
        if self.objective == "implicit" and self.adapt_schedule.due(step):
            strategy = self.trainer.strategy if self._trainer is not None else None
            reduce = None
            if strategy is not None and self.trainer.world_size > 1:
                reduce = lambda t: strategy.reduce(t, reduce_op="sum")  # noqa: E731
            optimizer = self.optimizers().optimizer if self._trainer is not None else None
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step + 500_000_029)
            pruned, grown = self.point_set.adapt(self.adapt_schedule, generator, optimizer, reduce)
            self.log("train/points_pruned", float(pruned))
            self.log("train/points_grown", float(grown))

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


def _check_options(**options) -> None:
    """Raise a ValueError naming the first option that is out of range."""
    choices = {
        "mode": ("sparse", "dense", "dense_random"),
        "objective": ("implicit", "reconstruction"),
        "placement": PLACEMENTS,
        "loss": ("mse", "l1"),
        "lr_schedule": ("constant", "cosine"),
    }
    for name, allowed in choices.items():
        if options[name] not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {options[name]!r}")
    for name in ("n_points", "chunk_size", "reconstruction_every"):
        value = options[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    max_points = options["max_points"]
    if max_points is not None and (isinstance(max_points, bool) or not isinstance(max_points, int)):
        raise ValueError(f"max_points must be an int or None, got {max_points!r}")
    for name in ("initial_sigma",):
        if options[name] is not None and not options[name] > 0:
            raise ValueError(f"{name} must be > 0 or None, got {options[name]!r}")
    if not options["cutoff"] > 0:
        raise ValueError(f"cutoff must be > 0, got {options['cutoff']!r}")
    if not 0 <= options["jitter"] <= 1:
        raise ValueError(f"jitter must be in [0, 1], got {options['jitter']!r}")
    for name in ("reconstruction_weight", "value_gradient", "lr_network", "lr_points", "lr_sigma"):
        if not options[name] >= 0:
            raise ValueError(f"{name} must be >= 0, got {options[name]!r}")
    if not 0 < options["lr_final_fraction"] <= 1:
        raise ValueError(
            f"lr_final_fraction must be in (0, 1], got {options['lr_final_fraction']!r}"
        )
    crop_size = options["crop_size"]
    if crop_size is not None and (not isinstance(crop_size, int) or crop_size < 2):
        raise ValueError(f"crop_size must be an int >= 2 or None, got {crop_size!r}")
