"""A worker tab over https with a self-signed certificate is a secure context: it has the
WebGPU API (the adapter may be a software fallback here), Cache Storage and crypto.subtle,
and its shards land in Cache Storage (a reopened tab loads them from there)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile

import pytest

from coordinator.swarm.headless import launch_chromium
from coordinator.trust.access import AccessConfig
from coordinator.trust.tls import self_signed
from tests.e2e.conftest import CHROMIUM
from tests.e2e.tabs import Tabs
from tests.support import running_app, status_of

pytestmark = pytest.mark.e2e


async def wait_for(base: str, predicate, timeout: float = 180.0) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        status = await status_of(base, verify_tls=False)
        if predicate(status):
            return status
        assert asyncio.get_running_loop().time() < deadline, status
        await asyncio.sleep(0.25)


async def test_tab_over_self_signed_https_is_a_secure_context_and_caches_its_shards(shard_dir, tmp_path):
    from playwright.async_api import async_playwright

    certificate = self_signed(tmp_path / "tls", [])
    assert len(certificate.fingerprint().split(":")) == 32
    temporary = tempfile.mkdtemp(prefix="tabswarm-chromium-")
    access = AccessConfig(join_secret="tls-join")
    async with running_app(shard_dir, access=access, ssl_context=certificate.context(),
                           join_settle_seconds=0.5) as (_, base), async_playwright() as playwright:
        assert base.startswith("https://")
        browser = await launch_chromium(playwright, CHROMIUM, ("--ignore-certificate-errors",), temporary)
        try:
            tabs = await Tabs.open_for(browser, base)
            await tabs.open("secure-tab", extra="&token=tls-join")
            status = await wait_for(base, lambda s: s["ready"])
            worker = status["workers"][0]
            assert worker["page"] == {"secure_context": True, "webgpu_api": True, "cache_storage": True}
            assert worker["cached"] is False          # downloaded the first time, and stored
            await tabs.close("secure-tab")
            await wait_for(base, lambda s: not s["workers"])
            await tabs.open("secure-tab", extra="&token=tls-join")
            status = await wait_for(base, lambda s: s["ready"])
            assert status["workers"][0]["cached"] is True   # read back from Cache Storage
            await tabs.close_all()
        finally:
            await browser.close()
            shutil.rmtree(temporary, ignore_errors=True)
