"""Applying spot-checks to a running pipeline: which results to check, when, and what a
failure does. Thin I/O over `verifier` (which decides nothing about sockets).

Every step of a worker on probation is checked before its result is used: a mismatch
raises WorkerLost, so the engine never relays it and replays the step elsewhere. After
probation a sampled step is checked in the background (one at a time). A worker that
fails is banned until restart and evicted; its requests replay (`docs/churn.md`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from coordinator.cluster import Cluster
from coordinator.planner import Stage
from coordinator.verifier import StageChecker, Verdict, should_check
from coordinator.worker_link import WorkerLink, WorkerLost

log = logging.getLogger(__name__)


@dataclass
class CheckCounters:
    """Spot-checks of workers' results (coordinator-wide, for /v1/status)."""

    passed: int = 0
    failed: int = 0
    skipped_busy: int = 0          # sampled while another background check ran
    seconds: float = 0.0           # coordinator CPU time spent re-running stages
    worst_passed: float = 0.0      # largest |difference| / allowed among passed checks (margin left)
    evicted: list[str] = field(default_factory=list)


class SpotChecks:
    def __init__(self, checker: StageChecker | None, cluster: Cluster,
                 run: Callable[..., Awaitable[Any]]) -> None:
        self.checker = checker          # None: checking is off
        self.cluster = cluster
        self.counters = CheckCounters()
        self._run = run                 # runs a CPU-bound call off the event loop
        self._rng = random.Random()
        self._background: asyncio.Task[None] | None = None

    async def after_result(self, frames: list[bytes], stage: Stage, link: WorkerLink, result: bytes) -> None:
        """`frames`: every frame this stage was sent for the stream, the current one last."""
        if self.checker is None:
            return
        check, blocking = should_check(link.checked_steps, self.checker.config, self._rng)
        if not check:
            return
        frames = list(frames)
        if blocking:
            verdict = await self._timed(stage, frames, result)
            if not await self._judge(link, verdict):
                raise WorkerLost(f"worker {link.id} ({link.info.name}) failed verification: {verdict.detail}",
                                 link.id)
            return
        if self._background is not None and not self._background.done():
            self.counters.skipped_busy += 1
            return

        async def background() -> None:
            await self._judge(link, await self._timed(stage, frames, result))

        self._background = asyncio.get_running_loop().create_task(background())

    async def _timed(self, stage: Stage, frames: list[bytes], result: bytes) -> Verdict:
        assert self.checker is not None
        started = time.process_time()
        verdict = await self._run(self.checker.check_stage, stage, frames, result)
        self.counters.seconds += time.process_time() - started
        return verdict

    async def _judge(self, link: WorkerLink, verdict: Verdict) -> bool:
        if verdict.ok:
            link.checked_steps += 1
            self.counters.passed += 1
            self.counters.worst_passed = max(self.counters.worst_passed, verdict.worst)
            return True
        self.counters.failed += 1
        self.counters.evicted.append(f"{link.info.name}@{link.remote}")
        reason = f"failed verification: {verdict.detail}"
        log.error("worker %s (%s) %s; evicted and refused until restart", link.id, link.info.name, reason)
        self.cluster.ban(link, reason)
        await self.cluster.evict(link, reason)
        return False
