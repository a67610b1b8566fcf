"""The adaptive point set: strata, per-step samples, densification and pruning, schedules."""

from __future__ import annotations

import pytest
import torch

from models.point_set import MIN_SIGMA, Adaptation, PointSet
from nuir.samplers import grid_strata, uniform_grid

SIZE = (20, 20)


def placed(capacity: int = 200, n: int = 100, size=SIZE) -> PointSet:
    points = PointSet(capacity)
    points.place(uniform_grid(size, n), torch.full((n,), 1.0), grid_strata(size, n))
    return points


def coverage(points: PointSet, size=SIZE) -> torch.Tensor:
    """How many strata cover each pixel centre: [H, W] (1 everywhere when they tile)."""
    height, width = size
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    strata = points.strata[: points.count]
    low, high = strata[:, :2] - strata[:, 2:] / 2, strata[:, :2] + strata[:, 2:] / 2
    inside = (
        (xs[..., None] >= low[:, 0]) & (xs[..., None] < high[:, 0])
        & (ys[..., None] >= low[:, 1]) & (ys[..., None] < high[:, 1])
    )  # fmt: skip
    return inside.sum(-1)


def test_place_fills_the_first_slots_with_strata_that_tile() -> None:
    points = placed()
    assert points.count == 100 and int(points.active) == 100
    assert points.xy().shape == (100, 2) and points.sigma().shape == (100,)
    assert torch.equal(points.sides(), torch.full((100, 2), 2.0))  # 10 x 10 cells of 2 pixels
    assert (coverage(points) == 1).all()
    assert float(points.initial_area) == 4.0
    assert (points.strata[100:] == 0).all() and (points.positions[100:] == 0).all()
    with pytest.raises(ValueError, match="capacity"):
        PointSet(10).place(torch.zeros(11, 2), torch.ones(11))
    squares = PointSet(10)
    squares.place(uniform_grid(SIZE, 4), torch.ones(4))  # no strata given: spacing squares
    torch.testing.assert_close(squares.sides(), torch.full((4, 2), 10.0))


def test_samples_spread_over_the_strata() -> None:
    points = placed()
    generator = torch.Generator().manual_seed(0)
    samples = points.samples(None, generator, jitter=1.0)  # [100, 2]
    offset = samples - points.strata[:100, :2]
    assert (offset.abs() <= 1.0).all()  # half of the 2-pixel cell
    assert offset.abs().max() > 0.8  # and really spread over it
    assert torch.equal(points.samples(None, generator, jitter=0.0), points.strata[:100, :2])
    assert points.samples(torch.tensor([3, 7]), generator, 1.0).shape == (2, 2)


def tally_errors(points: PointSet, hot: slice) -> None:
    """Every point visited once, the points in ``hot`` with a large error."""
    index = torch.arange(points.count)
    error = torch.full((points.count,), 1e-4)
    error[hot] = 1.0
    points.record_error(index, error)


def test_adapt_splits_where_the_error_is_high_and_merges_where_it_is_low() -> None:
    points = placed(capacity=130)
    tally_errors(points, slice(0, 10))  # the first grid row
    schedule = Adaptation(times=1, grow_fraction=0.2, prune_fraction=0.05)
    pruned, grown = points.adapt(schedule, torch.Generator().manual_seed(0))
    # Nothing is denser than the initial grid yet, so nothing is pruned; the 10 hot points split
    # (each stratum into two halves), and 10 more.
    assert (pruned, grown) == (0, 20) and points.count == 120
    assert int((points.xy()[:, 1] < 2.0).sum()) == 20  # the first row now holds 20 points
    assert (coverage(points) == 1).all()  # the strata still tile the image
    assert points.error.abs().sum() == 0 and points.visits.sum() == 0  # tallies restart
    assert (points.sigma() >= MIN_SIGMA - 1e-6).all()
    # Now the split points are right and the rest is not: the merged ones come from the split
    # (denser) strata only, and the strata still tile the image.
    dense = points.sides().prod(1) < 4.0
    points.record_error(torch.arange(120), torch.where(dense, 1e-6, 1.0))
    pruned, grown = points.adapt(schedule, torch.Generator().manual_seed(1))
    assert pruned == 6 and grown == 16 and points.count == 130  # 5 % of 120; then to the budget
    assert (coverage(points) == 1).all()
    assert float(points.sides().prod(1).sum()) == pytest.approx(400.0)


def test_strata_narrower_than_one_and_a_half_pixels_do_not_split() -> None:
    points = placed(capacity=800, n=400)  # cells of 1 pixel
    tally_errors(points, slice(0, 400))
    schedule = Adaptation(times=1, grow_fraction=0.5)
    assert points.adapt(schedule, torch.Generator().manual_seed(0)) == (0, 0)


