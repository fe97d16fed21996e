"""Helpers shared by the integration and e2e levels: a real app on a real port, HTTP calls."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

import aiohttp
from aiohttp import web

from coordinator.access import AccessConfig
from coordinator.app import create_app
from coordinator.config import AppConfig, CodecPresets, ServerConfig
from coordinator.router import RouterConfig
from shards.coded_reference import coded_generate
from shards.sampling import SamplingParams

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
COLOURS = [{"role": "user", "content": "Name three colours."}]


@contextlib.asynccontextmanager
async def running_app(shard_dir, access: AccessConfig | None = None, ssl_context=None,
                      **server_options) -> AsyncIterator[tuple[web.Application, str]]:
    server = replace(ServerConfig(host="127.0.0.1", port=0, join_settle_seconds=0.05,
                                  worker_wait_seconds=30.0, heartbeat_seconds=30.0), **server_options)
    app = create_app(AppConfig(server=server, access=access or AccessConfig()), shard_dir)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield app, f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def status_of(base: str, verify_tls: bool = True) -> dict:
    connector = aiohttp.TCPConnector(ssl=False) if not verify_tls else None
    async with aiohttp.ClientSession(connector=connector) as session, \
            session.get(f"{base}/v1/status") as response:
        return await response.json()


async def wait_ready(base: str, workers: int, timeout: float = 60.0) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        status = await status_of(base)
        if status["ready"] and len(status["plan"]) == workers:
            return status
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"cluster not ready with {workers} stages: {json.dumps(status)[:2000]}")
        await asyncio.sleep(0.1)


async def post(base: str, path: str, body, raw: bool = False):
    async with aiohttp.ClientSession() as session:
        data = body if raw else json.dumps(body)
        async with session.post(base + path, data=data, headers={"Content-Type": "application/json"}) as response:
            return response.status, await response.json(content_type=None)


async def stream_events(base: str, body: dict) -> list:
    events: list = []
    async with aiohttp.ClientSession() as session, session.post(base + "/v1/chat/completions", json=body) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        async for line in response.content:
            text = line.decode().strip()
            if text.startswith("data: "):
                events.append(text[6:] if text == "data: [DONE]" else json.loads(text[6:]))
    return events


@dataclass
class StreamedTokens:
    """A streamed request as a client saw it: token ids, when each arrived, error events, usage."""

    ids: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    usage: dict | None = None


async def stream_tokens(base: str, body: dict, on_token=None) -> StreamedTokens:
    """POST a chat completion with stream=True and return_token_ids; `on_token(count)` is
    awaited after each token arrives (to kill or open tabs at a given point)."""
    body = body | {"stream": True, "tabswarm": {"return_token_ids": True, **body.get("tabswarm", {})}}
    out = StreamedTokens()
    async with aiohttp.ClientSession() as session, session.post(base + "/v1/chat/completions", json=body) as response:
        assert response.status == 200, await response.text()
        async for line in response.content:
            if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                out.errors.append(event["error"])
                continue
            if event.get("usage"):
                out.usage = event["usage"]
            for choice in event["choices"]:
                for token in choice.get("token_ids", []):
                    out.ids.append(token)
                    out.times.append(time.monotonic())
                    if on_token is not None:
                        await on_token(len(out.ids))
    return out


def reference_tokens(reference, messages, codec: str, max_tokens: int, cuts: list[int],
                     skips=(), pruned_heads=()) -> list[int]:
    """The reference executor's tokens through the same codec and stage cuts (EOS dropped),
    under the same (position, layer) skips and (layer, head) masks as a router would apply."""
    ids = reference.text.encode_chat(messages)
    tokens = coded_generate(reference, ids, SamplingParams(max_tokens=max_tokens), cuts,
                            CodecPresets().get(codec), frozenset({reference.manifest.eos_id}),
                            skips=frozenset(skips), pruned_heads=frozenset(pruned_heads),
                            heads_from=RouterConfig().protect_tokens)
    return [token for token in tokens if token != reference.manifest.eos_id]


def cuts_of(status: dict) -> list[int]:
    return [stage["layers"][0] for stage in status["plan"][1:]]
