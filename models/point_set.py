"""The learnable point set of sparse training, and how it adapts under a budget.

Each point has a position (x, y) in pixels, a Gaussian width sigma and a *cell*: the side of the
square around it from which the point's sample position is drawn afresh every step, so that over
the steps the network is supervised everywhere, not only at N fixed places. The set has a fixed
``capacity`` (the budget); the first ``count`` slots are in use. A fixed capacity keeps every
tensor's shape constant, so checkpoints, optimiser state and distributed training never see a
parameter change size, while densification and pruning move rows in place.

Adaptation (every ``interval`` steps between ``start`` and ``end``) uses the network's squared
error at each point's samples, accumulated since the last adaptation:

- prune: the ``prune_fraction`` of points with the lowest error (where the network is already
  right), only among points in regions that splits made denser than the initial placement, so
  every part of the image keeps at least its initial density of samples;
- grow: the points with the highest error split in two along a random axis, each half with half
  the cell area and sigma / sqrt(2), until the budget is full (at most ``grow_fraction`` of the
  set per step); a cell narrower than 1.4 pixels is not split (its samples already land on one
  or two pixels).

After each adaptation every point's cell is its mean distance to its 4 nearest neighbours, so the
cells tile the image again.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from nuir.samplers import local_spacing

MIN_SIGMA = 0.3  # pixels: a narrower Gaussian falls between pixel centres
MIN_SPLIT_CELL = 1.4  # pixels: a split halves the cell area; below ~1 px samples repeat a pixel
MAX_PRUNE_CELL = 0.9  # of the initial spacing: only points in regions denser than at the start


@dataclass(frozen=True)
class AdaptSchedule:
    """When and how much the point set adapts. ``interval = 0`` turns adaptation off."""

    interval: int = 0
    start: int = 0
    end: int | None = None
    grow_fraction: float = 0.1
    prune_fraction: float = 0.02

    def check(self, initial: int, budget: int) -> None:
        """Raise a ValueError naming the option of an impossible schedule."""
        if budget < initial:
            raise ValueError(
                f"max_points ({budget}) must be >= n_points ({initial}): the budget is the most "
                "points the set may hold"
            )
        if isinstance(self.interval, bool) or not isinstance(self.interval, int):
            raise ValueError(f"adapt_interval must be an int, got {self.interval!r}")
        if self.interval < 0:
            raise ValueError(f"adapt_interval must be >= 0 (0: no adaptation), got {self.interval}")
        if budget > initial and self.interval == 0:
            raise ValueError(
                f"max_points ({budget}) > n_points ({initial}) needs adapt_interval > 0 to grow"
            )
        if not isinstance(self.start, int) or self.start < 0:
            raise ValueError(f"adapt_start must be an int >= 0, got {self.start!r}")
        if self.end is not None and (not isinstance(self.end, int) or self.end <= self.start):
            raise ValueError(
                f"adapt_end ({self.end!r}) must be an int after adapt_start ({self.start}), "
                "or None (adapt until the end)"
            )
        if not 0 < self.grow_fraction <= 1:
            raise ValueError(f"grow_fraction must be in (0, 1], got {self.grow_fraction!r}")
        if not 0 <= self.prune_fraction < 1:
            raise ValueError(f"prune_fraction must be in [0, 1), got {self.prune_fraction!r}")

    def due(self, step: int) -> bool:
        """Whether the set adapts after optimiser step ``step`` (1-based count of steps done)."""
        if self.interval == 0 or step <= self.start:
            return False
        if self.end is not None and step > self.end:
            return False
        return (step - self.start) % self.interval == 0


class PointSet(nn.Module):
    """Up to ``capacity`` points; the first :attr:`count` are in use.

    Args:
        capacity: the budget: most points the set may hold.
        learn_positions: train the positions (else they stay where placed or adapted).
        learn_sigma: train one sigma per point.
    """

    def __init__(self, capacity: int, *, learn_positions: bool = True, learn_sigma: bool = True):
        super().__init__()
        self.positions = nn.Parameter(torch.zeros(capacity, 2), requires_grad=learn_positions)
        self.log_sigma = nn.Parameter(torch.zeros(capacity), requires_grad=learn_sigma)
        self.register_buffer("cell", torch.zeros(capacity))  # [M] sample square side, pixels
        self.register_buffer("log_sigma_max", torch.zeros(()))
        self.register_buffer("active", torch.zeros((), dtype=torch.int64))
        # The network's squared error at each point's samples since the last adaptation.
        self.register_buffer("error", torch.zeros(capacity, dtype=torch.float64))
        self.register_buffer("visits", torch.zeros(capacity, dtype=torch.float64))
        self.count = 0  # host copy of `active`: no device sync to read it

    @property
    def capacity(self) -> int:
        return self.positions.shape[0]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.count = int(self.active)

    # --- the points in use -----------------------------------------------------------------

    def sigma(self) -> torch.Tensor:
        """Sigma in pixels of the points in use: [n]."""
        return self.log_sigma[: self.count].exp()

    def xy(self) -> torch.Tensor:
        """Positions of the points in use: [n, 2] (x, y) in pixels."""
        return self.positions[: self.count]

    @torch.no_grad()
    def place(self, positions: torch.Tensor, sigma: torch.Tensor) -> None:
        """Put n <= capacity points in the first slots; cells from their spacing."""
        count = positions.shape[0]
        if not 1 <= count <= self.capacity:
            raise ValueError(f"cannot place {count} points in a set of capacity {self.capacity}")
        self.positions.zero_()
        self.log_sigma.zero_()
        self.positions[:count] = positions
        self.log_sigma[:count] = sigma.clamp_min(MIN_SIGMA).log()
        self.log_sigma_max.fill_(math.log(4.0 * float(sigma.max())))
        self._set_count(count)
        self._refresh_cells()

    def _set_count(self, count: int) -> None:
        self.count = int(count)
        self.active.fill_(self.count)
        self.error.zero_()
        self.visits.zero_()

    @torch.no_grad()
    def _refresh_cells(self) -> None:
        fallback = max(float(self.cell[: self.count].max()), 1.0) if self.count else 1.0
        spacing = local_spacing(self.positions[: self.count].detach(), fallback=fallback)  # [n]
        self.cell.zero_()
        self.cell[: self.count] = spacing

    def samples(
        self, index: torch.Tensor | None, generator: torch.Generator, jitter: float
    ) -> torch.Tensor:
        """Fresh sample positions, one per point: each uniform in ``jitter`` x its cell around
        it. Differentiable with respect to the positions: [n, 2] (or [len(index), 2])."""
        centres = self.xy() if index is None else self.positions[index]
        cells = self.cell[: self.count] if index is None else self.cell[index]
        offset = torch.rand(centres.shape, generator=generator, dtype=centres.dtype)
        offset = (offset.to(centres.device) - 0.5) * (jitter * cells[:, None])  # [n, 2]
        return centres + offset

    @torch.no_grad()
    def record_error(self, index: torch.Tensor, squared_error: torch.Tensor) -> None:
        """Add each sample's squared error [n] to its point's tally (index [n] into the set)."""
        self.error.index_add_(0, index, squared_error.double())
        self.visits.index_add_(0, index, torch.ones_like(squared_error, dtype=torch.float64))

    @torch.no_grad()
    def clamp_(self, size: tuple[int, int]) -> None:
        """Positions back on the raster, sigma back in [MIN_SIGMA, its upper bound]."""
        height, width = size
        self.positions[:, 0].clamp_(-0.5, width - 0.5)
        self.positions[:, 1].clamp_(-0.5, height - 0.5)
        self.log_sigma.clamp_(math.log(MIN_SIGMA), float(self.log_sigma_max))

    # --- adaptation ------------------------------------------------------------------------

    @torch.no_grad()
    def adapt(
        self,
        schedule: AdaptSchedule,
        initial_spacing: float,
        generator: torch.Generator,
        optimizer: torch.optim.Optimizer | None = None,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[int, int]:
        """Prune and grow once (see the module's docstring); returns (pruned, grown).

        ``reduce`` sums the error tallies over processes (distributed training) so every process
        takes the same decision; ``optimizer``'s Adam moments follow their rows, new rows start
        at zero.
        """
        count = self.count
        error, visits = self.error[:count].clone(), self.visits[:count].clone()
        if reduce is not None:
            error, visits = reduce(error), reduce(visits)
        score = error / visits.clamp_min(1.0)  # mean squared error near each point
        visited = visits > 0  # others (outside every crop since the last time) stay as they are

        cells = self.cell[:count]
        # Only where earlier splits made the set denser than it started: flat regions keep the
        # initial density, so every part of the image keeps being sampled.
        prunable = (cells < MAX_PRUNE_CELL * initial_spacing) & visited
        n_prune = min(int(schedule.prune_fraction * count), int(prunable.sum()), count - 1)
        order = torch.argsort(torch.where(prunable, score, math.inf).cpu(), stable=True)
        pruned = order[:n_prune]
        keep = torch.ones(count, dtype=torch.bool)
        keep[pruned] = False
        kept = keep.nonzero().squeeze(1)  # [n_kept], in slot order
        room = self.capacity - kept.numel()
        n_grow = min(room, math.ceil(schedule.grow_fraction * count))
        # A cell below MIN_SPLIT_CELL pixels already samples a single pixel: no use splitting it.
        splittable = visited & (cells >= MIN_SPLIT_CELL)
        n_grow = min(n_grow, int(splittable[kept].sum()))
        growth = torch.where(splittable, score, -math.inf)[kept]
        parents = torch.argsort(growth.cpu(), descending=True, stable=True)[:n_grow]  # in kept

        rows = torch.cat([kept, kept[parents]])  # new slot i takes old row rows[i]
        self._permute(rows, optimizer, fresh_from=kept.numel())
        self._split(parents, kept.numel(), generator)
        self._set_count(rows.numel())
        self._refresh_cells()
        return int(n_prune), int(parents.numel())

    def _permute(self, rows: torch.Tensor, optimizer, fresh_from: int) -> None:
        """Slot i <- old slot rows[i]; slots from ``fresh_from`` get zero optimiser moments."""
        rows = rows.to(self.positions.device)
        used = rows.numel()
        for tensor in (self.positions, self.log_sigma, self.cell):
            moved = tensor[rows].clone()
            tensor.zero_()
            tensor[:used] = moved
        if optimizer is None:
            return
        for parameter in (self.positions, self.log_sigma):
            state = optimizer.state.get(parameter, {})
            for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                if key in state:
                    moved = state[key][rows].clone()
                    state[key].zero_()
                    state[key][:fresh_from] = moved[:fresh_from]

    def _split(self, parents: torch.Tensor, first_child: int, generator: torch.Generator) -> None:
        """Parent slot p and child slot first_child + k (its copy) become the two halves of
        p's cell along a random axis."""
        if parents.numel() == 0:
            return
        parents = parents.to(self.positions.device)
        children = torch.arange(first_child, first_child + parents.numel(), device=parents.device)
        axis = torch.randint(0, 2, (parents.numel(),), generator=generator).to(parents.device)
        shift = torch.zeros(parents.numel(), 2, device=parents.device)
        shift[torch.arange(parents.numel()), axis] = self.cell[parents] / 4
        self.positions[parents] -= shift
        self.positions[children] += shift
        halved = math.log(math.sqrt(2.0))
        for slots in (parents, children):
            self.log_sigma[slots] = (self.log_sigma[slots] - halved).clamp_min(math.log(MIN_SIGMA))
