"""The interface every pixel sampler implements: which pixels the network sees this step, and with
what weight.

A sampler is an ``nn.Module`` held by :class:`models.system.ImplicitImageSystem` (its state goes
into checkpoints, its parameters, if any, into the optimiser). Each training step the system

1. asks :meth:`PixelSampler.draw` for a :class:`PixelBatch` (pixel rows and columns in the
   step's window, optional per-sample loss weights),
2. evaluates the network at those pixels' centres and takes the weighted loss against the
   pixels,
3. shows the prediction to :meth:`PixelSampler.observe` (which may add a loss term of its own),
4. after the backward pass, hands the loss gradient at the coordinates to
   :meth:`PixelSampler.after_backward` (only for samplers that ask for it), and
5. after the optimiser step calls :meth:`PixelSampler.after_step` (adaptation).

Schedules read :attr:`StepContext.progress`, the fraction of the run done (of ``max_steps``, or
of a wall-time budget), so a method's schedule fits any run length.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

Window = tuple[int, int, int, int]  # (row0, col0, height, width)


@dataclass
class PixelBatch:
    """The pixels of one step.

    rows, cols: [n] int64 image coordinates (absolute, inside the step's window).
    weights: [n] per-sample loss weights (None: all 1).
    ids: [n] the sampler's own ids of the samples (its points, its slots), for its bookkeeping.
    """

    rows: torch.Tensor
    cols: torch.Tensor
    weights: torch.Tensor | None = None
    ids: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.rows.numel())


@dataclass
class StepContext:
    """What a sampler may use to draw a step's batch.

    step: optimiser steps done before this one. progress: fraction of the run done, in [0, 1].
    window: the step's crop (the whole image without crops). generator: a CPU generator seeded
    by (seed, step, process rank). predict: the network without gradients at pixel centres,
    (rows [n], cols [n]) -> [n, C] (e.g. a pass over every pixel to rank them).
    """

    step: int
    progress: float
    window: Window
    generator: torch.Generator
    predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def window_pixels(window: Window, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and columns [h * w] of every pixel of a window, row-major."""
    row0, col0, height, width = window
    rows = torch.arange(row0, row0 + height, device=device)
    cols = torch.arange(col0, col0 + width, device=device)
    return rows.repeat_interleave(width), cols.repeat(height)


class PixelSampler(nn.Module):
    """Base class: override :meth:`draw`; the other hooks do nothing by default."""

    #: True for methods that rank or weigh the whole image (they refuse ``crop_size``).
    whole_image: bool = False
    #: True for methods that move their samples along the loss gradient at the coordinates.
    wants_coordinate_grad: bool = False

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # A sampler's state (rankings, sample positions) may have any size: take the saved one.
        for name, buffer in self._buffers.items():
            saved = state_dict.get(prefix + name)
            if buffer is not None and saved is not None and saved.shape != buffer.shape:
                self._buffers[name] = torch.empty_like(saved, device=buffer.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def setup(self, image: torch.Tensor | None, size: tuple[int, int], generator) -> None:
        """Called once before training, with the target [C, H, W] (None for images read by
        crops) and its (H, W); place points, cache what the method needs."""

    def draw(self, context: StepContext) -> PixelBatch:
        raise NotImplementedError

    def observe(
        self,
        batch: PixelBatch,
        prediction: torch.Tensor,
        target: torch.Tensor,
        context: StepContext,
    ) -> torch.Tensor | None:
        """The network's prediction [n, C] (with gradients) and the pixels [n, C] of the step's
        batch; returns an extra loss term or None."""
        return None

    def after_backward(self, batch: PixelBatch, coordinate_grad: torch.Tensor) -> None:
        """The loss gradient at the batch's network coordinates [n, 2] (if asked for)."""

    def after_step(self, step: int, progress: float, optimizer, reduce=None) -> dict[str, float]:
        """After optimiser step ``step`` (1-based count of steps done; ``progress``: the fraction
        of the run done): adapt. ``reduce`` sums a tensor over processes. Returns figures to
        log."""
        return {}

    def parameter_groups(self, learning_rates: dict[str, float]) -> list[dict]:
        """Optimiser parameter groups of the sampler's own learnable parameters."""
        return []

    def expected_fraction(self) -> float | None:
        """Roughly the fraction of the pixels a step sees (for the summary); None if unknown."""
        return None


def check_fraction(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return float(value)


def check_positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


SCHEDULES = ("constant", "step", "linear", "cosine")


def scheduled_ratio(schedule: str, initial: float, progress: float) -> float:
    """The share of the pixels at ``progress`` (fraction of the run done) for a ratio that
    starts at ``initial`` and, except ``constant``, rises to 1 over the run: ``step`` in 10
    equal stages (INT's and EVOS's ``step``), ``linear``, ``cosine``."""
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "constant":
        return initial
    if schedule == "step":
        return min(initial + int(progress * 10) * (1.0 - initial) / 10, 1.0)
    if schedule == "linear":
        return initial + progress * (1.0 - initial)
    if schedule == "cosine":
        return 1.0 - 0.5 * (1.0 - initial) * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


def check_schedule(schedule: str) -> str:
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    return schedule
