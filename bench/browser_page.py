"""A blank page in headless Chromium, served next to the coordinator's static routes (the
worker's modules, onnxruntime-web, the shards) with the same cross-origin isolation, for
the benchmarks that time worker code in a real tab. One helper, so each benchmark holds
only what it measures."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from coordinator.api.static_files import add_static_routes, isolation_headers
from coordinator.swarm.headless import launch_chromium


@contextlib.asynccontextmanager
async def blank_page(shard_dir: Path | None, title: str,
                     folders: dict[str, Path] | None = None) -> AsyncIterator[Any]:
    """A Playwright page on `/blank.html`; `folders` maps extra URL prefixes ('/graphs/') to
    local folders. The server and the browser go away when the block ends."""
    from playwright.async_api import async_playwright

    app = web.Application(middlewares=[isolation_headers])

    async def blank(request: web.Request) -> web.Response:
        return web.Response(text=f"<!doctype html><title>{title}</title>", content_type="text/html")

    app.router.add_get("/blank.html", blank)
    add_static_routes(app, shard_dir)
    for prefix, folder in (folders or {}).items():
        app.router.add_static(prefix, folder)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        async with async_playwright() as playwright:
            browser = await launch_chromium(playwright)
            try:
                page = await browser.new_page()
                await page.goto(f"http://127.0.0.1:{runner.addresses[0][1]}/blank.html")
                yield page
            finally:
                await browser.close()
    finally:
        await runner.cleanup()
