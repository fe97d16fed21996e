"""The cluster: which workers are connected, what each holds, the target and active plans.

Owns worker lifecycle (hello -> loading -> ready -> gone) and turns `swarm_plan` decisions
into `assign` and `retain` messages. Two plans exist at once:

- the **target** (`swarm_plan.plan_swarm` over the workers now connected): what every
  worker is told to load, stages and standby replicas;
- the **active** plan (`plan`): the stages requests run on. It becomes the target only
  when every target stage's worker holds its layers, so requests never see a
  half-loaded layout. Joins replan at once (after a short settle) and load in the
  background while requests keep running on the active plan; running requests move to
  a new active plan at their next step boundary (the engine replays them onto it).

Workers keep layers they no longer need until no pipeline session runs on an older plan
and every stage's worker is proven (past its verification probation); then a `retain`
tells each to drop what lies outside its assignment. So a tab on probation never makes a
proven tab give up what it holds: if the newcomer is evicted, the proven tab still holds
the layers and service resumes on it at once. Placement follows each tab's offered memory
(`capacity`); a tab that runs out of memory loading is placed again with fewer layers.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter
from typing import Any

from coordinator.config import ServerConfig
from coordinator.swarm.assignment import assign_message
from coordinator.swarm.capacity import (
    WorkerFacts,
    capacities,
    placement_report,
    shortfall,
    speed_replan_due,
)
from coordinator.swarm.event_log import EventLog
from coordinator.swarm.pipeline import Pipeline
from coordinator.swarm.planner import PlanError, Stage, WorkerCapacity
from coordinator.swarm.swarm_plan import SwarmPlan, plan_swarm
from coordinator.swarm.worker_lifecycle import WorkerState, transition
from coordinator.swarm.worker_link import WorkerLink, WorkerLost
from protocol.control import Hello, Ready, Retain, Stats
from shards.footprint import TabFootprint
from shards.manifest import Manifest

log = logging.getLogger(__name__)

PROVEN_STEPS = 16              # one-row steps served before a worker's speed is its measured one


def measured_ms_per_layer(link: WorkerLink) -> float | None:
    """Milliseconds per layer of its one-row steps, once it has served enough of them."""
    stage = link.info.stage
    seconds = link.timer.one_row_seconds
    if seconds is None or link.timer.samples < PROVEN_STEPS or stage is None or link.info.role != "stage":
        return None
    return 1000 * seconds / max(stage.size, 1)


class NoWorkers(RuntimeError):
    """No ready pipeline within the wait limit."""


class Cluster:
    def __init__(self, manifest: Manifest, config: ServerConfig, compute: str | None = None) -> None:
        self.manifest = manifest
        self.config = config
        self.compute = compute or manifest.default_compute      # what the tabs compute with
        self.footprint = TabFootprint.of(manifest.model, self.compute)
        self.workers: dict[str, WorkerLink] = {}
        self.target = SwarmPlan(())
        self.plan: tuple[Stage, ...] = ()       # the active stages
        self.plan_error: str | None = "no workers have joined yet"
        self.plan_version = 0
        self.sessions: Counter[int] = Counter()   # open pipeline sessions by plan version
        self.events = EventLog()   # joins, losses, replans: the status page, /metrics, the console
        self._changed = asyncio.Condition()
        self._ids = itertools.count(1)
        self._pending_replan: asyncio.Task[None] | None = None
        self._retain_due = False
        self._planned_speeds: dict[str, float] = {}
        self.banned: dict[tuple[str, str], str] = {}   # (remote, name) -> why
        self._speed_changes = 0
        self.layer_bytes = [sum(manifest.files[name].size for name in manifest.layer_files(index, self.compute))
                            for index in range(manifest.model.layers)]

    def next_worker_id(self) -> str:
        return f"w{next(self._ids)}"

    # -- lifecycle ---------------------------------------------------------------------
    @staticmethod
    def _move(link: WorkerLink, state: WorkerState, stage: Stage | None) -> None:
        """The one place a worker's state (and its assigned stage) is written."""
        link.info.state = transition(link.info.state, state)
        link.info.stage = stage

    def heard_from(self, link: WorkerLink) -> None:
        """Any frame from the worker: it is alive (heartbeat_loop reads this)."""
        link.info.last_seen = time.monotonic()

    def loading_progress(self, link: WorkerLink, done: int, total: int) -> None:
        link.info.progress = (done, total)

    def worker_stats(self, link: WorkerLink, message: Stats) -> None:
        """What the tab has served and measured (its `stats` message)."""
        link.info.apply_stats(message)

    async def join(self, link: WorkerLink, hello: Hello) -> None:
        info = link.info
        info.apply_hello(hello, link.id)
        self._move(link, WorkerState.IDLE, None)
        self.workers[link.id] = link
        log.info("worker %s (%s, %s, %d threads, benchmark %.1f ms) joined from %s",
                 link.id, info.name, info.backend, info.threads, info.benchmark_ms, link.remote)
        self.events.record("join", worker=link.id, name=info.name, backend=info.backend, remote=link.remote)
        self._schedule_replan()

    def _schedule_replan(self) -> None:
        """Replan shortly after a join, so tabs opened together are planned together
        (and none downloads layers it is about to give away)."""
        if self._pending_replan is not None and not self._pending_replan.done():
            self._pending_replan.cancel()

        async def later() -> None:
            await asyncio.sleep(self.config.join_settle_seconds)
            await self.replan()

        self._pending_replan = asyncio.get_running_loop().create_task(later())

    async def leave(self, link: WorkerLink, reason: str) -> None:
        link.fail_all(reason)
        if self.workers.pop(link.id, None) is None:
            return
        log.warning("worker %s (%s) left: %s", link.id, link.info.name, reason)
        self.events.record("leave", worker=link.id, name=link.info.name, reason=reason)
        await self.replan()

    def ban(self, link: WorkerLink, reason: str) -> None:
        """Refuse this worker (by address and name) until the coordinator restarts."""
        self.banned[(link.remote, link.info.name)] = reason
        self.events.record("ban", worker=link.id, name=link.info.name, reason=reason)

    def banned_reason(self, remote: str, name: str) -> str | None:
        return self.banned.get((remote, name))

    async def evict(self, link: WorkerLink, reason: str) -> None:
        """Drop a worker that stalled (a frozen tab keeps its socket open): close it and replan."""
        if link.id not in self.workers:
            return
        log.warning("evicting worker %s (%s): %s", link.id, link.info.name, reason)
        self.events.record("evict", worker=link.id, name=link.info.name, reason=reason)
        await link.close(1008, reason)
        await self.leave(link, reason)

    async def ready(self, link: WorkerLink, message: Ready) -> None:
        loaded = range(message.layer_start, message.layer_end)
        link.info.apply_ready(message)
        stage = link.info.stage
        if stage is not None and link.holds(stage):
            self._move(link, WorkerState.READY, stage)
        log.info("worker %s holds layers [%d, %d) after %.0f ms%s", link.id, loaded.start, loaded.stop,
                 message.load_ms, " (cached)" if message.cached else "")
        self.events.record("ready", worker=link.id, name=link.info.name, layers=[loaded.start, loaded.stop],
                           load_ms=round(float(message.load_ms)), cached=bool(message.cached),
                           downloaded_bytes=message.downloaded_bytes, weight_bytes=message.weight_bytes)
        await self._switch_if_ready()

    # -- planning ----------------------------------------------------------------------
    def facts(self, links: list[WorkerLink]) -> list[WorkerFacts]:
        return [WorkerFacts(link.id, link.info.benchmark_ms, measured_ms_per_layer(link), link.info.memory_mb,
                            len(link.info.holds), link.info.allocation_cap) for link in links]

    def capacities(self, links: list[WorkerLink]) -> list[WorkerCapacity]:
        """Planner input (`capacity.capacities`): measured speeds, memory as offered."""
        return capacities(self.facts(links), self.manifest.model.layers, self.footprint)

    async def allocation_failed(self, link: WorkerLink, holds: list[int], reason: str) -> None:
        """The tab ran out of memory loading its assignment: it keeps what it holds, may hold
        no more than that, and is placed again with fewer layers (or none)."""
        if link.id not in self.workers:
            return
        link.info.holds = frozenset(int(layer) for layer in holds)
        link.info.allocation_cap = len(link.info.holds)
        self._move(link, WorkerState.IDLE, None)
        log.warning("worker %s (%s) ran out of memory loading layers (holds %d): %s; placing it again",
                    link.id, link.info.name, len(link.info.holds), reason)
        self.events.record("oom", worker=link.id, name=link.info.name, holds=len(link.info.holds), reason=reason[:200])
        await self.replan(keep_boundaries=False)

    def proven(self, link: WorkerLink) -> bool:
        """Past its verification probation (or verification is off)."""
        probation = self.config.verify_probation_steps
        checking = probation > 0 or self.config.verify_fraction > 0
        return not checking or link.checked_steps >= probation

    async def worker_proven(self, link: WorkerLink) -> None:
        """Its last probation check passed: the retains it held back can go out."""
        log.info("worker %s (%s) passed its probation", link.id, link.info.name)
        await self._send_retains()

    async def replan_if_speeds_changed(self) -> None:
        """Called periodically: replan (allowing new stage boundaries) when the snapped
        speeds differ from the last plan's on enough checks in a row (`speed_replan_due`)."""
        workers = [link for link in self.workers.values() if not link.closed]
        speeds = {capacity.worker: capacity.speed for capacity in self.capacities(workers)}
        planned = {stage.worker for stage in self.target.stages}
        if self._planned_speeds and any(self._planned_speeds.get(worker) != speeds.get(worker)
                                        for worker in planned):
            self._speed_changes += 1
        else:
            self._speed_changes = 0
        running = sum(self.sessions.values())
        if speed_replan_due(self._speed_changes, running, self.config.speed_replan_checks,
                            self.config.speed_replan_busy_checks):
            log.info("measured speeds changed (%s): replanning", speeds)
            self.events.record("speeds", speeds=speeds)
            await self.replan(keep_boundaries=False)

    async def replan(self, keep_boundaries: bool = True) -> None:
        """A new target from the workers connected now; assign what each must load."""
        workers = [link for link in self.workers.values() if not link.closed]
        holdings = {link.id: link.info.holds for link in workers}
        try:
            capacities = self.capacities(workers)
            target = plan_swarm(self.manifest.model.layers, capacities, holdings,
                                self.config.standby_workers, self.plan if keep_boundaries else ())
            self._planned_speeds = {capacity.worker: capacity.speed for capacity in capacities}
            self._speed_changes = 0
            self.plan_error = None
        except PlanError as error:
            missing = shortfall(self.facts(workers), self.manifest.model.layers, self.footprint)
            target, self.plan_error = SwarmPlan(()), missing or str(error)
        if target != self.target:
            self.target = target
            log.info("target plan: %s%s", ", ".join(f"{s.worker}[{s.layer_start},{s.layer_end})"
                                                    for s in target.stages) or self.plan_error,
                     "".join(f"; standby {s.worker}[{s.layer_start},{s.layer_end})" for s in target.standbys))
            self.events.record("replan", stages=[[s.worker, s.layer_start, s.layer_end] for s in target.stages],
                               standbys=[[s.worker, s.layer_start, s.layer_end] for s in target.standbys])
        stage_workers = {stage.worker for stage in target.stages}
        for link in workers:
            wanted = target.range_of(link.id)
            link.info.role = "stage" if link.id in stage_workers else "standby" if wanted else "idle"
            if wanted is None:
                self._move(link, WorkerState.IDLE, None)
            elif link.holds(wanted):
                self._move(link, WorkerState.READY, wanted)
            elif link.info.stage != wanted or link.info.state != WorkerState.LOADING:
                self._move(link, WorkerState.LOADING, wanted)
                try:
                    await link.send_control(assign_message(self.manifest, self.compute, link.id, link.info.role, wanted))
                except WorkerLost:   # it is leaving; its reader's leave() replans without it
                    log.info("assign to %s not sent: it is gone", link.id)
        await self._switch_if_ready()

    async def _switch_if_ready(self) -> None:
        """Make the target's stages the active plan once every one of them is loaded."""
        stages = self.target.stages
        if stages and stages != self.plan and all(
                (link := self.workers.get(stage.worker)) is not None and not link.closed and link.holds(stage)
                for stage in stages):
            self.plan = stages
            self.plan_version += 1
            self._retain_due = True
            log.info("plan v%d active: %s", self.plan_version,
                     ", ".join(f"{s.worker}[{s.layer_start},{s.layer_end})" for s in stages))
            self.events.record("plan", version=self.plan_version,
                               stages=[[s.worker, s.layer_start, s.layer_end] for s in stages],
                               names=[self.workers[s.worker].info.name for s in stages])
        await self._send_retains()
        await self._notify()

    async def _send_retains(self) -> None:
        """Once no session runs on an older plan and every stage's worker is proven, workers
        drop layers outside their assignment."""
        if not self._retain_due or any(version < self.plan_version and count
                                       for version, count in self.sessions.items()):
            return
        if not all((link := self.workers.get(stage.worker)) is not None and self.proven(link) for stage in self.plan):
            return
        self._retain_due = False
        for link in list(self.workers.values()):
            stage = link.info.stage
            if stage is None or link.closed or link.info.state != WorkerState.READY:
                continue
            if any(active.worker == link.id and active != stage for active in self.plan):
                # The active plan still runs other layers here (a newer target is not active
                # yet): dropping them would refuse the running streams' next steps. Retained
                # when that target becomes the active plan.
                continue
            keep = frozenset(range(stage.layer_start, stage.layer_end))
            if link.info.holds - keep:
                link.info.holds = link.info.holds & keep
                try:
                    await link.send_control(Retain(layer_start=stage.layer_start, layer_end=stage.layer_end))
                except WorkerLost:   # gone already: nothing to drop
                    log.debug("retain to %s not sent: it is gone", link.id)

    # -- requests ----------------------------------------------------------------------
    def pipeline(self) -> Pipeline | None:
        """The active stages with their links, or None while any of them is gone."""
        if not self.plan:
            return None
        stages = []
        for stage in self.plan:
            link = self.workers.get(stage.worker)
            if link is None or link.closed or not link.holds(stage):
                return None
            stages.append((stage, link))
        return stages

    async def wait_pipeline(self, timeout: float) -> Pipeline:
        deadline = time.monotonic() + timeout
        async with self._changed:
            while (pipeline := self.pipeline()) is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise NoWorkers(self.waiting_reason())
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    raise NoWorkers(self.waiting_reason()) from None
            return pipeline

    def waiting_reason(self) -> str:
        if not self.workers:
            return "no worker tabs are connected: open the worker page (/worker/) in a browser"
        if self.plan_error:
            return f"no plan: {self.plan_error}"
        loading = [link.id for link in self.workers.values() if link.info.state == WorkerState.LOADING]
        return f"workers still loading their layers: {', '.join(loading)}" if loading else "no ready pipeline"

    def session_opened(self, version: int) -> None:
        self.sessions[version] += 1

    async def session_closed(self, version: int) -> None:
        self.sessions[version] -= 1
        if self.sessions[version] <= 0:
            del self.sessions[version]
        await self._send_retains()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def placement(self) -> dict[str, Any]:
        """The memory model and what the workers present can hold (status page, /health)."""
        facts = self.facts([link for link in self.workers.values() if not link.closed])
        return placement_report(facts, self.manifest.model.layers, self.footprint, self.compute)

    def status(self) -> dict[str, Any]:
        """The cluster's part of `/v1/status`."""
        return {
            "plan_version": self.plan_version,
            "plan": [{"worker": s.worker, "layers": [s.layer_start, s.layer_end]} for s in self.plan],
            "target": [{"worker": s.worker, "layers": [s.layer_start, s.layer_end]} for s in self.target.stages],
            "standbys": [{"worker": s.worker, "layers": [s.layer_start, s.layer_end],
                          "ready": (link := self.workers.get(s.worker)) is not None and link.holds(s)}
                         for s in self.target.standbys],
            "plan_error": self.plan_error,
            "ready": self.pipeline() is not None,
            "replan_pending": self.target.stages != self.plan,
            "workers": [link.status() for link in self.workers.values()],
            "placement": self.placement(),
            "events": self.events.recent[-20:],
        }
