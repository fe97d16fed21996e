"""Many requests at once, batched (fake workers over real sockets): a worker runs the frames
that wait together as one pass (`LayerStack.forward_batch`, as a tab's `forwardBatch`),
and the coordinator runs one head call for the streams sampling together. Whatever shares a
pass, each request equals its solo run: with different lengths, sampling parameters and stop
conditions; when one of them is cancelled mid-batch; when a worker is lost mid-batch (every
affected stream is replayed); when a replan moves a boundary mid-batch."""

from __future__ import annotations

import asyncio

from coordinator.app import CLUSTER, ENGINE
from coordinator.swarm.cluster import PROVEN_STEPS
from tests.integration.fake_worker import FakeWorker
from tests.support import post, running_app, status_of, stream_tokens, wait_ready

TOPICS = ("the sea", "bees", "the moon", "rivers", "owls", "glaciers", "deserts", "comets", "caves", "tides",
          "whales", "forests", "volcanoes", "mushrooms", "thunder", "coral")


def mixed_body(index: int, topic: str) -> dict:
    """Greedy, seeded temperature, nucleus or top-k sampling; 4 to 14 tokens; some stop at a comma or period."""
    body: dict = {"messages": [{"role": "user", "content": f"Tell me about {topic}."}], "max_tokens": 4 + 2 * (index % 6),
                  "tabswarm": {"return_token_ids": True, "speculation": {"method": "off"}}}
    sampling = index % 4
    if sampling == 1:
        body |= {"temperature": 0.8, "seed": 100 + index}
    elif sampling == 2:
        body |= {"temperature": 1.0, "top_p": 0.9, "seed": 200 + index}
    elif sampling == 3:
        body |= {"temperature": 0.7, "top_k": 20, "seed": 300 + index}
    if index % 3 == 0:
        body["stop"] = [",", "."]
    return body


def answer_of(response: dict) -> tuple:
    choice = response["choices"][0]
    return choice["token_ids"], choice["message"]["content"], choice["finish_reason"]


async def test_sixteen_mixed_requests_at_once_each_equal_their_solo_runs(shard_dir):
    async with running_app(shard_dir, standby_workers=0, max_active=16) as (app, base):
        workers = [await FakeWorker(base, shard_dir, name, delay_seconds=0.01).start() for name in ("a", "b")]
        await wait_ready(base, 2)
        bodies = [mixed_body(index, topic) for index, topic in enumerate(TOPICS)]
        solo = [answer_of((await post(base, "/v1/chat/completions", body))[1]) for body in bodies]
        assert {reason for _, _, reason in solo} == {"stop", "length"}     # both ways of ending are in the mix
        together = await asyncio.gather(*(post(base, "/v1/chat/completions", body) for body in bodies))
        assert [code for code, _ in together] == [200] * len(bodies)
        assert [answer_of(response) for _, response in together] == solo
        # they did share passes: in the workers, and at the head
        assert max(max(worker.passes) for worker in workers) >= 4
        head = app[ENGINE].executor.head
        assert head.callers > head.calls
        for worker in workers:
            await worker.stop()


async def test_a_request_cancelled_mid_batch_leaves_the_others_identical(shard_dir):
    async with running_app(shard_dir, standby_workers=0) as (_, base):
        workers = [await FakeWorker(base, shard_dir, name, delay_seconds=0.01).start() for name in ("a", "b")]
        await wait_ready(base, 2)
        bodies = [{"messages": [{"role": "user", "content": f"Tell me about {topic}."}], "max_tokens": 16,
                   "tabswarm": {"speculation": {"method": "off"}}} for topic in TOPICS[:6]]
        solo = [(await stream_tokens(base, body)).ids for body in bodies]
        cancelled = asyncio.Event()

        async def cancel_at_four(count: int) -> None:
            if count == 4:
                cancelled.set()
                raise asyncio.CancelledError   # the client goes away mid-stream

        tasks = [asyncio.create_task(stream_tokens(base, body, cancel_at_four if index == 2 else None))
                 for index, body in enumerate(bodies)]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert cancelled.is_set() and isinstance(results[2], asyncio.CancelledError)
        assert [result.ids for index, result in enumerate(results) if index != 2] == solo[:2] + solo[3:]
        deadline = asyncio.get_running_loop().time() + 10
        while (await status_of(base))["queue"]["active"]:            # the cancelled one ends too
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        assert all(len(worker.released) >= 2 * len(bodies) for worker in workers)   # every stream's caches freed
        for worker in workers:
            await worker.stop()


async def test_a_worker_lost_mid_batch_replays_every_affected_stream(shard_dir):
    async with running_app(shard_dir, recovery_seconds=20.0) as (app, base):
        workers = [await FakeWorker(base, shard_dir, f"fake-{n}", delay_seconds=0.01).start() for n in range(3)]
        await wait_ready(base, 2)
        bodies = [{"messages": [{"role": "user", "content": f"Tell me about {topic}."}], "max_tokens": 20,
                   "tabswarm": {"codec": "int8-stable", "speculation": {"method": "off"}}} for topic in TOPICS[:6]]
        solo = [(await stream_tokens(base, body)).ids for body in bodies]
        cluster = app[CLUSTER]
        victim_name = cluster.workers[cluster.plan[1].worker].info.name
        victim = next(worker for worker in workers if worker.name == victim_name)
        replays_before = app[ENGINE].replays_total

        async def kill_at_six(count: int) -> None:
            if count == 6 and not victim.frozen:
                await victim.kill()

        results = await asyncio.gather(*(stream_tokens(base, body, kill_at_six if index == 0 else None)
                                         for index, body in enumerate(bodies)))
        assert victim.frozen                                           # it was killed mid-batch
        assert [result.errors for result in results] == [[]] * len(bodies)
        assert [result.ids for result in results] == solo
        assert app[ENGINE].replays_total - replays_before >= 2         # more than the one stream that saw it
        for worker in workers:
            if worker is not victim:
                await worker.stop()


async def test_a_replan_that_moves_a_boundary_mid_batch_keeps_every_answer(shard_dir):
    async with running_app(shard_dir, standby_workers=0) as (app, base):
        fast = await FakeWorker(base, shard_dir, "fast").start()
        slow = await FakeWorker(base, shard_dir, "slow").start()
        await wait_ready(base, 2)
        bodies = [{"messages": [{"role": "user", "content": f"Tell me about {topic}."}], "max_tokens": 24,
                   "tabswarm": {"codec": "int8-stable", "speculation": {"method": "off"}}} for topic in TOPICS[:4]]
        cluster = app[CLUSTER]
        cuts_before = [stage.layer_end for stage in cluster.plan[:-1]]
        slow.delay_seconds = 0.08              # much slower per step (learned in the solo runs): a replan moves the cut
        solo = [(await stream_tokens(base, body)).ids for body in bodies]
        replanned: list[int] = []

        async def replan_mid_batch(count: int) -> None:
            if not replanned and count >= 4 and min(link.timer.samples for link in cluster.workers.values()) >= PROVEN_STEPS:
                replanned.append(count)
                await cluster.replan(keep_boundaries=False)

        results = await asyncio.gather(*(stream_tokens(base, body, replan_mid_batch if index == 0 else None)
                                         for index, body in enumerate(bodies)))
        assert replanned and [stage.layer_end for stage in cluster.plan[:-1]] != cuts_before
        assert app[ENGINE].moves_total >= 1
        assert [result.errors for result in results] == [[]] * len(bodies)
        assert [result.ids for result in results] == solo
        await fast.stop()
        await slow.stop()
