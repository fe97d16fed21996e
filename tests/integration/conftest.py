"""Integration fixtures: the real aiohttp app on a real port, fake workers over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import pytest
from aiohttp import web

from coordinator.app import create_app
from coordinator.config import AppConfig, ServerConfig
from tests.integration.fake_worker import FakeWorker


@contextlib.asynccontextmanager
async def running_app(shard_dir, **server_options) -> AsyncIterator[tuple[web.Application, str]]:
    server = replace(ServerConfig(host="127.0.0.1", port=0, join_settle_seconds=0.05,
                                  worker_wait_seconds=30.0, heartbeat_seconds=30.0), **server_options)
    app = create_app(AppConfig(server=server), shard_dir)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield app, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def wait_ready(base: str, workers: int, timeout: float = 60.0) -> dict:
    async with aiohttp.ClientSession() as session:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            async with session.get(f"{base}/v1/status") as response:
                status = await response.json()
            if status["ready"] and len(status["plan"]) == workers:
                return status
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"cluster not ready: {status}")
            await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
async def two_worker_cluster(shard_dir):
    async with running_app(shard_dir) as (app, base):
        workers = [await FakeWorker(base, shard_dir, f"fake-{i}").start() for i in range(2)]
        await wait_ready(base, 2)
        yield app, base, workers
        for worker in workers:
            await worker.stop()
