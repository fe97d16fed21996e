"""How long a worker's step should take, from the steps it has served. Pure.

A frozen tab (Chrome's Energy Saver, a locked phone) keeps its socket open and answers
nothing, so heartbeats alone notice it only after several intervals. The bound here
notices it at the first late step: once a worker has served a few one-row steps, a step
of `rows` rows that takes longer than `factor` times the expected time (never less than
`floor_seconds`) counts as a stall. Before that, `initial_seconds` applies (first steps
include session warm-up). Multi-row steps are assumed to cost at most `rows` one-row
steps (prefill is cheaper per row than decode), so the bound errs long.

A tab runs the frames waiting together as one pass, one pass at a time, so with several
streams a step also waits for the rows sent to the same tab before it: the bound counts
those (`queued`), and the estimate learns only from steps that waited behind nothing and
shared their pass with nothing sent after them. Measured with 16 concurrent streams
through 2 tabs (bench/concurrency.py): timing every step made a tab's estimate include the
queue, so its measured speed fell, the planner moved the boundary, and one step queued
behind 15 others outlived the 3 s bound and evicted an honest tab.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

# Upper bounds (seconds) of a worker's step-time histogram (/metrics): a WASM layer is
# ~1 ms, a 30-layer tab ~20-40 ms per row, a long prefill seconds.
STEP_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


@dataclass(frozen=True)
class StallPolicy:
    floor_seconds: float = 3.0
    factor: float = 30.0
    initial_seconds: float = 30.0
    warm_samples: int = 3
    smoothing: float = 0.2          # EMA weight of the newest one-row step


@dataclass
class StepTimer:
    """One worker's running estimate of a one-row step's time."""

    policy: StallPolicy
    one_row_seconds: float | None = None
    samples: int = 0

    def observe(self, rows: int, seconds: float, queued: int = 0) -> None:
        """A step of `rows` rows took `seconds`, sent when `queued` rows were still unanswered
        on the same worker (only one-row steps that waited behind nothing teach the estimate)."""
        if rows != 1 or queued:
            return
        self.samples += 1
        if self.one_row_seconds is None:
            self.one_row_seconds = seconds
        else:
            weight = self.policy.smoothing
            self.one_row_seconds = (1 - weight) * self.one_row_seconds + weight * seconds

    def bound(self, rows: int, queued: int = 0) -> float:
        """Seconds after which a step of `rows` rows, sent behind `queued` unanswered rows on
        the same worker, counts as stalled."""
        if self.one_row_seconds is None or self.samples < self.policy.warm_samples:
            return self.policy.initial_seconds
        return max(self.policy.floor_seconds, self.policy.factor * self.one_row_seconds * max(rows + queued, 1))


@dataclass
class StepHistogram:
    """Counts of one worker's step times by bucket (cumulative form is built at scrape
    time); kept on the worker's link, so it leaves with the worker."""

    bounds: tuple[float, ...] = STEP_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(STEP_BUCKETS) + 1))   # last: +Inf
    total_seconds: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total_seconds += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """[(upper bound as text, steps at or under it)], ending with ('+Inf', all)."""
        running, buckets = 0, []
        for bound, count in zip((*[str(b) for b in self.bounds], "+Inf"), self.counts, strict=True):
            running += count
            buckets.append((bound, running))
        return buckets
