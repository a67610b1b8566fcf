"""The two baselines every method is measured against: every pixel, and uniformly random pixels."""

from __future__ import annotations

import torch

from models.sampling.base import (
    PixelBatch,
    PixelSampler,
    StepContext,
    check_fraction,
    check_positive_int,
    check_schedule,
    scheduled_ratio,
    window_pixels,
)


class AllPixels(PixelSampler):
    """Every pixel of the step's window, every step (full-batch training)."""

    def draw(self, context: StepContext) -> PixelBatch:
        rows, cols = window_pixels(context.window)
        return PixelBatch(rows, cols)

    def expected_fraction(self) -> float:
        return 1.0


class UniformRandom(PixelSampler):
    """``count`` pixels (or the share ``ratio`` of the window's pixels) drawn uniformly without
    replacement each step; ``schedule`` lets the share grow over the run (see
    :func:`models.sampling.base.scheduled_ratio`).

    Args:
        count: pixels per step (give count or ratio, not both).
        ratio: share of the window's pixels per step.
        schedule: ``constant`` (default), ``step``, ``linear`` or ``cosine``.
    """

    def __init__(
        self, count: int | None = None, ratio: float | None = None, schedule: str = "constant"
    ) -> None:
        super().__init__()
        if (count is None) == (ratio is None):
            raise ValueError("give exactly one of count and ratio")
        self.count = None if count is None else check_positive_int("count", count)
        self.ratio = None if ratio is None else check_fraction("ratio", ratio)
        self.schedule = check_schedule(schedule)

    def batch_size(self, pixels: int, progress: float) -> int:
        if self.count is not None:
            return min(self.count, pixels)
        return max(1, int(scheduled_ratio(self.schedule, self.ratio, progress) * pixels))

    def draw(self, context: StepContext) -> PixelBatch:
        row0, col0, height, width = context.window
        count = self.batch_size(height * width, context.progress)
        index = torch.randperm(height * width, generator=context.generator)[:count]
        return PixelBatch(row0 + index // width, col0 + index % width)

    def expected_fraction(self) -> float | None:
        return self.ratio
