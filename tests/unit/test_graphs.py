"""The layer graphs against a plain numpy transformer layer, on a tiny random config."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from shards.gguf_model import undo_rotary_permutation
from shards.graphs import build_kv_only, build_layer
from shards.model_config import ModelConfig

CONFIG = ModelConfig(architecture="llama", name="tiny", layers=1, hidden=32, heads=4, kv_heads=2,
                     head_dim=8, mlp_hidden=48, vocab=64, context=128, norm_eps=1e-5,
                     rope_theta=10000.0, tied_embeddings=True)


def random_weights(rng, c: ModelConfig = CONFIG):
    shapes = {"attn_q": (c.heads * c.head_dim, c.hidden), "attn_k": (c.kv_width, c.hidden),
              "attn_v": (c.kv_width, c.hidden), "attn_output": (c.hidden, c.heads * c.head_dim),
              "ffn_gate": (c.mlp_hidden, c.hidden), "ffn_up": (c.mlp_hidden, c.hidden),
              "ffn_down": (c.hidden, c.mlp_hidden)}
    weights = {name: (rng.standard_normal(shape) * 0.2).astype(np.float32) for name, shape in shapes.items()}
    weights["attn_norm"] = rng.uniform(0.5, 1.5, c.hidden).astype(np.float32)
    weights["ffn_norm"] = rng.uniform(0.5, 1.5, c.hidden).astype(np.float32)
    if c.spec(0).qkv_bias:
        for name, size in (("attn_q", c.heads * c.head_dim), ("attn_k", c.kv_width), ("attn_v", c.kv_width)):
            weights[f"{name}.bias"] = rng.standard_normal(size).astype(np.float32)
    return weights


def rms_norm(x, gain, config):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + config.norm_eps) * gain


def rotate(x, positions, heads, config):
    """Half-split RoPE (HF rotate_half layout): x (seq, heads*dim)."""
    dim = config.head_dim
    x = x.reshape(len(positions), heads, dim)
    inverse = 1.0 / config.rope_theta ** (np.arange(0, dim, 2) / dim)
    angles = positions[:, None] * inverse
    cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]
    first, second = x[..., : dim // 2], x[..., dim // 2:]
    return np.concatenate([first * cos - second * sin, second * cos + first * sin], -1)


def numpy_layer(w, hidden, positions, past_k, past_v, c: ModelConfig = CONFIG, head_mask=None):
    """hidden (seq, hidden); past (kv_heads, past, dim). Returns new hidden, K, V."""
    mask = np.ones(c.heads) if head_mask is None else head_mask
    x = rms_norm(hidden, w["attn_norm"], c)

    def project(name):   # x @ W.T, plus the projection's bias where the layer has one (Qwen2)
        return x @ w[name].T + w.get(f"{name}.bias", 0.0)

    q = rotate(project("attn_q"), positions, c.heads, c)                       # (seq, heads, dim)
    k = rotate(project("attn_k"), positions, c.kv_heads, c).transpose(1, 0, 2)   # (kv, seq, dim)
    v = project("attn_v").reshape(len(positions), c.kv_heads, c.head_dim).transpose(1, 0, 2)
    keys, values = np.concatenate([past_k, k], 1), np.concatenate([past_v, v], 1)
    group = c.heads // c.kv_heads
    out = np.zeros((len(positions), c.heads, c.head_dim))
    for head in range(c.heads):
        scores = q[:, head] @ keys[head // group].T / np.sqrt(c.head_dim)
        scores[np.arange(keys.shape[1])[None, :] > positions[:, None]] = -np.inf
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        out[:, head] = (weights / weights.sum(-1, keepdims=True)) @ values[head // group]
    out = out * mask[None, :, None]
    after = hidden + out.reshape(len(positions), -1) @ w["attn_output"].T
    y = rms_norm(after, w["ffn_norm"], c)
    gate = y @ w["ffn_gate"].T
    mlp = (gate / (1 + np.exp(-gate)) * (y @ w["ffn_up"].T)) @ w["ffn_down"].T
    return after + mlp, keys, values


@pytest.fixture(scope="module")
def sessions():
    weights = random_weights(np.random.default_rng(0))
    layer = ort.InferenceSession(build_layer(CONFIG, weights, 0).SerializeToString())
    kv_only = ort.InferenceSession(build_kv_only(CONFIG, weights, 0).SerializeToString())
    return weights, layer, kv_only


def run(session, hidden, positions, past_k, past_v, head_mask=None):
    feeds = {"hidden": hidden[None].astype(np.float32), "positions": positions[None].astype(np.int64),
             "past_key": past_k[None].astype(np.float32), "past_value": past_v[None].astype(np.float32)}
    if any(node.name == "head_mask" for node in session.get_inputs()):
        feeds["head_mask"] = (np.ones(CONFIG.heads) if head_mask is None else head_mask).astype(np.float32)
    return session.run(None, feeds)


def test_prefill_then_decode_match_numpy(sessions):
    weights, layer, _ = sessions
    rng = np.random.default_rng(1)
    empty = np.zeros((CONFIG.kv_heads, 0, CONFIG.head_dim))
    prompt = rng.standard_normal((5, CONFIG.hidden))
    out, key, value, _ = run(layer, prompt, np.arange(5), empty, empty)
    want, want_k, want_v = numpy_layer(weights, prompt, np.arange(5), empty, empty)
    assert np.abs(out[0] - want).max() < 1e-4
    assert np.abs(key[0] - want_k).max() < 1e-4 and np.abs(value[0] - want_v).max() < 1e-4
    step = rng.standard_normal((1, CONFIG.hidden))
    out2, key2, _, _ = run(layer, step, np.array([5]), key[0], value[0])
    want2, _, _ = numpy_layer(weights, step, np.array([5]), want_k, want_v)
    assert np.abs(out2[0] - want2).max() < 1e-4
    assert key2.shape == (1, CONFIG.kv_heads, 6, CONFIG.head_dim)


def test_causal_mask_hides_later_positions(sessions):
    """Changing a later token must not change an earlier token's output."""
    _, layer, _ = sessions
    rng = np.random.default_rng(2)
    empty = np.zeros((CONFIG.kv_heads, 0, CONFIG.head_dim))
    tokens = rng.standard_normal((4, CONFIG.hidden))
    changed = tokens.copy()
    changed[3] += 5.0
    first = run(layer, tokens, np.arange(4), empty, empty)[0][0]
    second = run(layer, changed, np.arange(4), empty, empty)[0][0]
    assert np.abs(first[:3] - second[:3]).max() < 1e-6
    assert np.abs(first[3] - second[3]).max() > 1e-3


