"""E2E fixtures: one Debian Chromium for the whole session, and a static file server.

Chromium is the Debian package (never `playwright install`), launched headless with
the flags the shared notes list; its TMPDIR is a folder removed at the end.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from coordinator.swarm.headless import launch_chromium

CHROMIUM = os.environ.get("TABSWARM_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator:
    from playwright.async_api import async_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"Debian chromium is not installed at {CHROMIUM}: run the README's set-up")
    temporary = tempfile.mkdtemp(prefix="tabswarm-chromium-")
    async with async_playwright() as playwright:
        instance = await launch_chromium(playwright, CHROMIUM, temporary=temporary)
        try:
            yield instance
        finally:
            await instance.close()
            shutil.rmtree(temporary, ignore_errors=True)


@pytest.fixture(scope="session")
async def static_server(shard_dir: Path) -> AsyncIterator[str]:
    """The coordinator's static routes alone (worker page, onnxruntime-web, shards)."""
    from coordinator.api.static_files import add_static_routes, isolation_headers

    app = web.Application(middlewares=[isolation_headers])

    async def blank(request: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><title>blank</title>", content_type="text/html")

    app.router.add_get("/blank.html", blank)  # a page with no worker script of its own
    add_static_routes(app, shard_dir)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
