"""The cluster: which workers are connected, the current plan, and who is ready.

Owns worker lifecycle (hello -> assigned -> loading -> ready -> gone) and turns planner
decisions into `assign` messages. Replans when workers join or leave; a join while
requests are generating waits until they finish, so a running request never has its
layers moved under it. A leave replans at once (requests that needed the worker fail fast).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from typing import Any

from coordinator.config import ServerConfig
from coordinator.planner import PlanError, Stage, WorkerCapacity, plan_layers
from coordinator.worker_link import WorkerLink
from protocol.frames import VERSION
from shards.manifest import Manifest

log = logging.getLogger(__name__)

# A tab needs roughly the layer file twice while loading (bytes + session weights).
MEMORY_PER_LAYER_FACTOR = 2.5


class NoWorkers(RuntimeError):
    """No ready pipeline within the wait limit."""


Pipeline = list[tuple[Stage, WorkerLink]]


class Cluster:
    def __init__(self, manifest: Manifest, config: ServerConfig) -> None:
        self.manifest = manifest
        self.config = config
        self.workers: dict[str, WorkerLink] = {}
        self.plan: tuple[Stage, ...] = ()
        self.plan_error: str | None = "no workers have joined yet"
        self.plan_version = 0
        self.active_requests = 0
        self._replan_pending = False
        self._changed = asyncio.Condition()
        self._ids = itertools.count(1)
        self._pending_replan: asyncio.Task[None] | None = None
        self.layer_bytes = [sum(manifest.files[name].size for name in manifest.layer_files(index))
                            for index in range(manifest.model.layers)]

    def next_worker_id(self) -> str:
        return f"w{next(self._ids)}"

    # -- lifecycle ---------------------------------------------------------------------
    async def join(self, link: WorkerLink, hello: dict[str, Any]) -> None:
        info = link.info
        info.name = str(hello.get("worker") or link.id)
        info.backend = hello["backend"]
        info.threads = hello["threads"]
        info.benchmark_ms = float(hello["benchmark_ms"])
        info.memory_mb = float(hello["memory_mb"]) if hello.get("memory_mb") else None
        info.agent = str(hello.get("agent", ""))[:200]
        info.state = "idle"
        self.workers[link.id] = link
        log.info("worker %s (%s, %s, %d threads, benchmark %.1f ms) joined from %s",
                 link.id, info.name, info.backend, info.threads, info.benchmark_ms, link.remote)
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
        await self.replan(force=True)

    async def ready(self, link: WorkerLink, message: dict[str, Any]) -> None:
        stage = link.info.stage
        if stage is None or (message["layer_start"], message["layer_end"]) != (stage.layer_start, stage.layer_end):
            log.info("worker %s reported ready for a stale assignment; ignored", link.id)
            return
        link.info.loaded = stage
        link.info.state = "ready"
        link.info.load_ms = float(message["load_ms"])
        link.info.cached = message.get("cached")
        link.info.progress = None
        log.info("worker %s ready with layers [%d, %d) in %.0f ms%s", link.id, stage.layer_start,
                 stage.layer_end, link.info.load_ms, " (cached)" if link.info.cached else "")
        await self._notify()

    # -- planning ----------------------------------------------------------------------
    def capacities(self, links: list[WorkerLink]) -> list[WorkerCapacity]:
        """Planner input. Speeds are relative to the fastest, snapped to powers of two: a
        browser benchmark is noisy (identical tabs on one busy machine measured up to 1.3x
        apart), and an even split between equal machines matters more than that noise."""
        layers = self.manifest.model.layers
        fastest = min(max(link.info.benchmark_ms, 0.1) for link in links) if links else 1.0
        capacities = []
        for link in links:
            max_layers = layers
            if link.info.memory_mb:
                per_layer_mb = max(self.layer_bytes) * MEMORY_PER_LAYER_FACTOR / 2**20
                max_layers = min(layers, int(link.info.memory_mb / per_layer_mb))
            relative = fastest / max(link.info.benchmark_ms, 0.1)
            capacities.append(WorkerCapacity(link.id, 2.0 ** round(math.log2(relative)), max_layers))
        return capacities

    async def replan(self, force: bool = False) -> None:
        if self.active_requests and not force:
            self._replan_pending = True
            return
        self._replan_pending = False
        workers = [link for link in self.workers.values() if not link.closed]
        try:
            stages = plan_layers(self.manifest.model.layers, self.capacities(workers))
            self.plan_error = None
        except PlanError as error:
            stages, self.plan_error = (), str(error)
        if stages != self.plan:
            self.plan = stages
            self.plan_version += 1
            log.info("plan v%d: %s", self.plan_version,
                     ", ".join(f"{s.worker}[{s.layer_start},{s.layer_end})" for s in stages) or self.plan_error)
        planned = {stage.worker: stage for stage in stages}
        for link in workers:
            stage = planned.get(link.id)
            if stage is None:
                link.info.stage, link.info.state = None, "idle"
            elif link.info.stage != stage:
                link.info.stage, link.info.state = stage, "loading"
                await link.send_control(self.assign_message(link, stage))
        await self._notify()

    def assign_message(self, link: WorkerLink, stage: Stage) -> dict[str, Any]:
        files = []
        for index in range(stage.layer_start, stage.layer_end):
            for name in self.manifest.layer_files(index):
                entry = self.manifest.files[name]
                files.append({"name": name, "size": entry.size, "sha256": entry.sha256, "url": f"/shards/{name}"})
        model = self.manifest.model
        return {"type": "assign", "worker": link.id, "layer_start": stage.layer_start,
                "layer_end": stage.layer_end, "files": files, "protocol": VERSION,
                "model": {"name": model.name, "hidden": model.hidden, "heads": model.heads,
                          "kv_heads": model.kv_heads, "head_dim": model.head_dim, "layers": model.layers,
                          "shard_sha256": self.manifest.source["sha256"],
                          "converter": self.manifest.source.get("converter", "")},
                "codec": {"key_interval": 64}}

    # -- requests ----------------------------------------------------------------------
    def pipeline(self) -> Pipeline | None:
        """The ready stages in order, or None while any stage is loading or missing."""
        if not self.plan:
            return None
        stages = []
        for stage in self.plan:
            link = self.workers.get(stage.worker)
            if link is None or link.closed or link.info.loaded != stage:
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
        loading = [link.id for link in self.workers.values() if link.info.state == "loading"]
        return f"workers still loading their layers: {', '.join(loading)}" if loading else "no ready pipeline"

    def request_started(self) -> None:
        self.active_requests += 1

    async def request_finished(self) -> None:
        self.active_requests -= 1
        if not self.active_requests and self._replan_pending:
            await self.replan()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def status(self) -> dict[str, Any]:
        return {
            "plan_version": self.plan_version,
            "plan": [{"worker": s.worker, "layers": [s.layer_start, s.layer_end]} for s in self.plan],
            "plan_error": self.plan_error,
            "ready": self.pipeline() is not None,
            "replan_pending": self._replan_pending,
            "workers": [link.status() for link in self.workers.values()],
        }
