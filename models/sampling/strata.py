"""nuir's sampler: one fresh sample per point per step, in the point's own stratum, with strata
that split where the network's error is largest.

Each point of a :class:`models.point_set.PointSet` owns a stratum (an axis-aligned cell; the
strata tile the image) and a Gaussian (a position inside the stratum and a sigma: the point's
part in the reconstruction through ``nuir.interpolate``). Every step each point draws a sample
uniformly in ``jitter`` x its stratum (``sample_from: strata``), or from its Gaussian, kept
inside the stratum (``sample_from: gaussians``: where the reconstruction has moved and shrunk the
Gaussians, the samples follow), snapped to the nearest pixel centre. Each sample's loss is weighted
by its stratum's area, so the loss estimates the whole image's error however the strata are sized.
The network's squared error at the samples is tallied per point; at the times of the
``adaptation`` schedule the points with the largest share of the image's error split their
stratum, the smallest merge back (``models.point_set``), within the budget ``max_points``.
"""

from __future__ import annotations

import torch

from models.point_set import Adaptation, PointSet
from models.sampling.base import PixelBatch, PixelSampler, StepContext, check_positive_int
from nuir._validate import mean_spacing
from nuir.geometry import points_reaching
from nuir.samplers import PLACEMENTS, grid_strata, local_spacing, sample_points

NO_ADAPTATION = Adaptation()


