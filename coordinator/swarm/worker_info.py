"""What the coordinator knows of one worker tab: what it said of itself (hello), what it
holds and was assigned, and what it measured (stats).

A plain dataclass that updates itself from the tab's control messages; the state and the
assigned stage are written by the cluster only (`worker_lifecycle`). No I/O.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from coordinator.swarm.capacity import MAX_TAB_MEMORY_MB
from coordinator.swarm.planner import Stage
from coordinator.swarm.time_breakdown import (
    TabPasses,
    TimeTotals,
    parse_tab_passes,
    parse_tab_timing,
)
from coordinator.swarm.worker_lifecycle import WorkerState
from protocol.control import Hello, Ready, Stats


@dataclass
class WorkerInfo:
    """What a worker told us about itself (hello) and what it is doing."""

    name: str = ""
    backend: str = "?"
    threads: int = 1
    benchmark_ms: float = 0.0
    memory_mb: float | None = None       # what it offered to hold (hello; at most 4 GiB)
    heap_mb: float | None = None         # its JS heap after its last load (ready)
    memory_used_mb: float | None = None  # what the browser measured the page using (stats)
    memory_used_at: float | None = None  # when that measurement arrived (monotonic)
    allocation_cap: int | None = None    # it ran out of memory holding this many layers
    agent: str = ""
    page: dict[str, bool] = field(default_factory=dict)   # secure_context, webgpu_api, cache_storage
    state: WorkerState = WorkerState.JOINING   # written by the cluster only (worker_lifecycle)
    role: str = "idle"             # stage | standby | idle
    stage: Stage | None = None     # the layers it was assigned (its stage or its replica)
    holds: frozenset[int] = frozenset()   # layers it reported loaded and still keeps
    load_ms: float | None = None
    cached: bool | None = None
    downloaded_bytes: int | None = None   # shard bytes its last load fetched from the network
    weight_bytes: int | None = None       # float32 weight bytes its sessions hold
    progress: tuple[int, int] | None = None
    tokens: int = 0
    compute_ms: float = 0.0
    timing: TimeTotals | None = None     # where its step time went, as it reports (stats.timing)
    passes: TabPasses | None = None      # its batched passes and the streams they held (stats.batching)
    last_seen: float = field(default_factory=time.monotonic)
    joined: float = field(default_factory=time.time)

    def apply_hello(self, hello: Hello, worker_id: str) -> None:
        """What the tab says of itself when it joins (memory offered: at most 4 GiB)."""
        self.name = hello.worker or worker_id
        self.backend = hello.backend
        self.threads = hello.threads
        self.benchmark_ms = float(hello.benchmark_ms)
        self.memory_mb = min(float(hello.memory_mb), MAX_TAB_MEMORY_MB) if hello.memory_mb else None
        self.agent = (hello.agent or "")[:200]
        self.page = {name: value for name in ("secure_context", "webgpu_api", "cache_storage")
                     if (value := getattr(hello, name)) is not None}

    def apply_ready(self, message: Ready) -> None:
        """It holds layers [layer_start, layer_end) now, as well as what it held."""
        self.holds = self.holds | frozenset(range(message.layer_start, message.layer_end))
        self.load_ms = float(message.load_ms)
        self.cached = message.cached
        self.downloaded_bytes = message.downloaded_bytes
        self.weight_bytes = message.weight_bytes
        self.heap_mb = message.memory_mb
        self.progress = None

    def apply_stats(self, message: Stats) -> None:
        """What the tab has served and measured (its `stats` message)."""
        self.tokens = message.tokens
        self.compute_ms = float(message.compute_ms)
        if message.memory_used_mb is not None:
            self.memory_used_mb = float(message.memory_used_mb)
            self.memory_used_at = time.monotonic()
        if (timing := parse_tab_timing(message.timing)) is not None:
            self.timing = timing
        if (passes := parse_tab_passes(message.batching)) is not None:
            self.passes = passes
