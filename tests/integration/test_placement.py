"""Memory-aware placement through the real app with fake workers on the tiny Qwen2 model:
tabs that offer too little get a status that says how much more is needed; a tab that runs
out of memory loading is placed again with fewer layers and nothing is lost; a tab on
probation joining never makes a proven tab give up its layers, so when the newcomer is
caught lying and evicted, service resumes on the proven tab at once."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from shards.footprint import TabFootprint
from shards.manifest import load_manifest
from shards.sampling import SamplingParams
from tests.integration.fake_worker import FakeWorker
from tests.support import post, running_app, status_of, wait_ready

PROMPT = [{"role": "user", "content": "the cat sat on the mat"}]


def footprint(directory) -> TabFootprint:
    manifest = load_manifest(directory)
    return TabFootprint.of(manifest.model, manifest.default_compute)


async def health(base: str) -> dict:
    async with aiohttp.ClientSession() as session, session.get(base + "/health") as response:
        return await response.json()


def reference_answer(reference, tokens: int) -> list[int]:
    ids = reference.text.encode_chat(PROMPT)
    return [step.token for step in reference.generate(ids, SamplingParams(max_tokens=tokens))]


async def test_tabs_offering_too_little_memory_are_told_how_much_more_is_needed(tiny_qwen_dir, tiny_qwen_reference):
    plan = footprint(tiny_qwen_dir)
    one_layer = plan.needed_mb(1) + 0.1                     # each tab offers room for one layer
    async with running_app(tiny_qwen_dir, worker_wait_seconds=0.5) as (_, base):
        small = [await FakeWorker(base, tiny_qwen_dir, f"small-{i}", memory_mb=one_layer).start() for i in range(2)]
        for _ in range(200):
            report = await health(base)
            if "needs ≈" in (report["reason"] or ""):
                break
            await asyncio.sleep(0.05)
        assert report["ready"] is False and report["memory"]["holdable_layers"] == 2
        reason = report["memory"]["shortfall"]
        assert "can hold 2 of the model's 4 layers" in reason and "needs ≈" in reason and "open another tab" in reason
        assert report["reason"] == f"no plan: {reason}"
        code, body = await post(base, "/v1/chat/completions", {"messages": PROMPT, "max_tokens": 4})
        assert code == 503 and "needs ≈" in body["error"]["message"]
        big = await FakeWorker(base, tiny_qwen_dir, "big", memory_mb=plan.needed_mb(2) + 0.1).start()
        status = await wait_ready(base, 3)
        assert all(len(range(*stage["layers"])) <= 2 for stage in status["plan"])
        code, body = await post(base, "/v1/chat/completions", {"messages": PROMPT, "max_tokens": 8,
                                                               "tabswarm": {"codec": "lossless",
                                                                                "return_token_ids": True}})
        assert code == 200 and body["choices"][0]["token_ids"] == reference_answer(tiny_qwen_reference, 8)
        for worker in (*small, big):
            await worker.stop()


async def test_a_tab_that_runs_out_of_memory_is_placed_again_with_fewer_layers(tiny_qwen_dir, tiny_qwen_reference):
    async with running_app(tiny_qwen_dir, worker_wait_seconds=20.0) as (_, base):
        short = await FakeWorker(base, tiny_qwen_dir, "short", allocation_cap=2).start()
        for _ in range(200):
            status = await status_of(base)
            if status["placement"]["shortfall"]:
                break
            await asyncio.sleep(0.05)
        worker = status["workers"][0]
        assert worker["allocation_cap"] == 2 and worker["holds"] == [[0, 2]]
        assert any(event["event"] == "oom" for event in status["events"])
        async with aiohttp.ClientSession() as session, session.get(base + "/metrics") as response:
            metrics = await response.text()
        assert 'tabswarm_cluster_events_total{event="oom"} 1.0' in metrics   # operators see it too
        assert "can hold 2 of the model's 4 layers" in status["placement"]["shortfall"]
        helper = await FakeWorker(base, tiny_qwen_dir, "helper").start()
        status = await wait_ready(base, 2)
        sizes = {worker["name"]: worker["layers"] for worker in status["workers"]}
        assert sizes["short"][1] - sizes["short"][0] <= 2
        code, body = await post(base, "/v1/chat/completions", {"messages": PROMPT, "max_tokens": 8,
                                                               "tabswarm": {"codec": "lossless",
                                                                                "return_token_ids": True}})
        assert code == 200 and body["choices"][0]["token_ids"] == reference_answer(tiny_qwen_reference, 8)
        for worker in (short, helper):
            await worker.stop()


async def test_a_newcomer_on_probation_cannot_make_a_proven_tab_give_up_its_layers(tiny_qwen_dir,
                                                                                   tiny_qwen_reference):
    async with running_app(tiny_qwen_dir, join_settle_seconds=0.05) as (_, base):
        honest = await FakeWorker(base, tiny_qwen_dir, "honest").start()
        await wait_ready(base, 1)
        code, _ = await post(base, "/v1/chat/completions", {"messages": PROMPT, "max_tokens": 6})
        assert code == 200            # the honest tab serves and passes its probation
        liar = await FakeWorker(base, tiny_qwen_dir, "liar", corrupt="noise").start()
        status = await wait_ready(base, 2)
        assert len(status["plan"]) == 2 and honest.retained == [] and honest.holds() == set(range(4))
        code, body = await post(base, "/v1/chat/completions", {"messages": PROMPT, "max_tokens": 8,
                                                               "tabswarm": {"codec": "lossless",
                                                                                "return_token_ids": True}})
        evicted_by = time.monotonic()
        assert code == 200 and body["choices"][0]["token_ids"] == reference_answer(tiny_qwen_reference, 8)
        status = await status_of(base)
        assert status["verification"]["failed"] == 1 and "liar" not in {w["name"] for w in status["workers"]}
        assert status["ready"] and status["plan"] == [{"worker": status["workers"][0]["id"], "layers": [0, 4]}]
        assert honest.retained == [] and honest.assignments == [(0, 4)]   # nothing dropped, nothing reloaded
        code, _ = await post(base, "/v1/chat/completions", {"messages": PROMPT, "max_tokens": 4})
        assert code == 200 and time.monotonic() - evicted_by < 5.0
        for worker in (honest, liar):
            await worker.stop()
