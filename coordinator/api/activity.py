"""What the dashboard shows besides the cluster: recent requests and a throughput series.

Owns plain data: a `RequestRecord` per request (running or finished, with its live usage), the
last `keep_requests` of them, and one sample per second of tokens/s and mean inter-token
latency. Pure: the caller passes the clock readings; no I/O, no Prometheus (the HTTP
layer feeds both this and `metrics.RequestMetrics` from the same observations).
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from coordinator.engine.session import HopStats


@dataclass
class RequestRecord:
    id: int
    endpoint: str                  # chat | completions
    arrived: float                 # wall clock (time.time())
    arrived_monotonic: float
    prompt_tokens: int
    max_tokens: int
    stream: bool
    state: str = "running"         # running -> done | failed | rejected | cancelled
    status: int | None = None
    completion_tokens: int = 0
    first_token_seconds: float | None = None
    seconds: float | None = None
    last_token_monotonic: float | None = None
    stats: HopStats | None = None  # the request's accounting, live while it runs

    def view(self) -> dict[str, Any]:
        view = asdict(self)
        del view["arrived_monotonic"], view["last_token_monotonic"], view["stats"]
        view["usage"] = usage_summary(self.stats) if self.stats is not None else {}
        return view


def usage_summary(stats: HopStats) -> dict[str, Any]:
    """The part of `usage.tabswarm` the dashboard lists per request."""
    return {"stages": stats.stages, "hops": stats.hops, "bytes_sent": stats.bytes_sent,
            "bytes_received": stats.bytes_received, "layers_skipped": stats.layers_skipped,
            "nodes_bypassed": stats.nodes_bypassed, "replays": stats.replays, "moves": stats.moves,
            "speculation": stats.speculation, "drafted": stats.drafted, "accepted": stats.accepted}


class ActivityLog:
    """Recent requests and per-second samples (bounded deques)."""

    def __init__(self, keep_requests: int = 20, keep_seconds: int = 120) -> None:
        self.requests: deque[RequestRecord] = deque(maxlen=keep_requests)
        self.samples: deque[dict[str, Any]] = deque(maxlen=keep_seconds)
        self._ids = itertools.count(1)
        self._gap_seconds = 0.0       # inter-token gaps since the last sample
        self._gaps = 0
        self._last_tokens: int | None = None
        self._last_time: float | None = None

    def open(self, endpoint: str, now: float, monotonic: float, prompt_tokens: int, max_tokens: int,
             stream: bool, stats: HopStats | None = None) -> RequestRecord:
        record = RequestRecord(next(self._ids), endpoint, now, monotonic, prompt_tokens, max_tokens, stream,
                               stats=stats)
        self.requests.append(record)
        return record

    def token(self, record: RequestRecord, monotonic: float) -> float | None:
        """A token reached the client: its gap since the previous one (None for the first,
        whose time to first token is recorded instead)."""
        record.completion_tokens += 1
        previous, record.last_token_monotonic = record.last_token_monotonic, monotonic
        if previous is None:
            record.first_token_seconds = round(monotonic - record.arrived_monotonic, 4)
            return None
        gap = monotonic - previous
        self._gap_seconds += gap
        self._gaps += 1
        return gap

    @staticmethod
    def close(record: RequestRecord, state: str, status: int, monotonic: float) -> None:
        record.state, record.status = state, status
        record.seconds = round(monotonic - record.arrived_monotonic, 4)

    def sample(self, now: float, tokens_generated: int) -> None:
        """One point of the throughput series: tokens/s since the previous sample and the
        mean inter-token gap (ms) of the tokens sent in between (None if there were none)."""
        if self._last_time is not None and self._last_tokens is not None and now > self._last_time:
            rate = (tokens_generated - self._last_tokens) / (now - self._last_time)
            mean_ms = 1000 * self._gap_seconds / self._gaps if self._gaps else None
            self.samples.append({"time": round(now, 3), "tokens_per_second": round(rate, 2),
                                 "token_ms": round(mean_ms, 2) if mean_ms is not None else None})
        self._last_time, self._last_tokens = now, tokens_generated
        self._gap_seconds, self._gaps = 0.0, 0

    def view(self) -> dict[str, Any]:
        return {"requests": [record.view() for record in reversed(self.requests)], "series": list(self.samples)}
