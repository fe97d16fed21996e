"""A worker's lifecycle as data: its states, the transitions allowed between them, and the
one function that moves a worker from one to the next.

Pure: no sockets, no clocks. The cluster is the only caller of `transition` (and so the
only writer of a worker's state); the worker endpoint reports what the tab said and
never sets a state itself.

    joining --hello--> idle --assign--> loading --ready--> ready
                        ^  \\_____________________________/  |
                        |        (it already holds them)     |
                        +----- unassigned / out of memory ---+
A worker that leaves is dropped from the cluster in whatever state it is in.
"""

from __future__ import annotations

from enum import StrEnum


class WorkerState(StrEnum):
    JOINING = "joining"   # socket open, no hello yet: only a hello is accepted
    IDLE = "idle"         # joined, nothing assigned (or placement took its assignment away)
    LOADING = "loading"   # assigned layers it does not hold yet
    READY = "ready"       # holds every layer of its assignment


TRANSITIONS: dict[WorkerState, frozenset[WorkerState]] = {
    WorkerState.JOINING: frozenset({WorkerState.IDLE}),
    WorkerState.IDLE: frozenset({WorkerState.IDLE, WorkerState.LOADING, WorkerState.READY}),
    WorkerState.LOADING: frozenset({WorkerState.LOADING, WorkerState.READY, WorkerState.IDLE}),
    WorkerState.READY: frozenset({WorkerState.READY, WorkerState.LOADING, WorkerState.IDLE}),
}


class IllegalTransition(RuntimeError):
    """A state change the lifecycle does not allow (a bug in the caller, not a tab's fault)."""


def transition(current: WorkerState, wanted: WorkerState) -> WorkerState:
    """`wanted`, if the lifecycle allows it from `current`; otherwise IllegalTransition."""
    if wanted not in TRANSITIONS[current]:
        raise IllegalTransition(f"a worker cannot go from {current} to {wanted}")
    return wanted
