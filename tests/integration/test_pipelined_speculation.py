"""Pipelined speculation through the real coordinator and fake workers over real sockets:
lookup drafts in chunks, one per stage in flight, give plain greedy decoding's tokens with
2 and 3 stages, keep several chunks in flight, recover from a worker lost mid-flight, and
leave no stream state behind on the workers."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.fake_worker import FakeWorker
from tests.integration.test_churn import Swarm
from tests.integration.test_speculation import GROUNDED, OPEN, completion
from tests.support import running_app, status_of, stream_tokens, wait_ready

PIPELINED = {"method": "lookup", "max_draft": 4, "pipelined": True}


@pytest.fixture(scope="module")
async def three_stage_cluster(shard_dir):
    async with running_app(shard_dir, standby_workers=0) as (_, base):
        workers = [await FakeWorker(base, shard_dir, f"fake-{i}").start() for i in range(3)]
        status = await wait_ready(base, 3)
        assert len(status["plan"]) == 3   # three stages
        yield base, workers
        for worker in workers:
            await worker.stop()


async def equal_to_plain(base: str, codec: str) -> tuple[int, int]:
    """Every prompt's pipelined answer equals its plain one; returns (most chunks in flight, accepted)."""
    most, accepted = 0, 0
    for index, messages in enumerate(GROUNDED[:2] + OPEN[:1]):
        plain = await completion(base, messages, {"method": "off"}, codec, max_tokens=28)
        for speculation in (PIPELINED, PIPELINED | {"max_draft": 1, "adaptive": False})[:1 + (index == 0)]:
            fast = await completion(base, messages, speculation, codec, max_tokens=28)
            assert fast["choices"][0]["token_ids"] == plain["choices"][0]["token_ids"], (messages, speculation)
            assert fast["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
            usage = fast["usage"]["tabswarm"]["speculation"]
            assert usage["accepted"] <= usage["drafted"]
            most, accepted = max(most, usage["most_in_flight"]), accepted + usage["accepted"]
    return most, accepted


async def test_pipelined_lookup_gives_plain_greedy_tokens_through_two_stages(two_worker_cluster):
    _, base, workers = two_worker_cluster
    most, accepted = await equal_to_plain(base, "int8")
    assert most == 2 and accepted > 10   # chunks really overlapped and drafts were accepted
    await asyncio.sleep(0.1)
    assert all(not worker.stack.streams for worker in workers if worker.stack)   # every stream released, wasted chunks included


async def test_pipelined_lookup_keeps_three_chunks_in_flight_through_three_stages(three_stage_cluster):
    base, workers = three_stage_cluster
    most, accepted = await equal_to_plain(base, "lossless")
    assert most == 3 and accepted > 10
    await asyncio.sleep(0.1)
    assert all(not worker.stack.streams for worker in workers if worker.stack)


async def test_a_sampled_request_with_pipelining_asked_for_runs_unpipelined(two_worker_cluster):
    _, base, _ = two_worker_cluster
    body = {"temperature": 0.8, "seed": 7}
    plain = await completion(base, GROUNDED[0], {"method": "lookup"}, **body)
    asked = await completion(base, GROUNDED[0], PIPELINED, **body)
    assert asked["choices"][0]["token_ids"] == plain["choices"][0]["token_ids"]
    assert asked["usage"]["tabswarm"]["speculation"]["most_in_flight"] == 0


async def test_pipelined_must_be_a_boolean(two_worker_cluster):
    from tests.support import post
    _, base, _ = two_worker_cluster
    code, body = await post(base, "/v1/chat/completions", {
        "messages": OPEN[0], "tabswarm": {"speculation": {"method": "lookup", "pipelined": "yes"}}})
    assert code == 400 and body["error"]["param"] == "tabswarm.speculation.pipelined"


async def test_a_worker_lost_with_chunks_in_flight_replays_to_the_plain_answer(shard_dir):
    async with running_app(shard_dir, recovery_seconds=20.0) as (_, base):
        swarm = Swarm(None, base, shard_dir)
        await swarm.start_with_ready_standby()
        body = {"messages": GROUNDED[0], "max_tokens": 24, "tabswarm": {"codec": "int8-stable"},
                "stream_options": {"include_usage": True}}
        plain = await stream_tokens(base, body | {"tabswarm": body["tabswarm"] | {"speculation": {"method": "off"}}})
        victim = swarm.workers[1]
        lost = await stream_tokens(base, body | {"tabswarm": body["tabswarm"] | {"speculation": PIPELINED}},
                                   on_token=swarm.killer_at(victim, 6))
        assert not lost.errors and lost.ids == plain.ids
        assert lost.usage["tabswarm"]["replays"] + lost.usage["tabswarm"]["moves"] >= 1
        for worker in swarm.workers:
            await worker.stop()


async def test_pipelined_streams_side_by_side_and_one_cancelled_mid_flight(shard_dir):
    """Three pipelined requests at once (their chunks share the workers' passes); the client of
    one goes away with chunks in flight: the others equal their plain answers, the cancelled
    stream's chunks are drained and every stream's caches are freed."""
    async with running_app(shard_dir, standby_workers=0) as (_, base):
        workers = [await FakeWorker(base, shard_dir, name, delay_seconds=0.005).start() for name in ("a", "b")]
        await wait_ready(base, 2)
        bodies = [{"messages": messages, "max_tokens": 28, "tabswarm": {"speculation": PIPELINED}}
                  for messages in GROUNDED]
        plain = [(await stream_tokens(base, body | {"tabswarm": {"speculation": {"method": "off"}}})).ids
                 for body in bodies]

        async def leave_at_six(count: int) -> None:
            if count == 6:
                raise asyncio.CancelledError   # the client goes away mid-stream

        results = await asyncio.gather(*(stream_tokens(base, body, leave_at_six if index == 1 else None)
                                         for index, body in enumerate(bodies)), return_exceptions=True)
        assert isinstance(results[1], asyncio.CancelledError)
        assert [results[0].ids, results[2].ids] == [plain[0], plain[2]]
        deadline = asyncio.get_running_loop().time() + 10
        while (await status_of(base))["queue"]["active"]:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)
        assert all(not worker.stack.streams for worker in workers if worker.stack)
        for worker in workers:
            await worker.stop()
