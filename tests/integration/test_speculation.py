"""Speculative decoding through the real coordinator and fake workers over real sockets:
verify passes (multi-row VERIFY frames), cache truncation and replay, against plain decoding."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.test_churn import Swarm
from tests.support import post, running_app, stream_tokens

GROUNDED = [
    [{"role": "user", "content": "Repeat this sentence exactly: the quick brown fox jumps over the lazy dog, "
                                 "and the lazy dog sleeps under the old oak tree."}],
    [{"role": "user", "content": "Fix the bug in this code and show the whole function:\n"
                                 "def add(a, b):\n    return a - b\n"}],
    [{"role": "user", "content": "Quote the first line of this poem: Roses are red, violets are blue, "
                                 "sugar is sweet, and so are you."}],
]
OPEN = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Tell me something about cats."}],
]


async def completion(base: str, messages, speculation: dict | None, codec: str = "int8", max_tokens: int = 40,
                     **extra) -> dict:
    body = {"messages": messages, "max_tokens": max_tokens,
            "tabswarm": {"codec": codec, "return_token_ids": True,
                         **({"speculation": speculation} if speculation else {})}, **extra}
    code, answer = await post(base, "/v1/chat/completions", body)
    assert code == 200, answer
    return answer


@pytest.mark.parametrize("codec", ["int8", "lossless"])
async def test_lookup_speculation_gives_plain_greedy_tokens_for_many_prompts_and_lengths(two_worker_cluster,
                                                                                          codec):
    _, base, workers = two_worker_cluster
    accepted = 0
    for messages in GROUNDED + OPEN:
        plain = await completion(base, messages, {"method": "off"}, codec)
        assert plain["usage"]["tabswarm"]["speculation"]["verify_passes"] == 0
        for max_draft in (1, 3, 8):
            fast = await completion(base, messages, {"method": "lookup", "max_draft": max_draft,
                                                     "adaptive": False}, codec)
            assert fast["choices"][0]["token_ids"] == plain["choices"][0]["token_ids"], (messages, max_draft)
            assert fast["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
            usage = fast["usage"]["tabswarm"]["speculation"]
            assert usage["method"] == "lookup" and usage["accepted"] <= usage["drafted"]
            accepted += usage["accepted"]
    assert accepted > 20   # the grounded prompts really were sped up, not decoded plainly
    assert all(worker.reports_asked == 0 for worker in workers)   # no router: nobody asked for statistics


async def test_accepted_drafts_cut_hops_per_token(two_worker_cluster):
    _, base, _ = two_worker_cluster
    messages = GROUNDED[0]
    plain = await completion(base, messages, {"method": "off"}, max_tokens=32)
    fast = await completion(base, messages, {"method": "lookup", "max_draft": 6}, max_tokens=32)
    assert plain["choices"][0]["token_ids"] == fast["choices"][0]["token_ids"]
    # Plain decoding: one traversal (two hops) per sampled token, the end-of-text one included.
    sampled = plain["usage"]["completion_tokens"] + (plain["choices"][0]["finish_reason"] == "stop")
    assert plain["usage"]["tabswarm"]["hops"] == 2 * sampled
    verified = fast["usage"]["tabswarm"]["speculation"]
    # Each verify pass emits accepted + 1 tokens for one traversal.
    assert fast["usage"]["tabswarm"]["hops"] == 2 * (sampled - verified["accepted"])
    assert verified["verify_passes"] > 0 and verified["accepted"] >= verified["verify_passes"]
    assert fast["usage"]["tabswarm"]["hops_per_token"] < plain["usage"]["tabswarm"]["hops_per_token"]


async def test_self_speculation_gives_plain_greedy_tokens(two_worker_cluster):
    _, base, _ = two_worker_cluster
    for messages in (GROUNDED[1], OPEN[1]):
        plain = await completion(base, messages, {"method": "off"}, max_tokens=24)
        fast = await completion(base, messages, {"method": "self", "max_draft": 3, "adaptive": False,
                                                 "draft_router": {"policy": "script",
                                                                  "script": [[p, layer] for p in range(200)
                                                                             for layer in range(2, 28, 2)]}},
                                max_tokens=24)
        assert fast["choices"][0]["token_ids"] == plain["choices"][0]["token_ids"]
        usage = fast["usage"]["tabswarm"]
        assert usage["speculation"]["draft_steps"] > 0 and usage["layers_skipped"] > 0


async def test_sampled_speculation_is_reproducible_with_a_seed(two_worker_cluster):
    _, base, _ = two_worker_cluster
    speculation = {"method": "lookup", "max_draft": 4}
    first = await completion(base, GROUNDED[0], speculation, temperature=0.8, seed=11, max_tokens=30)
    second = await completion(base, GROUNDED[0], speculation, temperature=0.8, seed=11, max_tokens=30)
    assert first["choices"][0]["token_ids"] == second["choices"][0]["token_ids"]
    assert first["usage"]["tabswarm"]["speculation"]["verify_passes"] > 0


async def test_concurrent_speculative_requests_equal_their_solo_outputs(two_worker_cluster):
    _, base, _ = two_worker_cluster
    cases = [(messages, method) for messages in GROUNDED + OPEN[:1] for method in ("lookup", "self", "off")]
    solo = [await completion(base, messages, {"method": method, "max_draft": 4}, max_tokens=24)
            for messages, method in cases]
    together = await asyncio.gather(*(completion(base, messages, {"method": method, "max_draft": 4},
                                                 max_tokens=24) for messages, method in cases))
    for alone, concurrent in zip(solo, together, strict=True):
        assert concurrent["choices"][0]["token_ids"] == alone["choices"][0]["token_ids"]


@pytest.mark.parametrize("speculation", [
    {"method": "sometimes"}, {"max_draft": 0}, {"max_draft": 99}, {"adaptive": "yes"}, {"drafts": 3},
    {"method": "self", "draft_router": {"policy": "nope"}}, "lookup",
])
async def test_bad_speculation_settings_get_400(two_worker_cluster, speculation):
    _, base, _ = two_worker_cluster
    code, body = await post(base, "/v1/chat/completions", {"messages": OPEN[0], "max_tokens": 4,
                                                          "tabswarm": {"speculation": speculation}})
    assert code == 400, body
    assert body["error"]["message"]


@pytest.mark.parametrize("codec", ["int8", "lossless"])
async def test_a_worker_lost_during_verify_passes_recovers_by_replay(shard_dir, codec):
    """Kill a stage's worker mid-stream: the standby is rebuilt from that stage's recorded
    frames (verify passes and the cuts after rejected drafts included) while the other
    stage keeps its caches, and the tokens are plain greedy decoding's."""
    async with running_app(shard_dir) as (app, base):
        swarm = Swarm(app, base, shard_dir)
        await swarm.start_with_ready_standby()
        body = {"messages": GROUNDED[1], "max_tokens": 48, "stream_options": {"include_usage": True},
                "tabswarm": {"codec": codec, "speculation": {"method": "lookup", "max_draft": 4}}}
        plain = await stream_tokens(base, {**body, "tabswarm": {"codec": codec, "speculation": {"method": "off"}}})
        assert len(plain.ids) > 20
        survivor, victim = swarm.stage_workers()
        fast = await stream_tokens(base, body, swarm.killer_at(victim, 6))
        assert not fast.errors and fast.ids == plain.ids
        usage = fast.usage["tabswarm"]
        assert usage["replays"] == 1 and usage["speculation"]["verify_passes"] > 0
        assert len(survivor.released) == 2   # one stream per request: the survivor was never replayed
        await swarm.stop()
