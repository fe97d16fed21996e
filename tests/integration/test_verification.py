"""Workers that lie about their results are caught by native re-runs of their stage,
evicted and refused, and the client still gets the honest answer."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.fake_worker import FakeWorker
from tests.support import COLOURS, post, reference_tokens, running_app, status_of, wait_ready


@pytest.mark.parametrize("corrupt", ["noise", "sign", "scale", "stale"])
async def test_a_corrupting_worker_is_detected_evicted_and_the_answer_is_honest(shard_dir, reference, corrupt):
    async with running_app(shard_dir) as (_, base):
        honest = [await FakeWorker(base, shard_dir, f"honest-{i}").start() for i in range(2)]
        await wait_ready(base, 2)
        liar = await FakeWorker(base, shard_dir, "liar", corrupt=corrupt).start()
        # the liar joins as a standby; losing an honest stage makes it a stage
        while not (await status_of(base))["standbys"] or not (await status_of(base))["standbys"][0]["ready"]:
            await asyncio.sleep(0.05)
        await honest[1].stop()
        status = await wait_ready(base, 2)
        assert "liar" in {worker["name"] for worker in status["workers"] if worker["role"] == "stage"}
        code, body = await post(base, "/v1/chat/completions", {
            "messages": COLOURS, "max_tokens": 16, "tabswarm": {"codec": "lossless", "return_token_ids": True}})
        assert code == 200, body
        want = reference_tokens(reference, COLOURS, "lossless", 16, [])
        assert body["choices"][0]["token_ids"] == want
        status = await status_of(base)
        assert status["verification"]["failed"] == 1
        assert "liar" not in {worker["name"] for worker in status["workers"]}
        # and it is refused if it comes back
        again = await FakeWorker(base, shard_dir, "liar", corrupt=corrupt).start()
        await asyncio.wait_for(again.closed.wait(), 10)
        assert again.close_code == 1008
        for worker in (honest[0], liar, again):
            await worker.stop()


async def test_honest_workers_pass_every_check(two_worker_cluster):
    _, base, _ = two_worker_cluster
    before = (await status_of(base))["verification"]
    for codec in ("int8", "lossless", "float16"):
        code, _ = await post(base, "/v1/chat/completions", {"messages": COLOURS, "max_tokens": 12,
                                                            "tabswarm": {"codec": codec}})
        assert code == 200
    after = (await status_of(base))["verification"]
    assert after["failed"] == before["failed"] == 0 and after["passed"] > before["passed"]


@pytest.mark.parametrize("corrupt", ["drift", "sign"])
async def test_int8_stable_stages_get_the_row_check_compounding_flips_need(shard_dir, corrupt):
    """With int8-stable a stage rounds at every layer boundary inside it: a WASM tab's last-bit
    float differences flip some roundings and the flips compound, so a per-value bound evicted
    an honest tab (bench/concurrency.py). A worker whose rows drift by 2% of their norm passes
    (the per-value bound would evict it); one that flips signs is still evicted."""
    async with running_app(shard_dir, standby_workers=0) as (_, base):
        honest = await FakeWorker(base, shard_dir, "honest").start()
        other = await FakeWorker(base, shard_dir, "other", corrupt=corrupt).start()
        await wait_ready(base, 2)
        code, body = await post(base, "/v1/chat/completions", {
            "messages": COLOURS, "max_tokens": 12, "tabswarm": {"codec": "int8-stable"}})
        assert code == 200, body
        status = await status_of(base)
        names = {worker["name"] for worker in status["workers"]}
        if corrupt == "drift":
            assert status["verification"]["failed"] == 0 and status["verification"]["passed"] > 0
            assert names == {"honest", "other"}
        else:
            assert status["verification"]["failed"] == 1 and names == {"honest"}
        for worker in (honest, other):
            await worker.stop()
