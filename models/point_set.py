"""The learnable point set of sparse training, and how it adapts under a budget.

Each point has a *stratum*: an axis-aligned rectangle of the image from which the point draws a
fresh sample position every step. The strata tile the image exactly (on the initial grid they are
the grid's cells), so over the steps the network is supervised everywhere, one stratified sample
per point per step. Each point also has a learnable position inside its stratum and a Gaussian
width sigma: the Gaussian the reconstruction places there. The set has a fixed ``capacity`` (the
budget); the first ``count`` slots are in use. A fixed capacity keeps every tensor's shape
constant, so checkpoints, optimiser state and distributed training never see a parameter change
size, while densification and pruning move rows in place.

Adaptation (``times`` times between the fractions ``start`` and ``end`` of the run) scores each
point by its share of the image's squared error: the network's mean squared error at the point's
samples since the last adaptation, times the area of its stratum:

- prune: the ``prune_fraction`` of points with the lowest share (where the network is already
  right), among points whose stratum is smaller than at the start, each merged into a neighbour
  whose stratum shares a whole side with its own (undoing a split), so the strata still tile;
- grow: the points with the largest share split their stratum in two across its longer side,
  each half with its own point (sigma / sqrt(2)), until the budget is full (at most
  ``grow_fraction`` of the set per step); a stratum narrower than 1.4 pixels is not split (its
  samples already land on one or two pixels).

Each sample's loss is weighted by its stratum's area, so the loss stays an estimate of the whole
image's error however unevenly adaptation spreads the points.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from nuir.samplers import local_spacing

MIN_SIGMA = 0.3  # pixels: a narrower Gaussian falls between pixel centres
MIN_SPLIT_SIDE = 1.4  # pixels: strata with a longer side below this are not split
MAX_PRUNE_AREA = 0.8  # of the initial area: only points in regions denser than at the start


@dataclass(frozen=True)
class Adaptation:
    """When and how much the point set adapts: ``times`` adaptations at evenly spaced fractions
    of the run from ``start`` to ``end`` (0 times: never), each splitting at most
    ``grow_fraction`` and merging at most ``prune_fraction`` of the points. Fractions of the run
    (of ``max_steps``, or of a wall-time budget) make the same schedule fit any run length."""

    times: int = 0
    start: float = 0.1
    end: float = 0.6
    grow_fraction: float = 0.1
    prune_fraction: float = 0.02

    def check(self, initial: int, budget: int) -> None:
        """Raise a ValueError naming the option of an impossible schedule."""
        if budget < initial:
            raise ValueError(
                f"max_points ({budget}) must be >= n_points ({initial}): the budget is the most "
                "points the set may hold"
            )
        if isinstance(self.times, bool) or not isinstance(self.times, int) or self.times < 0:
            raise ValueError(f"adaptation.times must be an int >= 0, got {self.times!r}")
        if budget > initial and self.times == 0:
            raise ValueError(
                f"max_points ({budget}) > n_points ({initial}) needs adaptation.times > 0 to grow"
            )
        if not 0 <= self.start <= self.end <= 1:
            raise ValueError(
                "adaptation.start and adaptation.end must be fractions of the run with "
                f"0 <= start <= end <= 1, got start {self.start!r}, end {self.end!r}"
            )
        if not 0 < self.grow_fraction <= 1:
            raise ValueError(
                f"adaptation.grow_fraction must be in (0, 1], got {self.grow_fraction!r}"
            )
        if not 0 <= self.prune_fraction < 1:
            raise ValueError(
                f"adaptation.prune_fraction must be in [0, 1), got {self.prune_fraction!r}"
            )

    def at(self, k: int) -> float:
        """The fraction of the run at which adaptation ``k`` (0-based) takes place."""
        if self.times <= 1:
            return self.start
        return self.start + k * (self.end - self.start) / (self.times - 1)

    def due(self, done: int, progress: float) -> bool:
        """Whether the next adaptation is due, after ``done`` of them, at ``progress``."""
        return done < self.times and progress >= self.at(done) - 1e-9


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
        # Stratum of each point: (centre x, centre y, width, height) in pixels.
        self.register_buffer("strata", torch.zeros(capacity, 4))
        self.register_buffer("log_sigma_max", torch.zeros(()))
        self.register_buffer("initial_area", torch.zeros(()))
        self.register_buffer("active", torch.zeros((), dtype=torch.int64))
        # The network's squared error at each point's samples since the last adaptation.
        self.register_buffer("error", torch.zeros(capacity, dtype=torch.float64))
        self.register_buffer("visits", torch.zeros(capacity, dtype=torch.float64))
        self.register_buffer("adaptations", torch.zeros((), dtype=torch.int64))  # done so far
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

    def sides(self) -> torch.Tensor:
        """Width and height of the strata of the points in use: [n, 2] pixels."""
        return self.strata[: self.count, 2:]

    @torch.no_grad()
    def place(
        self, positions: torch.Tensor, sigma: torch.Tensor, strata: torch.Tensor | None = None
    ) -> None:
        """Put n <= capacity points in the first slots.

        Args:
            positions: [n, 2]; sigma: [n].
            strata: [n, 4] (centre x, centre y, width, height) tiling the image (a grid's cells);
                default: a square around each point, as wide as its spacing to its neighbours.
        """
        count = positions.shape[0]
        if not 1 <= count <= self.capacity:
            raise ValueError(f"cannot place {count} points in a set of capacity {self.capacity}")
        if strata is None:
            side = local_spacing(positions.detach(), 2, fallback=1.0)[:, None]  # [n, 1]
            strata = torch.cat([positions, side, side], dim=1)
        for tensor in (self.positions, self.log_sigma, self.strata):
            tensor.zero_()
        self.positions[:count] = positions
        self.log_sigma[:count] = sigma.clamp_min(MIN_SIGMA).log()
        self.strata[:count] = strata.to(self.strata)
        self.log_sigma_max.fill_(math.log(4.0 * float(sigma.max())))
        self.initial_area.fill_(float(strata[:, 2:].prod(1).mean()))
        self._set_count(count)

    def _set_count(self, count: int) -> None:
        self.count = int(count)
        self.active.fill_(self.count)
        self.error.zero_()
        self.visits.zero_()

    def samples(
        self, index: torch.Tensor | None, generator: torch.Generator, jitter: float
    ) -> torch.Tensor:
        """Fresh sample positions, one per point, each uniform in ``jitter`` x its stratum
        (around the stratum's centre): [n, 2] (or [len(index), 2])."""
        strata = self.strata[: self.count] if index is None else self.strata[index]
        offset = torch.rand(strata.shape[0], 2, generator=generator, dtype=strata.dtype)
        return strata[:, :2] + (offset.to(strata.device) - 0.5) * (jitter * strata[:, 2:])

    @torch.no_grad()
    def record_error(self, index: torch.Tensor, squared_error: torch.Tensor) -> None:
        """Add each sample's squared error [n] to its point's tally (index [n] into the set)."""
        self.error.index_add_(0, index, squared_error.double())
        self.visits.index_add_(0, index, torch.ones_like(squared_error, dtype=torch.float64))

    @torch.no_grad()
    def clamp_(self) -> None:
        """Positions back inside their strata, sigma back in [MIN_SIGMA, its upper bound]."""
        low = self.strata[:, :2] - self.strata[:, 2:] / 2
        self.positions.copy_(
            torch.minimum(torch.maximum(self.positions, low), low + self.strata[:, 2:])
        )
        self.log_sigma.clamp_(math.log(MIN_SIGMA), float(self.log_sigma_max))

    # --- adaptation ------------------------------------------------------------------------

    @torch.no_grad()
    def adapt(
        self,
        schedule: Adaptation,
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
            error, visits = (
                reduce(error.to(self.error.device)),
                reduce(visits.to(self.error.device)),
            )
        error, visits = error.cpu(), visits.cpu()
        strata = self.strata[:count].cpu()
        area = strata[:, 2:].prod(1).double()
        # Each point's share of the image's squared error: its samples' mean squared error times
        # the area they stand for. Splitting the largest shares refines where it pays most.
        score = error / visits.clamp_min(1.0) * area
        visited = visits > 0  # others (outside every crop since the last time) stay as they are

        keep = torch.ones(count, dtype=torch.bool)
        wanted = min(int(schedule.prune_fraction * count), count - 1)
        prunable = visited & (area < MAX_PRUNE_AREA * float(self.initial_area))
        merged = self._merge(torch.where(prunable, score, math.inf), wanted, keep, strata)
        kept = keep.nonzero().squeeze(1)  # [n_kept], in slot order
        room = self.capacity - kept.numel()
        n_grow = min(room, math.ceil(schedule.grow_fraction * count))
        # A stratum narrower than MIN_SPLIT_SIDE already samples one or two pixels.
        splittable = visited & (strata[:, 2:].amax(1) >= MIN_SPLIT_SIDE)
        n_grow = min(n_grow, int(splittable[kept].sum()))
        growth = torch.where(splittable, score, -math.inf)[kept]
        parents = torch.argsort(growth, descending=True, stable=True)[:n_grow]  # rows of kept

        self.strata[:count] = strata.to(self.strata)  # merged strata
        rows = torch.cat([kept, kept[parents]])  # new slot i takes old row rows[i]
        self._permute(rows, optimizer, fresh_from=kept.numel())
        self._split(parents, kept.numel(), generator)
        self._set_count(rows.numel())
        self.clamp_()
        self.adaptations += 1
        return merged, int(parents.numel())

    @staticmethod
    def _merge(score: torch.Tensor, wanted: int, keep: torch.Tensor, strata: torch.Tensor) -> int:
        """Merge up to ``wanted`` points, lowest finite score first, each into a kept neighbour
        whose stratum shares a whole side with its own (the union is a rectangle); updates
        ``keep`` and ``strata`` [n, 4] in place. Returns how many were merged."""
        if wanted <= 0 or not torch.isfinite(score).any():
            return 0
        from scipy.spatial import cKDTree

        centres = strata[:, :2].double().numpy()
        _, neighbours = cKDTree(centres).query(centres, k=min(9, len(centres)))
        merged = 0
        for i in torch.argsort(score, stable=True).tolist():
            if merged == wanted or not math.isfinite(float(score[i])):
                break
            if not keep[i]:
                continue
            for j in neighbours[i][1:].tolist():
                if keep[j] and j != i and _join(strata, i, j):
                    keep[i] = False
                    merged += 1
                    break
        return merged

    def _permute(self, rows: torch.Tensor, optimizer, fresh_from: int) -> None:
        """Slot i <- old slot rows[i]; slots from ``fresh_from`` get zero optimiser moments."""
        rows = rows.to(self.positions.device)
        used = rows.numel()
        for tensor in (self.positions, self.log_sigma, self.strata):
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
        """Parent slot p and child slot first_child + k (its copy) take the two halves of p's
        stratum across its longer side (a random one when square), each point at its half's
        centre."""
        if parents.numel() == 0:
            return
        parents = parents.to(self.positions.device)
        children = torch.arange(first_child, first_child + parents.numel(), device=parents.device)
        sides = self.strata[parents, 2:]  # [k, 2]
        coin = torch.randint(0, 2, (parents.numel(),), generator=generator).to(parents.device)
        axis = torch.where(sides[:, 0] == sides[:, 1], coin, (sides[:, 1] > sides[:, 0]).long())
        rows = torch.arange(parents.numel(), device=parents.device)
        shift = torch.zeros_like(sides)
        shift[rows, axis] = sides[rows, axis] / 4
        halved = sides.clone()
        halved[rows, axis] /= 2
        centres = self.strata[parents, :2]
        for slots, sign in ((parents, -1.0), (children, 1.0)):
            self.strata[slots, :2] = centres + sign * shift
            self.strata[slots, 2:] = halved
            self.positions[slots] = centres + sign * shift
            shrunk = self.log_sigma[slots] - math.log(math.sqrt(2.0))
            self.log_sigma[slots] = shrunk.clamp_min(math.log(MIN_SIGMA))


def _join(strata: torch.Tensor, i: int, j: int, tolerance: float = 1e-4) -> bool:
    """If strata i and j share a whole side, make j their union and return True."""
    (xi, yi, wi, hi), (xj, yj, wj, hj) = strata[i].tolist(), strata[j].tolist()
    same_rows = abs(yi - yj) < tolerance and abs(hi - hj) < tolerance
    same_columns = abs(xi - xj) < tolerance and abs(wi - wj) < tolerance
    if same_rows and abs(abs(xi - xj) - (wi + wj) / 2) < tolerance:
        strata[j] = torch.tensor([(xi * wi + xj * wj) / (wi + wj), yj, wi + wj, hj])
        return True
    if same_columns and abs(abs(yi - yj) - (hi + hj) / 2) < tolerance:
        strata[j] = torch.tensor([xj, (yi * hi + yj * hj) / (hi + hj), wj, hi + hj])
        return True
    return False