class StratifiedPoints(PixelSampler):
    """nuir's stratified, adaptive sampler (see the module docstring).

    Args:
        n_points: points (samples per step) at the start.
        max_points: the budget the set may grow to (default: n_points, no growth).
        adaptation: the adaptation schedule.
        placement: initial positions: ``grid`` (its cells are the strata), ``jittered``,
            ``random``, ``blue_noise`` or ``gradient`` (the last three get squares as wide as
            their spacing as strata).
        initial_sigma: sigma in pixels of every Gaussian at the start; default: half of each
            point's spacing to its neighbours.
        jitter: the share of its stratum each point samples from (1: all of it, 0: its centre).
        sample_from: ``strata`` (uniform in the stratum) or ``gaussians`` (the point's Gaussian,
            clamped to the stratum).
        learn_points, learn_sigma: let the reconstruction train the positions / sigma.
    """

    def __init__(
        self,
        n_points: int = 16384,
        max_points: int | None = None,
        adaptation: Adaptation = NO_ADAPTATION,
        placement: str = "grid",
        initial_sigma: float | None = None,
        jitter: float = 1.0,
        sample_from: str = "strata",
        learn_points: bool = True,
        learn_sigma: bool = True,
    ) -> None:
        super().__init__()
        check_positive_int("n_points", n_points)
        if max_points is not None:
            check_positive_int("max_points", max_points)
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
        if initial_sigma is not None and not initial_sigma > 0:
            raise ValueError(f"initial_sigma must be > 0 or None, got {initial_sigma!r}")
        if not 0 <= jitter <= 1:
            raise ValueError(f"jitter must be in [0, 1], got {jitter!r}")
        if sample_from not in ("strata", "gaussians"):
            raise ValueError(f"sample_from must be 'strata' or 'gaussians', got {sample_from!r}")
        adaptation.check(n_points, max_points or n_points)
        self.adaptation = adaptation
        self.n_points = n_points
        self.placement = placement
        self.initial_sigma = initial_sigma
        self.jitter = float(jitter)
        self.sample_from = sample_from
        self.point_set = PointSet(
            max_points or n_points, learn_positions=learn_points, learn_sigma=learn_sigma
        )
        self.register_buffer("image_size", torch.zeros(2, dtype=torch.int64))  # (H, W)
        self.cutoff = 3.0  # the reconstruction's cutoff, set by the system
        self.seed = 0  # set by the system

    @property
    def placed(self) -> bool:
        return self.point_set.count > 0

    @torch.no_grad()
    def setup(self, image, size, generator) -> None:
        if self.placed:  # restored from a checkpoint
            return
        self.image_size.copy_(torch.tensor(size))
        if self.placement == "gradient" and image is None:
            raise ValueError("placement 'gradient' needs the whole image (unset crop_size)")
        device = self.point_set.positions.device
        points = sample_points(
            self.placement, size, self.n_points, image=image, generator=generator
        )
        if self.initial_sigma is not None:
            sigma = torch.full((self.n_points,), float(self.initial_sigma))
        else:
            sigma = 0.5 * local_spacing(points, fallback=mean_spacing(size, self.n_points))
        strata = (
            grid_strata(size, self.n_points) if self.placement in ("grid", "jittered") else None
        )
        self.point_set.place(points.to(device), sigma.to(device), strata)

    def reaching(self, window, size) -> torch.Tensor | None:
        """Indices of the points whose Gaussian, wherever it sits in its stratum, reaches the
        window (None: the window is the whole image)."""
        if tuple(window[2:]) == tuple(size):
            return None
        count = self.point_set.count
        strata = self.point_set.strata[:count]
        sigma = self.point_set.log_sigma[:count].detach().exp()
        reach = self.cutoff * sigma[:, None] + strata[:, 2:] / 2  # [n, 2]
        return points_reaching(strata[:, :2], reach, window)

    def sample_positions(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One sample per point of ``index``: [n, 2] (x, y) pixel positions (not snapped)."""
        if self.sample_from == "strata":
            return self.point_set.samples(index, generator, self.jitter)
        strata = self.point_set.strata[index]
        centre = self.point_set.positions[index].detach()
        sigma = self.point_set.log_sigma[index].detach().exp()[:, None]
        noise = torch.randn(index.numel(), 2, generator=generator).to(centre)
        low = strata[:, :2] - strata[:, 2:] / 2
        return torch.minimum(torch.maximum(centre + sigma * noise, low), low + strata[:, 2:])

    def draw(self, context: StepContext) -> PixelBatch:
        row0, col0, h, w = context.window
        size = tuple(self.image_size.tolist())
        index = self.reaching(context.window, size)
        if index is None:
            index = torch.arange(self.point_set.count, device=self.point_set.positions.device)
        samples = self.sample_positions(index, context.generator)  # [n, 2]
        limit = samples.new_tensor([size[1] - 1, size[0] - 1])
        centres = torch.minimum(samples.round().clamp_min(0), limit).long()  # [n, 2] (x, y)
        inside = (
            (centres[:, 0] >= col0)
            & (centres[:, 0] < col0 + w)
            & (centres[:, 1] >= row0)
            & (centres[:, 1] < row0 + h)
        )
        index, centres = index[inside], centres[inside]
        area = self.point_set.strata[index, 2:].prod(1)  # [n]
        return PixelBatch(centres[:, 1], centres[:, 0], weights=area / area.mean(), ids=index)

    def observe(self, batch, prediction, target, context) -> None:
        squared_error = (prediction.detach() - target).square().sum(1)  # [n]
        self.point_set.record_error(batch.ids, squared_error)
        return None

    def after_step(self, step: int, progress: float, optimizer, reduce=None) -> dict[str, float]:
        self.point_set.clamp_()
        if not self.adaptation.due(int(self.point_set.adaptations), progress):
            return {}
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step + 500_000_029)
        pruned, grown = self.point_set.adapt(self.adaptation, generator, optimizer, reduce)
        return {"points_pruned": float(pruned), "points_grown": float(grown)}

    def parameter_groups(self, learning_rates: dict[str, float]) -> list[dict]:
        groups = []
        for name, parameter in (
            ("points", self.point_set.positions),
            ("sigma", self.point_set.log_sigma),
        ):
            if parameter.requires_grad:
                groups.append({"params": [parameter], "lr": learning_rates[name]})
        return groups

    def freeze(self) -> None:
        """Positions and sigma stay as placed and adapted (no reconstruction trains them)."""
        self.point_set.positions.requires_grad_(False)
        self.point_set.log_sigma.requires_grad_(False)

    def expected_fraction(self) -> float | None:
        return None
