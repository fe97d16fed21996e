"""The output head's graph and the 8-bit blocks it multiplies.

Owns turning the GGUF's output table (or the tied token table) into MatMulNBits blocks
(8-bit, block 32, int8 activations): Q8_0 and Q4_0 tables are re-laid out, not
re-quantized; any other type (Q6_K, Q4_K …) is decoded a slice of rows at a time and
re-quantized to 8 bits per block of 32, with the largest |table - blocks| of every
(row, block) kept so `compact_head` can still bound each logit's error. Also the L1 norm
of every (row, block) of the blocks' values, which that bound needs. Never reads files.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from shards.graph_builder import OPSET, GraphBuilder, external_tensor
from shards.model_config import ModelConfig

BLOCK = 32
# GGUF block types the head keeps as they are: (bits, zero point), value = scale * (code - zero point)
EXACT_HEAD_TYPES = {"Q8_0": (8, 128), "Q4_0": (4, 8)}
HEAD_ACCURACY_LEVEL = 4   # int8 activations per block (as llama.cpp quantizes them for Q8_0 weights)
ROWS_PER_SLICE = 8192     # rows decoded at once when re-quantizing (bounds the converter's memory)
FLOAT = TensorProto.FLOAT


def exact_blocks(kind: str, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(vocab, row bytes) Q8_0/Q4_0 rows -> MatMulNBits (codes (vocab, blocks, bytes), scales
    (vocab * blocks,), bits, zero point). The GGUF's values, re-laid out, not re-quantized."""
    bits, zero_point = EXACT_HEAD_TYPES[kind]
    block_bytes = 34 if kind == "Q8_0" else 18
    blocks = raw.reshape(raw.shape[0], -1, block_bytes)
    scales = np.ascontiguousarray(blocks[..., :2]).view(np.float16).astype(np.float32).reshape(-1)
    if kind == "Q8_0":
        codes = (blocks[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    else:   # Q4_0 keeps low nibbles = values 0..15, high nibbles = 16..31; MatMulNBits packs pairs
        nibbles = blocks[..., 2:]
        values = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=-1)      # (vocab, blocks, 32)
        codes = (values[..., 0::2] | (values[..., 1::2] << 4)).astype(np.uint8)
    return np.ascontiguousarray(codes), scales, bits, zero_point


def quantize_8bit(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, hidden) float32 -> codes (n, blocks, 32) uint8 (zero point 128), scales (n, blocks)
    float32 and the largest |value - scale * (code - 128)| per (row, block)."""
    blocks = rows.reshape(rows.shape[0], -1, BLOCK)
    scales = (np.abs(blocks).max(-1) / 127.0).astype(np.float32)                     # (n, blocks)
    safe = np.where(scales > 0, scales, 1.0)[..., None]
    signed = np.clip(np.rint(blocks / safe), -127, 127)
    error = np.abs(blocks - (signed * scales[..., None]).astype(np.float32)).max(-1)
    return (signed + 128).astype(np.uint8), scales, error.astype(np.float32)


def head_blocks(kind: str, raw: np.ndarray, decode: Callable[[np.ndarray], np.ndarray]
                ) -> tuple[np.ndarray, np.ndarray, int, int, np.ndarray]:
    """MatMulNBits inputs for a table stored as `kind` rows `raw`, plus bounds (2, vocab, blocks):
    [0] L1 norms of the blocks' values, [1] the largest |table - blocks| (0 where exact).
    `decode` turns raw rows into float32 rows (the gguf reference decoder)."""
    vocab = raw.shape[0]
    if kind in EXACT_HEAD_TYPES:
        codes, scales, bits, zero_point = exact_blocks(kind, raw)
        norms = np.empty((vocab, codes.shape[1]), dtype=np.float32)   # (vocab, hidden / 32)
        for start in range(0, vocab, ROWS_PER_SLICE):
            rows = decode(raw[start:start + ROWS_PER_SLICE])
            norms[start:start + len(rows)] = np.abs(rows.reshape(len(rows), -1, BLOCK)).sum(-1)
        return codes, scales, bits, zero_point, np.stack([norms, np.zeros_like(norms)])
    blocks = decode(raw[:1]).shape[1] // BLOCK
    codes = np.empty((vocab, blocks, BLOCK), dtype=np.uint8)
    scales = np.empty((vocab, blocks), dtype=np.float32)
    bounds = np.empty((2, vocab, blocks), dtype=np.float32)
    for start in range(0, vocab, ROWS_PER_SLICE):
        end = min(start + ROWS_PER_SLICE, vocab)
        codes[start:end], scales[start:end], bounds[1, start:end] = quantize_8bit(decode(raw[start:end]))
        bounds[0, start:end] = np.abs(codes[start:end].astype(np.int16) - 128).sum(-1) * scales[start:end]
    return codes, scales.reshape(-1), 8, 128, bounds


def build_compact_head(config: ModelConfig, norm_weight: np.ndarray, codes: np.ndarray, scales: np.ndarray,
                       bits: int, zero_point: int, blocks_file: Path):
    """Final RMSNorm and the output projection as MatMulNBits over 8- or 4-bit blocks of 32.
    Outputs the logits and the normalized hidden state (what compact_head bounds errors from).
    The codes and scales go to `blocks_file` (external data next to the graph), written
    straight from the arrays: a large table is never copied into a protobuf."""
    vocab, blocks = codes.shape[0], codes.shape[1]
    zero_points = np.full(vocab * blocks, zero_point, dtype=np.uint8)
    if bits == 4:   # two 4-bit zero points per byte, each row padded to whole bytes
        per_row = np.full((vocab, blocks + blocks % 2), zero_point, dtype=np.uint8)
        zero_points = (per_row[:, 0::2] | (per_row[:, 1::2] << 4)).reshape(-1)
    builder = GraphBuilder()
    builder.constant("output_norm_weight", norm_weight)
    builder.op("RMSNormalization", ["hidden", "output_norm_weight"], "head_input",
               axis=-1, epsilon=config.norm_eps)
    with Path(blocks_file).open("wb") as handle:
        for name, values, data_type in (("output_codes", codes, TensorProto.UINT8),
                                        ("output_scales", scales, FLOAT)):
            offset = handle.tell()
            np.ascontiguousarray(values).tofile(handle)
            builder.initializers.append(external_tensor(name, values.shape, Path(blocks_file).name, data_type,
                                                        offset=offset))
            handle.write(b"\0" * (-handle.tell() % 4096))   # page-aligned, so onnxruntime can map it
    builder.constant("output_zero_points", zero_points)
    builder.nodes.append(helper.make_node(
        "MatMulNBits", ["head_input", "output_codes", "output_scales", "output_zero_points"], ["logits"],
        name="logits", domain="com.microsoft", K=config.hidden, N=vocab, bits=bits, block_size=BLOCK,
        accuracy_level=HEAD_ACCURACY_LEVEL))
    inputs = [helper.make_tensor_value_info("hidden", FLOAT, ["batch", "seq", config.hidden])]
    outputs = [helper.make_tensor_value_info("logits", FLOAT, ["batch", "seq", config.vocab]),
               helper.make_tensor_value_info("head_input", FLOAT, ["batch", "seq", config.hidden])]
    model = builder.model("head", inputs, outputs)
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    assert model.opset_import[0].version == OPSET
    return model
