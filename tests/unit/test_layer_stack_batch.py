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


def test_prompts_of_different_lengths_share_a_pass_and_each_equals_its_solo_run(stacks):
    """Rows padded to the longest prompt: each stream's output rows and caches are bitwise its
    solo run's, and so are the decode steps after it (the padded rows' K/V past each cache's
    length are masked, then overwritten), whether those steps run alone or batched."""
    batched, alone = stacks
    hidden_size = batched.manifest.model.hidden
    counts, starts = [5, 17, 1, 9], [0, 0, 3, 11]
    items = []
    for stream, (count, start) in enumerate(zip(counts, starts, strict=True), start=40):
        for stack in stacks:
            stack.release(stream)
            if start:
                prefilled(stack, stream, start, hidden_size)
        hidden = np.random.default_rng(stream).standard_normal((1, count, hidden_size)).astype(np.float32)
        items.append(StreamRows(stream, hidden, start))
    rounding = BoundaryRounding(Encoding.INT8_BLOCK, 32)
    reports = batched.forward_batch(items, LAYERS, rounding)
    steps = [items]
    for step in range(3):
        steps.append([StreamRows(item.stream, np.random.default_rng(step * 100 + item.stream).standard_normal(
            (1, 1, hidden_size)).astype(np.float32), item.position + count + step)
            for item, count in zip(items, counts, strict=True)])
    for number, step_items in enumerate(steps):
        got = reports if number == 0 else (batched.forward_batch(step_items, LAYERS, rounding) if number % 2
                                           else [batched.forward_batch([item], LAYERS, rounding)[0]
                                                 for item in step_items])
        for item, report in zip(step_items, got, strict=True):
            rows = item.hidden.shape[1]
            want = alone.forward(item.stream, item.hidden, np.arange(item.position, item.position + rows)[None],
                                 layers=LAYERS, rounding=rounding)
            assert report.hidden.shape == want.shape and np.array_equal(report.hidden, want), (number, item.stream)
            for layer in LAYERS:
                have, expected = batched.streams[item.stream].caches[layer], alone.streams[item.stream].caches[layer]
                assert np.array_equal(have.key, expected.key) and np.array_equal(have.value, expected.value)
