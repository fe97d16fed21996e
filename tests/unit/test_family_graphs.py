"""Gemma-3-style layer graphs against a plain numpy layer of that family, on a tiny random
config: QK-norm, sliding-window and global attention with their own RoPE bases, GeGLU,
sandwich norms, head_dim independent of hidden / heads (the scaled embedding is checked
against HF transformers in tests/integration/test_gemma3_independent_reference.py)."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest

from shards.graphs import build_kv_only, build_layer
from shards.model_config import LayerSpec, ModelConfig

WINDOW = 3
SPECS = (LayerSpec(attention="sliding", window=WINDOW, rope_theta=10000.0, qk_norm=True, sandwich_norms=True,
                   mlp="geglu"),
         LayerSpec(attention="global", rope_theta=1_000_000.0, qk_norm=True, sandwich_norms=True, mlp="geglu"))
CONFIG = ModelConfig(architecture="gemma3", name="tiny-gemma", layers=2, hidden=24, heads=4, kv_heads=1,
                     head_dim=16, mlp_hidden=40, vocab=50, context=64, norm_eps=1e-6, rope_theta=1_000_000.0,
                     tied_embeddings=True, embedding_scale=math.sqrt(24), layer_specs=SPECS)


def random_weights(rng, c: ModelConfig = CONFIG):
    shapes = {"attn_q": (c.heads * c.head_dim, c.hidden), "attn_k": (c.kv_width, c.hidden),
              "attn_v": (c.kv_width, c.hidden), "attn_output": (c.hidden, c.heads * c.head_dim),
              "ffn_gate": (c.mlp_hidden, c.hidden), "ffn_up": (c.mlp_hidden, c.hidden),
              "ffn_down": (c.hidden, c.mlp_hidden)}
    weights = {name: (rng.standard_normal(shape) * 0.3).astype(np.float32) for name, shape in shapes.items()}
    for name, size in (("attn_norm", c.hidden), ("ffn_norm", c.hidden), ("post_attention_norm", c.hidden),
                       ("post_ffw_norm", c.hidden), ("attn_q_norm", c.head_dim), ("attn_k_norm", c.head_dim)):
        weights[name] = rng.uniform(0.5, 1.5, size).astype(np.float32)
    return weights


def rms(x, gain):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + CONFIG.norm_eps) * gain


def rope(x, positions, theta):
    """Half-split RoPE: x (seq, heads, dim)."""
    dim = x.shape[-1]
    angles = positions[:, None] * (1.0 / theta ** (np.arange(0, dim, 2) / dim))
    cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]
    first, second = x[..., : dim // 2], x[..., dim // 2:]
    return np.concatenate([first * cos - second * sin, second * cos + first * sin], -1)


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def numpy_gemma_layer(w, spec, hidden, positions, past_k, past_v):
    """hidden (seq, hidden); past (kv_heads, past, head_dim) -> hidden, keys, values."""
    c, seq = CONFIG, len(positions)
    x = rms(hidden, w["attn_norm"])
    q = rope(rms((x @ w["attn_q"].T).reshape(seq, c.heads, c.head_dim), w["attn_q_norm"]), positions,
             spec.rope_theta)
    k = rope(rms((x @ w["attn_k"].T).reshape(seq, c.kv_heads, c.head_dim), w["attn_k_norm"]), positions,
             spec.rope_theta).transpose(1, 0, 2)
    v = (x @ w["attn_v"].T).reshape(seq, c.kv_heads, c.head_dim).transpose(1, 0, 2)
    keys, values = np.concatenate([past_k, k], 1), np.concatenate([past_v, v], 1)
    slots = np.arange(keys.shape[1])[None, :]
    hidden_slots = slots > positions[:, None]
    if spec.attention == "sliding":
        hidden_slots |= slots <= positions[:, None] - spec.window
    group = c.heads // c.kv_heads
    out = np.zeros((seq, c.heads, c.head_dim))
    for head in range(c.heads):
        scores = q[:, head] @ keys[head // group].T / np.sqrt(c.head_dim)
        scores[hidden_slots] = -np.inf
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        out[:, head] = (weights / weights.sum(-1, keepdims=True)) @ values[head // group]
    after = hidden + rms(out.reshape(seq, -1) @ w["attn_output"].T, w["post_attention_norm"])
    y = rms(after, w["ffn_norm"])
    mlp = (gelu_tanh(y @ w["ffn_gate"].T) * (y @ w["ffn_up"].T)) @ w["ffn_down"].T
    return after + rms(mlp, w["post_ffw_norm"]), keys, values


@pytest.fixture(scope="module")
def layers():
    rng = np.random.default_rng(7)
    built = []
    for index in range(CONFIG.layers):
        weights = random_weights(rng)
        built.append((weights, ort.InferenceSession(build_layer(CONFIG, weights, index).SerializeToString()),
                      ort.InferenceSession(build_kv_only(CONFIG, weights, index).SerializeToString())))
    return built


def run(session, hidden, positions, past_k, past_v):
    feeds = {"hidden": hidden[None].astype(np.float32), "positions": positions[None].astype(np.int64),
             "past_key": past_k[None].astype(np.float32), "past_value": past_v[None].astype(np.float32)}
    if any(node.name == "head_mask" for node in session.get_inputs()):
        feeds["head_mask"] = np.ones(CONFIG.heads, dtype=np.float32)
    return session.run(None, feeds)


@pytest.mark.parametrize("layer", [0, 1], ids=["sliding", "global"])
def test_prefill_then_decodes_past_the_window_match_numpy(layers, layer):
    weights, session, _ = layers[layer]
    spec = CONFIG.spec(layer)
    rng = np.random.default_rng(10 + layer)
    empty = np.zeros((CONFIG.kv_heads, 0, CONFIG.head_dim))
    prompt = rng.standard_normal((5, CONFIG.hidden)) * 4
    out, key, value, _ = run(session, prompt, np.arange(5), empty, empty)
    want, want_k, want_v = numpy_gemma_layer(weights, spec, prompt, np.arange(5), empty, empty)
    assert np.abs(out[0] - want).max() < 2e-4
    assert np.abs(key[0] - want_k).max() < 2e-4 and np.abs(value[0] - want_v).max() < 2e-4
    for position in range(5, 9):   # decode steps well past the 3-slot window
        step = rng.standard_normal((1, CONFIG.hidden)) * 4
        out, key, value, _ = run(session, step, np.array([position]), key[0], value[0])
        want, want_k, want_v = numpy_gemma_layer(weights, spec, step, np.array([position]), want_k, want_v)
        assert np.abs(out[0] - want).max() < 2e-4


def test_the_sliding_window_forgets_what_the_global_layer_remembers(layers):
    """Changing the first token changes a late token's output through the global layer,
    not through the sliding one (its window no longer reaches back)."""
    rng = np.random.default_rng(3)
    empty = np.zeros((CONFIG.kv_heads, 0, CONFIG.head_dim))
    tokens = rng.standard_normal((6, CONFIG.hidden)) * 4
    changed = tokens.copy()
    changed[0] += 3.0
    for layer, should_change in ((0, False), (1, True)):
        session = layers[layer][1]
        first = run(session, tokens, np.arange(6), empty, empty)[0][0]
        second = run(session, changed, np.arange(6), empty, empty)[0][0]
        moved = np.abs(first[5] - second[5]).max()
        assert (moved > 1e-3) == should_change, (layer, moved)


def test_kv_only_graph_writes_the_same_cache_as_the_gemma_layer(layers):
    _, session, kv_only = layers[0]
    rng = np.random.default_rng(4)
    past_k = rng.standard_normal((CONFIG.kv_heads, 4, CONFIG.head_dim))
    past_v = rng.standard_normal((CONFIG.kv_heads, 4, CONFIG.head_dim))
    hidden = rng.standard_normal((1, CONFIG.hidden))
    _, key, value, _ = run(session, hidden, np.array([4]), past_k, past_v)
    only_key, only_value = run(kv_only, hidden, np.array([4]), past_k, past_v)
    assert np.array_equal(key, only_key) and np.array_equal(value, only_value)
