"""Applying result checks to a running pipeline: which stages are audited, which steps are
checked, when, and what a failure does. Thin I/O over `verifier` (which decides nothing about
sockets).

A (stream, stage) pair is audited from its first frame (position 0) when its worker is on
probation, else with probability `audit_fraction`; an audited pair's frames are kept until
its next check, which recomputes them natively (`StageChecker.check`). Every step of a
worker on probation is checked before its result is used: a mismatch raises WorkerLost, so
the engine never relays it and replays the step elsewhere. After probation a sampled step
is checked in the background, one at a time and only while checks have used less than
`cpu_share` of a core over the last minute (a step sampled while another check runs, or over
that budget, waits for the next one, whose catch-up covers it). A worker that fails is banned until restart
and evicted; its requests replay (`docs/churn.md`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from coordinator.swarm.cluster import Cluster
from coordinator.swarm.planner import Stage
from coordinator.swarm.worker_link import WorkerLink, WorkerLost
from coordinator.trust.verifier import StageChecker, Verdict, should_audit, should_check
from protocol.frames import parse_frame

log = logging.getLogger(__name__)


@dataclass
class CheckCounters:
    """Checks of workers' results (coordinator-wide, for /v1/status)."""

    passed: int = 0
    failed: int = 0
    skipped_busy: int = 0          # sampled while another background check ran (the next one catches up)
    skipped_budget: int = 0        # sampled while checks were over their CPU share
    seconds: float = 0.0           # coordinator CPU time spent recomputing stages
    rows: int = 0                  # rows recomputed natively
    audits: int = 0                # (stream, stage) pairs audited
    worst_passed: float = 0.0      # largest |difference| / allowed among passed checks (margin left)
    evicted: list[str] = field(default_factory=list)


@dataclass
class Audit:
    worker: str
    pending: list[bytes] = field(default_factory=list)   # frames sent since the last check


class SpotChecks:
    def __init__(self, checker: StageChecker | None, cluster: Cluster,
                 run: Callable[..., Awaitable[Any]]) -> None:
        self.checker = checker          # None: checking is off
        self.cluster = cluster
        self.counters = CheckCounters()
        self._run = run                 # runs a CPU-bound call off the event loop
        self._rng = random.Random()
        self._audits: dict[tuple[int, int], Audit | None] = {}   # (stream, stage index) -> audit (None: not audited)
        self._unauditable: set[int] = set()   # streams whose frames alone no longer say what a stage computed
        self._background: asyncio.Task[None] | None = None
        self._recent: collections.deque[tuple[float, float]] = collections.deque()   # (finished at, CPU seconds)

    def release(self, stream: int) -> None:
        """The stream's session is over: forget its audits and their native caches."""
        self._unauditable.discard(stream)
        for key in [key for key in self._audits if key[0] == stream]:
            del self._audits[key]
            if self.checker is not None:
                self.checker.release(key)

    def stop_auditing(self, stream: int) -> None:
        """The stream now uses something its frames alone do not carry (head masks, bypass, delta coding)."""
        self._unauditable.add(stream)
        for key in [key for key in self._audits if key[0] == stream]:
            self._audits[key] = None
            if self.checker is not None:
                self.checker.release(key)

    def on_probation(self, link: WorkerLink) -> bool:
        """Whether every step of this worker is checked before its result is used."""
        return self.checker is not None and link.checked_steps < self.checker.config.probation_steps

    async def after_result(self, key: tuple[int, int], frame: bytes, stage: Stage, link: WorkerLink,
                           result: bytes) -> None:
        """`frame` was sent to `link` for (stream, stage index) `key`; `result` came back."""
        if self.checker is None:
            return
        audit = self._audit(key, frame, link)
        if audit is None:
            return
        audit.pending.append(frame)
        check, blocking = should_check(link.checked_steps, self.checker.config, self._rng)
        if not check:
            return
        if blocking:
            frames, audit.pending = audit.pending, []
            verdict = await self._timed(key, stage, frames, result)
            if verdict is not None and not await self._judge(link, verdict):
                raise WorkerLost(f"worker {link.id} ({link.info.name}) failed verification: {verdict.detail}",
                                 link.id)
            return
        if self._background is not None and not self._background.done():
            self.counters.skipped_busy += 1
            return
        if self._cpu_share() > self.checker.config.cpu_share:
            self.counters.skipped_budget += 1
            return
        frames, audit.pending = audit.pending, []

        async def background() -> None:
            verdict = await self._timed(key, stage, frames, result)
            if verdict is not None:   # None: the stream ended before its check ran
                await self._judge(link, verdict)

        self._background = asyncio.get_running_loop().create_task(background())

    def _audit(self, key: tuple[int, int], frame: bytes, link: WorkerLink) -> Audit | None:
        """The audit of `key` (deciding at its first frame), None when it is not audited."""
        assert self.checker is not None
        if key in self._audits:
            audit = self._audits[key]
            if audit is not None and audit.worker != link.id:   # the stage moved to another worker
                self._audits[key] = audit = None
                self.checker.release(key)
            return audit
        fresh = parse_frame(frame)[0].position == 0 and key[0] not in self._unauditable
        audited = fresh and should_audit(link.checked_steps, self.checker.config, self._rng)
        self._audits[key] = Audit(link.id) if audited else None
        self.counters.audits += audited
        return self._audits[key]

    def _cpu_share(self, window: float = 60.0) -> float:
        """CPU seconds checks used over the last `window` seconds, per second."""
        now = time.monotonic()
        while self._recent and self._recent[0][0] < now - window:
            self._recent.popleft()
        return sum(seconds for _, seconds in self._recent) / window

    async def _timed(self, key: tuple[int, int], stage: Stage, frames: list[bytes], result: bytes) -> Verdict | None:
        assert self.checker is not None
        verdict = await self._run(self.checker.check, key, stage, frames, result)
        if verdict is None:
            return None
        self.counters.seconds += verdict.cpu_seconds
        self._recent.append((time.monotonic(), verdict.cpu_seconds))
        self.counters.rows += verdict.rows
        return verdict

    async def _judge(self, link: WorkerLink, verdict: Verdict) -> bool:
        if verdict.ok:
            link.checked_steps += 1
            self.counters.passed += 1
            self.counters.worst_passed = max(self.counters.worst_passed, verdict.worst)
            if link.checked_steps == self.cluster.config.verify_probation_steps:
                await self.cluster.worker_proven(link)
            return True
        self.counters.failed += 1
        self.counters.evicted.append(f"{link.info.name}@{link.remote}")
        reason = f"failed verification: {verdict.detail}"
        log.error("worker %s (%s) %s; evicted and refused until restart", link.id, link.info.name, reason)
        self.cluster.ban(link, reason)
        await self.cluster.evict(link, reason)
        return False
