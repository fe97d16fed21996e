"""The scheduler: admission of requests (run now, wait in the bounded queue, or refuse).

Pure: takes counts and limits, returns a decision; the HTTP layer acts on it. Requests
that are admitted step concurrently, which pipelines them across the stages: while one
request's token is on node 2, another's can be on node 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Admission(Enum):
    RUN = "run"
    QUEUE = "queue"
    REFUSE = "refuse"


@dataclass(frozen=True)
class Load:
    active: int
    queued: int


def admit(load: Load, max_active: int, max_queue: int) -> Admission:
    if load.active < max_active and load.queued == 0:
        return Admission.RUN
    if load.queued < max_queue:
        return Admission.QUEUE
    return Admission.REFUSE


def next_from_queue(load: Load, max_active: int) -> bool:
    """Whether the head of the queue may start now."""
    return load.queued > 0 and load.active < max_active
