"""Streams batched into one layer pass give bitwise what each gives in a pass of its own.

What makes continuous batching lossless: a tab runs the waiting frames of several streams
as one pass (their caches padded to the longest, shards/stream_batch.py), and every row,
every cache entry, is exactly the solo run's, for any mix of cache lengths, float32 and
int8 compute, global and sliding-window attention, 1 to 16 streams.

One K/V head (Gemma 3 270M) included: with one, a lone stream's score and value products
have a right-hand side whose batch axes are all 1, which onnxruntime folds into one
product of (positions x group) rows; the graphs give each position's group of heads its own
product of `group` rows, which the folded product reproduces bitwise (a layout with one-row
products did not: ~1e-6 apart, and the tab then ran such a model's streams one at a time)."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnxruntime as ort
import pytest

from shards.graphs import build_kv_only, build_layer
from shards.stream_batch import batch_positions, cache_of_entry, pad_caches
from tests.unit import test_family_graphs as gemma
from tests.unit.test_graphs import CONFIG, random_weights
from tests.unit.test_int8 import QWEN


def sessions(config, weights, layer, compute):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    build = (build_layer(config, weights, layer, compute=compute), build_kv_only(config, weights, layer, compute=compute))
    return [ort.InferenceSession(graph.SerializeToString(), options) for graph in build]


def solo(session, config, hidden, start, key, value, head_mask):
    feeds = {"hidden": hidden[None], "positions": batch_positions([start], len(hidden)),
             "past_key": key[None], "past_value": value[None]}
    if head_mask is not None:
        feeds["head_mask"] = head_mask
    out = session.run(None, feeds)
    return [tensor[0] for tensor in out]


def batched(session, hidden, starts, keys, values, head_mask):
    feeds = {"hidden": np.stack(hidden), "positions": batch_positions(starts, hidden[0].shape[0]),
             "past_key": pad_caches(keys), "past_value": pad_caches(values)}
    if head_mask is not None:
        feeds["head_mask"] = head_mask
    return session.run(None, feeds)


GEMMA_GROUPED = dataclasses.replace(gemma.CONFIG, kv_heads=2)
CASES = [("llama-float32", CONFIG, 0, "float32"), ("qwen2-int8", QWEN, 0, "int8"),
         ("gemma-sliding", GEMMA_GROUPED, 0, "float32"), ("gemma-global", GEMMA_GROUPED, 1, "float32"),
         ("gemma-one-kv-head-sliding", gemma.CONFIG, 0, "float32"),
         ("gemma-one-kv-head-global", gemma.CONFIG, 1, "float32")]


def _weights(config, layer):
    rng = np.random.default_rng(7)
    if config is GEMMA_GROUPED or config is gemma.CONFIG:
        return gemma.random_weights(rng, config)
    return random_weights(rng, config)


@pytest.mark.parametrize("name,config,layer,compute", CASES, ids=[case[0] for case in CASES])
@pytest.mark.parametrize("streams,rows", [(1, 1), (2, 1), (5, 1), (16, 1), (3, 4)])
def test_batched_streams_equal_their_solo_passes_bitwise(name, config, layer, compute, streams, rows):
    full, kv_only = sessions(config, _weights(config, layer), layer, compute)
    rng = np.random.default_rng(streams * 10 + rows)
    lengths = [int(n) for n in rng.integers(0, 23, streams)]       # mixed cache lengths, 0 included
    lengths[0] = 0 if streams > 1 else lengths[0]
    keys = [rng.standard_normal((config.kv_heads, n, config.head_dim)).astype(np.float32) for n in lengths]
    values = [rng.standard_normal((config.kv_heads, n, config.head_dim)).astype(np.float32) for n in lengths]
    hidden = [(rng.standard_normal((rows, config.hidden)) * 3).astype(np.float32) for _ in lengths]
    mask = np.ones(config.heads, dtype=np.float32)
    out, key, value, energy = batched(full, hidden, lengths, keys, values, mask)
    only_key, only_value = batched(kv_only, hidden, lengths, keys, values, None)
    for entry, length in enumerate(lengths):
        alone, alone_key, alone_value, alone_energy = solo(full, config, hidden[entry], length, keys[entry],
                                                           values[entry], mask)
        assert np.array_equal(out[entry], alone), f"stream {entry} (cache {length}): hidden differs"
        assert np.array_equal(energy[entry], alone_energy)
        assert np.array_equal(cache_of_entry(key, entry, length + rows), alone_key)
        assert np.array_equal(cache_of_entry(value, entry, length + rows), alone_value)
        assert np.array_equal(cache_of_entry(only_key, entry, length + rows), alone_key)
        assert np.array_equal(cache_of_entry(only_value, entry, length + rows), alone_value)


def test_a_stream_padded_by_a_longer_neighbour_still_attends_to_its_own_rows_only():
    """The padding is not attended to: the same stream beside a long cache and beside none
    gives the same row, and that row differs once its own cache changes."""
    full, _ = sessions(CONFIG, _weights(CONFIG, 0), 0, "float32")
    rng = np.random.default_rng(3)
    mine_k, mine_v = (rng.standard_normal((CONFIG.kv_heads, 2, CONFIG.head_dim)).astype(np.float32) for _ in range(2))
    long_k, long_v = (rng.standard_normal((CONFIG.kv_heads, 30, CONFIG.head_dim)).astype(np.float32) for _ in range(2))
    row = rng.standard_normal((1, CONFIG.hidden)).astype(np.float32)
    mask = np.ones(CONFIG.heads, dtype=np.float32)
    beside_long = batched(full, [row, row], [2, 30], [mine_k, long_k], [mine_v, long_v], mask)[0][0]
    alone = solo(full, CONFIG, row, 2, mine_k, mine_v, mask)[0]
    changed = solo(full, CONFIG, row, 2, mine_k * 2, mine_v, mask)[0]
    assert np.array_equal(beside_long, alone)
    assert np.abs(changed - alone).max() > 1e-4


def test_padding_copies_nothing_for_a_lone_stream_and_zero_fills_a_batch():
    """A single stream's step (the reference executor, a spot check) feeds its cache as it is."""
    rng = np.random.default_rng(4)
    short, long = (rng.standard_normal((2, n, 3)).astype(np.float32) for n in (2, 5))
    alone = pad_caches([long])
    assert alone.shape == (1, 2, 5, 3) and np.shares_memory(alone, long)
    both = pad_caches([short, long])
    assert both.shape == (2, 2, 5, 3)
    assert np.array_equal(both[0, :, :2], short) and not both[0, :, 2:].any() and np.array_equal(both[1], long)


