"""The product, end to end: a real coordinator, real Chromium worker tabs running the
real model with onnxruntime-web (WASM), requests over HTTP. Tokens must equal the
reference executor's (lossless codec), and the reference run through the same codec
(default int8 codec)."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

import pytest

from shards.sampling import SamplingParams
from tests.e2e.tabs import Tabs
from tests.support import (
    COLOURS,
    FRANCE,
    cuts_of,
    post,
    reference_tokens,
    running_app,
    status_of,
    stream_events,
    stream_tokens,
    wait_batched_pass,
    wait_ready,
)

pytestmark = pytest.mark.e2e
LOAD_TIMEOUT = 180.0
DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="module")
async def cluster(browser, shard_dir):
    async with running_app(shard_dir, join_settle_seconds=1.5, step_timeout_seconds=60.0) as (_, base):
        tabs = await Tabs.open_for(browser, base)
        await tabs.open("tab-1")
        await tabs.open("tab-2")
        await wait_ready(base, 2, LOAD_TIMEOUT)
        yield base, tabs
        await tabs.close_all()


def assert_covers_all_layers(status: dict, stages: int) -> None:
    layers = [stage["layers"] for stage in status["plan"]]
    assert len(layers) == stages and layers[0][0] == 0 and layers[-1][1] == 30
    assert all(first[1] == second[0] for first, second in itertools.pairwise(layers))


async def test_two_tabs_split_the_layers(cluster):
    base, _ = cluster
    status = await wait_ready(base, 2)
    assert_covers_all_layers(status, 2)
    assert {worker["backend"] for worker in status["workers"]} == {"wasm"}


async def test_dashboard_follows_tabs_joining_and_leaving_and_lists_a_request(cluster, browser):
    """The live dashboard in Chromium: 2 tabs, 3 when one joins, 2 when it closes (no
    reload); a request shows up while it runs (screenshot for docs/) and when it is done."""
    base, tabs = cluster
    page = await browser.new_page(viewport={"width": 1360, "height": 860})

    async def cards(count: int) -> None:
        await page.wait_for_function(f"document.querySelectorAll('.tab[data-worker-id]').length === {count}",
                                     timeout=60_000)

    try:
        await page.goto(base + "/dashboard")
        await cards(2)
        assert await page.locator(".tab.active[data-state=ready]").count() == 2
        assert "tab-1" in await page.inner_text("#pipeline")
        await tabs.open("tab-join")
        await cards(3)
        assert "tab-join" in await page.inner_text("#pipeline")
        await page.wait_for_selector("#events li.join", timeout=10_000)
        await tabs.close("tab-join")
        await cards(2)
        await page.wait_for_selector("#events li.leave", timeout=10_000)
        story = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]
        request = asyncio.create_task(post(base, "/v1/chat/completions", {"messages": story, "max_tokens": 96}))
        await page.wait_for_selector("#requests tr.running", timeout=30_000)
        await page.wait_for_function("(() => { const row = document.querySelector('#requests tr.running');"
                                     " return row !== null && Number(row.children[4].textContent) >= 40; })()",
                                     timeout=60_000)   # tokens counted live, a few points on the sparklines
        await page.screenshot(path=str(DOCS / "dashboard.png"), full_page=True)
        status, body = await request
        assert status == 200
        tokens = body["usage"]["completion_tokens"]
        done = page.locator("#requests tr.done").first
        await done.wait_for(timeout=10_000)
        assert (await done.locator("td").nth(4).inner_text()) == str(tokens)
    finally:
        await page.close()


@pytest.mark.parametrize("codec", ["lossless", "int8"])
async def test_tokens_equal_reference(cluster, reference, codec):
    base, _ = cluster
    status, body = await post(base, "/v1/chat/completions", {
        "messages": COLOURS, "max_tokens": 24, "tabswarm": {"codec": codec, "return_token_ids": True}})
    assert status == 200, body
    cuts = cuts_of(await wait_ready(base, 2))
    assert body["choices"][0]["token_ids"] == reference_tokens(reference, COLOURS, codec, 24, cuts)


async def test_chat_answer_and_stream(cluster, reference):
    base, _ = cluster
    _, whole = await post(base, "/v1/chat/completions", {"messages": FRANCE, "max_tokens": 20,
                                                         "tabswarm": {"return_token_ids": True}})
    plain = [s.token for s in reference.generate(reference.text.encode_chat(FRANCE), SamplingParams(max_tokens=20))]
    assert whole["choices"][0]["token_ids"] == [t for t in plain if t != reference.manifest.eos_id]
    assert whole["choices"][0]["message"]["content"] == "The capital of France is Paris."
    events = await stream_events(base, {"messages": FRANCE, "max_tokens": 20, "stream": True})
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert events[-1] == "[DONE]" and text == whole["choices"][0]["message"]["content"]


async def test_two_concurrent_requests_equal_their_solo_outputs(cluster):
    base, _ = cluster
    bodies = [{"messages": m, "max_tokens": 20, "tabswarm": {"return_token_ids": True}} for m in (FRANCE, COLOURS)]
    solo = [(await post(base, "/v1/chat/completions", b))[1]["choices"][0]["token_ids"] for b in bodies]
    together = await asyncio.gather(*(post(base, "/v1/chat/completions", b) for b in bodies))
    assert [body["choices"][0]["token_ids"] for _, body in together] == solo


async def test_eight_concurrent_requests_equal_their_solo_answers(cluster):
    """Eight distinct greedy requests at once through 2 WASM tabs, batched into shared passes
    (worker_web/batch_former.js), each equal to its solo answer. With the int8-stable codec the answer does not depend on where the plan cuts,
    so a replan under load (bench/concurrency.py saw four in one run) cannot change it; the
    tabs' spot checks run under it too (an honest tab must not be evicted)."""
    base, _ = cluster
    topics = ("the sea", "bees", "the moon", "rivers", "owls", "deserts", "comets", "caves")
    bodies = [{"messages": [{"role": "user", "content": f"Tell me about {topic}."}], "max_tokens": 12,
               "tabswarm": {"codec": "int8-stable", "return_token_ids": True, "speculation": {"method": "off"}}}
              for topic in topics]
    before = (await status_of(base))["verification"]["failed"]
    solo = [(await post(base, "/v1/chat/completions", body))[1]["choices"][0]["token_ids"] for body in bodies]
    together = await asyncio.gather(*(post(base, "/v1/chat/completions", body) for body in bodies))
    assert [code for code, _ in together] == [200] * len(bodies)
    assert [answer["choices"][0]["token_ids"] for _, answer in together] == solo
    assert all(len(tokens) > 0 for tokens in solo)
    assert (await status_of(base))["verification"]["failed"] == before
    # and the tabs ran them batched: several streams' rows in one pass (stats come on release)
    await wait_batched_pass(base)


