"""INT, nonparametric teaching of implicit neural representations (Zhang, Luo et al., ICML
2024), as its released code does it (github chen2hang/INT_NonparametricTeaching at commit
ea4386a, ``src/nmt.py``, ``src/sampler.py``, ``src/strategy.py``, ``src/scheduler.py``;
re-implemented here, no code copied).

At *refresh* steps the network is evaluated at every pixel without gradients and the pixels with
the largest absolute error (summed over channels) are selected, a share ``ratio`` of them (rising
in 10 steps from 0.2 with INT's image settings); the same pixels are trained on until the next
refresh. INT's ``incremental`` strategy refreshes every step for the first quarter of the run,
then every 10, 20, 30, 40 and 50 steps in five equal stages; ``dense`` refreshes every step. The
refresh pass is part of the step (its time counts).
"""

from __future__ import annotations

import torch

from models.sampling.base import (
    PixelBatch,
    PixelSampler,
    StepContext,
    check_fraction,
    check_schedule,
    scheduled_ratio,
    window_pixels,
)

STRATEGIES = ("incremental", "dense")


def refresh_interval(strategy: str, progress: float) -> int:
    """Steps between refreshes at ``progress`` (INT's ``incremental``: 1 for the first quarter,
    then 10, 20, 30, 40, 50)."""
    if strategy == "dense" or progress < 0.25:
        return 1
    stage = min(int((progress - 0.25) / 0.75 * 5), 4)
    return 10 * (stage + 1)


class INT(PixelSampler):
    """INT (see the module docstring).

    Args:
        ratio: share of the pixels per step at the start (INT's image setting: 0.2).
        schedule: ``step`` (INT's image setting: rising in 10 stages), ``constant``, ``linear``
            or ``cosine``.
        strategy: ``incremental`` (INT's image setting) or ``dense`` (refresh every step).
    """

    whole_image = True

    def __init__(
        self, ratio: float = 0.2, schedule: str = "step", strategy: str = "incremental"
    ) -> None:
        super().__init__()
        self.ratio = check_fraction("ratio", ratio)
        self.schedule = check_schedule(schedule)
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.strategy = strategy
        self.register_buffer("selected", torch.zeros(0, dtype=torch.int64))
        self.size = (0, 0)
        self.image: torch.Tensor | None = None

    def setup(self, image, size, generator) -> None:
        if image is None:
            raise ValueError("INT ranks the whole image at every refresh: unset crop_size")
        self.size = tuple(size)
        self.image = image

    def draw(self, context: StepContext) -> PixelBatch:
        height, width = self.size
        refresh = context.step % refresh_interval(self.strategy, context.progress) == 0
        if refresh or self.selected.numel() == 0:
            self.selected = self.select(context)
        index = self.selected
        return PixelBatch(index // width, index % width)

    @torch.no_grad()
    def select(self, context: StepContext) -> torch.Tensor:
        height, width = self.size
        rows, cols = window_pixels((0, 0, height, width))
        error = (context.predict(rows, cols) - self.target_at(rows, cols)).abs().sum(1)  # [N]
        count = int(scheduled_ratio(self.schedule, self.ratio, context.progress) * error.numel())
        if count >= error.numel():
            return torch.arange(error.numel(), device=error.device)
        return torch.topk(error, max(count, 1)).indices

    def target_at(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return self.image[:, rows, cols].T

    def expected_fraction(self) -> float:
        return self.ratio
