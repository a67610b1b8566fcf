"""EVOS: evolutionary selection of the pixels each step (Zhang et al., "EVOS: Efficient Implicit
Neural Training via EVOlutionary Selector", CVPR 2025), as its released code does it (github
zwx-open/EVOS-INR at commit 3261484, ``trainer/img_sampling_trainer.py``; re-implemented here, no
code copied).

- *Fitness* steps, at an interval falling linearly from 100 to 50 steps over the run, train on
  every pixel and rank them: the pixels with the largest squared error and those with the largest
  error of the image's Laplacian (grey levels) make the *elite*, (ratio - mutation) of the pixels,
  by "frequency-aware crossover".
- Other steps train on the elite (frozen until the next fitness step) plus a fresh uniform draw of
  mutation = 0.5 x the base ratio of the pixels from the rest.
- *Cross-frequency supervision*: a loss on the Laplacian of the grey image, every fitness step and
  until 30 % of the run on the selection (the last full prediction with the selected pixels
  replaced by the current ones). Its weight is EVOS's 1e-5 on 0-255 grey levels against the MSE
  of [-1, 1] targets, which is 0.1626 in nuir's [0, 1] units; ``laplacian_weight=0`` is "EVOS
  w/o CFS" (the crossover still weighs the Laplacian error by that factor).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.sampling.base import (
    PixelBatch,
    PixelSampler,
    StepContext,
    check_fraction,
    check_schedule,
    scheduled_ratio,
    window_pixels,
)

LAPLACIAN_WEIGHT = 0.1626  # EVOS's 1e-5 on 0-255 grey levels vs. [-1, 1] MSE, in [0, 1] units
LAPLACIAN_UNTIL = 0.3  # EVOS's use_laplace_epoch 1500 of 5000
GREY = (0.2989, 0.587, 0.114)


def grey_laplacian(image: torch.Tensor) -> torch.Tensor:
    """4-neighbour Laplacian (zero padding) of the grey levels of [C, H, W] in [0, 1]: [H, W]."""
    grey = image[0] if image.shape[0] == 1 else sum(w * c for w, c in zip(GREY, image[:3]))
    kernel = grey.new_tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
    return F.conv2d(grey[None, None], kernel[None, None], padding=1)[0, 0]


def fitness_interval(progress: float) -> int:
    return int(100 - 50 * min(max(progress, 0.0), 1.0))


class EVOS(PixelSampler):
    """EVOS (see the module docstring).

    Args:
        ratio: share of the pixels per step (EVOS's use_ratio; 0.5 in its main table).
        schedule: ``constant`` (default) or ``step`` (EVOS's second table: ratio 0.2 rising in 10
            steps).
        mutation: the random share as a fraction of ``ratio`` (EVOS's init_mutation_ratio 0.5).
        laplacian_weight: weight of the cross-frequency loss in [0, 1] units (0: w/o CFS).
    """

    whole_image = True

    def __init__(
        self,
        ratio: float = 0.5,
        schedule: str = "constant",
        mutation: float = 0.5,
        laplacian_weight: float = LAPLACIAN_WEIGHT,
    ) -> None:
        super().__init__()
        self.ratio = check_fraction("ratio", ratio)
        self.schedule = check_schedule(schedule)
        self.mutation = check_fraction("mutation", mutation)
        if not laplacian_weight >= 0:
            raise ValueError(f"laplacian_weight must be >= 0, got {laplacian_weight!r}")
        self.laplacian_weight = float(laplacian_weight)
        self.register_buffer("ranking", torch.zeros(0, dtype=torch.int64))  # elite last
        self.register_buffer("full_prediction", torch.zeros(0))  # [C, H, W], last fitness step
        self.target_laplacian: torch.Tensor | None = None
        self.image: torch.Tensor | None = None
        self.size = (0, 0)

    def setup(self, image, size, generator) -> None:
        if image is None:
            raise ValueError("EVOS ranks the whole image each fitness step: unset crop_size")
        self.image = image
        self.size = tuple(size)
        self.target_laplacian = grey_laplacian(image)

    def is_fitness_step(self, context: StepContext) -> bool:
        if self.ranking.numel() == 0:
            return True
        return (context.step + 1) % fitness_interval(context.progress) == 1

    def draw(self, context: StepContext) -> PixelBatch:
        height, width = self.size
        pixels = height * width
        if self.is_fitness_step(context):
            rows, cols = window_pixels((0, 0, height, width))
            return PixelBatch(rows, cols, ids=None)
        ratio = scheduled_ratio(self.schedule, self.ratio, context.progress)
        mutation = self.mutation * self.ratio
        elite_count = max(1, int((ratio - mutation) * pixels))
        elite, rest = self.ranking[-elite_count:], self.ranking[:-elite_count]
        pick = torch.randperm(rest.numel(), generator=context.generator)[: int(mutation * pixels)]
        index = torch.sort(torch.cat([elite, rest[pick.to(rest.device)]])).values
        return PixelBatch(index // width, index % width, ids=index)

    def observe(self, batch, prediction, target, context) -> torch.Tensor | None:
        height, width = self.size
        fitness = batch.ids is None
        if fitness:
            full = prediction.T.reshape(-1, height, width)
            self.rank(full.detach(), target.T.reshape(-1, height, width), context)
            self.full_prediction = full.detach().clone()
            if self.laplacian_weight == 0:
                return None
            error = (grey_laplacian(full.clamp(0, 1)) - self.target_laplacian).square()
            return self.laplacian_weight * error.mean()
        if self.laplacian_weight == 0 or context.progress > LAPLACIAN_UNTIL:
            return None
        full = self.full_prediction.reshape(self.full_prediction.shape[0], -1)
        full = full.index_copy(1, batch.ids, prediction.T.to(full.dtype))
        error = grey_laplacian(full.reshape(-1, height, width).clamp(0, 1)) - self.target_laplacian
        return self.laplacian_weight * error.square().flatten()[batch.ids].mean()

    @torch.no_grad()
    def rank(self, prediction: torch.Tensor, target: torch.Tensor, context: StepContext) -> None:
        """Frequency-aware crossover: the elite last in ``ranking``, the rest before it by
        ascending squared error."""
        pixels = self.size[0] * self.size[1]
        ratio = scheduled_ratio(self.schedule, self.ratio, context.progress)
        mutation = self.mutation * self.ratio
        squared = (prediction - target).square().mean(0).flatten()  # [N]
        laplacian = (
            LAPLACIAN_WEIGHT
            * (grey_laplacian(prediction.clamp(0, 1)) - self.target_laplacian).square().flatten()
        )
        count = min(max(pixels - int((1 - ratio + mutation) * pixels), 1), pixels)
        by_error = torch.topk(squared, count).indices
        by_laplacian = torch.topk(laplacian, count).indices
        in_error = torch.zeros(pixels, dtype=torch.bool, device=squared.device)
        in_error[by_error] = True
        in_laplacian = torch.zeros_like(in_error)
        in_laplacian[by_laplacian] = True
        both = in_error & in_laplacian
        remaining = count - int(both.sum())
        only_error = by_error[~in_laplacian[by_error]]  # by descending error
        only_laplacian = by_laplacian[~in_error[by_laplacian]]
        share = float(squared.mean()) / (float(laplacian.mean()) + float(squared.mean()) + 1e-30)
        from_error = min(int(remaining * share), only_error.numel())
        elite = torch.cat(
            [
                both.nonzero().squeeze(1),
                only_error[:from_error],
                only_laplacian[: remaining - from_error],
            ]
        )
        is_elite = torch.zeros_like(in_error)
        is_elite[elite] = True
        rest = (~is_elite).nonzero().squeeze(1)
        rest = rest[torch.argsort(squared[rest], stable=True)]
        self.ranking = torch.cat([rest, elite])

    def expected_fraction(self) -> float:
        return self.ratio