async def wait_standby_ready(base: str, timeout: float = LOAD_TIMEOUT) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        status = await status_of(base)
        if status["ready"] and status["standbys"] and all(standby["ready"] for standby in status["standbys"]):
            return status
        assert asyncio.get_running_loop().time() < deadline, json.dumps(status)[:2000]
        await asyncio.sleep(0.25)


def name_of(status: dict, worker_id: str) -> str:
    return next(worker["name"] for worker in status["workers"] if worker["id"] == worker_id)


async def test_third_tab_becomes_a_standby_replica(cluster, reference):
    """Two stages are all this model needs; a third tab loads a full replica instead, so a
    lost stage can be covered without a download."""
    base, tabs = cluster
    await tabs.open("tab-3")
    status = await wait_standby_ready(base)
    assert_covers_all_layers(status, 2)
    assert [standby["layers"] for standby in status["standbys"]] == [[0, 30]]
    assert name_of(status, status["standbys"][0]["worker"]) == "tab-3"
    _, body = await post(base, "/v1/chat/completions", {
        "messages": COLOURS, "max_tokens": 24, "tabswarm": {"codec": "lossless", "return_token_ids": True}})
    assert body["choices"][0]["token_ids"] == reference_tokens(reference, COLOURS, "lossless", 24, cuts_of(status))
    assert body["usage"]["tabswarm"]["stages"] == 2


async def test_tab_closed_mid_stream_and_a_tab_opened_mid_stream_the_stream_completes(cluster, reference):
    """3 tabs; a streamed greedy request; a stage tab is closed after 4 tokens, and later a
    tab opens: the stream completes with the reference's tokens and no error event."""
    base, tabs = cluster
    status = await wait_standby_ready(base)
    cuts = cuts_of(status)
    victim = name_of(status, status["plan"][1]["worker"])

    async def close_then_open(count: int) -> None:
        if count == 4:
            await tabs.close(victim)
        if count == 12:
            await tabs.open(victim)   # the same tab coming back, as a new worker

    streamed = await asyncio.wait_for(stream_tokens(base, {"messages": COLOURS, "max_tokens": 40}, close_then_open), 120)
    assert not streamed.errors, streamed.errors
    assert streamed.ids == reference_tokens(reference, COLOURS, "int8", 40, cuts)
    status = await wait_standby_ready(base)
    assert cuts_of(status) == cuts and len(status["workers"]) == 3


async def test_reopened_tab_loads_its_layers_from_the_browser_cache(cluster):
    base, tabs = cluster
    status = await wait_standby_ready(base)
    standby = name_of(status, status["standbys"][0]["worker"])
    await tabs.close(standby)
    deadline = asyncio.get_running_loop().time() + 30
    while len((await status_of(base))["workers"]) != 2:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.2)
    await tabs.open(standby)
    status = await wait_standby_ready(base)
    reopened = next(worker for worker in status["workers"] if worker["name"] == standby)
    assert reopened["cached"] is True


