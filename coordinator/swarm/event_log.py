"""The cluster's events (joins, losses, evictions, replans, plans activated), as people and
metrics see them: the last 100 kept for the status page, a count of each kind since start
for `/metrics`, and listeners called with each (the serve command's console lines).

Plain data; it decides nothing and sends nothing.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

KEPT = 100


class EventLog:
    def __init__(self) -> None:
        self.recent: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()
        self.listeners: list[Callable[[dict[str, Any]], None]] = []

    def record(self, kind: str, **details: Any) -> None:
        self.counts[kind] += 1
        event = {"time": round(time.time(), 3), "event": kind, **details}
        self.recent.append(event)
        del self.recent[:-KEPT]
        for listener in self.listeners:
            listener(event)
