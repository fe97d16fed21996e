"""What the cluster shows people: the memory placement (what the tabs present offer and
can hold) and the status block of `/v1/status` (plans, standbys, workers, recent events).

Read-only views of a `Cluster`; they change nothing and send nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from coordinator.swarm.capacity import MAX_TAB_MEMORY_MB, capacities, shortfall

if TYPE_CHECKING:
    from coordinator.swarm.cluster import Cluster


def placement_report(cluster: Cluster) -> dict[str, Any]:
    """The memory model and what the workers present can hold (status page, /health)."""
    workers = [link for link in cluster.workers.values() if not link.closed]
    facts = cluster.facts(workers)
    layers = cluster.manifest.model.layers
    footprint = cluster.footprint
    capacity = {entry.worker: entry.max_layers for entry in capacities(facts, layers, footprint)} if facts else {}
    return {"compute": cluster.compute, "layer_mb": round(footprint.layer_mb, 1),
            "tab_overhead_mb": round(footprint.overhead_mb, 1),
            "offered_mb": round(sum(min(link.info.memory_mb or 0, MAX_TAB_MEMORY_MB) for link in workers)),
            "holdable_layers": min(sum(capacity.values()), layers),
            "max_layers": capacity,
            "shortfall": shortfall(facts, layers, footprint) if facts else None}


def cluster_status(cluster: Cluster) -> dict[str, Any]:
    """The cluster's part of `/v1/status`."""
    return {
        "plan_version": cluster.plan_version,
        "plan": [{"worker": s.worker, "layers": [s.layer_start, s.layer_end]} for s in cluster.plan],
        "target": [{"worker": s.worker, "layers": [s.layer_start, s.layer_end]} for s in cluster.target.stages],
        "standbys": [{"worker": s.worker, "layers": [s.layer_start, s.layer_end],
                      "ready": (link := cluster.workers.get(s.worker)) is not None and link.holds(s)}
                     for s in cluster.target.standbys],
        "plan_error": cluster.plan_error,
        "ready": cluster.pipeline() is not None,
        "replan_pending": cluster.target.stages != cluster.plan,
        "workers": [link.status() for link in cluster.workers.values()],
        "placement": placement_report(cluster),
        "events": cluster.events.recent[-20:],
    }
