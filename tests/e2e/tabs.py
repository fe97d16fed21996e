"""Worker tabs for e2e tests: each in its own window, opened through a CDP session so
Playwright does not copy their WebSocket traffic (see ../shared/notes/browser.md)."""

from __future__ import annotations

from coordinator.swarm.headless import worker_url


class Tabs:
    def __init__(self, cdp, base: str) -> None:
        self.cdp, self.base = cdp, base
        self.targets: dict[str, str] = {}

    @classmethod
    async def open_for(cls, browser, base: str) -> Tabs:
        return cls(await browser.new_browser_cdp_session(), base)

    async def open(self, name: str, backend: str = "wasm", extra: str = "") -> str:
        result = await self.cdp.send("Target.createTarget", {
            "url": worker_url(self.base, name, threads=1, backend=backend) + extra, "newWindow": True})
        self.targets[name] = result["targetId"]
        return result["targetId"]

    async def close(self, name: str) -> None:
        await self.cdp.send("Target.closeTarget", {"targetId": self.targets.pop(name)})

    async def close_all(self) -> None:
        for name in list(self.targets):
            await self.close(name)
        await self.cdp.detach()
