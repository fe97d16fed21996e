"""Where a step's time goes: totals of seconds by part, split into one-row steps
("decode") and multi-row steps ("prefill"). Pure data, no clocks of its own.

Two sides fill it. The engine adds the coordinator's parts of every step it executes:
`embed` (token rows), `encode` (the frame to the first stage), `relay` (its own work per hop:
routing header, recording, checks), `stage_wait` (from sending a stage its frame to its
RESULT, over all stages), `decode` (the last stage's frame), `head` and `sample`. Each tab
reports, in its `stats` message, its cumulative `decode` (the incoming frame), `layers`
(its onnxruntime sessions) and `encode` (the RESULT), with the steps and rows they served;
`parse_tab_timing` reads that. The WebSocket hop and queueing is what a stage's wait holds
beyond the tab's own parts: `hop_ms` says so. /metrics, /v1/status and
bench/time_breakdown.py read these totals; differences of two snapshots give a window's
per-step figures (`per_step_ms`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

KINDS = ("decode", "prefill")
COORDINATOR_PARTS = ("embed", "encode", "relay", "stage_wait", "decode", "head", "sample")
TAB_PARTS = ("decode", "layers", "encode")


def kind_of(rows: int) -> str:
    """A one-row step is a decode step (what a generated token costs); more rows, a prefill."""
    return "decode" if rows == 1 else "prefill"


@dataclass
class KindTotals:
    steps: int = 0
    rows: int = 0
    seconds: dict[str, float] = field(default_factory=dict)   # part -> seconds

    def as_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "rows": self.rows,
                "ms": {part: round(seconds * 1000, 3) for part, seconds in self.seconds.items()}}


@dataclass
class TimeTotals:
    """Cumulative seconds by kind of step and part."""

    kinds: dict[str, KindTotals] = field(default_factory=lambda: {kind: KindTotals() for kind in KINDS})

    def step(self, rows: int) -> None:
        totals = self.kinds[kind_of(rows)]
        totals.steps += 1
        totals.rows += rows

    def add(self, rows: int, part: str, seconds: float) -> None:
        parts = self.kinds[kind_of(rows)].seconds
        parts[part] = parts.get(part, 0.0) + seconds

    def as_dict(self) -> dict[str, Any]:
        return {kind: totals.as_dict() for kind, totals in self.kinds.items()}


def parse_tab_timing(message: Any) -> TimeTotals | None:
    """A tab's `stats.timing` ({kind: {steps, rows, ms: {part: ms}}}), or None when it is
    missing or malformed (an older or lying tab: its timing is simply not shown)."""
    if not isinstance(message, dict):
        return None
    totals = TimeTotals()
    for kind in KINDS:
        entry = message.get(kind)
        if not isinstance(entry, dict) or not isinstance(entry.get("ms"), dict):
            return None
        steps, rows = entry.get("steps"), entry.get("rows")
        if not isinstance(steps, int) or not isinstance(rows, int) or steps < 0 or rows < 0:
            return None
        target = totals.kinds[kind]
        target.steps, target.rows = steps, rows
        for part in TAB_PARTS:
            value = entry["ms"].get(part, 0.0)
            if not isinstance(value, int | float) or value < 0:
                return None
            target.seconds[part] = float(value) / 1000
    return totals


@dataclass(frozen=True)
class TabPasses:
    """What a tab's `stats.batching` says: the passes it ran and the frames (streams) they held."""

    passes: int
    frames: int
    largest: int

    @property
    def streams_per_pass(self) -> float:
        return self.frames / self.passes if self.passes else 0.0


def parse_tab_passes(message: Any) -> TabPasses | None:
    """A tab's `stats.batching` ({passes, frames, largest}), or None when missing or malformed."""
    if not isinstance(message, dict):
        return None
    values = [message.get(name) for name in ("passes", "frames", "largest")]
    counts = [value for value in values if isinstance(value, int) and not isinstance(value, bool) and value >= 0]
    if len(counts) != len(values):
        return None
    passes, frames, largest = counts
    if frames < passes or largest > frames:
        return None
    return TabPasses(passes, frames, largest)


def per_step_ms(before: dict[str, Any], after: dict[str, Any], kind: str = "decode") -> dict[str, Any]:
    """Per-step ms of each part between two snapshots (`TimeTotals.as_dict()` form)."""
    old, new = before.get(kind, {}), after.get(kind, {})
    steps = new.get("steps", 0) - old.get("steps", 0)
    rows = new.get("rows", 0) - old.get("rows", 0)
    parts = {part: (ms - old.get("ms", {}).get(part, 0.0)) / steps
             for part, ms in new.get("ms", {}).items()} if steps > 0 else {}
    return {"steps": steps, "rows": rows, "ms": {part: round(ms, 3) for part, ms in parts.items()}}


def hop_ms(stage_wait_ms: float, tabs: list[dict[str, Any]]) -> float:
    """What waiting on the stages cost beyond the tabs' own decode, layers and encode: the
    WebSocket hops both ways, the tabs' message queues and the event loops."""
    return round(stage_wait_ms - sum(sum(tab["ms"].get(part, 0.0) for part in TAB_PARTS) for tab in tabs), 3)
