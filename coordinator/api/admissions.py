"""Admission of completion requests: how many generate at once, and a FIFO of those waiting.

Owns the counts and the waiters' futures; every decision (run, wait, refuse; who is next)
comes from `coordinator.engine.scheduler` (pure). A full queue is a 429 with `Retry-After`.
Knows nothing of HTTP bodies or the engine.
"""

from __future__ import annotations

import asyncio

from coordinator.engine.scheduler import Admission, Load, admit, next_from_queue
from coordinator.types import ApiError

BUSY_RETRY_SECONDS = 2          # a full queue drains in seconds at decode speed


class Admissions:
    """Counts and a FIFO of waiters; the decisions come from scheduler.admit (pure)."""

    def __init__(self, max_active: int, max_queue: int) -> None:
        self.max_active, self.max_queue = max_active, max_queue
        self.active = 0
        self.waiters: list[asyncio.Future[None]] = []

    def load(self) -> Load:
        return Load(self.active, len(self.waiters))

    async def enter(self) -> None:
        """Return once the request may generate (at once, or after waiting its turn);
        raise a 429 ApiError when the queue is full."""
        decision = admit(self.load(), self.max_active, self.max_queue)
        if decision is Admission.REFUSE:
            raise ApiError(429, f"the server is busy: {self.active} requests running and {len(self.waiters)} "
                                "waiting; retry later", code="rate_limit_exceeded", kind="rate_limit_error",
                           retry_after=BUSY_RETRY_SECONDS)
        if decision is Admission.QUEUE:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter in self.waiters:
                    self.waiters.remove(waiter)
                elif waiter.done():  # admitted just as the client left: hand the slot on
                    self.leave()
                raise
        else:
            self.active += 1

    def leave(self) -> None:
        """A request that entered is over: its slot goes to the head of the queue, if any."""
        self.active -= 1
        if next_from_queue(self.load(), self.max_active):
            self.active += 1
            self.waiters.pop(0).set_result(None)
