"""Opt-in (TABSWARM_BIG_MODELS=1; the model is 1.1 GB from PyPI and each run loads it into
tabs for minutes): Qwen2.5-Coder-1.5B-Instruct, which no tab here holds alone, through 2 tabs
offering 1024 MB each and through 4 offering 512 MB each. Each tab holds less than the model
and uses less than it offered; coding prompts answered greedily give the reference executor's
tokens (int8 compute, the Qwen2 family's default). bench/big_model.py measures the same
layouts with the coordinator in its own process, next to llama.cpp."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from bench.big_model import PROMPTS
from shards.sampling import SamplingParams
from tests.e2e.tabs import Tabs
from tests.support import model_cache, post, running_app, shard_cache, status_of, wait_ready

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.environ.get("TABSWARM_BIG_MODELS") != "1",
                                                  reason="a 1.1 GB model: set TABSWARM_BIG_MODELS=1 to run it")]
TOKENS = 24


@pytest.fixture(scope="module")
def qwen_coder():
    from shards.convert import convert
    from shards.executor import ReferenceExecutor
    from shards.gguf_model import resolve_model

    directory, _ = convert(resolve_model("qwen2.5-coder-1.5b", model_cache()), progress=False, cache_root=shard_cache())
    reference = ReferenceExecutor(directory, threads=2, verify=False)
    answers = []
    for prompt in PROMPTS:
        ids = reference.text.encode_chat([{"role": "user", "content": prompt}])
        answers.append([step.token for step in reference.generate(ids, SamplingParams(max_tokens=TOKENS))
                        if step.token not in reference.manifest.stop_set])
    return directory, answers


@pytest.mark.parametrize(("tabs", "memory"), [(2, 1024), (4, 512)])
async def test_qwen25_coder_across_tabs_that_each_hold_part_of_it(browser, qwen_coder, tabs, memory):
    directory, answers = qwen_coder
    async with running_app(directory, join_settle_seconds=2.0, step_timeout_seconds=120.0,
                           worker_wait_seconds=60.0) as (_, base):
        opened = await Tabs.open_for(browser, base)
        try:
            for index in range(tabs):
                await opened.open(f"coder-{tabs}-{index + 1}", extra=f"&memory={memory}")
            status = await wait_ready(base, tabs, 900)
            assert status["compute"] == "int8" and len(status["plan"]) == tabs
            assert all(stage["layers"][1] - stage["layers"][0] < 28 for stage in status["plan"])
            for prompt, want in zip(PROMPTS, answers, strict=True):
                code, body = await post(base, "/v1/chat/completions", {
                    "messages": [{"role": "user", "content": prompt}], "max_tokens": TOKENS,
                    "tabswarm": {"return_token_ids": True}})
                assert code == 200, body
                assert body["choices"][0]["token_ids"] == want, body["choices"][0]["message"]["content"]
            served = time.monotonic()
            for _ in range(120):   # the browser measures each tab again seconds after it served
                workers = (await status_of(base))["workers"]
                if all(worker["memory_used_seconds_ago"] is not None
                       and worker["memory_used_seconds_ago"] < time.monotonic() - served for worker in workers):
                    break
                await asyncio.sleep(1.0)
            else:
                raise AssertionError(f"not every tab measured its memory again within 120 s of serving: {workers}")
            used = {worker["name"]: (worker["layers"], worker["memory_used_mb"]) for worker in workers}
            assert all(0 < (worker["memory_used_mb"] or 0) <= memory for worker in workers), used
        finally:
            await opened.close_all()
