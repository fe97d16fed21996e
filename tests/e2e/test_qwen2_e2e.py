"""The Qwen2 family in real Chromium tabs, on the tiny Qwen2 GGUF written at test time: 2 WASM
tabs computing in int8 (the codes and scales made in the tab from the GGUF's blocks,
worker_web/int8_weights.js) give the reference executor's tokens run in the same format, and
in float32 compute the float32 reference's. Each tab says what memory it gives and what the
browser measured it using; the 1.5B model's run is tests/e2e/test_qwen25_coder_e2e.py (opt-in)."""

from __future__ import annotations

import asyncio

import pytest

from shards.executor import ReferenceExecutor
from tests.e2e.tabs import Tabs
from tests.support import cuts_of, post, reference_tokens, running_app, status_of, wait_ready

pytestmark = pytest.mark.e2e
LOAD_TIMEOUT = 180.0
PROMPT = [{"role": "user", "content": "the cat sat on the mat"}]


@pytest.mark.parametrize("compute", ["int8", "float32"])
async def test_tiny_qwen2_through_two_tabs_equals_the_reference_in_its_compute_format(browser, tiny_qwen_dir, compute):
    async with running_app(tiny_qwen_dir, compute=compute, join_settle_seconds=1.5,
                           step_timeout_seconds=60.0) as (_, base):
        tabs = await Tabs.open_for(browser, base)
        try:
            for index in (1, 2):
                await tabs.open(f"qwen-{compute}-{index}", extra="&memory=300")
            status = await wait_ready(base, 2, LOAD_TIMEOUT)
            assert status["compute"] == compute and len(status["plan"]) == 2 and status["plan"][-1]["layers"][1] == 4
            assert {worker["memory_mb"] for worker in status["workers"]} == {300}
            reference = ReferenceExecutor(tiny_qwen_dir, threads=1, compute=compute)
            for codec in ("lossless", "int8"):
                code, body = await post(base, "/v1/chat/completions", {
                    "messages": PROMPT, "max_tokens": 16, "tabswarm": {"codec": codec, "return_token_ids": True}})
                assert code == 200, body
                want = reference_tokens(reference, PROMPT, codec, 16, cuts_of(status))
                assert body["choices"][0]["token_ids"] == want
            if compute == "int8":   # what the browser measured each tab using comes seconds after ready
                for _ in range(120):
                    workers = (await status_of(base))["workers"]
                    if all(worker["memory_used_mb"] for worker in workers):
                        break
                    await asyncio.sleep(0.5)
                assert all(0 < worker["memory_used_mb"] < worker["memory_mb"] for worker in workers), workers
        finally:
            await tabs.close_all()
