"""The type a request runs on: the active stages, in order, each with the link to its tab.

A leaf of the swarm package (the engine's sessions and the cluster both name it); no I/O.
"""

from __future__ import annotations

from coordinator.swarm.planner import Stage
from coordinator.swarm.worker_link import WorkerLink

Pipeline = list[tuple[Stage, WorkerLink]]
