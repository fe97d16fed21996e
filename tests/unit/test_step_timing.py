"""The stall bound a worker's step is held to (pure)."""

from __future__ import annotations

from coordinator.swarm.step_timing import StallPolicy, StepTimer


def test_before_enough_samples_the_initial_bound_applies():
    timer = StepTimer(StallPolicy(initial_seconds=30.0, warm_samples=3))
    timer.observe(1, 0.02)
    timer.observe(1, 0.02)
    assert timer.bound(1) == 30.0


def test_a_warm_worker_is_held_to_a_multiple_of_its_step_time_never_below_the_floor():
    timer = StepTimer(StallPolicy(floor_seconds=3.0, factor=30.0, warm_samples=3))
    for _ in range(3):
        timer.observe(1, 0.5)
    assert timer.bound(1) == 15.0
    assert timer.bound(4) == 60.0                   # multi-row steps get proportionally longer
    fast = StepTimer(StallPolicy(floor_seconds=3.0, factor=30.0, warm_samples=3))
    for _ in range(3):
        fast.observe(1, 0.01)
    assert fast.bound(1) == 3.0


def test_only_one_row_steps_teach_the_estimate():
    timer = StepTimer(StallPolicy(warm_samples=1))
    timer.observe(64, 5.0)
    assert timer.one_row_seconds is None
    timer.observe(1, 0.1)
    timer.observe(1, 0.2)
    assert 0.1 < timer.one_row_seconds < 0.2   # an exponential moving average


def test_rows_queued_before_a_step_extend_its_bound_and_a_queued_step_teaches_nothing():
    timer = StepTimer(StallPolicy(floor_seconds=0.3, factor=3.0, warm_samples=3))
    for _ in range(3):
        timer.observe(1, 0.05)
    assert round(timer.bound(1), 6) == 0.3                 # alone: the floor (3 x 50 ms is less)
    assert round(timer.bound(1, queued=11), 6) == 1.8      # behind 11 rows: 12 steps' worth, 3x
    before = timer.one_row_seconds
    timer.observe(1, 0.6, queued=11)                       # waited for the others: not its own time
    assert timer.one_row_seconds == before and timer.samples == 3
