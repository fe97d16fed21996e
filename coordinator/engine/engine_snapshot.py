"""One frozen view of the engine's counters, built once per read of `/v1/status`,
`/metrics` or the dashboard, so that those three show the same numbers and none of them
reaches into the engine's working state (spot-check bookkeeping, router statistics, step
costs).

Pure: `EngineSnapshot.of(engine)` copies; nothing here is written after it is built, and
nothing here does I/O.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from coordinator.swarm.time_breakdown import TimeTotals

if TYPE_CHECKING:
    from coordinator.engine.generation import GenerationEngine


@dataclass(frozen=True)
class CheckView:
    passed: int
    failed: int
    skipped_busy: int
    skipped_budget: int
    audits: int
    rows: int
    seconds: float
    worst_passed: float
    evicted: tuple[str, ...]


@dataclass(frozen=True)
class EngineSnapshot:
    tokens_generated: int
    replays: int
    moves: int
    failures: int
    timing: TimeTotals                   # the coordinator's parts of every step (a copy)
    checks: CheckView
    one_row_step: float | None           # seconds (drafting decisions' measured costs)
    extra_verified_row: float | None
    draft_step: float | None
    skipped_per_layer: tuple[int, ...]
    executed_per_layer: tuple[int, ...]
    mean_ratio_per_layer: tuple[float, ...]
    head_samples_per_layer: tuple[int, ...]

    @classmethod
    def of(cls, engine: GenerationEngine) -> EngineSnapshot:
        counters, costs, layers = engine.spot_checks.counters, engine.step_costs, engine.layer_statistics
        return cls(
            tokens_generated=engine.tokens_generated, replays=engine.replays_total, moves=engine.moves_total,
            failures=engine.failures_total, timing=copy.deepcopy(engine.timing),
            checks=CheckView(counters.passed, counters.failed, counters.skipped_busy, counters.skipped_budget,
                             counters.audits, counters.rows, counters.seconds, counters.worst_passed,
                             tuple(counters.evicted[-20:])),
            one_row_step=costs.one_row, extra_verified_row=costs.extra_row, draft_step=costs.draft_step,
            skipped_per_layer=tuple(layers.skipped), executed_per_layer=tuple(layers.executed),
            mean_ratio_per_layer=tuple(layers.mean_r), head_samples_per_layer=tuple(engine.head_statistics.count))

    def skip_rates(self) -> list[float | None]:
        return [round(skipped / (skipped + executed), 4) if skipped + executed else None
                for skipped, executed in zip(self.skipped_per_layer, self.executed_per_layer, strict=True)]

    def verification(self) -> dict[str, Any]:
        checks = self.checks
        return {"passed": checks.passed, "failed": checks.failed, "skipped_busy": checks.skipped_busy,
                "skipped_budget": checks.skipped_budget, "audits": checks.audits, "rows_recomputed": checks.rows,
                "cpu_seconds": round(checks.seconds, 3), "worst_passed_ratio": round(checks.worst_passed, 4),
                "evicted": list(checks.evicted)}