def test_adapt_never_exceeds_the_budget_nor_empties_the_set() -> None:
    points = placed(capacity=110)
    schedule = Adaptation(times=1, grow_fraction=1.0, prune_fraction=0.0)
    for seed in range(5):
        tally_errors(points, slice(0, points.count))
        points.adapt(schedule, torch.Generator().manual_seed(seed))
        assert points.count <= 110
    assert points.count == 110 and (coverage(points) == 1).all()
    small = placed(capacity=8, n=4, size=(8, 8))
    harsh = Adaptation(times=1, grow_fraction=0.5, prune_fraction=0.99)
    for seed in range(6):
        small.record_error(torch.arange(small.count), torch.rand(small.count))
        small.adapt(harsh, torch.Generator().manual_seed(seed))
        assert 1 <= small.count <= 8
        assert (coverage(small, (8, 8)) == 1).all()


def test_unvisited_points_are_neither_pruned_nor_split() -> None:
    points = placed()
    points.record_error(torch.arange(50), torch.rand(50))  # only the first half seen
    untouched = points.strata[50:100].clone()
    schedule = Adaptation(times=1, grow_fraction=0.1, prune_fraction=0.1)
    points.adapt(schedule, torch.Generator().manual_seed(0))
    kept = points.strata[: points.count]
    for row in untouched:  # every unvisited stratum is still there, unchanged
        assert (kept - row).abs().sum(1).min() == 0


def test_adam_moments_follow_their_rows_and_new_rows_start_at_zero() -> None:
    points = placed(capacity=120)
    optimizer = torch.optim.Adam([points.positions, points.log_sigma], lr=0.1)
    (points.xy().square().sum() + points.sigma().sum()).backward()
    optimizer.step()
    moments = optimizer.state[points.positions]["exp_avg"][:100].clone()
    tally_errors(points, slice(90, 100))
    schedule = Adaptation(times=1, grow_fraction=0.1, prune_fraction=0.0)
    _, grown = points.adapt(schedule, torch.Generator().manual_seed(0), optimizer)
    assert grown == 10
    state = optimizer.state[points.positions]
    assert torch.equal(state["exp_avg"][:100], moments)  # nothing pruned: rows in place
    assert (state["exp_avg"][100:] == 0).all() and (state["exp_avg_sq"][100:] == 0).all()
    assert state["exp_avg"].shape == (120, 2)  # shapes never change


def test_positions_stay_in_their_strata() -> None:
    points = placed()
    with torch.no_grad():
        points.positions[:100] += torch.randn(100, 2) * 5
    points.clamp_()
    low = points.strata[:100, :2] - points.strata[:100, 2:] / 2
    high = low + points.strata[:100, 2:]
    assert ((points.xy() >= low) & (points.xy() <= high)).all()


def test_state_dict_round_trip_restores_the_count() -> None:
    points = placed(capacity=150)
    tally_errors(points, slice(0, 20))
    points.adapt(Adaptation(times=1), torch.Generator().manual_seed(0))
    fresh = PointSet(150)
    fresh.load_state_dict(points.state_dict())
    assert fresh.count == points.count
    assert torch.equal(fresh.xy(), points.xy()) and torch.equal(fresh.strata, points.strata)


@pytest.mark.parametrize(
    "schedule, initial, budget, message",
    [
        (Adaptation(times=10), 100, 50, "max_points"),
        (Adaptation(times=0), 100, 200, "adaptation.times > 0"),
        (Adaptation(times=-5), 100, 100, "adaptation.times"),
        (Adaptation(times=3, start=0.5, end=0.2), 100, 100, "start and adaptation.end"),
        (Adaptation(times=3, end=1.5), 100, 100, "start and adaptation.end"),
        (Adaptation(times=10, grow_fraction=0.0), 100, 100, "grow_fraction"),
        (Adaptation(times=10, prune_fraction=1.0), 100, 100, "prune_fraction"),
    ],
)
def test_impossible_schedules_are_rejected_by_name(schedule, initial, budget, message) -> None:
    with pytest.raises(ValueError, match=message):
        schedule.check(initial, budget)


def test_schedule_spreads_its_adaptations_over_the_run() -> None:
    # The main job's schedule: 11 adaptations from 10 % to 60 % of 2000 steps.
    schedule, done, steps = Adaptation(times=11, start=0.1, end=0.6), 0, []
    for step in range(1, 2001):
        if schedule.due(done, step / 2000):
            done += 1
            steps.append(step)
    assert steps == list(range(200, 1201, 100))
    assert not any(Adaptation().due(0, p / 100) for p in range(101))
    single = Adaptation(times=1, start=0.5, end=0.5)
    assert not single.due(0, 0.49) and single.due(0, 0.5) and not single.due(1, 1.0)
