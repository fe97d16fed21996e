"""The llama family (SmolLM2, Llama, TinyLlama …): pre-norm attention with RoPE on every
layer, SwiGLU MLP. llama.cpp permutes Q/K rows for its interleaved RoPE; undone here so
the graphs see the standard (Hugging Face, rotate-half) layout."""

from __future__ import annotations

import numpy as np

from shards.families import Family, Metadata
from shards.model_config import LayerSpec, ModelConfig


def undo_rotary_permutation(weight: np.ndarray, heads: int) -> np.ndarray:
    """Inverse of llama.cpp's convert-time permutation of Q/K rows.

    weight: (heads * head_dim, in). GGUF interleaves each head's two rotary halves;
    this restores the half-split order that standard RoPE (rotate_half) expects.
    """
    rows, columns = weight.shape
    head_dim = rows // heads
    return weight.reshape(heads, head_dim // 2, 2, columns).swapaxes(1, 2).reshape(rows, columns)


def read_config(metadata: Metadata, tensors: set[str], file: str) -> ModelConfig:
    hidden = int(metadata("llama.embedding_length"))
    heads = int(metadata("llama.attention.head_count"))
    theta = float(metadata("llama.rope.freq_base", 10000.0))
    layers = int(metadata("llama.block_count"))
    return ModelConfig(
        architecture="llama", name=str(metadata("general.name", file)), layers=layers, hidden=hidden,
        heads=heads, kv_heads=int(metadata("llama.attention.head_count_kv", heads)), head_dim=hidden // heads,
        mlp_hidden=int(metadata("llama.feed_forward_length")), vocab=len(metadata("tokenizer.ggml.tokens")),
        context=int(metadata("llama.context_length")),
        norm_eps=float(metadata("llama.attention.layer_norm_rms_epsilon")), rope_theta=theta,
        tied_embeddings="output.weight" not in tensors,
        layer_specs=tuple(LayerSpec(rope_theta=theta) for _ in range(layers)))


def prepare_layer(weights: dict[str, np.ndarray], config: ModelConfig) -> dict[str, np.ndarray]:
    weights["attn_q"] = undo_rotary_permutation(weights["attn_q"], config.heads)
    weights["attn_k"] = undo_rotary_permutation(weights["attn_k"], config.kv_heads)
    return weights


LLAMA = Family(
    architecture="llama", read_config=read_config,
    layer_tensors=("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down",
                   "attn_norm", "ffn_norm"),
    prepare_layer=prepare_layer,
    # int8 compute measured on SmolLM2-135M (bench/results/int8_quality.json): perplexity +0.90%
    # (Moby-Dick) and +0.35% (held-out), but only 6 of 16 greedy answers stay identical over 32
    # tokens, and "What is the capital of France?" loses its answer (a 0.08-logit near-tie at
    # the first token flips). float32 stays this family's default; `--compute int8` opts in.
    default_compute="float32")
