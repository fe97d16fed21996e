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
from onnx import helper

from shards.attention_graph import new_row_slots, row_invariant_attention, write_new_rows
from shards.graph_builder import FLOAT, INT64, OPSET, GraphBuilder, external_tensor
from shards.int8 import COMPUTE_FORMATS
from shards.model_config import LayerSpec, ModelConfig

__all__ = ["COMPUTE_FORMATS", "OPSET", "build_kv_only", "build_layer", "external_tensor"]


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


def _rotary_tables(builder: GraphBuilder, config: ModelConfig, spec: LayerSpec) -> tuple[str, str]:
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


def _head_norm(builder: GraphBuilder, config: ModelConfig, projected: str, weight: np.ndarray,
               heads: int, name: str) -> str:
    """RMSNorm over each head of a projection (QK-norm): (batch, seq, heads * head_dim) in and out."""
    builder.constant(f"{name}_weight", weight)
    builder.constant(f"{name}_shape", np.array([0, 0, heads, config.head_dim], dtype=np.int64))
    builder.op("Reshape", [projected, f"{name}_shape"], f"{name}_heads")     # (batch, seq, heads, head_dim)
    builder.op("RMSNormalization", [f"{name}_heads", f"{name}_weight"], f"{name}_normed", axis=-1,
               epsilon=config.norm_eps)
    builder.constant(f"{name}_flat", np.array([0, 0, heads * config.head_dim], dtype=np.int64))
    return builder.op("Reshape", [f"{name}_normed", f"{name}_flat"], f"{name}_out")


def _projections_k_v(builder: GraphBuilder, config: ModelConfig, spec: LayerSpec,
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


def _mlp(builder: GraphBuilder, spec: LayerSpec, weights: dict[str, np.ndarray], source: str) -> str:
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


def _sandwich(builder: GraphBuilder, config: ModelConfig, spec: LayerSpec, source: str,
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
    seven matrices as float32 MatMuls or int8 (`GraphBuilder.linear`); norms, attention,
    softmax and the residual stream stay float32 either way."""
    spec = config.spec(layer)
    builder = GraphBuilder(external_stem, compute)
    cos, sin = _rotary_tables(builder, config, spec)
    attn_input, k, v = _projections_k_v(builder, config, spec, weights, cos, sin)
    builder.linear(attn_input, "q_weight", weights["attn_q"], "q_raw", weights.get("attn_q.bias"))
    q_input = (_head_norm(builder, config, "q_raw", weights["attn_q_norm"], config.heads, "q_norm")
               if spec.qk_norm else "q_raw")
    builder.op("RotaryEmbedding", [q_input, cos, sin], "q", num_heads=config.heads, interleaved=0)

    attention = row_invariant_attention(builder, config, spec, "q", k, v)
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
    builder = GraphBuilder(external_stem, compute)
    cos, sin = _rotary_tables(builder, config, spec)
    _, k, v = _projections_k_v(builder, config, spec, weights, cos, sin)
    builder.constant("heads_shape", np.array([0, 0, config.kv_heads, config.head_dim], dtype=np.int64))
    slots = new_row_slots(builder)
    for name, past in ((k, "past_key"), (v, "past_value")):
        builder.op("Reshape", [name, "heads_shape"], f"{name}_heads")  # (batch, seq, kv_heads, head_dim)
        builder.op("Transpose", [f"{name}_heads"], f"{name}_new", perm=[0, 2, 1, 3])
        present = "present_key" if past == "past_key" else "present_value"
        write_new_rows(builder, slots, past, f"{name}_new", present)
    return builder.model(f"layer_{layer}_kv_only", _layer_inputs(config), _present_outputs(config))
