"""One request's observations, fed to the dashboard's activity log and to Prometheus.

Owns the mapping from what the HTTP layer sees (arrival, each token reaching the client,
the end and how it ended) to `activity.ActivityLog` records and `metrics.RequestMetrics`
instruments. With metrics off (`--no-metrics`) only the activity log is kept. No I/O.
"""

from __future__ import annotations

import asyncio
import time

from coordinator.api.activity import ActivityLog, RequestRecord
from coordinator.api.metrics import RequestMetrics
from coordinator.engine.session import HopStats
from coordinator.types import ApiError


def outcome_of(error: BaseException) -> tuple[str, int]:
    """(outcome, HTTP status) of a request that ended by this exception."""
    if isinstance(error, ApiError):
        if error.status == 429:
            return "rejected", 429
        return ("failed" if error.status >= 500 else "client_error"), error.status
    if isinstance(error, asyncio.CancelledError | ConnectionResetError):
        return "cancelled", 499   # the client went away (nginx's convention for the status)
    return "failed", 500


class RequestWatch:
    def __init__(self, activity: ActivityLog, metrics: RequestMetrics | None) -> None:
        self.activity, self.metrics = activity, metrics

    def refused(self, endpoint: str, error: ApiError, arrived: float) -> None:
        """Bad input answered before any generation (no record: nothing ran)."""
        if self.metrics is not None:
            outcome, status = outcome_of(error)
            self.metrics.finished(endpoint, outcome, status, time.monotonic() - arrived, 0, 0, None)

    def open(self, endpoint: str, arrived: float, prompt_tokens: int, max_tokens: int, stream: bool,
             stats: HopStats) -> RequestRecord:
        return self.activity.open(endpoint, time.time(), arrived, prompt_tokens, max_tokens, stream, stats)

    def token(self, record: RequestRecord) -> None:
        now = time.monotonic()
        gap = self.activity.token(record, now)
        if self.metrics is None:
            return
        if gap is None:
            self.metrics.first_token.observe(now - record.arrived_monotonic)
        else:
            self.metrics.inter_token.observe(gap)

    def close(self, record: RequestRecord, outcome: str, status: int, stats: HopStats) -> None:
        now = time.monotonic()
        self.activity.close(record, outcome, status, now)
        if self.metrics is not None:
            self.metrics.finished(record.endpoint, outcome, status, now - record.arrived_monotonic,
                                  record.prompt_tokens, record.completion_tokens, stats)