def test_kv_only_graph_writes_the_same_cache_as_the_full_layer(sessions):
    _, layer, kv_only = sessions
    rng = np.random.default_rng(3)
    past_k = rng.standard_normal((CONFIG.kv_heads, 3, CONFIG.head_dim))
    past_v = rng.standard_normal((CONFIG.kv_heads, 3, CONFIG.head_dim))
    hidden = rng.standard_normal((1, CONFIG.hidden))
    _, key, value, _ = run(layer, hidden, np.array([3]), past_k, past_v, np.zeros(CONFIG.heads))
    only_key, only_value = run(kv_only, hidden, np.array([3]), past_k, past_v)
    assert np.array_equal(key, only_key) and np.array_equal(value, only_value)


def test_undo_rotary_permutation_inverts_llama_cpp_permutation():
    rng = np.random.default_rng(4)
    heads, dim, columns = 3, 8, 5
    original = rng.standard_normal((heads * dim, columns))
    # llama.cpp's convert script: reshape(heads, 2, dim/2, in).swapaxes(1, 2)
    permuted = original.reshape(heads, 2, dim // 2, columns).swapaxes(1, 2).reshape(heads * dim, columns)
    assert np.array_equal(undo_rotary_permutation(permuted, heads), original)


def test_head_mask_prunes_heads_and_head_norms_measure_each_contribution(sessions):
    """A masked head adds nothing to the residual stream; K/V are written regardless;
    head_energy is each head's squared contribution before the mask."""
    weights, layer, _ = sessions
    rng = np.random.default_rng(5)
    past_k = rng.standard_normal((CONFIG.kv_heads, 4, CONFIG.head_dim))
    past_v = rng.standard_normal((CONFIG.kv_heads, 4, CONFIG.head_dim))
    hidden = rng.standard_normal((2, CONFIG.hidden))
    positions = np.array([4, 5])
    mask = np.array([1.0, 0.0, 1.0, 0.0])
    full, full_key, full_value, norms = run(layer, hidden, positions, past_k, past_v)
    pruned, key, value, pruned_norms = run(layer, hidden, positions, past_k, past_v, mask)
    want, _, _ = numpy_layer(weights, hidden, positions, past_k, past_v, head_mask=mask)
    assert np.abs(pruned[0] - want).max() < 1e-4
    assert np.abs(full - pruned).max() > 1e-3
    assert np.array_equal(key, full_key) and np.array_equal(value, full_value)
    assert norms.shape == (1, 2, CONFIG.heads) and np.array_equal(norms, pruned_norms)
    contribution = _attention_contributions(weights, hidden, positions, past_k, past_v)
    assert np.abs(np.sqrt(np.maximum(norms[0], 0)) - np.linalg.norm(contribution, axis=-1)).max() < 1e-4


def _attention_contributions(w, hidden, positions, past_k, past_v, c: ModelConfig = CONFIG):
    """Each head's output through its slice of the output projection: (seq, heads, hidden)."""
    x = rms_norm(hidden, w["attn_norm"], c)
    q = rotate(x @ w["attn_q"].T, positions, c.heads, c)
    k = rotate(x @ w["attn_k"].T, positions, c.kv_heads, c).transpose(1, 0, 2)
    v = (x @ w["attn_v"].T).reshape(len(positions), c.kv_heads, c.head_dim).transpose(1, 0, 2)
    keys, values = np.concatenate([past_k, k], 1), np.concatenate([past_v, v], 1)
    group = c.heads // c.kv_heads
    result = np.zeros((len(positions), c.heads, c.hidden))
    for head in range(c.heads):
        scores = q[:, head] @ keys[head // group].T / np.sqrt(c.head_dim)
        scores[np.arange(keys.shape[1])[None, :] > positions[:, None]] = -np.inf
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        out = (weights / weights.sum(-1, keepdims=True)) @ values[head // group]
        columns = slice(head * c.head_dim, (head + 1) * c.head_dim)
        result[:, head] = out @ w["attn_output"][:, columns].T
    return result


@pytest.mark.parametrize("past", [0, 1, 3, 4, 6, 13])
def test_a_row_is_bitwise_the_same_whether_it_runs_alone_or_with_others(sessions, past):
    """What makes a speculative verify pass lossless: k rows in one pass give exactly the
    outputs and caches of k one-row decode steps (any cache length, padded or not)."""
    _, layer, _ = sessions
    rng = np.random.default_rng(10 + past)
    past_k = rng.standard_normal((CONFIG.kv_heads, past, CONFIG.head_dim))
    past_v = rng.standard_normal((CONFIG.kv_heads, past, CONFIG.head_dim))
    rows = rng.standard_normal((5, CONFIG.hidden))
    together, key, value, _ = run(layer, rows, np.arange(past, past + 5), past_k, past_v)
    keys, values = past_k.astype(np.float32), past_v.astype(np.float32)
    for row in range(5):
        alone, key_alone, value_alone, _ = run(layer, rows[row:row + 1], np.array([past + row]), keys, values)
        keys, values = key_alone[0], value_alone[0]
        assert np.array_equal(alone[0, 0], together[0, row]), f"row {row} differs"
    assert np.array_equal(keys, key[0]) and np.array_equal(values, value[0])
