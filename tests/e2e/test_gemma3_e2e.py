"""The second model family in real Chromium tabs: Gemma 3 270M split across 2 WASM tabs
(sliding-window and global layers, QK-norm, GeGLU, head_dim 256 with one K/V head)
gives the reference executor's greedy tokens for a completion (it is a base model),
lossless and through the default int8 codec (the reference run through the same codec and
stage cuts), and runs concurrent requests batched in the tabs, each equal to its solo answer."""

from __future__ import annotations

import asyncio

import pytest

from tests.e2e.tabs import Tabs
from tests.support import (
    cuts_of,
    post,
    reference_tokens,
    running_app,
    wait_batched_pass,
    wait_ready,
)

pytestmark = pytest.mark.e2e
LOAD_TIMEOUT = 300.0
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
async def gemma_tabs(browser, gemma_dir):
    async with running_app(gemma_dir, join_settle_seconds=1.5, step_timeout_seconds=60.0) as (_, base):
        tabs = await Tabs.open_for(browser, base)
        await tabs.open("gemma-tab-1")
        await tabs.open("gemma-tab-2")
        status = await wait_ready(base, 2, LOAD_TIMEOUT)
        yield base, status
        await tabs.close_all()


@pytest.mark.parametrize("codec", ["lossless", "int8"])
async def test_gemma3_through_two_tabs_equals_the_reference(gemma_tabs, gemma_reference, codec):
    base, status = gemma_tabs
    assert {worker["backend"] for worker in status["workers"]} == {"wasm"}
    assert status["plan"][-1]["layers"][1] == 18
    _, body = await post(base, "/v1/completions", {
        "prompt": PROMPT, "max_tokens": 12, "tabswarm": {"codec": codec, "return_token_ids": True}})
    want = reference_tokens(gemma_reference, PROMPT, codec, 12, cuts_of(status))
    assert body["choices"][0]["token_ids"] == want
    assert body["usage"]["tabswarm"]["stages"] == 2


async def test_gemma3_concurrent_requests_are_batched_and_equal_their_solo_answers(gemma_tabs):
    """One K/V head and 256-wide heads: the graphs keep a stream's rows bitwise the same in a
    shared pass (shards/attention_graph.py KEY_MIN_LENGTH), so the tabs batch Gemma's streams too."""
    base, _ = gemma_tabs
    prompts = ("The capital of France is", "Bees make honey because", "The moon orbits", "Rivers flow to")
    bodies = [{"prompt": prompt, "max_tokens": 8,
               "tabswarm": {"codec": "int8-stable", "return_token_ids": True, "speculation": {"method": "off"}}}
              for prompt in prompts]
    solo = [(await post(base, "/v1/completions", body))[1]["choices"][0]["token_ids"] for body in bodies]
    together = await asyncio.gather(*(post(base, "/v1/completions", body) for body in bodies))
    assert [code for code, _ in together] == [200] * len(bodies)
    assert [answer["choices"][0]["token_ids"] for _, answer in together] == solo
    await wait_batched_pass(base)
