"""The WebGPU code path: one tab on onnxruntime-web's WebGPU backend (here Chromium's
software adapter, SwiftShader: slow, but it runs the same graphs) next to a WASM tab.
A short completion must give the reference executor's tokens."""

from __future__ import annotations

import pytest

from shards.sampling import SamplingParams
from tests.e2e.tabs import Tabs
from tests.support import post, running_app, wait_ready

pytestmark = pytest.mark.e2e


async def test_webgpu_tab_computes_the_reference_tokens(browser, shard_dir, reference):
    async with running_app(shard_dir, join_settle_seconds=1.5, step_timeout_seconds=120.0) as (_, base):
        tabs = await Tabs.open_for(browser, base)
        try:
            await tabs.open("gpu-tab", backend="webgpu", extra="&allowFallbackGpu=1")
            await tabs.open("wasm-tab")
            status = await wait_ready(base, 2, 240)
            backends = {worker["name"]: worker["backend"] for worker in status["workers"]}
            assert backends == {"gpu-tab": "webgpu", "wasm-tab": "wasm"}
            prompt = "One, two, three,"
            status_code, body = await post(base, "/v1/completions", {
                "prompt": prompt, "max_tokens": 3, "tabswarm": {"codec": "lossless", "return_token_ids": True}})
            assert status_code == 200, body
            want = [s.token for s in reference.generate(reference.text.encode(prompt), SamplingParams(max_tokens=3))]
            assert body["choices"][0]["token_ids"] == want
        finally:
            await tabs.close_all()
