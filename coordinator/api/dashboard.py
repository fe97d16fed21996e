"""The live dashboard: its page, the server-sent event stream that feeds it, the sampler.

Owns I/O only: `/dashboard` serves the page (plain HTML and modules from
`coordinator/web/`, no build step), `/v1/dashboard/stream` sends one JSON snapshot per
interval (the status report, the pipeline in layer order, recent requests, the
throughput series) until the client goes, and `sample_loop` adds one point per second to
the activity log. What a snapshot contains is decided by `snapshot` (pure over the
status report and the activity log); nothing here touches workers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from coordinator.api.activity import ActivityLog
from coordinator.api.static_files import WEB_DIR

log = logging.getLogger(__name__)


def pipeline_view(status: dict[str, Any]) -> list[dict[str, Any]]:
    """Every connected tab in layer order (stages first by their first layer, then
    standbys, then tabs holding nothing), each with its role in the active plan."""
    active = {entry["worker"] for entry in status["plan"]}

    def order(worker: dict[str, Any]) -> tuple[int, int, str]:
        layers = worker["layers"] or [10**9, 10**9]
        rank = 0 if worker["id"] in active else 1 if worker["role"] == "standby" else 2
        return rank, layers[0], worker["id"]

    return [worker | {"active": worker["id"] in active} for worker in sorted(status["workers"], key=order)]


def snapshot(status: dict[str, Any], activity: ActivityLog, now: float) -> dict[str, Any]:
    return {"time": round(now, 3), "status": status, "pipeline": pipeline_view(status)} | activity.view()


async def dashboard_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_DIR / "dashboard.html")


def stream_handler(status_report: Callable[[], dict[str, Any]], activity: ActivityLog, interval: float):
    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        try:
            while True:
                body = json.dumps(snapshot(status_report(), activity, time.time()))
                await response.write(f"data: {body}\n\n".encode())
                await asyncio.sleep(interval)
        except ConnectionResetError:   # the page closed: stop sending
            log.debug("dashboard stream closed by the client")
        return response
    return handle


async def sample_loop(activity: ActivityLog, tokens_generated: Callable[[], int], interval: float = 1.0) -> None:
    while True:
        activity.sample(time.time(), tokens_generated())
        await asyncio.sleep(interval)