async def test_chat_page_answers_a_person(cluster, browser):
    base, _ = cluster
    page = await browser.new_page()
    try:
        await page.goto(base + "/")
        await page.wait_for_selector("text=ready", timeout=30_000)
        await page.fill("#prompt", "What is the capital of France?")
        await page.press("#prompt", "Enter")
        await page.wait_for_function(
            "document.querySelector('.assistant') && document.querySelector('.assistant').textContent.includes('Paris')",
            timeout=60_000)
        await page.wait_for_selector(".meta:has-text('tok/s')", timeout=30_000)
        assert "tab-1" in await page.inner_text("#workers")
    finally:
        await page.close()


async def test_status_reports_worker_activity(cluster):
    base, _ = cluster
    status = await status_of(base)
    assert status["tokens_generated"] > 0
    assert all(worker["bytes_sent"] > 0 for worker in status["workers"])


async def test_forced_skips_and_node_bypass_in_the_browser_equal_the_reference(cluster, reference):
    """The tabs run K/V-only graphs for skipped layers and backfill a bypassed node's K/V:
    the tokens equal the reference executor's under the same skip decisions."""
    base, _ = cluster
    status = await wait_ready(base, 2, LOAD_TIMEOUT)
    cuts = cuts_of(status)
    prompt_length = len(reference.text.encode_chat(COLOURS))
    second = range(cuts[0], 30)
    script = [(prompt_length + p, layer) for p in (2, 5) for layer in second]
    script += [(prompt_length + 3, 7), (prompt_length + 8, 20)]
    want = reference_tokens(reference, COLOURS, "lossless", 16, cuts, skips=script)
    code, body = await post(base, "/v1/chat/completions", {
        "messages": COLOURS, "max_tokens": 16,
        "tabswarm": {"codec": "lossless", "return_token_ids": True,
                     "router": {"policy": "script", "script": [list(pair) for pair in script]}}})
    assert code == 200, body
    assert body["choices"][0]["token_ids"] == want
    assert body["usage"]["tabswarm"]["nodes_bypassed"] == 2


async def test_head_masks_in_the_browser_equal_the_reference(cluster, reference):
    """The tabs apply the coordinator's head masks (and report each head's contribution for
    the running statistics): the tokens equal the reference executor's under the same masks."""
    base, _ = cluster
    cuts = cuts_of(await wait_ready(base, 2, LOAD_TIMEOUT))
    pruned = [(layer, head) for layer in range(2, 6) for head in range(9)] + [(20, 0), (20, 4), (20, 8)]
    want = reference_tokens(reference, COLOURS, "lossless", 12, cuts, pruned_heads=pruned)
    assert want != reference_tokens(reference, COLOURS, "lossless", 12, cuts)
    samples_before = sum((await status_of(base))["router"]["head_samples_per_layer"])
    code, body = await post(base, "/v1/chat/completions", {
        "messages": COLOURS, "max_tokens": 12,
        "tabswarm": {"codec": "lossless", "return_token_ids": True,
                     # prune_heads asks the tabs for head statistics; the script decides the masks
                     "router": {"policy": "off", "prune_heads": 0.1,
                                "head_script": [list(pair) for pair in pruned]}}})
    assert code == 200, body
    assert body["choices"][0]["token_ids"] == want
    assert body["usage"]["tabswarm"]["heads_pruned"] == len(pruned) * (body["usage"]["completion_tokens"] - 1)
    assert sum((await status_of(base))["router"]["head_samples_per_layer"]) > samples_before


CODE_FIX = [{"role": "user", "content": "Fix the bug in this code and show the whole function:\n"
                                        "def add(a, b):\n    return a - b\n"}]
REPEAT = [{"role": "user", "content": "Repeat this sentence exactly: the quick brown fox jumps over the lazy dog, "
                                      "and the lazy dog sleeps under the old oak tree."}]
SELF_DRAFTS = {"method": "self", "max_draft": 2, "adaptive": False,
               "draft_router": {"policy": "script", "script": [[p, layer] for p in range(160) for layer in (10, 20)]}}


@pytest.mark.parametrize("codec", ["lossless", "int8"])
async def test_speculative_greedy_tokens_equal_the_reference(cluster, reference, codec):
    """Drafts verified in multi-row VERIFY passes through the tabs (and the cache cuts after
    rejected ones) give exactly the reference's plain greedy tokens."""
    base, _ = cluster
    cuts = cuts_of(await wait_ready(base, 2))
    rejected = 0
    for messages, speculation in ((REPEAT, {"method": "lookup", "max_draft": 5, "adaptive": False}),
                                  (CODE_FIX, SELF_DRAFTS)):
        want = reference_tokens(reference, messages, codec, 40, cuts)
        status, body = await post(base, "/v1/chat/completions", {
            "messages": messages, "max_tokens": 40,
            "tabswarm": {"codec": codec, "return_token_ids": True, "speculation": speculation}})
        assert status == 200, body
        assert body["choices"][0]["token_ids"] == want, speculation["method"]
        verified = body["usage"]["tabswarm"]["speculation"]
        assert verified["verify_passes"] > 0 and verified["accepted"] > 0, (speculation["method"], verified)
        rejected += verified["drafted"] - verified["accepted"]
    assert rejected > 0   # some drafts were rejected: the tabs' caches were cut and went on correctly
