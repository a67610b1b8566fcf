"""The adaptive point set: placement, per-step samples, densification and pruning, schedules."""

from __future__ import annotations

import math

import pytest
import torch

from models.point_set import MIN_SIGMA, AdaptSchedule, PointSet
from nuir.samplers import uniform_grid


def placed(capacity: int = 200, n: int = 100, size=(20, 20)) -> PointSet:
    points = PointSet(capacity)
    positions = uniform_grid(size, n)
    points.place(positions, torch.full((n,), 1.0))
    return points


def test_place_fills_the_first_slots_and_cells_follow_the_spacing() -> None:
    points = placed()
    assert points.count == 100 and int(points.active) == 100
    assert points.xy().shape == (100, 2) and points.sigma().shape == (100,)
    # 10 x 10 points on 20 x 20 pixels: cells of 2 pixels inside (wider along the border, where
    # the 4 nearest neighbours include diagonal ones).
    inside = ((points.xy() > 1) & (points.xy() < 18)).all(1)
    torch.testing.assert_close(points.cell[:100][inside], torch.full((64,), 2.0))
    assert (points.cell[:100] >= 2.0 - 1e-6).all()
    assert (points.cell[100:] == 0).all() and (points.positions[100:] == 0).all()
    with pytest.raises(ValueError, match="capacity"):
        PointSet(10).place(torch.zeros(11, 2), torch.ones(11))


def test_samples_stay_in_their_cells_and_carry_the_position_gradient() -> None:
    points = placed()
    generator = torch.Generator().manual_seed(0)
    samples = points.samples(None, generator, jitter=1.0)  # [100, 2]
    offset = (samples - points.xy()).detach()
    assert (offset.abs() <= points.cell[:100, None] / 2 + 1e-6).all()  # inside the cell
    assert offset.abs().max() > 0.8  # and really spread over it
    samples.sum().backward()
    assert torch.equal(points.positions.grad[:100], torch.ones(100, 2))
    assert torch.equal(points.samples(None, generator, jitter=0.0), points.xy())


def tally_errors(points: PointSet, hot: slice) -> None:
    """Every point visited once, the points in ``hot`` with a large error."""
    index = torch.arange(points.count)
    error = torch.full((points.count,), 1e-4)
    error[hot] = 1.0
    points.record_error(index, error)


def test_adapt_grows_where_the_error_is_high_and_prunes_where_it_is_low() -> None:
    points = placed(capacity=130)
    tally_errors(points, slice(0, 10))  # the first grid row
    schedule = AdaptSchedule(interval=1, grow_fraction=0.2, prune_fraction=0.05)
    pruned, grown = points.adapt(schedule, 2.0, torch.Generator().manual_seed(0))
    # Nothing is denser than the initial grid yet, so nothing is pruned; the 10 hot points split
    # (each into two halves of its cell), and 10 more.
    assert (pruned, grown) == (0, 20) and points.count == 120
    assert int((points.xy()[:, 1] < 1.5).sum()) >= 20
    assert (points.xy() >= -0.5).all() and (points.xy() <= 19.5).all()
    assert points.error.abs().sum() == 0 and points.visits.sum() == 0  # tallies restart
    assert (points.sigma() >= MIN_SIGMA - 1e-6).all()
    # Now the split points are right and the rest is not: the pruned ones come from the split
    # (denser) region only, never from the initial density elsewhere.
    dense = points.cell[:120] < 0.9 * 2.0
    error = torch.where(dense, 1e-6, 1.0)
    points.record_error(torch.arange(120), error)
    sparse_before = points.xy().detach()[~dense].clone()
    pruned, grown = points.adapt(schedule, 2.0, torch.Generator().manual_seed(1))
    assert pruned == 6 and grown == 16 and points.count == 130  # 5 % of 120; then to the budget
    after = points.xy().detach()
    for row in sparse_before:  # points of the initial density are all still there
        moved = (after - row).abs().sum(1).min()
        assert moved <= 0.75  # kept, or split in place (moved by a quarter of its cell)