GEMMA_WIDE_HEADS = dataclasses.replace(gemma.CONFIG, head_dim=256, context=512)   # Gemma 3 270M's head width


@pytest.mark.parametrize("layer", [0, 1], ids=["sliding", "global"])
def test_wide_heads_beside_a_long_cache_still_equal_their_solo_pass(layer):
    """A 256-wide head's score product sums over the head in blocks whose size MLAS picks from
    the slot count; attention pads the slots to at least KEY_MIN_LENGTH so a short cache beside
    a long one (the batch padded to the longest) sums in the same blocks as alone."""
    config = GEMMA_WIDE_HEADS
    full, _ = sessions(config, gemma.random_weights(np.random.default_rng(5), config), layer, "float32")
    rng = np.random.default_rng(6)
    lengths = [5, 44, 120, 300]
    keys = [rng.standard_normal((1, n, config.head_dim)).astype(np.float32) for n in lengths]
    values = [rng.standard_normal((1, n, config.head_dim)).astype(np.float32) for n in lengths]
    hidden = [(rng.standard_normal((1, config.hidden)) * 3).astype(np.float32) for _ in lengths]
    mask = np.ones(config.heads, dtype=np.float32)
    out = batched(full, hidden, lengths, keys, values, mask)[0]
    for entry, length in enumerate(lengths):
        alone = solo(full, config, hidden[entry], length, keys[entry], values[entry], mask)[0]
        assert np.array_equal(out[entry], alone), f"stream {entry} (cache {length}) differs"
