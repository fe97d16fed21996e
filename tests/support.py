"""Helpers shared by the integration and e2e levels: a real app on a real port, HTTP calls."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiohttp
from aiohttp import web

from coordinator.config import AppConfig, CodecPresets, RuntimeConfig, ServerConfig
from coordinator.engine.router import RouterConfig
from coordinator.local_swarm import local_coordinator, post_json
from coordinator.local_swarm import status_of as status_of  # re-exported for the tests
from coordinator.local_swarm import wait_ready as wait_ready
from coordinator.trust.access import AccessConfig
from shards.cache_location import cache_root_from, models_dir, shards_dir
from shards.coded_reference import coded_generate
from shards.sampling import SamplingParams

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
COLOURS = [{"role": "user", "content": "Name three colours."}]


@contextlib.asynccontextmanager
async def running_app(shard_dir, access: AccessConfig | None = None, ssl_context=None, compute: str = "auto",
                      **server_options) -> AsyncIterator[tuple[web.Application, str]]:
    server = replace(ServerConfig(host="127.0.0.1", port=0, join_settle_seconds=0.05,
                                  worker_wait_seconds=30.0, heartbeat_seconds=30.0), **server_options)
    config = AppConfig(server=server, access=access or AccessConfig(), runtime=RuntimeConfig(compute=compute))
    async with local_coordinator(config, shard_dir, ssl_context) as (app, base):
        yield app, base


post = post_json


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
    under the same (position, layer) skips and (layer, head) masks as a router would apply.
    `messages`: a chat, or a plain prompt (a string)."""
    ids = reference.text.encode(messages) if isinstance(messages, str) else reference.text.encode_chat(messages)
    tokens = coded_generate(reference, ids, SamplingParams(max_tokens=max_tokens), cuts,
                            CodecPresets().get(codec), reference.manifest.stop_set,
                            skips=frozenset(skips), pruned_heads=frozenset(pruned_heads),
                            heads_from=RouterConfig().protect_tokens)
    return [token for token in tokens if token not in reference.manifest.stop_set]


def cuts_of(status: dict) -> list[int]:
    return [stage["layers"][0] for stage in status["plan"][1:]]


async def wait_batched_pass(base: str, timeout: float = 10.0) -> None:
    """Until some tab reports a pass that held two or more streams' frames (tabs send their
    pass statistics on release, so they may land just after the responses)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while max((worker.get("passes") or {}).get("largest", 0) for worker in (await status_of(base))["workers"]) < 2:
        assert asyncio.get_running_loop().time() < deadline, (await status_of(base))["workers"]
        await asyncio.sleep(0.25)


def shard_cache() -> Path:
    """The shard cache `tabswarm serve` uses (the test session is an entry point: it reads the
    environment here and hands the folder to `convert`)."""
    return shards_dir(cache_root_from(os.environ))


def model_cache() -> Path:
    return models_dir(cache_root_from(os.environ))