def test_cells_below_one_and_a_half_pixels_do_not_split() -> None:
    points = placed(capacity=400, n=400, size=(20, 20))  # cells of 1 pixel
    tally_errors(points, slice(0, 400))
    schedule = AdaptSchedule(interval=1, grow_fraction=0.5)
    assert points.adapt(schedule, 1.0, torch.Generator().manual_seed(0)) == (0, 0)


def test_adapt_never_exceeds_the_budget_nor_empties_the_set() -> None:
    points = placed(capacity=110)
    schedule = AdaptSchedule(interval=1, grow_fraction=1.0, prune_fraction=0.0)
    for seed in range(5):
        tally_errors(points, slice(0, points.count))
        points.adapt(schedule, 2.0, torch.Generator().manual_seed(seed))
        assert points.count <= 110
    assert points.count == 110
    small = placed(capacity=4, n=4, size=(4, 4))
    harsh = AdaptSchedule(interval=1, grow_fraction=0.5, prune_fraction=0.99)
    for seed in range(5):
        tally_errors(small, slice(0, 1))
        small.adapt(harsh, 2.0, torch.Generator().manual_seed(seed))
        assert 1 <= small.count <= 4


def test_unvisited_points_are_neither_pruned_nor_split() -> None:
    points = placed()
    points.record_error(torch.arange(50), torch.rand(50))  # only the first half seen
    untouched = points.xy()[50:].detach().clone()
    schedule = AdaptSchedule(interval=1, grow_fraction=0.1, prune_fraction=0.1)
    points.adapt(schedule, 2.0, torch.Generator().manual_seed(0))
    kept = points.xy().detach()
    for row in untouched:  # every unvisited point is still there, unmoved
        assert (kept - row).abs().sum(1).min() == 0


def test_adam_moments_follow_their_rows_and_new_rows_start_at_zero() -> None:
    points = placed(capacity=120)
    optimizer = torch.optim.Adam([points.positions, points.log_sigma], lr=0.1)
    (points.xy().square().sum() + points.sigma().sum()).backward()
    optimizer.step()
    moments = optimizer.state[points.positions]["exp_avg"][:100].clone()
    tally_errors(points, slice(90, 100))
    schedule = AdaptSchedule(interval=1, grow_fraction=0.1, prune_fraction=0.0)
    _, grown = points.adapt(schedule, 2.0, torch.Generator().manual_seed(0), optimizer)
    assert grown == 10
    state = optimizer.state[points.positions]
    assert torch.equal(state["exp_avg"][:100], moments)  # nothing pruned: rows in place
    assert (state["exp_avg"][100:] == 0).all() and (state["exp_avg_sq"][100:] == 0).all()
    assert state["exp_avg"].shape == (120, 2)  # shapes never change


def test_state_dict_round_trip_restores_the_count() -> None:
    points = placed(capacity=150)
    tally_errors(points, slice(0, 20))
    points.adapt(AdaptSchedule(interval=1), 2.0, torch.Generator().manual_seed(0))
    fresh = PointSet(150)
    fresh.load_state_dict(points.state_dict())
    assert fresh.count == points.count
    assert torch.equal(fresh.xy(), points.xy())


@pytest.mark.parametrize(
    "schedule, initial, budget, message",
    [
        (AdaptSchedule(interval=10), 100, 50, "max_points"),
        (AdaptSchedule(interval=0), 100, 200, "adapt_interval > 0"),
        (AdaptSchedule(interval=-5), 100, 100, "adapt_interval"),
        (AdaptSchedule(interval=10, start=100, end=50), 100, 100, "adapt_end"),
        (AdaptSchedule(interval=10, grow_fraction=0.0), 100, 100, "grow_fraction"),
        (AdaptSchedule(interval=10, prune_fraction=1.0), 100, 100, "prune_fraction"),
    ],
)
def test_impossible_schedules_are_rejected_by_name(schedule, initial, budget, message) -> None:
    with pytest.raises(ValueError, match=message):
        schedule.check(initial, budget)


def test_schedule_due_steps() -> None:
    schedule = AdaptSchedule(interval=100, start=200, end=500)
    due = [step for step in range(0, 800) if schedule.due(step)]
    assert due == [300, 400, 500]
    assert not any(AdaptSchedule().due(step) for step in range(1000))
    assert math.isclose(len([s for s in range(1, 1001) if AdaptSchedule(50).due(s)]), 20)
