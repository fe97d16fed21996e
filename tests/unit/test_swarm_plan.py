"""Standbys and holdings-aware layouts (pure)."""

from __future__ import annotations

from coordinator.swarm.planner import Stage, WorkerCapacity
from coordinator.swarm.swarm_plan import plan_swarm


def workers(*names: str, max_layers: int = 30) -> list[WorkerCapacity]:
    return [WorkerCapacity(name, 1.0, max_layers) for name in names]


def ranges(stages) -> list[tuple[str, int, int]]:
    return [(stage.worker, stage.layer_start, stage.layer_end) for stage in stages]


def test_two_workers_are_both_stages():
    plan = plan_swarm(30, workers("a", "b"), {}, standby=1)
    assert ranges(plan.stages) == [("a", 0, 15), ("b", 15, 30)] and plan.standbys == ()


def test_a_third_worker_holds_a_full_replica_without_moving_the_stages():
    held = {"a": frozenset(range(15)), "b": frozenset(range(15, 30))}
    plan = plan_swarm(30, workers("a", "b", "c"), held, standby=1)
    assert ranges(plan.stages) == [("a", 0, 15), ("b", 15, 30)]
    assert ranges(plan.standbys) == [("c", 0, 30)]


def test_standby_zero_uses_every_worker_as_a_stage():
    plan = plan_swarm(30, workers("a", "b", "c"), {}, standby=0)
    assert ranges(plan.stages) == [("a", 0, 10), ("b", 10, 20), ("c", 20, 30)] and plan.standbys == ()


def test_after_a_loss_the_replica_takes_the_lost_range_and_nothing_loads():
    # a held [0, 15), b held [15, 30) and died; c held everything as the standby
    held = {"a": frozenset(range(15)), "c": frozenset(range(30))}
    plan = plan_swarm(30, workers("a", "c"), held, standby=1)
    assert ranges(plan.stages) == [("a", 0, 15), ("c", 15, 30)]
    # and when the first stage dies instead, the replica takes the front
    held = {"b": frozenset(range(15, 30)), "c": frozenset(range(30))}
    assert ranges(plan_swarm(30, workers("b", "c"), held, standby=1).stages) == [("c", 0, 15), ("b", 15, 30)]


def test_a_standby_that_cannot_hold_the_model_replicates_the_largest_stage_it_fits():
    capacities = [WorkerCapacity("a", 2.0, 30), WorkerCapacity("b", 1.0, 30), WorkerCapacity("c", 1.0, 12)]
    plan = plan_swarm(30, capacities, {}, standby=1)
    assert ranges(plan.stages) == [("a", 0, 20), ("b", 20, 30)]
    assert ranges(plan.standbys) == [("c", 20, 30)]


def test_memory_too_small_for_two_stages_gives_up_the_standby():
    plan = plan_swarm(30, workers("a", "b", "c", max_layers=12), {}, standby=1)
    assert len(plan.stages) == 3 and plan.standbys == ()


def test_range_of_names_a_stage_or_a_replica():
    plan = plan_swarm(30, workers("a", "b", "c"), {}, standby=1)
    assert plan.range_of("c") == Stage("c", 0, 30) and plan.range_of("a") == Stage("a", 0, 15)
    assert plan.range_of("zzz") is None


def test_current_stages_are_kept_and_a_lost_one_goes_to_the_replica_even_if_speeds_differ():
    current = (Stage("a", 0, 15), Stage("b", 15, 30))
    capacities = [WorkerCapacity("a", 2.0, 30), WorkerCapacity("c", 1.0, 30)]   # b is gone
    held = {"a": frozenset(range(15)), "c": frozenset(range(30))}
    plan = plan_swarm(30, capacities, held, standby=1, current=current)
    assert ranges(plan.stages) == [("a", 0, 15), ("c", 15, 30)]
    # without the current plan, speed decides the split and the boundary moves
    assert ranges(plan_swarm(30, capacities, held, standby=1).stages) == [("a", 0, 20), ("c", 20, 30)]


def test_current_stages_are_not_kept_when_the_stage_count_changes_or_nobody_holds_the_lost_range():
    current = (Stage("a", 0, 15), Stage("b", 15, 30))
    four = workers("a", "b", "c", "d")
    assert len(plan_swarm(30, four, {}, standby=1, current=current).stages) == 3
    held = {"a": frozenset(range(15)), "c": frozenset(range(5))}
    plan = plan_swarm(30, workers("a", "c"), held, standby=1, current=current)
    assert ranges(plan.stages) == [("a", 0, 15), ("c", 15, 30)]   # found by the search (c must load)
