"""The Qwen2 family (Qwen2, Qwen2.5, Qwen2.5-Coder): the llama layout plus biases on the
query, key and value projections, as `LayerSpec(qkv_bias=True)`.

llama.cpp stores Qwen2's Q/K rows unpermuted (NeoX-style RoPE: already rotate-half), so
the rows go to the graphs as they are. The output matrix may be separate from the token
table (`output.weight`; the 1.5B model's is) or tied. Its tokenizer is byte-level BPE with
Qwen2's own pre-tokenizer regex (`tokenizer.ggml.pre = qwen2`); the chat template (ChatML)
comes from the GGUF; a turn ends with `<|im_end|>` (the GGUF's EOS) or `<|endoftext|>`.
"""

from __future__ import annotations

import numpy as np

from shards.families import Family, Metadata
from shards.model_config import LayerSpec, ModelConfig


def read_config(metadata: Metadata, tensors: set[str], file: str) -> ModelConfig:
    hidden = int(metadata("qwen2.embedding_length"))
    heads = int(metadata("qwen2.attention.head_count"))
    theta = float(metadata("qwen2.rope.freq_base", 1_000_000.0))
    layers = int(metadata("qwen2.block_count"))
    return ModelConfig(
        architecture="qwen2", name=str(metadata("general.name", file)), layers=layers, hidden=hidden,
        heads=heads, kv_heads=int(metadata("qwen2.attention.head_count_kv", heads)), head_dim=hidden // heads,
        mlp_hidden=int(metadata("qwen2.feed_forward_length")), vocab=len(metadata("tokenizer.ggml.tokens")),
        context=int(metadata("qwen2.context_length")),
        norm_eps=float(metadata("qwen2.attention.layer_norm_rms_epsilon")), rope_theta=theta,
        tied_embeddings="output.weight" not in tensors,
        layer_specs=tuple(LayerSpec(rope_theta=theta, qkv_bias=True) for _ in range(layers)))


def prepare_layer(weights: dict[str, np.ndarray], config: ModelConfig) -> dict[str, np.ndarray]:
    return weights


QWEN2 = Family(
    architecture="qwen2", read_config=read_config,
    layer_tensors=("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down",
                   "attn_norm", "ffn_norm", "attn_q.bias", "attn_k.bias", "attn_v.bias"),
    prepare_layer=prepare_layer, stop_tokens=("<|endoftext|>",),
    # int8 compute measured on Qwen2.5-Coder-1.5B (bench/results/int8_quality_qwen2.5-coder-1.5b.json):
    # perplexity -0.11% (Moby-Dick) / +0.07% (held-out), 16 of 16 greedy answers identical over
    # 32 tokens; and float32 stages (~5.2 GB) fit no tab: int8 is this family's default.
    default_compute="int8")
