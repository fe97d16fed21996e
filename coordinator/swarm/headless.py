"""Headless Chromium worker tabs for `tabswarm serve --headless-workers N`.

Owns launching Debian's Chromium through Playwright (never `playwright install`) and
opening each worker tab in its own window through a CDP session, so the tabs' heavy
WebSocket traffic is not copied to Playwright's driver. The tabs report their state
over their own WebSocket to the coordinator.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CHROMIUM_ARGS = (
    "--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-default-apps",
    "--disable-extensions", "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding", "--disable-backgrounding-occluded-windows",
    "--enable-unsafe-webgpu",
)


DEFAULT_CHROMIUM = "/usr/bin/chromium"


class ChromiumMissing(RuntimeError):
    pass


async def launch_chromium(playwright: Any, executable: str = DEFAULT_CHROMIUM, extra_args: tuple[str, ...] = (),
                          temporary: str | None = None) -> Any:
    """The one place Chromium is launched (the serve command's tabs, the e2e tests, the
    benchmarks): Debian's binary through Playwright, headless, with CHROMIUM_ARGS, its TMPDIR
    `temporary` (a new folder when not given)."""
    if not Path(executable).exists():
        raise ChromiumMissing(f"Chromium not found at {executable}: run the README's set-up (apt chromium)")
    folder = temporary or tempfile.mkdtemp(prefix="tabswarm-chromium-")
    return await playwright.chromium.launch(executable_path=executable, headless=True, chromium_sandbox=False,
                                            args=[*CHROMIUM_ARGS, *extra_args], env={**os.environ, "TMPDIR": folder})


class HeadlessWorkers:
    """One headless Chromium with N worker windows."""

    def __init__(self, chromium: str, secure_origin: str | None = None,
                 ignore_certificate_errors: bool = False) -> None:
        self.chromium = chromium
        # A coordinator on another host over plain http is not a secure context: no
        # cross-origin isolation (WASM threads), Cache Storage or crypto.subtle. Treat it as one.
        self.extra_args = [f"--unsafely-treat-insecure-origin-as-secure={secure_origin}"] if secure_origin else []
        if ignore_certificate_errors:   # a self-signed coordinator these tabs already trust
            self.extra_args.append("--ignore-certificate-errors")
        self._playwright: Any = None
        self.browser: Any = None
        self._cdp: Any = None
        self._temporary: str | None = None
        self.targets: list[str] = []

    async def start(self) -> None:
        from playwright.async_api import async_playwright

        if not Path(self.chromium).exists():
            raise ChromiumMissing(f"Chromium not found at {self.chromium}: run the README's set-up (apt chromium)")
        self._temporary = tempfile.mkdtemp(prefix="tabswarm-chromium-")
        self._playwright = await async_playwright().start()
        self.browser = await launch_chromium(self._playwright, self.chromium, tuple(self.extra_args), self._temporary)
        self._cdp = await self.browser.new_browser_cdp_session()

    async def open(self, url: str) -> str:
        """A new window showing `url`, outside Playwright's page control; returns its target id."""
        result = await self._cdp.send("Target.createTarget", {"url": url, "newWindow": True})
        self.targets.append(result["targetId"])
        log.info("opened headless worker tab %s", url)
        return str(result["targetId"])

    async def close_tab(self, target: str) -> None:
        await self._cdp.send("Target.closeTarget", {"targetId": target})
        if target in self.targets:
            self.targets.remove(target)

    async def stop(self) -> None:
        if self.browser is not None:
            await self.browser.close()
        if self._playwright is not None:
            await self._playwright.stop()
        if self._temporary:
            shutil.rmtree(self._temporary, ignore_errors=True)


def worker_url(base: str, name: str, threads: int, backend: str = "wasm", token: str = "") -> str:
    return f"{base}/worker/?name={name}&threads={threads}&backend={backend}" + (f"&token={token}" if token else "")
