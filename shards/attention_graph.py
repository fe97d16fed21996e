"""Causal attention as the layer graphs compute it: each stream's new K/V rows written into
its cache at their positions, and grouped-query attention whose every row is bitwise the
same however many rows, streams or cache lengths share the pass.

Owns the cache layout inside a graph (slot j holds position j; a batch pads caches to the
longest with zeros) and the key-axis padding rules that keep rows invariant. Builds nodes
only; no I/O.
"""

from __future__ import annotations

import numpy as np

from shards.graph_builder import GraphBuilder
from shards.model_config import LayerSpec, ModelConfig


def new_row_slots(builder: GraphBuilder) -> tuple[str, str]:
    """What `write_new_rows` needs once per graph: the pads adding `seq` slots to a cache,
    and each new row's slot (its position), (batch, 1, seq, 1)."""
    builder.op("Shape", ["hidden"], "new_rows_1d", start=1, end=2)
    builder.constant("new_rows_before", np.zeros(6, dtype=np.int64))   # begins of 4 axes, ends of 2
    builder.constant("new_rows_after", np.zeros(1, dtype=np.int64))
    builder.op("Concat", ["new_rows_before", "new_rows_1d", "new_rows_after"], "new_rows_pads", axis=0)
    builder.constant("new_rows_axes", np.array([1, 3], dtype=np.int64))
    return "new_rows_pads", builder.op("Unsqueeze", ["positions", "new_rows_axes"], "new_rows_slots")


def write_new_rows(builder: GraphBuilder, slots: tuple[str, str], past: str, new: str, present: str) -> str:
    """present = past with `seq` more slots, each batch entry's new rows written at their positions.

    Batch entry b's cache is the first positions[b, 0] slots of `past` (the rest are zeros: a
    batch of streams whose caches differ in length pads them to the longest); its new rows
    go to slots positions[b, 0] .. + seq. With one entry and an unpadded past this is
    exactly Concat(past, new). Padding and later rows are masked (weight 0), so an entry's
    rows are bitwise what a pass of its own gives (the key-length padding argument below).
    """
    pads, row_slots = slots
    builder.op("Pad", [past, pads], f"{present}_room")                          # (batch, kv_heads, past + seq, head_dim)
    builder.op("Shape", [new], f"{new}_shape")
    builder.op("Expand", [row_slots, f"{new}_shape"], f"{new}_slots")           # (batch, kv_heads, seq, head_dim)
    return builder.op("ScatterElements", [f"{present}_room", f"{new}_slots", new], present, axis=2)


KEY_LENGTH_MULTIPLE = 4   # attention pads its key axis to this; see row_invariant_attention
# ... and, for heads wider than SUM_BLOCK_WIDTH, to at least KEY_MIN_LENGTH slots: MLAS
# (native and WASM) sums a score over a head wider than 128 in blocks whose size it picks
# from the slot count while that count is under ~64, so a short cache alone and beside a long
# one (the batch padded to the longest) would sum a 256-wide head (Gemma 3) in different
# blocks. From KEY_MIN_LENGTH slots on the blocks are fixed; heads of 128 or fewer (SmolLM2,
# Qwen2.5) are summed in one block either way (measured in Chromium for 64, 96 and 128;
# 160, 192 and 256 differ), so they pay nothing for it.
SUM_BLOCK_WIDTH = 128
KEY_MIN_LENGTH = 128


def row_invariant_attention(builder: GraphBuilder, config: ModelConfig, spec: LayerSpec, q: str, k: str,
                             v: str) -> str:
    """Causal grouped-query attention whose every row is bitwise the same however many rows run.

    Speculative decoding verifies k drafted tokens in one multi-row pass and promises the
    tokens one-row decoding would give; onnxruntime's fused `Attention` op (and a plain
    MatMul with a runtime right-hand side) rounds a row differently when more rows share
    the call as one matrix than as several (MLAS takes another kernel for a one-row product:
    measured ~2e-7 per layer, ~4e-5 in logits). So each query position's group of heads
    (the heads sharing one K/V head) is its own matrix product: (group, head_dim) x
    (head_dim, slots), a batch axis per (stream, K/V head, position). Where onnxruntime
    folds those products into one (a lone stream with one K/V head: its right-hand side is
    then one matrix), the folded product gives the same rows bitwise (each product has
    `group` >= 2 rows in every model here; tests/unit/test_stream_batching.py). The key axis
    is zero-padded to a multiple of KEY_LENGTH_MULTIPLE (and, for heads wider than
    SUM_BLOCK_WIDTH, to at least KEY_MIN_LENGTH), so a row's products are summed the same way
    whichever pass it runs in; padded and future slots are masked to -inf, so their weights
    are 0.
    Writes present_key / present_value (the unpadded caches). Returns (batch, seq, heads * head_dim).
    """
    heads, kv_heads, head_dim = config.heads, config.kv_heads, config.head_dim
    group = heads // kv_heads
    builder.constant("kv_heads_shape", np.array([0, 0, kv_heads, head_dim], dtype=np.int64))
    slots = new_row_slots(builder)
    for name, past, present in ((k, "past_key", "present_key"), (v, "past_value", "present_value")):
        builder.op("Reshape", [name, "kv_heads_shape"], f"{name}_heads")      # (batch, seq, kv_heads, head_dim)
        builder.op("Transpose", [f"{name}_heads"], f"{name}_new", perm=[0, 2, 1, 3])
        write_new_rows(builder, slots, past, f"{name}_new", present)       # (batch, kv_heads, past + seq, head_dim)
    key_columns, value_rows = _padded_caches(builder, head_dim)

    builder.constant("query_groups_shape", np.array([0, 0, kv_heads, group, head_dim], dtype=np.int64))
    builder.op("Reshape", [q, "query_groups_shape"], "query_groups")        # (batch, seq, kv, group, head_dim)
    builder.op("Transpose", ["query_groups"], "query_by_position", perm=[0, 2, 1, 3, 4])   # (batch, kv, seq, group, head_dim)
    builder.constant("query_scale", np.array(1.0 / np.sqrt(head_dim), dtype=np.float32))
    builder.op("Mul", ["query_by_position", "query_scale"], "query_scaled")
    builder.op("MatMul", ["query_scaled", key_columns], "scores")         # (batch, kv, seq, group, padded)

    mask = _visible_slots(builder, spec)
    builder.constant("minus_infinity", np.array(-np.inf, dtype=np.float32))
    builder.op("Where", [mask, "scores", "minus_infinity"], "masked_scores")
    builder.op("Softmax", ["masked_scores"], "attention_weights", axis=-1)
    builder.op("MatMul", ["attention_weights", value_rows], "context")     # (batch, kv, seq, group, head_dim)
    builder.op("Transpose", ["context"], "context_by_position", perm=[0, 2, 1, 3, 4])  # (batch, seq, kv, group, head_dim)
    builder.constant("attention_flat", np.array([0, 0, heads * head_dim], dtype=np.int64))
    return builder.op("Reshape", ["context_by_position", "attention_flat"], "attention")


