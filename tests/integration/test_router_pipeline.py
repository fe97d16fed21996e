"""Layer skipping through the real coordinator and fake workers over real sockets:
forced skips and whole-node bypasses give exactly the reference executor's tokens
under the same skip decisions, bypassed nodes still get K/V backfill, and usage counts it."""

from __future__ import annotations

import pytest

from tests.support import COLOURS, cuts_of, post, reference_tokens, status_of, wait_ready


@pytest.mark.parametrize("codec", ["lossless", "int8"])
async def test_forced_bypass_equals_reference_with_the_same_skips(two_worker_cluster, reference, codec):
    _, base, workers = two_worker_cluster
    status = await wait_ready(base, 2)
    cuts = cuts_of(status)
    prompt_length = len(reference.text.encode_chat(COLOURS))
    second = range(cuts[0], 30)
    bypass_positions = [prompt_length + 2, prompt_length + 5]           # whole second node
    single_skips = [(prompt_length + 3, 7), (prompt_length + 8, 20)]    # one layer each
    script = [(p, layer) for p in bypass_positions for layer in second] + single_skips
    want = reference_tokens(reference, COLOURS, codec, 16, cuts, skips=script)
    baseline = reference_tokens(reference, COLOURS, codec, 16, cuts)
    for worker in workers:
        worker.skip_masks.clear()
    code, body = await post(base, "/v1/chat/completions", {
        "messages": COLOURS, "max_tokens": 16,
        "tabswarm": {"codec": codec, "return_token_ids": True,
                     "router": {"policy": "script", "script": [list(pair) for pair in script]}}})
    assert code == 200, body
    assert body["choices"][0]["token_ids"] == want
    assert want != baseline or codec == "lossless"  # the skips are real (they change the computation)
    usage = body["usage"]["tabswarm"]
    assert usage["nodes_bypassed"] == 2 and usage["hops_saved"] == 2
    assert usage["layers_skipped"] == 2 * len(second) + 2
    # The bypassed node still got the hidden state (no reply wanted) to write its K/V.
    second_worker = next(w for w in workers if w.assigned == (cuts[0], 30))
    backfills = [(p, mask) for p, mask, no_reply in second_worker.skip_masks if no_reply]
    assert backfills == [(p, (1 << len(second)) - 1) for p in bypass_positions]


async def test_router_statistics_and_skips_show_in_status(two_worker_cluster):
    _, base, _ = two_worker_cluster
    # Warm the running means past the router's warm-up (32 observations per layer). Only a
    # request whose router measures feeds them (threshold 0: it measures and skips nothing);
    # before, this warm-up had no router, and the test passed only after the module's earlier
    # tests had warmed the means.
    for _ in range(3):
        code, body = await post(base, "/v1/chat/completions", {
            "messages": COLOURS, "max_tokens": 20, "tabswarm": {"router": {"policy": "predictor", "threshold": 0.0}}})
        assert code == 200 and body["usage"]["tabswarm"]["layers_skipped"] == 0
    before = (await status_of(base))["router"]["skipped_per_layer"]
    code, body = await post(base, "/v1/chat/completions", {
        "messages": COLOURS, "max_tokens": 20, "tabswarm": {"router": {"policy": "predictor", "threshold": 5.0}}})
    assert code == 200
    usage = body["usage"]["tabswarm"]
    assert usage["layers_skipped"] > 0 and usage["layer_executions"] >= usage["layers_skipped"]
    router = (await status_of(base))["router"]
    skipped = [after - earlier for after, earlier in zip(router["skipped_per_layer"], before, strict=True)]
    assert skipped[0] == 0 and skipped[29] == 0          # first and last layer protected
    assert sum(skipped) == usage["layers_skipped"]
    assert all(ratio > 0 for ratio in router["mean_ratio_per_layer"])


@pytest.mark.parametrize("router, param", [
    ({"policy": "wild"}, "tabswarm.router"),
    ({"policy": "predictor", "threshold": "low"}, "threshold"),
    ({"policy": "script", "script": [[1]]}, "tabswarm.router.script"),
])
async def test_bad_router_options_are_400(two_worker_cluster, router, param):
    _, base, _ = two_worker_cluster
    code, body = await post(base, "/v1/chat/completions", {"messages": COLOURS, "tabswarm": {"router": router}})
    assert code == 400 and body["error"]["param"] == param
