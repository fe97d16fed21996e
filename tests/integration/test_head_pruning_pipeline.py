"""Attention-head pruning through the real coordinator and fake workers over real sockets:
forced head masks give exactly the reference executor's tokens under the same masks, the
masks reach only the workers holding those layers, usage counts the masked heads, and the
learned policy masks the heads the running statistics rank lowest."""

from __future__ import annotations

import pytest

from coordinator.app import ENGINE
from coordinator.engine.head_pruning import pruned_heads
from coordinator.engine.router import RouterConfig
from tests.support import COLOURS, cuts_of, post, reference_tokens, status_of, wait_ready

# Every head of layers 2-5 and three heads of layer 20: enough to change the answer.
HEAD_SCRIPT = [(layer, head) for layer in range(2, 6) for head in range(9)] + [(20, 0), (20, 4), (20, 8)]


@pytest.mark.parametrize("codec", ["lossless", "int8"])
async def test_forced_head_masks_equal_reference_with_the_same_masks(two_worker_cluster, reference, codec):
    _, base, workers = two_worker_cluster
    cuts = cuts_of(await wait_ready(base, 2))
    want = reference_tokens(reference, COLOURS, codec, 12, cuts, pruned_heads=HEAD_SCRIPT)
    unpruned = reference_tokens(reference, COLOURS, codec, 12, cuts)
    assert want != unpruned   # the masks change the computation, so equality below means they were applied
    code, body = await post(base, "/v1/chat/completions", {
        "messages": COLOURS, "max_tokens": 12,
        "tabswarm": {"codec": codec, "return_token_ids": True,
                     "router": {"policy": "off", "head_script": [list(pair) for pair in HEAD_SCRIPT]}}})
    assert code == 200, body
    assert body["choices"][0]["token_ids"] == want
    decode_steps = body["usage"]["completion_tokens"] - 1   # the first token comes from the prompt frame
    assert body["usage"]["tabswarm"]["heads_pruned"] == len(HEAD_SCRIPT) * decode_steps
    for worker in workers:
        start, end = worker.assigned
        sent = [m for m in worker.head_mask_messages if m.stream == worker.released[-1]]
        wanted = [(layer, head) for layer, head in HEAD_SCRIPT if start <= layer < end]
        assert len(sent) == 1 and sent[0].layer_start == start
        masked = {(start + offset, head) for offset, row in enumerate(sent[0].masks)
                  for head, keep in enumerate(row) if keep == 0}
        assert masked == set(wanted)


async def test_learned_pruning_masks_the_lowest_ranked_heads(two_worker_cluster):
    app, base, workers = two_worker_cluster
    assert all(worker.reports_asked == 0 for worker in workers)   # nothing reads statistics yet
    # Workers report head contributions every 8th position, and only to a request whose
    # router reads them (here: pruning that has too few samples yet to prune anything).
    for _ in range(2):
        await post(base, "/v1/chat/completions", {"messages": COLOURS, "max_tokens": 40,
                                                  "tabswarm": {"router": {"policy": "off", "prune_heads": 0.1}}})
    assert all(worker.reports_asked > 0 for worker in workers)
    engine = app[ENGINE]
    samples = (await status_of(base))["router"]["head_samples_per_layer"]
    assert all(count > 0 for count in samples) and samples == engine.head_statistics.count
    config = RouterConfig(prune_heads=0.1, head_warmup=1)
    want = pruned_heads(config, engine.head_statistics)
    assert len(want) == int(0.1 * 28 * 9) and all(layer not in (0, 29) for layer, _ in want)
    code, body = await post(base, "/v1/chat/completions", {
        "messages": COLOURS, "max_tokens": 6, "tabswarm": {"router": {"policy": "off", "prune_heads": 0.1}}})
    assert code == 200, body
    # Two short answers give fewer than head_warmup (16) samples per layer: nothing is pruned yet.
    assert max(engine.head_statistics.count) < RouterConfig().head_warmup
    assert body["usage"]["tabswarm"]["heads_pruned"] == 0
    for worker in workers:
        worker.head_mask_messages.clear()
    engine.head_statistics.count = [max(count, RouterConfig().head_warmup) for count in engine.head_statistics.count]
    want = pruned_heads(RouterConfig(prune_heads=0.1), engine.head_statistics)
    code, body = await post(base, "/v1/chat/completions", {
        "messages": COLOURS, "max_tokens": 6, "tabswarm": {"router": {"policy": "off", "prune_heads": 0.1}}})
    assert code == 200, body
    assert body["usage"]["tabswarm"]["heads_pruned"] > 0
    masked = set()
    for worker in workers:
        start, _ = worker.assigned
        for message in worker.head_mask_messages:
            masked |= {(start + offset, head) for offset, row in enumerate(message.masks)
                       for head, keep in enumerate(row) if keep == 0}
    assert masked == set(want)


@pytest.mark.parametrize("router, param", [
    ({"policy": "off", "prune_heads": 0.9}, "prune_heads"),
    ({"policy": "off", "head_script": [[1, 2, 3]]}, "tabswarm.router.head_script"),
    ({"policy": "off", "head_script": [[1, True]]}, "tabswarm.router.head_script"),
])
async def test_bad_head_pruning_options_are_400(two_worker_cluster, router, param):
    _, base, _ = two_worker_cluster
    code, body = await post(base, "/v1/chat/completions", {"messages": COLOURS, "tabswarm": {"router": router}})
    assert code == 400 and body["error"]["param"] == param