def _padded_caches(builder: GraphBuilder, head_dim: int) -> tuple[str, str]:
    """present_key / present_value with the slot axis zero-padded to padded =
    ceil(total / KEY_LENGTH_MULTIPLE) * KEY_LENGTH_MULTIPLE (heads wider than SUM_BLOCK_WIDTH:
    at least KEY_MIN_LENGTH), laid out for the score and context products: keys
    (batch, kv, 1, head_dim, padded), values (batch, kv, 1, padded, head_dim)."""
    builder.op("Shape", ["present_key"], "total_length_1d", start=2, end=3)
    builder.constant("key_multiple", np.array([KEY_LENGTH_MULTIPLE], dtype=np.int64))
    builder.op("Mod", ["total_length_1d", "key_multiple"], "key_remainder")
    builder.op("Sub", ["key_multiple", "key_remainder"], "key_shortfall")
    wide = head_dim > SUM_BLOCK_WIDTH
    builder.op("Mod", ["key_shortfall", "key_multiple"], "key_to_multiple" if wide else "key_padding")
    if wide:   # and to at least KEY_MIN_LENGTH slots
        builder.op("Add", ["total_length_1d", "key_to_multiple"], "key_rounded")
        builder.constant("key_min_length", np.array([KEY_MIN_LENGTH], dtype=np.int64))
        builder.op("Max", ["key_rounded", "key_min_length"], "key_padded_length")
        builder.op("Sub", ["key_padded_length", "total_length_1d"], "key_padding")
    builder.constant("pad_before_slots", np.zeros(6, dtype=np.int64))   # begins of 4 axes, ends of 2
    builder.constant("pad_after_slots", np.zeros(1, dtype=np.int64))
    builder.op("Concat", ["pad_before_slots", "key_padding", "pad_after_slots"], "key_pads", axis=0)
    builder.op("Pad", ["present_key", "key_pads"], "padded_key")            # (batch, kv_heads, padded, head_dim)
    builder.op("Pad", ["present_value", "key_pads"], "padded_value")
    builder.constant("key_axis", np.array([2], dtype=np.int64))
    builder.op("Unsqueeze", ["padded_key", "key_axis"], "key_rows")         # (batch, kv, 1, padded, head_dim)
    builder.op("Transpose", ["key_rows"], "key_columns", perm=[0, 1, 2, 4, 3])   # (batch, kv, 1, head_dim, padded)
    builder.op("Unsqueeze", ["padded_value", "key_axis"], "value_rows")     # (batch, kv, 1, padded, head_dim)
    return "key_columns", "value_rows"


def _visible_slots(builder: GraphBuilder, spec: LayerSpec) -> str:
    """The mask (batch, 1, seq, 1, padded) of the slots each query row may attend to."""
    # Slot j is visible to a query at position p iff j <= p (padded slots lie past every
    # query), and on a sliding-window layer also j > p - window.
    builder.op("Shape", ["padded_key"], "padded_length_1d", start=2, end=3)
    builder.op("Squeeze", ["padded_length_1d"], "padded_length")
    builder.constant("zero", np.array(0, dtype=np.int64))
    builder.constant("one", np.array(1, dtype=np.int64))
    builder.op("Range", ["zero", "padded_length", "one"], "slots")          # (padded,)
    builder.constant("query_axes", np.array([1, 3, 4], dtype=np.int64))
    builder.op("Unsqueeze", ["positions", "query_axes"], "query_positions")  # (batch, 1, seq, 1, 1)
    mask = builder.op("LessOrEqual", ["slots", "query_positions"], "causal_mask")  # (batch, 1, seq, 1, padded)
    if spec.attention == "sliding":
        builder.constant("window", np.array(spec.window, dtype=np.int64))
        builder.op("Sub", ["query_positions", "window"], "window_start")     # p - window
        builder.op("Greater", ["slots", "window_start"], "window_mask")
        mask = builder.op("And", [mask, "window_mask"], "sliding_mask")
    return mask
