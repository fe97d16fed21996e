"""The planner: which worker holds which contiguous layer range. Pure: state in, plan out.

Layers are split in proportion to each worker's measured speed, never giving a worker
more layers than it can hold. It never touches sockets or files.
"""

from __future__ import annotations

from dataclasses import dataclass


class PlanError(ValueError):
    """No plan exists (no workers, or they cannot hold every layer together)."""


@dataclass(frozen=True)
class WorkerCapacity:
    worker: str
    speed: float        # relative throughput, e.g. 1 / (measured ms per layer)
    max_layers: int     # how many layers it can hold (memory)


@dataclass(frozen=True)
class Stage:
    worker: str
    layer_start: int
    layer_end: int

    @property
    def size(self) -> int:
        return self.layer_end - self.layer_start


def plan_layers(layers: int, workers: list[WorkerCapacity]) -> tuple[Stage, ...]:
    """Contiguous stages covering [0, layers), in the workers' given order.

    Shares follow speed (largest-remainder rounding), then are capped by max_layers with
    the overflow moved to workers that still have room. Workers beyond the number of
    layers, or with no room, get no stage.
    """
    usable = [worker for worker in workers if worker.max_layers > 0 and worker.speed > 0]
    if not usable:
        raise PlanError("no ready workers")
    if sum(worker.max_layers for worker in usable) < layers:
        raise PlanError(f"the ready workers can hold {sum(w.max_layers for w in usable)} layers, the model has {layers}")
    if len(usable) > layers:  # more workers than layers: keep the fastest, in their order
        fastest = sorted(usable, key=lambda worker: -worker.speed)[:layers]
        usable = [worker for worker in usable if worker in fastest]
    total_speed = sum(worker.speed for worker in usable)
    exact = [layers * worker.speed / total_speed for worker in usable]
    counts = [max(1, int(share)) for share in exact]
    while sum(counts) > layers:  # the max(1, …) floor can overshoot
        index = max(range(len(counts)), key=lambda i: counts[i] - exact[i])
        counts[index] -= 1
    by_remainder = sorted(range(len(usable)), key=lambda i: counts[i] - exact[i])
    for index in by_remainder[: layers - sum(counts)]:
        counts[index] += 1
    counts = _respect_capacity(counts, [worker.max_layers for worker in usable], exact)
    stages, start = [], 0
    for worker, count in zip(usable, counts, strict=True):
        if count:
            stages.append(Stage(worker.worker, start, start + count))
            start += count
    return tuple(stages)


def _respect_capacity(counts: list[int], limits: list[int], exact: list[float]) -> list[int]:
    counts = list(counts)
    overflow = 0
    for index, limit in enumerate(limits):
        if counts[index] > limit:
            overflow += counts[index] - limit
            counts[index] = limit
    while overflow:
        room = [i for i in range(len(counts)) if counts[i] < limits[i]]
        index = max(room, key=lambda i: exact[i] - counts[i])
        counts[index] += 1
        overflow -= 1
    return counts


def even_stages(layers: int, nodes: int) -> tuple[Stage, ...]:
    """Equal-speed plan for `nodes` anonymous nodes (benchmarks, simulations)."""
    return plan_layers(layers, [WorkerCapacity(f"node-{i}", 1.0, layers) for i in range(nodes)])
