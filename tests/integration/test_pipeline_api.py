"""The real coordinator app with fake workers over real sockets: tokens equal the
reference executor's, the API speaks OpenAI's shapes, bad input gets 4xx JSON errors,
and misbehaving workers fail requests fast instead of hanging them (churn: test_churn.py)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from protocol.frames import FrameKind, pack_frame
from shards.sampling import SamplingParams
from tests.integration.fake_worker import FakeWorker
from tests.support import (
    COLOURS,
    FRANCE,
    cuts_of,
    post,
    reference_tokens,
    running_app,
    stream_events,
    wait_ready,
)


@pytest.mark.parametrize("codec", ["lossless", "int8"])
async def test_tokens_equal_reference(two_worker_cluster, reference, codec):
    _, base, _ = two_worker_cluster
    status, body = await post(base, "/v1/chat/completions", {
        "messages": COLOURS, "max_tokens": 24, "tabswarm": {"codec": codec, "return_token_ids": True}})
    assert status == 200, body
    cuts = cuts_of(await wait_ready(base, 2))
    assert body["choices"][0]["token_ids"] == reference_tokens(reference, COLOURS, codec, 24, cuts)
    usage = body["usage"]
    assert usage["completion_tokens"] == len(body["choices"][0]["token_ids"])
    sampled = usage["completion_tokens"] + (body["choices"][0]["finish_reason"] == "stop")  # EOS was sampled too
    # One traversal per step; a verify pass (speculation is on by default) emits accepted + 1 tokens.
    steps = sampled - usage["tabswarm"]["speculation"]["accepted"]
    assert usage["tabswarm"]["stages"] == 2 and usage["tabswarm"]["hops"] == 2 * steps


async def test_lossless_pipeline_equals_plain_reference(two_worker_cluster, reference):
    _, base, _ = two_worker_cluster
    _, body = await post(base, "/v1/chat/completions", {
        "messages": FRANCE, "max_tokens": 16, "tabswarm": {"codec": "lossless", "return_token_ids": True}})
    plain = [step.token for step in reference.generate(reference.text.encode_chat(FRANCE), SamplingParams(max_tokens=16))]
    assert body["choices"][0]["token_ids"] == [t for t in plain if t != reference.manifest.eos_id]
    assert "Paris" in body["choices"][0]["message"]["content"]


async def test_streaming_matches_non_streaming(two_worker_cluster):
    _, base, _ = two_worker_cluster
    body = {"messages": FRANCE, "max_tokens": 16}
    _, whole = await post(base, "/v1/chat/completions", body)
    events = await stream_events(base, body | {"stream": True, "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    finishes = [e["choices"][0]["finish_reason"] for e in events[:-1] if e["choices"]]
    assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1])
    assert events[-2]["usage"]["completion_tokens"] == whole["usage"]["completion_tokens"]


async def test_completions_endpoint_and_stop_string(two_worker_cluster):
    _, base, _ = two_worker_cluster
    status, body = await post(base, "/v1/completions", {"prompt": "One, two, three, four,", "max_tokens": 12})
    assert status == 200 and body["object"] == "text_completion"
    full = body["choices"][0]["text"]
    assert full.strip().startswith("five")
    _, stopped = await post(base, "/v1/completions", {"prompt": "One, two, three, four,", "max_tokens": 12,
                                                      "stop": ["six"]})
    assert stopped["choices"][0]["finish_reason"] == "stop"
    assert "six" not in stopped["choices"][0]["text"] and full.startswith(stopped["choices"][0]["text"])


async def test_two_concurrent_requests_equal_their_solo_outputs(two_worker_cluster):
    _, base, _ = two_worker_cluster
    bodies = [{"messages": m, "max_tokens": 20, "tabswarm": {"return_token_ids": True}} for m in (FRANCE, COLOURS)]
    solo = [(await post(base, "/v1/chat/completions", b))[1]["choices"][0]["token_ids"] for b in bodies]
    together = await asyncio.gather(*(post(base, "/v1/chat/completions", b) for b in bodies))
    assert [body["choices"][0]["token_ids"] for _, body in together] == solo


async def test_models_health_status(two_worker_cluster):
    _, base, _ = two_worker_cluster
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/v1/models") as response:
            models = await response.json()
        async with session.get(base + "/health") as response:
            health = await response.json()
        async with session.get(base + "/v1/status") as response:
            status = await response.json()
    assert models["data"][0]["id"] == "SmolLM2-135M-Instruct.Q4_1"
    memory = health.pop("memory")
    assert health == {"status": "ok", "ready": True, "workers": 2, "reason": None}
    assert memory["holdable_layers"] == memory["layers"] == 30 and memory["shortfall"] is None
    assert [s["layers"] for s in status["plan"]] == [[0, 15], [15, 30]]
    assert {w["state"] for w in status["workers"]} == {"ready"}


@pytest.mark.parametrize("body, status, param", [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
    ({"model": "gpt-4", "messages": FRANCE}, 404, "model"),
    ({"messages": FRANCE, "temperature": -1}, 400, "temperature"),
    ({"messages": FRANCE, "temperature": "hot"}, 400, "temperature"),
    ({"messages": FRANCE, "top_p": 0}, 400, "top_p"),
    ({"messages": FRANCE, "top_k": -3}, 400, "top_k"),
    ({"messages": FRANCE, "max_tokens": 0}, 400, "max_tokens"),
    ({"messages": FRANCE, "max_tokens": 9000}, 400, "max_tokens"),
    ({"messages": FRANCE, "seed": 1.5}, 400, "seed"),
    ({"messages": FRANCE, "stop": [1]}, 400, "stop"),
    ({"messages": FRANCE, "stream": "yes"}, 400, "stream"),
    ({"messages": FRANCE, "n": 2}, 400, "n"),
    ({"messages": FRANCE, "tabswarm": {"codec": "zip"}}, 400, "tabswarm.codec"),
    ({"messages": [{"role": "user", "content": "word " * 9000}]}, 400, "messages"),
])
async def test_bad_input_gets_a_json_4xx(two_worker_cluster, body, status, param):
    _, base, _ = two_worker_cluster
    got_status, got = await post(base, "/v1/chat/completions", body, raw=isinstance(body, bytes))
    assert got_status == status
    assert set(got["error"]) == {"message", "type", "param", "code"} and got["error"]["message"]
    assert got["error"]["param"] == param


async def test_prompt_too_long_for_completions(two_worker_cluster):
    _, base, _ = two_worker_cluster
    status, body = await post(base, "/v1/completions", {"prompt": "word " * 9000})
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"


async def test_malformed_frame_closes_only_that_socket(shard_dir):
    async with running_app(shard_dir) as (_, base):
        good = await FakeWorker(base, shard_dir, "good").start()
        await wait_ready(base, 1)
        bad = await FakeWorker(base, shard_dir, "bad").start()
        frame = bytearray(pack_frame(FrameKind.RESULT, 0, 1, 0, 1, 4, 0, 0, 1, 0, b"\x00" * 16))
        frame[-1] ^= 0xFF  # payload no longer matches its CRC
        await bad.send_raw(bytes(frame))
        await asyncio.wait_for(bad.closed.wait(), 10)
        assert bad.close_code == 1003
        status, body = await post(base, "/v1/chat/completions", {"messages": FRANCE, "max_tokens": 8})
        assert status == 200 and "Paris" in body["choices"][0]["message"]["content"]
        await good.stop()
        await bad.stop()


async def test_worker_refusing_every_step_fails_the_request_fast(shard_dir):
    """A tab answers each step with an error for that stream: the coordinator replays the
    request (a refusal is not a loss), and after max_replays refusals it fails with a
    clear error instead of waiting for any timeout."""
    async with running_app(shard_dir, max_replays=3) as (_, base):
        first = await FakeWorker(base, shard_dir, "first").start()
        refusing = await FakeWorker(base, shard_dir, "refusing", refuse=True).start()
        await wait_ready(base, 2)
        started = asyncio.get_running_loop().time()
        status, body = await asyncio.wait_for(
            post(base, "/v1/chat/completions", {"messages": FRANCE, "max_tokens": 8}), 10)
        assert asyncio.get_running_loop().time() - started < 5
        assert status == 503 and body["error"]["code"] == "worker_lost"
        assert "not-assigned" in body["error"]["message"] and "giving up" in body["error"]["message"]
        assert refusing.frames_seen == 4   # the first try and three replays
        await first.stop()
        await refusing.stop()


async def post_for_headers(base: str, body: dict) -> tuple[int, dict, dict]:
    async with aiohttp.ClientSession() as session, session.post(base + "/v1/chat/completions", json=body) as response:
        return response.status, dict(response.headers), await response.json(content_type=None)


async def test_no_workers_gives_503_not_a_hang(shard_dir):
    async with running_app(shard_dir, worker_wait_seconds=0.5) as (_, base):
        status, headers, body = await post_for_headers(base, {"messages": FRANCE})
        assert status == 503 and body["error"]["code"] == "no_workers"
        assert "open the worker page" in body["error"]["message"]
        assert int(headers["Retry-After"]) > 0   # a client knows when to try again


async def test_full_queue_gets_429(shard_dir):
    async with running_app(shard_dir, max_active=1, max_queue=0) as (_, base):
        worker = await FakeWorker(base, shard_dir, "only").start()
        await wait_ready(base, 1)
        first = asyncio.create_task(post(base, "/v1/chat/completions", {"messages": COLOURS, "max_tokens": 40}))
        await asyncio.sleep(0.3)
        status, headers, body = await post_for_headers(base, {"messages": FRANCE, "max_tokens": 4})
        assert status == 429 and body["error"]["type"] == "rate_limit_error"
        assert int(headers["Retry-After"]) > 0
        assert (await first)[0] == 200
        await worker.stop()
