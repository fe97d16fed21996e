"""A coordinator in this process on a free loopback port, and the HTTP calls that drive it.

Owns what `tabswarm bench` and the tests share: starting an app from a config on
127.0.0.1 (port 0 unless the config names one), waiting until a pipeline of N stages
serves, and JSON calls to it. Thin I/O; every decision stays in the app it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from coordinator.app import create_app
from coordinator.config import AppConfig


@contextlib.asynccontextmanager
async def local_coordinator(config: AppConfig, shard_dir: Path,
                            ssl_context=None) -> AsyncIterator[tuple[web.Application, str]]:
    """(app, base URL) of a coordinator serving on loopback until the block ends."""
    app = create_app(config, shard_dir)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", config.server.port, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield app, f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def status_of(base: str, verify_tls: bool = True) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(ssl=False) if not verify_tls else None
    async with aiohttp.ClientSession(connector=connector) as session, \
            session.get(f"{base}/v1/status") as response:
        return await response.json()


async def wait_ready(base: str, stages: int, timeout: float = 60.0) -> dict[str, Any]:
    """The status once a pipeline of `stages` stages serves (AssertionError after `timeout`)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        status = await status_of(base)
        if status["ready"] and len(status["plan"]) == stages:
            return status
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"cluster not ready with {stages} stages: {json.dumps(status)[:2000]}")
        await asyncio.sleep(0.1)


async def post_json(base: str, path: str, body: Any, raw: bool = False) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        data = body if raw else json.dumps(body)
        async with session.post(base + path, data=data, headers={"Content-Type": "application/json"}) as response:
            return response.status, await response.json(content_type=None)
