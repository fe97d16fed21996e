from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.swarm.planner import PlanError, WorkerCapacity, even_stages, plan_layers


def test_equal_workers_split_evenly():
    assert [(s.layer_start, s.layer_end) for s in even_stages(30, 3)] == [(0, 10), (10, 20), (20, 30)]


def test_faster_worker_gets_more_layers():
    stages = plan_layers(30, [WorkerCapacity("slow", 1.0, 30), WorkerCapacity("fast", 2.0, 30)])
    assert [s.size for s in stages] == [10, 20]


def test_memory_cap_moves_layers_elsewhere():
    stages = plan_layers(30, [WorkerCapacity("small", 10.0, 5), WorkerCapacity("big", 1.0, 30)])
    assert [(s.worker, s.size) for s in stages] == [("small", 5), ("big", 25)]


def test_not_enough_memory_is_an_error():
    with pytest.raises(PlanError, match="can hold 20 layers"):
        plan_layers(30, [WorkerCapacity("a", 1.0, 10), WorkerCapacity("b", 1.0, 10)])


def test_no_workers_is_an_error():
    with pytest.raises(PlanError, match="no ready workers"):
        plan_layers(30, [])


@given(st.integers(1, 64), st.lists(st.tuples(st.floats(0.01, 100), st.integers(1, 64)), min_size=1, max_size=12))
@settings(max_examples=300, deadline=None)
def test_plans_are_contiguous_and_within_capacity(layers, specs):
    workers = [WorkerCapacity(f"w{i}", speed, cap) for i, (speed, cap) in enumerate(specs)]
    try:
        stages = plan_layers(layers, workers)
    except PlanError:
        assert sum(cap for _, cap in specs) < layers
        return
    assert stages[0].layer_start == 0 and stages[-1].layer_end == layers
    for first, second in itertools.pairwise(stages):
        assert first.layer_end == second.layer_start
    capacity = {w.worker: w.max_layers for w in workers}
    assert all(0 < s.size <= capacity[s.worker] for s in stages)
