"""The application factory: wires model ends, cluster, engine, HTTP API and static files.

Owns construction and lifecycle (background tasks, headless worker tabs) only; every
decision lives in the modules it wires together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from dataclasses import replace
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry

from coordinator.api.access_middleware import access_middleware
from coordinator.api.activity import ActivityLog
from coordinator.api.dashboard import dashboard_page, sample_loop, stream_handler
from coordinator.api.http_api import Api
from coordinator.api.json_io import json_errors
from coordinator.api.metrics import RequestMetrics, SwarmCollector, metrics_handler
from coordinator.api.request_watch import RequestWatch
from coordinator.api.static_files import WEB_DIR, add_static_routes, isolation_headers
from coordinator.api.worker_endpoint import handle_worker, heartbeat_loop
from coordinator.config import AppConfig
from coordinator.engine.generation import GenerationEngine
from coordinator.swarm.cluster import Cluster
from coordinator.trust.access import AccessConfig, new_secret
from coordinator.trust.verifier import StageChecker, VerifyConfig
from shards.model_ends import ModelEnds

log = logging.getLogger(__name__)
WORKER_PAGE = Path(__file__).resolve().parent.parent / "worker_web" / "index.html"

CONFIG = web.AppKey("config", AppConfig)
CLUSTER = web.AppKey("cluster", Cluster)
ENGINE = web.AppKey("engine", GenerationEngine)
API = web.AppKey("api", Api)
ACTIVITY = web.AppKey("activity", ActivityLog)


class AccessState:
    """The access rules in force: the configured ones, with the join secret as rotated."""

    def __init__(self, config: AccessConfig) -> None:
        self.config = config


ACCESS = web.AppKey("access", AccessState)


async def chat_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_DIR / "index.html")


async def worker_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WORKER_PAGE)


async def worker_redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/worker/" + (f"?{request.query_string}" if request.query_string else ""))


def create_app(config: AppConfig, shard_dir: Path) -> web.Application:
    ends = ModelEnds(shard_dir, threads=config.runtime.threads, head=config.runtime.head)
    compute = config.runtime.compute_for(ends.manifest)
    cluster = Cluster(ends.manifest, config.server, compute)
    verify = VerifyConfig(fraction=config.server.verify_fraction,
                          probation_steps=config.server.verify_probation_steps)
    checker = (StageChecker(shard_dir, ends.manifest, verify, cluster.compute)
               if verify.fraction or verify.probation_steps else None)
    engine = GenerationEngine(ends, cluster, config.server, checker)
    activity = ActivityLog()
    registry = CollectorRegistry()   # per app: apps in one process (tests) never share series
    request_metrics = RequestMetrics(registry) if config.server.metrics else None
    api = Api(config, ends, cluster, engine, RequestWatch(activity, request_metrics))
    registry.register(SwarmCollector(cluster, engine, api.admissions.load))
    app = web.Application(middlewares=[isolation_headers, json_errors, access_middleware(lambda a: a[ACCESS].config)],
                          client_max_size=4 << 20)
    app[CONFIG], app[CLUSTER], app[ENGINE], app[API] = config, cluster, engine, api
    app[ACCESS] = AccessState(config.access)
    app[ACTIVITY] = activity
    app.router.add_post("/v1/chat/completions", api.chat_completions)
    app.router.add_post("/v1/completions", api.completions)
    app.router.add_get("/v1/models", api.models)
    app.router.add_get("/v1/status", api.status)
    app.router.add_get("/health", api.health)
    if config.server.metrics:
        app.router.add_get("/metrics", metrics_handler(registry))
    app.router.add_get("/dashboard", dashboard_page)
    app.router.add_get("/v1/dashboard/stream", stream_handler(api.status_report, activity,
                                                              config.server.dashboard_interval_seconds))

    async def worker_socket(request: web.Request) -> web.StreamResponse:
        return await handle_worker(request, cluster, app[ACCESS].config)

    async def rotate_join_secret(request: web.Request) -> web.Response:
        """A new join secret; workers that joined with the old one are dropped."""
        app[ACCESS].config = replace(app[ACCESS].config, join_secret=new_secret())
        secret = app[ACCESS].config.join_secret
        dropped = [link for link in cluster.workers.values() if link.token != secret]
        for link in dropped:
            await link.close(1008, "the join secret was rotated")
            await cluster.leave(link, "the join secret was rotated")
        return web.json_response({"join_token": secret, "workers_dropped": len(dropped)})

    app.router.add_get("/ws/worker", worker_socket)
    app.router.add_post("/v1/admin/rotate-join-secret", rotate_join_secret)
    app.router.add_get("/", chat_page)
    app.router.add_get("/worker", worker_redirect)
    app.router.add_get("/worker/", worker_page)
    add_static_routes(app, shard_dir)
    app.cleanup_ctx.append(_background(config))
    return app


def _background(config: AppConfig):
    async def context(app: web.Application):
        heartbeat = asyncio.create_task(heartbeat_loop(app[CLUSTER], config.server.heartbeat_seconds))
        sampler = asyncio.create_task(sample_loop(app[ACTIVITY], lambda: app[ENGINE].tokens_generated))
        checker = app[ENGINE].spot_checks.checker
        stop_preparing = threading.Event()
        if checker is not None:   # the checks' native layer files, made while the tabs load
            preparing = asyncio.get_running_loop().run_in_executor(None, checker.layers.prepare, stop_preparing)
        yield
        stop_preparing.set()
        if checker is not None:
            await preparing
        for task in (heartbeat, sampler):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for link in list(app[CLUSTER].workers.values()):
            await link.close(1001, "coordinator shutting down")
        if checker is not None:
            checker.close()
    return context
