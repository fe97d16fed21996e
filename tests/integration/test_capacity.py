"""Capacity is measured, not claimed: a worker that claims absurd speed and memory gets
no more than an equal share before it has proven itself, and the plan follows the step
times the coordinator measures."""

from __future__ import annotations

import asyncio
import time

from tests.integration.fake_worker import FakeWorker
from tests.support import COLOURS, post, running_app, status_of, wait_ready


def sizes_by_name(status: dict) -> dict[str, int]:
    names = {worker["id"]: worker["name"] for worker in status["workers"]}
    return {names[stage["worker"]]: stage["layers"][1] - stage["layers"][0] for stage in status["plan"]}


async def test_a_worker_claiming_absurd_speed_does_not_get_most_of_the_model(shard_dir):
    async with running_app(shard_dir, join_settle_seconds=0.3, standby_workers=0) as (_, base):
        liar = await FakeWorker(base, shard_dir, "liar", benchmark_ms=0.01, memory_mb=65536).start()
        honest = [await FakeWorker(base, shard_dir, f"honest-{i}", benchmark_ms=10.0).start() for i in range(2)]
        status = await wait_ready(base, 3)
        sizes = sizes_by_name(status)
        assert sizes["liar"] <= 10 and sum(sizes.values()) == 30, sizes
        for worker in [liar, *honest]:
            await worker.stop()


async def test_the_plan_follows_measured_step_times(shard_dir):
    """Two workers claiming the same speed; one is 8x slower per step in fact. Once both
    have served enough steps, the slow one is given fewer layers."""
    async with running_app(shard_dir, heartbeat_seconds=0.3, standby_workers=0) as (_, base):
        fast = await FakeWorker(base, shard_dir, "fast").start()
        slow = await FakeWorker(base, shard_dir, "slow", delay_seconds=0.08).start()
        status = await wait_ready(base, 2)
        assert sorted(sizes_by_name(status).values()) == [15, 15]
        code, _ = await post(base, "/v1/chat/completions", {"messages": COLOURS, "max_tokens": 24,
                                                            "tabswarm": {"speculation": {"method": "off"}}})
        assert code == 200   # 24 one-row steps: past the 16 after which measured speed counts
        deadline = time.monotonic() + 20
        while True:
            status = await status_of(base)
            sizes = sizes_by_name(status)
            if status["ready"] and sizes.get("slow", 15) < 15:
                break
            assert time.monotonic() < deadline, status
            await asyncio.sleep(0.2)
        assert sizes["fast"] > sizes["slow"] and sum(sizes.values()) == 30
        assert any(event["event"] == "speeds" for event in status["events"])
        await fast.stop()
        await slow.stop()
