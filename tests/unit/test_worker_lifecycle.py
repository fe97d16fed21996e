"""The worker lifecycle table: every allowed transition is taken, every other one refused,
every state is reachable from a new socket, and only the cluster writes a worker's state."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from coordinator.swarm.worker_lifecycle import (
    TRANSITIONS,
    IllegalTransition,
    WorkerState,
    transition,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("current", list(WorkerState))
@pytest.mark.parametrize("wanted", list(WorkerState))
def test_each_pair_is_taken_exactly_when_the_table_allows_it(current, wanted):
    if wanted in TRANSITIONS[current]:
        assert transition(current, wanted) is wanted
    else:
        with pytest.raises(IllegalTransition, match=f"from {current} to {wanted}"):
            transition(current, wanted)


def test_a_worker_walks_from_joining_to_ready_and_back_to_idle():
    walk = [WorkerState.IDLE, WorkerState.LOADING, WorkerState.READY, WorkerState.LOADING, WorkerState.READY,
            WorkerState.IDLE, WorkerState.READY]
    state = WorkerState.JOINING
    for step in walk:
        state = transition(state, step)
    assert state is WorkerState.READY


def test_nothing_goes_back_to_joining_and_joining_only_leads_to_idle():
    assert all(WorkerState.JOINING not in allowed for allowed in TRANSITIONS.values())
    assert TRANSITIONS[WorkerState.JOINING] == {WorkerState.IDLE}
    reachable, frontier = {WorkerState.JOINING}, [WorkerState.JOINING]
    while frontier:
        for state in TRANSITIONS[frontier.pop()] - reachable:
            reachable.add(state)
            frontier.append(state)
    assert reachable == set(WorkerState)


def test_only_the_cluster_writes_a_workers_state():
    writers = []
    for path in sorted((ROOT / "coordinator").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AugAssign | ast.AnnAssign) else []
            for target in targets:
                for element in target.elts if isinstance(target, ast.Tuple) else [target]:
                    if isinstance(element, ast.Attribute) and element.attr in ("state", "stage") and isinstance(
                            element.value, ast.Attribute) and element.value.attr == "info":
                        writers.append(f"{path.name}:{node.lineno}")
    assert len(writers) == 2 and all(writer.startswith("cluster.py:") for writer in writers), writers
