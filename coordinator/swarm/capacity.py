"""How many layers each worker may hold, and how fast it is: planner input from facts. Pure.

Owns turning what the coordinator knows of each worker (its benchmark claim, its measured
step time, the memory it offered, the layers it holds, an allocation it failed) into the
planner's `WorkerCapacity`, saying in words what is missing when the workers present
cannot hold the model, and the placement report people see (status page, /health).
Memory: a worker is given no more layers than fit in what it offered (`shards.footprint`),
never more than it managed to allocate after an out-of-memory, and never fewer than it
already holds (holding them proves it can): a tab on probation joining cannot shrink a
proven tab's capacity below what it serves. Speed: see `capacities`.
Never touches sockets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from coordinator.swarm.planner import WorkerCapacity
from shards.footprint import TabFootprint

MAX_TAB_MEMORY_MB = 4096       # wasm32 addresses 4 GiB: a larger claim is not believed


@dataclass(frozen=True)
class WorkerFacts:
    worker: str
    benchmark_ms: float                  # its own claim (a prior only)
    measured_ms_per_layer: float | None  # once it has served enough one-row steps
    memory_mb: float | None              # what it offered (None: no limit stated)
    held_layers: int = 0                 # layers it reported loaded and still keeps
    allocation_cap: int | None = None    # layers it held when an allocation failed


def max_layers(facts: WorkerFacts, layers: int, footprint: TabFootprint) -> int:
    """The most layers this worker may be given."""
    limit = layers
    if facts.memory_mb:
        limit = min(limit, footprint.layers_within(min(facts.memory_mb, MAX_TAB_MEMORY_MB)))
    if facts.allocation_cap is not None:
        limit = min(limit, facts.allocation_cap)
    return max(limit, min(facts.held_layers, layers))


def capacities(workers: list[WorkerFacts], layers: int, footprint: TabFootprint) -> list[WorkerCapacity]:
    """Planner input, from what the coordinator measured rather than what tabs claim.

    A worker with a measured step time is timed: its speed is layers per second of it. Until
    then its own benchmark is only a prior, converted to the proven workers' scale and never
    faster than the fastest of them (or, with none proven yet, than the median claim):
    claiming to be fast buys a newcomer no more than an equal share. Speeds are snapped to
    powers of two, which is also the hysteresis: measurement noise within 1.4x moves nothing.
    """
    measured = {facts.worker: facts.measured_ms_per_layer for facts in workers
                if facts.measured_ms_per_layer is not None}
    claims = sorted(max(facts.benchmark_ms, 0.01) for facts in workers)
    ratios = sorted(measured[facts.worker] / max(facts.benchmark_ms, 0.01) for facts in workers
                    if facts.worker in measured)
    ms_per_layer: dict[str, float] = {}
    for facts in workers:
        if facts.worker in measured:
            ms_per_layer[facts.worker] = measured[facts.worker]
        elif ratios:
            prior = max(facts.benchmark_ms, 0.01) * ratios[len(ratios) // 2]
            ms_per_layer[facts.worker] = max(prior, min(measured.values()))
        else:
            ms_per_layer[facts.worker] = max(facts.benchmark_ms, claims[len(claims) // 2])
    fastest = min(ms_per_layer.values(), default=1.0)
    return [WorkerCapacity(facts.worker, 2.0 ** round(math.log2(fastest / ms_per_layer[facts.worker])),
                           max_layers(facts, layers, footprint)) for facts in workers]


def speed_replan_due(checks_changed: int, streams_running: int, idle_checks: int, busy_checks: int) -> bool:
    """Whether measured speeds that differ from the plan's have lasted long enough to replan.

    A replan that moves a boundary moves every running stream to the new plan, and each
    replays its history as one prefill there; under load, measured speeds also wander
    (tabs and the coordinator share the cores). Measured with 16 streams through 2 tabs
    (bench/results/concurrency.json): on two checks in a row the cut went 15 -> 10 -> 20 ->
    15 -> 10 and 49 running streams were moved. So while streams run, a change must last
    `busy_checks` heartbeats; idle, `idle_checks`."""
    return checks_changed >= (busy_checks if streams_running else idle_checks)


def shortfall(workers: list[WorkerFacts], layers: int, footprint: TabFootprint) -> str | None:
    """None when the workers together can hold every layer; else what is missing, in words."""
    holdable = sum(max_layers(facts, layers, footprint) for facts in workers)
    if holdable >= layers:
        return None
    missing = layers - holdable
    more = math.ceil(missing * footprint.layer_mb)
    tab = math.ceil(footprint.needed_mb(missing))
    offered = sum(min(facts.memory_mb or 0, MAX_TAB_MEMORY_MB) for facts in workers)
    return (f"the {len(workers)} tab(s) present offer {offered:.0f} MB and can hold {holdable} of the model's "
            f"{layers} layers (~{footprint.layer_mb:.0f} MB per layer here): needs ≈ {more} MB more: open another "
            f"tab (one offering at least {tab} MB holds the rest), or open the tabs with a larger ?memory=")


def placement_report(facts: list[WorkerFacts], layers: int, footprint: TabFootprint, compute: str) -> dict[str, Any]:
    """The memory model and what the workers present (`facts`) can hold: status page, /health."""
    capacity = {entry.worker: entry.max_layers for entry in capacities(facts, layers, footprint)} if facts else {}
    return {"compute": compute, "layer_mb": round(footprint.layer_mb, 1),
            "tab_overhead_mb": round(footprint.overhead_mb, 1),
            "offered_mb": round(sum(min(entry.memory_mb or 0, MAX_TAB_MEMORY_MB) for entry in facts)),
            "holdable_layers": min(sum(capacity.values()), layers),
            "max_layers": capacity,
            "shortfall": shortfall(facts, layers, footprint) if facts else None}
