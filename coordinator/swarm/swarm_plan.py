"""The swarm plan: which workers serve as pipeline stages and which stand by. Pure.

Builds on `planner.plan_layers` (contiguous ranges by speed, capped by memory) and adds
the two things churn needs:

- **Standbys.** With at least `standby + 2` workers, `standby` of them are kept out of
  the pipeline and load a replica instead: the whole model when their memory allows
  (so one standby can replace any stage at once), else the largest stage range they can
  hold. A pipeline of two stages loses nothing by it on this model: single-stream
  decode does not get faster with more stages (measured 18.5 tok/s on 2 tabs, 18.4 on 3).
- **What is already loaded.** If the current stages can go on as they are — each still
  on its worker, or a lost one's range held by a spare worker (a standby) — they are
  kept: stage boundaries do not move, so a lost stage can be rebuilt exactly and the
  int8 codec quantizes where it did. Otherwise, among the layouts that give the same
  stage sizes, the plan picks the one that makes workers load the fewest layers they do
  not hold yet.

It never touches sockets or files.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass

from coordinator.swarm.planner import PlanError, Stage, WorkerCapacity, plan_layers

# Above this many workers the layout search (ordered choices of stage workers) is skipped
# and workers take stages in join order.
SEARCH_LIMIT = 6


@dataclass(frozen=True)
class SwarmPlan:
    stages: tuple[Stage, ...]       # the pipeline, in layer order
    standbys: tuple[Stage, ...] = ()   # replicas: a worker and the layers it keeps loaded

    def range_of(self, worker: str) -> Stage | None:
        """The layers this worker should hold (its stage, or its replica)."""
        for stage in (*self.stages, *self.standbys):
            if stage.worker == worker:
                return stage
        return None


def missing_layers(stage: Stage, holdings: Mapping[str, frozenset[int]]) -> int:
    held = holdings.get(stage.worker, frozenset())
    return sum(1 for layer in range(stage.layer_start, stage.layer_end) if layer not in held)


def replica_for(layers: int, capacity: WorkerCapacity, stages: tuple[Stage, ...]) -> Stage | None:
    """What a standby keeps loaded: the whole model if it fits, else the largest stage that does."""
    if capacity.max_layers >= layers:
        return Stage(capacity.worker, 0, layers)
    fitting = [stage for stage in stages if stage.size <= capacity.max_layers]
    if not fitting:
        return None
    largest = max(fitting, key=lambda stage: stage.size)
    return Stage(capacity.worker, largest.layer_start, largest.layer_end)


def plan_swarm(layers: int, workers: list[WorkerCapacity], holdings: Mapping[str, frozenset[int]],
               standby: int, current: tuple[Stage, ...] = ()) -> SwarmPlan:
    """Stages and standbys for `workers` (in join order); raises PlanError if none exists."""
    if not workers:
        raise PlanError("no ready workers")
    stage_count = len(workers) - standby if standby and len(workers) - standby >= 2 else len(workers)
    kept = _keep_current(current, workers, holdings, stage_count)
    if kept is not None:
        used = {stage.worker for stage in kept}
        return SwarmPlan(kept, tuple(replica for worker in workers if worker.worker not in used
                                     if (replica := replica_for(layers, worker, kept)) is not None))
    last_error: PlanError | None = None
    for count in range(stage_count, len(workers) + 1):   # fewer standbys if memory demands it
        try:
            return _best_layout(layers, workers, holdings, count)
        except PlanError as error:
            last_error = error
    assert last_error is not None
    raise last_error


def _keep_current(current: tuple[Stage, ...], workers: list[WorkerCapacity],
                  holdings: Mapping[str, frozenset[int]], count: int) -> tuple[Stage, ...] | None:
    """The current stages, a lost worker's replaced by a spare that already holds its range."""
    if not current or len(current) != count:
        return None
    present = {worker.worker: worker for worker in workers}
    staged = {stage.worker for stage in current if stage.worker in present}
    spares = [worker for worker in workers if worker.worker not in staged]
    kept = []
    for stage in current:
        if stage.worker in present:
            kept.append(stage)
            continue
        cover = next((spare for spare in spares if spare.max_layers >= stage.size
                      and missing_layers(Stage(spare.worker, stage.layer_start, stage.layer_end), holdings) == 0),
                     None)
        if cover is None:
            return None
        spares.remove(cover)
        kept.append(Stage(cover.worker, stage.layer_start, stage.layer_end))
    return tuple(kept)


def _best_layout(layers: int, workers: list[WorkerCapacity], holdings: Mapping[str, frozenset[int]],
                 count: int) -> SwarmPlan:
    order = {worker.worker: index for index, worker in enumerate(workers)}
    if len(workers) > SEARCH_LIMIT:
        choices: list[tuple[WorkerCapacity, ...]] = [tuple(workers[:count])]
    else:
        choices = list(itertools.permutations(workers, count))
    best: tuple[tuple, SwarmPlan] | None = None
    error: PlanError | None = None
    for chosen in choices:
        try:
            stages = plan_layers(layers, list(chosen))
        except PlanError as failure:
            error = failure
            continue
        used = {stage.worker for stage in stages}
        standbys = tuple(replica for worker in workers if worker.worker not in used
                         if (replica := replica_for(layers, worker, stages)) is not None)
        cost = (sum(missing_layers(stage, holdings) for stage in stages),
                sum(missing_layers(replica, holdings) for replica in standbys),
                -sum(worker.speed for worker in chosen),
                tuple(order[stage.worker] for stage in stages))
        if best is None or cost < best[0]:
            best = (cost, SwarmPlan(stages, standbys))
    if best is None:
        raise error or PlanError("no plan")
    return best[1]
