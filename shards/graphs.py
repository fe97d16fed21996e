"""Builds the ONNX graphs of one model: decoder layers, K/V-only layers, embedding, head.

Owns the graph layout (names, shapes, opset). Only ops that onnxruntime-web's WASM
backend runs are used: opset-23 `RMSNormalization` and `RotaryEmbedding`, plain
MatMul/Add/Mul/Sigmoid/Softmax/Where/Pad and a few shape ops (attention is composed from
them so that a row's result does not depend on how many rows share the pass). Never reads GGUF or writes files.

Graph interfaces (batch: one entry per stream; a tab batches the streams whose frames wait
together, each entry's past holding its cache and zeros up to the longest):
  layer:     hidden (batch, seq, hidden), positions (batch, seq) int64,
             past_key/past_value (batch, kv_heads, past, head_dim), head_mask (heads,)
          -> hidden_out (batch, seq, hidden), present_key/present_value (batch, kv_heads, past+seq, head_dim)
             (entry b's new rows written at its positions: slots positions[b, 0] .. + seq),
             head_energy (batch, seq, heads)
  kv-only:   hidden, positions, past_key, past_value -> present_key, present_value
             (what a skipped layer still writes)

head_mask scales each attention head's contribution to the residual stream (1 keeps a
head, 0 prunes it; all zeros skips the attention sub-block while K/V are still written).
head_energy is each head's squared contribution norm ||o_proj slice . head output||^2
before the mask (what the router's head statistics learn from; may round a hair below 0).
  embedding: input_ids (batch, seq) int64 -> hidden (batch, seq, hidden)
  head:      hidden (batch, seq, hidden) -> logits (batch, seq, vocab)

Positions are absolute token positions; cache slot j holds position j, so the causal
mask is `slot <= position` (computed in the graph).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from shards.compact_weights import external_location
from shards.int8 import COMPUTE_FORMATS, INT8_CODES, INT8_SCALES, int8_group, quantize_int8
from shards.model_config import LayerSpec, ModelConfig

OPSET = 23
FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64


class _GraphBuilder:
    """Small helper that collects nodes and initializers with unique names."""

    def __init__(self, external_stem: str | None = None, compute: str = "float32") -> None:
        if compute not in COMPUTE_FORMATS:
            raise ValueError(f"compute format {compute!r} is not one of {', '.join(COMPUTE_FORMATS)}")
        self.external_stem = external_stem   # set: weight matrices are external (compact weights file)
        self.compute = compute
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._quantized: dict[tuple[str, int], tuple[str, str]] = {}   # (source, group) -> (codes, scales)

    def constant(self, name: str, values: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(values, name))
        return name

    def matrix(self, name: str, values: np.ndarray) -> str:
        """A weight matrix (in, out): inline, or an external float32 initializer that the
        layer's weights file fills when the graph is loaded."""
        if self.external_stem is None:
            return self.constant(name, values)
        self.initializers.append(external_tensor(name, values.shape, external_location(self.external_stem, name)))
        return name

    def linear(self, source: str, name: str, weight: np.ndarray, output: str,
               bias: np.ndarray | None = None) -> str:
        """output = source @ weight.T (+ bias), weight (out, in) as the GGUF stores it: a float32
        MatMul, or in the int8 format an integer matmul over groups (see int8_linear)."""
        matrix = np.ascontiguousarray(weight.T)                        # (in, out)
        group = int8_group(matrix.shape[0]) if self.compute == "int8" else None
        product = f"{output}_unbiased" if bias is not None else output
        if group is None:
            self.matrix(name, matrix)
            self.op("MatMul", [source, name], product)
        else:
            self._int8_linear(source, name, matrix, product, group)
        if bias is not None:
            self.constant(f"{name}_bias", np.asarray(bias, dtype=np.float32))
            self.op("Add", [product, f"{name}_bias"], output)
        return output

    def _int8_linear(self, source: str, name: str, matrix: np.ndarray, output: str, group: int) -> None:
        """(batch, seq, in) @ (in, out) with int8 codes on both sides, exact integer sums per group.

        Each row's activations are quantized per group of `group` inputs (symmetric, 127
        levels, as uint8 with zero point 128: the WASM SIMD kernels' fast path), the
        weights per (group, output column) (`quantize_int8`); MatMulInteger sums each
        group exactly in int32, and the groups are scaled and added in float32. A row's
        result depends on that row alone, bitwise, however many rows share the call.
        """
        inputs, outputs = matrix.shape
        blocks = inputs // group
        codes_name, scales_name = self._quantized_activations(source, inputs, group)
        if self.external_stem is None:
            codes, scales = quantize_int8(matrix, group)
            self.constant(f"{name}_codes", codes)
            self.constant(f"{name}_scales", scales)
        else:
            location = external_location(self.external_stem, name)
            self.initializers.append(external_tensor(f"{name}_codes", (blocks, group, outputs),
                                                     f"{location}{INT8_CODES}", TensorProto.INT8))
            self.initializers.append(external_tensor(f"{name}_scales", (blocks, 1, outputs),
                                                     f"{location}{INT8_SCALES}"))
        self.op("MatMulInteger", [codes_name, f"{name}_codes", "int8_zero_point"], f"{output}_sums")   # (blocks, rows, out)
        self.op("Cast", [f"{output}_sums"], f"{output}_sums_float", to=FLOAT)
        self.op("Mul", [f"{output}_sums_float", f"{name}_scales"], f"{output}_weight_scaled")
        self.op("Mul", [f"{output}_weight_scaled", scales_name], f"{output}_scaled")
        self.op("ReduceSum", [f"{output}_scaled", "int8_block_axis"], f"{output}_rows", keepdims=0)  # (rows, out)
        self.op("Shape", [source], f"{output}_leading", start=0, end=2)             # (batch, seq)
        self.constant(f"{output}_columns", np.array([outputs], dtype=np.int64))
        self.op("Concat", [f"{output}_leading", f"{output}_columns"], f"{output}_shape", axis=0)
        self.op("Reshape", [f"{output}_rows", f"{output}_shape"], output)           # (batch, seq, out)

    def _quantized_activations(self, source: str, inputs: int, group: int) -> tuple[str, str]:
        """uint8 codes (blocks, rows, group) and scales (blocks, rows, 1) of `source`, once per source."""
        key = (source, group)
        if key in self._quantized:
            return self._quantized[key]
        if not self._quantized:
            self.constant("int8_levels", np.array(127.0, dtype=np.float32))
            self.constant("int8_smallest_scale", np.array(1e-30, dtype=np.float32))
            self.constant("int8_zero_point", np.array(128, dtype=np.uint8))
            self.constant("int8_zero_point_wide", np.array(128, dtype=np.int32))
            self.constant("int8_last_axis", np.array([-1], dtype=np.int64))
            self.constant("int8_block_axis", np.array([0], dtype=np.int64))
        prefix = f"{source}_g{group}"
        self.constant(f"{prefix}_shape", np.array([-1, inputs // group, group], dtype=np.int64))
        self.op("Reshape", [source, f"{prefix}_shape"], f"{prefix}_by_row")          # (rows, blocks, group)
        self.op("Transpose", [f"{prefix}_by_row"], f"{prefix}_blocks", perm=[1, 0, 2])   # (blocks, rows, group)
        self.op("Abs", [f"{prefix}_blocks"], f"{prefix}_magnitude")
        self.op("ReduceMax", [f"{prefix}_magnitude", "int8_last_axis"], f"{prefix}_largest", keepdims=1)
        self.op("Div", [f"{prefix}_largest", "int8_levels"], f"{prefix}_step")
        self.op("Max", [f"{prefix}_step", "int8_smallest_scale"], f"{prefix}_scales")     # (blocks, rows, 1)
        self.op("Div", [f"{prefix}_blocks", f"{prefix}_scales"], f"{prefix}_steps")
        self.op("Round", [f"{prefix}_steps"], f"{prefix}_rounded")
        self.op("Cast", [f"{prefix}_rounded"], f"{prefix}_signed", to=TensorProto.INT32)
        self.op("Add", [f"{prefix}_signed", "int8_zero_point_wide"], f"{prefix}_shifted")
        self.op("Cast", [f"{prefix}_shifted"], f"{prefix}_codes", to=TensorProto.UINT8)
        self._quantized[key] = (f"{prefix}_codes", f"{prefix}_scales")
        return self._quantized[key]

    def op(self, op_type: str, inputs: list[str], outputs: list[str] | str, **attributes) -> str:
        names = [outputs] if isinstance(outputs, str) else outputs
        self.nodes.append(helper.make_node(op_type, inputs, names, name=names[0], **attributes))
        return names[0]

    def model(self, name: str, inputs, outputs) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.initializers)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tabswarm"
        )
        model.ir_version = 10
        return model


def _layer_inputs(config: ModelConfig) -> list[onnx.ValueInfoProto]:
    kv_shape: list[str | int | None] = ["batch", config.kv_heads, "past", config.head_dim]
    return [
        helper.make_tensor_value_info("hidden", FLOAT, ["batch", "seq", config.hidden]),
        helper.make_tensor_value_info("positions", INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("past_key", FLOAT, kv_shape),
        helper.make_tensor_value_info("past_value", FLOAT, kv_shape),
    ]


def _present_outputs(config: ModelConfig) -> list[onnx.ValueInfoProto]:
    kv_shape: list[str | int | None] = ["batch", config.kv_heads, "total", config.head_dim]
    return [
        helper.make_tensor_value_info("present_key", FLOAT, kv_shape),
        helper.make_tensor_value_info("present_value", FLOAT, kv_shape),
    ]


def _rotary_tables(builder: _GraphBuilder, config: ModelConfig, spec: LayerSpec) -> tuple[str, str]:
    """cos/sin of position * inverse frequency, (batch, seq, head_dim / 2), in float32 like HF."""
    exponents = np.arange(0, config.head_dim, 2, dtype=np.int64).astype(np.float32) / config.head_dim
    inverse_frequency = (1.0 / (spec.rope_theta**exponents)).astype(np.float32)
    builder.constant("inverse_frequency", inverse_frequency)
    builder.constant("axis_last", np.array([-1], dtype=np.int64))
    builder.op("Cast", ["positions"], "positions_float", to=FLOAT)
    builder.op("Unsqueeze", ["positions_float", "axis_last"], "positions_column")
    builder.op("Mul", ["positions_column", "inverse_frequency"], "rotary_angles")
    return builder.op("Cos", ["rotary_angles"], "rotary_cos"), builder.op(
        "Sin", ["rotary_angles"], "rotary_sin"
    )


def _head_norm(builder: _GraphBuilder, config: ModelConfig, projected: str, weight: np.ndarray,
               heads: int, name: str) -> str:
    """RMSNorm over each head of a projection (QK-norm): (batch, seq, heads * head_dim) in and out."""
    builder.constant(f"{name}_weight", weight)
    builder.constant(f"{name}_shape", np.array([0, 0, heads, config.head_dim], dtype=np.int64))
    builder.op("Reshape", [projected, f"{name}_shape"], f"{name}_heads")     # (batch, seq, heads, head_dim)
    builder.op("RMSNormalization", [f"{name}_heads", f"{name}_weight"], f"{name}_normed", axis=-1,
               epsilon=config.norm_eps)
    builder.constant(f"{name}_flat", np.array([0, 0, heads * config.head_dim], dtype=np.int64))
    return builder.op("Reshape", [f"{name}_normed", f"{name}_flat"], f"{name}_out")


def _projections_k_v(builder: _GraphBuilder, config: ModelConfig, spec: LayerSpec,
                     weights: dict[str, np.ndarray], cos: str, sin: str) -> tuple[str, str, str]:
    """attention RMSNorm, then K (QK-normed if the spec says so, rotated) and V, each
    (batch, seq, kv_heads * head_dim)."""
    builder.constant("attn_norm_weight", weights["attn_norm"])
    builder.op("RMSNormalization", ["hidden", "attn_norm_weight"], "attn_input",
               axis=-1, epsilon=config.norm_eps)
    builder.linear("attn_input", "k_weight", weights["attn_k"], "k_raw", weights.get("attn_k.bias"))
    builder.linear("attn_input", "v_weight", weights["attn_v"], "v", weights.get("attn_v.bias"))
    k_input = (_head_norm(builder, config, "k_raw", weights["attn_k_norm"], config.kv_heads, "k_norm")
               if spec.qk_norm else "k_raw")
    builder.op("RotaryEmbedding", [k_input, cos, sin], "k", num_heads=config.kv_heads,
               interleaved=0)
    return "attn_input", "k", "v"


def _new_row_slots(builder: _GraphBuilder) -> tuple[str, str]:
    """What `_write_new_rows` needs once per graph: the pads adding `seq` slots to a cache,
    and each new row's slot (its position), (batch, 1, seq, 1)."""
    builder.op("Shape", ["hidden"], "new_rows_1d", start=1, end=2)
    builder.constant("new_rows_before", np.zeros(6, dtype=np.int64))   # begins of 4 axes, ends of 2
    builder.constant("new_rows_after", np.zeros(1, dtype=np.int64))
    builder.op("Concat", ["new_rows_before", "new_rows_1d", "new_rows_after"], "new_rows_pads", axis=0)
    builder.constant("new_rows_axes", np.array([1, 3], dtype=np.int64))
    return "new_rows_pads", builder.op("Unsqueeze", ["positions", "new_rows_axes"], "new_rows_slots")


def _write_new_rows(builder: _GraphBuilder, slots: tuple[str, str], past: str, new: str, present: str) -> str:
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


KEY_LENGTH_MULTIPLE = 4   # attention pads its key axis to this; see _row_invariant_attention
# ... and, for heads wider than SUM_BLOCK_WIDTH, to at least KEY_MIN_LENGTH slots: MLAS
# (native and WASM) sums a score over a head wider than 128 in blocks whose size it picks
# from the slot count while that count is under ~64, so a short cache alone and beside a long
# one (the batch padded to the longest) would sum a 256-wide head (Gemma 3) in different
# blocks. From KEY_MIN_LENGTH slots on the blocks are fixed; heads of 128 or fewer (SmolLM2,
# Qwen2.5) are summed in one block either way (measured in Chromium for 64, 96 and 128;
# 160, 192 and 256 differ), so they pay nothing for it.
SUM_BLOCK_WIDTH = 128
KEY_MIN_LENGTH = 128


def _row_invariant_attention(builder: _GraphBuilder, config: ModelConfig, spec: LayerSpec, q: str, k: str,
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
    slots = _new_row_slots(builder)
    for name, past, present in ((k, "past_key", "present_key"), (v, "past_value", "present_value")):
        builder.op("Reshape", [name, "kv_heads_shape"], f"{name}_heads")      # (batch, seq, kv_heads, head_dim)
        builder.op("Transpose", [f"{name}_heads"], f"{name}_new", perm=[0, 2, 1, 3])
        _write_new_rows(builder, slots, past, f"{name}_new", present)       # (batch, kv_heads, past + seq, head_dim)
    # Pad the slot axis to padded = ceil(total / multiple) * multiple (wide heads: at least KEY_MIN_LENGTH).
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

    builder.constant("query_groups_shape", np.array([0, 0, kv_heads, group, head_dim], dtype=np.int64))
    builder.op("Reshape", [q, "query_groups_shape"], "query_groups")        # (batch, seq, kv, group, head_dim)
    builder.op("Transpose", ["query_groups"], "query_by_position", perm=[0, 2, 1, 3, 4])   # (batch, kv, seq, group, head_dim)
    builder.constant("query_scale", np.array(1.0 / np.sqrt(head_dim), dtype=np.float32))
    builder.op("Mul", ["query_by_position", "query_scale"], "query_scaled")
    builder.op("MatMul", ["query_scaled", "key_columns"], "scores")         # (batch, kv, seq, group, padded)

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
    builder.constant("minus_infinity", np.array(-np.inf, dtype=np.float32))
    builder.op("Where", [mask, "scores", "minus_infinity"], "masked_scores")
    builder.op("Softmax", ["masked_scores"], "attention_weights", axis=-1)
    builder.op("MatMul", ["attention_weights", "value_rows"], "context")     # (batch, kv, seq, group, head_dim)
    builder.op("Transpose", ["context"], "context_by_position", perm=[0, 2, 1, 3, 4])  # (batch, seq, kv, group, head_dim)
    builder.constant("attention_flat", np.array([0, 0, heads * head_dim], dtype=np.int64))
    return builder.op("Reshape", ["context_by_position", "attention_flat"], "attention")


def _mlp(builder: _GraphBuilder, spec: LayerSpec, weights: dict[str, np.ndarray], source: str) -> str:
    """gate/up/down with the spec's activation: swiglu silu(gate) * up, geglu gelu_tanh(gate) * up."""
    builder.linear(source, "gate_weight", weights["ffn_gate"], "gate")
    builder.linear(source, "up_weight", weights["ffn_up"], "up")
    if spec.mlp == "swiglu":
        builder.op("Sigmoid", ["gate"], "gate_sigmoid")
        builder.op("Mul", ["gate", "gate_sigmoid"], "gate_activated")
    else:   # gelu, tanh approximation, composed: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        builder.constant("gelu_cubic", np.array(0.044715, dtype=np.float32))
        builder.constant("gelu_scale", np.array(np.sqrt(2.0 / np.pi), dtype=np.float32))
        builder.constant("gelu_half", np.array(0.5, dtype=np.float32))
        builder.constant("gelu_one", np.array(1.0, dtype=np.float32))
        builder.op("Mul", ["gate", "gate"], "gate_squared")
        builder.op("Mul", ["gate_squared", "gate"], "gate_cubed")
        builder.op("Mul", ["gate_cubed", "gelu_cubic"], "gate_cubic_term")
        builder.op("Add", ["gate", "gate_cubic_term"], "gelu_inner")
        builder.op("Mul", ["gelu_inner", "gelu_scale"], "gelu_scaled")
        builder.op("Tanh", ["gelu_scaled"], "gelu_tanh")
        builder.op("Add", ["gelu_tanh", "gelu_one"], "gelu_shifted")
        builder.op("Mul", ["gate", "gelu_half"], "gate_half")
        builder.op("Mul", ["gate_half", "gelu_shifted"], "gate_activated")
    builder.op("Mul", ["gate_activated", "up"], "mlp_hidden")
    return builder.linear("mlp_hidden", "down_weight", weights["ffn_down"], "mlp_out")


def _sandwich(builder: _GraphBuilder, config: ModelConfig, spec: LayerSpec, source: str,
              weight: np.ndarray | None, name: str) -> str:
    """The RMSNorm a sandwich-norm layer (Gemma) puts on a sub-block's output; else the output."""
    if not spec.sandwich_norms:
        return source
    assert weight is not None
    builder.constant(f"{name}_weight", weight)
    return builder.op("RMSNormalization", [source, f"{name}_weight"], name, axis=-1, epsilon=config.norm_eps)


def build_layer(config: ModelConfig, weights: dict[str, np.ndarray], layer: int,
                external_stem: str | None = None, compute: str = "float32") -> onnx.ModelProto:
    """A full decoder layer as `config.spec(layer)` describes it: pre-norm attention (QK-norm,
    QKV biases, sliding window, RoPE base per spec) and MLP (SwiGLU or GeGLU), both residual,
    with sandwich norms on the sub-block outputs where the spec has them. `compute`: the
    seven matrices as float32 MatMuls or int8 (`_GraphBuilder.linear`); norms, attention,
    softmax and the residual stream stay float32 either way."""
    spec = config.spec(layer)
    builder = _GraphBuilder(external_stem, compute)
    cos, sin = _rotary_tables(builder, config, spec)
    attn_input, k, v = _projections_k_v(builder, config, spec, weights, cos, sin)
    builder.linear(attn_input, "q_weight", weights["attn_q"], "q_raw", weights.get("attn_q.bias"))
    q_input = (_head_norm(builder, config, "q_raw", weights["attn_q_norm"], config.heads, "q_norm")
               if spec.qk_norm else "q_raw")
    builder.op("RotaryEmbedding", [q_input, cos, sin], "q", num_heads=config.heads, interleaved=0)

    attention = _row_invariant_attention(builder, config, spec, "q", k, v)
    # Head mask before the output projection: (batch, seq, heads, head_dim) * (heads, 1).
    heads, head_dim = config.heads, config.head_dim
    builder.constant("attention_heads_shape", np.array([0, 0, heads, head_dim], dtype=np.int64))
    builder.op("Reshape", [attention, "attention_heads_shape"], "attention_heads")
    builder.constant("head_mask_shape", np.array([heads, 1], dtype=np.int64))
    builder.op("Reshape", ["head_mask", "head_mask_shape"], "head_mask_column")
    builder.op("Mul", ["attention_heads", "head_mask_column"], "kept_heads")
    builder.constant("attention_flat_shape", np.array([0, 0, heads * head_dim], dtype=np.int64))
    builder.op("Reshape", ["kept_heads", "attention_flat_shape"], "kept_attention")
    o_weight = np.ascontiguousarray(weights["attn_output"].T)   # (heads * head_dim, hidden)
    builder.linear("kept_attention", "o_weight", weights["attn_output"], "attention_out")

    # Each head's contribution energy ||a_h . O_h||^2 = a_h^T (O_h O_h^T) a_h, with the
    # (heads, head_dim, head_dim) Gram matrices: ~1% of a layer's multiply-adds, where a
    # per-head output projection measured 8% slower decode. Readers take the square root.
    by_head = o_weight.reshape(heads, head_dim, config.hidden)
    builder.constant("o_gram", np.ascontiguousarray(by_head @ by_head.transpose(0, 2, 1)))
    builder.constant("row_axis", np.array([3], dtype=np.int64))
    builder.op("Unsqueeze", ["attention_heads", "row_axis"], "attention_rows")  # (batch, seq, heads, 1, head_dim)
    builder.op("MatMul", ["attention_rows", "o_gram"], "attention_gram")
    builder.op("Mul", ["attention_gram", "attention_rows"], "head_energy_terms")
    builder.constant("energy_axes", np.array([3, 4], dtype=np.int64))
    builder.op("ReduceSum", ["head_energy_terms", "energy_axes"], "head_energy", keepdims=0)  # (batch, seq, heads)
    attention_residual = _sandwich(builder, config, spec, "attention_out", weights.get("post_attention_norm"),
                                   "attention_out_normed")
    builder.op("Add", ["hidden", attention_residual], "after_attention")

    builder.constant("ffn_norm_weight", weights["ffn_norm"])
    builder.op("RMSNormalization", ["after_attention", "ffn_norm_weight"], "mlp_input",
               axis=-1, epsilon=config.norm_eps)
    mlp_out = _mlp(builder, spec, weights, "mlp_input")
    mlp_residual = _sandwich(builder, config, spec, mlp_out, weights.get("post_ffw_norm"), "mlp_out_normed")
    builder.op("Add", ["after_attention", mlp_residual], "hidden_out")

    inputs = [*_layer_inputs(config), helper.make_tensor_value_info("head_mask", FLOAT, [config.heads])]
    outputs = [helper.make_tensor_value_info("hidden_out", FLOAT, ["batch", "seq", config.hidden])]
    norms = [helper.make_tensor_value_info("head_energy", FLOAT, ["batch", "seq", config.heads])]
    return builder.model(f"layer_{layer}", inputs, outputs + _present_outputs(config) + norms)


def build_kv_only(config: ModelConfig, weights: dict[str, np.ndarray], layer: int,
                  external_stem: str | None = None, compute: str = "float32") -> onnx.ModelProto:
    """What a skipped layer still computes: this position's K/V from the unchanged hidden
    state (in the same compute format as the full layer, so both write the same K/V)."""
    spec = config.spec(layer)
    builder = _GraphBuilder(external_stem, compute)
    cos, sin = _rotary_tables(builder, config, spec)
    _, k, v = _projections_k_v(builder, config, spec, weights, cos, sin)
    builder.constant("heads_shape", np.array([0, 0, config.kv_heads, config.head_dim], dtype=np.int64))
    slots = _new_row_slots(builder)
    for name, past in ((k, "past_key"), (v, "past_value")):
        builder.op("Reshape", [name, "heads_shape"], f"{name}_heads")  # (batch, seq, kv_heads, head_dim)
        builder.op("Transpose", [f"{name}_heads"], f"{name}_new", perm=[0, 2, 1, 3])
        present = "present_key" if past == "past_key" else "present_value"
        _write_new_rows(builder, slots, past, f"{name}_new", present)
    return builder.model(f"layer_{layer}_kv_only", _layer_inputs(config), _present_outputs(config))


def external_tensor(name: str, shape: tuple[int, ...], location: str, data_type: int = FLOAT,
                    offset: int = 0) -> onnx.TensorProto:
    """A float32 (or 8-bit) initializer whose bytes live in `location` (shared between graphs)."""
    tensor = onnx.TensorProto()
    tensor.name = name
    tensor.data_type = data_type
    tensor.dims.extend(shape)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    length = int(np.prod(shape)) * (1 if data_type in (TensorProto.INT8, TensorProto.UINT8) else 4)
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor
