"""`LayerStack.forward_batch` on the real default model's layers: streams with different cache
lengths, skip masks, head masks and boundary rounding, run as one batch, each get bitwise
what they get alone (outputs, reports and caches). The fake workers batch with it, the tab
with its JavaScript twin (worker_web/ort_runtime.js forwardBatch)."""

from __future__ import annotations

import numpy as np
import pytest

from protocol.boundary_rounding import BoundaryRounding
from protocol.frames import Encoding
from shards.layer_stack import LayerStack
from shards.manifest import load_manifest
from shards.stream_batch import StreamRows

LAYERS = range(3, 7)


@pytest.fixture(scope="module")
def stacks(shard_dir):
    manifest = load_manifest(shard_dir)
    return LayerStack(shard_dir, manifest, LAYERS.start, LAYERS.stop), LayerStack(shard_dir, manifest, LAYERS.start,
                                                                                   LAYERS.stop)


def prefilled(stack: LayerStack, stream: int, length: int, hidden_size: int) -> None:
    rng = np.random.default_rng(stream)
    rows = rng.standard_normal((1, length, hidden_size)).astype(np.float32)
    stack.forward(stream, rows, np.arange(length, dtype=np.int64)[None], layers=LAYERS)


@pytest.mark.parametrize("rows", [1, 3])
def test_a_batch_of_streams_with_their_own_skips_and_masks_equals_each_alone(stacks, rows):
    batched, alone = stacks
    config = batched.manifest.model
    heads = config.heads
    lengths = [7, 0, 19, 7, 12]
    pruned = np.ones(heads, dtype=np.float32)
    pruned[::2] = 0.0
    items = []
    for stream, length in enumerate(lengths):
        for stack in stacks:
            stack.release(stream)
            if length:
                prefilled(stack, stream, length, config.hidden)
        hidden = np.random.default_rng(100 + stream).standard_normal((1, rows, config.hidden)).astype(np.float32)
        items.append(StreamRows(stream, hidden, length,
                                skip=frozenset({4}) if stream % 2 else frozenset(),
                                head_masks={5: pruned} if stream == 2 else None,
                                measure=rows == 1, measure_heads=rows == 1))
    rounding = BoundaryRounding(Encoding.INT8_BLOCK, 64)
    reports = batched.forward_batch(items, LAYERS, rounding)
    for item, report in zip(items, reports, strict=True):
        want = alone.forward_reporting(item.stream, item.hidden, np.arange(item.position, item.position + rows)[None],
                                       item.skip, LAYERS, item.head_masks, item.measure, item.measure_heads, rounding)
        assert np.array_equal(report.hidden, want.hidden), f"stream {item.stream}"
        assert (report.ratios, report.norms, report.head_ratios) == (want.ratios, want.norms, want.head_ratios)
        for layer in LAYERS:
            got, expected = batched.streams[item.stream].caches[layer], alone.streams[item.stream].caches[layer]
            assert np.array_equal(got.key, expected.key) and np.array_equal(got.value, expected.value)
    assert len(reports[0].ratios) == (len(LAYERS) if rows == 1 else 0)
    assert len(reports[1].ratios) == (len(LAYERS) - 1 if rows == 1 else 0)   # a skipped layer reports nothing
