"""Integration fixtures: the real aiohttp app on a real port, fake workers over real sockets."""

from __future__ import annotations

import gc

import pytest

from tests.integration.fake_worker import FakeWorker
from tests.support import running_app, wait_ready


@pytest.fixture(scope="module")
async def two_worker_cluster(shard_dir):
    async with running_app(shard_dir) as (app, base):
        workers = [await FakeWorker(base, shard_dir, f"fake-{i}").start() for i in range(2)]
        await wait_ready(base, 2)
        yield app, base, workers
        for worker in workers:
            await worker.stop()


@pytest.fixture(autouse=True)
def collect_garbage():
    """Tests start many fake workers (each holds onnxruntime sessions for its layers):
    free the ones a test is done with before the next starts."""
    yield
    gc.collect()
