"""Trust at the edges, over real sockets: API keys, join tokens refused before the
upgrade, secret rotation, and malformed HTTP bodies that never cause a server error."""

from __future__ import annotations

import json
import random

import aiohttp
import pytest

from coordinator.trust.access import AccessConfig
from tests.integration.fake_worker import FakeWorker
from tests.support import FRANCE, running_app

KEYS = AccessConfig(api_keys=("key-a", "key-b"), join_secret="join-123")


async def call(base: str, path: str, key: str | None = None, body=None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession() as session:
        method = session.post if body is not None else session.get
        async with method(base + path, json=body, headers=headers) as response:
            return response.status, await response.json(content_type=None)


async def test_api_keys_are_required_and_checked(shard_dir):
    async with running_app(shard_dir, access=KEYS) as (_, base):
        for key in (None, "wrong"):
            status, body = await call(base, "/v1/models", key)
            assert status == 401 and body["error"]["code"] == "invalid_api_key"
            assert body["error"]["type"] == "invalid_request_error"
        status, body = await call(base, "/v1/chat/completions", None, {"messages": FRANCE})
        assert status == 401
        assert (await call(base, "/v1/models", "key-b"))[0] == 200
        assert (await call(base, "/v1/status", "key-a"))[0] == 200
        assert (await call(base, "/health"))[0] == 200               # stays open


async def test_worker_without_a_valid_token_is_refused_before_the_upgrade(shard_dir):
    async with running_app(shard_dir, access=KEYS) as (_, base):
        async with aiohttp.ClientSession() as session:
            for query in ("", "?token=guess"):
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await session.ws_connect(base.replace("http", "ws") + "/ws/worker" + query)
                assert refused.value.status == 403
        worker = await FakeWorker(base, shard_dir, "trusted", token="join-123").start()
        await wait_ready_with_key(base, "key-a")
        await worker.stop()


async def wait_ready_with_key(base: str, key: str) -> None:
    for _ in range(300):
        status, body = await call(base, "/v1/status", key)
        if status == 200 and body["ready"]:
            return
        await __import__("asyncio").sleep(0.05)
    raise AssertionError("not ready")


async def test_rotating_the_join_secret_drops_old_workers(shard_dir):
    async with running_app(shard_dir, access=KEYS) as (_, base):
        worker = await FakeWorker(base, shard_dir, "old", token="join-123").start()
        await wait_ready_with_key(base, "key-a")
        status, body = await call(base, "/v1/admin/rotate-join-secret", "key-a", {})
        assert status == 200 and body["workers_dropped"] == 1 and body["join_token"] != "join-123"
        await __import__("asyncio").wait_for(worker.closed.wait(), 10)
        _, state = await call(base, "/v1/status", "key-a")
        assert state["workers"] == []
        fresh = await FakeWorker(base, shard_dir, "new", token=body["join_token"]).start()
        await wait_ready_with_key(base, "key-a")
        await fresh.stop()
        await worker.stop()


def fuzzed_bodies(count: int, seed: int = 11) -> list[bytes]:
    """Malformed or hostile bodies: broken JSON, deep nesting, huge numbers, wrong types."""
    rng = random.Random(seed)
    valid = {"messages": FRANCE, "max_tokens": 2}
    values = [None, True, -1, 0, 1e308, -1e308, 10**30, "x" * 50, [], {}, [[]], 3.5, "NaN", {"a": 1}]
    out = []
    for index in range(count):
        mode = index % 6
        if mode == 0:   # a valid body with one field replaced by a value of the wrong type or size
            body = dict(valid)
            field = rng.choice(["messages", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop",
                                "stream", "model", "tabswarm", "n", "stream_options", "prompt"])
            body[field] = rng.choice(values)
            out.append(json.dumps(body).encode())
        elif mode == 1:   # deep nesting
            depth = rng.choice([40, 500, 5000, 20000])
            out.append(('{"a":' * depth + "1" + "}" * depth).encode())
        elif mode == 2:   # truncated or byte-flipped JSON
            raw = bytearray(json.dumps(valid).encode())
            for _ in range(rng.randint(1, 4)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
            out.append(bytes(raw[: rng.randrange(1, len(raw) + 1)]))
        elif mode == 3:   # huge numbers
            out.append(rng.choice([b'{"messages": [], "max_tokens": 1' + b"0" * 5000 + b"}",
                                   b'{"temperature": 1e999, "messages": [{"role": "user", "content": "x"}]}',
                                   b'{"max_tokens": -1e999}', b"[" + b"9" * 10000 + b"]"]))
        elif mode == 4:   # wrong types inside messages
            message = {"role": rng.choice(["user", "tool", 5, None, "system"]),
                       "content": rng.choice([*values, "hi", [{"type": "text", "text": 3}]])}
            out.append(json.dumps({"messages": [message], "max_tokens": rng.choice(values)}).encode())
        else:   # not JSON at all
            out.append(rng.randbytes(rng.randrange(0, 64)))
    return out


async def test_ten_thousand_malformed_bodies_give_no_server_error(shard_dir):
    async with running_app(shard_dir, worker_wait_seconds=0.0) as (_, base):
        statuses: dict[int, int] = {}
        async with aiohttp.ClientSession() as session:
            for index, body in enumerate(fuzzed_bodies(10_000)):
                path = "/v1/chat/completions" if index % 2 else "/v1/completions"
                async with session.post(base + path, data=body,
                                        headers={"Content-Type": "application/json"}) as response:
                    answer = await response.json(content_type=None)
                    statuses[response.status] = statuses.get(response.status, 0) + 1
                    if response.status >= 500:
                        # only "no worker is connected" is a 5xx, and it is the documented answer
                        assert response.status == 503 and answer["error"]["code"] == "no_workers", (body[:200], answer)
                    else:
                        assert 400 <= response.status < 500 and "message" in answer["error"], (body[:200], answer)
        assert sum(statuses.values()) == 10_000 and 500 not in statuses
        assert statuses.get(400, 0) > 5_000


async def test_an_oversized_header_gets_400(shard_dir):
    import asyncio
    from urllib.parse import urlsplit

    async with running_app(shard_dir) as (_, base):
        address = urlsplit(base)
        reader, writer = await asyncio.open_connection(address.hostname, address.port)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
        await writer.drain()
        status_line = (await reader.read(200)).split(b"\r\n")[0]
        writer.close()
        assert status_line.split()[1] == b"400"
