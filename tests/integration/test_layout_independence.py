"""With the int8-stable codec an answer does not depend on where the stages are cut
(protocol/boundary_rounding.py, docs/layout_independence.md).

The int8 codec rounds the hidden state only at stage boundaries, so moving a cut from layer
15 to 14 changes 12 of 20 greedy answers (bench/layout_rounding.py), and a request that
moves to a new plan mid-way, or is replayed onto other tabs, can end differently from its
solo run. int8-stable rounds every layer boundary inside a stage as a cut would round it
(the ROUND_LAYERS flag): any layout computes the same numbers.
"""

from __future__ import annotations

import asyncio

from coordinator.app import CLUSTER, ENGINE
from coordinator.swarm.cluster import PROVEN_STEPS
from tests.integration.fake_worker import FakeWorker
from tests.support import (
    COLOURS,
    FRANCE,
    cuts_of,
    reference_tokens,
    running_app,
    status_of,
    stream_tokens,
    wait_ready,
)

LAYOUTS = [[], [15], [14], [10, 20], list(range(1, 30))]   # one stage ... one stage per layer


def test_reference_tokens_are_the_same_for_every_layout(reference):
    codec = "int8-stable"
    for messages in (COLOURS, FRANCE):
        answers = [reference_tokens(reference, messages, codec, 24, cuts) for cuts in LAYOUTS]
        assert all(answer == answers[0] for answer in answers), (codec, answers)
        assert len(answers[0]) > 5


async def test_a_replan_that_moves_a_boundary_mid_request_keeps_the_answer(shard_dir, reference):
    """Two tabs split [0,15)+[15,30); one slows down, the plan moves the boundary while a
    request runs (it moves to the new plan and replays): its tokens are still those of the
    reference at the old cut, token for token."""
    want = reference_tokens(reference, COLOURS, "int8-stable", 60, [15])
    assert len(want) >= 40
    async with running_app(shard_dir) as (app, base):
        fast = await FakeWorker(base, shard_dir, "fast").start()
        slow = await FakeWorker(base, shard_dir, "slow").start()
        await wait_ready(base, 2)
        assert cuts_of(await status_of(base)) == [15]
        slow.delay_seconds = 0.08     # ~4x slower per step than the fast tab (measured): the plan moves

        replanned: list[int] = []

        async def replan_mid_request(count: int) -> None:
            cluster = app[CLUSTER]
            # once both tabs have served the one-row steps that prove their speeds
            if not replanned and min(link.timer.samples for link in cluster.workers.values()) >= PROVEN_STEPS:
                replanned.append(count)
                await cluster.replan(keep_boundaries=False)

        # speculation off: every step one row, so both tabs prove their speeds within the request
        # (with lookup drafts, how many one-row steps come depends on the measured step costs)
        body = {"messages": COLOURS, "max_tokens": 60,
                "tabswarm": {"codec": "int8-stable", "speculation": {"method": "off"}}}
        streamed = await asyncio.wait_for(stream_tokens(base, body, replan_mid_request), 120)
        assert not streamed.errors and streamed.ids == want
        assert replanned and replanned[0] < len(want) - 10
        assert app[ENGINE].moves_total >= 1                    # it did move, mid-request
        assert cuts_of(await status_of(base)) != [15]          # to a plan cut elsewhere
        await fast.stop()
        await slow.stop()
