"""The Gemma 3 family: what it adds to the llama layout, as `LayerSpec`s.

- four RMSNorms per layer: before attention (`attn_norm`), on its output
  (`post_attention_norm`), before the MLP (`ffn_norm`), on its output (`post_ffw_norm`);
  Gemma's gain is (1 + w), and llama.cpp's converter stores 1 + w, so the graphs use the
  stored weights as plain RMSNorm gains;
- RMSNorm over each query and key head (`attn_q_norm`, `attn_k_norm`, shape (head_dim,))
  before RoPE; head_dim comes from `attention.key_length`, not hidden / heads;
- sliding-window attention (window from `attention.sliding_window`) on five layers of
  every six, RoPE base 10k there; every sixth layer global with `rope.freq_base` (1M);
- GeGLU MLP (gelu-tanh gate); embeddings scaled by sqrt(hidden); tied head; Q/K are not
  permuted by llama.cpp for this family (NeoX-style RoPE: already rotate-half).
The 270M GGUF used here is the pretrained model and carries no chat template: it is served
as a base model (completions); an instruction-tuned Gemma GGUF brings its own template,
whose turns end with `<end_of_turn>`.
"""

from __future__ import annotations

import math

import numpy as np

from shards.errors import UnsupportedModelError
from shards.families import Family, Metadata
from shards.model_config import LayerSpec, ModelConfig

GLOBAL_EVERY = 6              # llama.cpp and HF: layer i is global iff (i + 1) % 6 == 0
LOCAL_ROPE_THETA = 10000.0    # rope_local_base_freq (not in the GGUF metadata)

def read_config(metadata: Metadata, tensors: set[str], file: str) -> ModelConfig:
    hidden = int(metadata("gemma3.embedding_length"))
    heads = int(metadata("gemma3.attention.head_count"))
    head_dim = int(metadata("gemma3.attention.key_length"))
    if int(metadata("gemma3.attention.value_length", head_dim)) != head_dim:
        raise UnsupportedModelError(f"{file}: key and value head sizes differ")
    layers = int(metadata("gemma3.block_count"))
    window = int(metadata("gemma3.attention.sliding_window"))
    theta = float(metadata("gemma3.rope.freq_base", 1_000_000.0))
    if metadata("gemma3.rope.scaling.type", "none") not in ("none", b"none"):
        raise UnsupportedModelError(f"{file}: Gemma 3 with RoPE scaling is not supported yet")

    def spec(layer: int) -> LayerSpec:
        if (layer + 1) % GLOBAL_EVERY == 0:
            return LayerSpec(attention="global", rope_theta=theta, qk_norm=True, sandwich_norms=True, mlp="geglu")
        return LayerSpec(attention="sliding", window=window, rope_theta=LOCAL_ROPE_THETA, qk_norm=True,
                         sandwich_norms=True, mlp="geglu")

    return ModelConfig(
        architecture="gemma3", name=str(metadata("general.name", file)), layers=layers, hidden=hidden,
        heads=heads, kv_heads=int(metadata("gemma3.attention.head_count_kv", heads)), head_dim=head_dim,
        mlp_hidden=int(metadata("gemma3.feed_forward_length")), vocab=len(metadata("tokenizer.ggml.tokens")),
        context=int(metadata("gemma3.context_length")),
        norm_eps=float(metadata("gemma3.attention.layer_norm_rms_epsilon")), rope_theta=theta,
        tied_embeddings="output.weight" not in tensors, embedding_scale=math.sqrt(hidden),
        layer_specs=tuple(spec(layer) for layer in range(layers)))


def prepare_layer(weights: dict[str, np.ndarray], config: ModelConfig) -> dict[str, np.ndarray]:
    return weights


GEMMA3 = Family(
    architecture="gemma3", read_config=read_config,
    layer_tensors=("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down",
                   "attn_norm", "ffn_norm", "attn_q_norm", "attn_k_norm", "post_attention_norm",
                   "post_ffw_norm"),
    prepare_layer=prepare_layer, stop_tokens=("<end_of_turn>",),
    # int8 compute measured on Gemma 3 270M (bench/results/int8_quality_gemma3-270m.json):
    # perplexity -0.08% / +0.36%, but 8 of 16 greedy continuations change within 32 tokens:
    # float32 by default, as for the llama family; `--compute int8` opts in.
    default_compute="float32")
