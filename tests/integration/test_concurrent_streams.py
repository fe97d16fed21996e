"""Many streams at once through two workers (fake workers over real sockets): a tab runs
its frames one at a time, so under load a step waits for the rows queued before it. That
wait is not a stall, does not make the tab look slower, and a retain never drops layers a
running plan still uses (both seen with 16 streams through 2 Chromium tabs:
bench/concurrency.py)."""

from __future__ import annotations

import asyncio

from coordinator.app import CLUSTER, ENGINE
from coordinator.swarm.planner import Stage
from coordinator.swarm.swarm_plan import SwarmPlan
from coordinator.swarm.worker_lifecycle import WorkerState
from tests.integration.fake_worker import FakeWorker
from tests.support import COLOURS, post, running_app, status_of, wait_ready

TOPICS = ("the sea", "bees", "the moon", "rivers", "owls", "glaciers", "deserts", "comets", "caves", "tides",
          "whales", "forests")


def body(topic: str) -> dict:
    return {"messages": [{"role": "user", "content": f"Tell me about {topic}."}], "max_tokens": 8,
            "tabswarm": {"return_token_ids": True, "speculation": {"method": "off"}}}


async def test_steps_queued_behind_other_streams_are_not_stalls(shard_dir):
    """Each worker takes 50 ms a step and 12 streams run at once, so a step can wait ~0.6 s
    behind the others: more than the 0.3 s floor and 3x a step that the stall bound
    allows a step alone. Counted per queued row, nobody is evicted and every stream equals
    its solo run."""
    async with running_app(shard_dir, standby_workers=0, stall_floor_seconds=0.3, stall_factor=3.0,
                           max_active=16) as (_, base):
        workers = [await FakeWorker(base, shard_dir, name, delay_seconds=0.05).start() for name in ("a", "b")]
        await wait_ready(base, 2)
        solo = [(await post(base, "/v1/chat/completions", body(topic)))[1]["choices"][0]["token_ids"]
                for topic in TOPICS]
        together = await asyncio.gather(*(post(base, "/v1/chat/completions", body(topic)) for topic in TOPICS))
        assert [code for code, _ in together] == [200] * len(TOPICS)
        assert [answer["choices"][0]["token_ids"] for _, answer in together] == solo
        status = await status_of(base)
        assert not [event for event in status["events"] if event["event"] in ("evict", "leave")], status["events"]
        assert status["churn"]["replays"] == 0
        # the estimate learned from steps that waited behind nothing: still about one step
        assert all(worker["step_ms"] < 100 for worker in status["workers"]), status["workers"]
        for worker in workers:
            await worker.stop()


async def test_a_retain_never_drops_layers_the_active_plan_still_runs(shard_dir):
    """A newer target shrinks a worker's range to layers it holds (so it is ready for it)
    while the other worker still loads: retains sent now (as when a worker passes its
    probation) must wait for that target to become the active plan."""
    async with running_app(shard_dir, standby_workers=0, verify_probation_steps=0, verify_fraction=0.0) as (app, base):
        first = await FakeWorker(base, shard_dir, "first").start()
        second = await FakeWorker(base, shard_dir, "second").start()
        await wait_ready(base, 2)
        cluster = app[CLUSTER]
        head, tail = cluster.plan
        link = cluster.workers[tail.worker]
        shrunk = Stage(tail.worker, tail.layer_start + 5, tail.layer_end)
        cluster.target = SwarmPlan((Stage(head.worker, 0, shrunk.layer_start), shrunk))
        cluster._move(link, WorkerState.READY, shrunk)   # what replan does for a range it holds
        cluster._retain_due = True
        await cluster.worker_proven(link)                 # sends the retains that were held back
        assert not cluster._retain_due                     # they were due, and went out (or were held)
        await asyncio.sleep(0.3)
        worker = first if first.assigned == (tail.layer_start, tail.layer_end) else second
        assert worker.retained == [] and link.holds(tail)
        code, answer = await post(base, "/v1/chat/completions", {"messages": COLOURS, "max_tokens": 4})
        assert code == 200 and answer["usage"]["tabswarm"]["replays"] == 0
        await first.stop()
        await second.stop()


async def test_a_long_prompt_goes_in_chunks_while_others_decode_and_changes_no_answer(shard_dir):
    """Alone, a long prompt is prefilled in as few passes as the memory plan allows; while another request decodes it goes
    in chunks of `shared_prefill_rows` (so the decoding stream's steps go in between), and
    both answers equal their solo runs."""
    long_prompt = {"messages": [{"role": "user", "content": "Summarise: " + " ".join(
        f"the {topic} is near." for topic in TOPICS * 4)}], "max_tokens": 4,
        "tabswarm": {"return_token_ids": True, "speculation": {"method": "off"}}}
    decoding = body("the sea") | {"max_tokens": 40}
    async with running_app(shard_dir, standby_workers=0, shared_prefill_rows=16) as (app, base):
        workers = [await FakeWorker(base, shard_dir, name, delay_seconds=0.01).start() for name in ("a", "b")]
        await wait_ready(base, 2)
        prefill = app[ENGINE].timing.kinds["prefill"]
        steps, rows = prefill.steps, prefill.rows
        solo_long = (await post(base, "/v1/chat/completions", long_prompt))[1]
        prompt_rows = solo_long["usage"]["prompt_tokens"]
        alone = -(-prompt_rows // app[ENGINE].prefill_rows)           # passes the tabs' memory plan allows
        assert prompt_rows > 64 and prefill.steps == steps + alone
        solo_decoding = (await post(base, "/v1/chat/completions", decoding))[1]["choices"][0]["token_ids"]
        steps = prefill.steps
        first = asyncio.create_task(post(base, "/v1/chat/completions", decoding))
        await asyncio.sleep(0.3)                                      # decoding by now
        _, together_long = await post(base, "/v1/chat/completions", long_prompt)
        _, together_decoding = await first
        assert prefill.steps - steps >= prompt_rows // 16            # in chunks of 16 rows
        assert together_long["choices"][0]["token_ids"] == solo_long["choices"][0]["token_ids"]
        assert together_decoding["choices"][0]["token_ids"] == solo_decoding
        assert rows < prefill.rows
        for worker in workers:
            await worker.stop()
